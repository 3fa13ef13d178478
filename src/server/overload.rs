//! The overload manager's decision: resource monitors, each a pressure from 0 to 1, and the
//! actions they drive, switched on at a threshold and off only once the pressure is a band
//! below it and the action has been on for a minimum time (so it does not flap). A pure
//! state machine: a shard samples its pressures at a coarse interval, passes them with the
//! time, and applies what is on.

/// What is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Monitor {
    /// What the gateway holds for clients (outboxes, histories, mailboxes), or the process's
    /// RSS where that is higher, against `--memory-budget`.
    Memory,
    /// The longest turn of the shard's event loop since the last sample (what every timer
    /// and socket on it waited), against `--overload-lag-limit`.
    Lag,
    /// The shard's inbox backlog against its capacity.
    Inbox,
    /// Handshakes in progress against `--max-pending-handshakes`.
    Handshakes,
    /// Open connections against what the open-file limit allows.
    Files,
    /// The kernel's memory for TCP socket buffers, host-wide, against the level at which it
    /// starts to squeeze every socket (`net.ipv4.tcp_mem`'s pressure value): what slow
    /// readers' unread bytes cost outside the process.
    TcpMemory,
}

/// How many monitors there are.
pub(crate) const MONITORS: usize = 6;

impl Monitor {
    pub(crate) const ALL: [Monitor; MONITORS] = [
        Monitor::Memory,
        Monitor::Lag,
        Monitor::Inbox,
        Monitor::Handshakes,
        Monitor::Files,
        Monitor::TcpMemory,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Monitor::Memory => "memory",
            Monitor::Lag => "event_loop_lag",
            Monitor::Inbox => "inbox",
            Monitor::Handshakes => "handshakes",
            Monitor::Files => "open_files",
            Monitor::TcpMemory => "tcp_memory",
        }
    }
}

/// What can be done, in the order pressure reaches them by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Low-priority pushes and publishes are refused at the API (reported as `shed`).
    ShedLow,
    /// History and presence queries answer 503 with `Retry-After`.
    Pause,
    /// New upgrades get 503 with a jittered `Retry-After` scaled by the pressure.
    StopAdmit,
    /// Normal-priority frames to the connections holding the most are refused too.
    ShedNormal,
    /// The connections holding the largest outboxes are closed (4002) until memory is back
    /// under the threshold.
    Reclaim,
}

impl Action {
    pub(crate) const ALL: [Action; 5] =
        [Action::ShedLow, Action::Pause, Action::StopAdmit, Action::ShedNormal, Action::Reclaim];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Action::ShedLow => "shed_low",
            Action::Pause => "pause",
            Action::StopAdmit => "stop_admitting",
            Action::ShedNormal => "shed_normal",
            Action::Reclaim => "reclaim",
        }
    }

    /// The monitors whose pressure drives it (the highest of them counts).
    fn monitors(self) -> &'static [Monitor] {
        use Monitor::*;
        match self {
            Action::ShedLow | Action::ShedNormal => &[Memory, Lag, Inbox, TcpMemory],
            Action::Pause => &[Memory, Lag],
            Action::StopAdmit => &[Memory, Lag, Handshakes, Files, TcpMemory],
            // Closing connections frees memory (theirs, and their sockets' buffers) and
            // nothing else.
            Action::Reclaim => &[Memory, TcpMemory],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Each action's threshold (pressure 0-1; above 1: never), and the band and time that keep
/// it from flapping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Thresholds {
    pub(crate) on: [f64; 5],
    /// An action goes off once its pressure is this far below its threshold.
    pub(crate) band: f64,
    /// And it has been on at least this long.
    pub(crate) hold_ms: u64,
}

impl Thresholds {
    /// The flags' defaults: shed low 0.80, pause 0.85, stop admitting 0.90, shed normal 0.95, reclaim 0.98;
    /// off 0.05 below, after at least 2 s.
    #[cfg(test)]
    pub(crate) const DEFAULT: Thresholds =
        Thresholds { on: [0.80, 0.85, 0.90, 0.95, 0.98], band: 0.05, hold_ms: 2000 };

    pub(crate) fn of(&self, a: Action) -> f64 {
        self.on[a.index()]
    }
}

/// A change of one action.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Transition {
    pub(crate) action: Action,
    pub(crate) on: bool,
    /// The pressure that decided it, and its monitor.
    pub(crate) pressure: f64,
    pub(crate) monitor: Monitor,
}

/// The manager's state: the latest pressures and which actions are on since when.
#[derive(Clone, Debug)]
pub(crate) struct Overload {
    t: Thresholds,
    pressures: [f64; MONITORS],
    since_ms: [Option<u64>; 5],
}

impl Overload {
    pub(crate) fn new(t: Thresholds) -> Overload {
        Overload { t, pressures: [0.0; MONITORS], since_ms: [None; 5] }
    }

    /// The latest pressure of `m`.
    pub(crate) fn pressure(&self, m: Monitor) -> f64 {
        self.pressures[m as usize]
    }

    pub(crate) fn thresholds(&self) -> &Thresholds {
        &self.t
    }

    /// Whether `a` is on.
    pub(crate) fn on(&self, a: Action) -> bool {
        self.since_ms[a.index()].is_some()
    }

    /// The highest pressure among the monitors driving `a`, and which.
    pub(crate) fn driving(&self, a: Action) -> (f64, Monitor) {
        a.monitors()
            .iter()
            .map(|&m| (self.pressure(m), m))
            .fold((0.0, Monitor::Memory), |best, x| if x.0 > best.0 { x } else { best })
    }

    /// Takes a sample (`pressures` in [`Monitor::ALL`] order; NaN counts as 0) at `now_ms`
    /// and returns what changed.
    pub(crate) fn sample(&mut self, pressures: [f64; MONITORS], now_ms: u64) -> Vec<Transition> {
        self.pressures = pressures.map(|p| if p.is_finite() { p.clamp(0.0, 4.0) } else { 0.0 });
        let mut out = Vec::new();
        for a in Action::ALL {
            let (pressure, monitor) = self.driving(a);
            let on = self.t.of(a);
            let slot = &mut self.since_ms[a.index()];
            match *slot {
                None if pressure >= on => {
                    *slot = Some(now_ms);
                    out.push(Transition { action: a, on: true, pressure, monitor });
                }
                Some(since)
                    if pressure < on - self.t.band
                        && now_ms.saturating_sub(since) >= self.t.hold_ms =>
                {
                    *slot = None;
                    out.push(Transition { action: a, on: false, pressure, monitor });
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(m: Monitor, p: f64) -> [f64; MONITORS] {
        let mut a = [0.0; MONITORS];
        a[m as usize] = p;
        a
    }

    #[test]
    fn each_monitor_drives_its_actions_at_the_threshold_and_releases_below_the_band() {
        for m in Monitor::ALL {
            for a in Action::ALL {
                let mut o = Overload::new(Thresholds::DEFAULT);
                let th = Thresholds::DEFAULT.of(a);
                let drives = a.monitors().contains(&m);
                assert!(!o.sample(at(m, th - 0.001), 0).iter().any(|t| t.action == a));
                let t = o.sample(at(m, th), 10);
                assert_eq!(t.iter().any(|t| t.action == a && t.on), drives, "{m:?} {a:?}");
                assert_eq!(o.on(a), drives);
                if !drives {
                    continue;
                }
                // Inside the band it stays; below it, once held long enough, it goes.
                o.sample(at(m, th - 0.04), 5000);
                assert!(o.on(a), "{a:?} in the band");
                o.sample(at(m, th - 0.06), 1000);
                assert!(o.on(a), "{a:?} below the band but not held 2 s");
                let t = o.sample(at(m, th - 0.06), 2010);
                assert!(t.iter().any(|t| t.action == a && !t.on && t.monitor == m));
                assert!(!o.on(a));
            }
        }
    }

    #[test]
    fn actions_come_in_steps_as_memory_rises_and_the_strongest_pressure_counts() {
        let mut o = Overload::new(Thresholds::DEFAULT);
        let on = |o: &Overload| Action::ALL.iter().filter(|a| o.on(**a)).count();
        let mut steps = Vec::new();
        for (i, p) in [0.5, 0.81, 0.86, 0.91, 0.96, 0.99].into_iter().enumerate() {
            o.sample(at(Monitor::Memory, p), i as u64 * 100);
            steps.push(on(&o));
        }
        assert_eq!(steps, [0, 1, 2, 3, 4, 5]);
        // Lag alone never reclaims: closing connections frees memory, not time.
        let mut o = Overload::new(Thresholds::DEFAULT);
        o.sample(at(Monitor::Lag, 1.0), 0);
        assert!(o.on(Action::StopAdmit) && !o.on(Action::Reclaim));
        let mut p = at(Monitor::Lag, 0.2);
        p[Monitor::Files as usize] = 0.93;
        o.sample(p, 5000);
        assert_eq!(o.driving(Action::StopAdmit), (0.93, Monitor::Files));
        assert!(o.on(Action::StopAdmit) && !o.on(Action::ShedLow));
        o.sample(at(Monitor::Memory, f64::NAN), 10_000);
        assert_eq!(o.pressure(Monitor::Memory), 0.0);
    }
}
