//! Moving a data directory to another shard count (`--shards` changed between starts): every
//! record of the old shards' logs goes to the log of its user's home under the new count, in
//! the order it was written, before any shard opens its log. A user's records all come from
//! one old log (its old home), so each stream keeps its order.
//!
//! Crash-safe in three steps: the new logs are written and synced under `rehome.tmp` (a crash
//! there leaves the old logs in charge; the next start throws `rehome.tmp` away and begins
//! again); renaming it to `rehome` commits the move; [`finish`] then swaps the directories and
//! `META` last, and a start that finds `rehome` finishes what a crash interrupted. The old
//! logs are only read (`Log::read`: a torn tail is reported, not cut) until the commit, so a
//! move cut short and retried sees the same records and the same damage. A move needs room
//! for a second copy of the logs while it runs.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ringcast_store::{Commit, Durability, Log, Options};

use crate::push::ids::home_of;
use crate::push::journal::{self, Rec};

use super::shard::log::shard_dir;

/// What a move did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Moved {
    pub(crate) records: u64,
    /// Records this build cannot read: they cannot be routed and are left behind (a replay
    /// would let them go too).
    pub(crate) unknown: u64,
    /// Users of damaged old logs, marked lost up to their last message (their devices are
    /// told `reset`, as a replay of the damaged log would have done).
    pub(crate) marked: u64,
}

const STAGING: &str = "rehome.tmp";
const COMMITTED: &str = "rehome";

/// A move that failed or was cut short before its commit, then a start with the old count
/// again: its staging directory is thrown away.
pub(crate) fn abandon(dir: &Path) -> io::Result<bool> {
    let staging = dir.join(STAGING);
    if !staging.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&staging)?;
    sync_dir(dir)?;
    Ok(true)
}

/// Routes the logs of `from` shards under `dir` to `to` new ones and makes them the
/// directory's logs.
pub(crate) fn rehome(dir: &Path, from: usize, to: usize, segment_bytes: u64) -> io::Result<Moved> {
    let staging = dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let mut logs = Vec::with_capacity(to);
    for j in 0..to {
        let f = failed.clone();
        let on_commit = move |c: Commit| {
            if let Commit::Failed(_, e) = c {
                *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        };
        let opts = Options { segment_bytes, durability: Durability::Always };
        let (log, _) = Log::open(&shard_dir(&staging, j), opts, on_commit, |_, _, _| {})?;
        logs.push(log);
    }
    let mut moved = Moved::default();
    let now_ms = crate::clock::unix_ms();
    for i in 0..from {
        let old = shard_dir(dir, i);
        if !old.exists() {
            continue;
        }
        // Each record is decoded for its user and appended to its new home as it is read
        // (nothing of the old log is held in memory, and the old log is not changed: a move
        // cut short and retried sees the same records and the same damage).
        let mut last: HashMap<String, (u64, u64)> = HashMap::new();
        let mut err: Option<io::Error> = None;
        let replayed =
            Log::read(&old, |_, kind, body| {
                if err.is_some() {
                    return;
                }
                let Some(rec) = journal::decode(kind, body) else {
                    moved.unknown += 1;
                    return;
                };
                let user = match rec {
                    Rec::Push { user, epoch, seq, .. } => {
                        // The last message of each user's stream, for the marks a damaged log owes.
                        last.insert(user.to_string(), (epoch, seq));
                        user
                    }
                    Rec::Cursor { user, .. } | Rec::Mark { user, .. } => user,
                };
                let r = append(&mut logs[home_of(user, to)], kind, body);
                moved.records += 1;
                let r = r.and_then(|()| {
                    if moved.records % 4096 == 0 {
                        seal_all(&mut logs)
                    } else {
                        Ok(())
                    }
                });
                err = r.err();
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        if !replayed.damage.is_empty() {
            for (user, (epoch, seq)) in &last {
                let mut body = Vec::new();
                let r =
                    Rec::Mark { user, epoch: *epoch, lost_upto: *seq, gone_upto: 0, at_ms: now_ms };
                let kind = r.encode(&mut body);
                append(&mut logs[home_of(user, to)], kind, &body)?;
                moved.marked += 1;
            }
        }
        seal_all(&mut logs)?;
    }
    seal_all(&mut logs)?;
    // Dropping a log waits for its writer to sync what was sealed.
    drop(logs);
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(io::Error::other(format!("writing the moved logs failed: {e}")));
    }
    write_synced(&staging.join("META"), &format!("shards {to}\n"))?;
    sync_dir(&staging)?;
    std::fs::rename(&staging, dir.join(COMMITTED))?;
    sync_dir(dir)?;
    finish(dir)?;
    Ok(moved)
}

fn append(log: &mut Log, kind: u8, body: &[u8]) -> io::Result<()> {
    log.append(kind, body).map(|_| ()).map_err(|e| io::Error::other(format!("{e:?}")))
}

fn seal_all(logs: &mut [Log]) -> io::Result<()> {
    for log in logs {
        log.seal().map_err(io::Error::other)?;
    }
    Ok(())
}

/// Finishes a committed move (a `rehome` directory under `dir`); false when there is none.
/// Idempotent: each step can be cut short by a crash and done again.
pub(crate) fn finish(dir: &Path) -> io::Result<bool> {
    let r = dir.join(COMMITTED);
    if !r.exists() {
        return Ok(false);
    }
    let meta = r.join("META");
    if meta.exists() {
        let text = std::fs::read_to_string(&meta)?;
        let Some(to) = text.trim().strip_prefix("shards ").and_then(|n| n.parse::<usize>().ok())
        else {
            return Err(io::Error::other(format!("{} is not `shards N`", meta.display())));
        };
        // The old logs go first (all of them, before any new one moves in): a directory that
        // is still in `rehome` is old where it stands, and so is any beyond the new count.
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let shard = name.to_str().and_then(|n| n.strip_prefix("shard-"));
            let Some(k) = shard.and_then(|k| k.parse::<usize>().ok()) else { continue };
            if k >= to || r.join(&name).exists() {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        for k in 0..to {
            let src = shard_dir(&r, k);
            if src.exists() {
                std::fs::rename(&src, shard_dir(dir, k))?;
            }
        }
        sync_dir(dir)?;
        std::fs::rename(&meta, dir.join("META"))?;
        sync_dir(dir)?;
    }
    std::fs::remove_dir_all(&r)?;
    sync_dir(dir)?;
    Ok(true)
}

fn write_synced(path: &Path, text: &str) -> io::Result<()> {
    std::fs::write(path, text)?;
    std::fs::File::open(path)?.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ringcast-rehome-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mark(dir: &Path, what: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("WHAT"), what).unwrap();
    }

    fn what(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("WHAT")).unwrap_or_default()
    }

    /// Three old shards moved to two: the state after each step a crash can stop at.
    fn staged(d: &Path, moved: usize, old_left: &[usize]) {
        let r = d.join(COMMITTED);
        std::fs::create_dir_all(&r).unwrap();
        for k in 0..2 {
            if k < moved {
                mark(&shard_dir(d, k), "new");
            } else {
                mark(&shard_dir(&r, k), "new");
            }
        }
        for &k in old_left {
            if k >= moved {
                mark(&shard_dir(d, k), "old");
            }
        }
        std::fs::write(r.join("META"), "shards 2\n").unwrap();
        std::fs::write(d.join("META"), "shards 3\n").unwrap();
    }

    fn read_all(dir: &Path) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let opts = Options { segment_bytes: 64 << 10, durability: Durability::None };
        let (log, _) = Log::open(dir, opts, |_| {}, |_, k, b| out.push((k, b.to_vec()))).unwrap();
        drop(log);
        out
    }

    fn push(user: &str, seq: u64) -> (u8, Vec<u8>) {
        let mut body = Vec::new();
        let r = Rec::Push {
            user,
            epoch: 7,
            seq,
            at_ms: 1,
            ttl_ms_at: 0,
            priority: 1,
            first_ack: false,
            device: None,
            frame: b"frame",
        };
        (r.encode(&mut body), body)
    }

    #[test]
    fn every_record_moves_to_its_users_new_home_in_order_and_damage_is_marked() {
        let d = tmp("move");
        let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
        // Two old shards, each user's records on its home under two.
        for i in 0..2 {
            let opts = Options { segment_bytes: 64 << 10, durability: Durability::Always };
            let (mut log, _) = Log::open(&shard_dir(&d, i), opts, |_| {}, |_, _, _| {}).unwrap();
            for seq in 1..=3 {
                for u in users.iter().filter(|u| home_of(u, 2) == i) {
                    let (k, b) = push(u, seq);
                    log.append(k, &b).unwrap();
                }
            }
            log.append(99, b"a kind from a later build").unwrap();
            log.seal().unwrap();
        }
        std::fs::write(d.join("META"), "shards 2\n").unwrap();
        // Shard 1's last record is torn: its users may have lost messages.
        let seg = std::fs::read_dir(shard_dir(&d, 1))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "log"))
            .unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let moved = rehome(&d, 2, 3, 64 << 10).unwrap();
        let damaged = users.iter().filter(|u| home_of(u, 2) == 1).count() as u64;
        assert_eq!(moved, Moved { records: 36, unknown: 1, marked: damaged });
        assert_eq!(std::fs::read_to_string(d.join("META")).unwrap(), "shards 3\n");
        for j in 0..3 {
            let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
            for (k, b) in read_all(&shard_dir(&d, j)) {
                match journal::decode(k, &b).unwrap() {
                    Rec::Push { user, seq, .. } => {
                        assert_eq!(home_of(user, 3), j, "{user} on {j}");
                        seqs.entry(user.into()).or_default().push(seq);
                    }
                    Rec::Mark { user, lost_upto, .. } => {
                        assert_eq!((home_of(user, 2), home_of(user, 3), lost_upto), (1, j, 3));
                    }
                    r => panic!("{r:?}"),
                }
            }
            for (u, s) in seqs {
                assert_eq!(s, [1, 2, 3], "{u}: in order");
            }
        }
        assert!(!shard_dir(&d, 3).exists() && !d.join(STAGING).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_committed_move_is_finished_from_wherever_a_crash_stopped_it() {
        for (moved, old_left) in
            [(0, vec![0, 1, 2]), (0, vec![1]), (0, vec![]), (1, vec![]), (2, vec![])]
        {
            let d = tmp("finish");
            staged(&d, moved, &old_left);
            assert!(finish(&d).unwrap());
            let tag = format!("moved {moved}, old {old_left:?}");
            assert_eq!(what(&shard_dir(&d, 0)), "new", "{tag}");
            assert_eq!(what(&shard_dir(&d, 1)), "new", "{tag}");
            assert!(!shard_dir(&d, 2).exists(), "{tag}");
            assert_eq!(std::fs::read_to_string(d.join("META")).unwrap(), "shards 2\n", "{tag}");
            assert!(!d.join(COMMITTED).exists(), "{tag}");
            assert!(!finish(&d).unwrap(), "nothing left to do");
            std::fs::remove_dir_all(&d).unwrap();
        }
        // META already moved: only the empty `rehome` is left to remove.
        let d = tmp("meta");
        mark(&shard_dir(&d, 0), "new");
        std::fs::create_dir_all(d.join(COMMITTED)).unwrap();
        std::fs::write(d.join("META"), "shards 1\n").unwrap();
        assert!(finish(&d).unwrap());
        assert_eq!(what(&shard_dir(&d, 0)), "new");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
