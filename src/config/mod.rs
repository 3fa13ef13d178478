//! Server configuration: every limit and deadline, with its default and accepted range.
//!
//! Parsed from the command line (clap); durations take `ms`, `s`, `m` or `h` suffixes and sizes
//! `B`, `KiB`, `MiB` or `GiB`. [`Config::validate`] rejects combinations that cannot work with
//! an error that names the flag.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

mod api_keys;
mod auth;
mod load;
mod overload;
mod streams;
mod units;
mod upstreams;

pub(crate) use api_keys::{ApiKeyRule, Scope};
pub(crate) use auth::{Auth, AuthMode};
pub use load::{render, Loaded, Source};
pub use overload::OverloadConfig;
pub(crate) use streams::StreamRule;
pub(crate) use units::{parse_duration, parse_size};
pub(crate) use upstreams::{EventRule, UpstreamRule};

/// A WebSocket push gateway: one io_uring runtime per core.
///
/// Settings come from, in rising precedence: built-in defaults, a TOML file (--config),
/// RINGCAST_* environment variables, and flags. `ringcast check-config FILE` prints the
/// effective configuration and where each value came from.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringcast", version, about, args_override_self = true)]
pub struct Config {
    /// TOML configuration file; its keys are the flag names (`max-frame-size` or
    /// `max_frame_size`).
    #[arg(long, env = "RINGCAST_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub(crate) limits: Limits,
    #[command(flatten)]
    pub(crate) frames: Frames,
    #[command(flatten)]
    pub(crate) timeouts: Timeouts,
    #[command(flatten)]
    pub(crate) outbox: OutboxConfig,
    #[command(flatten)]
    pub(crate) routes: Routes,
    #[command(flatten)]
    pub api: Api,
    #[command(flatten)]
    pub(crate) auth: Auth,
    #[command(flatten)]
    pub(crate) delivery: Delivery,
    #[command(flatten)]
    pub(crate) history: History,
    #[command(flatten)]
    pub(crate) overload: OverloadConfig,
    #[command(flatten)]
    pub(crate) two_way: TwoWay,
    #[command(flatten)]
    pub log: Logging,
}

/// Listening and threads.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Listening and threads")]
pub struct Listen {
    /// WebSocket listen address.
    #[arg(long, env = "RINGCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// wss listen address (a SO_REUSEPORT listener per shard, beside --listen); needs
    /// --tls-cert and --tls-key.
    #[arg(long, env = "RINGCAST_TLS_LISTEN")]
    pub(crate) tls_listen: Option<SocketAddr>,
    /// Certificate chain PEM file; repeat with --tls-key for several pairs, chosen by the
    /// client's SNI (the first pair for clients without one). Read again on SIGHUP.
    #[arg(long, env = "RINGCAST_TLS_CERT", value_delimiter = ',')]
    pub(crate) tls_cert: Vec<std::path::PathBuf>,
    /// Private key PEM file of the --tls-cert at the same position.
    #[arg(long, env = "RINGCAST_TLS_KEY", value_delimiter = ',')]
    pub(crate) tls_key: Vec<std::path::PathBuf>,
    /// Accept TLS 1.2 as well as TLS 1.3.
    #[arg(long, env = "RINGCAST_TLS12", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) tls12: bool,
    /// Shard threads, one per core; 0 means one per CPU available to the process.
    #[arg(long, env = "RINGCAST_SHARDS", default_value_t = 0)]
    pub(crate) shards: usize,
    /// Pin shard i to the i-th available CPU.
    #[arg(long, env = "RINGCAST_PIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) pin: bool,
    /// Listen backlog of each shard's socket (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "RINGCAST_BACKLOG", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub backlog: u32,
    /// I/O driver: io-uring, epoll, or auto (io_uring where the kernel allows it).
    #[arg(long, env = "RINGCAST_IO_DRIVER", value_enum, default_value_t = IoDriver::Auto)]
    pub(crate) io_driver: IoDriver,
    /// Allow transparent huge pages (off by default: they multiply resident memory per idle
    /// connection; see docs/benchmarks.md).
    #[arg(long, env = "RINGCAST_TRANSPARENT_HUGE_PAGES", default_value_t = false, action = clap::ArgAction::Set)]
    pub transparent_huge_pages: bool,
    /// io_uring submission queue entries per shard.
    #[arg(long, env = "RINGCAST_URING_ENTRIES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(8..=32768))]
    pub(crate) uring_entries: u32,
}

/// Connection limits.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Connection limits")]
pub(crate) struct Limits {
    /// Maximum open WebSocket connections, all shards together; 0 derives it from the
    /// open-file limit (less a reserve for listeners and handshakes in progress).
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", default_value_t = 0)]
    pub(crate) max_connections: usize,
    /// Maximum open WebSocket connections per shard; 0 means no per-shard cap.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS_PER_SHARD", default_value_t = 0)]
    pub(crate) max_connections_per_shard: usize,
    /// Maximum open WebSocket connections from one source IP; 0 means no cap.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub(crate) max_connections_per_ip: u32,
    /// Handshakes one source IP may make per second (a token bucket shared by all shards);
    /// more get 429 with Retry-After. 0 turns the limit off.
    #[arg(long, env = "RINGCAST_HANDSHAKE_RATE_PER_IP", default_value_t = 0.0)]
    pub(crate) handshake_rate_per_ip: f64,
    /// Handshakes one source IP may make at once before --handshake-rate-per-ip applies.
    #[arg(long, env = "RINGCAST_HANDSHAKE_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) handshake_burst: u32,
    /// Answer an overload refusal (server or shard full, per-address caps) by accepting the
    /// upgrade and closing at once with 1013 and `{"retry_ms":N,...}` (browsers cannot read
    /// the status of a refused upgrade), instead of 503 or 429.
    #[arg(long, env = "RINGCAST_OVERLOAD_CLOSE", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) overload_close: bool,
    /// Maximum connections per shard still in the handshake; more are closed at accept.
    #[arg(long, env = "RINGCAST_MAX_PENDING_HANDSHAKES", default_value_t = 4096)]
    pub(crate) max_pending_handshakes: usize,
}

/// Handshake and frames.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Handshake and frames")]
pub(crate) struct Frames {
    /// Time a client has to complete the upgrade request.
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) handshake_timeout: Duration,
    /// Cap on the upgrade request head.
    #[arg(long, env = "RINGCAST_MAX_HEADER_BYTES", default_value = "8KiB", value_parser = parse_size)]
    pub(crate) max_header_bytes: u64,
    /// Largest frame a client may send (1009 beyond).
    #[arg(long, env = "RINGCAST_MAX_FRAME_SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub(crate) max_frame_size: u64,
    /// Largest message a client may send, all fragments together (1009 beyond).
    #[arg(long, env = "RINGCAST_MAX_MESSAGE_SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub(crate) max_message_size: u64,
}

/// Heartbeats and deadlines.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Heartbeats and deadlines")]
pub(crate) struct Timeouts {
    /// Send a ping after this long without hearing from the client; 0 disables pings.
    #[arg(long, env = "RINGCAST_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub(crate) ping_interval: Duration,
    /// Evict a client that sends nothing for this long after a ping.
    #[arg(long, env = "RINGCAST_PONG_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) pong_timeout: Duration,
    /// Close a connection that sends no message (heartbeats count) for this long; 0 disables.
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// Time the peer has to answer our close frame before the socket is closed.
    #[arg(long, env = "RINGCAST_CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) close_timeout: Duration,
    /// On SIGTERM/SIGINT, close open connections in waves spread over this long instead of
    /// all at once (each wave's clients get a jittered retry hint), so a rolling restart does
    /// not bring every client back in the same second; 0 closes them all at once.
    #[arg(long, env = "RINGCAST_DRAIN_SPREAD", default_value = "0s", value_parser = parse_duration)]
    pub(crate) drain_spread: Duration,
    /// On SIGTERM/SIGINT, time connections have to finish the close handshake (after the
    /// last wave of --drain-spread).
    #[arg(long, env = "RINGCAST_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Application heartbeat: a text message equal to this is answered with --heartbeat-reply
    /// on the push endpoint. Empty disables it.
    #[arg(long, env = "RINGCAST_HEARTBEAT_TEXT", default_value = "ping")]
    pub(crate) heartbeat_text: String,
    /// The answer to an application heartbeat.
    #[arg(long, env = "RINGCAST_HEARTBEAT_REPLY", default_value = "pong")]
    pub(crate) heartbeat_reply: String,
    /// Timer wheel tick: the resolution of every deadline above.
    #[arg(long, env = "RINGCAST_TICK", default_value = "100ms", value_parser = parse_duration)]
    pub(crate) tick: Duration,
}

/// Outbox and reading.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Outbox and reading")]
pub(crate) struct OutboxConfig {
    /// Bytes queued for one connection before it stops being read (echo) or is shed.
    #[arg(long, env = "RINGCAST_OUTBOX_MAX_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub(crate) outbox_max_bytes: u64,
    /// Frames queued for one connection before the same happens.
    #[arg(long, env = "RINGCAST_OUTBOX_MAX_FRAMES", default_value_t = 4096)]
    pub(crate) outbox_max_frames: usize,
    /// Per-shard read buffer.
    #[arg(long, env = "RINGCAST_READ_BUFFER", default_value = "64KiB", value_parser = parse_size)]
    pub(crate) read_buffer: u64,
    /// The kernel send buffer of each client socket (SO_SNDBUF; the kernel doubles it for
    /// its bookkeeping). What a slow reader has not read waits there, outside the memory
    /// budget, before the outbox holds the rest; `0`: the kernel's own, which grows up to
    /// `net.ipv4.tcp_wmem`'s maximum (4 MiB by default) per socket.
    #[arg(long, env = "RINGCAST_SOCKET_SEND_BUFFER", default_value = "0", value_parser = parse_size)]
    pub(crate) socket_send_buffer: u64,
}

/// Endpoints.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Endpoints")]
pub(crate) struct Routes {
    /// Path of the push endpoint.
    #[arg(long, env = "RINGCAST_WS_PATH", default_value = "/ws")]
    pub(crate) ws_path: String,
    /// Serve the echo endpoint (a conformance and test aid; turn it off in production).
    #[arg(long, env = "RINGCAST_ECHO", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) echo: bool,
    /// Path of the echo endpoint.
    #[arg(long, env = "RINGCAST_ECHO_PATH", default_value = "/echo")]
    pub(crate) echo_path: String,
    /// Allowed Origin values, comma-separated (`https://app.example`); empty allows any.
    #[arg(long, env = "RINGCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub(crate) allowed_origins: Vec<String>,
    /// Subprotocols spoken, comma-separated, in order of preference.
    #[arg(long, env = "RINGCAST_SUBPROTOCOLS", value_delimiter = ',')]
    pub(crate) subprotocols: Vec<String>,
}

/// HTTP API.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "HTTP API")]
pub struct Api {
    /// HTTP API listen address (publish, push, kick, queries).
    #[arg(long, env = "RINGCAST_API_LISTEN", default_value = "127.0.0.1:8081")]
    pub api_listen: SocketAddr,
    /// Bearer key the API requires (`Authorization: Bearer KEY`). Required when --api-listen
    /// is not a loopback address.
    #[arg(long, env = "RINGCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest API request body (413 beyond).
    #[arg(long, env = "RINGCAST_API_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    pub api_max_body: u64,
    /// How long an operation's `idempotency_key` is remembered: the same key again within it
    /// delivers nothing new and answers the first report with `"duplicate": true`.
    #[arg(long, env = "RINGCAST_IDEMPOTENCY_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub idempotency_window: Duration,
    /// Idempotency keys remembered at once; when that many are within their window, keyed
    /// requests get 503 (a key is never forgotten early).
    #[arg(long, env = "RINGCAST_IDEMPOTENCY_MAX_KEYS", default_value_t = 1_000_000)]
    pub idempotency_max_keys: usize,
    /// Scoped API keys: `[[api_keys]]` tables of the configuration file (name, sha256 of
    /// the key, scopes, expires). `--api-key` is one more key, with every scope.
    #[arg(skip)]
    pub(crate) api_keys: Vec<ApiKeyRule>,
    /// Serve GET /metrics, /healthz and /readyz, without a key, on this address as well
    /// (for Prometheus and load balancers).
    #[arg(long, env = "RINGCAST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Concurrent API connections; more are answered 503 and closed.
    #[arg(long, env = "RINGCAST_API_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_max_connections: u32,
}

/// Delivery.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Delivery")]
pub(crate) struct Delivery {
    /// Channels one connection may subscribe to.
    #[arg(long, env = "RINGCAST_MAX_CHANNELS_PER_CONN", default_value_t = 64)]
    pub(crate) max_channels_per_conn: usize,
    /// A device counts as active for the `active` push policy if it sent a message this recently.
    #[arg(long, env = "RINGCAST_ACTIVE_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub(crate) active_window: Duration,
    /// Close the older connection (code 4000, "replaced") when the same user and device connect again.
    #[arg(long, env = "RINGCAST_REPLACE_SAME_DEVICE", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) replace_same_device: bool,
    /// A connection that keeps losing pushes to a full outbox this long is closed (4002, "slow consumer").
    #[arg(long, env = "RINGCAST_SLOW_CONSUMER_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) slow_consumer_timeout: Duration,
    /// A stream (channel, user, broadcast) with no message for this long is forgotten; its
    /// numbering starts again at 1 under a new epoch if it comes back.
    #[arg(long, env = "RINGCAST_STREAM_IDLE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub(crate) stream_idle_ttl: Duration,
    /// Messages each shard inbox holds; a full inbox refuses requests (503) and drops deliveries.
    #[arg(long, env = "RINGCAST_INBOX_CAPACITY", default_value_t = 65536)]
    pub(crate) inbox_capacity: usize,
    /// Bad client messages tolerated per minute before the connection is closed with 1008.
    #[arg(long, env = "RINGCAST_MAX_CLIENT_ERRORS", default_value_t = 10)]
    pub(crate) max_client_errors: u32,
}

/// Stream history.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Stream history and resume")]
pub(crate) struct History {
    /// Messages a recoverable stream keeps for clients that resume (the default for streams no
    /// `[[streams]]` rule names).
    #[arg(long, env = "RINGCAST_HISTORY_SIZE", default_value_t = 100)]
    pub(crate) history_size: usize,
    /// How long a recoverable stream keeps a message.
    #[arg(long, env = "RINGCAST_HISTORY_TTL", default_value = "2m", value_parser = parse_duration)]
    pub(crate) history_ttl: Duration,
    /// Frame bytes one stream's history may hold.
    #[arg(long, env = "RINGCAST_HISTORY_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub(crate) history_bytes: u64,
    /// Frame bytes all histories together may hold (split evenly over the shards); past it the
    /// oldest messages of the largest histories go first.
    #[arg(long, env = "RINGCAST_HISTORY_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub(crate) history_memory: u64,
    /// How long a session token (in `welcome` and `session` messages) lets a client that
    /// reconnects have its subscriptions back.
    #[arg(long, env = "RINGCAST_SESSION_TTL", default_value = "2m", value_parser = parse_duration)]
    pub(crate) session_ttl: Duration,
    /// Key session tokens are signed with (at least 16 bytes; the same on every node). Without
    /// it a key is generated at start-up, so tokens do not survive a restart.
    #[arg(long, env = "RINGCAST_SESSION_KEY")]
    pub(crate) session_key: Option<String>,
    /// Messages a durable user stream keeps for its devices while one has not acknowledged
    /// them (the user's mailbox; the oldest go first).
    #[arg(long, env = "RINGCAST_MAILBOX_SIZE", default_value_t = 100)]
    pub(crate) mailbox_size: usize,
    /// How long a mailbox keeps a message (a push's own `ttl` may be shorter).
    #[arg(long, env = "RINGCAST_MAILBOX_TTL", default_value = "7d", value_parser = parse_duration)]
    pub(crate) mailbox_ttl: Duration,
    /// Frame bytes one user's mailbox may hold.
    #[arg(long, env = "RINGCAST_MAILBOX_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub(crate) mailbox_bytes: u64,
    /// How long a durable message may go unacknowledged before it is sent again (then twice
    /// as long each time).
    #[arg(long, env = "RINGCAST_ACK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) ack_timeout: Duration,
    /// Times an unacknowledged message is sent again on one connection; after that it waits
    /// for the device's next connection.
    #[arg(long, env = "RINGCAST_ACK_ATTEMPTS", default_value_t = 5)]
    pub(crate) ack_attempts: u32,
    /// Devices per user whose acknowledged position is kept (the one that acknowledged least
    /// recently goes first).
    #[arg(long, env = "RINGCAST_MAILBOX_DEVICES", default_value_t = 16)]
    pub(crate) mailbox_devices: usize,
    /// Where durable user streams are written: one log per shard under this directory
    /// (created on first start). `none` keeps them in memory only (a restart empties them).
    #[arg(long, env = "RINGCAST_DATA_DIR", default_value = "ringcast-data")]
    pub(crate) data_dir: String,
    /// When a durable write counts as done (and the API answers for it): `always` (on disk,
    /// one fdatasync per shard turn for everything written in it), `interval:MS` (written at
    /// once, synced at most MS apart: a power cut may lose that much) or `none` (written,
    /// never synced by ringcast: survives the process dying, not a power cut).
    #[arg(long, env = "RINGCAST_DURABILITY", default_value = "always")]
    pub(crate) durability: String,
    /// A log segment is closed at this size; whole segments are deleted once nothing in them
    /// is needed.
    #[arg(long, env = "RINGCAST_LOG_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub(crate) log_segment_bytes: u64,
    /// What streams keep, by name pattern: `[[streams]]` tables of the configuration file
    /// (pattern, guarantee, history_size, history_ttl, history_bytes), first match wins.
    #[arg(skip)]
    pub(crate) streams: Vec<StreamRule>,
}

/// What clients send their backends.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Client messages and backends")]
pub(crate) struct TwoWay {
    /// Messages per second each connection may send to backends (rpc, send, publish), on
    /// average; over it a message is refused with `rate_limited`.
    #[arg(long, env = "RINGCAST_CLIENT_MESSAGE_RATE", default_value_t = 10.0)]
    pub(crate) client_message_rate: f64,
    /// Messages a connection may send at once above that rate.
    #[arg(long, env = "RINGCAST_CLIENT_MESSAGE_BURST", default_value_t = 20)]
    pub(crate) client_message_burst: u32,
    /// Bytes per second each connection may send to backends, on average.
    #[arg(long, env = "RINGCAST_CLIENT_BYTE_RATE", default_value = "64KiB", value_parser = parse_size)]
    pub(crate) client_byte_rate: u64,
    /// Bytes a connection may send at once above that rate (at least --max-message-size is
    /// sensible, or a large message is never allowed).
    #[arg(long, env = "RINGCAST_CLIENT_BYTE_BURST", default_value = "1MiB", value_parser = parse_size)]
    pub(crate) client_byte_burst: u64,
    /// Calls of one connection that may wait behind the one in flight (its order is kept);
    /// more are refused with `too_many_requests`.
    #[arg(long, env = "RINGCAST_CLIENT_QUEUE", default_value_t = 16)]
    pub(crate) client_queue: usize,
    /// The backends: `[[upstreams]]` tables of the configuration file (name, url, events,
    /// timeout, batch_max, ...; docs/upstream.md).
    #[arg(skip)]
    pub(crate) upstreams: Vec<UpstreamRule>,
}

/// Logging.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Logging")]
pub struct Logging {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "RINGCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); RUST_LOG overrides it.
    #[arg(long, env = "RINGCAST_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which monoio driver the shards run on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IoDriver {
    Auto,
    IoUring,
    Epoll,
}

/// A configuration that cannot work, naming the flag and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["ringcast"])
    }
}

impl Config {
    /// Whether `--session-key` was given (else tokens die with the process).
    pub fn session_key_set(&self) -> bool {
        self.history.session_key.is_some()
    }

    /// Where durable user streams are written (`none`: memory only) and how durably.
    pub fn data_dir(&self) -> (&str, &str) {
        (&self.history.data_dir, &self.history.durability)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.timeouts.tick < Duration::from_millis(1)
            || self.timeouts.tick > Duration::from_secs(1)
        {
            return err(format!("--tick must be between 1ms and 1s, got {:?}", self.timeouts.tick));
        }
        self.overload.validate().map_err(ConfigError)?;
        if self.frames.handshake_timeout < self.timeouts.tick {
            return err("--handshake-timeout must be at least one --tick".into());
        }
        if !self.timeouts.ping_interval.is_zero() && self.timeouts.pong_timeout < self.timeouts.tick
        {
            return err("--pong-timeout must be at least one --tick when pings are on".into());
        }
        if self.timeouts.close_timeout < self.timeouts.tick
            || self.timeouts.drain_timeout < self.timeouts.tick
        {
            return err("--close-timeout and --drain-timeout must be at least one --tick".into());
        }
        if let Err(e) = ringcast_store::Durability::parse(&self.history.durability) {
            return err(format!("--durability: {e}"));
        }
        if self.history.data_dir.is_empty() {
            return err(
                "--data-dir is a directory, or `none` to keep durable streams in memory".into()
            );
        }
        if !(64 << 10..=1 << 30).contains(&self.history.log_segment_bytes) {
            return err("--log-segment-bytes must be 64KiB..1GiB".into());
        }
        if self.history.ack_timeout < self.timeouts.tick {
            return err("--ack-timeout must be at least one --tick".into());
        }
        if self.history.mailbox_size == 0
            || self.history.mailbox_bytes < 1024
            || self.history.mailbox_devices == 0
            || self.history.mailbox_ttl.is_zero()
        {
            return err("--mailbox-size, --mailbox-devices and --mailbox-ttl must be above 0 and \
                 --mailbox-bytes at least 1KiB (to keep no mailbox, make user streams \
                 `recoverable` or `ephemeral` with a [[streams]] rule for user:*)"
                .into());
        }
        if !(4096..=1 << 30).contains(&self.outbox.read_buffer) {
            return err(format!(
                "--read-buffer must be 4KiB..1GiB, got {}",
                self.outbox.read_buffer
            ));
        }
        if !(256..=self.outbox.read_buffer / 2).contains(&self.frames.max_header_bytes) {
            return err(format!(
                "--max-header-bytes must be between 256 and half of --read-buffer ({}), got {}",
                self.outbox.read_buffer / 2,
                self.frames.max_header_bytes
            ));
        }
        if self.frames.max_frame_size == 0 || self.frames.max_message_size == 0 {
            return err("--max-frame-size and --max-message-size must be positive".into());
        }
        if self.frames.max_frame_size > 1 << 40 || self.frames.max_message_size > 1 << 40 {
            return err("--max-frame-size and --max-message-size must be at most 1TiB".into());
        }
        if self.limits.max_pending_handshakes == 0 {
            return err("--max-pending-handshakes must be positive".into());
        }
        if self.history.session_key.as_ref().is_some_and(|k| k.len() < 16) {
            return err("--session-key must be at least 16 bytes".into());
        }
        let t = &self.two_way;
        if !(t.client_message_rate > 0.0 && t.client_message_rate <= 1e6)
            || t.client_message_burst == 0
        {
            return err(format!(
                "--client-message-rate must be in (0, 1000000] and --client-message-burst at least 1, got {} and {}",
                t.client_message_rate, t.client_message_burst
            ));
        }
        if t.client_byte_rate == 0 || t.client_byte_burst == 0 {
            return err("--client-byte-rate and --client-byte-burst must be positive".into());
        }
        if self.history.session_ttl < Duration::from_secs(1) {
            return err("--session-ttl must be at least 1s".into());
        }
        if self.delivery.stream_idle_ttl < Duration::from_secs(1) {
            return err(format!(
                "--stream-idle-ttl must be at least 1s (idle streams are forgotten after it), got {:?}",
                self.delivery.stream_idle_ttl
            ));
        }
        if self.history.history_ttl > self.delivery.stream_idle_ttl {
            return err(format!(
                "--history-ttl ({:?}) must not exceed --stream-idle-ttl ({:?}): a stream forgotten \
                 while idle takes its history with it",
                self.history.history_ttl, self.delivery.stream_idle_ttl
            ));
        }
        if self.outbox.outbox_max_bytes < 1024 || self.outbox.outbox_max_frames < 8 {
            return err(
                "--outbox-max-bytes must be at least 1KiB and --outbox-max-frames at least 8"
                    .into(),
            );
        }
        for (flag, path) in
            [("--ws-path", &self.routes.ws_path), ("--echo-path", &self.routes.echo_path)]
        {
            if !path.starts_with('/') || path.contains(['?', ' ', '#']) {
                return err(format!("{flag} must be a path starting with '/', got {path:?}"));
            }
        }
        if self.routes.echo && self.routes.ws_path == self.routes.echo_path {
            return err("--ws-path and --echo-path must differ".into());
        }
        if !self.api.api_listen.ip().is_loopback()
            && self.api.api_key.as_deref().unwrap_or("").is_empty()
            && self.api.api_keys.is_empty()
        {
            return err(format!(
                "--api-key or [[api_keys]] is required when --api-listen ({}) is not a loopback address",
                self.api.api_listen
            ));
        }
        if let Some(m) = self.api.metrics_listen {
            if m.port() != 0 && (m == self.api.api_listen || m == self.listen.listen) {
                return err("--metrics-listen must differ from --api-listen and --listen".into());
            }
        }
        if self.api.api_listen == self.listen.listen && self.listen.listen.port() != 0 {
            return err("--api-listen and --listen must differ".into());
        }
        if self.listen.tls_cert.len() != self.listen.tls_key.len() {
            return err(format!(
                "--tls-cert and --tls-key come in pairs: {} certificate(s), {} key(s)",
                self.listen.tls_cert.len(),
                self.listen.tls_key.len()
            ));
        }
        if let Some(t) = self.listen.tls_listen {
            if self.listen.tls_cert.is_empty() {
                return err("--tls-listen needs --tls-cert and --tls-key".into());
            }
            if t.port() != 0 && (t == self.listen.listen || t == self.api.api_listen) {
                return err("--tls-listen must differ from --listen and --api-listen".into());
            }
        }
        let public = !self.listen.listen.ip().is_loopback()
            || self.listen.tls_listen.is_some_and(|t| !t.ip().is_loopback());
        match self.auth.auth {
            AuthMode::Jwt if self.auth.jwt_keys.is_none() => {
                return err("--auth jwt needs --jwt-keys FILE (a JWKS document)".into());
            }
            AuthMode::Proxy
                if !self
                    .two_way
                    .upstreams
                    .iter()
                    .any(|u| u.events.contains(&EventRule::Connect)) =>
            {
                return err(
                    "--auth proxy needs a [[upstreams]] backend with \"connect\" in its events \
                     (docs/upstream.md)"
                        .into(),
                );
            }
            AuthMode::Open if public && !self.auth.insecure_open_identity => {
                return err(format!(
                    "--auth open on a non-loopback --listen or --tls-listen ({}) lets anyone \
                     claim any user: use --auth jwt, or say --insecure-open-identity true",
                    self.listen
                        .tls_listen
                        .filter(|t| !t.ip().is_loopback())
                        .unwrap_or(self.listen.listen)
                ));
            }
            _ => {}
        }
        let rate = self.limits.handshake_rate_per_ip;
        if !rate.is_finite() || !(0.0..=1e6).contains(&rate) {
            return err(format!("--handshake-rate-per-ip must be 0 (off) to 1000000, got {rate}"));
        }
        if self.timeouts.drain_spread > Duration::from_secs(3600) {
            return err("--drain-spread must be at most 1h".into());
        }
        if self.auth.jwt_leeway > Duration::from_secs(600) {
            return err("--jwt-leeway must be at most 10m".into());
        }
        if self.delivery.inbox_capacity < 16 {
            return err("--inbox-capacity must be at least 16".into());
        }
        if self.api.api_max_body < 1024 {
            return err("--api-max-body must be at least 1KiB".into());
        }
        if self.timeouts.heartbeat_reply.len() > 125 * 1024 {
            return err("--heartbeat-reply is too long".into());
        }
        Ok(())
    }

    /// Timer ticks in `d`, rounded up so a deadline never fires early.
    pub(crate) fn ticks(&self, d: Duration) -> u64 {
        let t = self.timeouts.tick.as_nanos().max(1);
        d.as_nanos().div_ceil(t) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let c = Config::parse_from(["ringcast", "--max-header-bytes", "1MiB"]);
        assert!(c.validate().unwrap_err().0.contains("--max-header-bytes"));
        let c = Config::parse_from(["ringcast", "--ws-path", "/x", "--echo-path", "/x"]);
        assert!(c.validate().unwrap_err().0.contains("--echo-path"));
        assert!(Config::try_parse_from(["ringcast", "--tick", "soon"]).is_err());
        let c = Config::parse_from(["ringcast", "--listen", "0.0.0.0:8080"]);
        let e = c.validate().unwrap_err().0;
        assert!(e.contains("--auth open") && e.contains("--insecure-open-identity"), "{e}");
        let c = Config::parse_from([
            "ringcast",
            "--listen",
            "0.0.0.0:8080",
            "--insecure-open-identity",
            "true",
        ]);
        c.validate().unwrap();
        let c = Config::parse_from(["ringcast", "--auth", "jwt"]);
        assert!(c.validate().unwrap_err().0.contains("--jwt-keys"));
        // Proxy mode on a public address is fine, but only with a backend to ask.
        let c = Config::parse_from(["ringcast", "--auth", "proxy", "--listen", "0.0.0.0:8080"]);
        let e = c.validate().unwrap_err().0;
        assert!(e.contains("--auth proxy") && e.contains("\"connect\""), "{e}");
        let c = Config::parse_from(["ringcast", "--mailbox-size", "0"]);
        assert!(c.validate().unwrap_err().0.contains("--mailbox-size"));
        let c = Config::parse_from(["ringcast", "--ack-timeout", "1ms"]);
        assert!(c.validate().unwrap_err().0.contains("--ack-timeout"));
        let c =
            Config::parse_from(["ringcast", "--overload-band", "0.5", "--overload-pause", "0.4"]);
        let e = c.validate().unwrap_err().0;
        assert!(e.contains("--overload-band") && e.contains("--overload-pause"), "{e}");
        let c = Config::parse_from(["ringcast", "--overload-interval", "0ms"]);
        assert!(c.validate().unwrap_err().0.contains("--overload-interval"));
        let c = Config::parse_from(["ringcast", "--overload-lag-limit", "1ms"]);
        assert!(c.validate().unwrap_err().0.contains("--overload-lag-limit"));
        Config::parse_from(["ringcast", "--overload-reclaim", "2", "--overload-band", "0.1"])
            .validate()
            .unwrap();
    }

    #[test]
    fn ticks_round_up() {
        let c = Config::default();
        assert_eq!(c.ticks(Duration::from_millis(150)), 2);
        assert_eq!(c.ticks(Duration::from_secs(10)), 100);
    }
}
