//! Whether an open connection is alive, decided from its stamps and `now` alone: when to ping,
//! when a missing pong, silence or a slow reader ends it, and when to look again. Pure, so it
//! is tested against a model without sockets or sleeps.

use crate::proto::CloseReason;

/// The deadlines of open connections, in ticks. `ping` 0 sends no pings (and so never times
/// out a pong); `idle` 0 never closes a silent connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Deadlines {
    pub(crate) ping: u64,
    pub(crate) pong: u64,
    pub(crate) idle: u64,
    pub(crate) slow: u64,
}

/// The ticks (wrapping) a connection's liveness is decided from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// The last bytes received.
    pub(crate) last_recv: u32,
    /// The last whole message received.
    pub(crate) last_msg: u32,
    /// The outstanding ping was sent.
    pub(crate) ping_sent: u32,
    /// Pushes began to be dropped for a full outbox.
    pub(crate) slow_since: u32,
}

/// What an open connection's timer means now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Close(CloseReason),
    /// Send a ping (and stamp it).
    Ping,
    /// Ask the refresh backend to renew the connection's expiry.
    Refresh,
    /// Nothing is due: look again at [`Liveness::next_deadline`].
    Wait,
}

/// What the decision needs from the connection's flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// A ping is out and unanswered.
    pub(crate) ping_out: bool,
    /// Pushes are being dropped for a full outbox.
    pub(crate) slow: bool,
    /// The tick the connection's token expires at, if it has one.
    pub(crate) expires: Option<u64>,
    /// The tick its refresh backend is to be asked at, if it is.
    pub(crate) refresh: Option<u64>,
}

impl Liveness {
    pub(crate) fn new(now: u32) -> Liveness {
        Liveness { last_recv: now, last_msg: now, ping_sent: now, slow_since: now }
    }

    fn since(stamp: u32, now: u64) -> u64 {
        u64::from((now as u32).wrapping_sub(stamp))
    }

    /// The first thing due at `now`, in the order that decides a close: an expired token,
    /// then silence, then a slow reader, then a missing pong; else a refresh that is due, else
    /// a ping if the connection has been quiet long enough.
    pub(crate) fn verdict(&self, now: u64, s: State, d: &Deadlines) -> Verdict {
        if s.expires.is_some_and(|e| now >= e) {
            return Verdict::Close(CloseReason::TokenExpired);
        }
        if d.idle > 0 && Self::since(self.last_msg, now) >= d.idle {
            return Verdict::Close(CloseReason::Idle);
        }
        if s.slow && Self::since(self.slow_since, now) >= d.slow {
            return Verdict::Close(CloseReason::SlowConsumer);
        }
        if d.ping > 0 && s.ping_out && Self::since(self.ping_sent, now) >= d.pong {
            // A dead peer will not answer a close handshake: say why and drop it.
            return Verdict::Close(CloseReason::PongTimeout);
        }
        if s.refresh.is_some_and(|r| now >= r) {
            return Verdict::Refresh;
        }
        if d.ping > 0 && !s.ping_out && Self::since(self.last_recv, now) >= d.ping {
            return Verdict::Ping;
        }
        Verdict::Wait
    }

    /// The next tick an open connection needs looking at: its ping, pong, idle or slow
    /// deadline, whichever is first; none if nothing can come due.
    pub(crate) fn next_deadline(&self, now: u64, s: State, d: &Deadlines) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |after: u64, stamp: u32| {
            let at = now + after.saturating_sub(Self::since(stamp, now));
            next = Some(next.map_or(at, |n: u64| n.min(at)));
        };
        if d.ping > 0 {
            if s.ping_out {
                consider(d.pong, self.ping_sent);
            } else {
                consider(d.ping, self.last_recv);
            }
        }
        if d.idle > 0 {
            consider(d.idle, self.last_msg);
        }
        if s.slow {
            consider(d.slow, self.slow_since);
        }
        for e in [s.expires, s.refresh].into_iter().flatten() {
            let at = e.max(now);
            next = Some(next.map_or(at, |n: u64| n.min(at)));
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: Deadlines = Deadlines { ping: 10, pong: 5, idle: 40, slow: 7 };

    #[test]
    fn a_quiet_connection_is_pinged_then_dropped_without_a_pong() {
        let mut l = Liveness::new(0);
        let s = State::default();
        assert_eq!(l.verdict(9, s, &D), Verdict::Wait);
        assert_eq!(l.next_deadline(0, s, &D), Some(10));
        assert_eq!(l.verdict(10, s, &D), Verdict::Ping);
        l.ping_sent = 10;
        let out = State { ping_out: true, ..s };
        assert_eq!(l.next_deadline(10, out, &D), Some(15));
        assert_eq!(l.verdict(14, out, &D), Verdict::Wait);
        assert_eq!(l.verdict(15, out, &D), Verdict::Close(CloseReason::PongTimeout));
    }

    #[test]
    fn silence_closes_before_anything_else_and_slowness_next() {
        let l = Liveness::new(0);
        let all = State { ping_out: true, slow: true, ..State::default() };
        assert_eq!(l.verdict(40, all, &D), Verdict::Close(CloseReason::Idle));
        assert_eq!(l.verdict(7, all, &D), Verdict::Close(CloseReason::SlowConsumer));
        let off = Deadlines { ping: 0, idle: 0, ..D };
        assert_eq!(l.next_deadline(0, State::default(), &off), None);
        assert_eq!(
            l.verdict(1_000_000, State { ping_out: true, ..State::default() }, &off),
            Verdict::Wait
        );
    }

    #[test]
    fn an_expired_token_closes_first_and_is_a_deadline_of_its_own() {
        let l = Liveness::new(0);
        let off = Deadlines { ping: 0, idle: 0, ..D };
        let s = State { expires: Some(50), ..State::default() };
        assert_eq!(l.next_deadline(0, s, &off), Some(50));
        assert_eq!(l.verdict(49, s, &off), Verdict::Wait);
        let all = State { ping_out: true, slow: true, expires: Some(50), refresh: Some(10) };
        assert_eq!(l.verdict(50, all, &D), Verdict::Close(CloseReason::TokenExpired));
    }

    #[test]
    fn stamps_wrap_around() {
        let l = Liveness::new(u32::MAX - 2);
        let now = u64::from(u32::MAX) + 8; // 10 ticks later, wrapped
        assert_eq!(l.verdict(now, State::default(), &D), Verdict::Ping);
    }

    proptest! {
        /// Against a model: a verdict other than Wait happens exactly when some deadline is
        /// reached, and next_deadline is never in the past nor later than the first due one.
        #[test]
        fn matches_the_model(
            recv in 0u32..100, msg in 0u32..100, ping in 0u32..100, slow_since in 0u32..100,
            ping_out: bool, slow: bool, later in 0u64..200,
            expires in proptest::option::of(0u64..400),
            refresh in proptest::option::of(0u64..400),
            dp in 0u64..30, dq in 1u64..30, di in 0u64..60, ds in 1u64..30,
        ) {
            let l = Liveness { last_recv: recv, last_msg: msg.min(recv), ping_sent: ping, slow_since };
            let d = Deadlines { ping: dp, pong: dq, idle: di, slow: ds };
            let s = State { ping_out, slow, expires, refresh };
            let now = 100 + later;
            let age = |t: u32| now - u64::from(t);
            let idle = di > 0 && age(l.last_msg) >= di;
            let slow_due = slow && age(slow_since) >= ds;
            let pong = dp > 0 && ping_out && age(ping) >= dq;
            let ping_due = dp > 0 && !ping_out && age(recv) >= dp;
            let want = if expires.is_some_and(|e| now >= e) {
                Verdict::Close(CloseReason::TokenExpired)
            } else if idle {
                Verdict::Close(CloseReason::Idle)
            } else if slow_due {
                Verdict::Close(CloseReason::SlowConsumer)
            } else if pong {
                Verdict::Close(CloseReason::PongTimeout)
            } else if refresh.is_some_and(|r| now >= r) {
                Verdict::Refresh
            } else if ping_due {
                Verdict::Ping
            } else {
                Verdict::Wait
            };
            prop_assert_eq!(l.verdict(now, s, &d), want.clone());
            if let Some(at) = l.next_deadline(now, s, &d) {
                prop_assert!(at >= now);
                // Nothing due now means the deadline is later; something due means it is now.
                prop_assert_eq!(at == now, want != Verdict::Wait);
            } else {
                prop_assert_eq!(want, Verdict::Wait);
            }
        }
    }
}
