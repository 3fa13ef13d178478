//! Printing a scenario's report for a human (the JSON form is `--json`).

use serde_json::Value;

pub(crate) fn print_report(r: &Value, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!("{}  {}", r["scenario"].as_str().unwrap_or(""), r["target"].as_str().unwrap_or(""));
    let c = &r["connect"];
    println!(
        "  connected           {} / {} (refused {}, errors {})",
        c["upgraded"], c["attempted"], c["refused_by_status"], c["errors"]
    );
    println!(
        "  expected            {}   received {}   unique {}   missing {}",
        r["expected"], r["received"], r["unique"], r["missing"]
    );
    println!(
        "  duplicated          {}   out of order {} (by {})   seq gaps {}   misdelivered {}   (other messages {})",
        r["duplicates"], r["out_of_order"], r["order_judged_by"].as_str().unwrap_or(""), r["seq_gaps"], r["misdelivered"], r["other_messages"]
    );
    println!("  publish errors      {} {}", r["publish_errors"], r["publish_error_statuses"]);
    let l = &r["latency_us"];
    println!(
        "  latency µs          p50 {}  p90 {}  p99 {}  p999 {}  max {}",
        l["p50"], l["p90"], l["p99"], l["p999"], l["max"]
    );
    let c = &r["completion_us"];
    println!(
        "  completion µs       p50 {}  p99 {}  max {}  (send to last arrival, per message)",
        c["p50"], c["p99"], c["max"]
    );
    println!(
        "  deliveries/s        {:.0}  (first send to last receive: {:.3} s)",
        f(&r["deliveries_per_sec"]),
        f(&r["first_send_to_last_receive_secs"])
    );
    if !r["server_cpu_secs"].is_null() {
        println!("  server CPU          {:.3} s", f(&r["server_cpu_secs"]));
    }
    if !r["deliveries_per_server_cpu_sec"].is_null() {
        println!("  deliveries/server CPU-s  {:.0}", f(&r["deliveries_per_server_cpu_sec"]));
    }
    if let Some(m) = r["server_rss"].as_object() {
        println!(
            "  server RSS          {:.1} MiB before, {:.1} MiB connected, {:.1} MiB after publishing ({} slow subscribers)",
            f(&m["before_connect"]) / 1048576.0,
            f(&m["connected"]) / 1048576.0,
            f(&m["after_publish"]) / 1048576.0,
            r["slow_subscribers"]
        );
    }
    println!("  loadgen CPU         {:.3} s", f(&r["loadgen_cpu_secs"]));
}

pub(crate) fn print_hold(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "hold  {}  ({} threads, {} source addresses)",
        r["target"].as_str().unwrap_or(""),
        r["threads"],
        r["sources"]
    );
    println!("  upgraded            {} / {}", r["upgraded"], r["attempted"]);
    println!("  refused by status   {}", r["refused_by_status"]);
    println!("  errors              {}", r["errors"]);
    println!("  upgrades/s          {:.0}  (first attempt to last 101)", f(&r["upgrades_per_sec"]));
    let h = &r["handshake_us"];
    println!(
        "  handshake µs        p50 {}  p90 {}  p99 {}  p999 {}  max {}",
        h["p50"], h["p90"], h["p99"], h["p999"], h["max"]
    );
    println!(
        "  open when measured  {}   open at end {}",
        r["open_when_measured"], r["open_at_end"]
    );
    println!(
        "  closed by server    {}   dropped {}",
        r["closed_by_server"], r["dropped_by_server"]
    );
    if let Some(m) = r["server_memory"].as_object() {
        println!(
            "  server RSS          {:.1} MiB -> {:.1} MiB: {:.0} B/conn (anon {:.0} B/conn)",
            f(&m["rss_before"]) / 1048576.0,
            f(&m["rss_after"]) / 1048576.0,
            f(&m["rss_per_conn"]),
            f(&m["anon_per_conn"])
        );
    }
    if let Some(k) = r["kernel_memory"].as_object() {
        println!(
            "  kernel slab         {:.0} B/conn (both ends of loopback, and loadgen's epoll)",
            f(&k["slab_per_conn_both_ends"])
        );
        if let Some(top) = k["top"].as_array() {
            let parts: Vec<String> = top
                .iter()
                .map(|t| format!("{} {:.0}", t["cache"].as_str().unwrap_or(""), f(&t["per_conn"])))
                .collect();
            println!("                      {}", parts.join(", "));
        }
    }
    if !r["server_cpu_secs"].is_null() {
        println!("  server CPU          {:.2} s", f(&r["server_cpu_secs"]));
    }
    println!("  loadgen CPU         {:.2} s", f(&r["loadgen_cpu_secs"]));
}
