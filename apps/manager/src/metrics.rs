//! Request counters and the Prometheus text exposition of `GET /metrics`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use fragnet_core::registry::RegistryStats;

use crate::state::AppState;

/// Counters of one route, by (method, status).
type RouteCounters = HashMap<(&'static str, u16), AtomicU64>;

/// Requests counted by route template, method and status.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: RwLock<HashMap<String, RouteCounters>>,
}

/// The method's label: standard methods by name, anything else lumped together so
/// the label set stays bounded.
fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Counts one request. The route is the matched template (`/videos/{id}`) or
    /// `unmatched`, so the label set stays bounded whatever clients send. The common
    /// case (a counter that exists) takes a read lock and allocates nothing.
    pub fn count(&self, route: &str, method: &str, status: u16) {
        let key = (method_label(method), status);
        if let Some(c) = self
            .requests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .and_then(|r| r.get(&key))
        {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.requests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_string())
            .or_default()
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self, stats: RegistryStats, uptime_secs: f64) -> String {
        let mut out = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            );
        };
        gauge(
            "fragnet_manager_nodes",
            "Live registered nodes.",
            stats.nodes as f64,
        );
        gauge(
            "fragnet_manager_videos",
            "Registered videos.",
            stats.videos as f64,
        );
        gauge(
            "fragnet_manager_fragments_held",
            "Fragments held, summed over live nodes and videos.",
            stats.fragments_held as f64,
        );
        gauge(
            "fragnet_manager_uptime_seconds",
            "Seconds since the manager started.",
            (uptime_secs * 1000.0).round() / 1000.0,
        );
        out.push_str(
            "# HELP fragnet_manager_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE fragnet_manager_requests_total counter\n");
        let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = map
            .iter()
            .flat_map(|(route, r)| {
                r.iter().map(move |((method, status), n)| {
                    (
                        (route.as_str(), *method, *status),
                        n.load(Ordering::Relaxed),
                    )
                })
            })
            .collect();
        rows.sort();
        for ((route, method, status), n) in rows {
            let _ = writeln!(
                out,
                "fragnet_manager_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: counts every request after it is answered.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method().as_str());
    let resp = next.run(req).await;
    state.metrics.count(
        route.as_ref().map_or("unmatched", |p| p.as_str()),
        method,
        resp.status().as_u16(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.count("/videos/{id}", "GET", 200);
        m.count("/videos/{id}", "GET", 200);
        m.count("unmatched", "GET", 404);
        let text = m.render(
            RegistryStats {
                nodes: 2,
                videos: 1,
                fragments_held: 7,
            },
            1.5,
        );
        assert!(text.contains("fragnet_manager_nodes 2\n"), "{text}");
        assert!(text.contains("fragnet_manager_fragments_held 7\n"));
        assert!(text.contains("fragnet_manager_requests_total{route=\"/videos/{id}\",method=\"GET\",status=\"200\"} 2\n"));
        assert!(text.contains("# TYPE fragnet_manager_requests_total counter\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }
}
