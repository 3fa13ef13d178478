//! The Grafana dashboard and the alert rules name only metrics the server serves: every
//! `ringcast_*` name in docs/grafana-dashboard.json and deploy/prometheus/ringcast-rules.yml
//! is a family in /metrics (histograms by their `_bucket`, `_sum` and `_count` series).
#![allow(clippy::unwrap_used)] // reason: a panic is the failure report

mod common;

use common::Server;

fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ringcast_") {
        let start = i + at;
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end] == b'_' || b[end].is_ascii_digit())
        {
            end += 1;
        }
        out.push(text[start..end].to_string());
        i = end;
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_use_is_served() {
    // With a backend configured, so its families are served too (nothing listens there).
    let cfg = std::env::temp_dir().join(format!("ringcast-dash-{}.toml", std::process::id()));
    let toml =
        "[[upstreams]]\nname = \"app\"\nurl = \"http://127.0.0.1:9/rc\"\nevents = [\"rpc\"]\n";
    std::fs::write(&cfg, toml).unwrap();
    let s = Server::start(&["--config", &cfg.display().to_string()]);
    let _ = std::fs::remove_file(&cfg);
    let (st, _, metrics) = s.http("GET", "/metrics", "", b"");
    assert_eq!(st, 200);
    let families: Vec<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    // Served only with --tls-listen (tests/tls.rs reads it).
    let conditional = ["ringcast_tls_certificate_expiry_timestamp_seconds"];
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["docs/grafana-dashboard.json", "deploy/prometheus/ringcast-rules.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let used = names(&text);
        assert!(used.len() > 5, "{file}: {used:?}");
        for n in used {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|f| families.contains(f)))
                .unwrap_or(&n);
            assert!(
                families.contains(&family) || conditional.contains(&family),
                "{file} uses {n}, which /metrics does not serve"
            );
        }
    }
}
