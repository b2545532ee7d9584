//! The `veer` command line. The only place `anyhow` is used.

#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use veer::config::Config;

#[derive(Parser, Debug)]
#[command(name = "veer", version, about = "A traffic-shifting reverse proxy for blue/green and canary releases")]
struct Cli {
    /// Config file (same as `veer run --config FILE`).
    #[arg(long, global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Start two demo pools and the proxy in front of them at 90/10.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listen address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(config),
        (Some(Command::Check { config }), _) => return check(&config),
        (Some(Command::Demo { listen, admin }), _) => demo(listen, admin),
        (None, None) => {
            eprintln!("veer: nothing to do; try `veer demo`, `veer run --config FILE` or `veer --help`");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    let workers = std::env::var("VEER_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(workers);
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().build().context("cannot start the tokio runtime")
}

fn check(path: &PathBuf) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!("{}: ok: {}", path.display(), c.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf) -> Result<()> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            bail!("invalid config {}", path.display());
        }
    };
    init_logging();
    let rt = runtime(config.server.workers)?;
    rt.block_on(async move {
        let running = veer::app::start(config, Some(path.clone())).await?;
        announce(&running);
        wait_for_signal(&running).await?;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

fn announce(running: &veer::app::Running) {
    let urls: Vec<String> = running
        .listen
        .iter()
        .map(|a| format!("http://{a}"))
        .chain(running.tls_listen.iter().map(|a| format!("https://{a}")))
        .collect();
    eprintln!("veer: proxy={} admin=http://{}", urls.join(","), running.admin);
}

async fn wait_for_signal(running: &veer::app::Running) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                veer::app::reload_from_signal(&running.rt).await;
            }
        }
    }
}

fn demo(listen: std::net::SocketAddr, admin: std::net::SocketAddr) -> Result<()> {
    init_logging();
    let rt = runtime(0)?;
    rt.block_on(async move {
        let mut blue = Vec::new();
        let mut green = Vec::new();
        for i in 1..=2 {
            blue.push(veer::demo::start_backend("blue", format!("blue-{i}")).await?);
            green.push(veer::demo::start_backend("green", format!("green-{i}")).await?);
        }
        let addrs = |v: &[veer::demo::DemoBackend]| v.iter().map(|b| b.addr).collect::<Vec<_>>();
        // Fall back to free ports when the defaults are taken.
        let listen = free_or_ephemeral(listen);
        let admin = free_or_ephemeral(admin);
        let config = veer::demo::config(listen, admin, &addrs(&blue), &addrs(&green));
        let running = veer::app::start(config, None).await?;
        let url = format!("http://{}", running.listen[0]);
        println!("veer demo is running: blue and green pools, 90/10 split, sticky cookie veer_id\n");
        println!("  proxy:        {url}/");
        println!("  status page:  http://{}/", running.admin);
        println!("  status API:   http://{}/api/status", running.admin);
        println!("  metrics:      http://{}/metrics", running.admin);
        println!("  blue:         {}", blue.iter().map(|b| format!("{} {}", b.name, b.addr)).collect::<Vec<_>>().join(", "));
        println!("  green:        {}", green.iter().map(|b| format!("{} {}", b.name, b.addr)).collect::<Vec<_>>().join(", "));
        println!("\nTry:");
        println!("  for i in $(seq 20); do curl -s {url}/; done | sort | uniq -c");
        println!("  curl -s -H 'x-veer-pool: green' {url}/        # force a pool");
        println!("  curl -s -c /tmp/veer.jar -b /tmp/veer.jar {url}/   # sticky: same answer every time");
        println!("\nPress Ctrl-C to stop.");
        wait_for_signal(&running).await?;
        running.shutdown().await;
        Ok(())
    })
}

fn free_or_ephemeral(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr,
        Err(_) => std::net::SocketAddr::new(addr.ip(), 0),
    }
}
