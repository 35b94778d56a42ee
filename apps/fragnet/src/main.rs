//! The `fragnet` binary: parses the command line, sets up logging, and runs one role.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

mod assemble;
mod cli;
mod cmd;
mod config;
mod progress;
mod share;

use cli::{Cli, Command};

fn init_tracing(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .compact()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; its components' info lines would drown it.
    let quiet = if matches!(cli.command, Command::Demo(_)) && cli.verbose == 0 {
        cli.quiet.max(1)
    } else {
        cli.quiet
    };
    init_tracing(cli.verbose, quiet);
    // reqwest/quinn use rustls without a default provider; ring is the only one built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sources = config::Sources {
        profile: cli.profile.clone(),
        file: cli.config.clone(),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Split(a) => cmd::split::run(a).await,
            Command::Config(c) => cmd::config::run(&sources, c).await,
            Command::Health(a) => cmd::health::run(a).await,
            Command::Add(a) => cmd::library::add(&sources, a).await,
            Command::Remove(a) => cmd::library::remove(&sources, a).await,
            Command::Manager(a) => cmd::roles::manager(&sources, a).await,
            Command::Broker(a) => cmd::roles::broker(&sources, a).await,
            Command::Subscribe(a) => cmd::roles::subscribe(&sources, a).await,
            Command::Notify(a) => cmd::roles::notify(&sources, a).await,
            Command::Run(a) => cmd::roles::run(&sources, a).await,
            Command::Demo(a) => cmd::demo::run(a).await,
            Command::Join(a) => cmd::join::run(a).await,
            Command::Peer(a) => cmd::peer::run(&sources, a).await,
            Command::Fetch(a) => cmd::fetch::run(&sources, a).await,
            Command::Watch(a) => cmd::watch::run(&sources, a).await,
        }
    });
    // Don't wait for blocked stdin readers or lingering connections on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
