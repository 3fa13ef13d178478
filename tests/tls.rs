//! wss on real sockets: echo and push over TLS 1.3 with a certificate the test makes, SNI
//! choosing between two pairs, SIGHUP swapping the certificate for new handshakes while an old
//! connection keeps working, a bad certificate file refused with the old one kept, and a plain
//! client on the TLS port and a TLS client on the plain port both failing cleanly.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report; tests time themselves

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{upgrade_request, Server};
use ringcast::proto::frame::encode_frame;
use ringcast::proto::{Decoder, Event, Limits, OpCode, Role};
use rustls::pki_types::{CertificateDer, ServerName};

struct Pki {
    dir: PathBuf,
    /// DER of each certificate written, by file stem.
    certs: Vec<(String, CertificateDer<'static>)>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ringcast-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir, certs: Vec::new() }
    }

    /// A self-signed pair for `names`, written as STEM.crt / STEM.key.
    fn pair(&mut self, stem: &str, names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let (c, k) = (self.dir.join(format!("{stem}.crt")), self.dir.join(format!("{stem}.key")));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        self.certs.retain(|(s, _)| s != stem);
        self.certs.push((stem.to_string(), ck.cert.der().clone()));
        (c.display().to_string(), k.display().to_string())
    }

    /// Like `pair`, valid until midnight UTC of the first of January of `year`.
    fn pair_until(&mut self, stem: &str, names: &[&str], year: i32) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (self.dir.join(format!("{stem}.crt")), self.dir.join(format!("{stem}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        self.certs.retain(|(s, _)| s != stem);
        self.certs.push((stem.to_string(), cert.der().clone()));
        (c.display().to_string(), k.display().to_string())
    }

    fn der(&self, stem: &str) -> CertificateDer<'static> {
        self.certs.iter().find(|(s, _)| s == stem).unwrap().1.clone()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wss_addr(s: &Server) -> SocketAddr {
    s.logged_addr("listening on wss://")
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection trusting only `root`, for `name`; `Err` if the handshake fails.
fn tls_connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    name: &str,
) -> Result<Tls, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// A WebSocket client over any stream.
struct Ws<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
    dec: Decoder,
}

impl<S: Read + Write> Ws<S> {
    fn upgrade(mut s: S, path: &str) -> Result<Ws<S>, String> {
        s.write_all(upgrade_request(path, "").as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return Err(String::from_utf8_lossy(&buf).into_owned()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        buf.drain(..end);
        Ok(Ws { s, buf, dec: Decoder::new(Role::Client) })
    }

    fn send(&mut self, op: OpCode, payload: &[u8]) {
        let mut v = Vec::new();
        encode_frame(&mut v, op, true, Some([9, 8, 7, 6]), payload);
        self.s.write_all(&v).unwrap();
        self.s.flush().unwrap();
    }

    /// The next text message.
    fn text(&mut self) -> String {
        let limits = Limits { max_frame: 1 << 24, max_message: 1 << 24 };
        let mut msg = Vec::new();
        loop {
            if let Some((ev, n)) = self.dec.decode(&mut self.buf, &limits).unwrap() {
                let got = match ev {
                    Event::Data { payload, last, .. } => {
                        msg.extend_from_slice(payload);
                        last.then(|| String::from_utf8(std::mem::take(&mut msg)).unwrap())
                    }
                    Event::Close(c, r) => panic!("closed: {c:?} {r}"),
                    _ => None,
                };
                self.buf.drain(..n);
                if let Some(t) = got {
                    return t;
                }
                continue;
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "EOF");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn start(pki: &mut Pki) -> Server {
    let (c1, k1) = pki.pair("one", &["localhost", "one.test"]);
    let (c2, k2) = pki.pair("two", &["two.test"]);
    Server::start(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &format!("{c1},{c2}"),
        "--tls-key",
        &format!("{k1},{k2}"),
    ])
}

#[test]
fn wss_echoes_and_pushes_and_sni_picks_the_pair() {
    let mut pki = Pki::new("basic");
    let s = start(&mut pki);
    let addr = wss_addr(&s);
    let t = tls_connect(addr, &pki.der("one"), "localhost").unwrap();
    assert_eq!(t.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(t.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut echo = Ws::upgrade(t, "/echo").unwrap();
    let big = "x".repeat(60_000);
    for m in ["hello", big.as_str()] {
        echo.send(OpCode::Text, m.as_bytes());
        let got = echo.text();
        assert!(
            got == m,
            "echo over TLS, across many records: {} bytes back of {}",
            got.len(),
            m.len()
        );
    }
    // Push: the welcome, then a message sent through the API.
    let mut ws =
        Ws::upgrade(tls_connect(addr, &pki.der("one"), "one.test").unwrap(), "/ws?user=7").unwrap();
    let w: serde_json::Value = serde_json::from_str(&ws.text()).unwrap();
    assert_eq!(w["type"], "welcome");
    let (st, _) = s.post("/v1/push", serde_json::json!({"user": "7", "data": {"n": 1}}));
    assert_eq!(st, 200);
    let m: serde_json::Value = serde_json::from_str(&ws.text()).unwrap();
    assert_eq!(m["data"]["n"], 1);
    // SNI: two.test gets the second certificate (the first would not verify for it).
    assert!(tls_connect(addr, &pki.der("two"), "two.test").is_ok());
    assert!(tls_connect(addr, &pki.der("one"), "two.test").is_err());
}

#[test]
fn plain_on_the_tls_port_and_tls_on_the_plain_port_fail_cleanly() {
    let mut pki = Pki::new("cross");
    let s = start(&mut pki);
    let addr = wss_addr(&s);
    // A plaintext upgrade to the TLS port: not a TLS record, the connection is closed.
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    assert!(!out.starts_with(b"HTTP/1.1 101"), "no upgrade over plaintext on the TLS port");
    // A TLS client on the plain port: the handshake fails (the server answers 400 in HTTP).
    assert!(tls_connect(s.addr, &pki.der("one"), "localhost").is_err());
    let (_, v) = s.get("/v1/stats");
    assert!(v["totals"]["tls_errors"].as_u64().unwrap() >= 1, "{v}");
    // A clean close ends with the server's close_notify, not a bare TCP close.
    let mut echo =
        Ws::upgrade(tls_connect(addr, &pki.der("one"), "localhost").unwrap(), "/echo").unwrap();
    echo.send(OpCode::Close, &1000u16.to_be_bytes());
    let mut rest = Vec::new();
    let end = echo.s.read_to_end(&mut rest);
    assert!(end.is_ok(), "close_notify before EOF: {end:?}");
    assert!(
        rest.starts_with(&[0x88]) || echo.buf.starts_with(&[0x88]),
        "the close frame came back"
    );
    // And the server is fine.
    let t = tls_connect(addr, &pki.der("one"), "localhost").unwrap();
    let mut echo = Ws::upgrade(t, "/echo").unwrap();
    echo.send(OpCode::Text, b"still here");
    assert_eq!(echo.text(), "still here");
}

#[test]
fn sighup_swaps_the_certificate_for_new_handshakes_only() {
    let mut pki = Pki::new("reload");
    let s = start(&mut pki);
    let addr = wss_addr(&s);
    let old_root = pki.der("one");
    let mut old = Ws::upgrade(tls_connect(addr, &old_root, "localhost").unwrap(), "/echo").unwrap();
    // A broken file: refused, and the old certificate stays.
    let crt = pki.dir.join("one.crt");
    let saved = std::fs::read(&crt).unwrap();
    std::fs::write(&crt, "not a certificate").unwrap();
    s.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(5);
    while !s.log().contains("TLS certificates not reloaded") {
        assert!(Instant::now() < end, "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(tls_connect(addr, &old_root, "localhost").is_ok());
    std::fs::write(&crt, saved).unwrap();
    // The expiry of each leaf, for the certificate-expiry alert (rcgen's default: 4096).
    let expiry = |s: &Server, file: &str| -> i64 {
        let (_, _, text) = s.http("GET", "/metrics", "", b"");
        let series =
            format!("ringcast_tls_certificate_expiry_timestamp_seconds{{cert=\"{file}\"}} ");
        let line =
            text.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("{text}"));
        line[series.len()..].parse().unwrap()
    };
    let one = crt.display().to_string();
    assert_eq!(expiry(&s, &one), 67_090_118_400, "4096-01-01");
    // A new pair under the same file names, valid until 2030.
    pki.pair_until("one", &["localhost"], 2030);
    s.signal(libc::SIGHUP);
    while !s.log().contains("reloaded TLS certificates") {
        assert!(Instant::now() < end, "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(expiry(&s, &one), 1_893_456_000, "2030-01-01");
    assert!(tls_connect(addr, &old_root, "localhost").is_err(), "new handshakes get the new one");
    assert!(tls_connect(addr, &pki.der("one"), "localhost").is_ok());
    old.send(OpCode::Text, b"old connection");
    assert_eq!(old.text(), "old connection", "an open wss connection is not dropped");
}
