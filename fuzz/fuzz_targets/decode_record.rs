//! Any bytes through the record decoder: a record or a typed error, never a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rocketstore::format;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = format::peek(data, 0);
    if let Ok(view) = format::parse(data, 0) {
        let _ = view.crc_ok();
        let _ = format::properties_well_formed(view.properties);
        let _ = format::find_tags(view.properties);
    }
    if let Ok(m) = format::decode(&bytes, 0, true) {
        assert!(m.crc_ok());
        let _ = m.properties.iter().count();
        let _ = m.tags();
    }
    for pos in [0, 1, 7, 8] {
        let _ = format::decode_at(&bytes, pos, 0, false, None);
    }
});
