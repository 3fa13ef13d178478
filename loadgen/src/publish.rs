//! A blocking HTTP/1.1 keep-alive client for the publish side of `fanout` and `push`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `http://host:port/path`, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

pub fn parse_url(s: &str) -> Result<Url, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| format!("{s:?}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?}: no address"))?;
    Ok(Url { addr, host: host.to_string(), path: path.to_string() })
}

pub struct Publisher {
    url: Url,
    auth: Option<String>,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Publisher {
    pub fn new(url: Url, api_key: Option<String>) -> Publisher {
        Publisher {
            url,
            auth: api_key,
            timeout: Duration::from_secs(30),
            stream: None,
            buf: Vec::new(),
        }
    }

    /// How long a connect or an answer may take (30 s unless set).
    pub fn with_timeout(mut self, d: Duration) -> Publisher {
        self.timeout = d;
        self
    }

    fn connect(&mut self) -> Result<&mut TcpStream, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(
                &self.url.addr,
                self.timeout.min(Duration::from_secs(5)),
            )
            .map_err(|e| format!("cannot reach the publish URL {}: {e}", self.url.addr))?;
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(self.timeout)).ok();
            self.stream = Some(s);
        }
        self.stream.as_mut().ok_or_else(|| "no connection".to_string())
    }

    /// POSTs `body` and returns the status and the response body; reconnects once.
    pub fn post(&mut self, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        self.request("POST", body)
    }

    /// GETs the URL (the history API, for `resume`).
    pub fn get(&mut self) -> Result<(u16, Vec<u8>), String> {
        self.request("GET", b"")
    }

    fn request(&mut self, method: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        match self.try_request(method, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.stream = None;
                self.try_request(method, body)
            }
        }
    }

    fn try_request(&mut self, method: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let auth = self
            .auth
            .as_ref()
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n",
            self.url.path,
            self.url.host,
            body.len()
        );
        let s = self.connect()?;
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).map_err(|e| e.to_string())?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status =
                    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let s = self.stream.as_mut().ok_or("no connection")?;
                    let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("connection closed mid-response".into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                if head.contains("connection: close") {
                    self.stream = None;
                }
                return Ok((status, self.buf[end + 4..end + 4 + len].to_vec()));
            }
            let s = self.stream.as_mut().ok_or("no connection")?;
            let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before a response".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A payload of exactly `size` bytes (when `size` allows): `{"i":I,"t":T,"u":U,"p":"xxx"}`.
pub fn payload(i: u64, t: u64, user: Option<u64>, size: usize) -> String {
    let mut s = match user {
        Some(u) => format!(r#"{{"i":{i},"t":{t},"u":{u},"p":""#),
        None => format!(r#"{{"i":{i},"t":{t},"p":""#),
    };
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_payloads() {
        let u = parse_url("http://127.0.0.1:8081/v1/publish").unwrap();
        assert_eq!((u.addr.port(), u.path.as_str()), (8081, "/v1/publish"));
        assert!(parse_url("https://x/").is_err());
        let p = payload(12, 3456, None, 64);
        assert_eq!(p.len(), 64);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!((v["i"].as_u64(), v["t"].as_u64()), (Some(12), Some(3456)));
        assert!(
            payload(1, 1, Some(5), 10).contains("\"u\":5"),
            "a small size still gives valid fields"
        );
    }
}
