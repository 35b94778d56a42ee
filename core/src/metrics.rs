//! Metrics in the Prometheus text format (0.0.4), through the maintained
//! `prometheus-client` crate: every service (the broker, a peer's HTTP and admin
//! listeners, the manager) keeps its counters where they are and registers a
//! [`Collector`] that reads them at scrape time; [`render`] encodes a [`Registry`] with
//! the crate's own encoder.
//!
//! Names are given without the `_total` suffix, which the encoder adds to counters:
//! `counter(e, "fragnet_broker_published", ..)` exposes `fragnet_broker_published_total`.

use std::fmt;

pub use prometheus_client;
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One counter without labels.
pub fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let m = ConstCounter::new(value);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// One counter without labels whose value has a fraction (seconds).
pub fn counter_f64(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let m = ConstCounter::new(value);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// One gauge without labels (a count: written as an integer).
pub fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let m = ConstGauge::new(value);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// One gauge without labels whose value has a fraction (seconds, ratios).
pub fn gauge_f64(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let m = ConstGauge::new(value);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// A gauge with one sample per label set (none at all when `rows` is empty: the
/// family is still described).
pub fn gauges<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter with one sample per label set.
pub fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A registry holding these collectors.
pub fn registry(collectors: Vec<Box<dyn Collector>>) -> Registry {
    let mut r = Registry::default();
    for c in collectors {
        r.register_collector(c);
    }
    r
}

/// The registry's metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail; a collector's own error would leave the output
    // cut short, which a scraper reports.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!("encoding metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
            counter(&mut e, "x_events", "Events seen.", 3)?;
            gauge(&mut e, "x_open", "Open now.", 2)?;
            gauge_f64(&mut e, "x_uptime_seconds", "Uptime.", 1.5)?;
            gauges(
                &mut e,
                "x_left",
                "Left per video.",
                &[(vec![("video", "ab".to_string())], 5)],
            )?;
            counters(
                &mut e,
                "x_requests",
                "Requests.",
                &[(vec![("route", "/a\"b".to_string())], 1)],
            )
        }
    }

    #[test]
    fn renders_the_text_format() {
        let text = render(&registry(vec![Box::new(Fixed)]));
        assert_eq!(
            text,
            "# HELP x_events_total Events seen.\n# TYPE x_events_total counter\nx_events_total 3\n\
             # HELP x_open Open now.\n# TYPE x_open gauge\nx_open 2\n\
             # HELP x_uptime_seconds Uptime.\n# TYPE x_uptime_seconds gauge\nx_uptime_seconds 1.5\n\
             # HELP x_left Left per video.\n# TYPE x_left gauge\nx_left{video=\"ab\"} 5\n\
             # HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{route=\"/a\\\"b\"} 1\n"
        );
    }
}
