//! A shard: one thread's worth of the gateway. It owns a slab of connections, an edge-triggered
//! epoll set over their sockets, a timer wheel for every deadline, and one read buffer that all
//! its connections share.
//!
//! Two monoio tasks run on the shard's runtime (`runtime`): the accept loop and the event
//! loop, which waits for the epoll set through the runtime and then does a *turn*. An idle
//! connection therefore costs its slab entry and its epoll registration: no task, no buffer, no
//! pending operation, no timer future.
//!
//! The shard is the I/O driver; policy lives elsewhere. Protocol decisions come from `proto`,
//! a connection's client session and the home-shard service are state machines in `push` that
//! return effects (`apply`), liveness is a pure decision in `conn`. The shard reads and writes
//! (`read`, `write`), admits (`admission`), closes (`close`) and keeps time (`timers`).

mod admission;
mod apply;
mod close;
pub(crate) mod log;
mod pressure;
mod read;
mod runtime;
mod timers;
mod upstream;
mod write;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::auth::Authenticator;
use crate::clock;
use crate::config::Config;
use crate::proto::frame::encode_frame;
use crate::proto::handshake::HandshakePolicy;
use crate::proto::{Limits, OpCode};
use crate::push::effect::{Effects, Now};
use crate::push::history::{Guarantee, Keep, Rule, Rules};
use crate::push::home::{Home, HomeParams};
use crate::push::ids::ConnId;
use crate::push::index::ChannelIndex;
use crate::push::repair::Repairs;
use crate::push::session::SessionParams;
use crate::push::streams::Streams;
use crate::push::token::TokenKey;
use crate::timer_wheel::TimerWheel;

use super::conn::{Conn, Deadlines, Link, Route};
use super::inbox::{Inbox, Mesh, Router};
use super::limits::Jitter;
use super::stats::Counters;
use super::sys::{Epoll, EventFd, TimerFd, EV_IN};
use super::Shared;

// Kept reachable where benches and tests have always found it.
pub use crate::push::delivery::encode_message;
pub(crate) use runtime::{accept_loop, event_loop};

const WAKE_TOKEN: u64 = u64::MAX;
const TICK_TOKEN: u64 = u64::MAX - 1;
/// The client protocol's subprotocol name.
pub(crate) const PROTOCOL_NAME: &str = "ringcast.v1";
/// Readiness events taken per epoll_wait.
const EVENTS_PER_TURN: usize = 1024;
/// Inbox messages handled per turn before sockets get their turn again.
const INBOX_PER_TURN: usize = 4096;

/// Everything a shard derives from the configuration once.
#[derive(Debug)]
pub(crate) struct Params {
    pub(crate) policy: HandshakePolicy,
    pub(crate) routes: Vec<Route>,
    pub(crate) limits: Limits,
    pub(crate) handshake_ticks: u64,
    pub(crate) close_ticks: u64,
    /// How long a connection closed by reclaim may take to read up to its 4002 before it is
    /// reset (`--overload-reclaim-grace`).
    pub(crate) reclaim_ticks: u64,
    pub(crate) drain_ticks: u64,
    /// Ping, pong, idle and slow-consumer deadlines of open connections.
    pub(crate) live: Deadlines,
    pub(crate) tick_nanos: u128,
    pub(crate) max_per_shard: usize,
    pub(crate) max_pending: usize,
    pub(crate) overload_close: bool,
    pub(crate) drain_spread_ticks: u64,
    /// `--socket-send-buffer` (0: the kernel's).
    pub(crate) send_buffer: usize,
    pub(crate) outbox_max_bytes: usize,
    pub(crate) outbox_max_frames: usize,
    pub(crate) read_buffer: usize,
    pub(crate) minute_ticks: u64,
    pub(crate) session: SessionParams,
    pub(crate) home: HomeParams,
    pub(crate) stream_idle_ttl_ms: u64,
    /// What each stream keeps, and the bytes this shard's histories may hold together.
    pub(crate) history: Rules,
    pub(crate) history_budget: usize,
    /// The largest `info` a connect backend may give (as a token's, `--jwt-max-info`).
    pub(crate) max_connect_info: usize,
}

impl Params {
    pub(crate) fn new(
        cfg: &Config,
        epoch: u64,
        shards: usize,
        token_key: TokenKey,
        auth: Arc<dyn Authenticator>,
    ) -> Params {
        let mut routes = vec![Route::Ws];
        let mut paths = vec![cfg.routes.ws_path.clone()];
        if cfg.routes.echo {
            routes.push(Route::Echo);
            paths.push(cfg.routes.echo_path.clone());
        }
        let mut heartbeat_frame = Vec::new();
        let reply = cfg.timeouts.heartbeat_reply.as_bytes();
        encode_frame(&mut heartbeat_frame, OpCode::Text, true, None, reply);
        let minute_ticks = cfg.ticks(std::time::Duration::from_secs(60));
        // The client protocol's own name is always spoken: a browser that sends its token as
        // a `ringcast.token.` entry offers it too, and must get one of its offers back.
        let mut subprotocols = cfg.routes.subprotocols.clone();
        if !subprotocols.iter().any(|p| p == PROTOCOL_NAME) {
            subprotocols.push(PROTOCOL_NAME.to_string());
        }
        Params {
            policy: HandshakePolicy {
                routes: paths,
                allowed_origins: cfg.routes.allowed_origins.clone(),
                subprotocols,
                max_header_bytes: cfg.frames.max_header_bytes as usize,
                // What a connect backend is shown of the upgrade.
                keep_headers: cfg
                    .two_way
                    .upstreams
                    .iter()
                    .filter(|u| u.events.contains(&crate::config::EventRule::Connect))
                    .flat_map(|u| u.forward_headers.iter().cloned())
                    .collect(),
            },
            routes,
            limits: Limits {
                max_frame: cfg.frames.max_frame_size,
                max_message: cfg.frames.max_message_size,
            },
            handshake_ticks: cfg.ticks(cfg.frames.handshake_timeout),
            close_ticks: cfg.ticks(cfg.timeouts.close_timeout),
            reclaim_ticks: cfg.ticks(cfg.overload.overload_reclaim_grace).max(1),
            drain_ticks: cfg.ticks(cfg.timeouts.drain_timeout),
            live: Deadlines {
                ping: cfg.ticks(cfg.timeouts.ping_interval),
                pong: cfg.ticks(cfg.timeouts.pong_timeout),
                idle: cfg.ticks(cfg.timeouts.idle_timeout),
                slow: cfg.ticks(cfg.delivery.slow_consumer_timeout).max(1),
            },
            tick_nanos: cfg.timeouts.tick.as_nanos().max(1),
            max_per_shard: cfg.limits.max_connections_per_shard,
            max_pending: cfg.limits.max_pending_handshakes,
            overload_close: cfg.limits.overload_close,
            drain_spread_ticks: cfg.ticks(cfg.timeouts.drain_spread),
            outbox_max_bytes: cfg.outbox.outbox_max_bytes as usize,
            send_buffer: cfg.outbox.socket_send_buffer as usize,
            outbox_max_frames: cfg.outbox.outbox_max_frames,
            read_buffer: cfg.outbox.read_buffer as usize,
            minute_ticks,
            session: SessionParams {
                max_channels: cfg.delivery.max_channels_per_conn,
                max_client_errors: cfg.delivery.max_client_errors,
                minute_ticks,
                report_ticks: cfg.ticks(std::time::Duration::from_secs(1)),
                heartbeat: cfg.timeouts.heartbeat_text.as_bytes().to_vec(),
                heartbeat_frame: Bytes::from(heartbeat_frame),
                epoch,
                shards,
                token_key,
                session_ttl_ms: cfg.history.session_ttl.as_millis() as u64,
                auth,
                backends: Arc::new(crate::upstream::Routes(
                    cfg.two_way.upstreams.iter().cloned().map(Arc::new).collect(),
                )),
                refresh_lead_ms: cfg
                    .two_way
                    .upstreams
                    .iter()
                    .find(|u| u.events.contains(&crate::config::EventRule::Refresh))
                    .map_or(0, |u| u.refresh_lead.as_millis() as u64),
            },
            home: HomeParams {
                replace: cfg.delivery.replace_same_device,
                active_window_ms: cfg.delivery.active_window.as_millis() as u64,
                shards,
                mail: crate::push::mailbox::MailParams {
                    ack_timeout_ms: cfg.history.ack_timeout.as_millis() as u64,
                    attempts: cfg.history.ack_attempts,
                    devices: cfg.history.mailbox_devices.max(1),
                    cursor_ttl_ms: cfg.history.mailbox_ttl.as_millis() as u64,
                },
            },
            stream_idle_ttl_ms: cfg.delivery.stream_idle_ttl.as_millis() as u64,
            history: history_rules(cfg),
            history_budget: (cfg.history.history_memory / shards.max(1) as u64) as usize,
            max_connect_info: cfg.auth.jwt_max_info as usize,
        }
    }
}

/// The `[[streams]]` rules with each missing cap taken from the `--history-*` flags; streams
/// no rule names are recoverable within those flags (the broadcast stays ephemeral).
pub(crate) fn history_rules(cfg: &Config) -> Rules {
    let h = &cfg.history;
    let default = Keep {
        guarantee: Guarantee::Recoverable,
        size: h.history_size,
        ttl_ms: h.history_ttl.as_millis() as u64,
        bytes: h.history_bytes as usize,
    };
    // A durable stream's caps are its mailbox's.
    let user_default = Keep {
        guarantee: Guarantee::Durable,
        size: h.mailbox_size,
        ttl_ms: h.mailbox_ttl.as_millis() as u64,
        bytes: h.mailbox_bytes as usize,
    };
    let rules = h
        .streams
        .iter()
        .map(|r| {
            let guarantee = Guarantee::parse(&r.guarantee).unwrap_or(Guarantee::Recoverable);
            let base = if guarantee == Guarantee::Durable { user_default } else { default };
            Rule {
                pattern: r.pattern.clone(),
                keep: Keep {
                    guarantee,
                    size: r.history_size.unwrap_or(base.size),
                    ttl_ms: r.history_ttl.map_or(base.ttl_ms, |d| d.as_millis() as u64),
                    bytes: r.history_bytes.map_or(base.bytes, |b| b as usize),
                },
            }
        })
        .collect();
    Rules { rules, default, user_default }
}

/// What the event loop does after a turn.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Wait for the epoll set.
    Wait,
    /// Some connection still has bytes to read: go again after letting other tasks run.
    Again,
    /// Drained and empty: the shard is done.
    Done,
}

fn token(key: usize, gen: u32) -> u64 {
    (u64::from(gen) << 32) | key as u64
}

/// The shard: its read buffer, and everything else. The buffer stands apart so reading lends
/// it to the core without taking it out and putting it back.
pub(crate) struct Shard {
    read_buf: Box<[u8]>,
    core: Core,
}

/// Everything of a shard but its read buffer.
pub(super) struct Core {
    id: usize,
    p: Params,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    tickfd: TimerFd,
    listener_fd: RawFd,
    /// The `--tls-listen` listener, if any.
    tls_listener_fd: RawFd,
    /// The TLS state of wss connections, by slot (plain connections have no entry).
    links: HashMap<usize, Link>,
    /// The plaintext of the TLS records of one read, before it joins the read buffer.
    tls_plain: Vec<u8>,
    conns: Slab<Conn>,
    wheel: TimerWheel<u32>,
    events: Vec<libc::epoll_event>,
    /// Connections with unread bytes, read again next turn.
    ready: Vec<u64>,
    /// Connections with queued frames, flushed at the end of the turn.
    dirty: Vec<u64>,
    fired: Vec<u32>,
    /// The clock at tick 0, and the wall clock (Unix ms) then.
    start: Instant,
    start_ms: u64,
    /// The current tick and wall-clock milliseconds, set once per turn.
    now: u64,
    now_ms: u64,
    gen: u32,
    open: usize,
    handshaking: usize,
    draining: bool,
    drain_deadline: u64,
    mesh: Mesh,
    /// Channel → local subscribers.
    channels: ChannelIndex,
    /// The users, channels and streams homed here.
    home: Home,
    /// Tick of the next sweep for idle streams.
    next_stream_sweep: u64,
    /// Every shard's counters (a broadcast refused by a full inbox counts that shard's
    /// connections as dropped).
    peers: Arc<[Arc<Counters>]>,
    /// What the session and home state machines asked for, applied in order.
    effects: Effects,
    scratch: Vec<u32>,
    /// Frames shed from an outbox by the last push (looked at, then cleared).
    shed: Vec<Bytes>,
    /// Slow subscribers' gaps, refilled from history once their outbox drains.
    repairs: Repairs,
    /// Retry hints' jitter.
    jitter: Jitter,
    /// A spread drain: the connections still to close (tokens), when it began, how many.
    drain_queue: Vec<u64>,
    drain_from: u64,
    drain_total: usize,
    /// Backends: their queues, breakers and the connections that sent to them; requests for
    /// the runtime to send, requests that ended, and outcomes being applied.
    upstream: crate::upstream::Upstreams,
    upstream_out: Vec<crate::upstream::Request>,
    upstream_results: Vec<(usize, u64, crate::upstream::CallResult)>,
    upstream_done: Vec<crate::upstream::Done>,
    /// Upgrades waiting for the connect backend, by slot.
    authorizing: HashMap<usize, Box<crate::proto::handshake::Upgrade>>,
    /// The durable log's commits waiting to be reported durable, with their reports.
    log: log::Waiting,
    /// The overload manager: its pressures and actions.
    watch: pressure::Watch,
}

/// What a shard is built from besides the configuration.
pub(crate) struct ShardParts {
    pub(crate) id: usize,
    pub(crate) capacity: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) wake: Arc<EventFd>,
    pub(crate) router: Arc<Router>,
    pub(crate) inbox: Inbox,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) peers: Arc<[Arc<Counters>]>,
}

impl Shard {
    /// `capacity`: the most connections this shard may hold. The slab and the timer array are
    /// reserved for it up front; pages nobody touches cost no memory, while growing by
    /// doubling would leave the old copies resident (about 90 B per connection at 19k).
    /// `now` is tick 0.
    pub(crate) fn new(cfg: &Config, parts: ShardParts, now: Instant) -> io::Result<Shard> {
        let ShardParts { id, capacity, shared, counters, wake, router, inbox, auth, peers } = parts;
        let p = Params::new(cfg, shared.epoch, router.shards(), shared.token_key.clone(), auth);
        let streams = Streams::with_history(
            shared.epoch,
            p.stream_idle_ttl_ms,
            p.history.clone(),
            p.history_budget,
        );
        let home = Home::new(p.home, streams);
        let (home, log) = match cfg.history.data_dir.as_str() {
            "none" => (home, log::Waiting::default()),
            dir => {
                let durability = ringcast_store::Durability::parse(&cfg.history.durability)
                    .map_err(io::Error::other)?;
                let dir = log::shard_dir(std::path::Path::new(dir), id);
                let seg = cfg.history.log_segment_bytes;
                log::open(home, &dir, id, durability, seg, router.clone())
                    .map_err(|e| io::Error::other(format!("the log in {}: {e}", dir.display())))?
            }
        };
        let two = &cfg.two_way;
        let upstream = crate::upstream::Upstreams::new(
            &shared.upstreams.rules,
            shared.upstreams.stats.get(id).map_or(&[][..], |v| &v[..]),
            shared.upstreams.node.clone(),
            crate::upstream::ClientLimits {
                messages_per_s: two.client_message_rate,
                message_burst: f64::from(two.client_message_burst),
                bytes_per_s: two.client_byte_rate as f64,
                byte_burst: two.client_byte_burst as f64,
                queue: two.client_queue,
            },
            clock::unix_ms() ^ ((id as u64 + 7) << 40),
        );
        let epoll = Epoll::new()?;
        let tickfd = TimerFd::periodic(cfg.timeouts.tick)?;
        epoll.add(wake.raw(), WAKE_TOKEN, EV_IN)?;
        epoll.add(tickfd.raw(), TICK_TOKEN, EV_IN)?;
        // Slots for a little over the longest deadline, so most timers fire on first visit.
        let d = &p.live;
        let longest = [p.handshake_ticks, d.ping + d.pong, d.idle, p.drain_ticks]
            .into_iter()
            .max()
            .unwrap_or(1);
        let mut wheel = TimerWheel::new((longest as usize + 2).min(1 << 16), 0);
        wheel.reserve(capacity);
        let read_buf = vec![0u8; p.read_buffer].into_boxed_slice();
        let core = Core {
            watch: pressure::Watch::new(&cfg.overload),
            id,
            wheel,
            next_stream_sweep: p.minute_ticks,
            p,
            shared,
            counters,
            epoll,
            wake,
            tickfd,
            listener_fd: -1,
            tls_listener_fd: -1,
            tls_plain: Vec::new(),
            links: HashMap::new(),
            conns: Slab::with_capacity(capacity),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_TURN],
            ready: Vec::new(),
            dirty: Vec::new(),
            fired: Vec::new(),
            start: now,
            start_ms: clock::unix_ms(),
            now: 0,
            now_ms: 0,
            gen: 0,
            open: 0,
            handshaking: 0,
            draining: false,
            drain_deadline: u64::MAX,
            mesh: Mesh::new(id, router, inbox),
            channels: ChannelIndex::default(),
            home,
            peers,
            effects: Effects::new(),
            scratch: Vec::new(),
            shed: Vec::new(),
            repairs: Repairs::default(),
            jitter: Jitter::new(clock::unix_ms() ^ ((id as u64 + 1) << 48)),
            drain_queue: Vec::new(),
            drain_from: 0,
            drain_total: 0,
            upstream,
            upstream_out: Vec::new(),
            upstream_results: Vec::new(),
            upstream_done: Vec::new(),
            authorizing: HashMap::new(),
            log,
        };
        Ok(Shard { read_buf, core })
    }

    pub(crate) fn id(&self) -> usize {
        self.core.id
    }

    /// A duplicate of the epoll fd, for the runtime to poll.
    pub(crate) fn epoll_fd(&self) -> io::Result<OwnedFd> {
        self.core.epoll.try_clone()
    }

    pub(crate) fn set_listener_fd(&mut self, fd: RawFd) {
        self.core.listener_fd = fd;
    }

    pub(crate) fn set_tls_listener_fd(&mut self, fd: RawFd) {
        self.core.tls_listener_fd = fd;
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.core.draining
    }

    /// Takes a freshly accepted socket. Refusing one means dropping `fd`, which closes it.
    pub(crate) fn on_accept(&mut self, fd: OwnedFd, ip: IpAddr, now: Instant, tls: bool) {
        self.core.clock(now);
        self.core.on_accept(fd, ip, tls);
    }

    /// Backend requests to send now (the runtime spawns one task each).
    pub(crate) fn take_upstream_requests(&mut self) -> Vec<crate::upstream::Request> {
        self.core.take_upstream_requests()
    }

    /// A backend request ended; its outcome is applied in the next turn.
    pub(crate) fn upstream_ended(
        &mut self,
        backend: usize,
        id: u64,
        r: crate::upstream::CallResult,
    ) {
        self.core.upstream_ended(backend, id, r);
    }

    /// What a runtime task needs to send a backend's requests: its rule, and the shard's wake
    /// (a finished request wakes the event loop).
    pub(crate) fn upstream_io(
        &self,
    ) -> (Vec<Arc<crate::config::UpstreamRule>>, Arc<str>, Arc<EventFd>) {
        (
            self.core.shared.upstreams.rules.clone(),
            self.core.shared.upstreams.node.clone(),
            self.core.wake.clone(),
        )
    }

    pub(crate) fn count_accept_error(&self) {
        self.core.counters.accept_errors.inc();
    }

    /// One turn of the event loop at `now`, each step named:
    pub(crate) fn turn(&mut self, now: Instant) -> Turn {
        let began = clock::now();
        self.core.clock(now);
        self.read_ready_sockets(); // readiness, then read, decode and handle what arrived
        let inbox_left = self.core.drain_inbox(); // directory updates, requests, deliveries
        self.core.mesh.flush_retry(); // updates a full inbox refused earlier, in order
        self.read_again(); // connections that still had unread bytes (fairness)
        self.core.expire_timers(); // handshake, ping, pong, idle, slow and close deadlines
        self.core.drain_wave(); // while draining with --drain-spread: this tick's closes
        self.core.sweep_streams(); // once a minute: forget streams idle past their TTL
        self.core.redeliver(); // durable messages whose ack is overdue, sent again
        self.core.drive_upstream(); // backend answers to their sessions; requests that can go
        self.core.flush_dirty(); // one gather write per connection with queued frames
        self.core.after_flush(); // what drained outboxes asked of this shard itself
        self.core.seal_log(); // this turn's durable records: one commit for the log writer
        self.core.watch_load(); // every --overload-interval: pressures, and the actions they drive
        self.core.watch.turn_took(clock::now().saturating_duration_since(began));
        self.core.next_turn(inbox_left, self.core.ready.is_empty())
    }
}

impl Core {
    /// Sets the tick from the clock, once per turn (and per accept).
    fn clock(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.start);
        self.now = (since.as_nanos() / self.p.tick_nanos) as u64;
        self.now_ms = self.start_ms + since.as_millis() as u64;
    }

    /// The time an input happens at, as the state machines take it.
    fn at(&self) -> Now {
        Now { tick: self.now as u32, ms: self.now_ms }
    }

    fn now32(&self) -> u32 {
        self.now as u32
    }

    fn conn_id(&self, key: usize) -> ConnId {
        ConnId { shard: self.id as u16, slot: key as u32, gen: self.conns[key].gen }
    }

    /// The slot `id` names on this shard, in whatever phase, if it is still that connection.
    fn slot_of(&self, id: ConnId) -> Option<usize> {
        let key = id.slot as usize;
        (usize::from(id.shard) == self.id)
            .then(|| self.conns.get(key))
            .flatten()
            .filter(|c| c.gen == id.gen)
            .map(|_| key)
    }

    /// The slot of a connection of this shard that is open, if `id` still names one.
    fn local(&self, id: ConnId) -> Option<usize> {
        self.slot_of(id).filter(|&k| self.conns[k].phase.is_open())
    }

    fn lookup(&self, tok: u64) -> Option<usize> {
        let key = (tok & 0xFFFF_FFFF) as usize;
        let gen = (tok >> 32) as u32;
        self.conns.get(key).filter(|c| c.gen == gen).map(|_| key)
    }

    /// Handles up to a turn's worth of inbox messages, each followed by the messages it made
    /// this shard send itself; returns whether some are left.
    fn drain_inbox(&mut self) -> bool {
        self.mesh.woke();
        self.settle();
        for _ in 0..INBOX_PER_TURN {
            let Some(m) = self.mesh.next_inbox() else { return false };
            self.counters.inbox_messages.inc();
            self.handle(m);
            self.settle();
        }
        true
    }

    /// Handles the messages this shard sent itself, until none are left (a message may send
    /// more; none is handled inside another).
    /// A drained outbox may have asked this shard's own home for a gap's repair: answer it in
    /// this turn and write what it queued, which may drain and ask again (a few rounds per
    /// turn; the next turn comes at once for the rest).
    fn after_flush(&mut self) {
        for _ in 0..16 {
            if !self.mesh.has_local() {
                return;
            }
            self.settle();
            self.flush_dirty();
        }
    }

    fn settle(&mut self) {
        while let Some(m) = self.mesh.next_local() {
            self.handle(m);
        }
    }

    fn drain_requested(&mut self) {
        self.wake.drain();
        if self.shared.draining.load(Relaxed) && !self.draining {
            self.begin_drain();
        }
    }

    fn next_turn(&self, inbox_left: bool, nothing_to_read: bool) -> Turn {
        if self.draining && self.conns.is_empty() {
            Turn::Done
        } else if nothing_to_read && !inbox_left && !self.mesh.has_local() {
            Turn::Wait
        } else {
            Turn::Again
        }
    }
}
