//! Read-only answers: a user's connections, a channel's subscriber count (each from the home
//! shard that knows it), and the node's counters.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_channel::oneshot;
use serde_json::{json, Value};

use crate::proto::frame::FrameHeader;
use crate::proto::OpCode;
use crate::push::ids::home_of;
use crate::push::msg::ShardMsg;
use crate::push::streams::StreamKey;
use crate::server::stats;

use super::error::{ApiError, Reply};
use super::fields::BadRequest;
use super::{ApiContext, REPORT_TIMEOUT};

fn name_in_path(s: &str) -> Option<Arc<str>> {
    crate::push::ids::valid_name(s).then(|| Arc::from(s))
}

pub(crate) async fn user(ctx: &ApiContext, user: &str) -> Result<Reply, ApiError> {
    let user = name_in_path(user).ok_or(ApiError::BadName("invalid user name"))?;
    let home = home_of(&user, ctx.router.shards());
    let (tx, rx) = oneshot::channel();
    let m = ShardMsg::QueryUser { user: user.clone(), reply: tx };
    ctx.router.send(home, m).map_err(|_| ApiError::Busy { shard: home })?;
    let Ok(Ok(conns)) = monoio::time::timeout(REPORT_TIMEOUT, rx).await else {
        return Err(ApiError::NoAnswer("no answer from the user's shard"));
    };
    let list: Vec<Value> = conns
        .iter()
        .map(|c| {
            json!({
                "conn": c.conn.to_string(),
                "shard": c.conn.shard,
                "device": c.device.as_deref(),
                "connected_at_ms": c.connected_ms,
                "active_at_ms": c.active_ms,
                "info": c.info.as_deref().and_then(|i| serde_json::from_str::<Value>(i).ok()),
            })
        })
        .collect();
    let devices: std::collections::BTreeSet<&str> =
        conns.iter().filter_map(|c| c.device.as_deref()).collect();
    let shards: std::collections::BTreeSet<u16> = conns.iter().map(|c| c.conn.shard).collect();
    Ok(Reply::json(
        200,
        &json!({ "user": &*user, "connections": list, "devices": devices, "shards": shards }),
    ))
}

pub(crate) async fn channel(ctx: &ApiContext, channel: &str) -> Result<Reply, ApiError> {
    let channel = name_in_path(channel).ok_or(ApiError::BadName("invalid channel name"))?;
    let home = home_of(&channel, ctx.router.shards());
    let (tx, rx) = oneshot::channel();
    let m = ShardMsg::QueryChannel { channel: channel.clone(), reply: tx };
    ctx.router.send(home, m).map_err(|_| ApiError::Busy { shard: home })?;
    let Ok(Ok(n)) = monoio::time::timeout(REPORT_TIMEOUT, rx).await else {
        return Err(ApiError::NoAnswer("no answer from the channel's shard"));
    };
    Ok(Reply::json(200, &json!({ "channel": &*channel, "subscribers": n })))
}

/// The most messages one history request returns.
const MAX_HISTORY_LIMIT: usize = 1000;

fn stream_key(name: &str) -> Option<StreamKey> {
    if name == "broadcast" {
        return Some(StreamKey::Broadcast);
    }
    let (kind, n) = name.split_once(':')?;
    let n = crate::push::ids::valid_name(n).then(|| Arc::from(n))?;
    match kind {
        "channel" => Some(StreamKey::Channel(n)),
        "user" => Some(StreamKey::User(n)),
        _ => None,
    }
}

/// `since` and `limit` of a history request.
fn history_query(q: &str) -> Result<(u64, usize), ApiError> {
    let (mut since, mut limit) = (0u64, 100usize);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => {
                since = v.parse().map_err(|_| {
                    BadRequest::new("since", "\"since\" is a seq (a non-negative integer)")
                })?
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
                    .ok_or_else(|| BadRequest::new("limit", "\"limit\" is 1-1000"))?
            }
            _ => {
                return Err(BadRequest {
                    field: Some(std::borrow::Cow::Owned(k.to_string())),
                    message: format!("unknown parameter {k:?} (history takes: since, limit)"),
                }
                .into())
            }
        }
    }
    Ok((since, limit))
}

/// A kept frame as the API shows it: its seq and its data (`data` for JSON, `data_base64` for
/// bytes), taken from the very frame subscribers got.
fn message_json(seq: u64, frame: &[u8]) -> Value {
    use base64::Engine as _;
    let Ok(Some((h, n))) = FrameHeader::parse(frame) else { return json!({ "seq": seq }) };
    let body = &frame[n..];
    match h.opcode {
        OpCode::Text => {
            let data = serde_json::from_slice::<Value>(body).ok().map(|mut v| v["data"].take());
            json!({ "seq": seq, "data": data })
        }
        _ => {
            let len =
                body.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let bytes = body.get(4 + len..).unwrap_or(&[]);
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            json!({ "seq": seq, "data_base64": b64 })
        }
    }
}

/// `GET /v1/streams/{stream}` (`query` None) and `…/history?since=SEQ&limit=N`.
pub(crate) async fn stream(
    ctx: &ApiContext,
    name: &str,
    query: Option<&str>,
) -> Result<Reply, ApiError> {
    let key = stream_key(name)
        .ok_or(ApiError::BadName("stream names are channel:NAME, user:NAME or broadcast"))?;
    let (since, limit) = match query {
        Some(q) => history_query(q)?,
        None => (0, 0),
    };
    let home = home_of(key.home_name(), ctx.router.shards());
    let (tx, rx) = oneshot::channel();
    let m = ShardMsg::QueryStream { key, since, limit, reply: tx };
    ctx.router.send(home, m).map_err(|_| ApiError::Busy { shard: home })?;
    let Ok(Ok(info)) = monoio::time::timeout(REPORT_TIMEOUT, rx).await else {
        return Err(ApiError::NoAnswer("no answer from the stream's shard"));
    };
    let (epoch, seq) = info.at.map_or((Value::Null, 0), |p| (json!(p.epoch), p.seq));
    let guarantee = if info.recoverable { "recoverable" } else { "ephemeral" };
    let mut v = json!({
        "stream": name,
        "epoch": epoch,
        "seq": seq,
        "guarantee": guarantee,
        "history": { "messages": info.held, "bytes": info.bytes, "oldest": info.oldest },
    });
    if query.is_some() {
        let messages: Vec<Value> = info.messages.iter().map(|(s, f)| message_json(*s, f)).collect();
        // Complete when the history still held the message right after `since` (or there was
        // nothing after it).
        let complete = since >= seq || info.oldest.is_some_and(|o| o <= since + 1);
        v["messages"] = json!(messages);
        v["complete"] = json!(complete);
    }
    Ok(Reply::json(200, &v))
}

/// `GET /v1/users/{user}/mailbox`: what the user's durable stream keeps for its devices;
/// `DELETE`: empties it (the devices' cursors stay, so a device that had not acknowledged
/// what went is told `reset` at its next connection).
pub(crate) async fn mailbox(ctx: &ApiContext, user: &str, clear: bool) -> Result<Reply, ApiError> {
    let user = name_in_path(user).ok_or(ApiError::BadName("invalid user name"))?;
    let home = home_of(&user, ctx.router.shards());
    let (tx, rx) = oneshot::channel();
    let m = ShardMsg::QueryMailbox { user: user.clone(), clear, reply: tx };
    ctx.router.send(home, m).map_err(|_| ApiError::Busy { shard: home })?;
    let Ok(Ok((info, cleared, durable))) = monoio::time::timeout(REPORT_TIMEOUT, rx).await else {
        return Err(ApiError::NoAnswer("no answer from the user's shard"));
    };
    let cursors: serde_json::Map<String, Value> =
        info.cursors.iter().map(|(d, seq)| (d.to_string(), json!(seq))).collect();
    let mut v = json!({
        "user": &*user,
        "durable": durable,
        "count": info.count,
        "bytes": info.bytes,
        "oldest": info.oldest,
        "newest": info.newest,
        "cursors": cursors,
    });
    if clear {
        v["cleared"] = json!(cleared);
    }
    Ok(Reply::json(200, &v))
}

pub(crate) fn stats(ctx: &ApiContext) -> Reply {
    let totals: serde_json::Map<String, Value> =
        stats::sum(&ctx.counters).into_iter().map(|(k, v)| (k, json!(v))).collect();
    let shards: Vec<Value> = ctx
        .counters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "shard": i,
                "open_connections": c.open_connections.get(),
                "subscriptions": c.subscriptions.get(),
                "inbox_depth": ctx.router.depth(i),
            })
        })
        .collect();
    let u = &ctx.shared.upstreams;
    let upstreams: Vec<Value> = u
        .rules
        .iter()
        .enumerate()
        .map(|(b, r)| {
            // Each shard's breaker for this backend: closed, half_open or open.
            let breakers: Vec<&str> = u
                .stats
                .iter()
                .map(|shard| match shard.get(b).map_or(0, |s| s.breaker_state.get()) {
                    0 => "closed",
                    1 => "half_open",
                    _ => "open",
                })
                .collect();
            let total = |f: &dyn Fn(&crate::upstream::stats::BackendStats) -> u64| -> u64 {
                u.stats.iter().filter_map(|shard| shard.get(b)).map(|s| f(s)).sum()
            };
            json!({
                "name": r.name,
                "url": r.url,
                "breakers": breakers,
                "requests": total(&|s| s.requests.get()),
                "events": total(&|s| s.events.get()),
                "queued": total(&|s| s.queued.get()),
                "in_flight": total(&|s| s.in_flight.get()),
            })
        })
        .collect();
    Reply::json(
        200,
        &json!({
            "epoch": ctx.shared.epoch,
            "connections": ctx.shared.total.load(Relaxed),
            "draining": ctx.shared.draining.load(Relaxed),
            "overload": {
                "actions": crate::server::overload::Action::ALL
                    .iter()
                    .filter(|a| ctx.shared.overload.on(**a))
                    .map(|a| a.label())
                    .collect::<Vec<_>>(),
                "memory_budget": ctx.shared.overload.budget.load(Relaxed),
                "memory_held": ctx.counters.iter().map(|c| c.held_for_clients()).sum::<u64>(),
                "rss": ctx.shared.overload.rss.load(Relaxed),
                "kernel_tcp_memory": ctx.shared.overload.tcp_pages.load(Relaxed).saturating_mul(4096),
            },
            "shards": shards,
            "upstreams": upstreams,
            "totals": totals,
        }),
    )
}
