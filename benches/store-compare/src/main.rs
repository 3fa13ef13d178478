//! ringcast's log against fjall and redb on the durable-push workload: each turn appends
//! `BATCH` pushes (~220 B records) and acknowledges the pushes of `LAG` turns ago (deleting
//! them, plus a small cursor record), then makes the turn durable (`fdatasync`) before the
//! next. Reported: durable pushes per wall second and per process CPU-second, disk bytes
//! per held push, and the time to replay `REPLAY` held pushes after a restart.
//!
//!   cargo run --release -- [TURNS] [BATCH] [REPLAY]     (defaults 4000 50 1000000)
//!   taskset -c 0 target/release/store-compare ...

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LAG: usize = 20;

fn cpu() -> Duration {
    Duration::from_secs_f64(ringcast_sys::own_cpu_seconds())
}

fn push_body(i: u64) -> Vec<u8> {
    // What a durable user-stream record holds: the stream, the seq, the encoded frame.
    let mut b = format!("user:{:06}\0{i}\0", i % 1000).into_bytes();
    b.extend_from_slice(
        format!(r#"{{"type":"message","stream":"user:{:06}","seq":{i},"ack":true,"data":{{"text":"hello there, this is push number {i}","from":"service"}}}}"#, i % 1000)
            .as_bytes(),
    );
    b.resize(220, b' ');
    b
}

fn du(dir: &Path) -> u64 {
    let mut n = 0;
    for e in walk(dir) {
        n += std::fs::metadata(&e).map(|m| m.len()).unwrap_or(0);
    }
    n
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

trait Engine {
    fn name(&self) -> &'static str;
    /// One turn: these pushes in, these out (acked), durable before returning.
    fn turn(&mut self, first: u64, n: usize, acked: Option<(u64, usize)>);
    fn reopen_count(&mut self) -> u64;
}

// ----- ringcast's log -----
struct Hand {
    dir: PathBuf,
    log: Option<ringcast_store::Log>,
    rx: crossbeam_channel::Receiver<u64>,
    ids: std::collections::VecDeque<(u64, ringcast_store::RecordId)>,
}

impl Hand {
    fn open(dir: &Path) -> (ringcast_store::Log, crossbeam_channel::Receiver<u64>, u64) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut n = 0u64;
        let (log, _) = ringcast_store::Log::open(
            dir,
            ringcast_store::Options {
                segment_bytes: 64 << 20,
                durability: ringcast_store::Durability::Always,
            },
            move |c| {
                if let ringcast_store::Commit::Done(k) = c {
                    let _ = tx.send(k);
                }
            },
            |_, _, _| n += 1,
        )
        .expect("open");
        (log, rx, n)
    }
    fn new(dir: PathBuf) -> Hand {
        let (log, rx, _) = Hand::open(&dir);
        Hand { dir, log: Some(log), rx, ids: Default::default() }
    }
}

impl Engine for Hand {
    fn name(&self) -> &'static str {
        "ringcast-store"
    }
    fn turn(&mut self, first: u64, n: usize, acked: Option<(u64, usize)>) {
        let log = self.log.as_mut().expect("open");
        for i in first..first + n as u64 {
            let id = log.append(1, &push_body(i)).expect("append");
            self.ids.push_back((i, id));
        }
        if let Some((from, k)) = acked {
            log.append(2, format!("user:x\0dev\0{}", from + k as u64).as_bytes()).expect("ack");
            while self.ids.front().is_some_and(|(i, _)| *i < from + k as u64) {
                let (_, id) = self.ids.pop_front().expect("front");
                log.release(id);
            }
        }
        if let Some(c) = log.seal().expect("seal") {
            while self.rx.recv().expect("commit") < c {}
        }
    }
    fn reopen_count(&mut self) -> u64 {
        drop(self.log.take());
        let (log, rx, n) = Hand::open(&self.dir);
        self.log = Some(log);
        self.rx = rx;
        n
    }
}

// ----- fjall -----
struct Fjall {
    dir: PathBuf,
    db: Option<fjall::Database>,
    ks: Option<fjall::Keyspace>,
    /// As a shard would use it (it must not block on the disk): the journal is synced on a
    /// thread of its own, which answers each turn, the same hand-off ringcast's log makes.
    sync: Option<(crossbeam_channel::Sender<()>, crossbeam_channel::Receiver<()>)>,
}

impl Fjall {
    fn new(dir: PathBuf) -> Fjall {
        let db = fjall::Database::builder(&dir).open().expect("fjall open");
        let ks = db.keyspace("mail", fjall::KeyspaceCreateOptions::default).expect("keyspace");
        let mut f = Fjall { dir, db: Some(db), ks: Some(ks), sync: None };
        f.start_sync();
        f
    }
    fn start_sync(&mut self) {
        let db = self.db.clone().expect("db");
        let (tx, rx) = crossbeam_channel::unbounded::<()>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            while rx.recv().is_ok() {
                while rx.try_recv().is_ok() {}
                db.persist(fjall::PersistMode::SyncData).expect("persist");
                let _ = done_tx.send(());
            }
        });
        self.sync = Some((tx, done_rx));
    }
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3.1"
    }
    fn turn(&mut self, first: u64, n: usize, acked: Option<(u64, usize)>) {
        let (db, ks) = (self.db.as_ref().expect("db"), self.ks.as_ref().expect("ks"));
        let mut b = db.batch();
        for i in first..first + n as u64 {
            b.insert(ks, i.to_be_bytes(), push_body(i));
        }
        if let Some((from, k)) = acked {
            for i in from..from + k as u64 {
                b.remove(ks, i.to_be_bytes());
            }
            b.insert(ks, b"cursor:user:x:dev".to_vec(), (from + k as u64).to_be_bytes());
        }
        b.commit().expect("commit");
        let (tx, done) = self.sync.as_ref().expect("sync thread");
        tx.send(()).expect("sync");
        done.recv().expect("synced");
    }
    fn reopen_count(&mut self) -> u64 {
        drop(self.sync.take());
        drop(self.ks.take());
        drop(self.db.take());
        let db = fjall::Database::builder(&self.dir).open().expect("fjall open");
        let ks = db.keyspace("mail", fjall::KeyspaceCreateOptions::default).expect("keyspace");
        let n = ks.iter().count() as u64;
        self.db = Some(db);
        self.ks = Some(ks);
        self.start_sync();
        n
    }
}

// ----- redb -----
const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("mail");
const CURSORS: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("cursors");

struct Redb {
    path: PathBuf,
    db: Option<redb::Database>,
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb 5.0"
    }
    fn turn(&mut self, first: u64, n: usize, acked: Option<(u64, usize)>) {
        let db = self.db.as_ref().expect("db");
        let mut tx = db.begin_write().expect("begin");
        tx.set_durability(redb::Durability::Immediate).expect("durability");
        {
            let mut t = tx.open_table(TABLE).expect("table");
            for i in first..first + n as u64 {
                t.insert(i, push_body(i).as_slice()).expect("insert");
            }
            if let Some((from, k)) = acked {
                for i in from..from + k as u64 {
                    t.remove(i).expect("remove");
                }
                let mut c = tx.open_table(CURSORS).expect("cursors");
                c.insert("user:x:dev", from + k as u64).expect("cursor");
            }
        }
        tx.commit().expect("commit");
    }
    fn reopen_count(&mut self) -> u64 {
        drop(self.db.take());
        let db = redb::Database::create(&self.path).expect("redb open");
        let n = {
            use redb::{ReadableDatabase, ReadableTableMetadata};
            let r = db.begin_read().expect("read");
            let t = r.open_table(TABLE).expect("table");
            // Replay reads every record, as the log's replay does.
            use redb::ReadableTable;
            let mut n = 0;
            for e in t.iter().expect("iter") {
                let (_, v) = e.expect("entry");
                n += v.value().len().min(1) as u64;
            }
            debug_assert_eq!(n, t.len().expect("len"));
            n
        };
        self.db = Some(db);
        n
    }
}

fn run(e: &mut dyn Engine, dir: &Path, turns: usize, batch: usize, replay: u64) {
    // Steady state: pushes in, pushes LAG turns old acked out.
    let (t0, c0) = (Instant::now(), cpu());
    for t in 0..turns {
        let first = (t * batch) as u64;
        let acked = (t >= LAG).then(|| (((t - LAG) * batch) as u64, batch));
        e.turn(first, batch, acked);
    }
    let (wall, used) = (t0.elapsed(), cpu() - c0);
    let pushes = (turns * batch) as f64;
    // Fill to `replay` held pushes (no acks), then restart and read them all.
    let mut next = (turns * batch) as u64;
    let held_now = (LAG * batch) as u64;
    let mut held = held_now;
    let fill = 2000;
    while held < replay {
        let n = fill.min((replay - held) as usize);
        e.turn(next, n, None);
        next += n as u64;
        held += n as u64;
    }
    let disk = du(dir);
    let t1 = Instant::now();
    let got = e.reopen_count();
    let replay_s = t1.elapsed().as_secs_f64();
    println!(
        "{:<15} {:>9.0} pushes/s {:>9.0} pushes/CPU-s  {:>5.1} B/held push  replay {} in {:.2} s (disk {} MiB)",
        e.name(),
        pushes / wall.as_secs_f64(),
        pushes / used.as_secs_f64(),
        disk as f64 / held as f64,
        got,
        replay_s,
        disk >> 20
    );
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let turns = args.first().copied().unwrap_or(4000) as usize;
    let batch = args.get(1).copied().unwrap_or(50) as usize;
    let replay = args.get(2).copied().unwrap_or(1_000_000);
    let only = std::env::var("ENGINE").unwrap_or_default();
    let base = std::env::temp_dir().join(format!("store-compare-{}", std::process::id()));
    println!("{turns} turns x {batch} pushes, acked {LAG} turns later, fdatasync per turn; replay of {replay} held pushes");
    for name in ["hand", "fjall", "redb"] {
        if !only.is_empty() && only != name {
            continue;
        }
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut e: Box<dyn Engine> = match name {
            "hand" => Box::new(Hand::new(dir.clone())),
            "fjall" => Box::new(Fjall::new(dir.clone())),
            _ => {
                let path = dir.join("db.redb");
                let db = redb::Database::create(&path).expect("redb");
                Box::new(Redb { path, db: Some(db) })
            }
        };
        run(&mut *e, &dir, turns, batch, replay);
        drop(e);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&base);
}
