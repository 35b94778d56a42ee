//! Runs a manager on its own, for scripts (schemathesis), benchmarks and trying it out:
//!
//! ```text
//! cargo run -p fragnet-manager --example serve -- --listen 127.0.0.1:5001 --data /tmp/m
//! FRAGNET_MANAGER_TOKEN=s3cret cargo run -p fragnet-manager --example serve
//! cargo run -p fragnet-manager --example serve -- --print-openapi > openapi.json
//! ```
//!
//! The `fragnet manager` subcommand is the user-facing way to run one; this example
//! exists so the manager crate can be exercised without the `fragnet` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fragnet_manager::ManagerConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Run a fragnet manager (REST registry, Swagger UI at /apidocs)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:5001")]
    listen: SocketAddr,
    /// Data directory (persisted manifests).
    #[arg(long, default_value = "fragnet-manager")]
    data: PathBuf,
    /// Seconds a node stays registered without a heartbeat.
    #[arg(long, default_value_t = 30.0)]
    ttl: f64,
    /// File holding the write token (or set FRAGNET_MANAGER_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Most live nodes.
    #[arg(long, default_value_t = 10_000)]
    max_nodes: usize,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    print_openapi: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_openapi {
        println!("{}", fragnet_manager::openapi().to_pretty_json()?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ManagerConfig {
        listen: args.listen,
        data_dir: args.data,
        ttl_secs: args.ttl,
        token_file: args.token_file,
        ..Default::default()
    };
    config.limits.max_nodes = args.max_nodes;
    let cancel = CancellationToken::new();
    let handle = fragnet_manager::spawn(config, cancel.clone())
        .await
        .context("starting the manager")?;
    println!(
        "manager listening on {} (Swagger UI: {}/apidocs)",
        handle.local_addr(),
        handle.url()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await;
    Ok(())
}
