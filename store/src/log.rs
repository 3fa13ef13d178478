//! The owner's side of a log: it numbers records by where they will sit (segment and
//! offset), buffers them for the turn, and at the end of the turn seals them into one commit
//! for the writer thread. It counts each segment's live records: a segment whose records the
//! owner has all released is deleted whole, and a mostly-dead old segment is offered for its
//! few live records to be copied forward.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::record::{self, Reader, Tail, TooLarge, HEAD};
use super::segment::{self, Header, HEADER_LEN};
use super::writer::{self, Cmd, Commit, Durability, WriterStats};

/// How a log is kept.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A segment is closed once it holds this many bytes (64 KiB to 1 GiB).
    pub segment_bytes: u64,
    pub durability: Durability,
}

/// Where a record sits: its segment and its byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub segment: u32,
    pub offset: u32,
}

#[derive(Debug, Default)]
struct Seg {
    /// Bytes the segment holds once everything appended is written (header included).
    len: u64,
    records: u64,
    live: u64,
}

/// Damage found at replay: records from `offset` on in `segment` could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub segment: u32,
    pub offset: u64,
    pub lost_bytes: u64,
    pub what: &'static str,
    /// The last segment's damaged tail was cut off (a torn write); earlier segments are left
    /// as they are, their unreadable part lost.
    pub truncated: bool,
}

/// What replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    pub segments: usize,
    pub bytes: u64,
    pub damage: Vec<Damage>,
}

/// What the log holds, for metrics and the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub segments: usize,
    pub bytes: u64,
    pub records: u64,
    pub live: u64,
}

pub struct Log {
    dir: PathBuf,
    opts: Options,
    segs: BTreeMap<u32, Seg>,
    current: u32,
    /// Appended since the last seal, per segment, in order.
    chunks: Vec<(u32, Vec<u8>)>,
    deletes: Vec<u32>,
    next_commit: u64,
    tx: Option<Sender<Cmd>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<WriterStats>,
    _lock: File,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).field("current", &self.current).finish()
    }
}

/// Reads every segment of the log in `dir` in order, passing each readable record to `each`;
/// with `repair`, a torn or corrupt tail of the last segment is cut off (and a segment whose
/// header never got written is removed). Returns the segments, what was read, and the newest
/// segment number.
fn scan(
    dir: &Path,
    repair: bool,
    each: &mut impl FnMut(RecordId, u8, &[u8]),
) -> io::Result<(BTreeMap<u32, Seg>, Replayed, Option<u32>)> {
    let mut segs = BTreeMap::new();
    let mut replayed = Replayed::default();
    let listed = segment::list(dir)?;
    let mut buf = Vec::new();
    for (i, &s) in listed.iter().enumerate() {
        let last = i + 1 == listed.len();
        let path = segment::path(dir, s);
        buf.clear();
        File::open(&path)?.read_to_end(&mut buf)?;
        match segment::check_header(&buf) {
            Header::Valid => {}
            Header::Short => {
                // Created, and the crash came before its header: it never held a record.
                if repair {
                    std::fs::remove_file(&path)?;
                }
                continue;
            }
            Header::Foreign => {
                return Err(io::Error::other(format!(
                    "{} is not a ringcast log segment of this version",
                    path.display()
                )))
            }
        }
        let mut r = Reader::new(&buf[HEADER_LEN..]);
        let mut seg = Seg::default();
        for rec in r.by_ref() {
            let id = RecordId { segment: s, offset: (HEADER_LEN + rec.offset) as u32 };
            each(id, rec.kind, rec.body);
            seg.records += 1;
        }
        seg.live = seg.records;
        let valid = (HEADER_LEN + r.valid_len()) as u64;
        seg.len = valid;
        if let Some(Tail::Torn | Tail::Corrupt(_)) = r.tail() {
            let what = match r.tail() {
                Some(Tail::Corrupt(w)) => w,
                _ => "a record cut short",
            };
            replayed.damage.push(Damage {
                segment: s,
                offset: valid,
                lost_bytes: buf.len() as u64 - valid,
                what,
                truncated: last && repair,
            });
            if last && repair {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid)?;
                f.sync_all()?;
            }
        }
        replayed.records += seg.records;
        replayed.bytes += seg.len;
        replayed.segments += 1;
        segs.insert(s, seg);
    }
    Ok((segs, replayed, listed.last().copied()))
}

impl Log {
    /// Opens (creating) the log in `dir`, replaying every readable record into `each` in the
    /// order written, and starts its writer thread. Every replayed record counts as live
    /// until the owner [`Log::release`]s it. A torn tail of the last segment is cut off;
    /// damage anywhere is reported in [`Replayed::damage`]. Refused when another process
    /// holds the directory, or a file in it is not a ringcast log of this version.
    pub fn open(
        dir: &Path,
        opts: Options,
        on_commit: impl Fn(Commit) + Send + 'static,
        mut each: impl FnMut(RecordId, u8, &[u8]),
    ) -> io::Result<(Log, Replayed)> {
        if !(64 << 10..=1 << 30).contains(&opts.segment_bytes) {
            return Err(io::Error::other("segment size must be 64KiB..1GiB"));
        }
        std::fs::create_dir_all(dir)?;
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::other(format!(
                "{} is in use by another process (its LOCK is held)",
                dir.display()
            )),
            std::fs::TryLockError::Error(e) => e,
        })?;
        let (mut segs, replayed, newest) = scan(dir, true, &mut each)?;
        // New records go to a new segment: replayed ones are never appended to.
        let current = newest.map_or(1, |l| l + 1);
        segs.insert(current, Seg { len: HEADER_LEN as u64, ..Seg::default() });
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(WriterStats::default());
        let (wdir, wstats) = (dir.to_path_buf(), stats.clone());
        let on_commit: Box<dyn Fn(Commit) + Send> = Box::new(on_commit);
        let thread = std::thread::Builder::new()
            .name("ringcast-log".into())
            .spawn(move || writer::run(wdir, opts.durability, rx, wstats, on_commit))?;
        let log = Log {
            dir: dir.to_path_buf(),
            opts,
            segs,
            current,
            chunks: Vec::new(),
            deletes: Vec::new(),
            next_commit: 1,
            tx: Some(tx),
            thread: Some(thread),
            stats,
            _lock: lock,
        };
        Ok((log, replayed))
    }

    /// Reads the log in `dir` as [`Log::open`] would replay it, without changing a byte of it
    /// (a torn tail is reported, not cut) and without a writer: for moving its records
    /// elsewhere before it is given up. Refused while another process holds the directory.
    pub fn read(dir: &Path, mut each: impl FnMut(RecordId, u8, &[u8])) -> io::Result<Replayed> {
        let lock = OpenOptions::new().write(true).open(dir.join("LOCK"));
        if let Ok(l) = &lock {
            l.try_lock().map_err(|e| match e {
                std::fs::TryLockError::WouldBlock => io::Error::other(format!(
                    "{} is in use by another process (its LOCK is held)",
                    dir.display()
                )),
                std::fs::TryLockError::Error(e) => e,
            })?;
        }
        let (_, replayed, _) = scan(dir, false, &mut each)?;
        Ok(replayed)
    }

    /// Appends a record; it is written with the next [`Log::seal`] and is durable when that
    /// commit is reported. It counts as live until released.
    pub fn append(&mut self, kind: u8, body: &[u8]) -> Result<RecordId, TooLarge> {
        let size = (HEAD + 1 + body.len()) as u64;
        let cur = self.segs.entry(self.current).or_default();
        if cur.records > 0 && cur.len + size > self.opts.segment_bytes {
            let old = self.current;
            self.current += 1;
            self.segs.insert(self.current, Seg { len: HEADER_LEN as u64, ..Seg::default() });
            if self.segs.get(&old).is_some_and(|s| s.live == 0) {
                self.segs.remove(&old);
                self.deletes.push(old);
            }
        }
        let seg = self.segs.entry(self.current).or_default();
        let id = RecordId { segment: self.current, offset: seg.len as u32 };
        match self.chunks.last_mut() {
            Some((s, bytes)) if *s == self.current => record::encode(bytes, kind, body)?,
            _ => {
                let mut bytes = Vec::with_capacity(4096);
                record::encode(&mut bytes, kind, body)?;
                self.chunks.push((self.current, bytes));
                0
            }
        };
        seg.len += size;
        seg.records += 1;
        seg.live += 1;
        Ok(id)
    }

    /// The owner needs this record no more. A segment left with no live record is deleted
    /// (after the next commit's writes are durable).
    pub fn release(&mut self, id: RecordId) {
        let Some(seg) = self.segs.get_mut(&id.segment) else { return };
        seg.live = seg.live.saturating_sub(1);
        if seg.live == 0 && id.segment != self.current {
            self.segs.remove(&id.segment);
            self.deletes.push(id.segment);
        }
    }

    /// Hands what was appended and released since the last seal to the writer as one commit;
    /// its number, or `None` when there was nothing. Commits are reported in order.
    pub fn seal(&mut self) -> Result<Option<u64>, String> {
        if self.chunks.is_empty() && self.deletes.is_empty() {
            return Ok(None);
        }
        let n = self.next_commit;
        self.next_commit += 1;
        let tx = self.tx.as_ref().ok_or("the log is closed")?;
        let gone = || "the log's writer thread is gone".to_string();
        for (segment, bytes) in self.chunks.drain(..) {
            tx.send(Cmd::Write { segment, bytes }).map_err(|_| gone())?;
        }
        for segment in self.deletes.drain(..) {
            tx.send(Cmd::Delete(segment)).map_err(|_| gone())?;
        }
        tx.send(Cmd::Commit(n)).map_err(|_| gone())?;
        Ok(Some(n))
    }

    /// Old segments mostly dead (under a quarter of their records live): the owner copies
    /// their live records forward (appends them again, releases the old ones), so the
    /// segments can go.
    pub fn to_copy_forward(&self) -> Vec<u32> {
        self.segs
            .iter()
            .filter(|(s, g)| **s + 1 < self.current && g.live > 0 && g.live * 4 < g.records)
            .map(|(s, _)| *s)
            .collect()
    }

    pub fn held(&self) -> Held {
        let mut h = Held { segments: self.segs.len(), ..Held::default() };
        for g in self.segs.values() {
            h.bytes += g.len;
            h.records += g.records;
            h.live += g.live;
        }
        h
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Log {
    /// Waits for the writer to finish what was sealed (and sync it).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
