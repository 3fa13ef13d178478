//! Fan-out micro-benchmarks: the channel index (subscribe, unsubscribe, iterating 19,000
//! subscribers), encoding a delivered message once, and queueing a shared frame into an
//! outbox.
//!
//!   cargo bench --bench fanout_index

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::proto::client::Stream;
use ringcast::push::index::ChannelIndex;
use ringcast::push::msg::{Payload, Priority};
use ringcast::server::outbox::Outbox;
use ringcast::server::shard::encode_message;
use serde_json::value::RawValue;

fn index(c: &mut Criterion) {
    let ch: Arc<str> = Arc::from("prices");
    let mut full = ChannelIndex::default();
    for slot in 0..19_000u32 {
        full.subscribe(&ch, slot);
    }
    let mut g = c.benchmark_group("channel_index");
    g.bench_function("subscribe+unsubscribe (19k subscribers)", |b| {
        b.iter(|| {
            full.subscribe(&ch, black_box(50_000));
            full.unsubscribe("prices", black_box(50_000))
        })
    });
    g.throughput(Throughput::Elements(19_000));
    g.bench_function("collect 19k subscribers", |b| {
        let mut scratch = Vec::with_capacity(19_000);
        b.iter(|| {
            scratch.clear();
            if let Some(set) = full.subscribers("prices") {
                scratch.extend(set.iter().copied());
            }
            black_box(scratch.len())
        })
    });
    g.finish();
}

fn encode_and_queue(c: &mut Criterion) {
    let raw: Arc<RawValue> = Arc::from(
        RawValue::from_string(
            r#"{"i":1,"t":2,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.into(),
        )
        .expect("static JSON"),
    );
    let payload = Payload::Json(raw);
    let mut g = c.benchmark_group("fanout");
    g.bench_function("encode a 64 B message once", |b| {
        b.iter(|| {
            encode_message(&Stream::Channel("prices"), black_box(17), &payload, Priority::Normal)
        })
    });
    let frame = encode_message(&Stream::Channel("prices"), 17, &payload, Priority::Normal);
    let mut shed = Vec::new();
    g.bench_function("queue a shared frame into an empty outbox and drain it", |b| {
        b.iter_batched_ref(
            Outbox::default,
            |o| {
                let q = o.push_bounded(&frame, (1 << 20, 4096), &mut shed);
                let _ = o.flush(|iov| Ok(iov.iter().map(|s| s.len()).sum()));
                black_box(q.queued)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, index, encode_and_queue);
criterion_main!(benches);
