//! The session state machine driven with plain values: no shard, no socket, no clock.
use super::*;
use crate::proto::client::ResetReason;

fn params() -> SessionParams {
    SessionParams {
        max_channels: 2,
        max_client_errors: 2,
        minute_ticks: 600,
        report_ticks: 10,
        heartbeat: b"hb".to_vec(),
        heartbeat_frame: Bytes::from_static(b"\x81\x02ok"),
        epoch: 9,
        shards: 4,
        token_key: TokenKey::new(b"session test key"),
        session_ttl_ms: 120_000,
        auth: Arc::new(crate::auth::OpenMode { max_channels: 2 }),
        backends: Arc::new(crate::push::call::NoBackends),
        refresh_lead_ms: 0,
    }
}

const C: ConnId = ConnId { shard: 1, slot: 7, gen: 3 };

/// The effects as text, replies without the session token they may carry (checked by
/// `a_session_token_…`).
fn text(out: &Effects) -> Vec<String> {
    out.iter()
        .map(|e| match e {
            Effect::Reply { body, .. } => {
                let t = String::from_utf8_lossy(body).into_owned();
                match t.find(r#","session":"#) {
                    Some(i) => format!("{}}}", &t[..i]),
                    None => t,
                }
            }
            Effect::Welcome { body, .. } => String::from_utf8_lossy(body).into_owned(),
            Effect::Subscribe { channel, since, count: true, .. } => match since {
                None => format!("+{channel}"),
                Some(p) => format!("+{channel}@{}.{}", p.epoch, p.seq),
            },
            Effect::Subscribe { channel, count: false, .. } => format!("?{channel}"),
            Effect::Unsubscribe { channel, .. } => format!("-{channel}"),
            Effect::Replay { frames, .. } => format!("replay {}", frames.len()),
            Effect::Update { msg: ShardMsg::UserJoined { .. }, .. } => "joined".into(),
            Effect::Update { msg: ShardMsg::UserLeft { .. }, .. } => "left".into(),
            Effect::Update { msg: ShardMsg::UserActive { .. }, .. } => "active".into(),
            Effect::ClientError => "client-error".into(),
            Effect::Close { reason, .. } => format!("close {reason:?}"),
            e => format!("{e:?}"),
        })
        .collect()
}

fn open(user: Option<&str>, channels: &[&str], out: &mut Effects) -> Option<Box<Session>> {
    let id = Identity {
        user: user.map(Arc::from),
        device: None,
        channels: channels.iter().map(|c| Arc::from(*c)).collect(),
        resume: Vec::new(),
        session: None,
        ..Identity::default()
    };
    Session::open(C, id, Now { tick: 0, ms: 100 }, &params(), out)
}

const AT: Position = Position { epoch: 9, seq: 4 };

fn answer(
    s: &mut Option<Box<Session>>,
    ch: &str,
    catch_up: Option<CatchUp>,
    out: &mut Effects,
) -> bool {
    Session::on_subscribed(s, C, &Arc::from(ch), (AT, catch_up), Now::default(), &params(), out)
}

#[test]
fn opening_asks_the_homes_and_welcomes_once_they_answer() {
    let mut out = Effects::new();
    let mut s = open(Some("42"), &["a", "b"], &mut out);
    assert_eq!(text(&out), ["+a", "+b", "joined"]);
    match &out[2] {
        Effect::Update { shard, .. } => assert_eq!(*shard, home_of("42", 4)),
        e => panic!("{e:?}"),
    }
    assert!(Session::welcome_pending(&s));
    out.clear();
    assert!(answer(&mut s, "b", None, &mut out));
    Session::on_joined(&mut s, C, Position { epoch: 9, seq: 0 }, None, &params(), &mut out);
    assert!(out.is_empty(), "one home has not answered");
    assert!(answer(&mut s, "a", None, &mut out));
    let t = text(&out);
    assert_eq!(t.len(), 1);
    let w: serde_json::Value = serde_json::from_str(&t[0]).unwrap();
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["streams"]["channel:a"]["seq"], 4);
    assert_eq!(w["streams"]["user:42"]["seq"], 0);
    assert!(!Session::welcome_pending(&s));
    out.clear();
    s.unwrap().close(C, &params(), &mut out);
    assert_eq!(text(&out), ["-a", "-b", "left"]);
}

#[test]
fn an_anonymous_connection_has_no_session_until_it_needs_one() {
    let mut out = Effects::new();
    let mut s = open(None, &[], &mut out);
    assert!(s.is_none());
    assert!(matches!(out.pop_front(), Some(Effect::Welcome { .. })), "welcomed at once");
    let p = params();
    Session::on_message(&mut s, C, true, b"hb", Now::default(), &p, &mut out);
    assert!(s.is_none(), "a heartbeat allocates nothing");
    assert!(matches!(out.pop_front(), Some(Effect::ReplyFrame { .. })));
    Session::on_message(
        &mut s,
        C,
        true,
        br#"{"type":"subscribe","channel":"x"}"#,
        Now::default(),
        &p,
        &mut out,
    );
    assert_eq!(text(&out), ["+x"]);
    out.clear();
    assert!(answer(&mut s, "x", None, &mut out));
    assert_eq!(text(&out), [r#"{"type":"subscribed","channel":"x","epoch":9,"seq":4}"#]);
}

#[test]
fn subscriptions_are_capped_and_unsubscribing_twice_is_an_error() {
    let p = params();
    let mut out = Effects::new();
    let mut s = open(None, &["a", "b"], &mut out);
    answer(&mut s, "a", None, &mut out);
    answer(&mut s, "b", None, &mut out);
    out.clear();
    let sub = br#"{"type":"subscribe","channel":"c"}"#;
    Session::on_message(&mut s, C, true, sub, Now::default(), &p, &mut out);
    let t = text(&out);
    assert_eq!(t[0], "client-error");
    assert!(t[1].contains("too_many_channels"), "{t:?}");
    out.clear();
    let again = br#"{"type":"subscribe","channel":"a"}"#;
    Session::on_message(&mut s, C, true, again, Now::default(), &p, &mut out);
    assert_eq!(text(&out), ["?a"], "already subscribed: asks where it stands, counts nothing");
    out.clear();
    let unsub = br#"{"type":"unsubscribe","channel":"a"}"#;
    Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
    Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
    let t = text(&out);
    assert_eq!(t[..2], ["-a", r#"{"type":"unsubscribed","channel":"a"}"#]);
    assert_eq!(t[2], "client-error");
    out.clear();
    assert!(!answer(&mut s, "a", None, &mut out), "a late answer for a channel left is ignored");
    assert!(out.is_empty());
}

#[test]
fn resuming_replays_or_resets_and_never_repeats_a_live_subscription() {
    let p = params();
    let mut out = Effects::new();
    let mut s = open(None, &["live"], &mut out);
    answer(&mut s, "live", None, &mut out);
    out.clear();
    let resume = br#"{"type":"resume","streams":{"channel:a":{"epoch":9,"seq":1},"channel:live":{"epoch":9,"seq":1}}}"#;
    Session::on_message(&mut s, C, true, resume, Now::default(), &p, &mut out);
    assert_eq!(text(&out)[0], "client-error", "`live` is subscribed: a replay would repeat it");
    out.clear();
    let resume = br#"{"type":"resume","streams":{"channel:a":{"epoch":9,"seq":1}}}"#;
    Session::on_message(&mut s, C, true, resume, Now::default(), &p, &mut out);
    assert_eq!(text(&out), ["+a@9.1"]);
    out.clear();
    let frames = vec![frame(b"2"), frame(b"3"), frame(b"4")];
    let replay = CatchUp::Replay { from: 2, to: AT, frames };
    assert!(answer(&mut s, "a", Some(replay), &mut out));
    assert_eq!(
        text(&out),
        ["replay 3", r#"{"type":"resumed","stream":"channel:a","from":2,"to":4}"#]
    );
    out.clear();
    let unsub = br#"{"type":"unsubscribe","channel":"live"}"#;
    Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
    let sub = br#"{"type":"subscribe","channel":"b","since":{"epoch":8,"seq":3}}"#;
    Session::on_message(&mut s, C, true, sub, Now::default(), &p, &mut out);
    assert_eq!(text(&out).last().map(String::as_str), Some("+b@8.3"));
    out.clear();
    let reset = CatchUp::Reset { at: AT, reason: ResetReason::EpochChanged };
    assert!(answer(&mut s, "b", Some(reset), &mut out));
    assert_eq!(
        text(&out),
        [r#"{"type":"reset","stream":"channel:b","epoch":9,"seq":4,"reason":"epoch_changed"}"#]
    );
}

fn token_of(out: &Effects) -> Option<String> {
    out.iter().rev().find_map(|e| match e {
        Effect::Reply { body, .. } | Effect::Welcome { body, .. } => {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            v["session"].as_str().map(str::to_string)
        }
        _ => None,
    })
}

#[test]
fn a_session_token_brings_the_subscriptions_back_and_only_for_its_user() {
    let p = params();
    let mut out = Effects::new();
    let mut s = open(Some("u"), &["a"], &mut out);
    answer(&mut s, "a", None, &mut out);
    Session::on_joined(&mut s, C, AT, None, &p, &mut out);
    let welcome_token = token_of(&out).expect("the welcome carries a token");
    out.clear();
    let sub = br#"{"type":"subscribe","channel":"b"}"#;
    Session::on_message(&mut s, C, true, sub, Now { tick: 1, ms: 1000 }, &p, &mut out);
    let b = Arc::from("b");
    Session::on_subscribed(&mut s, C, &b, (AT, None), Now { tick: 1, ms: 1000 }, &p, &mut out);
    let token = token_of(&out).expect("the answer to a subscription change carries a token");
    assert_ne!(token, welcome_token);
    // A new connection of the same user resumes by token: a and b come back.
    let mut out = Effects::new();
    let mut again = open(Some("u"), &[], &mut out);
    Session::on_joined(&mut again, C, AT, None, &p, &mut out);
    out.clear();
    let resume = format!(
        r#"{{"type":"resume","session":"{token}","streams":{{"channel:b":{{"epoch":9,"seq":1}}}}}}"#
    );
    Session::on_message(
        &mut again,
        C,
        true,
        resume.as_bytes(),
        Now { tick: 2, ms: 2000 },
        &p,
        &mut out,
    );
    assert_eq!(text(&out), ["+a", "+b@9.1"], "a plainly, b from its position");
    // Expired, tampered and another user's tokens are refused with session_expired.
    let expired = format!(r#"{{"type":"resume","session":"{token}"}}"#);
    let mut out = Effects::new();
    let mut late = open(Some("u"), &[], &mut out);
    Session::on_joined(&mut late, C, AT, None, &p, &mut out);
    out.clear();
    Session::on_message(
        &mut late,
        C,
        true,
        expired.as_bytes(),
        Now { tick: 3, ms: 1000 + 120_000 },
        &p,
        &mut out,
    );
    assert_eq!(text(&out), [r#"{"type":"reset","reason":"session_expired"}"#]);
    let tampered = format!(r#"{{"type":"resume","session":"x{token}"}}"#);
    let mut other = open(Some("v"), &[], &mut out);
    Session::on_joined(&mut other, C, AT, None, &p, &mut out);
    for msg in [tampered, format!(r#"{{"type":"resume","session":"{token}"}}"#)] {
        out.clear();
        Session::on_message(
            &mut other,
            C,
            true,
            msg.as_bytes(),
            Now { tick: 3, ms: 3000 },
            &p,
            &mut out,
        );
        assert_eq!(text(&out), [r#"{"type":"reset","reason":"session_expired"}"#], "{msg}");
    }
    // ?session= at connect does the same before the welcome.
    let mut out = Effects::new();
    let id = Identity {
        user: Some(Arc::from("u")),
        device: None,
        channels: vec![],
        resume: vec![],
        session: Some(token),
        ..Identity::default()
    };
    let _ = Session::open(C, id, Now { tick: 4, ms: 4000 }, &p, &mut out);
    assert_eq!(text(&out), ["+a", "+b", "joined"]);
}

#[test]
fn what_a_client_does_before_its_welcome_never_holds_or_reorders_it() {
    let p = params();
    let mut out = Effects::new();
    let mut s = open(Some("u"), &["a", "b"], &mut out);
    out.clear();
    // Leaves `a` and resumes `c` before any home has answered.
    let unsub = br#"{"type":"unsubscribe","channel":"a"}"#;
    Session::on_message(&mut s, C, true, unsub, Now::default(), &p, &mut out);
    let resume = br#"{"type":"resume","streams":{"channel:c":{"epoch":9,"seq":1}}}"#;
    Session::on_message(&mut s, C, true, resume, Now::default(), &p, &mut out);
    out.clear();
    // The answer for c (not awaited) must not send the welcome early.
    let frames = vec![frame(b"2")];
    answer(&mut s, "c", Some(CatchUp::Replay { from: 2, to: AT, frames }), &mut out);
    assert!(!text(&out).iter().any(|t| t.contains("welcome")), "{:?}", text(&out));
    // a's late answer and b's and the user's complete it.
    assert!(!answer(&mut s, "a", None, &mut out));
    answer(&mut s, "b", None, &mut out);
    assert!(Session::welcome_pending(&s));
    Session::on_joined(&mut s, C, AT, None, &p, &mut out);
    let t = text(&out);
    let w = t.iter().position(|x| x.starts_with(r#"{"type":"welcome""#)).expect("welcomed");
    let v: serde_json::Value = serde_json::from_str(&t[w]).unwrap();
    assert_eq!(v["channels"], serde_json::json!(["b"]), "a was left");
    let resumed = t.iter().position(|x| x.starts_with(r#"{"type":"resumed""#)).unwrap();
    assert!(resumed > w, "answers queue behind the welcome: {t:?}");
}

#[test]
fn answers_to_a_resume_at_connect_follow_the_welcome() {
    let mut out = Effects::new();
    let id = Identity {
        user: None,
        device: None,
        channels: vec![],
        resume: vec![(Arc::from("a"), Position { epoch: 9, seq: 2 })],
        session: None,
        ..Identity::default()
    };
    let mut s = Session::open(C, id, Now::default(), &params(), &mut out);
    assert_eq!(text(&out), ["+a@9.2"]);
    out.clear();
    let frames = vec![frame(b"3"), frame(b"4")];
    answer(&mut s, "a", Some(CatchUp::Replay { from: 3, to: AT, frames }), &mut out);
    let t = text(&out);
    assert_eq!(t[0], "replay 2", "frames wait behind the held welcome in the outbox");
    assert!(t[1].starts_with(r#"{"type":"welcome""#), "{t:?}");
    assert!(t[2].starts_with(r#"{"type":"resumed""#), "{t:?}");
}

#[test]
fn too_many_bad_messages_in_a_minute_close_and_a_new_minute_forgives() {
    let p = params();
    let mut s = None;
    let mut out = Effects::new();
    let at = |tick| Now { tick, ms: 0 };
    for tick in [1, 2] {
        Session::on_message(&mut s, C, false, b"x", at(tick), &p, &mut out);
    }
    assert!(!text(&out).iter().any(|t| t.starts_with("close")));
    out.clear();
    Session::on_message(&mut s, C, true, b"{", at(700), &p, &mut out);
    assert!(!text(&out).iter().any(|t| t.starts_with("close")), "a new minute");
    Session::on_message(&mut s, C, true, b"{", at(701), &p, &mut out);
    Session::on_message(&mut s, C, true, b"{", at(702), &p, &mut out);
    assert_eq!(text(&out).last().map(String::as_str), Some("close TooManyBadMessages"));
}

#[test]
fn activity_reaches_the_home_at_most_once_per_report_interval() {
    let p = params();
    let mut out = Effects::new();
    let mut s = open(Some("u"), &[], &mut out);
    out.clear();
    for tick in [10, 11, 19, 20] {
        Session::on_message(&mut s, C, true, b"hb", Now { tick, ms: 0 }, &p, &mut out);
    }
    let active = text(&out).iter().filter(|t| *t == "active").count();
    assert_eq!(active, 2);
}

fn frame(b: &'static [u8]) -> crate::push::msg::Frame {
    crate::push::msg::Frame {
        bytes: Bytes::from_static(b),
        priority: crate::push::msg::Priority::Normal,
        kept: true,
        meta: None,
    }
}

/// Tokens by name: "u-later" is user u's token to 9 000 ms, "v" another user's, "u-phone"
/// user u on device phone; anything else is refused as expired.
#[derive(Debug)]
struct Tokens;

impl crate::auth::Authenticator for Tokens {
    fn authenticate(
        &self,
        _req: &crate::auth::UpgradeRequest<'_>,
        _now_ms: u64,
    ) -> Result<Identity, crate::auth::AuthError> {
        Err(crate::auth::AuthError::Missing)
    }

    fn refresh(
        &self,
        token: &str,
        _now_ms: u64,
    ) -> Result<crate::auth::Refreshed, crate::auth::AuthError> {
        let (user, device) = match token {
            "u-later" => ("u", None),
            "u-phone" => ("u", Some("phone")),
            "v" => ("v", None),
            _ => return Err(crate::auth::AuthError::Expired),
        };
        Ok(crate::auth::Refreshed {
            user: Arc::from(user),
            device: device.map(Arc::from),
            expires_ms: 9000,
            grant: Arc::new(Grant {
                channels: vec![],
                sub_allow: vec!["q.*".into()],
                pub_allow: vec![],
            }),
        })
    }
}

#[test]
fn a_token_grant_limits_subscriptions_and_a_refresh_extends_it() {
    let p = SessionParams {
        auth: Arc::new(Tokens),
        backends: Arc::new(crate::push::call::NoBackends),
        max_channels: 8,
        max_client_errors: 100,
        ..params()
    };
    let mut out = Effects::new();
    let id = Identity {
        user: Some(Arc::from("u")),
        device: Some(Arc::from("tablet")),
        channels: vec![Arc::from("news")],
        grant: Some(Arc::new(Grant {
            channels: vec![Arc::from("news")],
            sub_allow: vec!["p.*".into()],
            pub_allow: vec![],
        })),
        expires_ms: Some(5000),
        ..Identity::default()
    };
    let mut s = Session::open(C, id, Now { tick: 0, ms: 100 }, &p, &mut out);
    assert_eq!(Session::expires_ms(&s), Some(5000));
    out.clear();
    let now = Now { tick: 1, ms: 200 };
    let say = |s: &mut Option<Box<Session>>, m: &str| {
        let mut out = Effects::new();
        Session::on_message(s, C, true, m.as_bytes(), now, &p, &mut out);
        text(&out).into_iter().filter(|t| t != "active").collect::<Vec<_>>()
    };
    assert_eq!(say(&mut s, r#"{"type":"subscribe","channel":"p.1"}"#), ["+p.1"]);
    assert_eq!(
        say(&mut s, r#"{"type":"subscribe","channel":"x"}"#),
        [
            "client-error",
            r#"{"type":"error","code":"forbidden","reason":"the connection's token does not allow this channel"}"#
        ]
    );
    assert_eq!(
        say(&mut s, r#"{"type":"resume","streams":{"channel:x":{"epoch":1,"seq":1}}}"#),
        [
            "client-error",
            r#"{"type":"error","code":"forbidden","reason":"the connection's token does not allow channel x"}"#
        ]
    );
    // Refused refreshes change nothing.
    for (tok, why) in [
        ("v", "the token is for another user"),
        ("u-phone", "the token is for another device"),
        ("old", "token expired"),
    ] {
        let m = format!(r#"{{"type":"refresh","token":"{tok}"}}"#);
        let want = format!(r#"{{"type":"error","code":"bad_token","reason":"{why}"}}"#);
        assert_eq!(say(&mut s, &m), ["client-error".to_string(), want]);
        assert_eq!(Session::expires_ms(&s), Some(5000));
    }
    assert_eq!(
        say(&mut s, r#"{"type":"refresh"}"#)[1],
        r#"{"type":"error","code":"bad_token","reason":"refresh takes \"token\": a token for the connection's user"}"#
    );
    // A good one extends the expiry and brings the new grant.
    assert_eq!(
        say(&mut s, r#"{"type":"refresh","token":"u-later"}"#),
        ["Refreshed", r#"{"type":"refreshed","expires":9000}"#]
    );
    assert_eq!(Session::expires_ms(&s), Some(9000));
    assert_eq!(say(&mut s, r#"{"type":"subscribe","channel":"q.1"}"#), ["+q.1"]);
    assert_eq!(say(&mut s, r#"{"type":"subscribe","channel":"p.2"}"#)[0], "client-error");
}

#[test]
fn open_mode_has_no_tokens_to_refresh() {
    let mut out = Effects::new();
    let mut s = open(Some("u"), &[], &mut out);
    out.clear();
    Session::on_message(
        &mut s,
        C,
        true,
        br#"{"type":"refresh","token":"t"}"#,
        Now::default(),
        &params(),
        &mut out,
    );
    assert_eq!(
        text(&out)[1],
        r#"{"type":"error","code":"bad_token","reason":"this server does not use tokens (--auth open or proxy)"}"#
    );
    assert_eq!(Session::expires_ms(&s), None);
}

/// Routes refresh events (only) to backend 0.
#[derive(Debug)]
struct RefreshBackend;

impl crate::push::call::Backends for RefreshBackend {
    fn route(&self, call: &Call) -> Option<usize> {
        matches!(call, Call::Refresh { .. }).then_some(0)
    }
}

#[test]
fn a_backend_identity_is_renewed_before_it_expires_retried_on_failure_and_declines_are_kept() {
    use crate::proto::reply::{Code, Failure};
    use crate::push::call::Outcome;
    let p = SessionParams { backends: Arc::new(RefreshBackend), refresh_lead_ms: 2000, ..params() };
    let id = Identity {
        user: Some(Arc::from("u")),
        expires_ms: Some(10_000),
        backend_renews: true,
        ..Identity::default()
    };
    let mut out = Effects::new();
    let mut s = Session::open(C, id, Now { tick: 0, ms: 100 }, &p, &mut out);
    // Asked the lead before the expiry, never sooner than halfway.
    assert_eq!(Session::refresh_ms(&s), Some(8000));
    let at = |ms: u64| Now { tick: 0, ms };
    let ask = |s: &mut Option<Box<Session>>, ms: u64| {
        let mut out = Effects::new();
        Session::refresh_due(s, C, at(ms), &p, &mut out);
        out.into_iter()
            .filter_map(|e| match e {
                Effect::Upstream { backend: 0, event } => Some(event.call),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(ask(&mut s, 7999).is_empty(), "not yet");
    assert_eq!(ask(&mut s, 8000), vec![Call::Refresh { expires_ms: 10_000 }]);
    assert_eq!(Session::refresh_ms(&s), None, "asked once, until the answer");
    assert!(ask(&mut s, 8100).is_empty());
    let answer = |s: &mut Option<Box<Session>>, ms: u64, o: Outcome| {
        let mut out = Effects::new();
        let call = Call::Refresh { expires_ms: 0 };
        Session::on_backend(s, C, call, o, at(ms), &p, &mut out);
        text(&out)
    };
    // A failure is asked again after its hint, while there is time.
    let busy = Failure { retry_ms: Some(500), ..Failure::new(Code::UpstreamUnavailable, "open") };
    assert!(answer(&mut s, 8200, Outcome::Error(busy.clone())).is_empty());
    assert_eq!(Session::refresh_ms(&s), Some(8700));
    // A later expire_at renews it, and the client is told.
    let renewed = answer(&mut s, 8700, Outcome::Data(Some(r#"{"expire_at":20}"#.into())));
    assert_eq!(renewed, ["Refreshed", r#"{"type":"refreshed","expires":20000}"#]);
    assert_eq!((Session::expires_ms(&s), Session::refresh_ms(&s)), (Some(20_000), Some(18_000)));
    // An answer that extends nothing, or a refusal, is a decline: no more asks.
    for o in [
        Outcome::Data(Some(r#"{"expire_at":15}"#.into())),
        Outcome::Data(Some(r#"{"expire_at":"later"}"#.into())),
        Outcome::Data(None),
        Outcome::Refused(Failure::new(Code::Forbidden, "no")),
    ] {
        assert_eq!(answer(&mut s, 18_000, o), ["RefreshDeclined"]);
        assert_eq!(Session::refresh_ms(&s), None);
        assert_eq!(Session::expires_ms(&s), Some(20_000), "the expiry stands");
    }
    // A failure too close to the expiry is not retried: the expiry closes it.
    assert!(answer(&mut s, 19_800, Outcome::Error(busy)).is_empty());
    assert_eq!(Session::refresh_ms(&s), None);
    // A token identity is never sent to the refresh backend.
    let id =
        Identity { user: Some(Arc::from("t")), expires_ms: Some(10_000), ..Identity::default() };
    let t = Session::open(C, id, Now { tick: 0, ms: 100 }, &p, &mut out);
    assert_eq!(Session::refresh_ms(&t), None);
}
