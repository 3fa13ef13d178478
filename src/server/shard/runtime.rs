//! The shard's two monoio tasks: the accept loop and the event loop. They read the clock (the
//! edge where time enters) and hand it to the shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use crate::clock;

use super::super::sys;
use super::{Shard, Turn};
use crate::upstream::client::{self, Pool};

/// The accept loop: io_uring accept on one of the shard's listeners (the plain one, or the
/// `--tls-listen` one with `tls`), until the listener is shut.
pub(crate) async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    listener: monoio::net::TcpListener,
    tls: bool,
) {
    let mut warned_at: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let fd = sys::own_stream(stream);
                shard.borrow_mut().on_accept(fd, addr.ip(), clock::now(), tls);
            }
            Err(e) => {
                if shard.borrow().is_draining() {
                    return;
                }
                shard.borrow().count_accept_error();
                let now = clock::now();
                if warned_at.is_none_or(|t| (now - t).as_secs() >= 10) {
                    tracing::warn!("accept failed: {e} (check the open-file limit); backing off");
                    warned_at = Some(now);
                }
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// The event loop: wait for the epoll set through the runtime, then turn. After each turn the
/// backend requests it left are sent, one task each; a task that ends hands its result to the
/// shard and wakes it.
pub(crate) async fn event_loop(shard: Rc<RefCell<Shard>>, waiter: monoio::net::UnixStream) {
    let (rules, node, wake) = shard.borrow().upstream_io();
    let pools: Vec<Rc<Pool>> = rules.iter().map(|_| Rc::new(Pool::default())).collect();
    loop {
        let next = shard.borrow_mut().turn(clock::now());
        for req in shard.borrow_mut().take_upstream_requests() {
            let Some(rule) = rules.get(req.backend).cloned() else { continue };
            let pool = pools[req.backend].clone();
            let (shard, wake) = (shard.clone(), wake.clone());
            let bytes = client::request_bytes(&rule, &node, &req.body);
            monoio::spawn(async move {
                let result = client::call(rule, pool, bytes).await;
                shard.borrow_mut().upstream_ended(req.backend, req.id, result);
                wake.notify();
            });
        }
        match next {
            Turn::Done => return,
            Turn::Again => YieldNow(false).await,
            Turn::Wait => {
                if let Err(e) = waiter.readable(false).await {
                    tracing::error!("waiting for the epoll set failed: {e}");
                    monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// Lets the runtime's other tasks run once.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
