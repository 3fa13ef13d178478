//! The shard's durable log (`--data-dir`): opened and replayed into the home before the shard
//! takes a connection, sealed once per turn, and its commits' reports released when the writer
//! thread says they are durable (`ShardMsg::Synced`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringcast_store::{Commit, Durability, Log, Options, RecordId, WriterStats};

use crate::push::home::Home;
use crate::push::journal::Journal;
use crate::push::msg::ShardMsg;
use crate::push::report::{ReportPart, Totals};
use crate::server::inbox::Router;

use super::Core;

/// The home's journal: the shard's log.
#[derive(Debug)]
pub(crate) struct LogJournal {
    log: Log,
}

impl Journal for LogJournal {
    fn append(&mut self, kind: u8, body: &[u8]) -> Option<RecordId> {
        // Once the writer has failed it takes nothing (fail-stop): the commits of what is
        // appended fail too, and their reports say so.
        self.log.append(kind, body).ok()
    }

    fn release(&mut self, id: RecordId) {
        self.log.release(id);
    }

    fn seal(&mut self) -> Result<Option<u64>, String> {
        self.log.seal()
    }

    fn to_copy_forward(&self) -> Vec<u32> {
        self.log.to_copy_forward()
    }
}

/// Commits sealed and not yet reported durable, each with the reports that wait for it.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    commits: VecDeque<(u64, Vec<ReportPart>)>,
    pub(crate) stats: Option<Arc<WriterStats>>,
    failed: bool,
}

/// Where shard `id` keeps its log under `data_dir`.
pub(crate) fn shard_dir(data_dir: &Path, id: usize) -> PathBuf {
    data_dir.join(format!("shard-{id}"))
}

/// Opens shard `id`'s log and replays it into `home`; the writer thread reports commits to the
/// shard through its inbox. Returns the home with its journal.
pub(crate) fn open(
    home: Home,
    dir: &Path,
    id: usize,
    durability: Durability,
    segment_bytes: u64,
    router: Arc<Router>,
) -> std::io::Result<(Home, Waiting)> {
    let started = crate::clock::now();
    let mut home = home;
    let mut unknown = 0u64;
    let on_commit = move |c: Commit| {
        // The shard's own inbox: a full one is waited for (the writer thread may wait; the
        // report must not be lost).
        let mut msg = ShardMsg::Synced { commit: c };
        for _ in 0..10_000 {
            match router.send(id, msg) {
                Ok(()) => return,
                Err(m) => msg = m,
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        tracing::error!(
            shard = id,
            "the shard's inbox stayed full for 10 s: a log commit report was lost"
        );
    };
    let opts = Options { segment_bytes, durability };
    // Each record goes to the home as it is read: nothing but the home's state is held.
    let (log, replayed) = Log::open(dir, opts, on_commit, |rid, kind, body| {
        if !home.replay(rid, kind, body) {
            unknown += 1;
        }
    })?;
    let stats = log.stats().clone();
    let mut home = home.with_journal(Box::new(LogJournal { log }));
    let now_ms = crate::clock::unix_ms();
    for d in &replayed.damage {
        tracing::warn!(
            shard = id,
            segment = d.segment,
            offset = d.offset,
            lost_bytes = d.lost_bytes,
            truncated = d.truncated,
            "the log was damaged: {} (the records after it are lost; their users' devices are told reset)",
            d.what
        );
    }
    if !replayed.damage.is_empty() {
        home.replay_damaged(now_ms);
    }
    home.replayed(now_ms);
    let took = crate::clock::now().saturating_duration_since(started);
    tracing::info!(
        shard = id,
        records = replayed.records,
        segments = replayed.segments,
        bytes = replayed.bytes,
        unknown,
        ms = took.as_millis() as u64,
        dir = %dir.display(),
        "log replayed"
    );
    let waiting = Waiting { stats: Some(stats), ..Waiting::default() };
    Ok((home, waiting))
}

impl Core {
    /// The end of a turn: this turn's records become one commit; the reports waiting for
    /// them complete when it is durable.
    pub(super) fn seal_log(&mut self) {
        let copied = self.home.copy_forward(self.now_ms);
        if copied > 0 {
            self.counters.log_copied_forward.add(copied as u64);
        }
        let Some((sealed, parts)) = self.home.seal() else { return };
        match sealed {
            Ok(Some(n)) => self.log.commits.push_back((n, parts)),
            // Nothing new in this turn: the parts (answers to acks) wait for the last commit
            // still in flight, which holds those acks' cursors.
            Ok(None) => match self.log.commits.back_mut() {
                Some((_, waiting)) => waiting.extend(parts),
                None => drop(parts),
            },
            Err(e) => {
                tracing::error!(shard = self.id, "the log cannot take commits: {e}");
                unsaved(parts);
            }
        }
    }

    /// The writer thread's report: commits up to `n` are durable, or failed.
    pub(super) fn synced(&mut self, commit: Commit) {
        let (n, failed) = match &commit {
            Commit::Done(n) => (*n, None),
            Commit::Failed(n, e) => (*n, Some(e.clone())),
        };
        while self.log.commits.front().is_some_and(|(c, _)| *c <= n) {
            let Some((_, parts)) = self.log.commits.pop_front() else { break };
            match failed {
                None => drop(parts),
                Some(_) => unsaved(parts),
            }
        }
        if let Some(e) = failed {
            if !self.log.failed {
                self.log.failed = true;
                self.counters.log_failures.inc();
                tracing::error!(
                    shard = self.id,
                    "durable writes fail from now on (pushes to durable streams get 503): {e}"
                );
            }
        }
        if let Some(s) = &self.log.stats {
            use std::sync::atomic::Ordering::Relaxed;
            self.counters.log_syncs.set(s.syncs.load(Relaxed));
            self.counters.log_sync_micros.set(s.sync_nanos.load(Relaxed) / 1000);
            self.counters.log_bytes_written.set(s.bytes_written.load(Relaxed));
            self.counters.log_segments_deleted.set(s.segments_deleted.load(Relaxed));
        }
    }
}

/// Reports of pushes the log could not make durable: each says so (the API answers 503).
fn unsaved(parts: Vec<ReportPart>) {
    for p in parts {
        p.add(Totals { unsaved: 1, ..Default::default() });
    }
}
