//! Test support: a ringcast process on a loopback port and a small blocking WebSocket client
//! built on ringcast's own codec in the client role.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)] // reason: shared by several test crates; a panic is the failure report; tests time themselves

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcast::proto::frame::encode_frame;
use ringcast::proto::{Decoder, Event, Limits, OpCode, Role};

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub api: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts ringcast with 2 shards on 127.0.0.1:0 plus `args`, and waits until it listens.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--shards", "2"])
            .args(["--log-level", "info"])
            // Durable streams in memory unless the test names a data directory of its own.
            .args(if args.contains(&"--data-dir") { &[][..] } else { &["--data-dir", "none"][..] })
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringcast");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for marker in ["listening on ws://", "API on http://"] {
                    if let Some(i) = line.find(marker) {
                        let rest = &line[i + marker.len()..];
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let a = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("ringcast did not start: {:?}", log.lock().unwrap()));
            addrs.push(a.parse::<SocketAddr>().expect("address"));
        }
        Server { child, addr: addrs[0], api: addrs[1], log }
    }

    /// An API request; returns the status, the head and the body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> (u16, String, String) {
        http(self.api, method, path, headers, body)
    }

    /// POSTs JSON to the API and returns status and parsed body.
    pub fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, _, text) = self.http("POST", path, "", body.to_string().as_bytes());
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, _, text) = self.http("GET", path, "", b"");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// Like `wait_for`, with extra header lines (an API key).
    pub fn wait_for_auth(
        &self,
        path: &str,
        headers: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, _, text) = self.http("GET", path, headers, b"");
            let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting on {path}: last {v}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (up to 5 s) until `GET path` answers a body for which `ok` holds.
    pub fn wait_for(
        &self,
        path: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, v) = self.get(path);
            if ok(&v) {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting on {path}: last {v}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address a start-up log line gives after `marker` (`listening on wss://`), waiting
    /// up to 5 s for it.
    pub fn logged_addr(&self, marker: &str) -> SocketAddr {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if let Some(i) = log.find(marker) {
                let rest = &log[i + marker.len()..];
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            assert!(Instant::now() < end, "no {marker:?} in the log: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many descriptors the server process holds open, not counting the API's own
    /// connections (their closes are asynchronous and would race a test's own queries).
    pub fn open_fds(&self) -> usize {
        let pid = self.child.id();
        let api_port = format!(":{:04X}", self.api.port());
        let mut api_inodes = std::collections::HashSet::new();
        for table in ["tcp", "tcp6"] {
            let text =
                std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                // local_address is f[1] (ADDR:PORT in hex), st is f[3] (0A = LISTEN), inode f[9].
                if f.len() > 9 && f[1].ends_with(&api_port) && f[3] != "0A" {
                    api_inodes.insert(format!("socket:[{}]", f[9]));
                }
            }
        }
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd")
            .filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map_or(true, |l| !api_inodes.contains(&*l.to_string_lossy()))
            })
            .count()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes no pointers; the pid is our live child's.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Let the log reader catch up with the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The value of `name=N` in the final "stopped:" summary line.
    pub fn total(&self, name: &str) -> u64 {
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains("stopped:")).expect("summary line");
        let key = format!(" {name}=");
        let i = line.find(&key).unwrap_or_else(|| panic!("{name} not in {line}"));
        line[i + key.len()..].split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns status, head and
/// body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// What the client read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
    /// The server closed the TCP connection.
    Eof,
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    dec: Decoder,
    msg: Vec<u8>,
    /// The `welcome` message a push endpoint (`/ws…`) sends first.
    pub welcome: Option<serde_json::Value>,
}

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Sends raw bytes and returns everything the server sends back before closing (or 5 s).
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::try_connect(addr, path, "").unwrap_or_else(|resp| panic!("upgrade refused: {resp}"))
    }

    /// Upgrades with extra header lines; `Err(response head)` if the server refuses.
    pub fn try_connect(addr: SocketAddr, path: &str, extra: &str) -> Result<Client, String> {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(upgrade_request(path, extra).as_bytes()).expect("write");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).expect("read handshake");
            if n == 0 {
                return Err(String::from_utf8_lossy(&buf).into_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        buf.drain(..head_end);
        let mut c =
            Client { stream, buf, dec: Decoder::new(Role::Client), msg: Vec::new(), welcome: None };
        if path.starts_with("/ws") {
            match c.recv() {
                Frame::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).expect("welcome is JSON");
                    assert_eq!(v["type"], "welcome", "{t}");
                    c.welcome = Some(v);
                }
                other => panic!("expected a welcome, got {other:?}"),
            }
        }
        Ok(c)
    }

    /// The connection id from the welcome.
    pub fn id(&self) -> String {
        self.welcome.as_ref().and_then(|w| w["conn"].as_str()).expect("welcome").to_string()
    }

    /// Reads the next text frame as JSON (skipping pings).
    pub fn json(&mut self) -> serde_json::Value {
        loop {
            match self.recv() {
                Frame::Text(t) => return serde_json::from_str(&t).expect("JSON"),
                Frame::Ping(_) => {}
                other => panic!("expected a JSON text frame, got {other:?}"),
            }
        }
    }

    pub fn send(&mut self, op: OpCode, payload: &[u8]) {
        let mut v = Vec::new();
        encode_frame(&mut v, op, true, Some([1, 2, 3, 4]), payload);
        self.stream.write_all(&v).expect("send");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn text(&mut self, s: &str) {
        self.send(OpCode::Text, s.as_bytes());
    }

    /// Reads the next frame (whole messages), or Eof.
    pub fn recv(&mut self) -> Frame {
        let limits = Limits { max_frame: 1 << 30, max_message: 1 << 30 };
        loop {
            let mut consumed = 0;
            let mut out = None;
            match self.dec.decode(&mut self.buf, &limits) {
                Ok(Some((ev, n))) => {
                    consumed = n;
                    out = match ev {
                        Event::Data { text, payload, first, last } => {
                            if first {
                                self.msg.clear();
                            }
                            self.msg.extend_from_slice(payload);
                            last.then(|| {
                                let m = std::mem::take(&mut self.msg);
                                if text {
                                    Frame::Text(String::from_utf8(m).unwrap())
                                } else {
                                    Frame::Binary(m)
                                }
                            })
                        }
                        Event::Ping(p) => Some(Frame::Ping(p.to_vec())),
                        Event::Pong(p) => Some(Frame::Pong(p.to_vec())),
                        Event::Close(c, r) => Some(Frame::Close(c.map(|c| c.0), r.to_string())),
                    };
                }
                Ok(None) => {}
                Err(e) => panic!("server sent a bad frame: {e}"),
            }
            if consumed > 0 {
                self.buf.drain(..consumed);
                if let Some(f) = out {
                    return f;
                }
                continue;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Frame::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Frame::Eof,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads frames, answering nothing, until a close frame; returns its code and reason.
    pub fn recv_close(&mut self) -> (Option<u16>, String) {
        loop {
            match self.recv() {
                Frame::Close(c, r) => return (c, r),
                Frame::Eof => panic!("EOF before a close frame"),
                _ => {}
            }
        }
    }

    /// After a close frame: the server must close the TCP connection.
    pub fn expect_eof(&mut self) {
        loop {
            match self.recv() {
                Frame::Eof => return,
                Frame::Ping(_) | Frame::Pong(_) => {}
                other => panic!("expected EOF, got {other:?}"),
            }
        }
    }
}
