//! The shard's side of the overload manager: every `--overload-interval` it samples its
//! pressures (memory held by every shard and the process's RSS against the budget, how late
//! the sample itself ran, its inbox, its pending handshakes, the node's connections against
//! the open-file limit), feeds the pure [`Overload`] decision and applies what is on:
//! refusing upgrades, shedding, and closing the connections that hold the most.

use std::sync::atomic::Ordering::Relaxed;

use crate::proto::close::retry_reason;
use crate::proto::frame::close_payload;
use crate::proto::CloseReason;

use super::super::conn::{flag, Phase};

use super::super::overload::{Action, Monitor, Overload};
use super::Core;

/// The manager's state in a shard.
#[derive(Debug)]
pub(crate) struct Watch {
    pub(crate) o: Overload,
    pub(crate) enabled: bool,
    next_ms: u64,
    /// The longest turn since the last sample: everything on the shard (timers, sockets,
    /// inbox) waited that long.
    longest_turn_us: u64,
    pub(crate) interval_ms: u64,
    pub(crate) lag_limit_ms: u64,
    pub(crate) budget: u64,
    /// Connections whose gap repair waits while `pause` is on, oldest first.
    pub(crate) deferred_repairs: std::collections::VecDeque<crate::push::ids::ConnId>,
}

/// Gap repairs let through per sample while `pause` is on.
const REPAIRS_PER_SAMPLE: usize = 32;

impl Watch {
    pub(crate) fn new(cfg: &crate::config::OverloadConfig) -> Watch {
        Watch {
            o: Overload::new(cfg.thresholds()),
            enabled: cfg.enabled(),
            next_ms: 0,
            longest_turn_us: 0,
            interval_ms: (cfg.overload_interval.as_millis() as u64).max(1),
            lag_limit_ms: (cfg.overload_lag_limit.as_millis() as u64).max(1),
            budget: cfg.budget().max(1),
            deferred_repairs: std::collections::VecDeque::new(),
        }
    }
}

impl Watch {
    /// A turn of the event loop took `d`.
    pub(crate) fn turn_took(&mut self, d: std::time::Duration) {
        self.longest_turn_us = self.longest_turn_us.max(d.as_micros() as u64);
    }
}

/// The kernel's TCP buffer memory and the level at which it starts to squeeze sockets, in
/// pages (`/proc/net/sockstat`'s `TCP: … mem N`, and the second value of
/// `/proc/sys/net/ipv4/tcp_mem`); 0 when unreadable.
fn tcp_memory_pages() -> (u64, u64) {
    let used = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?.to_string();
            let f: Vec<&str> = line.split_whitespace().collect();
            let i = f.iter().position(|x| *x == "mem")?;
            f.get(i + 1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let pressure = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    (used, pressure)
}

/// The process's resident set in bytes (`/proc/self/statm`), 0 when unreadable.
fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages = s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
    pages * 4096
}

impl Core {
    /// Whether the overload manager has `a` on in this shard.
    pub(super) fn overloaded(&self, a: Action) -> bool {
        self.watch.o.on(a)
    }

    /// The pressure behind `a` (0 to 1), for scaling retry hints.
    pub(super) fn pressure_of(&self, a: Action) -> f64 {
        self.watch.o.driving(a).0.min(1.0)
    }

    /// Once per `--overload-interval`: sample, decide, apply.
    pub(super) fn watch_load(&mut self) {
        if !self.watch.enabled || self.now_ms < self.watch.next_ms {
            return;
        }
        self.watch.next_ms = self.now_ms + self.watch.interval_ms;
        let lag_us = std::mem::take(&mut self.watch.longest_turn_us);
        if self.id == 0 {
            self.shared.overload.rss.store(rss_bytes(), Relaxed);
            let (used, pressure) = tcp_memory_pages();
            self.shared.overload.tcp_pages.store(used, Relaxed);
            self.shared.overload.tcp_pressure_pages.store(pressure, Relaxed);
        }
        let tcp = match self.shared.overload.tcp_pressure_pages.load(Relaxed) {
            0 => 0.0,
            limit => self.shared.overload.tcp_pages.load(Relaxed) as f64 / limit as f64,
        };
        let held: u64 = self.peers.iter().map(|c| c.held_for_clients()).sum();
        let rss = self.shared.overload.rss.load(Relaxed);
        let budget = self.watch.budget as f64;
        let pressures = [
            held.max(rss) as f64 / budget,
            lag_us as f64 / (self.watch.lag_limit_ms * 1000) as f64,
            self.mesh.backlog(),
            self.handshaking as f64 / self.p.max_pending.max(1) as f64,
            self.shared.total.load(Relaxed) as f64 / self.shared.fd_limit.max(1) as f64,
            tcp,
        ];
        for t in self.watch.o.sample(pressures, self.now_ms) {
            let flag = &self.shared.overload.on[t.action as usize];
            if t.on {
                flag.fetch_add(1, Relaxed);
                tracing::warn!(
                    shard = self.id,
                    action = t.action.label(),
                    monitor = t.monitor.label(),
                    pressure = format!("{:.3}", t.pressure),
                    "overload: {} on",
                    t.action.label()
                );
            } else {
                flag.fetch_sub(1, Relaxed);
                tracing::info!(
                    shard = self.id,
                    action = t.action.label(),
                    pressure = format!("{:.3}", t.pressure),
                    "overload: {} off",
                    t.action.label()
                );
            }
        }
        let c = &self.counters;
        for (m, g) in Monitor::ALL.iter().zip(&c.overload_pressure) {
            g.set((self.watch.o.pressure(*m) * 1000.0).round() as u64);
        }
        for (a, g) in Action::ALL.iter().zip(&c.overload_action) {
            g.set(u64::from(self.watch.o.on(*a)));
        }
        self.release_repairs();
        if self.watch.o.on(Action::Reclaim) {
            // What closing connections can free is what is held for them: RSS the allocator
            // keeps after they go would close everyone and free nothing.
            self.reclaim(held, tcp);
        }
    }

    /// Closes the connections holding the largest outboxes (4002), only ones that are
    /// behind: until this shard's share of the memory excess over the reclaim threshold, less
    /// its band, is freed (only outboxes can be freed this way: where histories and mailboxes
    /// hold the excess, reclaim stops at the outbox bytes rather than close everyone for
    /// memory it cannot free); and, while the kernel's TCP memory is above that level, a
    /// tenth of them per sample (their unread socket buffers go with them).
    fn reclaim(&mut self, held: u64, tcp: f64) {
        let t = self.watch.o.thresholds();
        let level = (t.of(Action::Reclaim) - t.band).max(0.0);
        let target = level * self.watch.budget as f64;
        let mine = self.counters.outbox_bytes.get() as f64;
        let all: f64 = self.peers.iter().map(|c| c.outbox_bytes.get() as f64).sum();
        let excess = (held as f64 - target).min(all);
        let tcp_over = tcp > level;
        if (excess <= 0.0 && !tcp_over) || mine <= 0.0 || all <= 0.0 {
            return;
        }
        let share = excess.max(0.0) * (mine / all);
        let behind = self.p.outbox_max_bytes / 8;
        let mut holders: Vec<(usize, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase.is_open())
            .filter_map(|(k, c)| Some((k, c.outbox.as_ref()?.bytes())))
            // A connection that keeps up is never closed for memory: only one behind.
            .filter(|(_, b)| *b > 0 && *b >= behind)
            .collect();
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.1));
        let for_tcp = if tcp_over { holders.len().div_ceil(10) } else { 0 };
        let mut freed = 0.0;
        for (n, (key, bytes)) in holders.into_iter().enumerate() {
            if freed >= share && n >= for_tcp {
                break;
            }
            // An earlier close's effects may have closed or removed this one.
            if !self.conns.get(key).is_some_and(|c| c.phase.is_open()) {
                continue;
            }
            freed += bytes as f64;
            self.counters.overload_reclaimed.inc();
            self.close_to_reclaim(key);
        }
    }
}

impl Core {
    /// Gap repairs deferred by `pause`: a few each sample while it is on, all once it is off.
    /// One whose connection went, or whose outbox filled again, is skipped (its next drain
    /// asks again).
    fn release_repairs(&mut self) {
        let n = if self.watch.o.on(Action::Pause) { REPAIRS_PER_SAMPLE } else { usize::MAX };
        for _ in 0..n {
            let Some(id) = self.watch.deferred_repairs.pop_front() else { break };
            let Some(key) = self.slot_of(id) else { continue };
            let conn = &mut self.conns[key];
            conn.clear(flag::REPAIR_DEFERRED);
            if conn.outbox.is_none() && conn.has(flag::GAPPED) {
                self.repairs.drained(id, self.mesh.shards(), &mut self.effects);
            }
        }
        self.apply_effects();
    }

    /// Closes a connection that is behind, to free what it holds: what is queued is dropped
    /// (the outbox's memory goes at once) and the 4002 close frame, with a retry hint,
    /// follows what its socket already holds; a client still reading gets it, and one that
    /// has not read up to it within `--overload-reclaim-grace` (1 s) is reset, so the kernel
    /// frees its buffers then rather than after the close timeout.
    fn close_to_reclaim(&mut self, key: usize) {
        let reason = CloseReason::SlowConsumer;
        self.counters.count_close(&reason);
        self.conns[key].clear(flag::WELCOME_PENDING);
        // When to come back: 2 to 4 s, jittered, so the closed do not return together.
        let retry = self.retry_ms(2000);
        let (code, _) = reason.frame();
        let why = retry_reason(retry, "slow consumer: the server is reclaiming memory");
        self.queue_close(key, &close_payload(code.0, &why), true);
        self.leave_indexes(key);
        if !self.conns.contains(key) {
            return;
        }
        self.set_phase(key, Phase::Closing);
        let d = (self.now + self.p.reclaim_ticks).min(self.drain_deadline);
        self.arm(key, Some(d));
        self.flush(key);
    }
}
