//! The I/O of backend calls: one monoio task per request on the shard's runtime, over a
//! keep-alive pool per backend per shard, with the `http` codec. A small client of our own
//! rather than monoio-http's: it is the shard model exactly (no task or buffer per idle
//! connection, the pool is a `Vec` of sockets), and every cap and timeout is ours.
//!
//! Retries: only what surely never reached the backend. A pooled connection is checked
//! before use (a backend that closed it while idle leaves an end of stream to peek); a
//! refused connect is tried once more; a write that fails means the backend never had the
//! whole request. Nothing is retried once the request was written: a timeout or a connection
//! lost while waiting may have acted on it.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use sha2::Sha256;

use super::http::{encode_request, ResponseParser};
use super::CallResult;
use crate::config::UpstreamRule;

/// Idle keep-alive connections of one backend on one shard.
#[derive(Default)]
pub(crate) struct Pool {
    idle: RefCell<Vec<TcpStream>>,
}

impl Pool {
    fn take(&self) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        while let Some(s) = idle.pop() {
            if ringcast_sys::idle_reusable(s.as_raw_fd()) {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, s: TcpStream, cap: usize) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < cap {
            idle.push(s);
        }
    }
}

/// `sha256=HEX` of the body's HMAC-SHA256 under `secret`.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length
    };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The bytes of the POST carrying `body`, signed when the backend has a secret.
pub(crate) fn request_bytes(rule: &UpstreamRule, node: &str, body: &[u8]) -> Vec<u8> {
    let sig = rule.secret.as_deref().map(|s| signature(s, body));
    let mut headers: Vec<(&str, &str)> = vec![("X-Ringcast-Node", node)];
    if let Some(sig) = &sig {
        headers.push(("X-Ringcast-Signature", sig));
    }
    let mut out = Vec::new();
    encode_request(&mut out, &rule.host, &rule.path, &headers, body);
    out
}

/// Makes one call within the backend's timeout.
pub(crate) async fn call(rule: Arc<UpstreamRule>, pool: Rc<Pool>, bytes: Vec<u8>) -> CallResult {
    match monoio::time::timeout(rule.timeout, attempt(&rule, &pool, bytes)).await {
        Ok(r) => r,
        Err(_) => CallResult::Timeout,
    }
}

async fn connect(rule: &UpstreamRule) -> Result<TcpStream, String> {
    let mut last = String::new();
    for _ in 0..2 {
        match TcpStream::connect(rule.addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            // Refused: nothing reached the backend; once more, then give up.
            Err(e) => last = format!("cannot connect to {}: {e}", rule.addr),
        }
    }
    Err(last)
}

async fn attempt(rule: &UpstreamRule, pool: &Pool, bytes: Vec<u8>) -> CallResult {
    let mut bytes = bytes;
    let mut fresh_tried = false;
    let mut stream = match pool.take() {
        Some(s) => s,
        None => {
            fresh_tried = true;
            match connect(rule).await {
                Ok(s) => s,
                Err(e) => return CallResult::Transport(e),
            }
        }
    };
    loop {
        let (res, back) = stream.write_all(bytes).await;
        bytes = back;
        match res {
            Ok(_) => break,
            // The backend never had the whole request: a pooled connection that went stale
            // between the peek and the write gets one fresh try.
            Err(_) if !fresh_tried => {
                fresh_tried = true;
                stream = match connect(rule).await {
                    Ok(s) => s,
                    Err(e) => return CallResult::Transport(e),
                };
            }
            Err(e) => return CallResult::Transport(format!("write to {}: {e}", rule.addr)),
        }
    }
    let mut parser = ResponseParser::new(16 * 1024, rule.max_response);
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let (res, back) = stream.read(buf).await;
        buf = back;
        let n = match res {
            Ok(n) => n,
            Err(e) => return CallResult::Transport(format!("read from {}: {e}", rule.addr)),
        };
        if n == 0 {
            return match parser.eof() {
                Ok(r) => CallResult::Response { status: r.status, body: r.body },
                Err(e) => CallResult::Transport(format!("{}: {e}", rule.addr)),
            };
        }
        match parser.feed(&buf[..n]) {
            Ok(None) => {}
            Ok(Some(r)) => {
                if r.keep_alive {
                    pool.put(stream, rule.max_in_flight);
                }
                return CallResult::Response { status: r.status, body: r.body };
            }
            Err(e) => return CallResult::Transport(format!("{}: {e}", rule.addr)),
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
