//! loadgen: measures what a WebSocket server holds and how fast it delivers.
//!
//! Scenarios are subcommands, each with a hard time cap (`--max-duration`) so a run always
//! ends. Every figure in docs/benchmarks.md comes from here.

#![forbid(unsafe_code)] // reason: syscalls go through ringcast-sys, the one crate with unsafe

mod args;
mod deliver;
mod engine;
mod output;
mod probe;
mod publish;
mod report;
mod run;
mod scenario;
mod sources;
mod tls;
mod track;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::ConnArgs;
use scenario::churn::ChurnArgs;
use scenario::echo::EchoArgs;
use scenario::fanout::{FanoutArgs, SlowArgs};
use scenario::overload::OverloadArgs;
use scenario::push::PushArgs;
use scenario::resume::ResumeArgs;
use scenario::rpc::RpcArgs;

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = "Load generator for ringcast and any RFC 6455 server")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N connections, hold them, report outcomes, upgrade rate, handshake latency and
    /// (given --server-pid) the server's memory per connection.
    Hold(ConnArgs),
    /// N subscribers on a channel; M messages of B bytes published at rate R; delivery
    /// latency, completion time, throughput, server CPU per delivery, completeness.
    Fanout(FanoutArgs),
    /// N connections, one user each (`{i}` in --path); M pushes to random users at rate R;
    /// latency and completeness.
    Push(PushArgs),
    /// Connect at --rate and close each connection (cleanly) after --lifetime; outcomes,
    /// errors and the server's memory over time.
    Churn(ChurnArgs),
    /// Fanout where a fraction of subscribers stop reading: the others' latency and
    /// completeness, and the server's memory.
    Slow(SlowArgs),
    /// Round trips against an echo endpoint (any RFC 6455 server): latency and throughput.
    Echo(EchoArgs),
    /// RPCs through ringcast to a backend: latency, lost and mismatched replies, backend
    /// requests per event.
    Rpc(RpcArgs),
    /// N subscribers; every connection drops (closed, or silently) and comes back resuming
    /// from its position: missing, duplicated, resets, time to catch up, server CPU.
    Resume(ResumeArgs),
    /// Readers on a channel, then a storm of clients that stop reading at --rate while
    /// messages are published: admitted and refused clients, the readers' latency, server RSS
    /// over time, the time back to normal once the load stops.
    Overload(OverloadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Hold(a) => scenario::hold::hold(a),
        Scenario::Fanout(a) => scenario::fanout::fanout(a),
        Scenario::Push(a) => scenario::push::push(a),
        Scenario::Churn(a) => scenario::churn::churn(a),
        Scenario::Slow(a) => scenario::fanout::slow(a),
        Scenario::Echo(a) => scenario::echo::echo(a),
        Scenario::Rpc(a) => scenario::rpc::rpc(a),
        Scenario::Resume(a) => scenario::resume::resume(a),
        Scenario::Overload(a) => scenario::overload::overload(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
