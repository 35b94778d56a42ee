//! `fragnet health URL`: a healthcheck that needs no shell or curl in the image.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use fragnet_core::PeerAddr;
use fragnet_core::identity::Identity;
use fragnet_core::protocol::Timeouts;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::assemble;
use crate::cli::HealthArgs;

/// Exits 0 when the service answers as it should.
pub async fn run(a: HealthArgs) -> Result<()> {
    let limit = Duration::from_secs(a.timeout.max(1));
    tokio::time::timeout(limit, check(&a.url, limit))
        .await
        .with_context(|| format!("{} did not answer within {}s", a.url, limit.as_secs()))??;
    println!("healthy: {}", a.url);
    Ok(())
}

async fn check(url: &str, limit: Duration) -> Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let client = reqwest::Client::builder().timeout(limit).build()?;
        let resp = client
            .get(url)
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        if !resp.status().is_success() {
            bail!("{url} answered {}", resp.status());
        }
        return Ok(());
    }
    if let Some(hostport) = url.strip_prefix("broker://") {
        let stream = tokio::net::TcpStream::connect(hostport)
            .await
            .with_context(|| format!("connecting to the broker at {hostport}"))?;
        let (r, mut w) = stream.into_split();
        w.write_all(b"PING\n").await?;
        let mut line = String::new();
        BufReader::new(r).take(64).read_line(&mut line).await?;
        if line.trim_end() != "PONG" {
            bail!(
                "broker at {hostport} answered {:?} to PING",
                line.trim_end()
            );
        }
        return Ok(());
    }
    let addr = PeerAddr::parse(url, "tcp")
        .with_context(|| "expected http://…, tcp://…, quic://… or broker://…".to_string())?;
    // A throwaway identity: health checks must not touch a node's key.
    let identity = Arc::new(Identity::generate());
    let transports = assemble::transports(&identity, &crate::config::Config::default())?;
    let mut client = fragnet_core::protocol::connect(
        &transports,
        &addr,
        Timeouts {
            io: limit,
            ..Timeouts::default()
        },
    )
    .await
    .with_context(|| format!("connecting to the peer at {addr}"))?;
    client
        .videos()
        .await
        .with_context(|| format!("asking {addr} for its videos"))?;
    Ok(())
}
