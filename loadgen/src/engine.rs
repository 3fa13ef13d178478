//! The client engine: one thread per core, each multiplexing its share of the connections over
//! an edge-triggered epoll set. Connections are plain state machines (connecting, upgrading,
//! open) over non-blocking sockets bound to the chosen source address; frames are decoded with
//! ringcast's own codec in the client role, so loadgen works against any RFC 6455 server.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringcast_proto::frame::encode_frame;
use ringcast_proto::{Decoder, Event, Limits, OpCode, Role};
use ringcast_sys::{self as sys, Epoll, EV_ERR, EV_IN, EV_OUT};
use socket2::{Domain, Socket, Type};

/// The Sec-WebSocket-Key every connection sends, and the accept value it must get back.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Handshakes in flight per thread, so a fast ramp does not flood the listen backlog.
const MAX_IN_FLIGHT: usize = 512;

/// Nanoseconds since loadgen started: the clock payload timestamps use.
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Receives every whole data message, with the global index of the connection it came on.
pub trait MessageSink {
    fn message(&mut self, conn: u32, text: bool, data: &[u8], now_ns: u64);
}

/// A sink that only counts (the `hold` scenario).
pub struct Ignore;

impl MessageSink for Ignore {
    fn message(&mut self, _: u32, _: bool, _: &[u8], _: u64) {}
}

/// What one thread does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: SocketAddr,
    /// Request path; `{i}` is replaced by the connection's global index.
    pub path: String,
    /// Global index of this thread's first connection.
    pub first: usize,
    /// Connections this thread opens.
    pub conns: usize,
    /// Connections per second this thread opens; 0: as fast as the handshakes complete.
    pub rate: f64,
    pub sources: Vec<IpAddr>,
    /// Time a connection may take to connect and upgrade.
    pub connect_timeout: Duration,
    /// Hard stop, whatever happens.
    pub deadline: Instant,
    /// Churn: close each connection (cleanly, with a close frame) this long after its upgrade.
    pub lifetime: Option<Duration>,
    /// Every this-many-th connection (by global number) stops reading once upgraded; 0: none.
    pub slow_every: usize,
    /// Echo: messages to send over the open connections.
    pub send: Option<SendPlan>,
    /// A request path per connection (by global index), instead of `path`.
    pub paths: Option<Arc<Vec<String>>>,
    /// At stop, leave the open connections' sockets open and unread (a silent drop the server
    /// has not noticed) and hand them back in `Tally::kept`.
    pub keep_open: bool,
    /// wss: the TLS client configuration and the server name (SNI) to send.
    pub tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    /// SO_RCVBUF for each socket (0: the kernel's default, autotuned).
    pub rcvbuf: usize,
}

/// Messages a thread sends (the `echo` scenario): `per_conn` on each of its connections, at
/// `rate` per second for the thread, round-robin, each numbered from `first_msg`.
#[derive(Clone, Debug)]
pub struct SendPlan {
    pub per_conn: u64,
    pub rate: f64,
    pub size: usize,
    pub first_msg: u64,
    /// `rpc`: each message is `{"type":"rpc","id":I,"method":M,"data":PAYLOAD}` (the reply's
    /// `data` carries the payload back); `None`: the payload alone (echo).
    pub rpc_method: Option<Arc<str>>,
}

/// What the threads share while running: progress, and the signal to stop.
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections whose attempt has an outcome (upgraded, refused or failed).
    pub settled: AtomicUsize,
    pub open: AtomicUsize,
    pub stop: AtomicBool,
}

/// What one thread saw.
#[derive(Debug)]
pub struct Tally {
    pub attempted: u64,
    pub upgraded: u64,
    /// Refused upgrades by HTTP status.
    pub refused: BTreeMap<u16, u64>,
    /// Failed attempts by reason.
    pub errors: BTreeMap<String, u64>,
    /// Close frames from the server, by code.
    pub closed_by_server: BTreeMap<u16, u64>,
    /// Connections the server dropped without a close frame.
    pub dropped_by_server: u64,
    pub pings_answered: u64,
    /// Acks sent for messages of durable streams (`"ack":true`).
    pub acks_sent: u64,
    pub messages: u64,
    /// Connect-to-101 latency, microseconds.
    pub handshake_us: Histogram<u64>,
    pub first_attempt: Option<Instant>,
    pub last_upgrade: Option<Instant>,
    pub open_at_end: u64,
    /// Connections loadgen closed itself (churn), and how many of those the server answered
    /// with its own close frame in time.
    pub closed_by_client: u64,
    pub close_answered: u64,
    /// Messages sent (echo).
    pub sent: u64,
    /// Connections that stopped reading (slow).
    pub slow: u64,
    /// Sockets left open at stop (`Plan::keep_open`).
    pub kept: Vec<OwnedFd>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            attempted: 0,
            upgraded: 0,
            refused: BTreeMap::new(),
            errors: BTreeMap::new(),
            closed_by_server: BTreeMap::new(),
            dropped_by_server: 0,
            pings_answered: 0,
            acks_sent: 0,
            messages: 0,
            handshake_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
            first_attempt: None,
            last_upgrade: None,
            open_at_end: 0,
            closed_by_client: 0,
            close_answered: 0,
            sent: 0,
            slow: 0,
            kept: Vec::new(),
        }
    }

    pub fn merge(&mut self, o: Tally) {
        self.attempted += o.attempted;
        self.upgraded += o.upgraded;
        for (k, v) in o.refused {
            *self.refused.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.closed_by_server {
            *self.closed_by_server.entry(k).or_default() += v;
        }
        self.dropped_by_server += o.dropped_by_server;
        self.pings_answered += o.pings_answered;
        self.acks_sent += o.acks_sent;
        self.messages += o.messages;
        let _ = self.handshake_us.add(&o.handshake_us);
        self.first_attempt = match (self.first_attempt, o.first_attempt) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_upgrade = self.last_upgrade.max(o.last_upgrade);
        self.open_at_end += o.open_at_end;
        self.closed_by_client += o.closed_by_client;
        self.close_answered += o.close_answered;
        self.sent += o.sent;
        self.slow += o.slow;
        self.kept.extend(o.kept);
    }

    pub fn empty() -> Tally {
        Tally::new()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Open,
    /// Upgraded but no longer read (slow scenario).
    Deaf,
    /// We sent a close frame and wait for the server's.
    Closing,
}

/// How long a churned connection waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

struct Conn {
    /// Dropping the connection closes its socket.
    fd: OwnedFd,
    index: u32,
    msg: Vec<u8>,
    state: State,
    started: Instant,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    dec: Decoder,
    /// wss: the TLS session; `inbuf` and `out` hold plaintext, rustls the ciphertext.
    tls: Option<Box<rustls::ClientConnection>>,
}

/// A socket as rustls' reader and writer.
struct FdIo<'a>(std::os::fd::BorrowedFd<'a>);

impl io::Read for FdIo<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.0, b)
    }
}

impl io::Write for FdIo<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        sys::writev(self.0, &[io::IoSlice::new(b)])
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads what the socket has into `c.inbuf` (through TLS for wss); `Ok(true)` at EOF.
fn read_in(c: &mut Conn, rbuf: &mut [u8]) -> io::Result<bool> {
    let Some(t) = c.tls.as_mut() else {
        loop {
            match sys::recv(c.fd.as_fd(), rbuf) {
                Ok(0) => return Ok(true),
                Ok(k) => c.inbuf.extend_from_slice(&rbuf[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    };
    let mut eof = false;
    loop {
        let n = match t.read_tls(&mut FdIo(c.fd.as_fd())) {
            Ok(0) => {
                eof = true;
                0
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if n > 0 {
            t.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        // Drain the plaintext after every read: rustls holds a bounded amount of it and
        // refuses to read more records until it is taken.
        loop {
            match io::Read::read(&mut t.reader(), rbuf) {
                Ok(0) => return Ok(true),
                Ok(k) => c.inbuf.extend_from_slice(&rbuf[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
    }
    // The handshake's answers, and anything queued while it ran.
    write_out(c)?;
    Ok(eof)
}

fn request(plan: &Plan, index: usize) -> Vec<u8> {
    let path = match plan.paths.as_ref().and_then(|p| p.get(index)) {
        Some(p) => p.clone(),
        None => plan.path.replace("{i}", &index.to_string()),
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
        plan.target
    )
    .into_bytes()
}

fn open_socket(target: SocketAddr, source: IpAddr, rcvbuf: usize) -> io::Result<OwnedFd> {
    let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if rcvbuf > 0 {
        // Before connect, so the window it offers is sized by it.
        s.set_recv_buffer_size(rcvbuf)?;
    }
    // Best effort, as before: without it the bind takes a port per source address.
    let _ = sys::bind_address_no_port(s.as_fd());
    s.bind(&SocketAddr::new(source, 0).into())?;
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

fn error_kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "no free source port (EADDRNOTAVAIL): add --sources".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "open-file limit reached".into(),
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::ETIMEDOUT) => "timed out".into(),
        _ => e.to_string(),
    }
}

/// Runs one thread's plan until `progress.stop` is set or the deadline passes.
pub fn run(
    plan: Plan,
    thread: usize,
    progress: Arc<Progress>,
    sink: &mut dyn MessageSink,
) -> Tally {
    let mut tally = Tally::new();
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            tally.errors.insert(format!("epoll: {e}"), plan.conns as u64);
            progress.settled.fetch_add(plan.conns, Relaxed);
            return tally;
        }
    };
    let limits = Limits { max_frame: 1 << 30, max_message: 1 << 30 };
    let mut conns: slab::Slab<Conn> = slab::Slab::with_capacity(plan.conns);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut opened = 0usize;
    let mut in_flight = 0usize;
    let start = Instant::now();
    // Churn: (close time, key, the connection's start) in upgrade order, which with one
    // lifetime is close-time order; closing ones wait for the server's answer until their time.
    let mut expiring: std::collections::VecDeque<(Instant, usize, Instant)> = Default::default();
    let mut closing: std::collections::VecDeque<(Instant, usize, Instant)> = Default::default();
    // Echo: open connections to send on, round-robin, and what has been sent.
    let mut open_keys: Vec<usize> = Vec::new();
    let mut next_key = 0usize;
    let mut sent_local = 0u64;
    let send_total = plan.send.as_ref().map_or(0, |s| s.per_conn * plan.conns as u64);
    let settle = |tally: &mut Tally, progress: &Progress| {
        let _ = tally;
        progress.settled.fetch_add(1, Relaxed);
    };
    while !progress.stop.load(Relaxed) && Instant::now() < plan.deadline {
        // Ramp: open what is due.
        let due = if plan.rate > 0.0 {
            ((start.elapsed().as_secs_f64() * plan.rate) as usize + 1).min(plan.conns)
        } else {
            plan.conns
        };
        while opened < due && in_flight < MAX_IN_FLIGHT {
            let source = plan.sources[(thread + opened * 7919) % plan.sources.len()];
            opened += 1;
            tally.attempted += 1;
            let now = Instant::now();
            tally.first_attempt.get_or_insert(now);
            match open_socket(plan.target, source, plan.rcvbuf) {
                Ok(fd) => {
                    let key = conns.insert(Conn {
                        fd,
                        index: (plan.first + opened - 1) as u32,
                        msg: Vec::new(),
                        state: State::Connecting,
                        started: now,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                        dec: Decoder::new(Role::Client),
                        tls: match &plan.tls {
                            Some((cfg, name)) => {
                                match rustls::ClientConnection::new(cfg.clone(), name.clone()) {
                                    Ok(t) => Some(Box::new(t)),
                                    Err(e) => {
                                        *tally.errors.entry(format!("TLS: {e}")).or_default() += 1;
                                        settle(&mut tally, &progress);
                                        continue;
                                    }
                                }
                            }
                            None => None,
                        },
                    });
                    if let Err(e) = epoll.add(conns[key].fd.as_raw_fd(), key as u64, EV_IN | EV_OUT)
                    {
                        *tally.errors.entry(error_kind(&e)).or_default() += 1;
                        conns.remove(key); // closes it
                        settle(&mut tally, &progress);
                        continue;
                    }
                    in_flight += 1;
                }
                Err(e) => {
                    *tally.errors.entry(error_kind(&e)).or_default() += 1;
                    settle(&mut tally, &progress);
                }
            }
        }
        let n = epoll.wait(&mut events, 5).unwrap_or(0);
        let now = Instant::now();
        for ev in &events[..n] {
            let key = ev.u64 as usize;
            let bits = ev.events;
            let Some(c) = conns.get_mut(key) else { continue };
            let mut outcome: Option<Result<(), String>> = None; // Some: leaves the handshake
            let mut close = false;
            if c.state == State::Connecting && bits & (EV_OUT | EV_ERR) != 0 {
                match sys::socket_error(c.fd.as_fd()) {
                    Ok(()) => {
                        c.state = State::Upgrading;
                        let req = request(&plan, c.index as usize);
                        c.out.extend_from_slice(&req);
                    }
                    Err(e) => {
                        outcome = Some(Err(error_kind(&e)));
                        close = true;
                    }
                }
            }
            if !close && !c.out.is_empty() && c.state != State::Connecting {
                match write_out(c) {
                    Ok(()) => {}
                    Err(e) => {
                        outcome = lost(&c.state, error_kind(&e), &mut tally);
                        close = true;
                    }
                }
            }
            if !close
                && !matches!(c.state, State::Connecting | State::Deaf)
                && bits & (EV_IN | EV_ERR) != 0
            {
                match read_in(c, &mut rbuf) {
                    Ok(false) => {}
                    Ok(true) => {
                        outcome = lost(&c.state, refusal(&c.inbuf), &mut tally);
                        close = true;
                    }
                    Err(e) => {
                        outcome = lost(&c.state, error_kind(&e), &mut tally);
                        close = true;
                    }
                }
                if !close && c.state == State::Upgrading {
                    if let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&c.inbuf[..end + 4]).into_owned();
                        if head.starts_with("HTTP/1.1 101") && head.contains(ACCEPT) {
                            c.inbuf.drain(..end + 4);
                            c.state = State::Open;
                            outcome = Some(Ok(()));
                        } else {
                            outcome = Some(Err(refusal(&c.inbuf)));
                            close = true;
                        }
                    }
                }
                if !close && matches!(c.state, State::Open | State::Closing) && !c.inbuf.is_empty()
                {
                    match read_frames(c, &limits, &mut tally, sink) {
                        Ok(false) => {}
                        Ok(true) => close = true,
                        Err(e) => {
                            *tally
                                .errors
                                .entry(format!("bad frame from server: {e}"))
                                .or_default() += 1;
                            close = true;
                        }
                    }
                    if !close && !c.out.is_empty() && write_out(c).is_err() {
                        tally.dropped_by_server += 1;
                        close = true;
                    }
                }
            }
            if let Some(r) = outcome {
                in_flight -= 1;
                settle(&mut tally, &progress);
                match r {
                    Ok(()) => {
                        tally.upgraded += 1;
                        tally.last_upgrade = Some(now);
                        let us = now.duration_since(c.started).as_micros() as u64;
                        let _ = tally.handshake_us.record(us.max(1));
                        progress.open.fetch_add(1, Relaxed);
                        if let Some(life) = plan.lifetime {
                            expiring.push_back((now + life, key, c.started));
                        }
                        if plan.slow_every > 0
                            && (c.index as usize) % plan.slow_every == plan.slow_every - 1
                        {
                            c.state = State::Deaf;
                            tally.slow += 1;
                        }
                        if plan.send.is_some() {
                            open_keys.push(key);
                        }
                    }
                    Err(reason) => {
                        if let Some(code) =
                            reason.strip_prefix("status ").and_then(|s| s.parse().ok())
                        {
                            *tally.refused.entry(code).or_default() += 1;
                        } else {
                            *tally.errors.entry(reason).or_default() += 1;
                        }
                    }
                }
            } else if close && c.state == State::Closing {
                tally.close_answered += 1;
                progress.open.fetch_sub(1, Relaxed);
            } else if close && matches!(c.state, State::Open | State::Deaf) {
                progress.open.fetch_sub(1, Relaxed);
            }
            if close {
                conns.remove(key); // closes it
            }
        }
        // Churn: close connections whose lifetime is over, and drop those whose close went
        // unanswered.
        while let Some(&(at, key, started)) = expiring.front() {
            if at > now {
                break;
            }
            expiring.pop_front();
            let Some(c) =
                conns.get_mut(key).filter(|c| c.started == started && c.state == State::Open)
            else {
                continue;
            };
            encode_frame(
                &mut c.out,
                OpCode::Close,
                true,
                Some([5, 6, 7, 8]),
                &1000u16.to_be_bytes(),
            );
            c.state = State::Closing;
            tally.closed_by_client += 1;
            if write_out(c).is_err() {
                progress.open.fetch_sub(1, Relaxed);
                conns.remove(key); // closes it
                continue;
            }
            closing.push_back((now + CLOSE_WAIT, key, started));
        }
        while let Some(&(at, key, started)) = closing.front() {
            if at > now {
                break;
            }
            closing.pop_front();
            if conns.get(key).is_some_and(|c| c.started == started && c.state == State::Closing) {
                conns.remove(key); // closes it
                progress.open.fetch_sub(1, Relaxed);
            }
        }
        // Echo: send what the schedule says is due, round-robin over open connections.
        if let Some(sp) = &plan.send {
            let due = ((start.elapsed().as_secs_f64() * sp.rate) as u64).min(send_total);
            let mut tries = 0;
            while sent_local < due && !open_keys.is_empty() && tries < open_keys.len() {
                next_key = (next_key + 1) % open_keys.len();
                let key = open_keys[next_key];
                let Some(c) = conns.get_mut(key).filter(|c| c.state == State::Open) else {
                    open_keys.swap_remove(next_key);
                    continue;
                };
                tries = 0;
                let i = sp.first_msg + sent_local;
                let mut body =
                    crate::publish::payload(i, now_ns(), Some(u64::from(c.index)), sp.size);
                if let Some(m) = &sp.rpc_method {
                    body = format!(r#"{{"type":"rpc","id":{i},"method":"{m}","data":{body}}}"#);
                }
                encode_frame(&mut c.out, OpCode::Text, true, Some([9, 8, 7, 6]), body.as_bytes());
                sent_local += 1;
                tally.sent += 1;
                if write_out(c).is_err() {
                    tally.dropped_by_server += 1;
                }
                tries += 1;
            }
        }
        // Handshake deadline.
        if in_flight > 0 {
            let late: Vec<usize> = conns
                .iter()
                .filter(|(_, c)| {
                    matches!(c.state, State::Connecting | State::Upgrading)
                        && now.duration_since(c.started) > plan.connect_timeout
                })
                .map(|(k, _)| k)
                .collect();
            for k in late {
                conns.remove(k); // closes it
                in_flight -= 1;
                *tally.errors.entry("connect/upgrade timed out".into()).or_default() += 1;
                settle(&mut tally, &progress);
            }
        }
    }
    // Whatever never got an outcome still counts as settled, so waiters do not hang.
    let unsettled = plan.conns - opened + in_flight;
    progress.settled.fetch_add(unsettled, Relaxed);
    for (_, c) in conns.iter() {
        if matches!(c.state, State::Open | State::Deaf) {
            tally.open_at_end += 1;
        }
    }
    if plan.keep_open {
        for c in conns.drain() {
            if matches!(c.state, State::Open | State::Deaf) {
                tally.kept.push(c.fd);
            }
        }
    }
    drop(conns); // closes every socket
    tally
}

/// A connection ended by the server or the network: before the upgrade that is the attempt's
/// outcome; after it, the server dropped an open connection.
fn lost(state: &State, reason: String, tally: &mut Tally) -> Option<Result<(), String>> {
    if *state == State::Upgrading {
        Some(Err(reason))
    } else if *state == State::Closing {
        None // we asked for the close
    } else {
        tally.dropped_by_server += 1;
        None
    }
}

fn write_out(c: &mut Conn) -> io::Result<()> {
    if let Some(t) = c.tls.as_mut() {
        if !c.out.is_empty() {
            io::Write::write_all(&mut t.writer(), &c.out)?;
            c.out.clear();
        }
        while t.wants_write() {
            match t.write_tls(&mut FdIo(c.fd.as_fd())) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    while !c.out.is_empty() {
        match sys::writev(c.fd.as_fd(), &[io::IoSlice::new(&c.out)]) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// "status NNN" for an HTTP refusal, or a description of what came instead.
fn refusal(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") && code != 101 => format!("status {code}"),
        _ if head.is_empty() => "closed before answering".into(),
        _ => "bad upgrade response".into(),
    }
}

/// A durable stream's message (`"ack":true`): its stream and seq, to acknowledge.
fn ack_of(payload: &[u8]) -> Option<(&[u8], u64)> {
    let rest = payload.strip_prefix(b"{\"type\":\"message\",\"stream\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (stream, mut rest) = (&rest[..end], &rest[end + 1..]);
    if let Some(r) = rest.strip_prefix(b",\"epoch\":") {
        rest = &r[r.iter().take_while(|b| b.is_ascii_digit()).count()..];
    }
    let r = rest.strip_prefix(b",\"seq\":")?;
    let digits = r.iter().take_while(|b| b.is_ascii_digit()).count();
    r[digits..].starts_with(b",\"ack\":true").then_some(())?;
    Some((stream, std::str::from_utf8(&r[..digits]).ok()?.parse().ok()?))
}

/// Decodes what arrived; answers pings and close frames, and acknowledges what a durable
/// stream sent (once per read, cumulatively, as a client SDK would). Returns whether to close.
fn read_frames(
    c: &mut Conn,
    limits: &Limits,
    tally: &mut Tally,
    sink: &mut dyn MessageSink,
) -> Result<bool, String> {
    let mut pos = 0;
    let mut close = false;
    let now = now_ns();
    let mut ack: Option<(Vec<u8>, u64)> = None;
    let note = |payload: &[u8], ack: &mut Option<(Vec<u8>, u64)>| {
        if let Some((stream, seq)) = ack_of(payload) {
            match ack {
                Some((s, n)) if s.as_slice() == stream => *n = (*n).max(seq),
                _ => *ack = Some((stream.to_vec(), seq)),
            }
        }
    };
    loop {
        match c.dec.decode(&mut c.inbuf[pos..], limits) {
            Ok(Some((ev, n))) => {
                pos += n;
                match ev {
                    Event::Data { text, payload, first, last } => {
                        if first && last {
                            tally.messages += 1;
                            if text {
                                note(payload, &mut ack);
                            }
                            sink.message(c.index, text, payload, now);
                        } else {
                            if first {
                                c.msg.clear();
                            }
                            c.msg.extend_from_slice(payload);
                            if last {
                                tally.messages += 1;
                                if text {
                                    note(&c.msg, &mut ack);
                                }
                                sink.message(c.index, text, &c.msg, now);
                            }
                        }
                    }
                    Event::Pong(_) => {}
                    Event::Ping(p) => {
                        let p = p.to_vec();
                        encode_frame(&mut c.out, OpCode::Pong, true, Some([1, 2, 3, 4]), &p);
                        tally.pings_answered += 1;
                    }
                    Event::Close(code, _) => {
                        if c.state != State::Closing {
                            // The server started it: count it and answer.
                            *tally
                                .closed_by_server
                                .entry(code.map_or(1005, |c| c.0))
                                .or_default() += 1;
                            let payload =
                                code.map(|c| c.0.to_be_bytes().to_vec()).unwrap_or_default();
                            encode_frame(
                                &mut c.out,
                                OpCode::Close,
                                true,
                                Some([1, 2, 3, 4]),
                                &payload,
                            );
                            let _ = write_out(c);
                        }
                        close = true;
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    c.inbuf.drain(..pos);
    if let (Some((stream, seq)), false) = (ack, close) {
        let mut body = b"{\"type\":\"ack\",\"stream\":\"".to_vec();
        body.extend_from_slice(&stream);
        body.extend_from_slice(format!("\",\"seq\":{seq}}}").as_bytes());
        encode_frame(&mut c.out, OpCode::Text, true, Some([1, 2, 3, 4]), &body);
        tally.acks_sent += 1;
    }
    Ok(close)
}

#[cfg(test)]
mod tests {
    use super::ack_of;

    #[test]
    fn durable_messages_are_recognised_for_their_ack() {
        let m = br#"{"type":"message","stream":"user:7","epoch":5,"seq":1,"ack":true,"data":1}"#;
        assert_eq!(ack_of(m), Some((&b"user:7"[..], 1)));
        let m = br#"{"type":"message","stream":"user:7","seq":12,"ack":true,"data":1}"#;
        assert_eq!(ack_of(m), Some((&b"user:7"[..], 12)));
        for plain in [
            &br#"{"type":"message","stream":"channel:a","seq":3,"data":{"ack":true}}"#[..],
            br#"{"type":"welcome","conn":"c0.1.1"}"#,
            br#"{"type":"message","stream":"user:7","seq":"#,
        ] {
            assert_eq!(ack_of(plain), None);
        }
    }
}
