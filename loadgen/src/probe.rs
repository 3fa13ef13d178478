//! What loadgen reads about the server and the host: a process's memory and CPU time from
//! /proc/PID, kernel slab memory from /proc/slabinfo, socket counts from /proc/net/sockstat,
//! and its own CPU time.

use std::collections::BTreeMap;

/// Memory of a process, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMem {
    pub rss: u64,
    pub rss_anon: u64,
}

pub fn proc_mem(pid: u32) -> Result<ProcMem, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e} (is --server-pid right?)"))?;
    Ok(parse_status(&text))
}

fn parse_status(text: &str) -> ProcMem {
    let kb = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    ProcMem { rss: kb("VmRSS:"), rss_anon: kb("RssAnon:") }
}

/// User plus system CPU seconds of a process.
pub fn proc_cpu_seconds(pid: u32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    parse_stat_cpu(&text).ok_or_else(|| format!("cannot parse /proc/{pid}/stat"))
}

fn parse_stat_cpu(text: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let hz = ringcast_sys::clock_ticks_per_second();
    Some((utime + stime) / hz)
}

pub use ringcast_sys::own_cpu_seconds;

/// Bytes in use per slab cache (active objects times object size). Needs root.
pub fn slab_bytes() -> Result<BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string("/proc/slabinfo")
        .map_err(|e| format!("cannot read /proc/slabinfo: {e} (root is needed)"))?;
    Ok(parse_slabinfo(&text))
}

fn parse_slabinfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with("slabinfo") && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let active: u64 = f.get(1)?.parse().ok()?;
            let size: u64 = f.get(3)?.parse().ok()?;
            Some((f[0].to_string(), active * size))
        })
        .collect()
}

/// The TCP line of /proc/net/sockstat: (sockets in use, socket buffer pages).
pub fn tcp_sockstat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let f: Vec<&str> = line.split_whitespace().collect();
    let field = |k: &str| {
        f.iter()
            .position(|x| *x == k)
            .and_then(|i| f.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("inuse"), field("mem"))
}

/// The caches that grow by a TCP connection: where kernel bytes per connection come from.
pub fn slab_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = after
        .iter()
        .map(|(k, a)| (k.clone(), *a as i64 - *before.get(k).unwrap_or(&0) as i64))
        .filter(|(_, d)| *d != 0)
        .collect();
    v.sort_by_key(|(_, d)| -d.abs());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let st = "Name:\tx\nVmRSS:\t    2048 kB\nRssAnon:\t    1024 kB\n";
        assert_eq!(parse_status(st), ProcMem { rss: 2 << 20, rss_anon: 1 << 20 });
        let stat = "42 (a b) S 1 1 1 0 -1 0 0 0 0 0 300 100 0 0 20 0 1 0";
        let hz = ringcast_sys::clock_ticks_per_second();
        assert_eq!(parse_stat_cpu(stat), Some(400.0 / hz));
        let slab = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize>\nTCP 10 12 2368 13 8 : t\n";
        assert_eq!(parse_slabinfo(slab).get("TCP"), Some(&23680));
    }
}
