//! The operations a backend asks for (publish, push, send, broadcast, kick), typed: each is
//! checked field by field and handed to the shard that owns it, and answered with its delivery
//! report once every shard involved has done its part.

use std::sync::Arc;

use futures_channel::oneshot;
use serde_json::{json, Value};

use crate::clock;
use crate::proto::CloseReason;
use crate::push::ids::home_of;
use crate::push::msg::ShardMsg;
use crate::push::report::{Acks, Report, Totals};
use crate::push::streams::StreamKey;
use crate::server::overload::Action;

use super::error::ApiError;
use super::fields::{BadRequest, Fields};
use super::idempotency::Claim;
use super::keys::{Caller, Need};
use super::{ApiContext, REPORT_TIMEOUT};

/// An operation, as `/v1/<name>` and a batch line's `op` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Publish,
    Push,
    Send,
    Broadcast,
    Kick,
}

impl Op {
    pub(crate) const ALL: [Op; 5] = [Op::Publish, Op::Push, Op::Send, Op::Broadcast, Op::Kick];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::Push => "push",
            Op::Send => "send",
            Op::Broadcast => "broadcast",
            Op::Kick => "kick",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The fields the operation takes; any other is refused by name.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Op::Publish => &["channel", "data", "data_base64", "priority", "ttl", "conflate"],
            Op::Push => &[
                "user",
                "device",
                "data",
                "data_base64",
                "policy",
                "priority",
                "ttl",
                "conflate",
                "wait_ack_ms",
            ],
            Op::Send => &["conn", "data", "data_base64", "priority", "ttl", "conflate"],
            Op::Broadcast => &["data", "data_base64", "priority", "ttl", "conflate"],
            Op::Kick => &["user", "conn", "code", "reason"],
        }
    }
}

/// What a done operation reports.
#[derive(Debug)]
pub(crate) struct Done {
    totals: Totals,
    kick: bool,
    /// A push that waited for acks: which devices did.
    acks: Option<Acks>,
}

impl Done {
    pub(crate) fn json(&self) -> Value {
        let t = self.totals;
        if self.kick {
            json!({ "kicked": t.recipients, "offline": t.offline, "discarded": t.dropped })
        } else {
            let mut v = json!({
                "recipients": t.recipients,
                "queued": t.queued,
                "dropped": t.dropped,
                "deferred": t.deferred,
                "conflated": t.conflated,
                "offline": t.offline,
                "stored": t.stored,
                "shed": t.shed,
            });
            if let Some(a) = &self.acks {
                v["acked"] = json!(a.acked.iter().map(|d| &**d).collect::<Vec<_>>());
                v["not_acked"] = json!(a.not_acked.iter().map(|d| &**d).collect::<Vec<_>>());
            }
            v
        }
    }
}

/// An operation handed to the shards, waiting for its report.
#[derive(Debug)]
pub(crate) struct Pending {
    report: Arc<Report>,
    done: oneshot::Receiver<()>,
    kick: bool,
    /// How long the shards may hold the report for acks, beyond the usual deadline.
    wait: std::time::Duration,
}

impl Pending {
    pub(crate) async fn finish(self) -> Result<Done, ApiError> {
        if monoio::time::timeout(REPORT_TIMEOUT + self.wait, self.done).await.is_err() {
            return Err(ApiError::NoAnswer("the delivery report did not complete in time (10 s)"));
        }
        let totals = self.report.totals();
        if totals.unsaved > 0 {
            return Err(ApiError::Unsaved(totals.unsaved));
        }
        Ok(Done { totals, kick: self.kick, acks: self.report.acks() })
    }
}

/// An operation ready to answer: handed to the shards, or already answered for its
/// idempotency key.
#[derive(Debug)]
pub enum Prepared {
    Sent {
        pending: Pending,
        key: Option<String>,
    },
    /// Done before within the window: this is its answer.
    Duplicate(Value),
    /// Under way for another request with the same key.
    Wait(String),
}

/// The longest an idempotency key may be.
const MAX_KEY: usize = 256;

/// Takes the operation's `idempotency_key` (if any), and hands it to the shards unless that key
/// was used within the window. Never awaits, so a batch sends every line before it waits.
pub(crate) fn prepare(
    ctx: &ApiContext,
    op: Op,
    mut f: Fields,
    caller: Caller<'_>,
) -> Result<Prepared, ApiError> {
    // The key's scope first: a refused call claims no idempotency key and sends nothing.
    let channel = match op {
        Op::Publish => f.opt_name("channel").ok().flatten(),
        _ => None,
    };
    caller.require(match op {
        Op::Publish => Need::Publish(channel.as_deref()),
        Op::Push => Need::Push,
        Op::Send => Need::Send,
        Op::Broadcast => Need::Broadcast,
        Op::Kick => Need::Kick,
    })?;
    let Some(key) = f.take_str("idempotency_key")? else {
        return Ok(Prepared::Sent { pending: dispatch(ctx, op, f)?, key: None });
    };
    if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        let m = "\"idempotency_key\" must be 1-256 printable ASCII characters";
        return Err(BadRequest::new("idempotency_key", m).into());
    }
    let scoped = format!("{}:{key}", op.name());
    match ctx.idempotency.claim(&scoped, clock::now())? {
        Claim::Duplicate(v) => Ok(Prepared::Duplicate(v)),
        Claim::Wait => Ok(Prepared::Wait(scoped)),
        Claim::First => match dispatch(ctx, op, f) {
            Ok(pending) => Ok(Prepared::Sent { pending, key: Some(scoped) }),
            Err(e) => {
                ctx.idempotency.failed(&scoped);
                Err(e)
            }
        },
    }
}

impl Prepared {
    /// The operation's answer: its report, or the first one's with `"duplicate": true`.
    pub async fn answer(self, ctx: &ApiContext) -> Result<Value, ApiError> {
        match self {
            Prepared::Sent { pending, key } => {
                let v = pending.finish().await?.json();
                if let Some(k) = key {
                    // Shed at the API by the overload manager: it went nowhere (no recipient,
                    // nothing stored), so a retry with the same key must be able to deliver
                    // it. A shed at the shards is not freed: a durable push is in its
                    // mailbox already and comes again; a retry would deliver it twice.
                    let none = |f: &str| v[f].as_u64().unwrap_or(0) == 0;
                    if !none("shed") && none("recipients") && none("stored") {
                        ctx.idempotency.failed(&k);
                    } else {
                        ctx.idempotency.done(&k, &v);
                    }
                }
                Ok(v)
            }
            Prepared::Duplicate(v) => Ok(duplicate(v)),
            Prepared::Wait(key) => {
                // The first may wait for acks (`wait_ack_ms`) as well as for its report.
                let longest =
                    std::time::Duration::from_millis(super::fields::MAX_WAIT_ACK_MS.into());
                let deadline = clock::now() + REPORT_TIMEOUT + longest;
                loop {
                    monoio::time::sleep(std::time::Duration::from_millis(2)).await;
                    match ctx.idempotency.claim(&key, clock::now())? {
                        Claim::Duplicate(v) => return Ok(duplicate(v)),
                        // The first one was refused; this is now the first. Nothing was sent
                        // for it, so the caller's retry does it (the table forgot the key).
                        Claim::First => {
                            ctx.idempotency.failed(&key);
                            return Err(ApiError::NoAnswer(
                                "the first request with this idempotency key failed; send again",
                            ));
                        }
                        Claim::Wait if clock::now() >= deadline => {
                            return Err(ApiError::NoAnswer(
                                "the first request with this idempotency key did not complete in 70 s",
                            ));
                        }
                        Claim::Wait => {}
                    }
                }
            }
        }
    }
}

fn duplicate(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("duplicate".into(), Value::Bool(true));
    }
    v
}

/// Checks an operation's fields and hands it to the shards.
pub(crate) fn dispatch(ctx: &ApiContext, op: Op, f: Fields) -> Result<Pending, ApiError> {
    f.only(op.fields())?;
    let n = ctx.router.shards();
    let (report, part, done) = Report::new(clock::now());
    let now_ms = clock::unix_ms();
    let mut pending =
        Pending { report, done, kick: op == Op::Kick, wait: std::time::Duration::ZERO };
    let send =
        |shard: usize, m: ShardMsg| ctx.router.send(shard, m).map_err(|_| ApiError::Busy { shard });
    // Overload: a low-priority message, once checked, is refused here: `shed: 1`, sent
    // nowhere.
    let shed = |priority| {
        priority == crate::push::msg::Priority::Low && ctx.shared.overload.on(Action::ShedLow)
    };
    match op {
        Op::Publish => {
            let (channel, payload, priority) = (f.name("channel")?, f.payload()?, f.priority()?);
            let meta = f.meta(&format!("channel:{channel}"), now_ms)?;
            if shed(priority) {
                ctx.shared.overload.shed_low.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                part.add(Totals { shed: 1, ..Default::default() });
                return Ok(pending);
            }
            let home = home_of(&channel, n);
            send(home, ShardMsg::Publish { channel, payload, priority, meta, report: part })?;
        }
        Op::Push => {
            let (user, device) = (f.name("user")?, f.opt_name("device")?);
            let (payload, policy, priority) = (f.payload()?, f.policy()?, f.priority()?);
            let meta = f.meta(&format!("user:{user}"), now_ms)?;
            let wait_ack_ms = f.wait_ack_ms()?;
            if wait_ack_ms > 0
                && !ctx.shared.streams.keep_for(&StreamKey::User(user.clone())).durable()
            {
                let m = format!(
                    "\"wait_ack_ms\" needs a durable stream, and user:{user} is not durable by the [[streams]] rules"
                );
                return Err(BadRequest::new("wait_ack_ms", m).into());
            }
            if shed(priority) {
                ctx.shared.overload.shed_low.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                part.add(Totals { shed: 1, ..Default::default() });
                return Ok(pending);
            }
            pending.wait = std::time::Duration::from_millis(u64::from(wait_ack_ms));
            let home = home_of(&user, n);
            let m = ShardMsg::PushUser {
                user,
                device,
                policy,
                payload,
                priority,
                meta,
                wait_ack_ms,
                report: part,
            };
            send(home, m)?;
        }
        Op::Send => {
            let conn =
                f.conn("conn")?.ok_or_else(|| BadRequest::new("conn", "\"conn\" is required"))?;
            let (payload, priority) = (f.payload()?, f.priority()?);
            let meta = f.meta("direct", now_ms)?;
            let shard = usize::from(conn.shard);
            if shed(priority) {
                ctx.shared.overload.shed_low.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                part.add(Totals { shed: 1, ..Default::default() });
            } else if shard >= n {
                part.add(Totals { offline: 1, ..Default::default() });
            } else {
                send(shard, ShardMsg::SendConn { conn, payload, priority, meta, report: part })?;
            }
        }
        Op::Broadcast => {
            let (payload, priority) = (f.payload()?, f.priority()?);
            let meta = f.meta("broadcast", now_ms)?;
            if shed(priority) {
                ctx.shared.overload.shed_low.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                part.add(Totals { shed: 1, ..Default::default() });
                return Ok(pending);
            }
            let home = home_of(StreamKey::Broadcast.home_name(), n);
            send(home, ShardMsg::Broadcast { payload, priority, meta, report: part })?;
        }
        Op::Kick => {
            let reason = CloseReason::kicked(f.close_code()?, f.reason()?);
            match (f.opt_name("user")?, f.conn("conn")?) {
                (Some(_), Some(_)) | (None, None) => {
                    let e = BadRequest::new("user", "give exactly one of \"user\" and \"conn\"");
                    return Err(e.into());
                }
                (Some(user), None) => {
                    let home = home_of(&user, n);
                    send(home, ShardMsg::KickUser { user, reason, report: part })?;
                }
                (None, Some(conn)) => {
                    let shard = usize::from(conn.shard);
                    if shard >= n {
                        part.add(Totals { offline: 1, ..Default::default() });
                    } else {
                        let m = ShardMsg::Kick { conns: vec![conn], reason, report: Some(part) };
                        send(shard, m)?;
                    }
                }
            }
        }
    }
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::Op;

    #[test]
    fn ops_round_trip_their_names() {
        for op in Op::ALL {
            assert_eq!(Op::parse(op.name()), Some(op));
        }
        assert_eq!(Op::parse("batch"), None);
    }
}
