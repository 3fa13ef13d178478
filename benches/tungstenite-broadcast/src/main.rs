//! The peer ringcast's fan-out is measured against: a broadcast server written the classic
//! way with tokio-tungstenite. With no third argument it runs on one thread (tokio's
//! current-thread runtime), like ringcast's single shard in the benchmark; with a thread count
//! it runs tokio's multi-thread runtime with that many workers.
//!
//! - WebSocket clients connect on the first address (any path).
//! - `POST /publish` on the second address broadcasts the request body, as a text message,
//!   to every client (`tokio::sync::broadcast`).
//! - Each client's task sends everything the channel holds, then flushes once: the usual
//!   idiom, which coalesces frames when the client falls behind. A client that falls more
//!   than the channel's capacity behind loses messages (`Lagged`), which the server counts.
//!
//! - With a certificate and key (PEM) after the thread count (0: one thread), the WebSocket
//!   address speaks wss instead, through tokio-rustls (TLS 1.3 and 1.2, ring, ALPN http/1.1):
//!   the peer of ringcast's wss benchmarks.
//!
//!   tungstenite-broadcast 127.0.0.1:9080 127.0.0.1:9081 [worker threads] [cert.pem key.pem]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const CHANNEL_CAPACITY: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ws: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| "127.0.0.1:9080".parse().unwrap());
    let api: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).unwrap_or_else(|| "127.0.0.1:9081".parse().unwrap());
    let threads: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let tls = match (args.get(4), args.get(5)) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)),
        _ => None,
    };
    let rt = if threads > 0 {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }
    .expect("runtime");
    rt.block_on(async move {
        let (tx, _) = broadcast::channel::<Utf8Bytes>(CHANNEL_CAPACITY);
        let lagged = Arc::new(AtomicU64::new(0));
        let ws_listener = TcpListener::bind(ws).await.expect("bind websocket address");
        let api_listener = TcpListener::bind(api).await.expect("bind publish address");
        eprintln!("tungstenite-broadcast: ws://{ws}  publish: http://{api}/publish");
        let tx2 = tx.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = api_listener.accept().await {
                    tokio::spawn(publisher(s, tx2.clone()));
                }
            }
        });
        loop {
            if let Ok((s, _)) = ws_listener.accept().await {
                let _ = s.set_nodelay(true);
                let (rx, lagged) = (tx.subscribe(), lagged.clone());
                match &tls {
                    None => {
                        tokio::spawn(client(s, rx, lagged));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(t) = acceptor.accept(s).await {
                                client(t, rx, lagged).await;
                            }
                        });
                    }
                }
            }
        }
    });
}

fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("certificate file").map(|c| c.expect("certificate")).collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

async fn client<S>(s: S, mut rx: broadcast::Receiver<Utf8Bytes>, lagged: Arc<AtomicU64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(ws) = tokio_tungstenite::accept_async(s).await else { return };
    let (mut out, mut inc) = ws.split();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(m) => {
                    if out.feed(Message::Text(m)).await.is_err() { return; }
                    loop {
                        match rx.try_recv() {
                            Ok(m) => if out.feed(Message::Text(m)).await.is_err() { return; },
                            Err(broadcast::error::TryRecvError::Lagged(n)) => { lagged.fetch_add(n, Relaxed); }
                            Err(_) => break,
                        }
                    }
                    if out.flush().await.is_err() { return; }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => { lagged.fetch_add(n, Relaxed); }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            m = inc.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
}

/// A minimal HTTP/1.1 keep-alive endpoint: each request's body is broadcast.
async fn publisher(mut s: TcpStream, tx: broadcast::Sender<Utf8Bytes>) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
        buf.drain(..end + len);
        let n = tx.send(Utf8Bytes::from(body)).unwrap_or(0);
        let reply = format!("{{\"receivers\":{n}}}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
