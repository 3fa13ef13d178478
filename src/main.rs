use std::process::ExitCode;

use clap::Parser;
use ringcast::config::Config;
use ringcast::server::{sys, Server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cfg = Config::parse();
    if !cfg.transparent_huge_pages {
        if let Err(e) = sys::disable_transparent_huge_pages() {
            eprintln!("ringcast: cannot turn transparent huge pages off: {e}");
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringcast: --log-level {:?} is not a valid filter: {e}", cfg.log_level);
            return ExitCode::from(2);
        }
    };
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = cfg.validate() {
        eprintln!("ringcast: {e}");
        return ExitCode::from(2);
    }
    // Block SIGINT/SIGTERM before any thread starts, so only the signal thread takes them.
    let signals = match sys::TermSignals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api_listener = match ringcast::api::bind(cfg.api_listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api_key = cfg.api_key.clone();
    let api_max_body = cfg.api_max_body as usize;
    let api_addr = cfg.api_listen;
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        shards = server.shards(),
        driver = server.driver(),
        open_files = server.nofile(),
        max_connections = server.max_connections(),
        "listening on ws://{}",
        server.local_addr()
    );
    let ctx = ringcast::api::ApiContext {
        router: server.router(),
        shared: server.shared(),
        counters: server.counters().to_vec(),
        api_key,
        max_body: api_max_body,
    };
    let api_addr = api_listener.local_addr().unwrap_or(api_addr);
    let api = match ringcast::api::spawn(api_listener, ctx, server.driver() == "io_uring") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ringcast: cannot start the API thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("API on http://{api_addr}");
    let handle = server.shutdown_handle();
    std::thread::spawn(move || {
        let sig = signals.wait();
        tracing::info!(signal = sig, "stopping: no new connections, closing open ones with 1001");
        handle.shutdown();
        let sig = signals.wait();
        tracing::warn!(signal = sig, "second signal: exiting at once");
        std::process::exit(1);
    });
    let joined = server.join();
    api.stop();
    match joined {
        Ok(totals) => {
            let summary: Vec<String> = totals.iter().map(|(k, v)| format!("{k}={v}")).collect();
            tracing::info!("stopped: {}", summary.join(" "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
