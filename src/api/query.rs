//! Read-only answers: a user's connections, a channel's subscriber count (each from the home
//! shard that knows it), and the node's counters.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_channel::oneshot;
use serde_json::{json, Value};

use crate::push::ids::home_of;
use crate::push::msg::ShardMsg;
use crate::server::stats;

use super::error::{ApiError, Reply};
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
    Reply::json(
        200,
        &json!({
            "epoch": ctx.shared.epoch,
            "connections": ctx.shared.total.load(Relaxed),
            "draining": ctx.shared.draining.load(Relaxed),
            "shards": shards,
            "totals": totals,
        }),
    )
}
