//! `GET /metrics`: what the node served, streamed, fetched, heard and holds, as a
//! `prometheus-client` [`Collector`] read at scrape time (the counters stay where the
//! node keeps them). The player's listener and the admin listener serve the same
//! collector; only the player's adds the `fragnet_http_*` stream counters.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fragnet_core::metrics::{Collector, DescriptorEncoder, counter, counter_f64, gauge, gauges};

use crate::HttpState;

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
    /// Times a stream response had to wait for a chunk not verified here yet.
    pub(crate) stream_stalls: AtomicU64,
    /// Microseconds stream responses spent waiting for missing chunks.
    pub(crate) stream_stall_micros: AtomicU64,
    /// Stream responses that gave up after `stream.chunk_wait_secs`.
    pub(crate) stream_timeouts: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

type VideoLabel = Vec<(&'static str, String)>;

fn video(v: fragnet_core::VideoId) -> VideoLabel {
    vec![("video", v.to_string())]
}

/// A node's metrics.
#[derive(Debug)]
pub struct NodeCollector {
    pub(crate) state: HttpState,
    pub(crate) http: Option<Arc<HttpMetrics>>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let e = &mut e;
        if let Some(m) = &self.http {
            counter(
                e,
                "fragnet_http_stream_requests",
                "Requests to /videos/{id}/stream.",
                get(&m.stream_requests),
            )?;
            counter(
                e,
                "fragnet_http_stream_bytes",
                "Verified bytes sent to players.",
                get(&m.stream_bytes),
            )?;
            gauge(
                e,
                "fragnet_http_streams_active",
                "Stream responses in progress.",
                get(&m.streams_active),
            )?;
            counter(
                e,
                "fragnet_http_stream_stalls",
                "Times a stream response waited for a chunk not yet verified here.",
                get(&m.stream_stalls),
            )?;
            counter_f64(
                e,
                "fragnet_http_stream_stall_seconds",
                "Seconds stream responses spent waiting for missing chunks.",
                get(&m.stream_stall_micros) as f64 / 1e6,
            )?;
            counter(
                e,
                "fragnet_http_stream_timeouts",
                "Stream responses that gave up waiting for a chunk (stream.chunk_wait_secs).",
                get(&m.stream_timeouts),
            )?;
            counter(
                e,
                "fragnet_http_refused",
                "Responses refused because stream.max_responses was reached.",
                get(&m.refused),
            )?;
        }
        if let Some(ctx) = &self.state.serve {
            let s = &ctx.stats;
            counter(
                e,
                "fragnet_serve_bytes_sent",
                "Fragment bytes sent to peers.",
                get(&s.bytes_sent),
            )?;
            counter(
                e,
                "fragnet_serve_requests",
                "Peer protocol requests answered, errors included.",
                get(&s.requests),
            )?;
            counter(
                e,
                "fragnet_serve_errors",
                "Peer protocol requests refused with an error.",
                get(&s.errors),
            )?;
            counter(
                e,
                "fragnet_serve_bare_requests",
                "Seed-style bare fragment requests answered with data.",
                get(&s.bare_requests),
            )?;
        }
        if let Some(d) = &self.state.downloads {
            let s = d.stats();
            counter(
                e,
                "fragnet_download_started",
                "Downloads started.",
                get(&s.started),
            )?;
            counter(
                e,
                "fragnet_download_chunks",
                "Chunks fetched and verified by downloads.",
                get(&s.chunks),
            )?;
            counter(
                e,
                "fragnet_download_bytes",
                "Bytes fetched and verified by downloads.",
                get(&s.bytes),
            )?;
            counter(
                e,
                "fragnet_download_fragments",
                "Fragments completed by downloads.",
                get(&s.fragments),
            )?;
            counter(
                e,
                "fragnet_download_peer_failures",
                "Peer failures seen by downloads.",
                get(&s.peer_failures),
            )?;
            counter(
                e,
                "fragnet_download_bytes_from_seeders",
                "Bytes fetched from seeders (peers holding the whole video).",
                get(&s.bytes_from_seeders),
            )?;
            counter(
                e,
                "fragnet_download_bytes_from_peers",
                "Bytes fetched from other leechers (the swarm's P2P share).",
                get(&s.bytes_from_peers),
            )?;
            let running = d.running();
            gauge(
                e,
                "fragnet_download_peers",
                "Peers taking part in the running downloads.",
                running.iter().map(|d| d.peers().len()).sum::<usize>() as u64,
            )?;
            gauge(
                e,
                "fragnet_downloads_running",
                "Downloads in progress.",
                running.len() as u64,
            )?;
            let left: Vec<(VideoLabel, u64)> = running
                .iter()
                .map(|d| (video(d.video()), d.chunks_left() as u64))
                .collect();
            gauges(
                e,
                "fragnet_download_chunks_left",
                "Chunks a running download still has to fetch.",
                &left,
            )?;
        }
        if let Some(ev) = &self.state.events {
            counter(
                e,
                "fragnet_events_received",
                "Fragment events received from other nodes.",
                get(&ev.events_received),
            )?;
            counter(
                e,
                "fragnet_events_ignored",
                "Messages on the fragment topics that were neither events nor questions.",
                get(&ev.not_events),
            )?;
            counter(
                e,
                "fragnet_events_queries_answered",
                "who_has questions answered.",
                get(&ev.queries_answered),
            )?;
            gauge(
                e,
                "fragnet_events_videos_followed",
                "Videos whose event subjects this node subscribes to.",
                get(&ev.videos_followed),
            )?;
        }
        let summary = self.state.store.summary();
        gauge(
            e,
            "fragnet_store_videos",
            "Videos with a manifest in the store.",
            summary.len() as u64,
        )?;
        let held: Vec<(VideoLabel, u64)> = summary
            .iter()
            .map(|(v, _, have)| (video(*v), have.len() as u64))
            .collect();
        gauges(
            e,
            "fragnet_store_fragments_complete",
            "Complete, verified fragments held, per video.",
            &held,
        )?;
        let total: Vec<(VideoLabel, u64)> = summary
            .iter()
            .map(|(v, m, _)| (video(*v), m.fragment_count as u64))
            .collect();
        gauges(
            e,
            "fragnet_store_fragments",
            "Fragments of each video.",
            &total,
        )?;
        if let Some(lib) = &self.state.library {
            gauge(
                e,
                "fragnet_library_used_bytes",
                "Bytes counted against limits.max_disk (running downloads at full size).",
                lib.used(),
            )?;
            if let Some(max) = lib.max_disk() {
                gauge(
                    e,
                    "fragnet_library_max_disk_bytes",
                    "The disk quota (limits.max_disk).",
                    max,
                )?;
            }
            let st = lib.stats();
            counter(
                e,
                "fragnet_library_evictions",
                "Videos evicted to make room.",
                get(&st.evictions),
            )?;
            counter(
                e,
                "fragnet_library_removals",
                "Videos removed on request.",
                get(&st.removals),
            )?;
            counter(
                e,
                "fragnet_library_refused",
                "Downloads and additions refused for lack of room.",
                get(&st.refused),
            )?;
        }
        Ok(())
    }
}
