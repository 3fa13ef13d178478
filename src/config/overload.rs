//! `[overload]`: the memory budget and the overload manager's thresholds (docs/operations.md,
//! "Overload"). In a file they may sit in an `[overload]` table (`shed_low = 0.8`) or at the
//! top level by their flag names (`overload-shed-low`).

use std::time::Duration;

use super::units::{parse_duration, parse_size};

/// A pressure threshold: 0 to 1, or above 1 for never.
fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.05..=10.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: a pressure from 0.05 to 1 (above 1: never)")),
    }
}

/// `auto`, or a size (`4GiB`).
fn parse_budget(s: &str) -> Result<u64, String> {
    if s == "auto" {
        return Ok(0);
    }
    match parse_size(s)? {
        n if n >= 16 << 20 => Ok(n),
        _ => Err(format!("{s:?}: at least 16MiB, or `auto`")),
    }
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Overload")]
pub struct OverloadConfig {
    /// What the gateway may hold for clients (outboxes, histories, mailboxes) and use in all
    /// (its RSS); `auto`: 80 % of the cgroup memory limit (v2 or v1) where there is one, else of physical
    /// memory.
    #[arg(long, env = "RINGCAST_MEMORY_BUDGET", default_value = "auto", value_parser = parse_budget)]
    pub(crate) memory_budget: u64,
    /// The overload manager: `on`, or `off` (only the fixed caps then).
    #[arg(long, env = "RINGCAST_OVERLOAD", default_value = "on", value_parser = ["on", "off"])]
    pub(crate) overload: String,
    /// Pressure at which low-priority pushes and publishes are refused (`shed`).
    #[arg(long, env = "RINGCAST_OVERLOAD_SHED_LOW", default_value = "0.80", value_parser = parse_threshold)]
    pub(crate) overload_shed_low: f64,
    /// Pressure at which history and presence queries answer 503.
    #[arg(long, env = "RINGCAST_OVERLOAD_PAUSE", default_value = "0.85", value_parser = parse_threshold)]
    pub(crate) overload_pause: f64,
    /// Pressure at which new upgrades are refused with 503 and `Retry-After`.
    #[arg(long, env = "RINGCAST_OVERLOAD_STOP_ADMITTING", default_value = "0.90", value_parser = parse_threshold)]
    pub(crate) overload_stop_admitting: f64,
    /// Pressure at which normal-priority frames to the fullest outboxes are refused too.
    #[arg(long, env = "RINGCAST_OVERLOAD_SHED_NORMAL", default_value = "0.95", value_parser = parse_threshold)]
    pub(crate) overload_shed_normal: f64,
    /// Memory pressure at which the connections holding the largest outboxes are closed (4002).
    #[arg(long, env = "RINGCAST_OVERLOAD_RECLAIM", default_value = "0.98", value_parser = parse_threshold)]
    pub(crate) overload_reclaim: f64,
    /// An action goes off once its pressure is this far below its threshold...
    #[arg(long, env = "RINGCAST_OVERLOAD_BAND", default_value = "0.05", value_parser = parse_threshold)]
    pub(crate) overload_band: f64,
    /// ...and it has been on this long.
    #[arg(long, env = "RINGCAST_OVERLOAD_HOLD", default_value = "2s", value_parser = parse_duration)]
    pub(crate) overload_hold: Duration,
    /// How long one turn of a shard's event loop may take before its event-loop lag pressure
    /// is 1.
    #[arg(long, env = "RINGCAST_OVERLOAD_LAG_LIMIT", default_value = "1s", value_parser = parse_duration)]
    pub(crate) overload_lag_limit: Duration,
    /// How long a connection closed by reclaim may take to read up to its 4002 close frame
    /// before it is reset (its socket buffers freed).
    #[arg(long, env = "RINGCAST_OVERLOAD_RECLAIM_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub(crate) overload_reclaim_grace: Duration,
    /// How often each shard samples its pressures.
    #[arg(long, env = "RINGCAST_OVERLOAD_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub(crate) overload_interval: Duration,
}

impl OverloadConfig {
    /// The band must leave room under every threshold (or that action would never go off),
    /// and the sampling interval must be one a shard can keep.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let named = [
            ("--overload-shed-low", self.overload_shed_low),
            ("--overload-pause", self.overload_pause),
            ("--overload-stop-admitting", self.overload_stop_admitting),
            ("--overload-shed-normal", self.overload_shed_normal),
            ("--overload-reclaim", self.overload_reclaim),
        ];
        for (flag, on) in named {
            if self.overload_band >= on {
                return Err(format!(
                    "--overload-band {} must be below {flag} {on}: the action could never go off",
                    self.overload_band
                ));
            }
        }
        if self.overload_band > 0.5 {
            return Err(format!("--overload-band {} must be at most 0.5", self.overload_band));
        }
        let ms = self.overload_interval.as_millis();
        if !(1..=10_000).contains(&ms) {
            return Err(format!("--overload-interval must be from 1ms to 10s, got {ms} ms"));
        }
        if self.overload_lag_limit < Duration::from_millis(10) {
            return Err("--overload-lag-limit must be at least 10ms".into());
        }
        Ok(())
    }

    pub(crate) fn enabled(&self) -> bool {
        self.overload == "on"
    }

    pub(crate) fn thresholds(&self) -> crate::server::overload::Thresholds {
        crate::server::overload::Thresholds {
            on: [
                self.overload_shed_low,
                self.overload_pause,
                self.overload_stop_admitting,
                self.overload_shed_normal,
                self.overload_reclaim,
            ],
            band: self.overload_band,
            hold_ms: self.overload_hold.as_millis() as u64,
        }
    }

    /// The budget in bytes: the flag, or 80 % of the cgroup's limit (the tightest of the
    /// process's cgroup and its ancestors, v2 `memory.max` or v1 `memory.limit_in_bytes`) or
    /// of physical memory.
    pub(crate) fn budget(&self) -> u64 {
        if self.memory_budget > 0 {
            return self.memory_budget;
        }
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| cgroup_limit(&s, |p| std::fs::read_to_string(p).ok()));
        let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
        });
        let limit = match (cgroup, physical) {
            (Some(c), Some(p)) => c.min(p),
            (Some(c), None) => c,
            (None, Some(p)) => p,
            (None, None) => 4 << 30,
        };
        limit / 5 * 4
    }
}

/// The tightest memory limit on the process's cgroup and its ancestors, from the text of
/// `/proc/self/cgroup` and a reader of files under `/sys/fs/cgroup`: the unified hierarchy's
/// `memory.max` (`0::/path`), else the v1 memory controller's `memory.limit_in_bytes`
/// (`N:memory:/path`). None where no limit is set.
fn cgroup_limit(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            continue;
        };
        // The cgroup itself, then each ancestor up to the root.
        let mut at = path.trim_end_matches('/').to_string();
        loop {
            let limit = read(&format!("{root}{at}/{file}"))
                .and_then(|s| s.trim().parse::<u64>().ok())
                // v1 says "no limit" with a number near i64::MAX.
                .filter(|&n| n < 1 << 60);
            if let Some(n) = limit {
                best = Some(best.map_or(n, |b| b.min(n)));
            }
            match at.rfind('/') {
                Some(i) => at.truncate(i),
                None => break,
            }
            if at.is_empty() {
                if let Some(n) = read(&format!("{root}/{file}"))
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .filter(|&n| n < 1 << 60)
                {
                    best = Some(best.map_or(n, |b| b.min(n)));
                }
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::cgroup_limit;

    #[test]
    fn the_cgroup_limit_is_the_tightest_of_the_process_cgroup_and_its_ancestors() {
        let files = |list: &'static [(&'static str, &'static str)]| {
            move |p: &str| list.iter().find(|(f, _)| *f == p).map(|(_, v)| v.to_string())
        };
        // v2, the limit on the parent slice.
        let v2 = files(&[
            ("/sys/fs/cgroup/system.slice/ringcast.service/memory.max", "max\n"),
            ("/sys/fs/cgroup/system.slice/memory.max", "4294967296\n"),
        ]);
        assert_eq!(cgroup_limit("0::/system.slice/ringcast.service\n", v2), Some(4 << 30));
        // v1 (a hybrid host): its memory controller's line; "no limit" is a huge number.
        let v1 = files(&[
            ("/sys/fs/cgroup/memory/bench/memory.limit_in_bytes", "536870912\n"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
        ]);
        let text = "4:memory:/bench\n3:cpuset:/\n0::/\n";
        assert_eq!(cgroup_limit(text, v1), Some(512 << 20));
        let none = files(&[("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")]);
        assert_eq!(cgroup_limit("4:memory:/\n0::/\n", none), None);
        assert_eq!(cgroup_limit("", files(&[])), None);
    }
}
