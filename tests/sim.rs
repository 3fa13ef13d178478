//! The shard simulated: two shards driven turn by turn with a fake clock, clients on in-memory
//! sockets (socketpairs) speaking through ringcast's codec in the client role. Protocol and
//! session behaviour (eviction, heartbeats, both close handshakes, ordering across shards,
//! kick, replace, slow consumers, drain) without a network, a runtime or a sleep: time moves
//! only when a test says so, so a 30 s idle timeout takes no time at all.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // reason: a panic is the failure report

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringcast::clock;
use ringcast::config::Config;
use ringcast::proto::frame::encode_frame;
use ringcast::proto::{CloseReason, Decoder, Event, Limits, OpCode, Role};
use ringcast::push::ids::home_of;
use ringcast::push::msg::{Meta, Payload, Priority, ShardMsg};
use ringcast::push::report::{Report, Totals};
use ringcast::server::sim::SimNode;

const TICK: Duration = Duration::from_millis(100);

fn node(args: &[&str]) -> SimNode {
    let mut argv = vec![
        "ringcast",
        "--tick",
        "100ms",
        "--ping-interval",
        "0",
        "--idle-timeout",
        "0",
        "--data-dir",
        "none",
    ];
    argv.extend_from_slice(args);
    SimNode::new(&Config::parse_from(argv), 2).unwrap()
}

#[derive(Debug, PartialEq)]
enum Got {
    Text(String),
    Ping,
    Close(Option<u16>, String),
}

struct Client {
    s: UnixStream,
    dec: Decoder,
    buf: Vec<u8>,
    /// The part of a message received so far.
    partial: Vec<u8>,
    /// A close frame has arrived.
    got_close: bool,
    eof: bool,
}

impl Client {
    /// Connects to `shard` and upgrades with this query string; asserts the 101.
    fn open(sim: &mut SimNode, shard: usize, query: &str) -> Client {
        let mut s = sim.connect(shard).unwrap();
        let head = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        sim.run();
        let mut c = Client {
            s,
            dec: Decoder::new(Role::Client),
            buf: Vec::new(),
            partial: Vec::new(),
            got_close: false,
            eof: false,
        };
        c.fill();
        let end = c.buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole response") + 4;
        let head: Vec<u8> = c.buf.drain(..end).collect();
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        c
    }

    /// Reads what the server has written so far (never waits).
    fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    self.eof = true;
                    return;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Every frame the server has sent so far.
    fn recv(&mut self) -> Vec<Got> {
        self.fill();
        let limits = Limits { max_frame: 1 << 24, max_message: 1 << 24 };
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((ev, n)) = self.dec.decode(&mut self.buf[pos..], &limits).unwrap() {
            pos += n;
            out.push(match ev {
                Event::Data { payload, last, .. } => {
                    // A message may arrive in pieces, as the socket delivers it.
                    self.partial.extend_from_slice(payload);
                    if !last {
                        continue;
                    }
                    let whole = std::mem::take(&mut self.partial);
                    Got::Text(String::from_utf8_lossy(&whole).into())
                }
                Event::Ping(_) => Got::Ping,
                Event::Pong(_) => continue,
                Event::Close(code, reason) => {
                    self.got_close = true;
                    Got::Close(code.map(|c| c.0), reason.to_string())
                }
            });
        }
        self.buf.drain(..pos);
        out
    }

    /// Every text message so far, as JSON.
    fn messages(&mut self) -> Vec<serde_json::Value> {
        self.recv()
            .into_iter()
            .filter_map(|g| match g {
                Got::Text(t) => Some(serde_json::from_str(&t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn send(&mut self, op: OpCode, payload: &[u8]) {
        let mut v = Vec::new();
        encode_frame(&mut v, op, true, Some([7, 1, 8, 2]), payload);
        self.s.write_all(&v).unwrap();
    }

    fn close(&mut self, code: u16) {
        self.send(OpCode::Close, &code.to_be_bytes());
    }

    /// Whether the server has closed its end (EOF, after any bytes).
    fn closed(&mut self) -> bool {
        self.fill();
        self.eof
    }
}

fn json_payload(v: &str) -> Payload {
    Payload::Json(Arc::from(serde_json::value::RawValue::from_string(v.into()).unwrap()))
}

/// Publishes as the API does: to the channel's home shard. Returns the report.
fn publish(sim: &SimNode, channel: &str, data: &str) -> Arc<Report> {
    publish_at(sim, channel, data, Priority::Normal)
}

fn publish_at(sim: &SimNode, channel: &str, data: &str, priority: Priority) -> Arc<Report> {
    publish_with(sim, channel, data, priority, None)
}

fn publish_with(
    sim: &SimNode,
    channel: &str,
    data: &str,
    priority: Priority,
    meta: Option<Meta>,
) -> Arc<Report> {
    let (report, part, _done) = Report::new(clock::now());
    let m = ShardMsg::Publish {
        channel: channel.into(),
        payload: json_payload(data),
        priority,
        meta: meta.map(Arc::new),
        report: part,
    };
    sim.send(home_of(channel, sim.shards()), m);
    report
}

/// A channel name whose home is `shard`.
fn homed_on(shard: usize, prefix: &str) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|n| home_of(n, 2) == shard).unwrap()
}

#[test]
fn a_silent_connection_is_closed_at_its_idle_timeout() {
    let mut sim = node(&["--idle-timeout", "30s"]);
    let mut c = Client::open(&mut sim, 0, "user=1");
    assert_eq!(c.messages()[0]["type"], "welcome");
    sim.advance_by_steps(Duration::from_secs(29), TICK);
    assert_eq!(c.recv(), []);
    sim.advance_by_steps(Duration::from_secs(2), TICK);
    assert_eq!(c.recv(), [Got::Close(Some(1000), "idle timeout".into())]);
    // The close handshake: our answer ends it, and the server lets go.
    c.close(1000);
    sim.run();
    assert!(c.closed());
    assert_eq!(sim.counters(0).open_connections.get(), 0);
}

#[test]
fn a_ping_unanswered_ends_the_connection_and_an_answer_keeps_it() {
    let mut sim = node(&["--ping-interval", "10s", "--pong-timeout", "5s"]);
    let mut quiet = Client::open(&mut sim, 0, "");
    let mut alive = Client::open(&mut sim, 1, "");
    quiet.messages();
    alive.messages();
    sim.advance_by_steps(Duration::from_secs(10), TICK);
    assert_eq!(quiet.recv(), [Got::Ping]);
    assert_eq!(alive.recv(), [Got::Ping]);
    alive.send(OpCode::Pong, b"");
    sim.advance_by_steps(Duration::from_secs(5), TICK);
    assert_eq!(quiet.recv(), [Got::Close(Some(1001), "pong timeout".into())]);
    assert!(quiet.closed(), "a dead peer gets no close handshake");
    assert_eq!(alive.recv(), []);
    assert!(!alive.closed());
    assert_eq!(sim.counters(0).open_connections.get(), 0);
    assert_eq!(sim.counters(1).open_connections.get(), 1);
}

#[test]
fn a_client_close_is_answered_and_the_server_shuts_its_side() {
    let mut sim = node(&[]);
    let mut c = Client::open(&mut sim, 1, "user=5&channels=news");
    c.messages();
    c.close(4321);
    sim.run();
    assert_eq!(c.recv(), [Got::Close(Some(4321), String::new())]);
    assert!(c.closed(), "the write side is shut once the answer is out");
    assert_eq!(sim.counters(1).subscriptions.get(), 0, "it left its channel at once");
    drop(c);
    sim.run();
    assert_eq!(sim.counters(1).open_connections.get(), 0);
}

#[test]
fn a_server_close_waits_for_the_client_answer_or_its_deadline() {
    let mut sim = node(&["--idle-timeout", "1s", "--close-timeout", "3s"]);
    let mut answers = Client::open(&mut sim, 0, "");
    let mut silent = Client::open(&mut sim, 0, "");
    answers.messages();
    silent.messages();
    sim.advance_by_steps(Duration::from_secs(1), TICK);
    for c in [&mut answers, &mut silent] {
        assert_eq!(c.recv(), [Got::Close(Some(1000), "idle timeout".into())]);
        assert!(!c.closed(), "the server reads on for the answer");
    }
    answers.close(1000);
    sim.run();
    assert!(answers.closed());
    assert_eq!(sim.counters(0).open_connections.get(), 1);
    sim.advance_by_steps(Duration::from_secs(3), TICK);
    assert!(silent.closed());
    assert_eq!(sim.counters(0).open_connections.get(), 0);
    assert_eq!(sim.counters(0).close_timeouts.get(), 1);
}

#[test]
fn a_subscription_is_in_place_before_it_is_acknowledged_across_shards() {
    let mut sim = node(&[]);
    // The channel is homed on shard 1; the subscribers sit on both shards.
    let ch = homed_on(1, "prices");
    let mut a = Client::open(&mut sim, 0, "");
    let mut b = Client::open(&mut sim, 1, "");
    a.messages();
    b.messages();
    for c in [&mut a, &mut b] {
        c.send(OpCode::Text, format!(r#"{{"type":"subscribe","channel":"{ch}"}}"#).as_bytes());
    }
    sim.run();
    for c in [&mut a, &mut b] {
        assert_eq!(c.messages()[0]["type"], "subscribed");
    }
    // Published only after the acks: each must reach both, in order, numbered from 1.
    let reports: Vec<_> = (1..=5).map(|i| publish(&sim, &ch, &i.to_string())).collect();
    sim.run();
    for c in [&mut a, &mut b] {
        let got: Vec<(u64, u64)> = c
            .messages()
            .iter()
            .map(|m| (m["seq"].as_u64().unwrap(), m["data"].as_u64().unwrap()))
            .collect();
        assert_eq!(got, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
    }
    for r in reports {
        assert_eq!(r.totals(), Totals { recipients: 2, queued: 2, ..Default::default() });
    }
}

#[test]
fn a_channel_seq_continues_after_its_last_subscriber_leaves() {
    let mut sim = node(&[]);
    let ch = homed_on(0, "news");
    let mut a = Client::open(&mut sim, 1, &format!("channels={ch}"));
    a.messages();
    publish(&sim, &ch, "1");
    sim.run();
    assert_eq!(a.messages()[0]["seq"], 1);
    let epoch = |c: &mut Client| c.messages()[0]["epoch"].clone();
    a.close(1000);
    sim.run();
    drop(a);
    let mut b = Client::open(&mut sim, 0, &format!("channels={ch}"));
    let e = epoch(&mut b);
    publish(&sim, &ch, "2");
    sim.run();
    let m = b.messages();
    assert_eq!((m[0]["seq"].as_u64(), &e), (Some(2), &e), "same epoch, next seq");
}

#[test]
fn a_kick_closes_every_connection_of_the_user_with_its_code() {
    let mut sim = node(&[]);
    let mut phone = Client::open(&mut sim, 0, "user=9&device=phone");
    let mut laptop = Client::open(&mut sim, 1, "user=9&device=laptop");
    phone.messages();
    laptop.messages();
    let (report, part, _done) = Report::new(clock::now());
    let reason = CloseReason::kicked(None, None);
    sim.send(home_of("9", 2), ShardMsg::KickUser { user: "9".into(), reason, report: part });
    sim.run();
    for c in [&mut phone, &mut laptop] {
        assert_eq!(c.recv(), [Got::Close(Some(4001), "kicked".into())]);
    }
    assert_eq!(report.totals().recipients, 2);
}

#[test]
fn a_second_connection_of_a_device_replaces_the_first() {
    let mut sim = node(&["--replace-same-device", "true"]);
    let mut old = Client::open(&mut sim, 0, "user=3&device=tab");
    old.messages();
    let mut new = Client::open(&mut sim, 1, "user=3&device=tab");
    assert_eq!(new.messages()[0]["type"], "welcome");
    assert_eq!(old.recv(), [Got::Close(Some(4000), "replaced".into())]);
    assert!(!new.closed());
}

#[test]
fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let mut sim = node(&[
        "--outbox-max-bytes",
        "64KiB",
        "--slow-consumer-timeout",
        "2s",
        "--close-timeout",
        "1s",
    ]);
    let ch = homed_on(0, "firehose");
    let mut slow = Client::open(&mut sim, 1, &format!("channels={ch}"));
    slow.messages();
    let data = format!("\"{}\"", "x".repeat(4000));
    // Far more than the socket buffer and the outbox hold together; the client reads nothing.
    let mut deferred = 0;
    for _ in 0..40 {
        let reports: Vec<_> = (0..25).map(|_| publish(&sim, &ch, &data)).collect();
        sim.run();
        deferred += reports.iter().map(|r| r.totals().deferred).sum::<u64>();
    }
    assert!(deferred > 0, "the outbox cap was never reached");
    sim.advance_by_steps(Duration::from_secs(2), TICK);
    assert_eq!(sim.counters(1).slow_consumers_closed.get(), 1);
    // The close handshake gets --close-timeout, which a client that reads nothing misses.
    sim.advance_by_steps(Duration::from_secs(1), TICK);
    assert_eq!(sim.counters(1).open_connections.get(), 0);
    assert_eq!(sim.counters(1).close_timeouts.get(), 1);
    // What the socket still held arrives, then the end. The close frame comes last if the
    // full socket took it.
    let got = slow.recv();
    assert!(slow.closed());
    let texts = got.iter().filter(|g| matches!(g, Got::Text(_))).count();
    assert!(texts < 1000, "pushes past the cap were dropped, not queued");
    for (i, g) in got.iter().enumerate() {
        if let Got::Close(code, _) = g {
            assert_eq!((*code, i), (Some(4002), got.len() - 1));
        }
    }
}

#[test]
fn a_drain_closes_with_1001_and_ends_when_every_client_is_gone() {
    let mut sim = node(&["--drain-timeout", "5s"]);
    let mut a = Client::open(&mut sim, 0, "user=1");
    let mut b = Client::open(&mut sim, 1, "channels=x");
    let mut quiet = Client::open(&mut sim, 1, "");
    for c in [&mut a, &mut b, &mut quiet] {
        c.messages();
    }
    sim.shut_down();
    sim.run();
    for c in [&mut a, &mut b, &mut quiet] {
        match &c.recv()[..] {
            [Got::Close(Some(1001), r)] => {
                assert!(
                    r.starts_with(r#"{"retry_ms":"#)
                        && r.ends_with(r#","reason":"server shutting down"}"#),
                    "{r}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
    a.close(1001);
    b.close(1001);
    sim.run();
    assert!(a.closed() && b.closed());
    assert!(!sim.drained(), "one client has not answered");
    sim.advance_by_steps(Duration::from_secs(5), TICK);
    assert!(quiet.closed());
    assert!(sim.drained());
    assert_eq!(sim.counters(1).drain_forced.get(), 1);
    // A connection arriving during the drain is turned away at the upgrade.
    let mut late = sim.connect(0).unwrap();
    sim.run();
    let mut buf = [0u8; 16];
    assert!(matches!(late.read(&mut buf), Ok(0) | Err(_)));
}

// ----- resume (client protocol v2) -----

/// A channel's position as the client last saw it.
fn position(m: &serde_json::Value) -> (u64, u64) {
    (m["epoch"].as_u64().unwrap(), m["seq"].as_u64().unwrap())
}

fn resume_msg(ch: &str, (epoch, seq): (u64, u64)) -> String {
    format!(r#"{{"type":"resume","streams":{{"channel:{ch}":{{"epoch":{epoch},"seq":{seq}}}}}}}"#)
}

/// The data of every message of channel `ch` in `msgs`, as numbers, with its seq.
fn channel_data(msgs: &[serde_json::Value], ch: &str) -> Vec<(u64, u64)> {
    let stream = format!("channel:{ch}");
    msgs.iter()
        .filter(|m| m["type"] == "message" && m["stream"] == stream.as_str())
        .map(|m| (m["seq"].as_u64().unwrap(), m["data"].as_u64().unwrap()))
        .collect()
}

#[test]
fn a_client_away_while_50_are_published_resumes_with_exactly_those_then_live() {
    let mut sim = node(&[]);
    let ch = homed_on(1, "feed");
    let mut c = Client::open(&mut sim, 0, &format!("channels={ch}"));
    let welcome = c.messages().remove(0);
    assert_eq!(
        welcome["streams"][format!("channel:{ch}")]["seq"],
        0,
        "a position before any event"
    );
    for i in 1..=3 {
        publish(&sim, &ch, &i.to_string());
    }
    sim.run();
    let got = c.messages();
    assert_eq!(channel_data(&got, &ch), [(1, 1), (2, 2), (3, 3)]);
    let at = (position(&welcome["streams"][format!("channel:{ch}")]).0, 3);
    drop(c); // the network dropped it
    sim.run();
    for i in 4..=53 {
        publish(&sim, &ch, &i.to_string());
    }
    sim.run();
    // Back on the other shard; more is published while the resume is on its way.
    let mut back = Client::open(&mut sim, 1, "");
    back.messages();
    back.send(OpCode::Text, resume_msg(&ch, at).as_bytes());
    for i in 54..=56 {
        publish(&sim, &ch, &i.to_string());
    }
    sim.run();
    for i in 57..=58 {
        publish(&sim, &ch, &i.to_string());
    }
    sim.run();
    let got = back.messages();
    let resumed: Vec<_> = got.iter().filter(|m| m["type"] == "resumed").collect();
    assert_eq!(resumed.len(), 1, "{got:?}");
    assert_eq!(
        (resumed[0]["from"].as_u64(), resumed[0]["stream"].as_str()),
        (Some(4), Some(&*format!("channel:{ch}")))
    );
    let want: Vec<(u64, u64)> = (4..=58).map(|i| (i, i)).collect();
    assert_eq!(channel_data(&got, &ch), want, "every message once, in order, replay then live");
}

#[test]
fn a_resume_past_the_history_or_from_another_epoch_is_told_so() {
    let mut sim = node(&["--history-size", "10"]);
    let ch = homed_on(0, "short");
    let mut c = Client::open(&mut sim, 1, &format!("channels={ch}"));
    let epoch = c.messages()[0]["epoch"].as_u64().unwrap();
    for i in 1..=30 {
        publish(&sim, &ch, &i.to_string());
    }
    sim.run();
    drop(c);
    sim.run();
    // The ring holds 21-30: a client at 5 lost 6-20.
    let mut late = Client::open(&mut sim, 1, "");
    late.messages();
    late.send(OpCode::Text, resume_msg(&ch, (epoch, 5)).as_bytes());
    sim.run();
    let got = late.messages();
    assert_eq!(got[0]["type"], "reset", "{got:?}");
    assert_eq!(
        (got[0]["reason"].as_str(), got[0]["seq"].as_u64()),
        (Some("history_exceeded"), Some(30))
    );
    publish(&sim, &ch, "31");
    sim.run();
    assert_eq!(channel_data(&late.messages(), &ch), [(31, 31)], "then live, from after the reset");
    // A position from before a restart (another epoch).
    let mut old = Client::open(&mut sim, 0, "");
    old.messages();
    old.send(OpCode::Text, resume_msg(&ch, (epoch - 1000, 30)).as_bytes());
    sim.run();
    let got = old.messages();
    assert_eq!(
        (got[0]["type"].as_str(), got[0]["reason"].as_str()),
        (Some("reset"), Some("epoch_changed"))
    );
    assert_eq!(position(&got[0]), (epoch, 31));
    assert_eq!(sim.counters(0).resets.get() + sim.counters(1).resets.get(), 2);
}

#[test]
fn subscribe_since_and_resume_at_connect_replay_before_live() {
    let mut sim = node(&[]);
    let ch = homed_on(1, "since");
    let mut first = Client::open(&mut sim, 0, &format!("channels={ch}"));
    let epoch = first.messages()[0]["epoch"].as_u64().unwrap();
    for i in 1..=5 {
        publish(&sim, &ch, &i.to_string());
    }
    sim.run();
    // subscribe with since, on a connection already open.
    let mut c = Client::open(&mut sim, 1, "");
    c.messages();
    c.send(
        OpCode::Text,
        format!(r#"{{"type":"subscribe","channel":"{ch}","since":{{"epoch":{epoch},"seq":2}}}}"#)
            .as_bytes(),
    );
    sim.run();
    let got = c.messages();
    assert_eq!(got[0]["type"], "resumed");
    assert_eq!(channel_data(&got, &ch), [(3, 3), (4, 4), (5, 5)]);
    // ?resume= at connect: base64url of {"channel:<ch>":{"epoch":E,"seq":4}}.
    let json = format!(r#"{{"channel:{ch}":{{"epoch":{epoch},"seq":4}}}}"#);
    let q = format!("resume={}", base64url(json.as_bytes()));
    let mut at_connect = Client::open(&mut sim, 0, &q);
    let got = at_connect.messages();
    assert_eq!(got[0]["type"], "welcome", "the welcome comes first: {got:?}");
    assert_eq!(got[0]["streams"][format!("channel:{ch}")]["seq"], 5);
    assert_eq!(got[1]["type"], "resumed");
    assert_eq!(channel_data(&got, &ch), [(5, 5)]);
    publish(&sim, &ch, "6");
    sim.run();
    for c in [&mut first, &mut c, &mut at_connect] {
        let got = channel_data(&c.messages(), &ch);
        assert_eq!(got.last(), Some(&(6, 6)));
    }
}

fn base64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The connection drops; a new one on `shard` resumes every followed stream from the last
/// position seen, by a resume message or by `?resume=`. What arrived before the drop counts;
/// the rest is lost with the socket.
fn reconnect(
    sim: &mut SimNode,
    mut old: Client,
    followers: [&mut Follower; 2],
    shard: usize,
    by_query: bool,
) -> Client {
    let m = old.messages();
    let [f, g] = followers;
    f.take(&m);
    g.take(&m);
    drop(old);
    sim.run();
    let json = format!(
        r#"{{"channel:{}":{{"epoch":{},"seq":{}}},"channel:{}":{{"epoch":{},"seq":{}}}}}"#,
        f.ch, f.epoch, f.seq, g.ch, g.epoch, g.seq
    );
    if by_query {
        Client::open(sim, shard, &format!("resume={}", base64url(json.as_bytes())))
    } else {
        let mut c = Client::open(sim, shard, "");
        c.messages();
        c.send(OpCode::Text, format!(r#"{{"type":"resume","streams":{json}}}"#).as_bytes());
        c
    }
}

/// What the logical client does between turns.
#[derive(Clone, Debug)]
enum Op {
    /// Publish this many messages.
    Publish(u8),
    /// Publish this many high-priority messages to the second channel (they shed the first
    /// channel's queued messages from a full outbox).
    Urgent(u8),
    /// Let the node run (deliver what is queued).
    Run,
    /// The connection drops; a new one on this shard resumes from the last position seen,
    /// by a resume message (false) or by ?resume= (true).
    Reconnect(usize, bool),
    /// Read what has arrived.
    Read,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (1u8..20).prop_map(Op::Publish),
        (1u8..6).prop_map(Op::Urgent),
        Just(Op::Run),
        ((0usize..2), any::<bool>()).prop_map(|(s, q)| Op::Reconnect(s, q)),
        Just(Op::Read),
    ]
}

/// Follows a channel's stream as a client would: every message must be the next seq, unless
/// a reset said where the stream continues.
struct Follower {
    ch: String,
    epoch: u64,
    seq: u64,
    data_seen: Vec<u64>,
}

impl Follower {
    fn take(&mut self, msgs: &[serde_json::Value]) {
        let stream = format!("channel:{}", self.ch);
        for m in msgs {
            match m["type"].as_str() {
                Some("welcome") => {
                    if let Some(p) = m["streams"].get(&stream) {
                        assert_eq!(p["epoch"].as_u64(), Some(self.epoch), "{m}");
                    }
                }
                Some("reset") if m["stream"] == stream.as_str() => {
                    // Loss said out loud: continue after where the server says.
                    let (e, s) = position(m);
                    assert!(s >= self.seq && e == self.epoch, "{m} at {}", self.seq);
                    self.seq = s;
                }
                Some("message") if m["stream"] == stream.as_str() => {
                    let seq = m["seq"].as_u64().unwrap();
                    assert_eq!(seq, self.seq + 1, "a gap or a duplicate: {m}");
                    self.seq = seq;
                    self.data_seen.push(m["data"].as_u64().unwrap());
                }
                _ => {}
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]
    /// For any interleaving of publishes, deliveries, reconnects with resume and reads, what a
    /// client sees of a stream is gap-free and duplicate-free, or a reset says where it
    /// continues; and it only ever misses what the history no longer held.
    #[test]
    fn resume_never_loses_silently(ops in proptest::collection::vec(op(), 1..60)) {
        // A small outbox, so publishes overflow it and gap repair runs as well.
        let mut sim = node(&["--history-size", "16", "--outbox-max-frames", "8"]);
        let ch = homed_on(1, "prop");
        let hot = homed_on(0, "hot");
        let mut c = Client::open(&mut sim, 0, &format!("channels={ch},{hot}"));
        let w = c.messages();
        let epoch = w[0]["streams"][format!("channel:{ch}")]["epoch"].as_u64().unwrap();
        let mut f = Follower { ch: ch.clone(), epoch, seq: 0, data_seen: Vec::new() };
        let mut g = Follower { ch: hot.clone(), epoch, seq: 0, data_seen: Vec::new() };
        f.take(&w[1..]);
        g.take(&w[1..]);
        let (mut published, mut urgent) = (0u64, 0u64);
        for op in ops {
            match op {
                Op::Publish(n) => {
                    for _ in 0..n {
                        published += 1;
                        publish_at(&sim, &ch, &published.to_string(), Priority::Low);
                    }
                }
                Op::Urgent(n) => {
                    for _ in 0..n {
                        urgent += 1;
                        publish_at(&sim, &hot, &urgent.to_string(), Priority::High);
                    }
                }
                Op::Run => sim.run(),
                Op::Read => {
                    let m = c.messages();
                    f.take(&m);
                    g.take(&m);
                }
                Op::Reconnect(shard, by_query) => {
                    c = reconnect(&mut sim, c, [&mut f, &mut g], shard, by_query);
                }
            }
            // Closed 4002 (it fell behind its history): a client reconnects and resumes.
            if c.got_close {
                c = reconnect(&mut sim, c, [&mut f, &mut g], 1, false);
            }
        }
        for _ in 0..4 {
            sim.run();
            let m = c.messages();
            f.take(&m);
            g.take(&m);
            if !c.got_close {
                break;
            }
            c = reconnect(&mut sim, c, [&mut f, &mut g], 0, false);
        }
        proptest::prop_assert_eq!(f.seq, published, "caught up with the stream at the end");
        proptest::prop_assert_eq!(g.seq, urgent, "caught up with the second stream too");
        // Data arrives in publish order (seq n carries data n).
        proptest::prop_assert!(f.data_seen.windows(2).all(|w| w[0] < w[1]));
        proptest::prop_assert!(g.data_seen.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn a_session_token_brings_back_the_subscriptions_and_a_forged_one_is_refused() {
    let mut sim = node(&["--session-ttl", "2m"]);
    let (a, b) = (homed_on(0, "ta"), homed_on(1, "tb"));
    let mut c = Client::open(&mut sim, 0, &format!("user=7&channels={a},{b}"));
    let w = c.messages().remove(0);
    let token = w["session"].as_str().unwrap().to_string();
    let at_a = position(&w["streams"][format!("channel:{a}")]);
    drop(c);
    sim.run();
    publish(&sim, &a, "1");
    publish(&sim, &b, "1");
    sim.run();
    let mut back = Client::open(&mut sim, 1, "user=7");
    back.messages();
    let resume = format!(
        r#"{{"type":"resume","session":"{token}","streams":{{"channel:{a}":{{"epoch":{},"seq":{}}}}}}}"#,
        at_a.0, at_a.1
    );
    back.send(OpCode::Text, resume.as_bytes());
    sim.run();
    let got = back.messages();
    assert_eq!(channel_data(&got, &a), [(1, 1)], "a from its position: {got:?}");
    assert!(got.iter().any(|m| m["type"] == "subscribed" && m["channel"] == b.as_str()), "{got:?}");
    publish(&sim, &b, "2");
    sim.run();
    assert_eq!(channel_data(&back.messages(), &b), [(2, 2)], "b came back by the token alone");
    // Forged, and another user's: refused, and the connection goes on as a new one.
    let mut other = Client::open(&mut sim, 0, "user=8");
    other.messages();
    for t in [format!("{token}x"), token.clone()] {
        other.send(OpCode::Text, format!(r#"{{"type":"resume","session":"{t}"}}"#).as_bytes());
        sim.run();
        let got = other.messages();
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["reason"].as_str()),
            (Some("reset"), Some("session_expired"))
        );
    }
    // Expired: past the ttl.
    sim.advance_by_steps(Duration::from_secs(121), Duration::from_secs(1));
    let mut late = Client::open(&mut sim, 1, &format!("user=7&session={token}"));
    let got = late.messages();
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[0]["channels"], serde_json::json!([]));
    assert_eq!(got[1]["reason"], "session_expired");
}

#[test]
fn a_replay_larger_than_the_outbox_arrives_whole_over_several_drains() {
    let mut sim = node(&["--outbox-max-frames", "8", "--history-size", "100"]);
    let ch = homed_on(0, "big");
    let mut c = Client::open(&mut sim, 1, &format!("channels={ch}"));
    let epoch = c.messages()[0]["epoch"].as_u64().unwrap();
    drop(c);
    sim.run();
    for i in 1..=40 {
        publish(&sim, &ch, &i.to_string());
    }
    sim.run();
    let mut back = Client::open(&mut sim, 1, "");
    back.messages();
    back.send(OpCode::Text, resume_msg(&ch, (epoch, 0)).as_bytes());
    sim.run();
    let got = back.messages();
    assert_eq!(got[0]["type"], "resumed", "{got:?}");
    assert_eq!((got[0]["from"].as_u64(), got[0]["to"].as_u64()), (Some(1), Some(40)));
    // Eight frames at a time fit; each drain refills the rest from the history.
    assert_eq!(channel_data(&got, &ch), (1..=40).map(|s| (s, s)).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m["type"] != "reset"), "{got:?}");
    assert!(sim.counters(1).gap_repairs.get() >= 4);
    publish(&sim, &ch, "41");
    sim.run();
    assert_eq!(channel_data(&back.messages(), &ch), [(41, 41)]);
    assert_eq!(sim.counters(1).gapped_connections.get(), 0);
}

/// Publishes `n` messages of about 4 KB to `ch`, 25 per run of the node, and returns the sum
/// of their reports.
fn flood(sim: &mut SimNode, ch: &str, n: usize) -> Totals {
    let data = format!("\"{}\"", "x".repeat(4000));
    let mut t = Totals::default();
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let reports: Vec<_> = chunk.iter().map(|_| publish(sim, ch, &data)).collect();
        sim.run();
        for r in reports {
            let r = r.totals();
            t.queued += r.queued;
            t.dropped += r.dropped;
            t.deferred += r.deferred;
        }
    }
    t
}

/// The seqs of `ch`'s messages in `got`, and every other text message.
fn seqs_and_rest(got: &[Got], ch: &str) -> (Vec<u64>, Vec<serde_json::Value>) {
    let stream = format!("channel:{ch}");
    let (mut seqs, mut rest) = (Vec::new(), Vec::new());
    for g in got {
        if let Got::Text(t) = g {
            let m: serde_json::Value = serde_json::from_str(t).unwrap();
            if m["type"] == "message" && m["stream"] == stream.as_str() {
                seqs.push(m["seq"].as_u64().unwrap());
            } else {
                rest.push(m);
            }
        }
    }
    (seqs, rest)
}

#[test]
fn a_slow_consumer_that_drains_gets_its_gap_refilled_in_order_then_live() {
    let mut sim = node(&[
        "--outbox-max-frames",
        "16",
        "--history-size",
        "1000",
        "--history-bytes",
        "16MiB",
        "--slow-consumer-timeout",
        "60s",
    ]);
    let ch = homed_on(0, "ticks");
    let mut slow = Client::open(&mut sim, 1, &format!("channels={ch}"));
    slow.messages();
    // The client reads nothing: the socket buffer fills, then the outbox, then the rest waits.
    let t = flood(&mut sim, &ch, 300);
    assert!(t.deferred > 0, "{t:?}");
    assert_eq!(t.dropped, 0, "a recoverable channel loses nothing: {t:?}");
    assert_eq!(t.queued + t.deferred, 300);
    assert_eq!(sim.counters(1).gapped_connections.get(), 1);
    // It reads: each drain asks the home for what the gap missed, until it has caught up.
    let mut got = Vec::new();
    for _ in 0..200 {
        let more = slow.recv();
        let quiet = more.is_empty();
        got.extend(more);
        sim.run();
        if quiet && sim.counters(1).gapped_connections.get() == 0 {
            break;
        }
    }
    let (seqs, rest) = seqs_and_rest(&got, &ch);
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "every message, once, in order");
    assert!(rest.is_empty(), "no reset, nothing else: {rest:?}");
    assert!(!slow.closed());
    assert!(sim.counters(1).gap_repairs.get() > 0);
    assert_eq!(sim.counters(1).slow_consumers_closed.get(), 0);
    publish(&sim, &ch, "301");
    sim.run();
    assert_eq!(channel_data(&slow.messages(), &ch), [(301, 301)]);
}

#[test]
fn a_gap_older_than_the_ring_is_reset_then_closed_4002() {
    let mut sim = node(&[
        "--outbox-max-frames",
        "16",
        "--history-size",
        "20",
        "--slow-consumer-timeout",
        "60s",
    ]);
    let ch = homed_on(0, "ticks");
    let mut slow = Client::open(&mut sim, 1, &format!("channels={ch}"));
    slow.messages();
    let t = flood(&mut sim, &ch, 300);
    assert!(t.deferred > 0, "{t:?}");
    // Now it reads; the gap began far before the 20 the ring holds.
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(slow.recv());
        sim.run();
        if slow.closed() {
            break;
        }
    }
    got.extend(slow.recv());
    let (seqs, _) = seqs_and_rest(&got, &ch);
    let n = seqs.len() as u64;
    assert!(n > 0 && n < 280, "{n}");
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "in order up to the gap");
    let texts: Vec<serde_json::Value> = got
        .iter()
        .filter_map(|g| match g {
            Got::Text(t) => Some(serde_json::from_str(t).unwrap()),
            _ => None,
        })
        .collect();
    let reset = texts.last().unwrap();
    assert_eq!(
        (reset["type"].as_str(), reset["reason"].as_str(), reset["seq"].as_u64()),
        (Some("reset"), Some("history_exceeded"), Some(300)),
        "the stream is reset first: {reset}"
    );
    assert_eq!(got.last(), Some(&Got::Close(Some(4002), "slow consumer".into())));
    assert_eq!(sim.counters(1).gap_resets.get(), 1);
    assert_eq!(sim.counters(1).slow_consumers_closed.get(), 1);
}

#[test]
fn a_slow_consumer_of_an_ephemeral_channel_is_told_with_a_reset_and_stays() {
    let dir = std::env::temp_dir().join(format!("ringcast-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("eph.toml");
    std::fs::write(&file, "[[streams]]\npattern = \"ticks*\"\nguarantee = \"ephemeral\"\n")
        .unwrap();
    let file = file.to_string_lossy().to_string();
    let args = [
        "ringcast",
        "--tick",
        "100ms",
        "--ping-interval",
        "0",
        "--outbox-max-frames",
        "16",
        "--slow-consumer-timeout",
        "60s",
        "--data-dir",
        "none",
        "--config",
        &file,
    ];
    let cfg = Config::load(args).unwrap().config;
    let mut sim = SimNode::new(&cfg, 2).unwrap();
    let ch = homed_on(0, "ticks");
    let mut slow = Client::open(&mut sim, 1, &format!("channels={ch}"));
    slow.messages();
    let t = flood(&mut sim, &ch, 300);
    assert!(t.dropped > 0 && t.deferred == 0, "no history to defer to: {t:?}");
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(slow.recv());
        sim.run();
    }
    // Every gap is told by a reset where it is, saying where the stream goes on.
    let stream = format!("channel:{ch}");
    let (mut last, mut resets) = (0, 0);
    for g in &got {
        let Got::Text(t) = g else { continue };
        let m: serde_json::Value = serde_json::from_str(t).unwrap();
        match m["type"].as_str() {
            Some("message") if m["stream"] == stream.as_str() => {
                assert_eq!(m["seq"].as_u64(), Some(last + 1), "an untold gap");
                last += 1;
            }
            Some("reset") => {
                assert_eq!(m["reason"], "history_exceeded");
                let seq = m["seq"].as_u64().unwrap();
                assert!(seq > last, "{m}");
                (last, resets) = (seq, resets + 1);
            }
            _ => panic!("{m}"),
        }
    }
    assert_eq!(last, 300);
    assert!(resets > 0);
    assert!(!slow.closed(), "an ephemeral channel's subscriber stays");
    publish(&sim, &ch, "301");
    sim.run();
    assert_eq!(channel_data(&slow.messages(), &ch), [(301, 301)]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fills a client's socket buffer with `fill`'s messages (it reads nothing), so what comes next
/// waits in its outbox.
fn fill_socket(sim: &mut SimNode, fill: &str) {
    let t = flood(sim, fill, 120);
    assert_eq!((t.queued, t.deferred, t.dropped), (120, 0, 0), "the outbox took them all");
}

#[test]
fn conflation_keeps_only_the_latest_per_key_waiting_in_an_outbox() {
    let mut sim = node(&[]);
    let (fill, prices) = (homed_on(0, "fill"), homed_on(1, "prices"));
    let mut c = Client::open(&mut sim, 1, &format!("channels={fill},{prices}"));
    c.messages();
    fill_socket(&mut sim, &fill);
    let key = |k: &str| {
        Some(Meta { expires_ms: 0, conflate: Some(format!("channel:{prices}\0{k}").into()) })
    };
    let mut conflated = 0;
    for i in 1..=10 {
        let r = publish_with(&sim, &prices, &i.to_string(), Priority::Normal, key("EURUSD"));
        let r2 =
            publish_with(&sim, &prices, &(100 + i).to_string(), Priority::Normal, key("GBPUSD"));
        sim.run();
        conflated += r.totals().conflated + r2.totals().conflated;
    }
    assert_eq!(conflated, 18, "each replaced the one before it with its key");
    assert_eq!(sim.counters(1).pushes_conflated.get(), 18);
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(c.messages());
        sim.run();
    }
    assert_eq!(channel_data(&got, &prices), [(19, 10), (20, 110)], "the latest value of each key");
}

#[test]
fn expired_messages_are_neither_written_nor_replayed() {
    let mut sim = node(&[]);
    let (fill, news) = (homed_on(0, "fill"), homed_on(1, "news"));
    let mut c = Client::open(&mut sim, 1, &format!("channels={fill},{news}"));
    let epoch = c.messages()[0]["epoch"].as_u64().unwrap();
    fill_socket(&mut sim, &fill);
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let soon = || Some(Meta { expires_ms: unix_ms + 1000, conflate: None });
    for i in 1..=5 {
        publish_with(&sim, &news, &i.to_string(), Priority::Normal, soon());
    }
    publish(&sim, &news, "6");
    sim.run();
    sim.advance_by_steps(Duration::from_secs(2), TICK);
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(c.messages());
        sim.run();
    }
    assert_eq!(channel_data(&got, &news), [(6, 6)], "1-5 expired in the outbox");
    assert_eq!(sim.counters(1).pushes_expired.get(), 5);
    // Nor from history: a resume from the start gets only what has not expired.
    let mut back = Client::open(&mut sim, 0, "");
    back.messages();
    back.send(OpCode::Text, resume_msg(&news, (epoch, 0)).as_bytes());
    sim.run();
    let got = back.messages();
    assert_eq!((got[0]["type"].as_str(), got[0]["to"].as_u64()), (Some("resumed"), Some(6)));
    assert_eq!(channel_data(&got, &news), [(6, 6)]);
}
