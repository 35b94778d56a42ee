//! One module per subcommand.

pub mod config;
pub mod demo;
pub mod fetch;
pub mod health;
pub mod join;
pub mod peer;
pub mod roles;
pub mod split;

use crate::cli::NodeFlags;

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The configuration keys set by node flags, as a figment layer.
pub fn node_flags_json(f: &NodeFlags) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{Map, Value, json};
    let mut top = Map::new();
    let mut limits = Map::new();
    if let Some(d) = &f.data {
        top.insert("data_dir".into(), json!(d));
    }
    if let Some(t) = &f.transport {
        top.insert("transport".into(), json!(t));
    }
    if let Some(n) = &f.name {
        top.insert("name".into(), json!(n));
    }
    if let Some(r) = &f.max_upload_rate {
        limits.insert("max_upload_rate".into(), json!(r));
    }
    if let Some(n) = f.max_connections {
        limits.insert("max_connections".into(), json!(n));
    }
    if let Some(n) = f.concurrency {
        limits.insert("concurrency".into(), json!(n));
    }
    if !limits.is_empty() {
        top.insert("limits".into(), Value::Object(limits));
    }
    top
}
