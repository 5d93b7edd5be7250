//! openraft's state machine: committed puts applied to a [`MessageStore`].
//!
//! Each put is appended with the store time its leader chose and its place in the Raft
//! log ([`BatchPosition`]) in the [`PROPERTY_RAFT_LOG_ID`] property, so the record itself
//! says how far the store has applied the log: after a crash the last applied entry is
//! read back from the log's tail, the puts the store lost (under async flush) are applied
//! again, into the same bytes, and an entry cut part-way resumes after its last stored put.
//!
//! ```text
//! {dir}/applied      a hint: last applied id and the log's end then (rewritten per batch, not synced)
//! {dir}/membership   the last applied membership (the store is flushed before it is written)
//! {dir}/snapshot     the last snapshot's meta and the log's end at it (the store is flushed first)
//! {dir}/installing   present only while a received snapshot is being appended
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use rocketstore::{Error as StoreError, MessageStore};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log_store::{AppendProgress, Covered, sync_dir};
use crate::request::{BatchPosition, BatchResponse, PutBatch, PutRequest, PutResponse};
use crate::snapshot::{self, SnapshotData};
use crate::state_file::{read_state, write_state};
use crate::{NodeId, PROPERTY_RAFT_LOG_ID, TypeConfig};

type StoreResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;

/// How far the store has applied the Raft log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// The commit log's end after `last_applied`.
    end: u64,
    /// An entry past `last_applied` of which the store holds only the first puts (the
    /// rest were lost in a crash): its id, and how many of its puts are stored. Every
    /// entry before it was applied whole, and `end` is where its first stored put begins.
    #[serde(default)]
    partial: Option<(LogId<NodeId>, u32)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotRecord {
    meta: SnapshotMeta<NodeId, BasicNode>,
    end: u64,
}

/// Written before a snapshot's bytes are appended and removed once its record is: after
/// a crash in between, the next open finishes the install from the received stream
/// ([`finish_unfinished_install`]), or, when the stream cannot be used, cuts the store
/// back to `from` ([`roll_back_unfinished_install`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Installing {
    meta: SnapshotMeta<NodeId, BasicNode>,
    from: u64,
    /// The received stream's file name in the state directory, synced before this
    /// record was written (absent in records of versions that did not keep it).
    #[serde(default)]
    stream: Option<String>,
}

/// Prefix of the files received snapshot streams are written to.
const RECEIVED: &str = "snapshot-received-";

impl Installing {
    /// The stream is read, then removed: a name that is not one of ours (a path out of the
    /// state directory, say) refuses the open rather than be read or removed.
    fn check_stream_name(&self, dir: &Path) -> io::Result<()> {
        match &self.stream {
            Some(name) if !name.starts_with(RECEIVED) || name.contains('/') => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the stream {name:?} is not a received snapshot's file name",
                    dir.join("installing").display()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Looks at a snapshot install a crash interrupted, on the closed store. When its
/// received stream is still whole, returns it, to be finished once the store is open:
/// openraft may have purged its log up to the snapshot as soon as the install was
/// queued, so the entries the snapshot stands for can no longer be applied one by one,
/// and a node that dropped the install would stop at its next commit. Otherwise the
/// install is rolled back ([`roll_back_unfinished_install`]). Call before the store opens.
pub(crate) fn unfinished_install(
    dir: &Path,
    store_config: &rocketstore::StoreConfig,
    purged: Option<u64>,
) -> io::Result<Option<Installing>> {
    let Some(installing) = read_state::<Installing>(&dir.join("installing"))? else {
        return Ok(None);
    };
    installing.check_stream_name(dir)?;
    let done = read_state::<SnapshotRecord>(&dir.join("snapshot"))?
        .is_some_and(|s| s.meta.last_log_id >= installing.meta.last_log_id);
    if done {
        forget_install(dir, &installing)?;
        return Ok(None);
    }
    let usable = installing.stream.as_ref().is_some_and(|name| {
        File::open(dir.join(name))
            .and_then(|f| snapshot::read_header(&f))
            .is_ok_and(|h| h.file_size == store_config.commit_log_file_size)
    });
    if usable {
        return Ok(Some(installing));
    }
    refuse_if_purged(
        &installing,
        purged,
        "its received stream is gone or damaged",
    )?;
    roll_back_unfinished_install(dir, store_config, &installing)?;
    Ok(None)
}

/// An interrupted install that cannot be finished may be rolled back only while the Raft
/// log still holds the entries the snapshot stands for: once it is purged past them, a
/// rolled-back node could never apply its next entry. The open is then refused, and the
/// install's record and stream kept for the next try.
pub(crate) fn refuse_if_purged(
    installing: &Installing,
    purged: Option<u64>,
    why: &str,
) -> io::Result<()> {
    let index = installing.meta.last_log_id.map(|l| l.index);
    if purged.is_some() && purged >= index {
        return Err(io::Error::other(format!(
            "snapshot {} was being installed when this node stopped, and cannot be finished \
             ({why}); the Raft log is purged up to it, so it cannot be rolled back either: \
             fix the cause and reopen, or replace this node",
            installing.meta.snapshot_id
        )));
    }
    Ok(())
}

/// Undoes an interrupted install on the closed store: its log is cut back to where the
/// install began (the leader sends the snapshot again). Without this the store would hold
/// part of the snapshot's records, and so claim its entries, while the membership they
/// carry was never recorded.
pub(crate) fn roll_back_unfinished_install(
    dir: &Path,
    store_config: &rocketstore::StoreConfig,
    installing: &Installing,
) -> io::Result<()> {
    // A finish that recorded the snapshot and then failed (writing the membership, say)
    // is not undone: the store holds what the record says.
    if read_state::<SnapshotRecord>(&dir.join("snapshot"))?
        .is_some_and(|s| s.meta.last_log_id >= installing.meta.last_log_id)
    {
        return forget_install(dir, installing);
    }
    log::warn!(
        "snapshot {} was being installed when this node stopped: cutting the store back to {}",
        installing.meta.snapshot_id,
        installing.from
    );
    match MessageStore::truncate_log(store_config, installing.from) {
        Ok(()) => {}
        // Nothing was appended, or nothing is there yet.
        Err(StoreError::OutOfRange { .. }) => {}
        Err(e) => return Err(io_err(e)),
    }
    forget_install(dir, installing)
}

/// Finishes an interrupted install on the open store, from its received stream: appends
/// what the store lacks of it (the store's end after the crash lies between the install's
/// start and the stream's end, in the stream's own bytes), then records the snapshot and
/// its membership as the install would have.
pub(crate) fn finish_unfinished_install(
    store: &MessageStore,
    dir: &Path,
    installing: &Installing,
) -> io::Result<()> {
    let name = installing
        .stream
        .as_deref()
        .expect("checked by unfinished_install");
    log::warn!(
        "snapshot {} was being installed when this node stopped: finishing it",
        installing.meta.snapshot_id
    );
    let end = snapshot::install(store, &dir.join(name))?;
    store.flush().map_err(io_err)?;
    let record = SnapshotRecord {
        meta: installing.meta.clone(),
        end,
    };
    write_state(&dir.join("snapshot"), &record)?;
    write_state(&dir.join("membership"), &installing.meta.last_membership)?;
    forget_install(dir, installing)
}

/// Removes the install's record, durably, then its stream.
fn forget_install(dir: &Path, installing: &Installing) -> io::Result<()> {
    fs::remove_file(dir.join("installing"))?;
    sync_dir(dir)?;
    if let Some(name) = &installing.stream {
        let _ = fs::remove_file(dir.join(name));
    }
    Ok(())
}

/// openraft's state machine over one node's message store. Cheap to clone.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<MessageStore>,
    dir: PathBuf,
    applied: Mutex<Applied>,
    snapshot: Mutex<Option<SnapshotRecord>>,
    hint: File,
    /// How far the recorded snapshot reaches, for the Raft log's purges to wait on.
    covered: watch::Sender<Covered>,
    /// Number of the next received stream's file: each stream has its own, which an
    /// interrupted install keeps for the next open while a new transfer writes another.
    streams: std::sync::atomic::AtomicU64,
    /// The node's Raft log, whose appends an apply waits to be durable (see
    /// [`StateMachine::apply_after_log_syncs`]).
    log_syncs: std::sync::OnceLock<AppendProgress>,
}

fn io_err(e: StoreError) -> io::Error {
    io::Error::other(e)
}

impl StateMachine {
    /// The state machine over `store`, its files under `dir`, resuming where the store's
    /// log says it stopped.
    pub fn open(store: Arc<MessageStore>, dir: &Path) -> io::Result<StateMachine> {
        crate::log_store::create_dir_durable(dir)?;
        let snapshot: Option<SnapshotRecord> = read_state(&dir.join("snapshot"))?;
        let membership: Option<Membership> = read_state(&dir.join("membership"))?;
        let hint = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("applied"))?;
        // Streams of transfers a stop interrupted (an unfinished install was resolved
        // before the store opened).
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(RECEIVED) {
                fs::remove_file(entry.path())?;
            }
        }
        let (covered, _) = watch::channel(Covered {
            upto: snapshot
                .as_ref()
                .and_then(|s| s.meta.last_log_id)
                .map(|l| l.index),
            recoverable: None,
            failed: false,
        });
        let applied = recover(&store, snapshot.as_ref(), membership, read_hint(&hint))?;
        log::info!(
            "raft state machine at {}: applied up to {:?}, log end {}",
            dir.display(),
            applied.last_applied,
            applied.end
        );
        Ok(StateMachine {
            shared: Arc::new(Shared {
                store,
                dir: dir.to_path_buf(),
                applied: Mutex::new(applied),
                snapshot: Mutex::new(snapshot),
                hint,
                streams: std::sync::atomic::AtomicU64::new(0),
                covered,
                log_syncs: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The store the log is applied to.
    pub fn store(&self) -> &Arc<MessageStore> {
        &self.shared.store
    }

    /// Checks what recovery found applied against the Raft log, which `open` does not
    /// see: the last entry applied (and the entry partly stored, if any) must be one the
    /// log holds with the same id, purged from it, or the recorded snapshot's or
    /// membership's. The entry ids in stored records are not under their CRC, and one
    /// past the log's end would have openraft purge the whole log at its start (and
    /// make the node's log look newer than every other's).
    pub(crate) fn check_log(&self, log: &crate::LogStore) -> io::Result<()> {
        let applied = self.shared.applied.lock().clone();
        let snapshot = self
            .shared
            .snapshot
            .lock()
            .as_ref()
            .and_then(|s| s.meta.last_log_id);
        let recorded = [snapshot, *applied.membership.log_id()];
        let purged = log.last_purged_index();
        let partial = applied.partial.map(|(id, _)| id);
        for id in [applied.last_applied, partial].into_iter().flatten() {
            let vouched = match log.log_id_at(id.index) {
                Some(held) => held == id,
                None => purged.is_some_and(|p| id.index <= p) || recorded.contains(&Some(id)),
            };
            if !vouched {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the store names entry {id} as applied, but the raft log (ending at \
                         {:?}) holds {:?} at its index, and no snapshot or membership \
                         record names it",
                        log.last_log_id(),
                        log.log_id_at(id.index)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// From now on an apply first waits until every append submitted to the node's Raft
    /// log is durable, so that a store's record never reaches the disk before its
    /// entry's frame (after a power cut [`check_log`](Self::check_log) would refuse the
    /// node). openraft 0.9.25 already waits for an append's sync before it reads the
    /// entries for apply, and the log's open syncs what it loaded; this wait keeps the
    /// rule whatever openraft's ordering (later versions submit appends without waiting).
    /// An entry is readable for apply only once its append was submitted or it was
    /// loaded at the open, so waiting for every submitted append covers it. It costs
    /// nothing measurable: the flush thread syncs every waiting append at once.
    pub(crate) fn apply_after_log_syncs(&self, progress: AppendProgress) {
        // Set once, by the node's open.
        let _ = self.shared.log_syncs.set(progress);
    }

    /// The Raft log's progress an apply waits on (a node's state machine has its log's).
    #[cfg(test)]
    pub(crate) fn log_syncs(&self) -> Option<&AppendProgress> {
        self.shared.log_syncs.get()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.shared.applied.lock().last_applied
    }

    /// Ends every purge waiting for an install, with an error: the node is stopping.
    pub(crate) fn refuse_purges(&self) {
        self.shared.covered.send_modify(|c| c.failed = true);
    }

    /// How far the recorded snapshot reaches, as it moves (see `LogStore::gate_purges`).
    pub(crate) fn covered(&self) -> watch::Receiver<Covered> {
        self.shared.covered.subscribe()
    }

    async fn put(&self, req: &PutRequest, at: BatchPosition) -> StoreResult<PutResponse> {
        let msg = req.to_message(at);
        let log_id = at.log_id;
        let mut backoff = Duration::from_millis(1);
        loop {
            match self
                .shared
                .store
                .put_message_stamped(&msg, req.store_timestamp)
            {
                Ok(put) => {
                    return Ok(PutResponse::Stored {
                        physical_offset: put.physical_offset,
                        queue_offset: put.queue_offset,
                        store_timestamp: put.store_timestamp,
                    });
                }
                // The message itself is at fault: every replica refuses it alike.
                Err(
                    e @ (StoreError::InvalidTopic { .. }
                    | StoreError::InvalidQueueId { .. }
                    | StoreError::MessageTooLarge { .. }
                    | StoreError::RecordTooLarge { .. }
                    | StoreError::PropertiesTooLarge { .. }
                    | StoreError::InvalidProperty { .. }),
                ) => return Ok(PutResponse::Rejected(e.to_string())),
                // This node's condition, not the message's: skipping the entry here would
                // make this replica differ from the others, so wait until it passes.
                Err(
                    e @ (StoreError::DiskFull { .. }
                    | StoreError::PageCacheBusy { .. }
                    | StoreError::DispatchStalled { .. }),
                ) => {
                    if backoff >= Duration::from_millis(512) {
                        log::warn!("raft apply of {log_id} waits: {e}");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(StorageIOError::write_state_machine(&io_err(e)).into()),
            }
        }
    }

    async fn apply_batch(
        &self,
        batch: &PutBatch,
        log_id: LogId<NodeId>,
    ) -> StoreResult<BatchResponse> {
        // After a crash that kept only the first puts of this entry: skip those. A later
        // entry's record in the store means this one was applied whole (its last puts may
        // have been refused, which leaves no record saying it ended): skip it all.
        let stored = match self.shared.applied.lock().partial {
            Some((id, stored)) if id.index == log_id.index => stored as usize,
            Some((id, _)) if id.index > log_id.index => batch.puts.len(),
            _ => 0,
        };
        let of = batch.puts.len() as u32;
        let mut puts = Vec::with_capacity(batch.puts.len());
        for (i, req) in batch.puts.iter().enumerate() {
            if i < stored {
                puts.push(PutResponse::AlreadyApplied);
                continue;
            }
            let at = BatchPosition {
                log_id,
                at: i as u32,
                of,
            };
            puts.push(self.put(req, at).await?);
        }
        Ok(BatchResponse { puts })
    }

    fn write_membership(&self, membership: &Membership) -> io::Result<()> {
        // Everything applied before the change must outlive the record of it.
        self.shared.store.flush().map_err(io_err)?;
        write_state(&self.shared.dir.join("membership"), membership)
    }

    fn write_hint(&self, applied: &Applied) {
        let mut bytes = serde_json::to_vec(applied).expect("applied state serializes");
        let crc = crc32fast::hash(&bytes);
        let mut framed = Vec::with_capacity(bytes.len() + 8);
        framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        framed.extend_from_slice(&crc.to_be_bytes());
        framed.append(&mut bytes);
        // Only a hint: a torn or stale one is detected and the log's tail is walked.
        if let Err(e) = self.shared.hint.write_all_at(&framed, 0) {
            log::warn!("raft state machine hint not written: {e}");
        }
    }
}

fn read_hint(file: &File) -> Option<Applied> {
    let mut header = [0u8; 8];
    file.read_exact_at(&mut header, 0).ok()?;
    let len = u32::from_be_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header[4..].try_into().ok()?);
    // A torn or damaged length must not size the buffer: it can name up to 4 GiB.
    let stored = file.metadata().ok()?.len().saturating_sub(8);
    if len as u64 > stored {
        return None;
    }
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, 8).ok()?;
    (crc32fast::hash(&bytes) == crc)
        .then(|| serde_json::from_slice(&bytes).ok())
        .flatten()
}

/// Where the store stands in the Raft log: from the best known starting point (the
/// hint, if it still describes the log; else the last snapshot; else the log's start),
/// the records from there to the log's end are read for their log ids.
fn recover(
    store: &MessageStore,
    snapshot: Option<&SnapshotRecord>,
    membership: Option<Membership>,
    hint: Option<Applied>,
) -> io::Result<Applied> {
    let end = store.max_physical_offset();
    let mut base = match snapshot {
        Some(s) if s.end > end => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the store ends at {end}, below its snapshot's end {}: it lost flushed data",
                    s.end
                ),
            ));
        }
        Some(s) => Applied {
            last_applied: s.meta.last_log_id,
            membership: s.meta.last_membership.clone(),
            end: s.end,
            partial: None,
        },
        None => Applied {
            end: store.min_physical_offset(),
            ..Applied::default()
        },
    };
    if let Some(h) = hint.filter(|h| h.end <= end && h.last_applied >= base.last_applied) {
        base = h;
        // Its end is where a partial entry began: the walk from there finds what of it is
        // still stored (a later crash may have lost more).
        base.partial = None;
    }
    if let Some(m) = membership.filter(|m| m.log_id() > base.membership.log_id()) {
        base.last_applied = base.last_applied.max(*m.log_id());
        base.membership = m;
    }
    let file_size = store.config().commit_log_file_size;
    // Retention may have deleted the files the snapshot ended in: the walk starts at the
    // first record left. Entries are applied in log order, so the records from there on
    // still name the last one applied.
    let skipped = base.end < store.min_physical_offset();
    let mut pos = base.end.max(store.min_physical_offset());
    // Where the partial entry's first stored put begins.
    let mut partial_start = pos;
    let mut found = false;
    // The position the record before named: puts are stored in the order they are applied.
    let mut before: Option<BatchPosition> = None;
    while pos < end {
        match store.lookup_message(pos).map_err(io_err)? {
            Some(m) => {
                let at = m
                    .properties
                    .get(PROPERTY_RAFT_LOG_ID)
                    .and_then(BatchPosition::parse)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the record at {pos} was not applied from the raft log"),
                        )
                    })?;
                // The property is not under the record's CRC: a damaged digit must not
                // become the last entry applied (see `StateMachine::check_log`).
                if let Some(b) =
                    before.filter(|b| (b.log_id.index, b.at) >= (at.log_id.index, at.at))
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the record at {pos} names put {at}, not after the record before it ({b})"
                        ),
                    ));
                }
                before = Some(at);
                found = true;
                let done = base
                    .last_applied
                    .is_some_and(|l| at.log_id.index <= l.index);
                if at.is_last() {
                    base.last_applied = base.last_applied.max(Some(at.log_id));
                    base.partial = None;
                } else if !done {
                    // (A `done` entry is recorded as applied, by the membership file past
                    // the hint, say, and its last puts were refused: whole, not partial.)
                    match base.partial {
                        Some((id, _)) if id.index == at.log_id.index => {}
                        // A record of a later entry: the partial one was applied whole
                        // (its last puts refused, which leaves no record saying it ended).
                        earlier => {
                            if let Some((id, _)) = earlier {
                                base.last_applied = base.last_applied.max(Some(id));
                            }
                            partial_start = pos;
                        }
                    }
                    base.partial = Some((at.log_id, at.at + 1));
                }
                pos += u64::from(m.total_size);
            }
            // Nothing readable: only a file's closing blank record may be there, and the
            // log goes on in the next file. Anything else (a reader limit, damage) must
            // not be skipped, or puts would be applied twice.
            None => {
                let raw = store.read_log(pos, 64).map_err(io_err)?;
                if !crate::snapshot::is_blank(&raw) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("no record can be read at {pos}, below the log's end {end}"),
                    ));
                }
                pos = (pos / file_size + 1) * file_size;
            }
        }
    }
    if skipped && !found {
        // Retention deleted what followed the recorded state, and left no record that
        // names an entry: the last one applied cannot be known, and guessing low would
        // apply entries the store holds twice.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the store starts at {} past the recorded state's end {}, and holds no \
                 record naming the last entry applied",
                store.min_physical_offset(),
                base.end
            ),
        ));
    }
    // The applied state ends where the last whole entry does: a snapshot taken before the
    // partial entry is applied again must not hold its first puts, or a replica that
    // installs it would store them twice.
    base.end = match base.partial {
        Some(_) => partial_start,
        None => end,
    };
    Ok(base)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let record = self
            .record_now()
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.snapshot_of(record)
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

impl StateMachine {
    /// Flushes the store and records a snapshot of what is applied now (or keeps a newer
    /// one an install recorded meanwhile); returns the record kept.
    fn record_now(&self) -> io::Result<SnapshotRecord> {
        let applied = self.shared.applied.lock().clone();
        // The snapshot is the log up to `end`: it must be durable before it is vouched for.
        self.shared.store.flush().map_err(io_err)?;
        let id = applied
            .last_applied
            .map_or_else(|| "none".to_string(), |l| l.to_string());
        self.keep_newest(SnapshotRecord {
            meta: SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id: format!("{id}@{}", applied.end),
            },
            end: applied.end,
        })
    }

    /// Records `record` durably unless a newer one is recorded; returns the one kept.
    /// Builds (their own task) and installs (the state machine's) are serialised here.
    fn keep_newest(&self, record: SnapshotRecord) -> io::Result<SnapshotRecord> {
        let mut current = self.shared.snapshot.lock();
        if let Some(c) = current.as_ref()
            && c.meta.last_log_id >= record.meta.last_log_id
        {
            return Ok(c.clone());
        }
        write_state(&self.shared.dir.join("snapshot"), &record)?;
        *current = Some(record.clone());
        let upto = record.meta.last_log_id.map(|l| l.index);
        self.shared
            .covered
            .send_modify(|c| c.upto = c.upto.max(upto));
        Ok(record)
    }

    /// The snapshot to send for `record`: the log from its first file to the record's end,
    /// held against retention while it is streamed.
    fn snapshot_of(&self, record: SnapshotRecord) -> io::Result<Snapshot<TypeConfig>> {
        let store = &self.shared.store;
        let data = SnapshotData::source(Arc::clone(store), record.end)?;
        let mut meta = record.meta;
        // The stream's bytes depend on where it starts: a resumed transfer must not mix two.
        if let SnapshotData::Source(stream) = &data {
            meta.snapshot_id = format!("{}+{}", meta.snapshot_id, stream.start());
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> StoreResult<(Option<LogId<NodeId>>, Membership)> {
        let applied = self.shared.applied.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<BatchResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        if let Some(progress) = self.shared.log_syncs.get() {
            progress
                .all_synced()
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        let mut responses = Vec::new();
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => BatchResponse::default(),
                EntryPayload::Normal(batch) => self.apply_batch(batch, entry.log_id).await?,
                EntryPayload::Membership(m) => {
                    let membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    self.write_membership(&membership)
                        .map_err(|e| StorageIOError::write_state_machine(&e))?;
                    self.shared.applied.lock().membership = membership;
                    BatchResponse::default()
                }
            };
            let mut applied = self.shared.applied.lock();
            applied.last_applied = Some(entry.log_id);
            // A partial entry further on stays known until it is applied again, and the
            // end stays where it begins: this entry, before it, stored nothing now.
            applied.partial = applied
                .partial
                .filter(|(id, _)| id.index > entry.log_id.index);
            if applied.partial.is_none() {
                applied.end = self.shared.store.max_physical_offset();
            }
            responses.push(response);
        }
        let applied = self.shared.applied.lock().clone();
        self.write_hint(&applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<SnapshotData>> {
        let n = self
            .shared
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.shared.dir.join(format!("{RECEIVED}{n}.tmp"));
        let data = SnapshotData::receive(path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(data))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> StoreResult<()> {
        /// Fails the purge queued with this install unless the install succeeded (a
        /// panic included).
        struct FailUnlessDone<'a>(&'a watch::Sender<Covered>, bool);
        impl Drop for FailUnlessDone<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.send_modify(|c| c.failed = true);
                }
            }
        }
        let mut guard = FailUnlessDone(&self.shared.covered, false);
        let installed = self.install(meta, snapshot).await;
        guard.1 = installed.is_ok();
        installed
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let Some(mut record) = self.shared.snapshot.lock().clone() else {
            return Ok(None);
        };
        // openraft 0.9 treats a missing snapshot here as fatal (it builds new ones only on
        // its own schedule), so a snapshot whose log retention deleted is rebuilt at once:
        // the log from its first file to its end now. No apply runs meanwhile (this is the
        // state machine's own task), so the applied state is the one the log ends at.
        for _ in 0..3 {
            match self.snapshot_of(record) {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::info!("snapshot {}: rebuilding, its log is gone", e);
                    record = self
                        .record_now()
                        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
                }
                Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
            }
        }
        let e = io::Error::other("retention keeps deleting the snapshot's log");
        Err(StorageIOError::read_snapshot(None, &e).into())
    }
}

impl StateMachine {
    /// Appends a received snapshot's stream to the store and records it (the body of
    /// `install_snapshot`).
    async fn install(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotData>,
    ) -> StoreResult<()> {
        let err = |e: io::Error| StorageIOError::read_snapshot(Some(meta.signature()), &e);
        let SnapshotData::Received { file, path } = *snapshot else {
            return Err(err(io::Error::other("not a received snapshot")).into());
        };
        let header = snapshot::read_header(&File::open(path.path()).map_err(err)?).map_err(err)?;
        // What the store holds before the install is durable before the install's start
        // is recorded, so that a roll-back to it cuts nothing the store lost.
        self.shared.store.flush().map_err(|e| err(io_err(e)))?;
        let from = self.shared.store.max_physical_offset();
        if from > header.end || from < header.start {
            // openraft sends only snapshots newer than what this node applied; one that
            // starts past this store's end cannot be appended to it.
            return Err(err(io::Error::other(format!(
                "snapshot {} holds the log from {} to {}, this store ends at {from}{}",
                meta.snapshot_id,
                header.start,
                header.end,
                if from < header.start {
                    ": copy the leader's files to catch up"
                } else {
                    ""
                }
            )))
            .into());
        }
        // The stream is kept durably until the install is recorded: a crash in between
        // finishes the install from it at the next open.
        file.sync_all().await.map_err(err)?;
        drop(file);
        let path = path.keep();
        sync_dir(&self.shared.dir).map_err(err)?;
        let installing = Installing {
            meta: meta.clone(),
            from,
            stream: path.file_name().map(|n| n.to_string_lossy().into_owned()),
        };
        write_state(&self.shared.dir.join("installing"), &installing).map_err(err)?;
        // From here a restart finishes the install: the purge queued with it may go on.
        let index = meta.last_log_id.map(|l| l.index);
        self.shared
            .covered
            .send_modify(|c| c.recoverable = c.recoverable.max(index));
        let store = Arc::clone(&self.shared.store);
        let install_path = path.clone();
        let end = tokio::task::spawn_blocking(move || snapshot::install(&store, &install_path))
            .await
            .map_err(|e| err(io::Error::other(e)))?
            .map_err(err)?;
        self.shared.store.flush().map_err(|e| err(io_err(e)))?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            end,
        };
        self.keep_newest(record).map_err(err)?;
        self.write_membership(&meta.last_membership).map_err(err)?;
        fs::remove_file(self.shared.dir.join("installing")).map_err(err)?;
        let applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            end,
            partial: None,
        };
        *self.shared.applied.lock() = applied.clone();
        self.write_hint(&applied);
        let _ = fs::remove_file(&path);
        log::info!(
            "installed snapshot {}: the log now ends at {end}",
            meta.snapshot_id
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An install record whose stream names a file out of the state directory (its CRC
    /// whole) refuses the open, and that file is neither read nor removed.
    #[test]
    fn an_install_record_naming_a_file_elsewhere_refuses_the_open() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        fs::create_dir(&dir).unwrap();
        let victim = base.path().join("victim");
        let store = rocketstore::StoreConfig::new(base.path().join("store"));
        for stream in ["../victim".to_owned(), victim.display().to_string()] {
            fs::write(&victim, b"keep").unwrap();
            let installing = Installing {
                meta: SnapshotMeta::default(),
                from: 0,
                stream: Some(stream.clone()),
            };
            write_state(&dir.join("installing"), &installing).unwrap();
            let err = unfinished_install(&dir, &store, None).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{stream}: {err}");
            assert_eq!(fs::read(&victim).unwrap(), b"keep", "{stream}");
            assert!(dir.join("installing").exists());
        }
    }

    /// An apply waits until every append submitted to the node's Raft log is synced: a
    /// record in the store must never outlive, on a power cut, the log's frame of its
    /// entry. A failed sync fails the apply, and nothing is stored.
    #[tokio::test]
    async fn an_apply_waits_for_the_raft_log_to_sync_its_appends() {
        use std::future::Future;
        use std::sync::atomic::AtomicU64;
        use std::task::{Context, Poll, Waker};

        use openraft::CommittedLeaderId;

        use crate::log_store::Synced;

        fn entry(index: u64) -> Entry<TypeConfig> {
            let msg = rocketstore::Message::new("T", 0u32, format!("entry {index}"));
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(PutBatch {
                    puts: vec![PutRequest::new(msg, 1_700_000_000_000)],
                }),
            }
        }

        let base = tempfile::tempdir().unwrap();
        let config =
            rocketstore::StoreConfig::new(base.path().join("store")).commit_log_file_size(64 << 10);
        let store = Arc::new(MessageStore::open(config).unwrap());
        let sm = StateMachine::open(Arc::clone(&store), &base.path().join("state")).unwrap();
        let submitted = Arc::new(AtomicU64::new(1));
        let (synced, watching) = watch::channel(Synced::default());
        sm.apply_after_log_syncs(AppendProgress::from_parts(Arc::clone(&submitted), watching));

        // One append submitted, none synced: the apply stores nothing yet.
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut applier = sm.clone();
            let mut applying = std::pin::pin!(applier.apply(vec![entry(1)]));
            assert!(applying.as_mut().poll(&mut cx).is_pending());
            assert_eq!(store.max_physical_offset(), 0);
            assert_eq!(sm.last_applied(), None);
            synced.send_modify(|s| s.count = 1);
            let Poll::Ready(applied) = applying.as_mut().poll(&mut cx) else {
                panic!("the apply still waits once its append is synced");
            };
            assert_eq!(applied.unwrap().len(), 1);
        }
        assert!(store.max_physical_offset() > 0);
        assert_eq!(sm.last_applied().map(|l| l.index), Some(1));

        // A sync fails: the apply fails and stores nothing.
        let end = store.max_physical_offset();
        submitted.store(2, std::sync::atomic::Ordering::Release);
        synced.send_modify(|s| {
            s.count = 2;
            s.failed = true;
        });
        assert!(sm.clone().apply(vec![entry(2)]).await.is_err());
        assert_eq!(store.max_physical_offset(), end);
        assert_eq!(sm.last_applied().map(|l| l.index), Some(1));
    }
}
