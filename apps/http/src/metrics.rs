//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of what the node served,
//! streamed, fetched and holds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::App;

/// Counters of the HTTP side.
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    /// Requests to the stream endpoint.
    pub(crate) stream_requests: AtomicU64,
    /// Body bytes sent by stream responses.
    pub(crate) stream_bytes: AtomicU64,
    /// Stream responses in progress.
    pub(crate) streams_active: AtomicU64,
    /// Responses refused because the response limit was reached.
    pub(crate) refused: AtomicU64,
}

struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.metric(name, kind, help, &[(String::new(), v)]);
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric.
pub(crate) fn render(app: &App) -> String {
    let mut o = Out(String::with_capacity(4096));
    let m = &app.metrics;
    o.one(
        "fragnet_http_stream_requests_total",
        "counter",
        "Requests to /videos/{id}/stream.",
        get(&m.stream_requests),
    );
    o.one(
        "fragnet_http_stream_bytes_total",
        "counter",
        "Verified bytes sent to players.",
        get(&m.stream_bytes),
    );
    o.one(
        "fragnet_http_streams_active",
        "gauge",
        "Stream responses in progress.",
        get(&m.streams_active),
    );
    o.one(
        "fragnet_http_refused_total",
        "counter",
        "Responses refused because stream.max_responses was reached.",
        get(&m.refused),
    );
    if let Some(ctx) = &app.state.serve {
        let s = &ctx.stats;
        o.one(
            "fragnet_serve_bytes_sent_total",
            "counter",
            "Fragment bytes sent to peers.",
            get(&s.bytes_sent),
        );
        o.one(
            "fragnet_serve_requests_total",
            "counter",
            "Peer protocol requests answered, errors included.",
            get(&s.requests),
        );
        o.one(
            "fragnet_serve_errors_total",
            "counter",
            "Peer protocol requests refused with an error.",
            get(&s.errors),
        );
        o.one(
            "fragnet_serve_bare_requests_total",
            "counter",
            "Seed-style bare fragment requests answered with data.",
            get(&s.bare_requests),
        );
    }
    if let Some(d) = &app.state.downloads {
        let s = d.stats();
        o.one(
            "fragnet_download_started_total",
            "counter",
            "Downloads started for players.",
            get(&s.started),
        );
        o.one(
            "fragnet_download_chunks_total",
            "counter",
            "Chunks fetched and verified by downloads.",
            get(&s.chunks),
        );
        o.one(
            "fragnet_download_bytes_total",
            "counter",
            "Bytes fetched and verified by downloads.",
            get(&s.bytes),
        );
        o.one(
            "fragnet_download_fragments_total",
            "counter",
            "Fragments completed by downloads.",
            get(&s.fragments),
        );
        o.one(
            "fragnet_download_peer_failures_total",
            "counter",
            "Peer failures seen by downloads.",
            get(&s.peer_failures),
        );
        o.one(
            "fragnet_download_bytes_from_seeders_total",
            "counter",
            "Bytes fetched from seeders (peers holding the whole video).",
            get(&s.bytes_from_seeders),
        );
        o.one(
            "fragnet_download_bytes_from_peers_total",
            "counter",
            "Bytes fetched from other leechers (the swarm's P2P share).",
            get(&s.bytes_from_peers),
        );
        let running = d.running();
        o.one(
            "fragnet_download_peers",
            "gauge",
            "Peers taking part in the running downloads.",
            running.iter().map(|d| d.peers().len() as u64).sum(),
        );
        o.one(
            "fragnet_downloads_running",
            "gauge",
            "Downloads in progress.",
            running.len() as u64,
        );
        let left: Vec<(String, u64)> = running
            .iter()
            .map(|d| (label(d.video()), d.chunks_left() as u64))
            .collect();
        o.metric(
            "fragnet_download_chunks_left",
            "gauge",
            "Chunks a running download still has to fetch.",
            &left,
        );
    }
    let summary = app.state.store.summary();
    o.one(
        "fragnet_store_videos",
        "gauge",
        "Videos with a manifest in the store.",
        summary.len() as u64,
    );
    let held: Vec<(String, u64)> = summary
        .iter()
        .map(|(v, _, have)| (label(*v), have.len() as u64))
        .collect();
    o.metric(
        "fragnet_store_fragments_complete",
        "gauge",
        "Complete, verified fragments held, per video.",
        &held,
    );
    let total: Vec<(String, u64)> = summary
        .iter()
        .map(|(v, m, _)| (label(*v), m.fragment_count as u64))
        .collect();
    o.metric(
        "fragnet_store_fragments",
        "gauge",
        "Fragments of each video.",
        &total,
    );
    if let Some(lib) = &app.state.library {
        o.one(
            "fragnet_library_used_bytes",
            "gauge",
            "Bytes counted against limits.max_disk (running downloads at full size).",
            lib.used(),
        );
        if let Some(max) = lib.max_disk() {
            o.one(
                "fragnet_library_max_disk_bytes",
                "gauge",
                "The disk quota (limits.max_disk).",
                max,
            );
        }
        let st = lib.stats();
        o.one(
            "fragnet_library_evictions_total",
            "counter",
            "Videos evicted to make room.",
            get(&st.evictions),
        );
        o.one(
            "fragnet_library_removals_total",
            "counter",
            "Videos removed on request.",
            get(&st.removals),
        );
        o.one(
            "fragnet_library_refused_total",
            "counter",
            "Downloads and additions refused for lack of room.",
            get(&st.refused),
        );
    }
    o.0
}

fn label(v: fragnet_core::VideoId) -> String {
    // Ids are hex: nothing to escape.
    format!("{{video=\"{v}\"}}")
}
