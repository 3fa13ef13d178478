//! `POST /v1/batch`: one operation per line (`{"op":"publish", …}`), one result per line, in
//! order. Every line is dispatched before any report is awaited; each line's result is written
//! once, from the typed outcome.

use serde_json::Value;

use super::error::{ApiError, Reply};
use super::fields::{BadRequest, Fields};
use super::keys::Caller;
use super::ops::{prepare, Op, Prepared};
use super::ApiContext;

const OPS: &str = "\"op\" must be \"publish\", \"push\", \"send\", \"broadcast\" or \"kick\"";

pub(crate) async fn batch(ctx: &ApiContext, body: &[u8], caller: Caller<'_>) -> Reply {
    let mut pending = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        pending.push(batch_line(ctx, line, caller));
    }
    let mut out = Vec::new();
    for p in pending {
        let line: Value = match p {
            Ok(p) => match p.answer(ctx).await {
                Ok(v) => v,
                Err(e) => e.json(true),
            },
            Err(e) => e.json(true),
        };
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    Reply { status: 200, body: out, extra: "", content_type: "application/x-ndjson" }
}

/// One batch line: a JSON object whose `op` names the operation. Its values stay raw, as in a
/// single request, so the same rules (and the same depth limit on `data`) hold.
fn batch_line(ctx: &ApiContext, line: &[u8], caller: Caller<'_>) -> Result<Prepared, ApiError> {
    let mut f = Fields::parse_any(line).map_err(|e| {
        BadRequest::body(format!(
            "line is not a JSON object: {}",
            e.message.trim_start_matches("body must be a JSON object: ")
        ))
    })?;
    let op = match f.take_str("op") {
        Ok(Some(s)) => Op::parse(&s),
        _ => None,
    };
    let op = op.ok_or_else(|| BadRequest::new("op", OPS))?;
    prepare(ctx, op, f, caller)
}

#[cfg(test)]
mod tests {
    use super::{Op, OPS};

    #[test]
    fn the_op_error_names_every_op() {
        for op in Op::ALL {
            assert!(OPS.contains(&format!("\"{}\"", op.name())), "{op:?}");
        }
    }
}
