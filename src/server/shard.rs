//! A shard: one thread's worth of the gateway. It owns a slab of connections, an edge-triggered
//! epoll set over their sockets, a timer wheel for every deadline, and one read buffer that all
//! its connections share.
//!
//! Two monoio tasks run on the shard's runtime: the accept loop (io_uring accept on the shard's
//! SO_REUSEPORT listener) and the event loop, which waits for the epoll set through the
//! runtime (one io_uring poll, or the epoll fallback's own registration) and then does a
//! *turn*: drain readiness events, read and decode, expire timers, and flush every connection
//! with queued frames in one gather write. An idle connection therefore costs its slab entry
//! and its epoll registration: no task, no buffer, no pending operation, no timer future.
//!
//! Nothing here blocks: sockets are non-blocking, and a connection whose outbox is full stops
//! being read until it drains. Per-connection protocol decisions come from `proto`; this file
//! only moves bytes and keeps state.

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use std::collections::VecDeque;

use bytes::Bytes;
use slab::Slab;

use crate::clock;
use crate::config::Config;
use crate::proto::client::{self, ClientError, ClientMsg, Stream};
use crate::proto::frame::{close_payload, encode_frame};
use crate::proto::handshake::{self, HandshakeError, HandshakePolicy, Upgrade};
use crate::proto::{CloseReason, Closing, Decoder, Event, Limits, OpCode, ProtocolError, Role};
use crate::push::directory::{ChannelDirectory, UserConn, UserDirectory};
use crate::push::identity::Identify;
use crate::push::ids::{home_of, ConnId};
use crate::push::index::{Change, ChannelIndex};
use crate::push::msg::{ConnInfo, Frame, Payload, Priority, ShardMsg, Target};
use crate::push::report::{ReportPart, Totals};
use crate::push::streams::{StreamKey, Streams};
use crate::timer_wheel::TimerWheel;

use super::conn::{flag, Conn, Phase, Route, Session};
use super::inbox::{Inbox, Router};
use super::outbox::{Flushed, Outbox};
use super::stats::Counters;
use super::sys::{self, Epoll, EventFd, TimerFd, EV_ERR, EV_IN, EV_OUT, EV_RDHUP};
use super::Shared;

const WAKE_TOKEN: u64 = u64::MAX;
const TICK_TOKEN: u64 = u64::MAX - 1;
/// Reads of one connection per turn before others get theirs.
const READS_PER_TURN: usize = 4;
/// Readiness events taken per epoll_wait.
const EVENTS_PER_TURN: usize = 1024;
/// A message buffer larger than this is freed after use instead of kept.
const KEEP_MESSAGE_CAPACITY: usize = 16 * 1024;
/// Inbox messages handled per turn before sockets get their turn again.
const INBOX_PER_TURN: usize = 4096;

/// Everything a shard derives from the configuration once.
#[derive(Debug)]
pub struct Params {
    pub policy: HandshakePolicy,
    pub routes: Vec<Route>,
    pub limits: Limits,
    pub handshake_ticks: u64,
    pub ping_ticks: u64,
    pub pong_ticks: u64,
    pub idle_ticks: u64,
    pub close_ticks: u64,
    pub drain_ticks: u64,
    pub tick_nanos: u128,
    pub max_per_shard: usize,
    pub max_pending: usize,
    pub outbox_max_bytes: usize,
    pub outbox_max_frames: usize,
    pub heartbeat: Vec<u8>,
    /// The heartbeat answer, encoded once and shared by every connection.
    pub heartbeat_frame: Bytes,
    pub read_buffer: usize,
    pub max_channels: usize,
    pub active_window_ms: u64,
    pub replace: bool,
    pub slow_ticks: u64,
    pub max_client_errors: u32,
    pub minute_ticks: u64,
    pub report_ticks: u64,
    pub stream_idle_ttl_ms: u64,
}

impl Params {
    pub fn new(cfg: &Config) -> Params {
        let mut routes = vec![Route::Ws];
        let mut paths = vec![cfg.ws_path.clone()];
        if cfg.echo {
            routes.push(Route::Echo);
            paths.push(cfg.echo_path.clone());
        }
        let mut heartbeat_frame = Vec::new();
        encode_frame(
            &mut heartbeat_frame,
            OpCode::Text,
            true,
            None,
            cfg.heartbeat_reply.as_bytes(),
        );
        Params {
            policy: HandshakePolicy {
                routes: paths,
                allowed_origins: cfg.allowed_origins.clone(),
                subprotocols: cfg.subprotocols.clone(),
                max_header_bytes: cfg.max_header_bytes as usize,
            },
            routes,
            limits: Limits { max_frame: cfg.max_frame_size, max_message: cfg.max_message_size },
            handshake_ticks: cfg.ticks(cfg.handshake_timeout),
            ping_ticks: cfg.ticks(cfg.ping_interval),
            pong_ticks: cfg.ticks(cfg.pong_timeout),
            idle_ticks: cfg.ticks(cfg.idle_timeout),
            close_ticks: cfg.ticks(cfg.close_timeout),
            drain_ticks: cfg.ticks(cfg.drain_timeout),
            tick_nanos: cfg.tick.as_nanos().max(1),
            max_per_shard: cfg.max_connections_per_shard,
            max_pending: cfg.max_pending_handshakes,
            outbox_max_bytes: cfg.outbox_max_bytes as usize,
            outbox_max_frames: cfg.outbox_max_frames,
            heartbeat: cfg.heartbeat_text.as_bytes().to_vec(),
            heartbeat_frame: Bytes::from(heartbeat_frame),
            read_buffer: cfg.read_buffer as usize,
            max_channels: cfg.max_channels_per_conn,
            active_window_ms: cfg.active_window.as_millis() as u64,
            replace: cfg.replace_same_device,
            slow_ticks: cfg.ticks(cfg.slow_consumer_timeout).max(1),
            max_client_errors: cfg.max_client_errors,
            minute_ticks: cfg.ticks(std::time::Duration::from_secs(60)),
            report_ticks: cfg.ticks(std::time::Duration::from_secs(1)),
            stream_idle_ttl_ms: cfg.stream_idle_ttl.as_millis() as u64,
        }
    }
}

/// What the event loop does after a turn.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
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

pub struct Shard {
    pub id: usize,
    p: Params,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    tickfd: TimerFd,
    listener_fd: RawFd,
    conns: Slab<Conn>,
    wheel: TimerWheel<u32>,
    read_buf: Box<[u8]>,
    events: Vec<libc::epoll_event>,
    ready: Vec<u64>,
    dirty: Vec<u64>,
    fired: Vec<u32>,
    start: Instant,
    now: u64,
    gen: u32,
    open: usize,
    handshaking: usize,
    draining: bool,
    drain_deadline: u64,
    router: Arc<Router>,
    inbox: Inbox,
    identify: Arc<dyn Identify>,
    channels: ChannelIndex,
    users: UserDirectory,
    chan_dir: ChannelDirectory,
    /// Numbering of the streams homed here.
    streams: Streams,
    /// Tick of the next sweep for idle streams.
    next_stream_sweep: u64,
    /// Every shard's counters (a broadcast refused by a full inbox counts that shard's
    /// connections as dropped).
    peers: Arc<[Arc<Counters>]>,
    /// Directory updates a full inbox refused, retried each turn.
    retry: VecDeque<(usize, ShardMsg)>,
    scratch: Vec<u32>,
    /// Wall-clock milliseconds at `start`.
    start_ms: u64,
}

/// What a shard is built from besides the configuration.
pub struct ShardParts {
    pub id: usize,
    pub capacity: usize,
    pub shared: Arc<Shared>,
    pub counters: Arc<Counters>,
    pub wake: Arc<EventFd>,
    pub router: Arc<Router>,
    pub inbox: Inbox,
    pub identify: Arc<dyn Identify>,
    pub peers: Arc<[Arc<Counters>]>,
}

impl Shard {
    /// `capacity`: the most connections this shard may hold. The slab and the timer array are
    /// reserved for it up front; pages nobody touches cost no memory, while growing by
    /// doubling would leave the old copies resident (about 90 B per connection at 19k).
    pub fn new(cfg: &Config, parts: ShardParts) -> io::Result<Shard> {
        let ShardParts { id, capacity, shared, counters, wake, router, inbox, identify, peers } =
            parts;
        let p = Params::new(cfg);
        let streams = Streams::new(shared.epoch, p.stream_idle_ttl_ms);
        let next_stream_sweep = p.minute_ticks;
        let epoll = Epoll::new()?;
        let tickfd = TimerFd::periodic(cfg.tick)?;
        epoll.add(wake.raw(), WAKE_TOKEN, EV_IN)?;
        epoll.add(tickfd.raw(), TICK_TOKEN, EV_IN)?;
        // Slots for a little over the longest deadline, so most timers fire on first visit.
        let longest = [p.handshake_ticks, p.ping_ticks + p.pong_ticks, p.idle_ticks, p.drain_ticks]
            .into_iter()
            .max()
            .unwrap_or(1);
        let read_buffer = p.read_buffer;
        let mut wheel = TimerWheel::new((longest as usize + 2).min(1 << 16), 0);
        wheel.reserve(capacity);
        Ok(Shard {
            id,
            wheel,
            p,
            shared,
            counters,
            epoll,
            wake,
            tickfd,
            listener_fd: -1,
            conns: Slab::with_capacity(capacity),
            read_buf: vec![0u8; read_buffer].into_boxed_slice(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_TURN],
            ready: Vec::new(),
            dirty: Vec::new(),
            fired: Vec::new(),
            start: clock::now(),
            now: 0,
            gen: 0,
            open: 0,
            handshaking: 0,
            draining: false,
            drain_deadline: u64::MAX,
            router,
            inbox,
            identify,
            channels: ChannelIndex::default(),
            users: UserDirectory::default(),
            chan_dir: ChannelDirectory::default(),
            streams,
            next_stream_sweep,
            peers,
            retry: VecDeque::new(),
            scratch: Vec::new(),
            start_ms: clock::unix_ms(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start_ms + (clock::now() - self.start).as_millis() as u64
    }

    fn conn_id(&self, key: usize) -> ConnId {
        ConnId { shard: self.id as u16, slot: key as u32, gen: self.conns[key].gen }
    }

    /// The slot of a connection of this shard that is open, if `id` still names one.
    fn local(&self, id: ConnId) -> Option<usize> {
        let key = id.slot as usize;
        (usize::from(id.shard) == self.id)
            .then(|| self.conns.get(key))
            .flatten()
            .filter(|c| c.gen == id.gen && c.phase == Phase::Open)
            .map(|_| key)
    }

    /// A duplicate of the epoll fd, for the runtime to poll.
    pub fn epoll_fd(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.epoll.try_clone()
    }

    pub fn set_listener_fd(&mut self, fd: RawFd) {
        self.listener_fd = fd;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    fn clock(&mut self) {
        self.now = ((clock::now() - self.start).as_nanos() / self.p.tick_nanos) as u64;
    }

    fn now32(&self) -> u32 {
        self.now as u32
    }

    fn elapsed(&self, stamp: u32) -> u64 {
        u64::from(self.now32().wrapping_sub(stamp))
    }

    fn lookup(&self, tok: u64) -> Option<usize> {
        let key = (tok & 0xFFFF_FFFF) as usize;
        let gen = (tok >> 32) as u32;
        self.conns.get(key).filter(|c| c.gen == gen).map(|_| key)
    }

    // ----- accept -----

    /// Takes a freshly accepted socket.
    /// Refusing one means dropping `fd`, which closes it.
    pub fn on_accept(&mut self, fd: OwnedFd, ip: IpAddr) {
        self.clock();
        self.counters.accepted.inc();
        if self.draining {
            return;
        }
        if self.handshaking >= self.p.max_pending {
            self.counters.pending_overflow.inc();
            return;
        }
        sys::set_nodelay(fd.as_fd());
        self.gen = self.gen.wrapping_add(1);
        let gen = self.gen;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= (u32::MAX - 2) as usize
            || self.epoll.add(fd.as_raw_fd(), token(key, gen), EV_IN | EV_OUT | EV_RDHUP).is_err()
        {
            self.counters.accept_errors.inc();
            return;
        }
        let now32 = self.now as u32;
        entry.insert(Conn {
            fd,
            gen,
            phase: Phase::Handshake,
            route: Route::Ws,
            flags: 0,
            timer: None,
            last_recv: now32,
            last_msg: now32,
            ping_sent: now32,
            decoder: Decoder::new(Role::Server),
            bufs: None,
            outbox: None,
            session: None,
            slow_since: 0,
            ip,
        });
        self.handshaking += 1;
        self.counters.handshaking.inc();
        self.arm(key, Some(self.now + self.p.handshake_ticks));
    }

    pub fn count_accept_error(&self) {
        self.counters.accept_errors.inc();
    }

    // ----- the turn -----

    /// One turn of the event loop.
    pub fn turn(&mut self) -> Turn {
        self.clock();
        let n = match self.epoll.poll(&mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => {
                tracing::error!(shard = self.id, "epoll_wait failed: {e}");
                0
            }
        };
        for i in 0..n {
            let ev = self.events[i];
            let (bits, tok) = (ev.events, ev.u64);
            match tok {
                WAKE_TOKEN => {
                    self.wake.drain();
                    if self.shared.draining.load(Relaxed) && !self.draining {
                        self.begin_drain();
                    }
                }
                TICK_TOKEN => self.tickfd.drain(),
                tok => {
                    let Some(key) = self.lookup(tok) else { continue };
                    if bits & (EV_OUT | EV_ERR) != 0 {
                        let conn = &mut self.conns[key];
                        conn.clear(flag::WRITE_BLOCKED);
                        if conn.outbox.is_some() {
                            self.mark_dirty(key);
                        }
                    }
                    if bits & (EV_RDHUP | EV_ERR) != 0 {
                        // The FIN or RST may have come in the same edge as the last bytes: a
                        // short read no longer means the socket is drained.
                        self.conns[key].set(flag::PEER_CLOSED);
                    }
                    if bits & (EV_IN | EV_RDHUP | EV_ERR) != 0 {
                        self.conns[key].set(flag::READ_READY);
                        self.read_conn(key);
                    }
                }
            }
        }
        let inbox_left = self.drain_inbox();
        self.flush_retry();
        self.run_ready();
        self.expire_timers();
        self.sweep_streams();
        self.flush_dirty();
        if self.draining && self.conns.is_empty() {
            Turn::Done
        } else if self.ready.is_empty() && !inbox_left {
            Turn::Wait
        } else {
            Turn::Again
        }
    }

    /// Handles up to a turn's worth of inbox messages; returns whether some are left.
    fn drain_inbox(&mut self) -> bool {
        self.router.woke(self.id);
        for _ in 0..INBOX_PER_TURN {
            match self.inbox.rx.try_recv() {
                Ok(m) => {
                    self.counters.inbox_messages.inc();
                    self.handle(m);
                }
                Err(_) => return false,
            }
        }
        true
    }

    fn flush_retry(&mut self) {
        while let Some((shard, m)) = self.retry.pop_front() {
            if let Err(m) = self.router.send(shard, m) {
                self.retry.push_front((shard, m));
                break;
            }
        }
    }

    /// Sends a message to a shard (handling it at once if it is this one). A full inbox gives
    /// the message back.
    fn send_to(&mut self, shard: usize, m: ShardMsg) -> Result<(), ShardMsg> {
        if shard == self.id {
            self.handle(m);
            return Ok(());
        }
        self.router.send(shard, m)
    }

    /// Sends a message that must not be lost (a directory update, a kick), keeping it for a
    /// retry if the inbox is full; counted in `mesh_retries`, not as a dropped delivery.
    fn send_update(&mut self, shard: usize, m: ShardMsg) {
        if !self.retry.is_empty() && shard != self.id {
            self.counters.mesh_retries.inc();
            self.retry.push_back((shard, m)); // keep updates in order
        } else if let Err(m) = self.send_to(shard, m) {
            self.counters.mesh_retries.inc();
            self.retry.push_back((shard, m));
        }
    }

    /// Sends a delivery; if the inbox is full, its `expected` recipients count as dropped.
    fn send_delivery(&mut self, shard: usize, m: ShardMsg, expected: u64) {
        if let Err(ShardMsg::Deliver { report, .. }) = self.send_to(shard, m) {
            self.counters.inbox_full.add(expected);
            report.add(Totals { recipients: expected, dropped: expected, ..Default::default() });
        }
    }

    // ----- inbox messages -----

    fn handle(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::UserJoined { user, device, conn, at_ms } => {
                let c = UserConn { conn, device, connected_ms: at_ms, active_ms: at_ms };
                for old in self.users.join(&user, c, self.p.replace) {
                    let kick = ShardMsg::Kick {
                        conns: vec![old],
                        reason: CloseReason::Replaced,
                        report: None,
                    };
                    self.send_update(usize::from(old.shard), kick);
                }
            }
            ShardMsg::UserLeft { user, conn } => self.users.leave(&user, conn),
            ShardMsg::UserActive { user, conn, at_ms } => self.users.active(&user, conn, at_ms),
            ShardMsg::ChannelCount { channel, shard, delta } => {
                let n = self.router.shards();
                self.chan_dir.count(&channel, usize::from(shard), delta, n);
            }
            ShardMsg::PushUser { user, device, policy, payload, priority, report } => {
                let now_ms = self.now_ms();
                let window = self.p.active_window_ms;
                match self.users.targets(&user, device.as_deref(), policy, now_ms, window) {
                    None => report.add(Totals { offline: 1, ..Default::default() }),
                    Some(mut conns) => {
                        let key = StreamKey::User(user);
                        let pos = self.streams.append(&key, now_ms);
                        let frame = encode_message(&key.wire(), pos.seq, &payload, priority);
                        conns.sort_by_key(|c| c.shard);
                        for group in conns.chunk_by(|a, b| a.shard == b.shard) {
                            let n = group.len() as u64;
                            let m = ShardMsg::Deliver {
                                target: Target::Conns(group.to_vec()),
                                frame: frame.clone(),
                                report: report.split(),
                            };
                            self.send_delivery(usize::from(group[0].shard), m, n);
                        }
                    }
                }
            }
            ShardMsg::Publish { channel, payload, priority, report } => {
                let Some(shards) = self.chan_dir.publish(&channel) else { return };
                let now_ms = self.now_ms();
                let key = StreamKey::Channel(channel.clone());
                let pos = self.streams.append(&key, now_ms);
                let frame = encode_message(&key.wire(), pos.seq, &payload, priority);
                for shard in shards {
                    let m = ShardMsg::Deliver {
                        target: Target::Channel(channel.clone()),
                        frame: frame.clone(),
                        report: report.split(),
                    };
                    let expected = self.chan_dir.count_on(&channel, shard);
                    self.send_delivery(shard, m, expected);
                }
            }
            ShardMsg::Broadcast { payload, priority, report } => {
                let pos = self.streams.append(&StreamKey::Broadcast, self.now_ms());
                let frame = encode_message(&Stream::Broadcast, pos.seq, &payload, priority);
                for shard in 0..self.router.shards() {
                    let m = ShardMsg::Deliver {
                        target: Target::All,
                        frame: frame.clone(),
                        report: report.split(),
                    };
                    let open = self.peers.get(shard).map_or(0, |c| c.open_connections.get());
                    self.send_delivery(shard, m, open);
                }
            }
            ShardMsg::KickUser { user, reason, report } => {
                let Some(entry) = self.users.get(&user) else {
                    report.add(Totals { offline: 1, ..Default::default() });
                    return;
                };
                let mut conns: Vec<ConnId> = entry.conns.iter().map(|c| c.conn).collect();
                conns.sort_by_key(|c| c.shard);
                for group in conns.chunk_by(|a, b| a.shard == b.shard) {
                    let m = ShardMsg::Kick {
                        conns: group.to_vec(),
                        reason: reason.clone(),
                        report: Some(report.split()),
                    };
                    self.send_update(usize::from(group[0].shard), m);
                }
            }
            ShardMsg::QueryUser { user, reply } => {
                let conns = self.users.get(&user).map_or_else(Vec::new, |e| {
                    e.conns
                        .iter()
                        .map(|c| ConnInfo {
                            conn: c.conn,
                            device: c.device.clone(),
                            connected_ms: c.connected_ms,
                            active_ms: c.active_ms,
                        })
                        .collect()
                });
                let _ = reply.send(conns);
            }
            ShardMsg::QueryChannel { channel, reply } => {
                let _ = reply.send(self.chan_dir.subscribers(&channel));
            }
            ShardMsg::Deliver { target, frame, report } => self.deliver(target, &frame, &report),
            ShardMsg::SendConn { conn, payload, priority, report } => {
                let Some(key) = self.local(conn) else {
                    report.add(Totals { offline: 1, ..Default::default() });
                    return;
                };
                let session = self.conns[key].session.get_or_insert_with(Default::default);
                session.direct_seq += 1;
                let seq = session.direct_seq;
                let frame = encode_message(&Stream::Direct, seq, &payload, priority);
                let queued = self.queue_push(key, &frame);
                let t = Totals {
                    recipients: 1,
                    queued: u64::from(queued),
                    dropped: u64::from(!queued),
                    offline: 0,
                };
                self.count_pushes(t);
                report.add(t);
            }
            ShardMsg::Kick { conns, reason, report } => {
                let mut t = Totals::default();
                for id in conns {
                    match self.local(id) {
                        Some(key) => {
                            t.recipients += 1;
                            t.dropped += self.close_for(key, reason.clone());
                        }
                        None => t.offline += 1,
                    }
                }
                if let Some(r) = report {
                    r.add(t);
                }
            }
        }
    }

    /// Queues a shared frame to local connections and adds what happened to the report.
    fn deliver(&mut self, target: Target, frame: &Frame, report: &ReportPart) {
        let mut t = Totals::default();
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        match target {
            Target::Conns(ids) => {
                for id in ids {
                    match self.local(id) {
                        Some(key) => slots.push(key as u32),
                        None => {
                            t.recipients += 1;
                            t.dropped += 1;
                        }
                    }
                }
            }
            Target::Channel(ch) => {
                if let Some(set) = self.channels.subscribers(&ch) {
                    slots.extend(set.iter().copied());
                }
            }
            Target::All => slots.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.phase == Phase::Open && c.route == Route::Ws)
                    .map(|(k, _)| k as u32),
            ),
        }
        for &slot in &slots {
            t.recipients += 1;
            if self.queue_push(slot as usize, frame) {
                t.queued += 1;
            } else {
                t.dropped += 1;
            }
        }
        self.scratch = slots;
        self.count_pushes(t);
        report.add(t);
        self.counters.publish_to_queued.observe(report.elapsed(clock::now()));
    }

    fn count_pushes(&self, t: Totals) {
        self.counters.pushes_queued.add(t.queued);
        self.counters.frames_out.add(t.queued);
        self.counters.pushes_dropped.add(t.dropped);
    }

    /// Queues a push within the outbox caps; returns whether it was queued (the caller counts
    /// it, once per delivery rather than per recipient). Marks the connection slow when pushes
    /// are lost, and arms its slow-consumer deadline. Never removes the connection (fan-out may
    /// be iterating the channel index).
    fn queue_push(&mut self, key: usize, frame: &Frame) -> bool {
        let (max_bytes, max_frames) = (self.p.outbox_max_bytes, self.p.outbox_max_frames);
        let now32 = self.now32();
        let conn = &mut self.conns[key];
        if conn.phase != Phase::Open {
            return false;
        }
        let ob = conn.outbox.get_or_insert_with(Default::default);
        let before = ob.bytes();
        let q = ob.push_bounded(frame.bytes.clone(), frame.priority, max_bytes, max_frames);
        let after = ob.bytes();
        if ob.is_empty() {
            conn.outbox = None;
        }
        self.counters.outbox_bytes.add(after as u64);
        self.counters.outbox_bytes.sub(before as u64);
        if q.evicted > 0 {
            self.counters.pushes_evicted.add(q.evicted as u64);
        }
        if q.queued {
            self.mark_dirty(key);
        }
        let conn = &mut self.conns[key];
        if (q.evicted > 0 || !q.queued) && !conn.has(flag::SLOW) {
            conn.set(flag::SLOW);
            conn.slow_since = now32;
            let d = self.now + self.p.slow_ticks;
            let current = conn.timer.and_then(|t| self.wheel.deadline(t));
            if current.is_none_or(|c| c > d) {
                self.arm(key, Some(d));
            }
        }
        q.queued
    }

    fn run_ready(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        for tok in &ready {
            if let Some(key) = self.lookup(*tok) {
                let conn = &mut self.conns[key];
                conn.clear(flag::QUEUED_READ);
                if conn.has(flag::READ_READY) {
                    self.read_conn(key);
                }
            }
        }
        // Keep the allocation of whichever list is larger.
        if self.ready.is_empty() {
            self.ready = ready;
            self.ready.clear();
        }
    }

    fn queue_read(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::QUEUED_READ) {
            conn.set(flag::QUEUED_READ);
            self.ready.push(token(key, conn.gen));
        }
    }

    /// Whether reading waits for the outbox to drain. A peer that has closed is read on to its
    /// EOF regardless, so it is released at once.
    fn paused(&self, conn: &Conn) -> bool {
        matches!(conn.phase, Phase::Handshake | Phase::Open)
            && !conn.has(flag::PEER_CLOSED)
            && (conn.outbox_bytes() >= self.p.outbox_max_bytes
                || conn.outbox_frames() >= self.p.outbox_max_frames)
    }

    // ----- reading -----

    fn read_conn(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get(key) else { return };
            if self.paused(conn) {
                return; // READ_READY stays set; the flush that drains the outbox resumes it.
            }
            let mut buf = std::mem::take(&mut self.read_buf);
            let conn = &mut self.conns[key];
            let kept = match conn.bufs.as_mut() {
                Some(b) if !b.pending.is_empty() => {
                    let l = b.pending.len();
                    buf[..l].copy_from_slice(&b.pending);
                    b.pending.clear();
                    l
                }
                _ => 0,
            };
            let space = buf.len() - kept;
            match sys::recv(self.conns[key].fd.as_fd(), &mut buf[kept..]) {
                Ok(0) => {
                    self.read_buf = buf;
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    self.counters.bytes_in.add(n as u64);
                    let now32 = self.now32();
                    let conn = &mut self.conns[key];
                    conn.last_recv = now32;
                    conn.clear(flag::PING_OUT);
                    self.process(key, &mut buf[..kept + n]);
                    self.read_buf = buf;
                    match self.conns.get_mut(key) {
                        Some(c) => c.trim_bufs(),
                        None => return,
                    }
                    let conn = &mut self.conns[key];
                    if n < space && !conn.has(flag::PEER_CLOSED) {
                        // A short read emptied the socket; the next arrival is a new edge.
                        conn.clear(flag::READ_READY);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let conn = &mut self.conns[key];
                    if kept > 0 {
                        conn.bufs().pending.extend_from_slice(&buf[..kept]);
                    }
                    conn.clear(flag::READ_READY);
                    self.read_buf = buf;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if kept > 0 {
                        self.conns[key].bufs().pending.extend_from_slice(&buf[..kept]);
                    }
                    self.read_buf = buf;
                }
                Err(_) => {
                    self.read_buf = buf;
                    self.counters.io_errors.inc();
                    self.remove(key);
                    return;
                }
            }
        }
        self.queue_read(key);
    }

    fn on_eof(&mut self, key: usize) {
        match self.conns[key].phase {
            Phase::Handshake => self.counters.handshake_aborted.inc(),
            Phase::Open | Phase::Closing => self.counters.abnormal_closures.inc(),
            // Our close frame answered the client's (or a refusal is queued): the peer may
            // only have shut its write side, so give what is queued one try first.
            Phase::Linger => self.flush(key),
        }
        self.remove(key);
    }

    /// Handles bytes just read (with any kept bytes in front).
    fn process(&mut self, key: usize, data: &mut [u8]) {
        match self.conns[key].phase {
            Phase::Handshake => match handshake::parse_upgrade(data, &self.p.policy) {
                Ok(None) => self.conns[key].bufs().pending.extend_from_slice(data),
                Err(e) => self.refuse(key, e),
                Ok(Some((up, n))) => {
                    if self.upgrade(key, &up) {
                        self.decode_frames(key, &mut data[n..]);
                    }
                }
            },
            Phase::Open | Phase::Closing => self.decode_frames(key, data),
            Phase::Linger => {}
        }
    }

    fn decode_frames(&mut self, key: usize, data: &mut [u8]) {
        let limits = self.p.limits;
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if !matches!(conn.phase, Phase::Open | Phase::Closing) {
                return;
            }
            match conn.decoder.decode(&mut data[pos..], &limits) {
                Ok(Some((ev, n))) => {
                    pos += n;
                    self.on_frame(key, ev);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(key, e);
                    return;
                }
            }
        }
        if pos < data.len() {
            self.conns[key].bufs().pending.extend_from_slice(&data[pos..]);
        }
    }

    fn on_frame(&mut self, key: usize, ev: Event<'_>) {
        let now32 = self.now32();
        let conn = &mut self.conns[key];
        match ev {
            Event::Data { text, payload, first, last } => {
                if conn.phase != Phase::Open {
                    return; // after our close, data is discarded
                }
                if last {
                    self.counters.messages_in.inc();
                    conn.last_msg = now32;
                }
                if first && last {
                    self.on_message(key, text, payload);
                    return;
                }
                let bufs = conn.bufs();
                bufs.message.extend_from_slice(payload);
                if last {
                    let mut msg = std::mem::take(&mut bufs.message);
                    self.on_message(key, text, &msg);
                    if msg.capacity() <= KEEP_MESSAGE_CAPACITY {
                        msg.clear();
                        if let Some(b) = self.conns.get_mut(key).and_then(|c| c.bufs.as_mut()) {
                            b.message = msg;
                        }
                    }
                }
            }
            Event::Ping(payload) => {
                if conn.phase == Phase::Open {
                    self.queue_control(key, OpCode::Pong, payload);
                }
            }
            Event::Pong(_) => {}
            Event::Close(code, _reason) => match conn.phase {
                Phase::Open => {
                    self.counters.closed_by_client.inc();
                    let reply = code.map(|c| c.0.to_be_bytes().to_vec()).unwrap_or_default();
                    self.queue_close(key, &reply, false);
                    self.linger(key);
                }
                // The answer to our close: the handshake is complete.
                _ => self.remove(key),
            },
        }
    }

    /// A whole message from the client.
    fn on_message(&mut self, key: usize, text: bool, msg: &[u8]) {
        match self.conns[key].route {
            Route::Echo => {
                let op = if text { OpCode::Text } else { OpCode::Binary };
                self.queue_frame(key, op, msg);
            }
            Route::Ws => self.on_client_message(key, text, msg),
        }
    }

    // ----- handshake outcomes -----

    /// Completes an accepted upgrade unless a limit refuses it; returns whether it is open.
    fn upgrade(&mut self, key: usize, up: &Upgrade) -> bool {
        let ip = self.conns[key].ip;
        let route = self.p.routes.get(up.route).copied().unwrap_or(Route::Ws);
        let identity = if route == Route::Ws {
            match self.identify.identify(up.query.as_deref()) {
                Ok(id) => Some(id),
                Err(e) => {
                    self.refuse_with(key, HandshakeError::BadIdentity, &e.0);
                    return false;
                }
            }
        } else {
            None
        };
        let refusal = if self.draining {
            Some(HandshakeError::Draining)
        } else if (self.p.max_per_shard > 0 && self.open >= self.p.max_per_shard)
            || !self.shared.acquire()
        {
            Some(HandshakeError::ServerFull)
        } else if self.shared.limiter.as_ref().is_some_and(|l| !l.try_acquire(ip)) {
            self.shared.release();
            Some(HandshakeError::AddressLimit)
        } else {
            None
        };
        if let Some(e) = refusal {
            self.refuse(key, e);
            return false;
        }
        let mut resp = Vec::with_capacity(160);
        handshake::write_accept(&mut resp, up, &self.p.policy);
        let now32 = self.now32();
        let conn = &mut self.conns[key];
        conn.phase = Phase::Open;
        conn.route = route;
        conn.set(flag::COUNTED);
        conn.last_recv = now32;
        conn.last_msg = now32;
        self.handshaking -= 1;
        self.counters.handshaking.sub(1);
        self.open += 1;
        self.counters.open_connections.inc();
        self.counters.upgrades.inc();
        // The high lane, like the welcome after it: nothing may overtake the 101.
        self.queue_lane(key, Bytes::from(resp), Priority::High);
        if let Some(id) = identity {
            self.open_session(key, id);
        }
        let deadline = self.open_deadline(key);
        self.arm(key, deadline);
        true
    }

    /// A push connection is open: register it, subscribe its channels, welcome it.
    fn open_session(&mut self, key: usize, id: crate::push::identity::Identity) {
        let conn_id = self.conn_id(key);
        if id.user.is_some() || !id.channels.is_empty() {
            self.conns[key].session = Some(Box::new(Session {
                user: id.user.clone(),
                device: id.device.clone(),
                channels: Vec::with_capacity(id.channels.len()),
                ..Default::default()
            }));
        }
        for ch in &id.channels {
            self.subscribe(key, ch.clone());
        }
        if let Some(user) = &id.user {
            let m = ShardMsg::UserJoined {
                user: user.clone(),
                device: id.device.clone(),
                conn: conn_id,
                at_ms: self.now_ms(),
            };
            self.send_update(home_of(user, self.router.shards()), m);
        }
        let channels: Vec<&str> = id.channels.iter().map(|c| &**c).collect();
        let welcome = client::welcome(
            &conn_id.to_string(),
            id.user.as_deref(),
            id.device.as_deref(),
            self.shared.epoch,
            &channels,
        );
        self.queue_control(key, OpCode::Text, &welcome);
    }

    /// Subscribes a connection (its session exists); false if it is at its channel limit.
    fn subscribe(&mut self, key: usize, ch: Arc<str>) -> bool {
        let max = self.p.max_channels;
        let session = self.conns[key].session.get_or_insert_with(Default::default);
        if session.channels.contains(&ch) {
            return true;
        }
        if session.channels.len() >= max {
            return false;
        }
        session.channels.push(ch.clone());
        if self.channels.subscribe(&ch, key as u32) == Change::Changed {
            self.counters.subscriptions.inc();
            let m = ShardMsg::ChannelCount { channel: ch.clone(), shard: self.id as u16, delta: 1 };
            self.send_update(home_of(&ch, self.router.shards()), m);
        }
        true
    }

    /// Unsubscribes a connection; false if it was not subscribed.
    fn unsubscribe(&mut self, key: usize, ch: &str) -> bool {
        let Some(session) = self.conns[key].session.as_mut() else { return false };
        let Some(pos) = session.channels.iter().position(|c| &**c == ch) else { return false };
        let ch = session.channels.swap_remove(pos);
        if self.channels.unsubscribe(&ch, key as u32) == Change::Changed {
            self.counters.subscriptions.sub(1);
            let m =
                ShardMsg::ChannelCount { channel: ch.clone(), shard: self.id as u16, delta: -1 };
            self.send_update(home_of(&ch, self.router.shards()), m);
        }
        true
    }

    /// Leaves every index a closing connection is in.
    fn end_session(&mut self, key: usize, session: Session) {
        let conn_id = ConnId { shard: self.id as u16, slot: key as u32, gen: self.conns[key].gen };
        let n = self.router.shards();
        for ch in session.channels {
            if self.channels.unsubscribe(&ch, key as u32) == Change::Changed {
                self.counters.subscriptions.sub(1);
                let m = ShardMsg::ChannelCount {
                    channel: ch.clone(),
                    shard: self.id as u16,
                    delta: -1,
                };
                self.send_update(home_of(&ch, n), m);
            }
        }
        if let Some(user) = session.user {
            let home = home_of(&user, n);
            self.send_update(home, ShardMsg::UserLeft { user, conn: conn_id });
        }
    }

    /// A text or binary message from a push client.
    fn on_client_message(&mut self, key: usize, text: bool, msg: &[u8]) {
        self.report_activity(key);
        if !text {
            self.client_error(key, ClientError::BinaryNotAccepted);
            return;
        }
        if !self.p.heartbeat.is_empty() && msg == self.p.heartbeat.as_slice() {
            let frame = self.p.heartbeat_frame.clone();
            self.queue_lane(key, frame, Priority::High);
            return;
        }
        match client::parse_client(msg) {
            Ok(ClientMsg::Ping) => self.queue_control(key, OpCode::Text, client::PONG),
            Ok(ClientMsg::Subscribe(ch)) => {
                let ack = client::ack("subscribed", &ch);
                if self.subscribe(key, Arc::from(ch)) {
                    self.queue_control(key, OpCode::Text, &ack);
                } else {
                    self.client_error(key, ClientError::TooManyChannels);
                }
            }
            Ok(ClientMsg::Unsubscribe(ch)) => {
                if self.unsubscribe(key, &ch) {
                    self.queue_control(key, OpCode::Text, &client::ack("unsubscribed", &ch));
                } else {
                    self.client_error(key, ClientError::NotSubscribed);
                }
            }
            Err(e) => self.client_error(key, e),
        }
    }

    /// Answers a bad client message; too many in a minute closes the connection with 1008.
    fn client_error(&mut self, key: usize, e: ClientError) {
        self.counters.client_errors.inc();
        let now32 = self.now32();
        let minute = self.p.minute_ticks;
        let max = self.p.max_client_errors;
        let session = self.conns[key].session.get_or_insert_with(Default::default);
        if u64::from(now32.wrapping_sub(session.errors_since)) >= minute {
            session.errors = 0;
            session.errors_since = now32;
        }
        session.errors += 1;
        if session.errors > max {
            self.close_for(key, CloseReason::TooManyBadMessages);
            return;
        }
        self.queue_control(key, OpCode::Text, &client::error(e));
    }

    /// Tells the user's home shard this connection is active, at most once a second.
    fn report_activity(&mut self, key: usize) {
        let now32 = self.now32();
        let every = self.p.report_ticks;
        let conn_id = self.conn_id(key);
        let Some(session) = self.conns[key].session.as_mut() else { return };
        let Some(user) = session.user.clone() else { return };
        if u64::from(now32.wrapping_sub(session.reported)) < every {
            return;
        }
        session.reported = now32;
        let m = ShardMsg::UserActive { user: user.clone(), conn: conn_id, at_ms: self.now_ms() };
        self.send_update(home_of(&user, self.router.shards()), m);
    }

    fn refuse(&mut self, key: usize, e: HandshakeError) {
        self.refuse_with(key, e, e.reason());
    }

    fn refuse_with(&mut self, key: usize, e: HandshakeError, reason: &str) {
        self.counters.refused(e).inc();
        let mut resp = Vec::with_capacity(192);
        handshake::write_refusal_with(&mut resp, e, reason);
        self.queue_bytes(key, Bytes::from(resp));
        self.linger(key);
    }

    // ----- closing -----

    /// Fails the connection for a protocol violation: close frame with the mapped code, then
    /// stop reading.
    fn fail(&mut self, key: usize, e: ProtocolError) {
        tracing::debug!(shard = self.id, conn = key, "protocol error: {e}");
        self.close_for(key, CloseReason::Protocol(e));
    }

    /// Closes a connection for `reason`: the one path of every server-initiated close. Counts
    /// it, queues the close frame as the last frame (dropping queued pushes first where the
    /// reason says so), and proceeds as the reason's [`Closing`] says. Returns how many queued
    /// pushes were dropped.
    fn close_for(&mut self, key: usize, reason: CloseReason) -> u64 {
        self.counters.count_close(&reason);
        // After our own close frame (phase Closing) no second one may follow.
        let dropped = if self.conns[key].phase == Phase::Open {
            let (code, text) = reason.frame();
            self.queue_close(key, &close_payload(code.0, text), reason.discards_queued())
        } else {
            0
        };
        match reason.closing() {
            Closing::Handshake => {
                let d = match reason {
                    CloseReason::ShuttingDown => self.drain_deadline,
                    _ => (self.now + self.p.close_ticks).min(self.drain_deadline),
                };
                self.leave_indexes(key);
                self.conns[key].phase = Phase::Closing;
                self.arm(key, Some(d));
            }
            Closing::Linger => self.linger(key),
            Closing::Drop => {
                self.flush(key);
                self.remove(key);
            }
        }
        dropped
    }

    /// Queues the close frame behind everything queued (RFC 6455 §5.5.1: it is the last
    /// frame). With `discard`, queued pushes are dropped first and counted; returns how many.
    fn queue_close(&mut self, key: usize, payload: &[u8], discard: bool) -> u64 {
        let mut v = Vec::with_capacity(payload.len() + 2);
        encode_frame(&mut v, OpCode::Close, true, None, payload);
        let conn = &mut self.conns[key];
        let ob = conn.outbox.get_or_insert_with(Default::default);
        let before = ob.bytes();
        let dropped = ob.close(Bytes::from(v), discard) as u64;
        let after = ob.bytes();
        self.counters.frames_out.inc();
        self.counters.outbox_bytes.add(after as u64);
        self.counters.outbox_bytes.sub(before as u64);
        self.counters.pushes_discarded.add(dropped);
        self.mark_dirty(key);
        dropped
    }

    /// Stops reading: the write side is shut once the outbox drains; the socket closes at EOF
    /// or at the close deadline.
    fn linger(&mut self, key: usize) {
        self.leave_indexes(key);
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Handshake {
            self.handshaking -= 1;
            self.counters.handshaking.sub(1);
        }
        conn.phase = Phase::Linger;
        conn.set(flag::SHUT_AFTER_FLUSH);
        if let Some(b) = conn.bufs.as_mut() {
            b.pending = Vec::new();
            b.message = Vec::new();
        }
        conn.trim_bufs();
        self.mark_dirty(key);
        let deadline = (self.now + self.p.close_ticks).min(self.drain_deadline);
        self.arm(key, Some(deadline));
    }

    /// A closing connection takes no more pushes: it leaves the channel index and its user's
    /// directory at once, not when the close handshake ends.
    fn leave_indexes(&mut self, key: usize) {
        if let Some(session) = self.conns.get_mut(key).and_then(|c| c.session.take()) {
            self.end_session(key, *session);
        }
    }

    fn remove(&mut self, key: usize) {
        self.leave_indexes(key);
        let Some(conn) = self.conns.try_remove(key) else { return };
        self.counters.outbox_bytes.sub(conn.outbox_bytes() as u64);
        if let Some(t) = conn.timer {
            self.wheel.cancel(t);
        }
        if conn.phase == Phase::Handshake {
            self.handshaking -= 1;
            self.counters.handshaking.sub(1);
        }
        if conn.has(flag::COUNTED) {
            self.open -= 1;
            self.counters.open_connections.sub(1);
            self.shared.release();
            if let Some(l) = &self.shared.limiter {
                l.release(conn.ip);
            }
        }
        // Dropping `conn` closes its socket, which also takes it out of the epoll set.
    }

    fn begin_drain(&mut self) {
        self.draining = true;
        self.drain_deadline = self.now + self.p.drain_ticks;
        sys::shutdown_listener(self.listener_fd);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        tracing::info!(shard = self.id, connections = keys.len(), "draining");
        for key in keys {
            match self.conns[key].phase {
                Phase::Handshake => self.refuse(key, HandshakeError::Draining),
                Phase::Open => {
                    self.close_for(key, CloseReason::ShuttingDown);
                }
                Phase::Closing | Phase::Linger => {}
            }
        }
    }

    // ----- timers -----

    fn arm(&mut self, key: usize, deadline: Option<u64>) {
        let conn = &mut self.conns[key];
        if let Some(t) = conn.timer.take() {
            self.wheel.cancel(t);
        }
        if let Some(d) = deadline {
            conn.timer = Some(self.wheel.insert(d, key as u32));
        }
    }

    /// The next instant an open connection needs looking at: its ping, pong or idle deadline.
    fn open_deadline(&self, key: usize) -> Option<u64> {
        let conn = &self.conns[key];
        let mut next: Option<u64> = None;
        let mut consider = |d: u64| next = Some(next.map_or(d, |n: u64| n.min(d)));
        if self.p.ping_ticks > 0 {
            if conn.has(flag::PING_OUT) {
                consider(self.now + self.p.pong_ticks.saturating_sub(self.elapsed(conn.ping_sent)));
            } else {
                consider(self.now + self.p.ping_ticks.saturating_sub(self.elapsed(conn.last_recv)));
            }
        }
        if self.p.idle_ticks > 0 {
            consider(self.now + self.p.idle_ticks.saturating_sub(self.elapsed(conn.last_msg)));
        }
        if conn.has(flag::SLOW) {
            consider(self.now + self.p.slow_ticks.saturating_sub(self.elapsed(conn.slow_since)));
        }
        next
    }

    /// Forgets streams idle past `--stream-idle-ttl`, once a minute.
    fn sweep_streams(&mut self) {
        if self.now >= self.next_stream_sweep {
            self.next_stream_sweep = self.now + self.p.minute_ticks.max(1);
            let now_ms = self.now_ms();
            self.streams.expire(now_ms);
        }
    }

    fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.expire(self.now, &mut fired);
        for &key in &fired {
            let key = key as usize;
            if let Some(conn) = self.conns.get_mut(key) {
                conn.timer = None;
                self.on_timer(key);
            }
        }
        fired.clear();
        self.fired = fired;
    }

    fn on_timer(&mut self, key: usize) {
        match self.conns[key].phase {
            Phase::Handshake => {
                self.counters.handshake_timeouts.inc();
                self.remove(key);
            }
            Phase::Closing | Phase::Linger => {
                if self.draining && self.now >= self.drain_deadline {
                    self.counters.drain_forced.inc();
                } else {
                    self.counters.close_timeouts.inc();
                }
                self.remove(key);
            }
            Phase::Open => self.on_open_timer(key),
        }
    }

    fn on_open_timer(&mut self, key: usize) {
        let conn = &self.conns[key];
        if self.p.idle_ticks > 0 && self.elapsed(conn.last_msg) >= self.p.idle_ticks {
            self.close_for(key, CloseReason::Idle);
            return;
        }
        if conn.has(flag::SLOW) && self.elapsed(conn.slow_since) >= self.p.slow_ticks {
            self.close_for(key, CloseReason::SlowConsumer);
            return;
        }
        if self.p.ping_ticks > 0 {
            if conn.has(flag::PING_OUT) {
                if self.elapsed(conn.ping_sent) >= self.p.pong_ticks {
                    // A dead peer will not answer a close handshake: say why and drop it.
                    self.close_for(key, CloseReason::PongTimeout);
                    return;
                }
            } else if self.elapsed(conn.last_recv) >= self.p.ping_ticks {
                let now32 = self.now32();
                let conn = &mut self.conns[key];
                conn.set(flag::PING_OUT);
                conn.ping_sent = now32;
                self.counters.pings_sent.inc();
                self.queue_control(key, OpCode::Ping, &[]);
            }
        }
        let deadline = self.open_deadline(key);
        self.arm(key, deadline);
    }

    // ----- writing -----

    /// Queues a frame outside the push caps at normal priority (echoes, handshake answers).
    fn queue_frame(&mut self, key: usize, op: OpCode, payload: &[u8]) {
        let mut v = Vec::new();
        encode_frame(&mut v, op, true, None, payload);
        self.queue_bytes(key, Bytes::from(v));
    }

    /// Queues a control or protocol frame in the high lane, outside the caps.
    fn queue_control(&mut self, key: usize, op: OpCode, payload: &[u8]) {
        let mut v = Vec::new();
        encode_frame(&mut v, op, true, None, payload);
        self.queue_lane(key, Bytes::from(v), Priority::High);
    }

    fn queue_bytes(&mut self, key: usize, frame: Bytes) {
        self.queue_lane(key, frame, Priority::Normal);
    }

    fn queue_lane(&mut self, key: usize, frame: Bytes, p: Priority) {
        self.counters.frames_out.inc();
        self.counters.outbox_bytes.add(frame.len() as u64);
        self.conns[key].outbox.get_or_insert_with(|| Box::new(Outbox::default())).push(frame, p);
        self.mark_dirty(key);
    }

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.has(flag::DIRTY) {
            conn.set(flag::DIRTY);
            self.dirty.push(token(key, conn.gen));
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for tok in &dirty {
            if let Some(key) = self.lookup(*tok) {
                self.conns[key].clear(flag::DIRTY);
                self.flush(key);
            }
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
            self.dirty.clear();
        }
    }

    /// Writes everything queued for a connection in gather writes.
    fn flush(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.has(flag::WRITE_BLOCKED) {
            return;
        }
        if let Some(ob) = conn.outbox.as_mut() {
            let fd = conn.fd.as_fd();
            let result = ob.flush(|iov| sys::writev(fd, iov));
            if let Ok((_, n)) = &result {
                self.counters.outbox_bytes.sub(*n as u64);
            }
            match result {
                Ok((Flushed::All, n)) => {
                    self.counters.bytes_out.add(n as u64);
                    conn.outbox = None;
                    conn.clear(flag::SLOW);
                }
                Ok((Flushed::Blocked, n)) => {
                    self.counters.bytes_out.add(n as u64);
                    conn.set(flag::WRITE_BLOCKED);
                }
                Err(_) => {
                    self.counters.io_errors.inc();
                    self.remove(key);
                    return;
                }
            }
        }
        if conn.outbox.is_none() && conn.has(flag::SHUT_AFTER_FLUSH) {
            conn.clear(flag::SHUT_AFTER_FLUSH);
            sys::shutdown_write(conn.fd.as_fd());
        }
        let conn = &self.conns[key];
        if conn.has(flag::READ_READY) && !conn.has(flag::QUEUED_READ) && !self.paused(conn) {
            self.queue_read(key);
        }
    }
}

/// The accept loop: io_uring accept on the shard's listener, until the listener is shut.
pub async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: monoio::net::TcpListener) {
    let mut warned_at: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                shard.borrow_mut().on_accept(sys::own_stream(stream), addr.ip());
            }
            Err(e) => {
                if shard.borrow().is_draining() {
                    return;
                }
                shard.borrow().count_accept_error();
                let now = clock::now();
                if warned_at.is_none_or(|t| (now - t).as_secs() >= 10) {
                    tracing::warn!("accept failed: {e} (check the open-file limit); backing off");
                    warned_at = Some(now);
                }
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// The event loop: wait for the epoll set through the runtime, then turn.
pub async fn event_loop(shard: Rc<RefCell<Shard>>, waiter: monoio::net::UnixStream) {
    loop {
        let next = shard.borrow_mut().turn();
        match next {
            Turn::Done => return,
            Turn::Again => YieldNow(false).await,
            Turn::Wait => {
                if let Err(e) = waiter.readable(false).await {
                    tracing::error!("waiting for the epoll set failed: {e}");
                    monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Lets the runtime's other tasks run once.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Encodes a delivered message once into a frame every recipient shares.
pub fn encode_message(
    stream: &Stream<'_>,
    seq: u64,
    payload: &Payload,
    priority: Priority,
) -> Frame {
    let (op, body) = match payload {
        Payload::Json(raw) => (OpCode::Text, client::message_json(stream, seq, raw)),
        Payload::Binary(b) => (OpCode::Binary, client::message_binary(stream, seq, b)),
    };
    let mut v = Vec::with_capacity(body.len() + 10);
    encode_frame(&mut v, op, true, None, &body);
    Frame { bytes: Bytes::from(v), priority }
}
