//! Configuration: precedence of defaults, file, environment and flags, and every kind of error,
//! through `ringcast check-config`.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: test code: a panic is the failure report, and tests time themselves

use std::process::{Command, Output};

fn check(toml: &str, env: &[(&str, &str)], flags: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!(
        "ringcast-config-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ringcast.toml");
    std::fs::write(&file, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.arg("check-config").arg(&file).args(flags);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RINGCAST_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

fn setting(out: &Output, key: &str) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} not in {text}"));
    let (value, source) = line.split_once("  # ").unwrap();
    (value[key.len() + 3..].trim_matches('"').to_string(), source.to_string())
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let toml = "ping_interval = \"20s\"\nmax-frame-size = \"128KiB\"\nlisten = \"127.0.0.1:9999\"\nallowed_origins = [\"https://a\", \"https://b\"]\n";
    let out = check(
        toml,
        &[("RINGCAST_PING_INTERVAL", "7s"), ("RINGCAST_LISTEN", "127.0.0.1:7777")],
        &["--listen", "127.0.0.1:6666"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(setting(&out, "listen"), ("127.0.0.1:6666".into(), "flag".into()));
    assert_eq!(setting(&out, "ping-interval"), ("7s".into(), "env".into()));
    assert_eq!(setting(&out, "max-frame-size"), ("128KiB".into(), "file".into()));
    assert_eq!(setting(&out, "allowed-origins"), ("https://a,https://b".into(), "file".into()));
    assert_eq!(setting(&out, "pong-timeout"), ("10s".into(), "default".into()));
}

#[test]
fn the_api_key_is_never_printed() {
    let out = check("api_key = \"hunter2\"\n", &[], &[]);
    assert!(out.status.success());
    assert_eq!(setting(&out, "api-key"), ("<set>".into(), "file".into()));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn every_kind_of_error_names_what_is_wrong() {
    // (file, environment, flags, what the error must say)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "nonsense_key = 1\n",
            vec![],
            vec![],
            "unknown key `nonsense_key`; known keys: ack-attempts, ack-timeout, active-window",
        ),
        (
            "max_frame_size = \"12 parsecs\"\n",
            vec![],
            vec![],
            "key `max_frame_size`: invalid value '12 parsecs'",
        ),
        ("shards = \"many\"\n", vec![], vec![], "key `shards`: invalid value 'many'"),
        ("tick = \"5m\"\n", vec![], vec![], "--tick must be between 1ms and 1s"),
        ("stream_idle_ttl = \"0s\"\n", vec![], vec![], "--stream-idle-ttl must be at least 1s"),
        (
            "listen = { host = 1 }\n",
            vec![],
            vec![],
            "key `listen`: expected a string, number, boolean or list of strings",
        ),
        (
            "subprotocols = [1, 2]\n",
            vec![],
            vec![],
            "key `subprotocols`: the list must hold strings",
        ),
        ("listen = \n", vec![], vec![], "is not valid TOML"),
        ("", vec![("RINGCAST_BACKLOG", "0")], vec![], "invalid value '0' for '--backlog"),
        ("", vec![], vec!["--max-header-bytes", "1MiB"], "--max-header-bytes must be between"),
        ("", vec![], vec!["--api-listen", "0.0.0.0:8081"], "--api-key or [[api_keys]] is required"),
        ("", vec![], vec!["--io-driver", "kqueue"], "invalid value 'kqueue'"),
    ];
    for (toml, env, flags, want) in cases {
        let out = check(toml, &env, &flags);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml:?} {env:?} {flags:?}: {err}");
        assert!(err.contains(want), "{toml:?} {env:?} {flags:?}: expected {want:?} in {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--config", "/nonexistent/ringcast.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/ringcast.toml"));
}

#[test]
fn a_config_file_runs_the_server() {
    let dir = std::env::temp_dir().join(format!("ringcast-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ringcast.toml");
    let data = dir.join("data");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\nshards = 1\nlog_format = \"json\"\ndata_dir = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--config", file.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // The log is replayed first; then the server says where it listens.
    let mut line = String::new();
    while !line.contains("listening on ws://") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "ringcast exited"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    assert!(
        v["fields"]["message"].as_str().unwrap().contains("listening on ws://127.0.0.1:"),
        "{line}"
    );
    assert_eq!(v["fields"]["shards"], 1);
}

#[test]
fn stream_rules_load_from_the_file_and_print_as_toml() {
    let toml = "history_size = 50\n[[streams]]\npattern = \"ticks.*\"\nguarantee = \"ephemeral\"\n\
                [[streams]]\npattern = \"chat.*\"\nhistory_size = 1000\nhistory_ttl = \"10m\"\n";
    let out = check(toml, &[], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(setting(&out, "history-size"), ("50".into(), "file".into()));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // The printed configuration is TOML again, rules included.
    let parsed: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
    let rules = parsed["streams"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["pattern"].as_str(), Some("ticks.*"));
    assert_eq!(rules[1]["history_ttl"].as_str(), Some("600000ms"));
    let bad = check("[[streams]]\npattern = \"x\"\nguarantee = \"durable\"\n", &[], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("[[streams]] #1"));
}
