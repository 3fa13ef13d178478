//! `[[upstreams]]`: the backends client messages go to, from the configuration file. Each
//! names the events it takes (`rpc:chat.*`, `send`, `publish:rooms.*`, `subscribe:rooms.*`),
//! where to POST them, and its limits. Checked when the file is read, so a bad table names
//! itself and its key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::units::{parse_duration, parse_size};
use super::ConfigError;

/// What a backend takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventRule {
    /// `rpc:PATTERN`: rpc calls whose method matches.
    Rpc(String),
    /// `send`: fire-and-forget client messages.
    Send,
    /// `publish:PATTERN`: client publishes into matching channels, asked before publishing.
    Publish(String),
    /// `subscribe:PATTERN`: subscriptions to matching channels, asked before subscribing.
    Subscribe(String),
    /// `connect`: who an upgrading connection is (`--auth proxy`, or `jwt` without a token).
    Connect,
    /// `refresh`: renews the `expire_at` a connect backend gave, before it passes.
    Refresh,
}

impl EventRule {
    fn parse(s: &str) -> Result<EventRule, String> {
        let (kind, given) = match s.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (s, None),
        };
        let pattern = || -> Result<String, String> {
            let p = given.unwrap_or("*");
            let ok = !p.is_empty()
                && p.len() <= 128
                && p.bytes()
                    .all(|b| b == b'*' || b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b));
            if ok {
                Ok(p.to_string())
            } else {
                Err(format!("event {s:?}: the pattern is 1-128 bytes of A-Z a-z 0-9 _ - . : @ / *"))
            }
        };
        match kind {
            "rpc" => Ok(EventRule::Rpc(pattern()?)),
            "publish" => Ok(EventRule::Publish(pattern()?)),
            "subscribe" => Ok(EventRule::Subscribe(pattern()?)),
            "send" if given.is_none() => Ok(EventRule::Send),
            "connect" if given.is_none() => Ok(EventRule::Connect),
            "refresh" if given.is_none() => Ok(EventRule::Refresh),
            _ => Err(format!(
                "unknown event {s:?}; events are rpc[:PATTERN], send, publish[:PATTERN], subscribe[:PATTERN], connect, refresh"
            )),
        }
    }

    pub(crate) fn name(&self) -> String {
        match self {
            EventRule::Rpc(p) => format!("rpc:{p}"),
            EventRule::Send => "send".into(),
            EventRule::Publish(p) => format!("publish:{p}"),
            EventRule::Subscribe(p) => format!("subscribe:{p}"),
            EventRule::Connect => "connect".into(),
            EventRule::Refresh => "refresh".into(),
        }
    }
}

/// One `[[upstreams]]` table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UpstreamRule {
    pub(crate) name: String,
    /// The `url` as written, and what it names: where to connect, the Host header, the path.
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) events: Vec<EventRule>,
    /// Upgrade-request headers a `connect` event carries (lower case).
    pub(crate) forward_headers: Vec<String>,
    /// How long before a connect backend's `expire_at` a `refresh` backend is asked.
    pub(crate) refresh_lead: Duration,
    /// How long a request may take, connect included.
    pub(crate) timeout: Duration,
    /// Events per request, and request body bytes (a single larger event still goes alone).
    pub(crate) batch_max: usize,
    pub(crate) batch_bytes: usize,
    /// Requests in flight per shard (its keep-alive connections).
    pub(crate) max_in_flight: usize,
    /// Events waiting per shard while those are busy; more are refused at once.
    pub(crate) queue_max: usize,
    /// Response head and body caps.
    pub(crate) max_response: usize,
    /// The HMAC-SHA256 key of `X-Ringcast-Signature`.
    pub(crate) secret: Option<String>,
    pub(crate) breaker: crate::upstream::breaker::BreakerConfig,
}

const KEYS: &str = "name, url, events, timeout, batch_max, batch_bytes, max_in_flight, queue_max, \
     max_response, forward_headers, refresh_lead, secret, breaker_failures, breaker_ratio, breaker_min_calls, \
     breaker_window, breaker_open, breaker_max_open, breaker_probes";

/// `http://HOST[:PORT][/PATH]`: the address (resolved now), the Host header and the path.
fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("url {url:?}: only http:// backends are supported (put TLS termination beside the backend)")
    })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() || path.contains([' ', '#', '\r', '\n']) || !path.is_ascii() {
        return Err(format!("url {url:?}: expected http://HOST[:PORT][/PATH]"));
    }
    let with_port =
        if hostport.rsplit_once(':').is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            && !hostport.ends_with(']')
        {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("url {url:?}: cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("url {url:?}: {hostport} resolves to no address"))?;
    Ok((addr, hostport.to_string(), path.to_string()))
}

/// Reads the `upstreams` array of tables of `file`.
pub(crate) fn parse_upstreams(
    v: &toml::Value,
    file: &str,
) -> Result<Vec<UpstreamRule>, ConfigError> {
    let err = |i: usize, m: String| ConfigError(format!("{file}: [[upstreams]] #{}: {m}", i + 1));
    let tables = v.as_array().ok_or_else(|| {
        ConfigError(format!("{file}: `upstreams` must be an array of tables ([[upstreams]])"))
    })?;
    let mut out: Vec<UpstreamRule> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let t = t.as_table().ok_or_else(|| err(i, "must be a table".into()))?;
        let mut name = None;
        let mut url = None;
        let mut events = Vec::new();
        let mut lead_given = false;
        let mut r = UpstreamRule {
            name: String::new(),
            url: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 80)),
            host: String::new(),
            path: String::new(),
            events: Vec::new(),
            forward_headers: Vec::new(),
            refresh_lead: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
            batch_max: 128,
            batch_bytes: 1 << 20,
            max_in_flight: 4,
            queue_max: 4096,
            max_response: 1 << 20,
            secret: None,
            breaker: Default::default(),
        };
        for (k, v) in t {
            let text = || match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(n) => Ok(n.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(err(i, format!("`{k}` must be a string or a number"))),
            };
            let list = || -> Result<Vec<String>, ConfigError> {
                v.as_array()
                    .ok_or_else(|| err(i, format!("`{k}` must be an array of strings")))?
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| err(i, format!("`{k}` must be an array of strings")))
                    })
                    .collect()
            };
            let count = |min: usize| -> Result<usize, ConfigError> {
                let s = text()?;
                match s.parse::<usize>() {
                    Ok(n) if n >= min => Ok(n),
                    _ => Err(err(i, format!("`{k}` = {s:?}: a count of at least {min}"))),
                }
            };
            let duration = || -> Result<Duration, ConfigError> {
                let d = parse_duration(&text()?).map_err(|e| err(i, format!("`{k}`: {e}")))?;
                if d < Duration::from_millis(1) {
                    return Err(err(i, format!("`{k}` must be at least 1ms")));
                }
                Ok(d)
            };
            let size = || -> Result<usize, ConfigError> {
                let n = parse_size(&text()?).map_err(|e| err(i, format!("`{k}`: {e}")))?;
                if !(1024..=1 << 30).contains(&n) {
                    return Err(err(i, format!("`{k}` must be 1KiB..1GiB")));
                }
                Ok(n as usize)
            };
            match k.replace('-', "_").as_str() {
                "name" => name = Some(text()?),
                "url" => url = Some(text()?),
                "events" => {
                    for e in list()? {
                        events.push(EventRule::parse(&e).map_err(|m| err(i, m))?);
                    }
                }
                "timeout" => r.timeout = duration()?,
                "batch_max" => r.batch_max = count(1)?,
                "batch_bytes" => r.batch_bytes = size()?,
                "max_in_flight" => r.max_in_flight = count(1)?,
                "queue_max" => r.queue_max = count(1)?,
                "max_response" => r.max_response = size()?,
                "forward_headers" => {
                    for h in list()? {
                        if h.is_empty()
                            || h.len() > 64
                            || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        {
                            return Err(err(
                                i,
                                format!("forward_headers: {h:?} is not a header name"),
                            ));
                        }
                        r.forward_headers.push(h.to_ascii_lowercase());
                    }
                }
                "refresh_lead" => {
                    r.refresh_lead = duration()?;
                    lead_given = true;
                }
                "secret" => {
                    let s = text()?;
                    if s.len() < 16 {
                        return Err(err(i, "`secret` must be at least 16 bytes".into()));
                    }
                    r.secret = Some(s);
                }
                "breaker_failures" => r.breaker.consecutive = count(1)? as u32,
                "breaker_min_calls" => r.breaker.min_calls = count(1)? as u32,
                "breaker_probes" => r.breaker.probes = count(1)? as u32,
                "breaker_ratio" => {
                    let s = text()?;
                    r.breaker.failure_ratio = match s.parse::<f64>() {
                        Ok(x) if x > 0.0 && x <= 1.0 => x,
                        _ => {
                            return Err(err(
                                i,
                                format!("`breaker_ratio` = {s:?}: a fraction in (0, 1]"),
                            ))
                        }
                    };
                }
                "breaker_window" => r.breaker.window_ms = duration()?.as_millis() as u64,
                "breaker_open" => r.breaker.open_ms = duration()?.as_millis() as u64,
                "breaker_max_open" => r.breaker.max_open_ms = duration()?.as_millis() as u64,
                _ => return Err(err(i, format!("unknown key `{k}`; known keys: {KEYS}"))),
            }
        }
        r.name = name.ok_or_else(|| err(i, "`name` is required".into()))?;
        if !ringcast_proto::client::valid_name(&r.name) {
            return Err(err(
                i,
                format!("name {:?}: 1-128 bytes of A-Z a-z 0-9 _ - . : @ /", r.name),
            ));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(err(i, format!("name {:?} is used twice", r.name)));
        }
        let u = url.ok_or_else(|| err(i, "`url` is required".into()))?;
        (r.addr, r.host, r.path) = parse_url(&u).map_err(|m| err(i, m))?;
        r.url = u;
        if events.is_empty() {
            return Err(err(
                i,
                "`events` is required (rpc:*, send, publish:PATTERN, subscribe:PATTERN)".into(),
            ));
        }
        r.events = events;
        if !r.forward_headers.is_empty() && !r.events.contains(&EventRule::Connect) {
            return Err(err(
                i,
                "forward_headers is for a `connect` backend: add \"connect\" to events".into(),
            ));
        }
        if lead_given && !r.events.contains(&EventRule::Refresh) {
            return Err(err(
                i,
                "refresh_lead is for a `refresh` backend: add \"refresh\" to events".into(),
            ));
        }
        if r.breaker.max_open_ms < r.breaker.open_ms {
            return Err(err(i, "`breaker_max_open` must be at least `breaker_open`".into()));
        }
        out.push(r);
    }
    Ok(out)
}

/// How an upstream shows in `check-config` (the secret is not shown).
pub(crate) fn describe(r: &UpstreamRule) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let events: Vec<String> = r.events.iter().map(|e| quote(&e.name())).collect();
    let mut v = format!(
        "name = {}\nurl = {}\nevents = [{}]\ntimeout = \"{}ms\"\nbatch_max = {}\nbatch_bytes = {}\n\
         max_in_flight = {}\nqueue_max = {}\nmax_response = {}\nforward_headers = [{}]\nrefresh_lead = \"{}ms\"",
        quote(&r.name),
        quote(&r.url),
        events.join(", "),
        r.timeout.as_millis(),
        r.batch_max,
        r.batch_bytes,
        r.max_in_flight,
        r.queue_max,
        r.max_response,
        r.forward_headers.iter().map(|h| quote(h)).collect::<Vec<_>>().join(", "),
        r.refresh_lead.as_millis(),
    );
    if r.secret.is_some() {
        v.push_str("\nsecret = \"<set>\"");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Result<Vec<UpstreamRule>, ConfigError> {
        let t: toml::Table = text.parse().unwrap();
        parse_upstreams(&t["upstreams"], "f.toml")
    }

    #[test]
    fn upstreams_read_with_their_defaults() {
        let r = rules(
            "[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:9000/ringcast\"\n\
             events = [\"rpc:*\", \"send\", \"publish:rooms.*\", \"subscribe:rooms.*\"]\n\
             timeout = \"250ms\"\nbatch_max = 1\n\
             secret = \"0123456789abcdef\"\nbreaker_open = \"2s\"\n\
             [[upstreams]]\nname = \"b\"\nurl = \"http://localhost:81\"\nevents = [\"rpc\"]\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!((r[0].host.as_str(), r[0].path.as_str()), ("127.0.0.1:9000", "/ringcast"));
        assert_eq!(
            r[0].events,
            vec![
                EventRule::Rpc("*".into()),
                EventRule::Send,
                EventRule::Publish("rooms.*".into()),
                EventRule::Subscribe("rooms.*".into())
            ]
        );
        assert_eq!((r[0].timeout, r[0].batch_max), (Duration::from_millis(250), 1));
        assert_eq!(r[0].breaker.open_ms, 2000);
        assert_eq!((r[1].path.as_str(), r[1].addr.port(), r[1].batch_max), ("/", 81, 128));
        assert_eq!(r[1].events, vec![EventRule::Rpc("*".into())]);
        assert!(describe(&r[0]).contains("secret = \"<set>\""));
        assert!(!describe(&r[0]).contains("0123456789abcdef"));
    }

    #[test]
    fn bad_tables_name_themselves() {
        let base = "[[upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\n";
        for (bad, says) in [
            (base.to_string(), "`events` is required"),
            (format!("{base}events = [\"fly\"]\n"), "unknown event \"fly\""),
            (format!("{base}events = [\"send\"]\nrefresh_lead = \"5s\"\n"), "add \"refresh\""),
            (
                format!("{base}events = [\"send\"]\nforward_headers = [\"Cookie\"]\n"),
                "add \"connect\"",
            ),
            (format!("{base}events = [\"rpc:a b\"]\n"), "pattern"),
            (format!("{base}events = [\"send\"]\ntimeout = \"0ms\"\n"), "at least 1ms"),
            (format!("{base}events = [\"send\"]\nbatch_max = 0\n"), "at least 1"),
            (format!("{base}events = [\"send\"]\nsecret = \"short\"\n"), "16 bytes"),
            (
                format!("{base}events = [\"connect\"]\nforward_headers = [\"Co okie\"]\n"),
                "not a header name",
            ),
            (format!("{base}events = [\"send\"]\nbreaker_ratio = 2\n"), "fraction"),
            (format!("{base}events = [\"send\"]\ncolour = 2\n"), "unknown key `colour`"),
            (
                "[[upstreams]]\nname = \"a\"\nurl = \"https://x/\"\nevents = [\"send\"]\n".into(),
                "only http://",
            ),
            (
                "[[upstreams]]\nurl = \"http://127.0.0.1:1/\"\nevents = [\"send\"]\n".into(),
                "`name` is required",
            ),
            (format!("{base}events = [\"send\"]\n{base}events = [\"send\"]\n"), "used twice"),
            ("upstreams = 1\n".into(), "array of tables"),
        ] {
            let e = rules(&bad).unwrap_err().0;
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("[[upstreams]]") || e.contains("upstreams"), "{e}");
        }
    }
}
