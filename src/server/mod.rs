//! The server: binds the listeners, starts one shard thread per core, and drains them on
//! request. Everything per connection happens inside a shard (see `shard`).

pub(crate) mod conn;
pub(crate) mod inbox;
pub(crate) mod limits;
pub mod outbox;
pub(crate) mod overload;
mod rehome;
pub mod shard;
pub mod sim;
pub(crate) mod stats;
pub(crate) mod tls;
/// The syscall layer (the `ringcast-sys` crate): the one place with `unsafe`.
pub(crate) use ringcast_sys as sys;

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Socket, Type};

use crate::auth::{Authenticator, JwtAuth, JwtSettings, OpenMode};
use crate::config::{AuthMode, Config, IoDriver};
use crate::push::token::TokenKey;
use inbox::Router;
use limits::{HandshakeRate, IpLimiter};
use shard::{Shard, ShardParts};
use stats::Counters;
use sys::EventFd;

/// State every shard reads: the global connection count, the drain flag, the address caps.
/// Touched at upgrade and close only, never per message.
#[derive(Debug)]
pub struct Shared {
    pub(crate) total: AtomicUsize,
    pub(crate) max_total: usize,
    /// The connections the open-file limit leaves room for (the overload manager's
    /// `open_files` monitor weighs the node's connections against it).
    pub(crate) fd_limit: usize,
    /// `DATA_DIR/LOCK`, held while the process runs.
    _data_lock: Option<std::fs::File>,
    pub(crate) draining: AtomicBool,
    pub(crate) limiter: Option<IpLimiter>,
    /// wss: the TLS configuration new handshakes use.
    pub(crate) tls: Option<Arc<tls::Tls>>,
    /// `--handshake-rate-per-ip`: a token bucket per source address.
    pub(crate) rate: Option<HandshakeRate>,
    /// Start time in Unix milliseconds: clients learn it in `welcome`; a new epoch means
    /// sequence numbers started again.
    pub(crate) epoch: u64,
    /// What session tokens are signed with (one key for every shard).
    pub(crate) token_key: TokenKey,
    /// The backends, and each shard's figures for each (`[shard][backend]`).
    pub(crate) upstreams: Upstreams,
    /// The `[[streams]]` rules, for the API's checks (each home shard has its own copy).
    pub(crate) streams: crate::push::history::Rules,
    /// What the overload manager has on, for the API thread.
    pub(crate) overload: OverloadState,
}

/// The overload manager's state every thread reads: per action, the shards that have it on;
/// the process's RSS as shard 0 last read it.
#[derive(Debug, Default)]
pub(crate) struct OverloadState {
    pub(crate) on: [AtomicUsize; 5],
    pub(crate) rss: std::sync::atomic::AtomicU64,
    /// Low-priority messages the API refused (`shed`), and queries it answered 503.
    pub(crate) shed_low: std::sync::atomic::AtomicU64,
    pub(crate) paused: std::sync::atomic::AtomicU64,
    /// `--memory-budget` as resolved (bytes).
    pub(crate) budget: std::sync::atomic::AtomicU64,
    /// The kernel's TCP buffer memory and its pressure level (pages), as shard 0 last read
    /// them.
    pub(crate) tcp_pages: std::sync::atomic::AtomicU64,
    pub(crate) tcp_pressure_pages: std::sync::atomic::AtomicU64,
}

impl OverloadState {
    pub(crate) fn on(&self, a: overload::Action) -> bool {
        self.on[a as usize].load(Relaxed) > 0
    }
}

/// The `[[upstreams]]` every shard calls, this node's name in their events, and their figures.
#[derive(Debug)]
pub(crate) struct Upstreams {
    pub(crate) rules: Vec<Arc<crate::config::UpstreamRule>>,
    pub(crate) node: Arc<str>,
    pub(crate) stats: Vec<Vec<Arc<crate::upstream::stats::BackendStats>>>,
}

impl Upstreams {
    pub(crate) fn new(cfg: &Config, shards: usize) -> Upstreams {
        let rules: Vec<_> = cfg.two_way.upstreams.iter().cloned().map(Arc::new).collect();
        let stats = (0..shards).map(|_| rules.iter().map(|_| Arc::default()).collect()).collect();
        Upstreams { rules, node: node_name().into(), stats }
    }
}

/// This node's name in backend events: host name and process id.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}:{}", if host.is_empty() { "localhost" } else { host }, std::process::id())
}

/// The authenticator `--auth` names, its keys loaded (a key file that does not load is a
/// start-up error naming it).
pub(crate) fn authenticator(cfg: &Config) -> Result<Arc<dyn Authenticator>, StartError> {
    let max_channels = cfg.delivery.max_channels_per_conn;
    Ok(match (cfg.auth.auth, &cfg.auth.jwt_keys) {
        (AuthMode::Jwt, Some(path)) => {
            let a = JwtAuth::new(JwtSettings {
                keys_path: path.clone(),
                audience: cfg.auth.jwt_audience.clone(),
                issuer: cfg.auth.jwt_issuer.clone(),
                leeway_ms: cfg.auth.jwt_leeway.as_millis() as u64,
                max_channels,
                max_info_bytes: cfg.auth.jwt_max_info as usize,
            })
            .map_err(StartError)?;
            tracing::info!("clients authenticate with JWTs: {}", a.describe());
            Arc::new(a)
        }
        (AuthMode::Proxy, _) => {
            tracing::info!(
                "clients are identified by the connect backend ([[upstreams]] with connect)"
            );
            Arc::new(crate::auth::ProxyMode)
        }
        _ => Arc::new(OpenMode { max_channels }),
    })
}

/// Reads keys and certificates again (SIGHUP). Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    auth: Arc<dyn Authenticator>,
    tls: Option<Arc<tls::Tls>>,
}

impl ReloadHandle {
    /// Reloads everything reloadable and logs what happened; a file that does not load keeps
    /// what was in use. Returns whether everything loaded.
    pub fn reload(&self) -> bool {
        let keys = match self.auth.reload() {
            Ok(what) => {
                tracing::info!("reloaded client keys: {what}");
                true
            }
            Err(why) => {
                tracing::error!("client keys not reloaded, the old ones stay: {why}");
                false
            }
        };
        let certs = match self.tls.as_ref().map(|t| t.reload()) {
            None => true,
            Some(Ok(what)) => {
                tracing::info!("reloaded TLS certificates: {what}; new handshakes use them");
                true
            }
            Some(Err(why)) => {
                tracing::error!("TLS certificates not reloaded, the old ones stay: {why}");
                false
            }
        };
        keys && certs
    }
}

/// The key session tokens are signed with: `--session-key`, or 32 random bytes from the
/// kernel (logged, since such tokens do not outlive the process).
pub(crate) fn session_key(cfg: &Config) -> io::Result<TokenKey> {
    if let Some(k) = &cfg.history.session_key {
        return Ok(TokenKey::new(k.as_bytes()));
    }
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
    Ok(TokenKey::new(&key))
}

impl Shared {
    /// Counts one more open connection unless the global maximum is reached.
    pub(crate) fn acquire(&self) -> bool {
        if self.total.fetch_add(1, Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn release(&self) {
        self.total.fetch_sub(1, Relaxed);
    }
}

/// A start-up failure, said plainly.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Asks every shard to drain. Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    wakes: Vec<Arc<EventFd>>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Relaxed);
        for w in &self.wakes {
            w.notify();
        }
    }
}

pub struct Server {
    addr: SocketAddr,
    driver: &'static str,
    nofile: u64,
    max_total: usize,
    threads: Vec<JoinHandle<io::Result<()>>>,
    counters: Vec<Arc<Counters>>,
    router: Arc<Router>,
    shared: Arc<Shared>,
    handle: ShutdownHandle,
    reload: ReloadHandle,
    tls_addr: Option<SocketAddr>,
}

/// Connections the open-file limit leaves room for: each shard keeps a listener, an epoll
/// set, an eventfd, a timerfd and the runtime's ring; the rest is kept for handshakes in
/// progress and sockets closing (1% or 64, whichever is more).
pub(crate) fn fd_budget(nofile: u64, shards: usize) -> usize {
    let fixed = 16 + 8 * shards as u64;
    let spare = (nofile / 100).max(64);
    nofile.saturating_sub(fixed + spare).max(1) as usize
}

/// Binds `n` SO_REUSEPORT listeners on `addr`, after checking that no other socket holds the
/// port: a plain bind without SO_REUSEPORT fails if anyone is listening there, even another
/// ringcast's reuse-port group, so two servers can never silently share a port.
fn bind_listeners(
    addr: SocketAddr,
    n: usize,
    backlog: u32,
) -> Result<Vec<TcpListener>, StartError> {
    let domain = Domain::for_address(addr);
    let probe = Socket::new(domain, Type::STREAM, None)
        .map_err(|e| StartError(format!("cannot create a socket: {e}")))?;
    probe.set_reuse_address(true).map_err(|e| StartError(e.to_string()))?;
    if let Err(e) = probe.bind(&addr.into()) {
        return Err(StartError(if e.kind() == io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: the address is already in use (another ringcast or another server holds it)")
        } else {
            format!("cannot listen on {addr}: {e}")
        }));
    }
    let bound = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| StartError("cannot read the bound address".into()))?;
    drop(probe);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Socket::new(domain, Type::STREAM, None).map_err(|e| StartError(e.to_string()))?;
        let setup = || -> io::Result<()> {
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&bound.into())?;
            s.listen(backlog.min(i32::MAX as u32) as i32)?;
            s.set_nonblocking(true)
        };
        setup().map_err(|e| StartError(format!("cannot listen on {bound}: {e}")))?;
        out.push(s.into());
    }
    Ok(out)
}

impl Server {
    /// Binds the listeners and starts the shards.
    pub fn start(cfg: Config) -> Result<Server, StartError> {
        cfg.validate().map_err(|e| StartError(e.0))?;
        let cpus = sys::allowed_cpus();
        let n = if cfg.listen.shards == 0 { cpus.len().max(1) } else { cfg.listen.shards };
        let listeners = bind_listeners(cfg.listen.listen, n, cfg.listen.backlog)?;
        let addr = listeners[0].local_addr().map_err(|e| StartError(e.to_string()))?;
        let tls_state = match cfg.listen.tls_listen {
            Some(_) => {
                let pairs =
                    cfg.listen.tls_cert.iter().cloned().zip(cfg.listen.tls_key.iter().cloned());
                let settings = tls::TlsSettings { pairs: pairs.collect(), tls12: cfg.listen.tls12 };
                Some(Arc::new(tls::Tls::new(settings).map_err(StartError)?))
            }
            None => None,
        };
        let mut tls_listeners: Vec<Option<TcpListener>> = match cfg.listen.tls_listen {
            Some(t) => bind_listeners(t, n, cfg.listen.backlog)?.into_iter().map(Some).collect(),
            None => (0..n).map(|_| None).collect(),
        };
        let tls_addr = match tls_listeners.first() {
            Some(Some(l)) => Some(l.local_addr().map_err(|e| StartError(e.to_string()))?),
            _ => None,
        };
        let driver = match cfg.listen.io_driver {
            IoDriver::Epoll => "epoll",
            IoDriver::IoUring => "io_uring",
            IoDriver::Auto if monoio::utils::detect_uring() => "io_uring",
            IoDriver::Auto => "epoll",
        };
        if cfg.listen.io_driver == IoDriver::IoUring && !monoio::utils::detect_uring() {
            return Err(StartError(
                "--io-driver io-uring: io_uring is not available on this kernel".into(),
            ));
        }
        let nofile = sys::raise_nofile_limit();
        let fd_budget = fd_budget(nofile, n);
        let max_total =
            if cfg.limits.max_connections == 0 { fd_budget } else { cfg.limits.max_connections };
        if max_total > fd_budget {
            tracing::warn!(
                "--max-connections {max_total} is above what the open-file limit ({nofile}) allows \
                 (about {fd_budget}); raise the limit (tuning/) or accepts will fail"
            );
        }
        let data_lock = data_dir_for(&cfg, n)?;
        let shared = Arc::new(Shared {
            total: AtomicUsize::new(0),
            max_total,
            fd_limit: fd_budget,
            _data_lock: data_lock,
            draining: AtomicBool::new(false),
            limiter: (cfg.limits.max_connections_per_ip > 0)
                .then(|| IpLimiter::new(cfg.limits.max_connections_per_ip)),
            tls: tls_state.clone(),
            rate: (cfg.limits.handshake_rate_per_ip > 0.0).then(|| {
                HandshakeRate::new(cfg.limits.handshake_rate_per_ip, cfg.limits.handshake_burst)
            }),
            epoch: crate::clock::unix_ms(),
            token_key: session_key(&cfg)
                .map_err(|e| StartError(format!("cannot make a session key: {e}")))?,
            upstreams: Upstreams::new(&cfg, n),
            streams: shard::history_rules(&cfg),
            overload: OverloadState {
                budget: cfg.overload.budget().into(),
                ..OverloadState::default()
            },
        });
        let cfg = Arc::new(cfg);
        let mut threads = Vec::with_capacity(n);
        let counters: Vec<Arc<Counters>> = (0..n).map(|_| Arc::new(Counters::default())).collect();
        let peers: Arc<[Arc<Counters>]> = counters.clone().into();
        let wakes = (0..n)
            .map(|_| EventFd::new().map(Arc::new))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| StartError(format!("eventfd: {e}")))?;
        let (router, inboxes) = Router::new(&wakes, cfg.delivery.inbox_capacity);
        let auth = authenticator(&cfg)?;
        for (i, (listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let wake = wakes[i].clone();
            let ctr = counters[i].clone();
            let capacity = match cfg.limits.max_connections_per_shard {
                0 => max_total,
                m => m.min(max_total),
            };
            let parts = ShardParts {
                id: i,
                capacity,
                shared: shared.clone(),
                counters: ctr.clone(),
                wake,
                router: router.clone(),
                inbox,
                auth: auth.clone(),
                peers: peers.clone(),
            };
            let shard = Shard::new(&cfg, parts, crate::clock::now())
                .map_err(|e| StartError(format!("shard {i}: {e}")))?;
            let cpu = cfg.listen.pin.then(|| cpus.get(i % cpus.len().max(1)).copied()).flatten();
            let entries = cfg.listen.uring_entries;
            let use_uring = driver == "io_uring";
            let tls_listener = tls_listeners[i].take();
            let t = std::thread::Builder::new()
                .name(format!("ringcast-shard-{i}"))
                .spawn(move || run_shard(shard, (listener, tls_listener), cpu, entries, use_uring))
                .map_err(|e| StartError(format!("cannot start shard thread: {e}")))?;
            threads.push(t);
        }
        Ok(Server {
            addr,
            driver,
            nofile,
            max_total,
            threads,
            counters,
            router,
            shared: shared.clone(),
            handle: ShutdownHandle { shared, wakes },
            reload: ReloadHandle { auth, tls: tls_state },
            tls_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The wss address, with `--tls-listen`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// The open-file limit in force.
    pub fn nofile(&self) -> u64 {
        self.nofile
    }

    /// The effective global connection cap.
    pub fn max_connections(&self) -> usize {
        self.max_total
    }

    pub fn shards(&self) -> usize {
        self.threads.len()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    pub fn counters(&self) -> &[Arc<Counters>] {
        &self.counters
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.clone()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Waits for every shard to finish (after a shutdown) and returns the summed counters.
    pub fn join(self) -> Result<Vec<(String, u64)>, StartError> {
        let mut failure = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(StartError(format!("shard {i} failed: {e}"))),
                Err(_) => failure = Some(StartError(format!("shard {i} panicked"))),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(stats::sum(&self.counters)),
        }
    }
}

fn run_shard(
    shard: Shard,
    listener: (TcpListener, Option<TcpListener>),
    cpu: Option<usize>,
    entries: u32,
    use_uring: bool,
) -> io::Result<()> {
    if let Some(cpu) = cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            tracing::warn!(shard = shard.id(), cpu, "cannot pin shard: {e:?}");
        }
    }
    if use_uring {
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()?;
        rt.block_on(serve(shard, listener))
    } else {
        let mut rt =
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?;
        rt.block_on(serve(shard, listener))
    }
}

async fn serve(
    shard: Shard,
    (listener, tls): (TcpListener, Option<TcpListener>),
) -> io::Result<()> {
    let epfd = shard.epoll_fd()?;
    // monoio has no generic "wait until this fd is readable"; its UnixStream's readable() is
    // exactly that (an io_uring poll, or a registration with the epoll fallback). The stream
    // is never read or written.
    let waiter = monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(epfd))?;
    let listener = monoio::net::TcpListener::from_std(listener)?;
    let shard = Rc::new(RefCell::new(shard));
    shard.borrow_mut().set_listener_fd(listener.as_raw_fd());
    let acceptor = monoio::spawn(shard::accept_loop(shard.clone(), listener, false));
    let tls_acceptor = match tls {
        Some(l) => {
            let l = monoio::net::TcpListener::from_std(l)?;
            shard.borrow_mut().set_tls_listener_fd(l.as_raw_fd());
            Some(monoio::spawn(shard::accept_loop(shard.clone(), l, true)))
        }
        None => None,
    };
    shard::event_loop(shard, waiter).await;
    acceptor.await;
    if let Some(a) = tls_acceptor {
        a.await;
    }
    Ok(())
}

/// Creates `--data-dir` on the first start and records the shard count in its `META`; a later
/// start with another count is refused (each shard's log holds the streams homed on it, and
/// homes move with the count).
/// Readies the data directory for `shards` shards and returns its `LOCK`, held for as long
/// as the process runs (None without one).
fn data_dir_for(cfg: &Config, shards: usize) -> Result<Option<std::fs::File>, StartError> {
    let (dir, _) = cfg.data_dir();
    if dir == "none" {
        return Ok(None);
    }
    let dir = std::path::Path::new(dir);
    let fail = |e: std::io::Error| StartError(format!("--data-dir {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    // One process at a time: it looks at META, moves logs, and keeps the lock while it runs
    // (each shard's log has its own lock too).
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(fail)?;
    lock.try_lock().map_err(|_| {
        StartError(format!(
            "--data-dir {}: another ringcast is using it (its LOCK is held)",
            dir.display()
        ))
    })?;
    // A move to another shard count that a crash interrupted after it was committed.
    if rehome::finish(dir).map_err(fail)? {
        tracing::warn!(data_dir = %dir.display(), "finished moving the logs to another shard count");
    }
    let meta = dir.join("META");
    match std::fs::read_to_string(&meta) {
        Ok(text) => {
            let was = text.trim().strip_prefix("shards ").and_then(|n| n.parse::<usize>().ok());
            match was {
                Some(w) if w == shards => {
                    if rehome::abandon(dir).map_err(fail)? {
                        tracing::warn!(data_dir = %dir.display(), "removed the copy of a move to another shard count that did not complete");
                    }
                    Ok(Some(lock))
                }
                Some(w) => {
                    // Each stream's home depends on the shard count: every record goes to its
                    // user's new home before a shard opens its log.
                    let started = crate::clock::now();
                    let seg = cfg.history.log_segment_bytes;
                    let moved = rehome::rehome(dir, w, shards, seg).map_err(|e| {
                        StartError(format!(
                            "--data-dir {}: moving the logs of {w} shards to {shards} failed: {e}; \
                             nothing is lost by it: start again to retry",
                            dir.display()
                        ))
                    })?;
                    tracing::warn!(
                        data_dir = %dir.display(),
                        records = moved.records,
                        unknown = moved.unknown,
                        marked = moved.marked,
                        ms = crate::clock::now().saturating_duration_since(started).as_millis() as u64,
                        "the logs of {w} shards were moved to {shards}: each user's records to its new home shard"
                    );
                    Ok(Some(lock))
                }
                None => Err(StartError(format!(
                    "--data-dir {}: META is not `shards N` ({text:?})",
                    dir.display()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("META.tmp");
            std::fs::write(&tmp, format!("shards {shards}\n")).map_err(fail)?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(fail)?;
            std::fs::rename(&tmp, &meta).map_err(fail)?;
            std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(fail)?;
            Ok(Some(lock))
        }
        Err(e) => Err(fail(e)),
    }
}
