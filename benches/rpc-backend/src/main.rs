//! A backend for ringcast's `rpc` benchmark (benches/rpc.sh): a keep-alive HTTP/1.1 server that
//! answers every event of a request at once with `{"data": <the event's data>}`. One thread per
//! connection (ringcast opens `max_in_flight` per shard). Counts requests and events, printed
//! on stderr each second and served at `GET /stats`.
//!
//!   rpc-backend 127.0.0.1:19200 [delay-ms]
//!
//! With `delay-ms` each request is answered after that long (a slow or stalled backend).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    events: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).map(String::as_str).unwrap_or("127.0.0.1:19200");
    let delay = Duration::from_millis(args.get(2).and_then(|d| d.parse().ok()).unwrap_or(0));
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    eprintln!("rpc-backend on http://{addr} (delay {delay:?})");
    let stats = Arc::new(Stats::default());
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let stats = stats.clone();
        std::thread::spawn(move || serve(s, &stats, delay));
    }
}

#[derive(serde::Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    events: Vec<Event<'a>>,
}

#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn serve(mut s: TcpStream, stats: &Stats, delay: Duration) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let (head, len, path_stats) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0usize);
                    break (n, len, req.path == Some("/stats"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        while buf.len() < head + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        let out = if path_stats {
            format!(
                "{{\"requests\":{},\"events\":{}}}",
                stats.requests.load(Relaxed),
                stats.events.load(Relaxed)
            )
            .into_bytes()
        } else {
            let body: Body<'_> = match serde_json::from_slice(&buf[head..head + len]) {
                Ok(b) => b,
                Err(_) => return,
            };
            stats.requests.fetch_add(1, Relaxed);
            stats.events.fetch_add(body.events.len() as u64, Relaxed);
            let mut out = Vec::with_capacity(len + 64);
            out.extend_from_slice(b"{\"results\":[");
            for (i, e) in body.events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"data\":");
                out.extend_from_slice(e.data.map_or("null", |d| d.get()).as_bytes());
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
            out
        };
        buf.drain(..head + len);
        if !delay.is_zero() && !path_stats {
            std::thread::sleep(delay);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            out.len()
        );
        if s.write_all(head.as_bytes()).and_then(|_| s.write_all(&out)).is_err() {
            return;
        }
    }
}
