//! `get_message` of 1 KiB messages, 32 per call, everything in the page cache.
//! `cargo bench --bench get`

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rocketstore::{GetStatus, Message, MessageStore, StoreConfig};

const MESSAGES: u64 = 200_000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(StoreConfig::new(dir.path())).unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut last = 0;
    for _ in 0..MESSAGES {
        last = store
            .put_message(&Message::new("Get", 0u32, body.clone()).with_tags("TagA"))
            .unwrap()
            .physical_offset;
    }
    assert!(store.wait_dispatched(last, Duration::from_secs(60)));

    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(32));
    let mut offset = 0;
    g.bench_function("1KiB_x32", |b| {
        b.iter(|| {
            let r = store.get_message("Get", 0, offset, 32).unwrap();
            assert_eq!(r.status, GetStatus::Found);
            offset = if r.next_offset + 32 >= MESSAGES {
                0
            } else {
                r.next_offset
            };
            r.messages.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
