use std::time::Duration;

use super::*;

fn rule(name: &str, events: Vec<EventRule>) -> UpstreamRule {
    UpstreamRule {
        name: name.into(),
        url: "http://127.0.0.1:1/rc".into(),
        addr: "127.0.0.1:1".parse().unwrap(),
        host: "127.0.0.1:1".into(),
        path: "/rc".into(),
        events,
        forward_headers: Vec::new(),
        refresh_lead: Duration::from_secs(30),
        timeout: Duration::from_secs(1),
        batch_max: 128,
        batch_bytes: 1 << 20,
        max_in_flight: 2,
        queue_max: 100,
        max_response: 1 << 20,
        secret: None,
        breaker: Default::default(),
    }
}

const LIMITS: ClientLimits = ClientLimits {
    messages_per_s: 10.0,
    message_burst: 20.0,
    bytes_per_s: 1e6,
    byte_burst: 1e6,
    queue: 4,
};

fn ups(rules: Vec<UpstreamRule>) -> Upstreams {
    let rules: Vec<Arc<UpstreamRule>> = rules.into_iter().map(Arc::new).collect();
    let stats: Vec<Arc<BackendStats>> = rules.iter().map(|_| Arc::default()).collect();
    Upstreams::new(&rules, &stats, Arc::from("node-1"), LIMITS, 42)
}

fn conn(slot: u32) -> ConnId {
    ConnId { shard: 0, slot, gen: 1 }
}

fn rpc(slot: u32, id: u32) -> Event {
    Event {
        conn: conn(slot),
        user: Some(Arc::from("u1")),
        device: None,
        call: Call::Rpc { id, method: Arc::from("chat.send"), data: format!("{{\"n\":{id}}}") },
    }
}

fn ok_results(n: usize) -> CallResult {
    let r: Vec<String> = (0..n).map(|i| format!("{{\"data\":{i}}}")).collect();
    CallResult::Response {
        status: 200,
        body: format!("{{\"results\":[{}]}}", r.join(",")).into_bytes(),
    }
}

fn state(u: &Upstreams) -> &'static str {
    let s = u.backends[0].breaker.state();
    assert_eq!(u.backends[0].stats.breaker_state.get(), s.gauge(), "the gauge follows");
    s.as_str()
}

fn poll(u: &mut Upstreams, now: u64) -> (Vec<Request>, Vec<Done>) {
    let (mut out, mut done, mut ch) = (Vec::new(), Vec::new(), Vec::new());
    u.poll(now, &mut out, &mut done, &mut ch);
    (out, done)
}

fn complete(u: &mut Upstreams, r: &Request, res: CallResult, now: u64) -> Vec<Done> {
    let (mut done, mut ch) = (Vec::new(), Vec::new());
    u.complete(r.backend, r.id, res, now, &mut done, &mut ch);
    done
}

#[test]
fn routes_by_event_and_pattern_first_match_wins() {
    let u = Routes(vec![
        Arc::new(rule(
            "chat",
            vec![EventRule::Rpc("chat.*".into()), EventRule::Publish("rooms.*".into())],
        )),
        Arc::new(rule("rest", vec![EventRule::Rpc("*".into()), EventRule::Send])),
    ]);
    let call = |c: Call| u.route(&c);
    assert_eq!(call(Call::Rpc { id: 1, method: "chat.send".into(), data: "1".into() }), Some(0));
    assert_eq!(call(Call::Rpc { id: 1, method: "game.move".into(), data: "1".into() }), Some(1));
    assert_eq!(call(Call::Send { data: "1".into() }), Some(1));
    assert_eq!(call(Call::Publish { id: 1, channel: "rooms.1".into(), data: "1".into() }), Some(0));
    assert_eq!(call(Call::Publish { id: 1, channel: "news".into(), data: "1".into() }), None);
    assert_eq!(call(Call::Subscribe { channel: "rooms.1".into(), since: None }), None);
}

#[test]
fn an_idle_backend_gets_each_event_at_once_and_a_busy_one_gets_them_batched() {
    let mut u = ups(vec![rule("app", vec![EventRule::Rpc("*".into())])]);
    u.submit(0, rpc(1, 1), 0).unwrap();
    let (reqs, _) = poll(&mut u, 0);
    assert_eq!(reqs.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"events":[{"event":"rpc","conn":conn(1).to_string(),"user":"u1","device":null,"node":"node-1","method":"chat.send","data":{"n":1}}]})
    );
    u.submit(0, rpc(2, 2), 0).unwrap();
    let (second, _) = poll(&mut u, 0);
    assert_eq!(second.len(), 1, "a second slot: sent at once too");
    // Both slots busy: the next 50 events wait and leave together.
    for s in 3..53 {
        u.submit(0, rpc(s, s), 1).unwrap();
    }
    assert!(poll(&mut u, 1).0.is_empty());
    let done = complete(&mut u, &reqs[0], ok_results(1), 5);
    assert_eq!(done, vec![Done { event: rpc(1, 1), outcome: Outcome::Data(Some("0".into())) }]);
    let (batch, _) = poll(&mut u, 5);
    assert_eq!(batch.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&batch[0].body).unwrap();
    assert_eq!(body["events"].as_array().unwrap().len(), 50);
    let done = complete(&mut u, &batch[0], ok_results(50), 9);
    assert_eq!(done.len(), 50);
    for (i, d) in done.iter().enumerate() {
        assert_eq!(d.event.conn, conn(i as u32 + 3), "in order");
        assert_eq!(d.outcome, Outcome::Data(Some(i.to_string())));
    }
}

#[test]
fn batches_respect_batch_max_and_bytes() {
    let mut r = rule("app", vec![EventRule::Rpc("*".into())]);
    r.batch_max = 3;
    r.max_in_flight = 1;
    let mut u = ups(vec![r]);
    for s in 0..8 {
        u.submit(0, rpc(s, s), 0).unwrap();
    }
    let sizes = |reqs: &[Request]| -> Vec<usize> {
        reqs.iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .collect()
    };
    let (reqs, _) = poll(&mut u, 0);
    assert_eq!(sizes(&reqs), vec![3]);
    complete(&mut u, &reqs[0], ok_results(3), 1);
    let (reqs, _) = poll(&mut u, 1);
    assert_eq!(sizes(&reqs), vec![3]);
    // A byte cap below two events' size: one per request, but never none.
    let mut r = rule("app", vec![EventRule::Rpc("*".into())]);
    r.batch_bytes = 1024;
    r.max_in_flight = 1;
    let mut u = ups(vec![r]);
    let big = |s: u32| Event {
        call: Call::Rpc { id: s, method: "m".into(), data: format!("\"{}\"", "x".repeat(700)) },
        ..rpc(s, s)
    };
    u.submit(0, big(1), 0).unwrap();
    u.submit(0, big(2), 0).unwrap();
    let (reqs, _) = poll(&mut u, 0);
    assert_eq!(sizes(&reqs), vec![1]);
}

#[test]
fn one_call_per_connection_in_flight_and_its_queue_is_bounded() {
    let mut u = ups(vec![rule("app", vec![EventRule::Rpc("*".into())])]);
    for id in 0..5 {
        u.submit(0, rpc(1, id), 0).unwrap(); // one in the backend queue, four waiting
    }
    let e = u.submit(0, rpc(1, 5), 0).unwrap_err();
    assert_eq!(e.code_str(), "too_many_requests");
    assert!(e.temporary);
    let (reqs, _) = poll(&mut u, 0);
    assert_eq!(reqs.len(), 1, "the connection's second call waits for its first");
    let mut seen = Vec::new();
    let mut req = reqs.into_iter().next();
    while let Some(r) = req {
        let done = complete(&mut u, &r, ok_results(1), 1);
        for d in &done {
            if let Call::Rpc { id, .. } = d.event.call {
                seen.push(id);
            }
        }
        let (next, _) = poll(&mut u, 1);
        assert!(next.len() <= 1);
        req = next.into_iter().next();
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4], "in the order sent");
    assert_eq!(u.tracked(), 1, "the connection keeps its rate buckets while open");
    u.forget(conn(1));
    assert_eq!(u.tracked(), 0);
}

#[test]
fn a_closed_connections_accepted_events_still_go() {
    let mut u = ups(vec![rule("app", vec![EventRule::Send])]);
    let send = |n: u32| Event { call: Call::Send { data: n.to_string() }, ..rpc(7, n) };
    u.submit(0, send(1), 0).unwrap();
    u.submit(0, send(2), 0).unwrap();
    u.forget(conn(7));
    let (reqs, _) = poll(&mut u, 0);
    complete(&mut u, &reqs[0], ok_results(1), 1);
    let (reqs, _) = poll(&mut u, 1);
    assert_eq!(reqs.len(), 1, "the waiting send went after the connection closed");
    complete(&mut u, &reqs[0], ok_results(1), 2);
    assert_eq!(u.tracked(), 0, "and then the entry went");
}

#[test]
fn the_rate_limit_refuses_with_a_retry_hint() {
    let mut u = ups(vec![rule("app", vec![EventRule::Rpc("*".into())])]);
    for _ in 0..20 {
        u.admit(conn(1), 10, 0).unwrap();
    }
    let wait = u.admit(conn(1), 10, 0).unwrap_err();
    assert_eq!(wait, 100, "one message per 100 ms at 10/s");
    assert!(u.admit(conn(1), 10, 50).is_err());
    assert!(u.admit(conn(1), 10, 100).is_ok());
    // Another connection has its own bucket.
    assert!(u.admit(conn(2), 10, 100).is_ok());
    // Bytes: a message larger than what is left waits for the refill.
    let mut u = Upstreams::new(
        &[],
        &[],
        Arc::from("n"),
        ClientLimits { bytes_per_s: 1000.0, byte_burst: 1000.0, ..LIMITS },
        1,
    );
    assert!(u.admit(conn(1), 900, 0).is_ok());
    assert_eq!(u.admit(conn(1), 500, 0), Err(400));
}

#[test]
fn failures_trip_the_breaker_and_then_everything_is_refused_at_once() {
    let mut r = rule("app", vec![EventRule::Rpc("*".into())]);
    r.max_in_flight = 1;
    let mut u = ups(vec![r]);
    for i in 0..5u32 {
        u.submit(0, rpc(i, i), u64::from(i)).unwrap();
        let (reqs, _) = poll(&mut u, u64::from(i));
        let done = complete(&mut u, &reqs[0], CallResult::Timeout, u64::from(i));
        assert_eq!(done.len(), 1);
        match &done[0].outcome {
            Outcome::Error(f) => {
                assert_eq!((f.code_str(), f.temporary), ("upstream_timeout", true))
            }
            o => panic!("{o:?}"),
        }
    }
    let e = u.submit(0, rpc(9, 9), 10).unwrap_err();
    assert_eq!(e.code_str(), "upstream_unavailable");
    assert!(e.retry_ms.is_some_and(|ms| (3_000..=6_000).contains(&ms)), "{e:?}");
    assert_eq!(state(&u), "open");
    assert!(u.backends[0].breaker.retry_in(10) > 0);
    assert_eq!(u.backends[0].stats.breaker_trips.get(), 1);
    assert_eq!(u.backends[0].stats.errors[0].get(), 5, "five timeouts");
}

#[test]
fn four_xx_and_explicit_errors_are_not_failures_but_5xx_and_bad_answers_are() {
    let mut r = rule("app", vec![EventRule::Rpc("*".into())]);
    r.max_in_flight = 1;
    let mut u = ups(vec![r]);
    let go = |u: &mut Upstreams, res: CallResult, t: u64| -> Outcome {
        u.submit(0, rpc(t as u32, 1), t).unwrap();
        let (reqs, _) = poll(u, t);
        complete(u, &reqs[0], res, t).remove(0).outcome
    };
    for t in 0..10 {
        match go(&mut u, CallResult::Response { status: 403, body: b"no".to_vec() }, t) {
            Outcome::Error(f) => assert!(!f.temporary && f.message.contains("403"), "{f:?}"),
            o => panic!("{o:?}"),
        }
        let body =
            br#"{"results":[{"error":{"code":"nope","message":"m","temporary":false}}]}"#.to_vec();
        match go(&mut u, CallResult::Response { status: 200, body }, t) {
            Outcome::Refused(f) => {
                assert_eq!((f.code.as_str(), f.message.as_str()), ("\"nope\"", "m"))
            }
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(state(&u), "closed");
    for t in 100..105 {
        let res = if t % 2 == 0 {
            CallResult::Response { status: 503, body: Vec::new() }
        } else {
            CallResult::Response { status: 200, body: b"{\"results\":[]}".to_vec() }
        };
        match go(&mut u, res, t) {
            Outcome::Error(f) => assert_eq!(f.code_str(), "upstream_error"),
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(state(&u), "open");
}

#[test]
fn an_open_breaker_fails_queued_events_fast_and_probes_close_it_again() {
    let mut r = rule("app", vec![EventRule::Rpc("*".into())]);
    r.max_in_flight = 1;
    let mut u = ups(vec![r]);
    // A request in flight, ten events queued behind it; then the in-flight one trips it.
    u.backends[0].breaker =
        Breaker::new(breaker::BreakerConfig { consecutive: 1, ..Default::default() }, 1);
    u.submit(0, rpc(0, 0), 0).unwrap();
    let (reqs, _) = poll(&mut u, 0);
    for s in 1..11 {
        u.submit(0, rpc(s, s), 0).unwrap();
    }
    let done = complete(&mut u, &reqs[0], CallResult::Transport("refused".into()), 1);
    assert_eq!(done.len(), 1);
    let (none, failed) = poll(&mut u, 1);
    assert!(none.is_empty());
    assert_eq!(failed.len(), 10, "queued events are answered at once, not kept waiting");
    assert!(failed.iter().all(
        |d| matches!(&d.outcome, Outcome::Error(f) if f.code_str() == "upstream_unavailable")
    ));
    // After the open period: probes go one at a time here (one slot); three good ones close it.
    let until = u.backends[0].breaker.retry_in(1) + 1;
    for k in 0..3 {
        u.submit(0, rpc(20 + k, 0), until).unwrap();
        let (reqs, _) = poll(&mut u, until);
        assert_eq!(reqs.len(), 1);
        complete(&mut u, &reqs[0], ok_results(1), until);
    }
    assert_eq!(state(&u), "closed");
}

#[test]
fn results_of_every_shape_parse_and_bad_ones_are_named() {
    let r = parse_results(
        br#"{"results":[{"data":{"a":1}},{},{"error":{"code":42,"message":"x","temporary":true}},{"disconnect":{"code":4400,"reason":"bye"}}]}"#,
        4,
    )
    .unwrap();
    assert_eq!(r[0], Outcome::Data(Some("{\"a\":1}".into())));
    assert_eq!(r[1], Outcome::Data(None));
    assert_eq!(
        r[2],
        Outcome::Refused(Failure {
            code: "42".into(),
            message: "x".into(),
            temporary: true,
            retry_ms: None
        })
    );
    assert_eq!(r[3], Outcome::Disconnect { code: 4400, reason: "bye".into() });
    for (body, says) in [
        (&br#"{"results":[]}"#[..], "0 results for 1"),
        (br#"[1]"#, "not {\"results\""),
        (br#"{"results":[{"data":1,"error":{"code":"x"}}]}"#, "more than one"),
        (br#"{"results":[{"disconnect":{"code":1000}}]}"#, "4000-4999"),
        (br#"{"results":[{"error":{"code":{"a":1}}}]}"#, "string or an integer"),
        (br#"{"results":[{"colour":1}]}"#, "result 0"),
    ] {
        let e = parse_results(body, 1).unwrap_err();
        assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(body));
    }
}
