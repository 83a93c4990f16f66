//! What operators read: the node's Prometheus recorder (its metrics rendered on demand by
//! [`crate::Node::render_metrics`], for an application that serves them itself) and, with the
//! `http` cargo feature, a bounded HTTP endpoint of its own (`http.rs`).

use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::metrics::names;

/// A recorder for one node, with histogram buckets fit for each histogram.
pub(crate) fn recorder() -> Arc<PrometheusRecorder> {
    let buckets = |builder: PrometheusBuilder, name: &str, values: &[f64]| {
        builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), values)
            .unwrap_or_else(|_| PrometheusBuilder::new())
    };
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let mut builder = PrometheusBuilder::new();
    builder = buckets(builder, names::HANDSHAKE_DURATION, &seconds);
    builder = buckets(builder, names::BACKPRESSURE_WAIT, &seconds);
    builder = buckets(
        builder,
        names::RECORDS_PER_BATCH,
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
    );
    Arc::new(builder.build_recorder())
}

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub(crate) use http::{Endpoint, EndpointOptions, Source};
