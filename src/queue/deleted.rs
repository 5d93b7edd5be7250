//! `{root}/deleted_topics`: topics deleted by `MessageStore::delete_topic`, each with its
//! cutoff, the commit-log offset where the deletion happened. The log keeps the topic's
//! records until retention; below the cutoff they belong to the deleted topic and nothing
//! indexes or returns them again (dispatch, recovery, a rebuild, a key query). At and past
//! it the topic starts again at queue offset 0.
//!
//! A deletion is `done` once dispatch has passed the cutoff and removed the topic's old
//! consume queues. Until then the old queues may still be on disk, and no entry of the
//! new topic is: an open that finds a deletion not done removes the old queues first.
//!
//! Text, replaced atomically: a header line, `{topic} {cutoff} {0|1 done}` per topic, and
//! a `crc {CRC-32}` line over everything before it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::commit_log::record::validate_topic;
use crate::error::{Error, Result};
use crate::fs::io_hook::IoHook;
use crate::fs::ops::{self, ReplaceFailed};

const HEADER: &str = "rocketstore-deleted-topics-v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tombstone {
    pub cutoff: u64,
    pub done: bool,
}

pub(crate) struct DeletedTopics {
    path: PathBuf,
    /// Writes of the file go through it (`IoHook`).
    hook: Option<Arc<dyn IoHook>>,
    topics: RwLock<HashMap<String, Tombstone>>,
    /// The lowest cutoff of a deletion not done yet (`u64::MAX` when none): dispatch checks
    /// each record's offset against it, one load.
    next_cutoff: AtomicU64,
    /// Whether any topic is deleted: the per-record check is one load when none is.
    any: std::sync::atomic::AtomicBool,
}

impl DeletedTopics {
    /// Reads the file at `path` (none: nothing deleted). A damaged file refuses the open:
    /// forgetting a deletion would bring the topic's old messages back.
    pub(crate) fn open(path: PathBuf, hook: Option<Arc<dyn IoHook>>) -> Result<DeletedTopics> {
        let topics = match crate::fs::ops::read_text(&path)? {
            Some(text) => parse(&text).ok_or_else(|| Error::BadStoreFile {
                path: path.clone(),
                reason: "not a valid deleted-topics file (header, rows or CRC)".into(),
            })?,
            None => HashMap::new(),
        };
        let d = DeletedTopics {
            path,
            hook,
            topics: RwLock::new(topics),
            next_cutoff: AtomicU64::new(u64::MAX),
            any: std::sync::atomic::AtomicBool::new(false),
        };
        d.refresh();
        Ok(d)
    }

    fn refresh(&self) {
        let topics = self.topics.read();
        let next = topics
            .values()
            .filter(|t| !t.done)
            .map(|t| t.cutoff)
            .min()
            .unwrap_or(u64::MAX);
        self.next_cutoff.store(next, Ordering::SeqCst);
        self.any.store(!topics.is_empty(), Ordering::SeqCst);
    }

    fn persist(
        &self,
        topics: &HashMap<String, Tombstone>,
    ) -> std::result::Result<(), ReplaceFailed> {
        let mut rows: Vec<_> = topics.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let mut text = format!("{HEADER}\n");
        for (topic, t) in rows {
            text.push_str(&format!("{topic} {} {}\n", t.cutoff, u8::from(t.done)));
        }
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("crc {crc}\n"));
        ops::replace_file_telling(&self.path, text.as_bytes(), self.hook.as_ref())
    }

    /// Records durably that `topic`'s records below `cutoff` are deleted (a deletion not
    /// done yet). An earlier deletion of the topic is replaced: its records lie below the
    /// new cutoff too. A failure says whether the deletion may have reached the disk.
    pub(crate) fn record(
        &self,
        topic: &str,
        cutoff: u64,
    ) -> std::result::Result<(), ReplaceFailed> {
        let mut topics = self.topics.write();
        let mut next = topics.clone();
        next.insert(
            topic.to_owned(),
            Tombstone {
                cutoff,
                done: false,
            },
        );
        self.persist(&next)?;
        *topics = next;
        drop(topics);
        self.refresh();
        Ok(())
    }

    /// Records durably that `topic`'s old consume queues are gone.
    pub(crate) fn mark_done(&self, topic: &str) -> Result<()> {
        let mut topics = self.topics.write();
        let mut next = topics.clone();
        if let Some(t) = next.get_mut(topic) {
            t.done = true;
        }
        self.persist(&next)?;
        *topics = next;
        drop(topics);
        self.refresh();
        Ok(())
    }

    /// After a crash cut the log to `log_end`: a cutoff past it moves down to it. The
    /// topic's records between were cut with the log, and the next record of the topic,
    /// at `log_end` or past it, belongs to the new topic.
    pub(crate) fn clamp_to(&self, log_end: u64) -> Result<()> {
        let mut topics = self.topics.write();
        if !topics.values().any(|t| t.cutoff > log_end) {
            return Ok(());
        }
        let mut next = topics.clone();
        for t in next.values_mut() {
            t.cutoff = t.cutoff.min(log_end);
        }
        self.persist(&next)?;
        *topics = next;
        drop(topics);
        self.refresh();
        Ok(())
    }

    /// The cutoff of `topic`'s deletion, if it was deleted.
    pub(crate) fn cutoff(&self, topic: &str) -> Option<u64> {
        self.topics.read().get(topic).map(|t| t.cutoff)
    }

    /// Forgets deletions that are done and whose records retention has deleted (all
    /// below `log_start`).
    pub(crate) fn retire_below(&self, log_start: u64) -> Result<()> {
        let mut topics = self.topics.write();
        if !topics.values().any(|t| t.done && t.cutoff <= log_start) {
            return Ok(());
        }
        let mut next = topics.clone();
        next.retain(|_, t| !(t.done && t.cutoff <= log_start));
        self.persist(&next)?;
        *topics = next;
        drop(topics);
        self.refresh();
        Ok(())
    }

    /// Whether the record of `topic` at commit-log `offset` belongs to a deleted topic.
    #[inline]
    pub(crate) fn hides(&self, topic: &str, offset: u64) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .topics
                .read()
                .get(topic)
                .is_some_and(|t| offset < t.cutoff)
    }

    /// The lowest cutoff of a deletion not done yet, `u64::MAX` when none.
    #[inline]
    pub(crate) fn next_cutoff(&self) -> u64 {
        self.next_cutoff.load(Ordering::SeqCst)
    }

    /// Deletions not done yet whose cutoff is at or below `offset`.
    pub(crate) fn due(&self, offset: u64) -> Vec<String> {
        self.topics
            .read()
            .iter()
            .filter(|(_, t)| !t.done && t.cutoff <= offset)
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// Every deletion not done yet.
    pub(crate) fn not_done(&self) -> Vec<String> {
        self.due(u64::MAX)
    }

    /// Whether the deletion of `topic` is done (or it is not deleted at all).
    pub(crate) fn is_done(&self, topic: &str) -> bool {
        self.topics.read().get(topic).is_none_or(|t| t.done)
    }
}

fn parse(text: &str) -> Option<HashMap<String, Tombstone>> {
    let body_end = text.rfind("crc ")?;
    let (body, crc_line) = text.split_at(body_end);
    let crc: u32 = crc_line.trim_end().strip_prefix("crc ")?.parse().ok()?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut topics = HashMap::new();
    for line in lines {
        let mut f = line.split(' ');
        let topic = f.next()?.to_owned();
        // The topic names a directory an open removes: `..` or an empty name would reach
        // past it, whatever the CRC says.
        validate_topic(&topic).ok()?;
        let cutoff = f.next()?.parse().ok()?;
        let done = match f.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        if f.next().is_some() || topics.insert(topic, Tombstone { cutoff, done }).is_some() {
            return None;
        }
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_persist_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deleted_topics");
        let d = DeletedTopics::open(path.clone(), None).unwrap();
        assert!(!d.hides("T", 0));
        d.record("T", 100).unwrap();
        assert!(d.hides("T", 99) && !d.hides("T", 100) && !d.hides("U", 0));
        assert_eq!(
            (d.next_cutoff(), d.due(99).len(), d.due(100).len()),
            (100, 0, 1)
        );
        d.mark_done("T").unwrap();
        assert_eq!(d.next_cutoff(), u64::MAX);
        let d = DeletedTopics::open(path.clone(), None).unwrap();
        assert!(d.hides("T", 99) && d.is_done("T"));
        d.retire_below(100).unwrap();
        assert!(!d.hides("T", 99));
        d.record("T", 7).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("T 7", "T 8")).unwrap();
        assert!(matches!(
            DeletedTopics::open(path.clone(), None),
            Err(Error::BadStoreFile { .. })
        ));
    }

    /// Bytes that are not text (found by the `small_files` fuzz target) are a damaged
    /// file, not an I/O error.
    #[test]
    fn a_file_that_is_not_text_is_a_bad_store_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deleted_topics");
        std::fs::write(&path, b"rocketstore-deleted-topics-v1\n\xff 5 0\n").unwrap();
        assert!(matches!(
            DeletedTopics::open(path, None),
            Err(Error::BadStoreFile { .. })
        ));
    }

    /// Rows whose CRC matches but whose topic would take the open's removal of old queues
    /// out of `consumequeue/` (or to all of it), or which are ambiguous, are refused.
    #[test]
    fn a_row_naming_no_topic_is_refused_whatever_its_crc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deleted_topics");
        let sound = "T 5 0\n".to_owned();
        let mut cases = vec![
            sound.clone(),
            "T 5 0\nT 6 1\n".into(),
            "T 5 0 extra\n".into(),
        ];
        cases.extend(["..", "../..", "", "/etc", "a/b", "."].map(|t| format!("{t} 5 0\n")));
        for rows in cases {
            let body = format!("{HEADER}\n{rows}");
            let text = format!("{body}crc {}\n", crc32fast::hash(body.as_bytes()));
            std::fs::write(&path, text).unwrap();
            let opened = DeletedTopics::open(path.clone(), None);
            if rows == sound {
                assert!(opened.unwrap().hides("T", 4), "a sound row");
            } else {
                let refused = matches!(opened, Err(Error::BadStoreFile { .. }));
                assert!(refused, "{rows:?} was taken");
            }
        }
    }
}
