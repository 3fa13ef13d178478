//! The log on real files: commits reported in order, replay in order with the same ids, torn
//! and corrupted tails, whole-segment deletion, copy-forward candidates, the directory lock,
//! the durability modes and a failing disk.
#![allow(clippy::unwrap_used)] // reason: a panic is the failure report

use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ringcast_store::{Commit, Durability, Log, Options, RecordId, HEADER_LEN};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("ringcast-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
    fn segments(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts(durability: Durability) -> Options {
    Options { segment_bytes: 64 << 10, durability }
}

type Replay = Vec<(RecordId, u8, Vec<u8>)>;

fn open(dir: &Dir, d: Durability) -> (Log, Replay, ringcast_store::Replayed, Receiver<Commit>) {
    let (tx, rx): (Sender<Commit>, Receiver<Commit>) = crossbeam_channel::unbounded();
    let mut got = Vec::new();
    let (log, r) = Log::open(
        &dir.0,
        opts(d),
        move |c| drop(tx.send(c)),
        |id, k, b| got.push((id, k, b.to_vec())),
    )
    .unwrap();
    (log, got, r, rx)
}

fn wait(rx: &Receiver<Commit>, n: u64) -> Commit {
    loop {
        let c = rx.recv_timeout(Duration::from_secs(10)).expect("a commit report");
        match &c {
            Commit::Done(m) | Commit::Failed(m, _) if *m >= n => return c,
            _ => {}
        }
    }
}

fn body(i: usize) -> Vec<u8> {
    format!("message {i:05} {}", "x".repeat(i % 50)).into_bytes()
}

#[test]
fn sealed_records_are_reported_and_replay_in_order_with_their_ids() {
    let dir = Dir::new("replay");
    let (mut log, got, r, rx) = open(&dir, Durability::Always);
    assert!(got.is_empty() && r.records == 0);
    let mut ids = Vec::new();
    for turn in 0..10 {
        for i in 0..300 {
            ids.push(log.append((i % 3) as u8, &body(turn * 300 + i)).unwrap());
        }
        let n = log.seal().unwrap().unwrap();
        assert_eq!(n, turn as u64 + 1, "one commit per seal");
    }
    assert_eq!(log.seal().unwrap(), None, "nothing new: no commit");
    assert_eq!(wait(&rx, 10), Commit::Done(10));
    assert!(log.stats().syncs.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    drop(log);
    let (_log, got, r, _rx) = open(&dir, Durability::Always);
    assert_eq!(r.records, 3000);
    assert!(r.damage.is_empty(), "{:?}", r.damage);
    assert_eq!(got.len(), 3000);
    for (i, (id, kind, b)) in got.iter().enumerate() {
        assert_eq!((*id, *kind, b), (ids[i], (i % 300 % 3) as u8, &body(i)));
    }
    assert!(dir.segments().len() > 1, "64 KiB segments rolled over: {:?}", dir.segments());
}

#[test]
fn a_torn_tail_is_cut_at_the_last_valid_record_and_a_flipped_byte_loses_only_what_follows() {
    let dir = Dir::new("torn");
    let (mut log, _, _, rx) = open(&dir, Durability::Always);
    for i in 0..50 {
        log.append(1, &body(i)).unwrap();
    }
    wait(&rx, log.seal().unwrap().unwrap());
    drop(log);
    let last = dir.0.join(dir.segments().last().unwrap());
    let len = std::fs::metadata(&last).unwrap().len();
    // Cut into the last record.
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let (log, got, r, _) = open(&dir, Durability::Always);
    assert_eq!(got.len(), 49, "every earlier record is kept");
    assert_eq!(r.damage.len(), 1);
    assert!(r.damage[0].truncated && r.damage[0].what.contains("cut short"), "{:?}", r.damage);
    let cut_to = std::fs::metadata(&last).unwrap().len();
    assert_eq!(cut_to, r.damage[0].offset);
    drop(log);
    // A flipped byte in the last segment: a corrupted tail, cut like a torn one.
    let mut bytes = std::fs::read(&last).unwrap();
    let at = HEADER_LEN + (bytes.len() - HEADER_LEN) / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&last, &bytes).unwrap();
    let (mut log, got, r, rx) = open(&dir, Durability::Always);
    let kept = got.len();
    assert!((20..49).contains(&kept), "{kept}");
    for (i, (_, _, b)) in got.iter().enumerate() {
        assert_eq!(b, &body(i), "nothing after the damage, nothing altered before it");
    }
    assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
    assert!(r.damage[0].truncated, "{:?}", r.damage);
    // Damage in an earlier segment loses only its own tail: later segments replay.
    log.append(2, b"later").unwrap();
    wait(&rx, log.seal().unwrap().unwrap());
    drop(log);
    let mut bytes = std::fs::read(&last).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(&last, &bytes).unwrap();
    let (_log, got, r, _) = open(&dir, Durability::Always);
    assert_eq!(got.len(), kept, "one lost in the first segment, one kept in the second");
    assert_eq!(got.last().unwrap().2, b"later");
    assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
    assert!(!r.damage[0].truncated && r.damage[0].what.contains("CRC"), "{:?}", r.damage);
}

#[test]
fn reading_a_log_to_move_it_reports_a_torn_tail_and_changes_nothing() {
    let dir = Dir::new("read");
    let (mut log, _, _, rx) = open(&dir, Durability::Always);
    for i in 0..10 {
        log.append(1, &body(i)).unwrap();
    }
    wait(&rx, log.seal().unwrap().unwrap());
    // While it is open elsewhere, it cannot be read to be moved.
    assert!(Log::read(&dir.0, |_, _, _| {}).is_err());
    drop(log);
    let last = dir.0.join(dir.segments().last().unwrap());
    let len = std::fs::metadata(&last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let before = std::fs::read(&last).unwrap();
    let mut got = Vec::new();
    let r = Log::read(&dir.0, |_, _, b| got.push(b.to_vec())).unwrap();
    assert_eq!(got, (0..9).map(body).collect::<Vec<_>>());
    assert_eq!(r.damage.len(), 1);
    assert!(!r.damage[0].truncated, "reported, not cut: {:?}", r.damage);
    assert_eq!(std::fs::read(&last).unwrap(), before, "not a byte changed");
    // Read again (a move cut short and retried): the same damage is seen again.
    let r = Log::read(&dir.0, |_, _, _| {}).unwrap();
    assert_eq!(r.damage.len(), 1);
}

#[test]
fn released_segments_are_deleted_whole_and_mostly_dead_ones_offered_for_copying() {
    let dir = Dir::new("delete");
    let (mut log, _, _, rx) = open(&dir, Durability::Always);
    let mut ids = Vec::new();
    for i in 0..6000 {
        ids.push(log.append(1, &body(i)).unwrap());
    }
    wait(&rx, log.seal().unwrap().unwrap());
    let before = dir.segments().len();
    assert!(before >= 4, "{before}");
    let first = ids[0].segment;
    // Release everything in the first segment: it goes; keep one record of the second.
    let second = ids.iter().find(|id| id.segment != first).unwrap().segment;
    for id in ids.iter().filter(|id| id.segment == first) {
        log.release(*id);
    }
    let of_second: Vec<RecordId> = ids.iter().filter(|id| id.segment == second).copied().collect();
    for id in &of_second[1..] {
        log.release(*id);
    }
    assert_eq!(log.to_copy_forward(), vec![second]);
    wait(&rx, log.seal().unwrap().unwrap());
    assert_eq!(dir.segments().len(), before - 1, "{:?}", dir.segments());
    // Copying the live record forward frees its segment too.
    log.append(1, b"copied").unwrap();
    log.release(of_second[0]);
    wait(&rx, log.seal().unwrap().unwrap());
    assert_eq!(dir.segments().len(), before - 2);
    let held = log.held();
    assert_eq!(
        held.live,
        6000 - of_second.len() as u64 - ids.iter().filter(|i| i.segment == first).count() as u64
            + 1
    );
    drop(log);
    let (_log, got, _, _) = open(&dir, Durability::Always);
    assert_eq!(got.last().unwrap().2, b"copied");
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = Dir::new("lock");
    let (_log, _, _, _) = open(&dir, Durability::None);
    let e = Log::open(&dir.0, opts(Durability::None), |_| {}, |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
}

#[test]
fn none_and_interval_modes_report_after_the_write_and_interval_syncs_later() {
    for d in [Durability::None, Durability::Interval(Duration::from_millis(50))] {
        let dir = Dir::new(&format!("mode-{d:?}").replace(|c: char| !c.is_alphanumeric(), ""));
        let (mut log, _, _, rx) = open(&dir, d);
        log.append(1, b"a").unwrap();
        assert_eq!(wait(&rx, log.seal().unwrap().unwrap()), Commit::Done(1));
        std::thread::sleep(Duration::from_millis(200));
        let syncs = log.stats().syncs.load(std::sync::atomic::Ordering::Relaxed);
        match d {
            Durability::None => assert_eq!(syncs, 0),
            _ => assert_eq!(syncs, 1, "synced once its interval passed"),
        }
        drop(log);
        let (_log, got, _, _) = open(&dir, d);
        assert_eq!(got.len(), 1);
    }
}

#[test]
fn a_log_that_cannot_be_written_fails_its_commits_and_every_later_one() {
    let dir = Dir::new("fail");
    let (mut log, _, _, rx) = open(&dir, Durability::Always);
    // Where segment 1 would go, a directory: the write fails.
    std::fs::create_dir(dir.0.join("0000000001.log")).unwrap();
    log.append(1, b"a").unwrap();
    match wait(&rx, log.seal().unwrap().unwrap()) {
        Commit::Failed(1, e) => assert!(e.contains("cannot be written"), "{e}"),
        c => panic!("{c:?}"),
    }
    log.append(1, b"b").unwrap();
    assert!(matches!(wait(&rx, log.seal().unwrap().unwrap()), Commit::Failed(2, _)));
}
