//! The HTTP API backends use: publish, push, send, broadcast, kick, batch, and queries.
//!
//! It runs on its own thread with its own monoio runtime and listener (`--api-listen`). Its
//! rooms: the HTTP edge (`http`), routing (`router`), the typed operations (`ops`) and their
//! batch (`batch`), read-only answers (`query`, `metrics`), field parsing (`fields`) and the
//! one error type with its status mapping (`error`). Requests become shard messages through
//! the same inboxes the shards use, and an operation answers with a delivery report once every
//! shard involved has done its part (docs/api.md).

mod batch;
pub(crate) mod error;
pub(crate) mod fields;
pub(crate) mod http;
pub mod idempotency;
pub mod keys;
pub(crate) mod metrics;
pub(crate) mod ops;
mod query;
mod router;
mod upstream_metrics;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;

use crate::server::inbox::Router;
use crate::server::stats::Counters;
use crate::server::Shared;
use error::ApiError;

/// Longest wait for a delivery report (a shard would have to be stuck).
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API needs from the server.
pub struct ApiContext {
    pub router: Arc<Router>,
    pub shared: Arc<Shared>,
    pub counters: Vec<Arc<Counters>>,
    /// The API's keys (none: open, loopback only).
    pub keys: keys::ApiKeys,
    /// The `--metrics-listen` listener: only /metrics, /healthz and /readyz, with no key.
    pub metrics_only: bool,
    pub max_body: usize,
    /// The I/O driver in use, for `ringcast_info`.
    pub driver: &'static str,
    /// Concurrent API connections allowed.
    pub max_connections: usize,
    /// Keys of idempotent requests within their window.
    pub idempotency: idempotency::Idempotency,
}

/// Binds the API listener (so a bad address fails start-up with a clear error).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr} for the API: the address is already in use")
        } else {
            format!("cannot listen on {addr} for the API: {e}")
        }
    })?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

/// The running API: stop it before the process exits.
pub struct ApiHandle {
    listener_fd: std::os::fd::RawFd,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ApiHandle {
    /// Stops accepting and ends the API thread. The listener is shut explicitly: a pending
    /// io_uring accept would otherwise keep the socket listening for a moment after the
    /// process exits, and a restart on the same address would find it in use.
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        crate::server::sys::shutdown_listener(self.listener_fd);
        let _ = self.thread.join();
    }
}

/// Runs the API on a thread of its own until [`ApiHandle::stop`].
pub fn spawn(
    listener: std::net::TcpListener,
    ctx: ApiContext,
    use_uring: bool,
) -> io::Result<ApiHandle> {
    use std::os::fd::AsRawFd;
    let listener_fd = listener.as_raw_fd();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new().name("ringcast-api".into()).spawn(move || {
        let run = async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("API listener: {e}");
                    return;
                }
            };
            let ctx = Rc::new(ctx);
            let open = Rc::new(std::cell::Cell::new(0usize));
            loop {
                match listener.accept().await {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        if open.get() >= ctx.max_connections {
                            let reply = ApiError::TooManyConnections.reply();
                            monoio::spawn(async move {
                                let _ = http::write_reply(&mut stream, reply, true).await;
                            });
                            continue;
                        }
                        open.set(open.get() + 1);
                        let (ctx, open) = (ctx.clone(), open.clone());
                        monoio::spawn(async move {
                            http::serve(stream, ctx).await;
                            open.set(open.get() - 1);
                        });
                    }
                    Err(_) if stopping.load(Relaxed) => return,
                    Err(e) => {
                        tracing::warn!("API accept failed: {e}");
                        monoio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        let built = if use_uring {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .map(|mut rt| rt.block_on(run))
        } else {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map(|mut rt| rt.block_on(run))
        };
        if let Err(e) = built {
            tracing::error!("API runtime: {e}");
        }
    })?;
    Ok(ApiHandle { listener_fd, stop, thread })
}
