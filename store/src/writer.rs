//! The writer thread of one log: it writes what the owner sealed, in order, makes it as
//! durable as the mode asks (one `fdatasync` per file for everything that was waiting: group
//! commit), deletes the segments the owner has no more use for, and reports each commit. The
//! owner never blocks on the disk.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::segment;

/// How durable a commit is when it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// On the disk (`fdatasync`): survives a power cut.
    Always,
    /// Written to the kernel at once (survives the process dying) and synced at most this
    /// far apart: a power cut may lose that much.
    Interval(Duration),
    /// Written to the kernel, never synced by ringcast (the kernel writes it back in its
    /// own time): survives the process dying, not a power cut.
    None,
}

impl Durability {
    /// `always`, `interval:MS` or `none`.
    pub fn parse(s: &str) -> Result<Durability, String> {
        match s {
            "always" => Ok(Durability::Always),
            "none" => Ok(Durability::None),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms >= 1 => Ok(Durability::Interval(Duration::from_millis(ms))),
                _ => Err(format!("durability {s:?}: use always, interval:MS (MS >= 1) or none")),
            },
        }
    }
}

/// What a commit became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Every commit up to this number is as durable as the mode asks.
    Done(u64),
    /// Commits up to this number could not be written (the disk is full, failing, gone): the
    /// log writes nothing more, and every later commit fails the same way.
    Failed(u64, String),
}

pub(crate) enum Cmd {
    /// Bytes for the end of a segment (created with its header on the first write).
    Write { segment: u32, bytes: Vec<u8> },
    /// Everything before this is part of commit `n`.
    Commit(u64),
    /// The owner needs nothing in this segment any more.
    Delete(u32),
}

/// What the writer has done, for metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub bytes_written: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_nanos: AtomicU64,
    pub commits: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub failures: AtomicU64,
}

/// The writer thread's one clock read: it times its syncs and the interval between them (the
/// thread is an I/O edge, like a shard's tick).
#[expect(clippy::disallowed_methods, reason = "the writer thread's one clock read")]
fn now() -> Instant {
    Instant::now()
}

struct Writer {
    dir: PathBuf,
    mode: Durability,
    files: BTreeMap<u32, File>,
    /// Files written since their last sync, and whether a segment was created (the directory
    /// needs a sync for its entry to last).
    dirty: Vec<u32>,
    created: bool,
    /// The highest commit written, and the highest reported.
    written: u64,
    reported: u64,
    last_sync: Instant,
    broken: Option<String>,
    stats: Arc<WriterStats>,
}

pub(crate) fn run(
    dir: PathBuf,
    mode: Durability,
    rx: Receiver<Cmd>,
    stats: Arc<WriterStats>,
    on_commit: Box<dyn Fn(Commit) + Send>,
) {
    let mut w = Writer {
        dir,
        mode,
        files: BTreeMap::new(),
        dirty: Vec::new(),
        created: false,
        written: 0,
        reported: 0,
        last_sync: now(),
        broken: None,
        stats,
    };
    loop {
        // In interval mode, wake to sync what was written when its time comes.
        let first = match (w.mode, w.dirty.is_empty()) {
            (Durability::Interval(every), false) => {
                match rx.recv_timeout(
                    every.saturating_sub(now().saturating_duration_since(w.last_sync)),
                ) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            _ => match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            },
        };
        // Everything waiting goes in this round: one sync for all of it.
        for cmd in first.into_iter().chain(rx.try_iter()) {
            w.apply(cmd);
        }
        w.finish(&*on_commit);
    }
    // The owner is gone (shut down): what was written is made durable before the thread ends.
    if w.broken.is_none() && !w.dirty.is_empty() {
        let _ = w.sync();
    }
}

impl Writer {
    fn apply(&mut self, cmd: Cmd) {
        if self.broken.is_some() {
            if let Cmd::Commit(n) = cmd {
                self.written = self.written.max(n);
            }
            return;
        }
        let result = match cmd {
            Cmd::Write { segment, bytes } => self.write(segment, &bytes),
            Cmd::Commit(n) => {
                self.written = self.written.max(n);
                Ok(())
            }
            Cmd::Delete(segment) => self.delete(segment),
        };
        if let Err(e) = result {
            self.stats.failures.fetch_add(1, Relaxed);
            self.broken = Some(format!("the log in {} cannot be written: {e}", self.dir.display()));
        }
    }

    fn write(&mut self, segment: u32, bytes: &[u8]) -> io::Result<()> {
        if !self.files.contains_key(&segment) {
            // A later segment: the earlier ones are complete (synced first if they must be).
            if !self.dirty.is_empty() && self.mode == Durability::Always {
                self.sync()?;
            }
            let path = segment::path(&self.dir, segment);
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            if f.metadata()?.len() == 0 {
                f.write_all(&segment::header())?;
                self.created = true;
            }
            let done: Vec<u32> = self.files.keys().copied().filter(|s| *s < segment).collect();
            for s in done {
                if !self.dirty.contains(&s) {
                    self.files.remove(&s);
                }
            }
            self.files.insert(segment, f);
        }
        let f = self.files.get_mut(&segment).ok_or_else(|| io::Error::other("no file"))?;
        f.write_all(bytes)?;
        self.stats.bytes_written.fetch_add(bytes.len() as u64, Relaxed);
        if !self.dirty.contains(&segment) {
            self.dirty.push(segment);
        }
        Ok(())
    }

    fn delete(&mut self, segment: u32) -> io::Result<()> {
        // What came before the delete (the records that made the segment's records dead)
        // must be on disk before the segment goes.
        if !self.dirty.is_empty() && self.mode != Durability::None {
            self.sync()?;
        }
        self.files.remove(&segment);
        self.dirty.retain(|s| *s != segment);
        match std::fs::remove_file(segment::path(&self.dir, segment)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.stats.segments_deleted.fetch_add(1, Relaxed);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let t = now();
        for s in std::mem::take(&mut self.dirty) {
            if let Some(f) = self.files.get(&s) {
                f.sync_data()?;
            }
        }
        if std::mem::take(&mut self.created) {
            sync_dir(&self.dir)?;
        }
        // Keep the current segment open; drop the older ones now that they are synced.
        if let Some(&last) = self.files.keys().next_back() {
            self.files.retain(|s, _| *s == last);
        }
        self.last_sync = now();
        self.stats.syncs.fetch_add(1, Relaxed);
        self.stats
            .sync_nanos
            .fetch_add(now().saturating_duration_since(t).as_nanos() as u64, Relaxed);
        Ok(())
    }

    /// The end of a round: sync as the mode asks, then report.
    fn finish(&mut self, on_commit: &dyn Fn(Commit)) {
        if self.broken.is_none() && !self.dirty.is_empty() {
            let due = match self.mode {
                Durability::Always => true,
                Durability::Interval(every) => {
                    now().saturating_duration_since(self.last_sync) >= every
                }
                Durability::None => false,
            };
            if due {
                if let Err(e) = self.sync() {
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.broken =
                        Some(format!("the log in {} cannot be synced: {e}", self.dir.display()));
                }
            }
        }
        if self.written > self.reported {
            self.reported = self.written;
            self.stats.commits.fetch_add(1, Relaxed);
            match &self.broken {
                None => on_commit(Commit::Done(self.written)),
                Some(e) => on_commit(Commit::Failed(self.written, e.clone())),
            }
        }
    }
}

/// Makes a directory's entries (a created or removed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
