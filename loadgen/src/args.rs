//! Flag groups more than one scenario takes: where to connect and how, and how to publish.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::sources;

#[derive(Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) target: SocketAddr,
    /// Endpoint path; `{i}` becomes the connection's number (0..N). Default per scenario:
    /// hold and churn `/ws`, fanout and slow `/ws?channels=bench`, push `/ws?user=u{i}`,
    /// echo `/echo`.
    #[arg(long)]
    pub(crate) path: Option<String>,
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Connections opened per second; 0 opens them as fast as the server upgrades.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// How long to hold the connections once all have an outcome (hold only).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) hold: Duration,
    /// Source addresses: `127.0.0.1-127.0.0.40` or a comma list.
    #[arg(long, default_value = "127.0.0.1", value_parser = sources::parse_sources)]
    pub(crate) sources: std::vec::Vec<IpAddr>,
    /// Client threads; 0: one per CPU available to loadgen.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Time one connection may take to connect and upgrade.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// The server's PID: report its memory and CPU.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// Hard cap on the whole run.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub(crate) max_duration: Duration,
    /// Connect over TLS (wss): verify the server with --ca, or not at all with --insecure.
    #[arg(long)]
    pub(crate) tls: bool,
    /// PEM file of the certificate(s) that sign the server's (with --tls).
    #[arg(long)]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// With --tls: accept any server certificate (loopback benchmarks with a self-signed one).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// With --tls: the server name to send (SNI) and verify.
    #[arg(long, default_value = "localhost")]
    pub(crate) sni: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write the latency distribution (HdrHistogram .hgrm text) to this file.
    #[arg(long)]
    pub(crate) hdr_out: Option<std::path::PathBuf>,
    /// Write a latency-by-percentile chart (SVG) to this file.
    #[arg(long)]
    pub(crate) plot: Option<std::path::PathBuf>,
}

impl ConnArgs {
    /// `wss` with --tls, else `ws`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls {
            "wss"
        } else {
            "ws"
        }
    }

    pub(crate) fn path_or(&self, default: &str) -> String {
        self.path.clone().unwrap_or_else(|| default.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PubFormat {
    /// `{"channel": C, "data": PAYLOAD}` to ringcast's /v1/publish.
    Ringcast,
    /// The payload itself as the POST body (a generic broadcast server).
    Raw,
}

/// What `fanout` and `push` share on the publishing side.
#[derive(Args, Debug)]
pub(crate) struct PublishOpts {
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Publisher connections, used in turn, so a slow answer does not delay the schedule.
    #[arg(long, default_value_t = 16)]
    pub(crate) pub_conns: usize,
    /// Bearer key for the publish URL.
    #[arg(long, env = "RINGCAST_API_KEY")]
    pub(crate) api_key: Option<String>,
    /// How long to wait for the last deliveries after the last publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) drain: Duration,
}
