//! Frame codec micro-benchmarks: header parsing, whole-frame decoding, masking (word-at-a-time
//! against bytewise), and the timer wheel's insert/cancel/expire.
//!
//!   cargo bench --bench codec

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcast::proto::frame::{encode_frame, FrameHeader};
use ringcast::proto::mask::{apply_mask, apply_mask_bytewise};
use ringcast::proto::{Decoder, Limits, OpCode, Role};
use ringcast::timer_wheel::TimerWheel;

fn header(c: &mut Criterion) {
    let mut small = Vec::new();
    encode_frame(&mut small, OpCode::Text, true, Some([1, 2, 3, 4]), &[b'x'; 64]);
    let mut large = Vec::new();
    encode_frame(&mut large, OpCode::Binary, true, Some([1, 2, 3, 4]), &vec![0u8; 70_000]);
    let mut g = c.benchmark_group("header_parse");
    g.bench_function("7-bit length", |b| b.iter(|| FrameHeader::parse(black_box(&small))));
    g.bench_function("64-bit length", |b| b.iter(|| FrameHeader::parse(black_box(&large))));
    g.finish();

    let mut g = c.benchmark_group("decode_frame");
    g.throughput(Throughput::Bytes(small.len() as u64));
    let limits = Limits::default();
    g.bench_function("64 B masked text", |b| {
        b.iter_batched_ref(
            || (small.clone(), Decoder::new(Role::Server)),
            |(buf, dec)| {
                let r = dec.decode(buf, &limits);
                black_box(r.is_ok());
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in [64usize, 4096, 65536] {
        let mut buf = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("word {size} B"), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 0))
        });
        g.bench_function(format!("bytewise {size} B"), |b| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), [1, 2, 3, 4], 0))
        });
    }
    g.finish();
}

fn timers(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel");
    g.bench_function("insert+cancel", |b| {
        let mut w = TimerWheel::<u32>::new(512, 0);
        w.reserve(1);
        b.iter(|| {
            let k = w.insert(black_box(300), 7);
            w.cancel(k)
        })
    });
    g.bench_function("expire 19k timers over 300 ticks", |b| {
        b.iter_batched_ref(
            || {
                let mut w = TimerWheel::<u32>::new(512, 0);
                for i in 0..19_000u32 {
                    w.insert(u64::from(i % 300) + 1, i);
                }
                (w, Vec::with_capacity(19_000))
            },
            |(w, fired)| {
                w.expire(300, fired);
                black_box(fired.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, header, masking, timers);
criterion_main!(benches);
