#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: test code: a panic is the failure report, and tests time themselves
//! The server on real sockets: two shards on loopback, driven by a blocking client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{raw_exchange, upgrade_request, Client, Frame, Server};
use ringcast::proto::frame::encode_frame;
use ringcast::proto::OpCode;

#[test]
fn echo_text_binary_and_fragments() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr, "/echo");
    c.text("hello κόσμε");
    assert_eq!(c.recv(), Frame::Text("hello κόσμε".into()));
    c.send(OpCode::Binary, &[0, 1, 2, 255]);
    assert_eq!(c.recv(), Frame::Binary(vec![0, 1, 2, 255]));
    // Fragmented, with a ping in the middle: the pong comes first, then the whole message.
    let mut wire = Vec::new();
    encode_frame(&mut wire, OpCode::Text, false, Some([9, 9, 9, 9]), b"frag");
    encode_frame(&mut wire, OpCode::Ping, true, Some([9, 9, 9, 9]), b"pp");
    encode_frame(&mut wire, OpCode::Continuation, true, Some([9, 9, 9, 9]), b"mented");
    c.send_raw(&wire);
    assert_eq!(c.recv(), Frame::Pong(b"pp".to_vec()));
    assert_eq!(c.recv(), Frame::Text("fragmented".into()));
    // A message bigger than the socket buffers, so writes block and resume.
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..20 {
        c.send(OpCode::Binary, &big);
    }
    for _ in 0..20 {
        assert_eq!(c.recv(), Frame::Binary(big.clone()));
    }
    c.send(OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(c.recv_close(), (Some(1000), String::new()));
    c.expect_eof();
}

#[test]
fn echo_also_works_on_the_epoll_driver() {
    let s = Server::start(&["--io-driver", "epoll"]);
    assert!(s.log().contains("driver=\"epoll\""), "{}", s.log());
    let mut c = Client::connect(s.addr, "/echo");
    c.text("over epoll");
    assert_eq!(c.recv(), Frame::Text("over epoll".into()));
}

#[test]
fn ping_pong_and_the_application_heartbeat() {
    let s = Server::start(&[]);
    let mut c = Client::connect(s.addr, "/ws");
    c.send(OpCode::Ping, b"are you there");
    assert_eq!(c.recv(), Frame::Pong(b"are you there".to_vec()));
    c.text("ping");
    assert_eq!(c.recv(), Frame::Text("pong".into()));
}

#[test]
fn each_malformed_handshake_gets_its_status() {
    let s =
        Server::start(&["--allowed-origins", "https://app.example", "--max-header-bytes", "1KiB"]);
    let ok = upgrade_request("/echo", "");
    let cases: Vec<(String, &str, &str)> = vec![
        ("GARBAGE\r\n\r\n".into(), "400 Bad Request", "malformed request"),
        (ok.replace("GET", "POST"), "405 Method Not Allowed", "Allow: GET"),
        (ok.replace("HTTP/1.1", "HTTP/1.0"), "505 HTTP Version Not Supported", "HTTP/1.1 required"),
        (ok.replace("Host: localhost\r\n", ""), "400 Bad Request", "Host"),
        (
            ok.replace("Upgrade: websocket", "Upgrade: h2c"),
            "426 Upgrade Required",
            "Upgrade: websocket",
        ),
        (ok.replace("Connection: Upgrade", "Connection: close"), "400 Bad Request", "Connection"),
        (
            ok.replace("Version: 13", "Version: 7"),
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13",
        ),
        (
            ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "bm90IDE2"),
            "400 Bad Request",
            "Sec-WebSocket-Key",
        ),
        (ok.replace("/echo", "/nowhere"), "404 Not Found", "no such endpoint"),
        (
            upgrade_request("/echo", "Origin: https://evil.example\r\n"),
            "403 Forbidden",
            "origin not allowed",
        ),
        (
            upgrade_request("/echo", &format!("X-Pad: {}\r\n", "a".repeat(2000))),
            "431 Request Header Fields Too Large",
            "too large",
        ),
    ];
    for (req, status, detail) in cases {
        let resp = raw_exchange(s.addr, req.as_bytes());
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{req:?} -> {resp:?}");
        assert!(resp.contains(detail), "{req:?} -> {resp:?}");
        assert!(resp.contains("Connection: close\r\n"), "{resp:?}");
    }
    // An allowed origin upgrades.
    Client::try_connect(s.addr, "/echo", "Origin: https://APP.example\r\n").unwrap();
}

#[test]
fn limits_refuse_with_503_and_429_before_the_upgrade() {
    let s = Server::start(&["--max-connections", "3"]);
    let _held: Vec<Client> = (0..3).map(|_| Client::connect(s.addr, "/ws")).collect();
    let refused = Client::try_connect(s.addr, "/ws", "").err().expect("4th must be refused");
    assert!(refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{refused}");
    drop(_held);
    std::thread::sleep(Duration::from_millis(300));
    Client::connect(s.addr, "/ws");

    let s = Server::start(&["--max-connections-per-ip", "2"]);
    let _a = Client::connect(s.addr, "/ws");
    let _b = Client::connect(s.addr, "/ws");
    let refused = Client::try_connect(s.addr, "/ws", "").err().expect("3rd from one IP refused");
    assert!(refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{refused}");
}

#[test]
fn a_slow_handshake_is_dropped_at_the_deadline_and_counted() {
    let mut s = Server::start(&["--handshake-timeout", "300ms"]);
    let mut sock = TcpStream::connect(s.addr).unwrap();
    sock.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "dropped without a response");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "{took:?}");
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(5)).unwrap().success());
    assert_eq!(s.total("handshake_timeouts"), 1);
}

/// Sends `wire` after the upgrade and returns the close code the server answers with.
fn close_code_for(s: &Server, wire: &[u8]) -> Option<u16> {
    let mut c = Client::connect(s.addr, "/echo");
    c.send_raw(wire);
    let (code, _) = c.recv_close();
    c.expect_eof();
    code
}

fn masked(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(&mut v, op, fin, Some([7, 7, 7, 7]), payload);
    v
}

#[test]
fn each_protocol_violation_gets_its_close_code() {
    let s = Server::start(&["--max-message-size", "1KiB", "--max-frame-size", "1KiB"]);
    let mut unmasked = Vec::new();
    encode_frame(&mut unmasked, OpCode::Text, true, None, b"hi");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked client frame", unmasked, 1002),
        ("reserved opcode", vec![0x83, 0x80, 1, 2, 3, 4], 1002),
        ("rsv bit without extension", vec![0xC1, 0x80, 1, 2, 3, 4], 1002),
        ("fragmented ping", masked(OpCode::Ping, false, b""), 1002),
        ("ping over 125 bytes", masked(OpCode::Ping, true, &[0; 126]), 1002),
        ("continuation without start", masked(OpCode::Continuation, true, b"x"), 1002),
        (
            "new message inside a fragmented one",
            [masked(OpCode::Text, false, b"a"), masked(OpCode::Text, true, b"b")].concat(),
            1002,
        ),
        ("invalid utf-8", masked(OpCode::Text, true, &[0xce, 0xba, 0xff]), 1007),
        (
            "invalid utf-8 across fragments",
            [masked(OpCode::Text, false, &[0xce]), masked(OpCode::Continuation, true, &[0x41])]
                .concat(),
            1007,
        ),
        ("close code 1005", masked(OpCode::Close, true, &1005u16.to_be_bytes()), 1002),
        ("close payload of one byte", masked(OpCode::Close, true, &[3]), 1002),
        ("close reason not utf-8", masked(OpCode::Close, true, &[3, 232, 0xff]), 1007),
        ("frame over the cap", masked(OpCode::Binary, true, &[0; 2000]), 1009),
        (
            "message over the cap",
            [
                masked(OpCode::Binary, false, &[0; 600]),
                masked(OpCode::Continuation, true, &[0; 600]),
            ]
            .concat(),
            1009,
        ),
    ];
    for (what, wire, code) in cases {
        assert_eq!(close_code_for(&s, &wire), Some(code), "{what}");
    }
}

#[test]
fn a_client_that_stops_answering_is_evicted() {
    let mut s = Server::start(&["--ping-interval", "300ms", "--pong-timeout", "300ms"]);
    // This client answers pings: it stays.
    let mut alive = Client::connect(s.addr, "/ws");
    // This one reads but never answers.
    let mut dead = Client::connect(s.addr, "/ws");
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        assert_eq!(dead.recv(), Frame::Ping(vec![]));
        assert_eq!(dead.recv_close(), (Some(1001), "pong timeout".into()));
        dead.expect_eof();
        start.elapsed()
    });
    for _ in 0..4 {
        assert_eq!(alive.recv(), Frame::Ping(vec![]));
        alive.send(OpCode::Pong, b"");
    }
    let took = watcher.join().unwrap();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "{took:?}");
    alive.text("ping");
    assert_eq!(alive.recv(), Frame::Text("pong".into()));
    s.signal(libc::SIGTERM);
    assert_eq!(alive.recv_close().0, Some(1001));
    alive.send(OpCode::Close, &1001u16.to_be_bytes());
    assert!(s.wait(Duration::from_secs(5)).is_some());
    assert_eq!(s.total("pong_timeouts"), 1);
}

#[test]
fn a_client_that_sends_no_message_is_closed_after_the_idle_timeout() {
    let s = Server::start(&["--idle-timeout", "500ms", "--ping-interval", "0"]);
    let mut c = Client::connect(s.addr, "/ws");
    let start = Instant::now();
    assert_eq!(c.recv_close(), (Some(1000), "idle timeout".into()));
    assert!(start.elapsed() >= Duration::from_millis(400));
    c.send(OpCode::Close, &1000u16.to_be_bytes());
    c.expect_eof();
}

#[test]
fn shutdown_closes_every_client_with_1001_and_exits_0() {
    let mut s = Server::start(&[]);
    let mut clients: Vec<Client> = (0..40).map(|_| Client::connect(s.addr, "/ws")).collect();
    // Connections landed on both shards.
    std::thread::sleep(Duration::from_millis(100));
    s.signal(libc::SIGTERM);
    for c in clients.iter_mut() {
        assert_drain_close(c.recv_close());
        c.send(OpCode::Close, &1001u16.to_be_bytes());
        c.expect_eof();
    }
    let status = s.wait(Duration::from_secs(5)).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    let log = s.log();
    for shard in 0..2 {
        let line = log
            .lines()
            .find(|l| l.contains("draining") && l.contains(&format!("shard={shard}")))
            .unwrap_or_else(|| panic!("no drain line for shard {shard}: {log}"));
        let n: usize = line.rsplit("connections=").next().unwrap().trim().parse().unwrap();
        assert!(n > 0, "shard {shard} held no connection: {line}");
    }
    assert_eq!(s.total("upgrades"), 40);
    assert_eq!(s.total("closed_by_server"), 40);
    // New connections are refused once draining: the listener is gone.
    assert!(TcpStream::connect(s.addr).is_err());
}

#[test]
fn the_drain_deadline_bounds_shutdown_and_a_second_signal_exits_at_once() {
    let mut s = Server::start(&["--drain-timeout", "500ms"]);
    let mut c = Client::connect(s.addr, "/ws");
    s.signal(libc::SIGTERM);
    assert_drain_close(c.recv_close());
    // Never answer: the drain deadline closes us and the process still exits 0.
    let start = Instant::now();
    assert!(s.wait(Duration::from_secs(5)).expect("exits").success());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(s.total("drain_forced"), 1);

    let mut s = Server::start(&["--drain-timeout", "30s"]);
    let mut c = Client::connect(s.addr, "/ws");
    s.signal(libc::SIGTERM);
    assert_drain_close(c.recv_close());
    s.signal(libc::SIGINT);
    let status = s.wait(Duration::from_secs(2)).expect("second signal exits at once");
    assert_eq!(status.code(), Some(1));
}

#[test]
fn a_second_server_on_the_same_port_fails_clearly() {
    let s = Server::start(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", &s.addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn bad_configuration_is_refused_with_the_flag_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--max-header-bytes", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-header-bytes"));
}

#[test]
fn a_stopped_server_frees_its_ports_for_an_immediate_restart() {
    let mut s = Server::start(&[]);
    let (ws, api) = (s.addr.to_string(), s.api.to_string());
    s.signal(libc::SIGTERM);
    assert!(s.wait(Duration::from_secs(5)).expect("exits").success());
    // Both listeners, the WebSocket one and the API's, are gone with the process.
    let mut again = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", &ws, "--api-listen", &api, "--shards", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let early = again.try_wait().unwrap();
    let _ = again.kill();
    let out = again.wait_with_output().unwrap();
    assert!(early.is_none(), "restart failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A drain's close: 1001 with `{"retry_ms":N,"reason":"server shutting down"}`, N in 1-3 s.
fn assert_drain_close((code, reason): (Option<u16>, String)) {
    assert_eq!(code, Some(1001), "{reason}");
    let v: serde_json::Value = serde_json::from_str(&reason).expect("a JSON reason");
    assert_eq!(v["reason"], "server shutting down");
    let ms = v["retry_ms"].as_u64().expect("retry_ms");
    assert!((1000..=3000).contains(&ms), "{ms}");
}
