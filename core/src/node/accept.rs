//! The serving side of a node: listeners on one or more transports, an accept loop per listener,
//! a cap on concurrent connections, and an orderly shutdown.
//!
//! Shutdown order: stop accepting, let in-flight streams finish for a grace period,
//! then drop them (a fetch on the other side keeps its verified chunks and resumes).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::addr::PeerAddr;
use crate::serve::ServeContext;
use crate::transport::{Listener, TransportError, Transports};

/// How a node serves.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Concurrent connections served; more wait to be accepted... and are refused after
    /// a short wait so a flood cannot queue forever.
    pub max_connections: usize,
    /// Time in-flight transfers get to finish on shutdown.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A running node's serving side.
#[must_use = "dropping the handle does not stop the node; call shutdown()"]
#[derive(Debug)]
pub struct ServeHandle {
    addrs: Vec<PeerAddr>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl ServeHandle {
    /// The addresses actually bound.
    pub fn local_addrs(&self) -> &[PeerAddr] {
        &self.addrs
    }

    /// Stops accepting, waits for in-flight streams (up to the grace period), returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds every listen address and serves until `cancel` fires.
pub async fn serve(
    transports: &Transports,
    listen: &[PeerAddr],
    ctx: Arc<ServeContext>,
    limits: ServeLimits,
    cancel: CancellationToken,
) -> Result<ServeHandle, TransportError> {
    let mut listeners = Vec::new();
    for addr in listen {
        listeners.push(transports.listen(addr).await?);
    }
    let cancel = cancel.child_token();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let mut addrs = Vec::new();
    for l in listeners {
        let bound = l.local_addr();
        addrs.push(bound.clone());
        tasks.spawn(
            accept_loop(
                l,
                ctx.clone(),
                permits.clone(),
                limits.clone(),
                cancel.clone(),
            )
            .instrument(info_span!("listen", addr = %bound)),
        );
    }
    Ok(ServeHandle {
        addrs,
        cancel,
        tasks,
    })
}

async fn accept_loop(
    listener: Box<dyn Listener>,
    ctx: Arc<ServeContext>,
    permits: Arc<Semaphore>,
    limits: ServeLimits,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let conn = match accepted {
            Ok(c) => c,
            Err(e) => {
                // One failed accept (a reset handshake, fd exhaustion) never stops the node.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let remote = conn.remote_addr();
        let permit = match tokio::time::timeout(
            Duration::from_secs(2),
            permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => {
                warn!(%remote, limit = limits.max_connections, "connection limit reached; refusing");
                conn.close(1, "busy: connection limit reached").await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let cancel = cancel.clone();
        let span = info_span!("conn", peer = %crate::protocol::describe_remote(remote, conn.remote_node_id()));
        conns.spawn(
            async move {
                let _permit = permit;
                debug!("[+] connected");
                let mut streams = JoinSet::new();
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => break,
                        s = conn.accept_stream() => s,
                    };
                    match next {
                        Ok(Some(stream)) => {
                            let ctx = ctx.clone();
                            let id = conn.remote_node_id();
                            streams.spawn(
                                {
                                    let stop = cancel.clone();
                                    async move { ctx.serve_stream(stream, remote, id, &stop).await }
                                }
                                .in_current_span(),
                            );
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "connection ended");
                            break;
                        }
                    }
                    while streams.try_join_next().is_some() {}
                }
                while streams.join_next().await.is_some() {}
            }
            .instrument(span),
        );
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    if !conns.is_empty() {
        info!(in_flight = conns.len(), "waiting for transfers in flight");
        if tokio::time::timeout(limits.shutdown_grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            conns.abort_all();
        }
    }
}
