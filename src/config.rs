//! Server configuration: every limit and deadline, with its default and accepted range.
//!
//! Parsed from the command line (clap); durations take `ms`, `s`, `m` or `h` suffixes and sizes
//! `B`, `KiB`, `MiB` or `GiB`. [`Config::validate`] rejects combinations that cannot work with
//! an error that names the flag.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// A WebSocket push gateway: one io_uring runtime per core.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringcast", version, about)]
pub struct Config {
    /// WebSocket listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Shard threads, one per core; 0 means one per CPU available to the process.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Pin shard i to the i-th available CPU.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pin: bool,
    /// Listen backlog of each shard's socket (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub backlog: u32,
    /// I/O driver: io-uring, epoll, or auto (io_uring where the kernel allows it).
    #[arg(long, value_enum, default_value_t = IoDriver::Auto)]
    pub io_driver: IoDriver,
    /// Allow transparent huge pages (off by default: they multiply resident memory per idle
    /// connection; see docs/benchmarks.md).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub transparent_huge_pages: bool,
    /// io_uring submission queue entries per shard.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(8..=32768))]
    pub uring_entries: u32,

    /// Maximum open WebSocket connections, all shards together; 0 derives it from the
    /// open-file limit (less a reserve for listeners and handshakes in progress).
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Maximum open WebSocket connections per shard; 0 means no per-shard cap.
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_shard: usize,
    /// Maximum open WebSocket connections from one source IP; 0 means no cap.
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_ip: u32,
    /// Maximum connections per shard still in the handshake; more are closed at accept.
    #[arg(long, default_value_t = 4096)]
    pub max_pending_handshakes: usize,

    /// Time a client has to complete the upgrade request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Cap on the upgrade request head.
    #[arg(long, default_value = "8KiB", value_parser = parse_size)]
    pub max_header_bytes: u64,
    /// Largest frame a client may send (1009 beyond).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub max_frame_size: u64,
    /// Largest message a client may send, all fragments together (1009 beyond).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub max_message_size: u64,

    /// Send a ping after this long without hearing from the client; 0 disables pings.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Evict a client that sends nothing for this long after a ping.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub pong_timeout: Duration,
    /// Close a connection that sends no message (heartbeats count) for this long; 0 disables.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time the peer has to answer our close frame before the socket is closed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,
    /// On SIGTERM/SIGINT, time connections have to finish the close handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Application heartbeat: a text message equal to this is answered with --heartbeat-reply
    /// on the push endpoint. Empty disables it.
    #[arg(long, default_value = "ping")]
    pub heartbeat_text: String,
    /// The answer to an application heartbeat.
    #[arg(long, default_value = "pong")]
    pub heartbeat_reply: String,
    /// Timer wheel tick: the resolution of every deadline above.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub tick: Duration,

    /// Bytes queued for one connection before it stops being read (echo) or is shed.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub outbox_max_bytes: u64,
    /// Frames queued for one connection before the same happens.
    #[arg(long, default_value_t = 4096)]
    pub outbox_max_frames: usize,
    /// Per-shard read buffer.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub read_buffer: u64,

    /// Path of the push endpoint.
    #[arg(long, default_value = "/ws")]
    pub ws_path: String,
    /// Serve the echo endpoint (a conformance and test aid; turn it off in production).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub echo: bool,
    /// Path of the echo endpoint.
    #[arg(long, default_value = "/echo")]
    pub echo_path: String,
    /// Allowed Origin values, comma-separated (`https://app.example`); empty allows any.
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Subprotocols spoken, comma-separated, in order of preference.
    #[arg(long, value_delimiter = ',')]
    pub subprotocols: Vec<String>,

    /// HTTP API listen address (publish, push, kick, queries).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub api_listen: SocketAddr,
    /// Bearer key the API requires (`Authorization: Bearer KEY`). Required when --api-listen
    /// is not a loopback address.
    #[arg(long, env = "RINGCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest API request body (413 beyond).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub api_max_body: u64,
    /// Channels one connection may subscribe to.
    #[arg(long, default_value_t = 64)]
    pub max_channels_per_conn: usize,
    /// A device counts as active for the `active` push policy if it sent a message this recently.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub active_window: Duration,
    /// Close the older connection (code 4000, "replaced") when the same user and device connect again.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub replace_same_device: bool,
    /// A connection that keeps losing pushes to a full outbox this long is closed (4002, "slow consumer").
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub slow_consumer_timeout: Duration,
    /// Messages each shard inbox holds; a full inbox refuses requests (503) and drops deliveries.
    #[arg(long, default_value_t = 65536)]
    pub inbox_capacity: usize,
    /// Bad client messages tolerated per minute before the connection is closed with 1008.
    #[arg(long, default_value_t = 10)]
    pub max_client_errors: u32,

    /// Log filter (tracing `EnvFilter` syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Which monoio driver the shards run on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.tick < Duration::from_millis(1) || self.tick > Duration::from_secs(1) {
            return err(format!("--tick must be between 1ms and 1s, got {:?}", self.tick));
        }
        if self.handshake_timeout < self.tick {
            return err("--handshake-timeout must be at least one --tick".into());
        }
        if !self.ping_interval.is_zero() && self.pong_timeout < self.tick {
            return err("--pong-timeout must be at least one --tick when pings are on".into());
        }
        if self.close_timeout < self.tick || self.drain_timeout < self.tick {
            return err("--close-timeout and --drain-timeout must be at least one --tick".into());
        }
        if !(4096..=1 << 30).contains(&self.read_buffer) {
            return err(format!("--read-buffer must be 4KiB..1GiB, got {}", self.read_buffer));
        }
        if !(256..=self.read_buffer / 2).contains(&self.max_header_bytes) {
            return err(format!(
                "--max-header-bytes must be between 256 and half of --read-buffer ({}), got {}",
                self.read_buffer / 2,
                self.max_header_bytes
            ));
        }
        if self.max_frame_size == 0 || self.max_message_size == 0 {
            return err("--max-frame-size and --max-message-size must be positive".into());
        }
        if self.max_frame_size > 1 << 40 || self.max_message_size > 1 << 40 {
            return err("--max-frame-size and --max-message-size must be at most 1TiB".into());
        }
        if self.max_pending_handshakes == 0 {
            return err("--max-pending-handshakes must be positive".into());
        }
        if self.outbox_max_bytes < 1024 || self.outbox_max_frames < 8 {
            return err(
                "--outbox-max-bytes must be at least 1KiB and --outbox-max-frames at least 8"
                    .into(),
            );
        }
        for (flag, path) in [("--ws-path", &self.ws_path), ("--echo-path", &self.echo_path)] {
            if !path.starts_with('/') || path.contains(['?', ' ', '#']) {
                return err(format!("{flag} must be a path starting with '/', got {path:?}"));
            }
        }
        if self.echo && self.ws_path == self.echo_path {
            return err("--ws-path and --echo-path must differ".into());
        }
        if !self.api_listen.ip().is_loopback() && self.api_key.as_deref().unwrap_or("").is_empty() {
            return err(format!(
                "--api-key is required when --api-listen ({}) is not a loopback address",
                self.api_listen
            ));
        }
        if self.api_listen == self.listen && self.listen.port() != 0 {
            return err("--api-listen and --listen must differ".into());
        }
        if self.inbox_capacity < 16 {
            return err("--inbox-capacity must be at least 16".into());
        }
        if self.api_max_body < 1024 {
            return err("--api-max-body must be at least 1KiB".into());
        }
        if self.heartbeat_reply.len() > 125 * 1024 {
            return err("--heartbeat-reply is too long".into());
        }
        Ok(())
    }

    /// Timer ticks in `d`, rounded up so a deadline never fires early.
    pub fn ticks(&self, d: Duration) -> u64 {
        let t = self.tick.as_nanos().max(1);
        d.as_nanos().div_ceil(t) as u64
    }
}

/// Parses `250ms`, `10s`, `2m`, `1h` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 250ms, 10s, 2m"))?;
    let secs = match unit.trim() {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} (use ms, s, m or h)")),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `512`, `512B`, `64KiB`, `1MiB`, `1GiB` (also `K`, `KB`, `M`, `MB`, `G`, `GB` as
/// binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 4096, 64KiB, 1MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} (use B, KiB, MiB or GiB)")),
    };
    v.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
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
    }

    #[test]
    fn ticks_round_up() {
        let c = Config::default();
        assert_eq!(c.ticks(Duration::from_millis(150)), 2);
        assert_eq!(c.ticks(Duration::from_secs(10)), 100);
    }
}
