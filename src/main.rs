use std::process::ExitCode;

use ringcast::config::Config;
use ringcast::server::Server;
use ringcast_sys as sys;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `ringcast hash-key [KEY]`: print the SHA-256 an `[[api_keys]]` table takes (the key is
    // read from stdin when not given, so it stays out of the shell's history).
    if args.get(1).is_some_and(|a| a == "hash-key") {
        let key = match args.get(2) {
            Some(k) => k.to_string_lossy().into_owned(),
            None => {
                let mut line = String::new();
                if let Err(e) = std::io::stdin().read_line(&mut line) {
                    eprintln!("ringcast: cannot read the key from stdin: {e}");
                    return ExitCode::from(2);
                }
                line.trim_end_matches(['\r', '\n']).to_string()
            }
        };
        if key.is_empty() {
            eprintln!("ringcast: usage: ringcast hash-key [KEY]  (or the key on stdin)");
            return ExitCode::from(2);
        }
        println!("{}", ringcast::api::keys::hash_key(&key));
        return ExitCode::SUCCESS;
    }
    // `ringcast check-config FILE [flags]`: print the effective configuration and exit.
    let check = args.get(1).is_some_and(|a| a == "check-config");
    if check {
        let Some(file) = args.get(2).cloned() else {
            eprintln!("ringcast: usage: ringcast check-config FILE [flags]");
            return ExitCode::from(2);
        };
        let rest: Vec<std::ffi::OsString> = args.drain(3..).collect();
        args = vec![args[0].clone(), "--config".into(), file];
        args.extend(rest);
    }
    if let Err(e) = <Config as clap::CommandFactory>::command().try_get_matches_from(&args) {
        if matches!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
        ) {
            e.exit();
        }
    }
    let loaded = match Config::load(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringcast: {}", e.0.trim_end().trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if check {
        print!("{}", ringcast::config::render(&loaded.settings));
        return ExitCode::SUCCESS;
    }
    let cfg = loaded.config;
    if !cfg.listen.transparent_huge_pages {
        if let Err(e) = sys::disable_transparent_huge_pages() {
            eprintln!("ringcast: cannot turn transparent huge pages off: {e}");
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.log_level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringcast: --log-level {:?} is not a valid filter: {e}", cfg.log.log_level);
            return ExitCode::from(2);
        }
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.log.log_format {
        ringcast::config::LogFormat::Json => builder.json().init(),
        ringcast::config::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
    // Block SIGINT/SIGTERM before any thread starts, so only the signal thread takes them.
    let signals = match sys::TermSignals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringcast: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api_listener = match ringcast::api::bind(cfg.api.api_listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api_keys = ringcast::api::keys::ApiKeys::from_config(&cfg);
    let metrics_listener = match cfg.api.metrics_listen.map(ringcast::api::bind) {
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("ringcast: {}", e.replace("for the API", "for --metrics-listen"));
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let api_max_body = cfg.api.api_max_body as usize;
    let api_max_connections = cfg.api.api_max_connections as usize;
    let session_key_set = cfg.session_key_set();
    let idempotency = ringcast::api::idempotency::Idempotency::new(
        cfg.api.idempotency_window,
        cfg.api.idempotency_max_keys,
    );
    let api_addr = cfg.api.api_listen;
    let backlog = cfg.listen.backlog;
    let (data_dir, durability) = {
        let (d, m) = cfg.data_dir();
        (d.to_string(), m.to_string())
    };
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
        keys: api_keys,
        metrics_only: false,
        max_body: api_max_body,
        driver: server.driver(),
        max_connections: api_max_connections,
        idempotency,
    };
    let api_addr = api_listener.local_addr().unwrap_or(api_addr);
    let api = match ringcast::api::spawn(api_listener, ctx, server.driver() == "io_uring") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ringcast: cannot start the API thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(t) = server.tls_addr() {
        tracing::info!("listening on wss://{t}");
    }
    tracing::info!("API on http://{api_addr}");
    if data_dir == "none" {
        tracing::warn!(
            "--data-dir none: durable user streams (mailboxes, device cursors) are kept in memory \
             only; a restart loses them"
        );
    } else {
        tracing::info!(data_dir = %data_dir, durability = %durability, "durable user streams are written to {data_dir}");
    }
    let metrics_api = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let ctx = ringcast::api::ApiContext {
                router: server.router(),
                shared: server.shared(),
                counters: server.counters().to_vec(),
                keys: ringcast::api::keys::ApiKeys::default(),
                metrics_only: true,
                max_body: 1024,
                driver: server.driver(),
                max_connections: 64,
                idempotency: ringcast::api::idempotency::Idempotency::new(
                    std::time::Duration::from_secs(1),
                    1,
                ),
            };
            match ringcast::api::spawn(l, ctx, server.driver() == "io_uring") {
                Ok(a) => {
                    tracing::info!(
                        "metrics on http://{addr} (/metrics, /healthz, /readyz; no key)"
                    );
                    Some(a)
                }
                Err(e) => {
                    eprintln!("ringcast: cannot start the metrics thread: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    if !session_key_set {
        tracing::info!(
            "session tokens are signed with a key made at start-up; set --session-key (the same \
             on every node) to keep them valid across restarts"
        );
    }
    if let Some(somaxconn) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        if backlog > somaxconn {
            tracing::warn!(
                "--backlog {backlog} is capped by net.core.somaxconn = {somaxconn}; raise the sysctl (tuning/) or accept bursts may be refused"
            );
        }
    }
    let handle = server.shutdown_handle();
    let reload = server.reload_handle();
    std::thread::spawn(move || {
        let mut stopping = false;
        loop {
            let sig = signals.wait();
            if sig == sys::TermSignals::HANGUP {
                tracing::info!("SIGHUP: reloading keys");
                reload.reload();
            } else if !stopping {
                stopping = true;
                tracing::info!(
                    signal = sig,
                    "stopping: no new connections, closing open ones with 1001"
                );
                handle.shutdown();
            } else {
                tracing::warn!(signal = sig, "second signal: exiting at once");
                std::process::exit(1);
            }
        }
    });
    let joined = server.join();
    api.stop();
    if let Some(m) = metrics_api {
        m.stop();
    }
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
