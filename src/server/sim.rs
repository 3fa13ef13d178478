//! A deterministic node for tests: shards driven turn by turn on the caller's thread with a
//! fake clock, no runtime, no listener and no sleeps. A client connects through an AF_UNIX
//! socketpair (an in-memory socket: what one end writes, the other can read at once, with no
//! network stack in between), so each turn sees exactly what the test wrote, and time moves
//! only when the test says. The shard code is the production code: same reads, writes, timers
//! and state machines.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::config::Config;
use crate::push::msg::ShardMsg;

use super::inbox::Router;
use super::limits::{HandshakeRate, IpLimiter};
use super::shard::{Shard, ShardParts, Turn};
use super::stats::Counters;
use super::sys::EventFd;
use super::Shared;

/// Turns a quiet node may take before [`SimNode::run`] calls it stuck.
const MAX_ROUNDS: usize = 10_000;

pub struct SimNode {
    shards: Vec<Shard>,
    counters: Vec<Arc<Counters>>,
    router: Arc<Router>,
    shared: Arc<Shared>,
    wakes: Vec<Arc<EventFd>>,
    start: Instant,
    offset: Duration,
}

impl SimNode {
    /// A node of `n` shards with this configuration (validated as at start-up).
    pub fn new(cfg: &Config, n: usize) -> io::Result<SimNode> {
        cfg.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.0))?;
        let start = clock::now();
        let shared = Arc::new(Shared {
            total: AtomicUsize::new(0),
            max_total: if cfg.limits.max_connections == 0 {
                usize::MAX
            } else {
                cfg.limits.max_connections
            },
            fd_limit: usize::MAX,
            _data_lock: None,
            draining: AtomicBool::new(false),
            limiter: (cfg.limits.max_connections_per_ip > 0)
                .then(|| IpLimiter::new(cfg.limits.max_connections_per_ip)),
            tls: None,
            rate: (cfg.limits.handshake_rate_per_ip > 0.0).then(|| {
                HandshakeRate::new(cfg.limits.handshake_rate_per_ip, cfg.limits.handshake_burst)
            }),
            epoch: clock::unix_ms(),
            token_key: super::session_key(cfg)?,
            upstreams: super::Upstreams::new(cfg, n),
            streams: super::shard::history_rules(cfg),
            overload: super::OverloadState {
                budget: cfg.overload.budget().into(),
                ..super::OverloadState::default()
            },
        });
        let counters: Vec<Arc<Counters>> = (0..n).map(|_| Arc::new(Counters::default())).collect();
        let peers: Arc<[Arc<Counters>]> = counters.clone().into();
        let wakes = (0..n).map(|_| EventFd::new().map(Arc::new)).collect::<io::Result<Vec<_>>>()?;
        let (router, inboxes) = Router::new(&wakes, cfg.delivery.inbox_capacity);
        let auth = super::authenticator(cfg).map_err(|e| io::Error::other(e.0))?;
        let mut shards = Vec::with_capacity(n);
        for (i, inbox) in inboxes.into_iter().enumerate() {
            let parts = ShardParts {
                id: i,
                capacity: 1024,
                shared: shared.clone(),
                counters: counters[i].clone(),
                wake: wakes[i].clone(),
                router: router.clone(),
                inbox,
                auth: auth.clone(),
                peers: peers.clone(),
            };
            shards.push(Shard::new(cfg, parts, start)?);
        }
        Ok(SimNode { shards, counters, router, shared, wakes, start, offset: Duration::ZERO })
    }

    fn now(&self) -> Instant {
        self.start + self.offset
    }

    /// A client connection accepted by `shard`: the test's end of the socketpair, non-blocking.
    pub fn connect(&mut self, shard: usize) -> io::Result<UnixStream> {
        let (client, server) = UnixStream::pair()?;
        client.set_nonblocking(true)?;
        server.set_nonblocking(true)?;
        let now = self.now();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        self.shards[shard].on_accept(OwnedFd::from(server), ip, now, false);
        Ok(client)
    }

    /// Turns every shard until the node is quiet: every shard would wait and no inbox holds a
    /// message. Panics if it never gets there (a loop between shards).
    pub fn run(&mut self) {
        let now = self.now();
        for _ in 0..MAX_ROUNDS {
            let mut quiet = true;
            for s in &mut self.shards {
                quiet &= s.turn(now) != Turn::Again;
            }
            if quiet && (0..self.shards.len()).all(|i| self.router.depth(i) == 0) {
                return;
            }
        }
        panic!("the simulated node did not settle in {MAX_ROUNDS} rounds");
    }

    /// Moves the clock on in steps of `step` until `total` has passed, running at each.
    pub fn advance_by_steps(&mut self, total: Duration, step: Duration) {
        let end = self.offset + total;
        while self.offset < end {
            self.offset = (self.offset + step).min(end);
            self.run();
        }
    }

    /// Sends a message to a shard's inbox as the API thread would (call [`SimNode::run`]).
    pub fn send(&self, shard: usize, m: ShardMsg) {
        if self.router.send(shard, m).is_err() {
            panic!("inbox of shard {shard} is full");
        }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    pub fn counters(&self, shard: usize) -> &Counters {
        &self.counters[shard]
    }

    /// Asks every shard to drain, as the first SIGTERM does (call [`SimNode::run`]).
    pub fn shut_down(&self) {
        self.shared.draining.store(true, Relaxed);
        for w in &self.wakes {
            w.notify();
        }
    }

    /// Whether every shard has finished draining.
    pub fn drained(&self) -> bool {
        let empty = |c: &Arc<Counters>| c.open_connections.get() == 0 && c.handshaking.get() == 0;
        self.shards.iter().all(|s| s.is_draining()) && self.counters.iter().all(empty)
    }
}
