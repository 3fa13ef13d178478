//! A circuit breaker for one backend on one shard: a pure state machine with time as input.
//!
//! Closed: every call goes through; it opens after `consecutive` failures in a row, or when at
//! least `min_calls` calls in the last `window_ms` failed `failure_ratio` or more. Open:
//! nothing goes through for `open_ms` (doubling on each trip that follows a failed probe, up to
//! `max_open_ms`, jittered by ±20 %). Then half-open: up to `probes` calls go through; as many
//! successes close it, one failure opens it again for twice as long.
//!
//! A failure is what says the backend is unwell: a transport error, a timeout, a 5xx. A 4xx or
//! an explicit `error` / `disconnect` answer is the backend working as meant, a success here.

/// How a breaker trips and recovers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BreakerConfig {
    pub(crate) consecutive: u32,
    pub(crate) failure_ratio: f64,
    pub(crate) min_calls: u32,
    pub(crate) window_ms: u64,
    pub(crate) open_ms: u64,
    pub(crate) max_open_ms: u64,
    pub(crate) probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            window_ms: 10_000,
            open_ms: 5_000,
            max_open_ms: 30_000,
            probes: 3,
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The breaker-state gauge's value: 0 closed, 1 half-open, 2 open.
    pub(crate) fn gauge(self) -> u64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// A change of state, for the log line and the trip counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: State,
    pub(crate) to: State,
    /// How long it stays open, when `to` is open.
    pub(crate) open_ms: u64,
}

/// The ten buckets of the failure-ratio window.
const BUCKETS: usize = 10;

/// One backend's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    cfg: BreakerConfig,
    state: State,
    /// Failures in a row (closed).
    streak: u32,
    /// Calls and failures per bucket of `window_ms / BUCKETS`, and the bucket index of each.
    calls: [u32; BUCKETS],
    fails: [u32; BUCKETS],
    stamp: [u64; BUCKETS],
    /// Open until (Unix ms); the length of the last open period.
    until_ms: u64,
    last_open_ms: u64,
    /// Half-open: probes let through, and how many of them succeeded.
    probing: u32,
    probed_ok: u32,
    /// Jitter state (xorshift).
    rng: u64,
    pub(crate) trips: u64,
}

/// A call may go: `probe` when it is one of the half-open probes (its outcome decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Permit {
    pub(crate) probe: bool,
}

impl Breaker {
    pub(crate) fn new(cfg: BreakerConfig, seed: u64) -> Breaker {
        Breaker {
            cfg,
            state: State::Closed,
            streak: 0,
            calls: [0; BUCKETS],
            fails: [0; BUCKETS],
            stamp: [0; BUCKETS],
            until_ms: 0,
            last_open_ms: 0,
            probing: 0,
            probed_ok: 0,
            rng: seed | 1,
            trips: 0,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Whether a call may go now; if not, how long until the breaker lets one through (ms).
    /// Taking a permit in half-open uses up a probe, so ask only when about to call.
    pub(crate) fn allow(&mut self, now_ms: u64) -> (Result<Permit, u64>, Option<Transition>) {
        let mut moved = None;
        if self.state == State::Open {
            if now_ms < self.until_ms {
                return (Err(self.until_ms - now_ms), None);
            }
            moved = Some(self.enter(State::HalfOpen, 0));
            self.probing = 0;
            self.probed_ok = 0;
        }
        match self.state {
            State::HalfOpen if self.probing >= self.cfg.probes => {
                // Every probe is out: the rest wait for their verdict.
                (Err(self.cfg.open_ms.min(1_000)), moved)
            }
            State::HalfOpen => {
                self.probing += 1;
                (Ok(Permit { probe: true }), moved)
            }
            _ => (Ok(Permit { probe: false }), moved),
        }
    }

    /// Without taking a permit: how long until a call could go (0: now).
    pub(crate) fn retry_in(&self, now_ms: u64) -> u64 {
        match self.state {
            State::Open => self.until_ms.saturating_sub(now_ms),
            State::HalfOpen if self.probing >= self.cfg.probes => self.cfg.open_ms.min(1_000),
            _ => 0,
        }
    }

    /// The outcome of a call made with `permit`.
    pub(crate) fn record(
        &mut self,
        permit: Permit,
        failed: bool,
        now_ms: u64,
    ) -> Option<Transition> {
        if permit.probe {
            if self.state != State::HalfOpen {
                return None; // a verdict already came from another probe
            }
            if failed {
                let open = (self.last_open_ms.max(self.cfg.open_ms) * 2).min(self.cfg.max_open_ms);
                return Some(self.trip(open, now_ms));
            }
            self.probed_ok += 1;
            if self.probed_ok >= self.cfg.probes {
                self.reset_window();
                self.last_open_ms = 0;
                return Some(self.enter(State::Closed, 0));
            }
            return None;
        }
        if self.state != State::Closed {
            return None; // a call let through before the trip came back
        }
        let b = self.bucket(now_ms);
        self.calls[b] += 1;
        if !failed {
            self.streak = 0;
            return None;
        }
        self.fails[b] += 1;
        self.streak += 1;
        let (calls, fails) = self.window(now_ms);
        let ratio_trip = calls >= self.cfg.min_calls
            && f64::from(fails) >= self.cfg.failure_ratio * f64::from(calls);
        if self.streak >= self.cfg.consecutive || ratio_trip {
            return Some(self.trip(self.cfg.open_ms, now_ms));
        }
        None
    }

    fn trip(&mut self, open_ms: u64, now_ms: u64) -> Transition {
        let open = self.jitter(open_ms);
        self.until_ms = now_ms + open;
        self.last_open_ms = open_ms;
        self.trips += 1;
        self.streak = 0;
        self.reset_window();
        self.enter(State::Open, open)
    }

    fn enter(&mut self, to: State, open_ms: u64) -> Transition {
        let from = self.state;
        self.state = to;
        Transition { from, to, open_ms }
    }

    /// `ms` ±20 %.
    fn jitter(&mut self, ms: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let spread = ms / 5;
        if spread == 0 {
            return ms;
        }
        ms - spread + self.rng % (2 * spread + 1)
    }

    fn bucket_len(&self) -> u64 {
        (self.cfg.window_ms / BUCKETS as u64).max(1)
    }

    /// The bucket for `now_ms`, emptied if it last held an older period.
    fn bucket(&mut self, now_ms: u64) -> usize {
        let period = now_ms / self.bucket_len();
        let b = (period % BUCKETS as u64) as usize;
        if self.stamp[b] != period {
            self.stamp[b] = period;
            self.calls[b] = 0;
            self.fails[b] = 0;
        }
        b
    }

    /// Calls and failures within the window ending now.
    fn window(&self, now_ms: u64) -> (u32, u32) {
        let period = now_ms / self.bucket_len();
        let mut totals = (0, 0);
        for b in 0..BUCKETS {
            if period.saturating_sub(self.stamp[b]) < BUCKETS as u64 {
                totals.0 += self.calls[b];
                totals.1 += self.fails[b];
            }
        }
        totals
    }

    fn reset_window(&mut self) {
        self.calls = [0; BUCKETS];
        self.fails = [0; BUCKETS];
        self.streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(b: &mut Breaker, failed: bool, now: u64) -> Option<Transition> {
        let p = b.allow(now).0.expect("allowed");
        b.record(p, failed, now)
    }

    #[test]
    fn five_failures_in_a_row_open_it_and_calls_are_refused_until_it_half_opens() {
        let mut b = Breaker::new(BreakerConfig::default(), 7);
        for i in 0..4 {
            assert_eq!(call(&mut b, true, 1_000 + i), None);
        }
        let t = call(&mut b, true, 1_004).expect("tripped");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert!((4_000..=6_000).contains(&t.open_ms), "{}", t.open_ms);
        assert_eq!(b.trips, 1);
        let (r, _) = b.allow(1_005);
        let wait = r.expect_err("open refuses");
        assert_eq!(wait, t.open_ms - 1);
        assert_eq!(b.retry_in(1_005), wait);
        // At the end of the open period: half-open, three probes, no more.
        let at = 1_004 + t.open_ms;
        let (r, moved) = b.allow(at);
        assert!(r.expect("probe").probe);
        assert_eq!(moved.map(|m| m.to), Some(State::HalfOpen));
        assert!(b.allow(at).0.is_ok());
        assert!(b.allow(at).0.is_ok());
        assert!(b.allow(at).0.is_err(), "only three probes at once");
    }

    #[test]
    fn a_success_breaks_the_streak() {
        // The ratio out of the way (it would trip at the 21st call here): only the streak.
        let mut b = Breaker::new(BreakerConfig { min_calls: 1_000, ..Default::default() }, 7);
        for round in 0..10 {
            for i in 0..4 {
                assert_eq!(call(&mut b, true, round * 100 + i), None);
            }
            assert_eq!(call(&mut b, false, round * 100 + 50), None);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn half_the_calls_failing_over_twenty_in_the_window_opens_it() {
        let mut b = Breaker::new(BreakerConfig::default(), 7);
        let mut tripped = None;
        for i in 0..40u64 {
            // Alternating: never two failures in a row.
            if let Some(t) = call(&mut b, i % 2 == 1, 10_000 + i * 100) {
                tripped = Some((i, t));
                break;
            }
        }
        let (i, t) = tripped.expect("the ratio trips it");
        assert_eq!(i, 19, "at the 20th call, 10 of them failed");
        assert_eq!(t.to, State::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut b = Breaker::new(BreakerConfig { consecutive: 100, ..Default::default() }, 7);
        for i in 0..19 {
            assert_eq!(call(&mut b, true, i * 10), None);
        }
        // 11 s later the window holds none of them: one failure among two calls is no trip.
        assert_eq!(call(&mut b, false, 11_000), None);
        assert_eq!(call(&mut b, true, 11_001), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn probes_that_succeed_close_it_and_a_failed_probe_doubles_the_open_time() {
        let cfg = BreakerConfig::default();
        let mut b = Breaker::new(cfg, 99);
        for i in 0..5 {
            call(&mut b, true, i);
        }
        let mut now = b.until_ms;
        // First probe fails: open again for about 10 s.
        let p = b.allow(now).0.expect("probe");
        let t = b.record(p, true, now).expect("re-opened");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert!((8_000..=12_000).contains(&t.open_ms), "{}", t.open_ms);
        // Again: 20 s, then capped at 30 s.
        now = b.until_ms;
        let p = b.allow(now).0.expect("probe");
        let t = b.record(p, true, now).expect("re-opened");
        assert!((16_000..=24_000).contains(&t.open_ms), "{}", t.open_ms);
        now = b.until_ms;
        let p = b.allow(now).0.expect("probe");
        let t = b.record(p, true, now).expect("re-opened");
        assert!((24_000..=36_000).contains(&t.open_ms), "{}", t.open_ms);
        assert_eq!(b.trips, 4);
        // Now three good probes close it, and it starts afresh.
        now = b.until_ms;
        let permits: Vec<Permit> = (0..3).map(|_| b.allow(now).0.expect("probe")).collect();
        assert_eq!(b.record(permits[0], false, now), None);
        assert_eq!(b.record(permits[1], false, now), None);
        let t = b.record(permits[2], false, now).expect("closed");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
        assert_eq!(b.retry_in(now), 0);
        for i in 0..4 {
            assert_eq!(call(&mut b, true, now + i), None, "the streak starts at zero");
        }
        // After closing, the next trip is back to the base open time.
        let t = call(&mut b, true, now + 5).expect("tripped");
        assert!((4_000..=6_000).contains(&t.open_ms), "{}", t.open_ms);
    }

    #[test]
    fn late_outcomes_of_calls_made_before_a_trip_change_nothing() {
        let mut b = Breaker::new(BreakerConfig::default(), 3);
        let early: Vec<Permit> = (0..3).map(|_| b.allow(0).0.expect("closed")).collect();
        for i in 0..5 {
            call(&mut b, true, i);
        }
        assert_eq!(b.state(), State::Open);
        for p in early {
            assert_eq!(b.record(p, false, 10), None);
        }
        assert_eq!(b.state(), State::Open);
    }

    proptest::proptest! {
        /// Whatever the outcomes and times, it never lets a call through while open, never lets
        /// more than `probes` probes out at once, and opens for no longer than the cap + 20 %.
        #[test]
        fn holds_its_invariants(steps in proptest::collection::vec((0u64..3_000, 0u8..4), 1..300)) {
            let cfg = BreakerConfig::default();
            let mut b = Breaker::new(cfg, 11);
            let mut now = 0u64;
            let mut out: Vec<Permit> = Vec::new();
            for (dt, op) in steps {
                now += dt;
                match op {
                    0 | 1 => {
                        let was_open = b.state() == State::Open && now < b.until_ms;
                        let (r, _) = b.allow(now);
                        if was_open { proptest::prop_assert!(r.is_err()); }
                        if let Ok(p) = r { out.push(p); }
                        let probes = out.iter().filter(|p| p.probe).count() as u32;
                        proptest::prop_assert!(b.state() != State::HalfOpen || probes <= cfg.probes);
                    }
                    _ => if let Some(p) = out.pop() {
                        if let Some(t) = b.record(p, op == 3, now) {
                            proptest::prop_assert!(t.open_ms <= cfg.max_open_ms * 6 / 5);
                        }
                        if b.state() != State::HalfOpen { out.retain(|p| !p.probe); }
                    }
                }
            }
        }
    }
}
