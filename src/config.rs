//! Server configuration: every limit and deadline, with its default and accepted range.
//!
//! Parsed from the command line (clap); durations take `ms`, `s`, `m` or `h` suffixes and sizes
//! `B`, `KiB`, `MiB` or `GiB`. [`Config::validate`] rejects combinations that cannot work with
//! an error that names the flag.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

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
    pub(crate) delivery: Delivery,
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
    /// On SIGTERM/SIGINT, time connections have to finish the close handshake.
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

/// Where an effective setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        }
    }
}

/// A loaded configuration, with the source of every setting.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// (key, value as given, source), in flag order.
    pub settings: Vec<(String, String, Source)>,
}

fn file_value(key: &str, v: &toml::Value, file: &str) -> Result<String, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                toml::Value::String(s) => Ok(s.clone()),
                _ => Err(ConfigError(format!("{file}: key `{key}`: the list must hold strings"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        _ => Err(ConfigError(format!(
            "{file}: key `{key}`: expected a string, number, boolean or list of strings"
        ))),
    }
}

impl Config {
    /// Loads defaults, then the `--config` file, then the environment, then `args` (which
    /// start with the program name), and validates the result.
    pub fn load<I, T>(args: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let cmd = Config::command();
        let plain = cmd
            .clone()
            .try_get_matches_from(&args)
            .map_err(|e| ConfigError(e.render().to_string()))?;
        let file = plain.get_one::<std::path::PathBuf>("config").cloned();
        let mut argv: Vec<std::ffi::OsString> =
            vec![args.first().cloned().unwrap_or_else(|| "ringcast".into())];
        let mut from_file: Vec<String> = Vec::new();
        if let Some(path) = &file {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {name}: {e}")))?;
            let table: toml::Table =
                text.parse().map_err(|e| ConfigError(format!("{name} is not valid TOML: {e}")))?;
            let known: Vec<(&str, &str)> = cmd
                .get_arguments()
                .filter_map(|a| Some((a.get_id().as_str(), a.get_long()?)))
                .filter(|(id, _)| *id != "config")
                .collect();
            for (key, value) in &table {
                let long = key.replace('_', "-");
                let Some((id, long)) = known.iter().find(|(_, l)| *l == long) else {
                    let mut names: Vec<&str> = known.iter().map(|(_, l)| *l).collect();
                    names.sort_unstable();
                    return Err(ConfigError(format!(
                        "{name}: unknown key `{key}`; known keys: {}",
                        names.join(", ")
                    )));
                };
                let env = format!("RINGCAST_{}", id.to_uppercase());
                if std::env::var_os(&env).is_some() {
                    continue; // the environment beats the file
                }
                let v = file_value(key, value, &name)?;
                // Check the file's values alone first, so an error names the file.
                let one = [argv[0].clone(), format!("--{long}").into(), v.clone().into()];
                if let Err(e) = cmd.clone().try_get_matches_from(one) {
                    let msg = e.render().to_string();
                    let first =
                        msg.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
                    return Err(ConfigError(format!("{name}: key `{key}`: {first}")));
                }
                argv.push(format!("--{long}").into());
                argv.push(v.into());
                from_file.push(id.to_string());
            }
        }
        argv.extend(args.iter().skip(1).cloned());
        let matches = cmd
            .clone()
            .try_get_matches_from(&argv)
            .map_err(|e| ConfigError(e.render().to_string()))?;
        let config =
            Config::from_arg_matches(&matches).map_err(|e| ConfigError(e.render().to_string()))?;
        config.validate()?;
        let mut settings = Vec::new();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            let Some(long) = a.get_long() else { continue };
            let source = match plain.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => Source::Flag,
                Some(clap::parser::ValueSource::EnvVariable) => Source::Env,
                _ if from_file.iter().any(|f| f == id) => Source::File,
                _ => Source::Default,
            };
            let value: Vec<String> = matches
                .get_raw(id)
                .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let shown = if id == "api_key" && !value.is_empty() {
                "<set>".to_string()
            } else {
                value.join(",")
            };
            settings.push((long.to_string(), shown, source));
        }
        Ok(Loaded { config, settings })
    }
}

/// Renders the effective configuration as TOML, with each value's source.
pub fn render(settings: &[(String, String, Source)]) -> String {
    let mut out = String::from("# effective ringcast configuration (value  # source)\n");
    for (k, v, src) in settings {
        if k == "config" {
            continue;
        }
        let quoted = toml::Value::String(v.clone()).to_string();
        out.push_str(&format!("{k} = {quoted}  # {}\n", src.as_str()));
    }
    out
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["ringcast"])
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.timeouts.tick < Duration::from_millis(1)
            || self.timeouts.tick > Duration::from_secs(1)
        {
            return err(format!("--tick must be between 1ms and 1s, got {:?}", self.timeouts.tick));
        }
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
        if self.delivery.stream_idle_ttl < Duration::from_secs(1) {
            return err(format!(
                "--stream-idle-ttl must be at least 1s (idle streams are forgotten after it), got {:?}",
                self.delivery.stream_idle_ttl
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
        {
            return err(format!(
                "--api-key is required when --api-listen ({}) is not a loopback address",
                self.api.api_listen
            ));
        }
        if self.api.api_listen == self.listen.listen && self.listen.listen.port() != 0 {
            return err("--api-listen and --listen must differ".into());
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

/// Parses `250ms`, `10s`, `2m`, `1h` (or a bare number of seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
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
