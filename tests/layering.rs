//! The layering of docs/architecture.md, held where a grep can hold it: what the pure layers
//! (push, cluster, the connection state) and the API may not import. Test modules are left out:
//! a test may read the clock.

use std::path::Path;

/// The non-test source of every `.rs` file under `dir`.
fn sources(dir: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("read source");
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.push((p.display().to_string(), code));
            }
        }
    }
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

fn assert_none(dir: &str, forbidden: &[&str], skip: &[&str]) {
    for (path, code) in sources(dir) {
        if skip.iter().any(|s| path.ends_with(s)) {
            continue;
        }
        for f in forbidden {
            assert!(!code.contains(f), "{path} uses {f:?}, which its layer may not");
        }
    }
}

#[test]
fn the_push_layer_is_pure() {
    // Harnesses for tests and fuzzing only (feature `testing`).
    let skip = ["push/testing.rs"];
    assert_none(
        "src/push",
        &["crate::server", "crate::api", "monoio::", "clock::", "ringcast_sys"],
        &skip,
    );
    assert_none("src/cluster", &["crate::server", "crate::api", "monoio::", "clock::"], &[]);
}

#[test]
fn the_auth_layer_is_pure() {
    // It reads its key file on reload (std::fs, from the signal thread), never the clock.
    assert_none(
        "src/auth",
        &[
            "crate::server",
            "crate::api",
            "crate::push",
            "monoio::",
            "clock::",
            "SystemTime",
            "ringcast_sys",
        ],
        &["auth/testing.rs"],
    );
}

#[test]
fn connection_state_does_no_io_and_reads_no_clock() {
    assert_none("src/server/conn", &["sys::", "clock::", "monoio::", "crate::api"], &[]);
}

#[test]
fn the_api_does_not_reach_into_the_shard() {
    assert_none("src/api", &["server::shard", "server::conn", "shard::"], &[]);
}

#[test]
fn the_protocol_and_loadgen_stand_apart_from_the_gateway() {
    assert_none(
        "proto/src",
        &["monoio::", "ringcast::", "ringcast_sys", "Instant::now", "SystemTime"],
        &[],
    );
    assert_none("loadgen/src", &["ringcast::"], &[]);
}
