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
use crate::push::report::{Report, Totals};
use crate::push::streams::StreamKey;

use super::error::ApiError;
use super::fields::{BadRequest, Fields};
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
            Op::Publish => &["channel", "data", "data_base64", "priority"],
            Op::Push => &["user", "device", "data", "data_base64", "policy", "priority"],
            Op::Send => &["conn", "data", "data_base64", "priority"],
            Op::Broadcast => &["data", "data_base64", "priority"],
            Op::Kick => &["user", "conn", "code", "reason"],
        }
    }
}

/// What a done operation reports.
#[derive(Debug)]
pub(crate) struct Done {
    totals: Totals,
    kick: bool,
}

impl Done {
    pub(crate) fn json(&self) -> Value {
        let t = self.totals;
        if self.kick {
            json!({ "kicked": t.recipients, "offline": t.offline, "discarded": t.dropped })
        } else {
            json!({ "recipients": t.recipients, "queued": t.queued, "dropped": t.dropped, "offline": t.offline })
        }
    }
}

/// An operation handed to the shards, waiting for its report.
#[derive(Debug)]
pub(crate) struct Pending {
    report: Arc<Report>,
    done: oneshot::Receiver<()>,
    kick: bool,
}

impl Pending {
    pub(crate) async fn finish(self) -> Result<Done, ApiError> {
        if monoio::time::timeout(REPORT_TIMEOUT, self.done).await.is_err() {
            return Err(ApiError::NoAnswer("the delivery report did not complete in 10 s"));
        }
        Ok(Done { totals: self.report.totals(), kick: self.kick })
    }
}

/// Checks an operation's fields and hands it to the shards.
pub(crate) fn dispatch(ctx: &ApiContext, op: Op, f: Fields) -> Result<Pending, ApiError> {
    f.only(op.fields())?;
    let n = ctx.router.shards();
    let (report, part, done) = Report::new(clock::now());
    let pending = Pending { report, done, kick: op == Op::Kick };
    let send =
        |shard: usize, m: ShardMsg| ctx.router.send(shard, m).map_err(|_| ApiError::Busy { shard });
    match op {
        Op::Publish => {
            let (channel, payload, priority) = (f.name("channel")?, f.payload()?, f.priority()?);
            let home = home_of(&channel, n);
            send(home, ShardMsg::Publish { channel, payload, priority, report: part })?;
        }
        Op::Push => {
            let (user, device) = (f.name("user")?, f.opt_name("device")?);
            let (payload, policy, priority) = (f.payload()?, f.policy()?, f.priority()?);
            let home = home_of(&user, n);
            send(
                home,
                ShardMsg::PushUser { user, device, policy, payload, priority, report: part },
            )?;
        }
        Op::Send => {
            let conn =
                f.conn("conn")?.ok_or_else(|| BadRequest::new("conn", "\"conn\" is required"))?;
            let (payload, priority) = (f.payload()?, f.priority()?);
            let shard = usize::from(conn.shard);
            if shard >= n {
                part.add(Totals { offline: 1, ..Default::default() });
            } else {
                send(shard, ShardMsg::SendConn { conn, payload, priority, report: part })?;
            }
        }
        Op::Broadcast => {
            let (payload, priority) = (f.payload()?, f.priority()?);
            let home = home_of(StreamKey::Broadcast.home_name(), n);
            send(home, ShardMsg::Broadcast { payload, priority, report: part })?;
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
