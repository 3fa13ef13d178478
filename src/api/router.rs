//! Routing: which endpoint a request names, whether its method fits, and who answers it.

use crate::server::overload::Action;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use serde_json::json;

use super::error::{ApiError, Reply};
use super::fields::Fields;
use super::keys::{Caller, Need};
use super::ops::{prepare, Op};
use super::{batch, metrics, query, ApiContext};

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Health,
    Ready,
    Metrics,
    Op(Op),
    Batch,
    Stats,
    User(&'a str),
    /// `GET` (what it holds, each device's cursor) or `DELETE` (empty it).
    Mailbox(&'a str),
    Channel(&'a str),
    Stream(&'a str),
    StreamHistory(&'a str),
}

impl Endpoint<'_> {
    fn of(path: &str) -> Option<Endpoint<'_>> {
        Some(match path {
            "/healthz" => Endpoint::Health,
            "/readyz" => Endpoint::Ready,
            "/metrics" => Endpoint::Metrics,
            "/v1/batch" => Endpoint::Batch,
            "/v1/stats" => Endpoint::Stats,
            p => {
                if let Some(rest) = p.strip_prefix("/v1/streams/") {
                    match rest.strip_suffix("/history") {
                        Some(stream) => Endpoint::StreamHistory(stream),
                        None => Endpoint::Stream(rest),
                    }
                } else if let Some(user) = p.strip_prefix("/v1/users/") {
                    match user.strip_suffix("/mailbox") {
                        Some(user) => Endpoint::Mailbox(user),
                        None => Endpoint::User(user),
                    }
                } else if let Some(channel) = p.strip_prefix("/v1/channels/") {
                    Endpoint::Channel(channel)
                } else {
                    Endpoint::Op(Op::parse(p.strip_prefix("/v1/")?)?)
                }
            }
        })
    }

    /// The one method the endpoint takes (probes and metrics take any).
    fn method(&self) -> Option<http::Method> {
        match self {
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics | Endpoint::Mailbox(_) => None,
            Endpoint::Op(_) | Endpoint::Batch => Some(http::Method::POST),
            Endpoint::Stats
            | Endpoint::User(_)
            | Endpoint::Channel(_)
            | Endpoint::Stream(_)
            | Endpoint::StreamHistory(_) => Some(http::Method::GET),
        }
    }
}

/// Answers a request whose key (where one is needed) was checked at its head.
pub(crate) async fn handle(
    ctx: &ApiContext,
    head: &http::request::Parts,
    body: Bytes,
    caller: Caller<'_>,
) -> Reply {
    match route(ctx, head, body, caller).await {
        Ok(r) => r,
        Err(e) => e.reply(),
    }
}

async fn route(
    ctx: &ApiContext,
    head: &http::request::Parts,
    body: Bytes,
    caller: Caller<'_>,
) -> Result<Reply, ApiError> {
    let endpoint = Endpoint::of(head.uri.path()).ok_or(ApiError::NotFound)?;
    if ctx.metrics_only
        && !matches!(endpoint, Endpoint::Health | Endpoint::Ready | Endpoint::Metrics)
    {
        return Err(ApiError::NotFound);
    }
    match endpoint {
        Endpoint::Metrics => caller.require(Need::Metrics)?,
        // Emptying a mailbox takes what a push takes.
        Endpoint::Mailbox(_) if head.method == http::Method::DELETE => {
            caller.require(Need::Push)?
        }
        Endpoint::Mailbox(_) if head.method == http::Method::GET => caller.require(Need::Read)?,
        Endpoint::Mailbox(_) => return Err(ApiError::Methods("GET, DELETE")),
        Endpoint::Stats
        | Endpoint::User(_)
        | Endpoint::Channel(_)
        | Endpoint::Stream(_)
        | Endpoint::StreamHistory(_) => caller.require(Need::Read)?,
        // Operations are checked with their fields (a publish by its channel).
        Endpoint::Health | Endpoint::Ready | Endpoint::Op(_) | Endpoint::Batch => {}
    }
    if let Some(m) = endpoint.method() {
        if head.method != m {
            return Err(ApiError::Method(m));
        }
    }
    match endpoint {
        Endpoint::Health => Ok(Reply::json(200, &json!({"status": "alive"}))),
        Endpoint::Ready => Ok(if ctx.shared.draining.load(Relaxed) {
            Reply::json(503, &json!({"ready": false, "reason": "draining"}))
        } else if ctx.shared.overload.on(Action::StopAdmit) {
            // A load balancer sends new clients elsewhere while admission is stopped.
            Reply::json(503, &json!({"ready": false, "reason": "overloaded"}))
        } else {
            Reply::json(200, &json!({"ready": true}))
        }),
        Endpoint::Metrics => {
            let text = metrics::render(&ctx.counters, &ctx.router, &ctx.shared, ctx.driver);
            Ok(Reply {
                status: 200,
                body: text.into_bytes(),
                extra: "",
                content_type: "text/plain; version=0.0.4",
            })
        }
        Endpoint::Op(op) => {
            let answer = prepare(ctx, op, Fields::parse_any(&body)?, caller)?.answer(ctx).await?;
            Ok(Reply::json(200, &answer))
        }
        Endpoint::Batch => Ok(batch::batch(ctx, &body, caller).await),
        Endpoint::Stats => Ok(query::stats(ctx)),
        Endpoint::User(_)
        | Endpoint::Channel(_)
        | Endpoint::Stream(_)
        | Endpoint::StreamHistory(_)
            if ctx.shared.overload.on(Action::Pause) =>
        {
            ctx.shared.overload.paused.fetch_add(1, Relaxed);
            Err(ApiError::Paused)
        }
        Endpoint::User(user) => query::user(ctx, user).await,
        Endpoint::Mailbox(user) => {
            query::mailbox(ctx, user, head.method == http::Method::DELETE).await
        }
        Endpoint::Channel(channel) => query::channel(ctx, channel).await,
        Endpoint::Stream(stream) => query::stream(ctx, stream, None).await,
        Endpoint::StreamHistory(stream) => {
            query::stream(ctx, stream, Some(head.uri.query().unwrap_or(""))).await
        }
    }
}

/// Whether a path answers without the API key (health probes, for load balancers).
pub(crate) fn is_probe(path: &str) -> bool {
    matches!(Endpoint::of(path), Some(Endpoint::Health | Endpoint::Ready))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoints() {
        assert_eq!(Endpoint::of("/v1/publish"), Some(Endpoint::Op(Op::Publish)));
        assert_eq!(Endpoint::of("/v1/kick"), Some(Endpoint::Op(Op::Kick)));
        assert_eq!(Endpoint::of("/v1/users/42"), Some(Endpoint::User("42")));
        assert_eq!(Endpoint::of("/v1/channels/"), Some(Endpoint::Channel("")));
        assert_eq!(Endpoint::of("/v1/streams/channel:a"), Some(Endpoint::Stream("channel:a")));
        assert_eq!(
            Endpoint::of("/v1/streams/user:7/history"),
            Some(Endpoint::StreamHistory("user:7"))
        );
        for missing in ["/", "/v1", "/v1/", "/v1/nope", "/v2/publish", "/v1/publish/x"] {
            assert_eq!(Endpoint::of(missing), None, "{missing}");
        }
        assert!(is_probe("/readyz") && !is_probe("/metrics"));
    }
}
