//! Request counters and the Prometheus text exposition of `GET /metrics`.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use fragnet_core::metrics::{self, Collector, DescriptorEncoder};
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

    /// The Prometheus text format (version 0.0.4), encoded by `prometheus-client`.
    pub fn render(&self, stats: RegistryStats, uptime_secs: f64) -> String {
        let mut requests: Vec<_> = {
            let map = self.requests.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .flat_map(|(route, r)| {
                    r.iter().map(move |((method, status), n)| {
                        ((route.clone(), *method, *status), n.load(Ordering::Relaxed))
                    })
                })
                .collect()
        };
        requests.sort();
        let snapshot = Snapshot {
            stats,
            uptime_secs: (uptime_secs * 1000.0).round() / 1000.0,
            requests,
        };
        metrics::render(&metrics::registry(vec![Box::new(snapshot)]))
    }
}

/// The manager's metrics at one scrape.
#[derive(Debug)]
struct Snapshot {
    stats: RegistryStats,
    uptime_secs: f64,
    requests: Vec<((String, &'static str, u16), u64)>,
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        metrics::gauge(
            e,
            "fragnet_manager_nodes",
            "Live registered nodes.",
            self.stats.nodes,
        )?;
        metrics::gauge(
            e,
            "fragnet_manager_videos",
            "Registered videos.",
            self.stats.videos,
        )?;
        metrics::gauge(
            e,
            "fragnet_manager_fragments_held",
            "Fragments held, summed over live nodes and videos.",
            self.stats.fragments_held,
        )?;
        metrics::gauge_f64(
            e,
            "fragnet_manager_uptime_seconds",
            "Seconds since the manager started.",
            self.uptime_secs,
        )?;
        let rows: Vec<(Vec<(&'static str, String)>, u64)> = self
            .requests
            .iter()
            .map(|((route, method, status), n)| {
                (
                    vec![
                        ("route", route.clone()),
                        ("method", method.to_string()),
                        ("status", status.to_string()),
                    ],
                    *n,
                )
            })
            .collect();
        metrics::counters(
            e,
            "fragnet_manager_requests",
            "HTTP requests by route, method and status.",
            &rows,
        )
    }
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
