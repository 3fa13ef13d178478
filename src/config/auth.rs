//! Client identity settings (`--auth` and the `--jwt-*` flags).

use std::time::Duration;

use super::units::{parse_duration, parse_size};

/// Client identity.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Client identity")]
pub(crate) struct Auth {
    /// How a connection proves who it is: `jwt` (a signed token, checked against
    /// --jwt-keys; with a `connect` backend, clients without a token ask it), `proxy` (a
    /// `connect` backend in [[upstreams]] decides, from the upgrade's forwarded headers), or
    /// `open` (trusts `?user=`; for development and loopback: ringcast refuses it on a
    /// non-loopback --listen unless --insecure-open-identity true).
    #[arg(long, env = "RINGCAST_AUTH", value_enum, default_value_t = AuthMode::Open)]
    pub(crate) auth: AuthMode,
    /// JWKS file (RFC 7517) of the keys tokens are verified with; each key needs `alg`, and
    /// `kid` when there are several. Read again on SIGHUP.
    #[arg(long, env = "RINGCAST_JWT_KEYS")]
    pub(crate) jwt_keys: Option<std::path::PathBuf>,
    /// Accepted `aud` values, comma-separated; empty: `aud` is not checked.
    #[arg(long, env = "RINGCAST_JWT_AUDIENCE", value_delimiter = ',')]
    pub(crate) jwt_audience: Vec<String>,
    /// Accepted `iss` values, comma-separated; empty: `iss` is not checked.
    #[arg(long, env = "RINGCAST_JWT_ISSUER", value_delimiter = ',')]
    pub(crate) jwt_issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long, env = "RINGCAST_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub(crate) jwt_leeway: Duration,
    /// Largest `info` claim (JSON, shown in presence queries).
    #[arg(long, env = "RINGCAST_JWT_MAX_INFO", default_value = "1KiB", value_parser = parse_size)]
    pub(crate) jwt_max_info: u64,
    /// Allow `--auth open` on a non-loopback --listen: anyone who reaches the port can claim
    /// any user.
    #[arg(long, env = "RINGCAST_INSECURE_OPEN_IDENTITY", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) insecure_open_identity: bool,
}

/// How connections are identified.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthMode {
    Open,
    Jwt,
    Proxy,
}
