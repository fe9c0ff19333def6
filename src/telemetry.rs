//! Metrics: names and descriptions in one place, the Prometheus recorder, and a
//! bridge that puts foyer's own metrics (dropped disk writes among them) into it.

use std::borrow::Cow;
use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use mixtrics::metrics::{
    BoxedCounter, BoxedCounterVec, BoxedGauge, BoxedGaugeVec, BoxedHistogram, BoxedHistogramVec, CounterOps,
    CounterVecOps, GaugeOps, GaugeVecOps, HistogramOps, HistogramVecOps, RegistryOps,
};

pub const REQUESTS: &str = "s3accel_requests_total";
pub const RESPONSE_BYTES: &str = "s3accel_response_bytes_total";
pub const ORIGIN_REQUESTS: &str = "s3accel_origin_requests_total";
pub const ORIGIN_ERRORS: &str = "s3accel_origin_errors_total";
pub const ORIGIN_SECONDS: &str = "s3accel_origin_response_seconds";
pub const ORIGIN_FILL_BYTES: &str = "s3accel_origin_fill_bytes_total";
pub const FILLS_IN_FLIGHT: &str = "s3accel_fills_in_flight";
pub const FILLS_WAITING: &str = "s3accel_fills_waiting";
pub const FILL_WAIT_SECONDS: &str = "s3accel_fill_wait_seconds";
pub const ORIGIN_BUDGET_FILLS: &str = "s3accel_origin_budget_fills";
pub const ORIGIN_BUDGET_RATE: &str = "s3accel_origin_budget_bytes_per_second";
pub const CHUNK_LOOKUPS: &str = "s3accel_chunk_lookups_total";
pub const PROBES: &str = "s3accel_probes_total";
pub const PROBE_SECONDS: &str = "s3accel_probe_seconds";
pub const CACHE_USAGE: &str = "s3accel_cache_usage_bytes";
pub const CACHE_CAPACITY: &str = "s3accel_cache_capacity_bytes";
pub const DISK_DEGRADED: &str = "s3accel_disk_degraded";
/// Pins in force on this node.
pub const PINS: &str = "s3accel_pins";
/// Bytes and chunks in the pinned store.
pub const PINNED_BYTES: &str = "s3accel_pinned_bytes";
pub const PINNED_CHUNKS: &str = "s3accel_pinned_chunks";
/// Pins refused (`why`: full, lease, empty, ...), and pinned chunks not kept
/// (`why`: full, restart).
pub const PIN_REFUSALS: &str = "s3accel_pin_refusals_total";
/// Pinned bytes dropped at a restart because they no longer fit.
pub const PINNED_DROPPED_BYTES: &str = "s3accel_pinned_dropped_bytes_total";
pub const PEER_REQUESTS: &str = "s3accel_peer_requests_total";
pub const PEER_BYTES: &str = "s3accel_peer_bytes_total";
pub const PEER_MEMBERS: &str = "s3accel_peer_members";
pub const PEER_RING: &str = "s3accel_peer_ring_fingerprint";
pub const PEER_EJECTIONS: &str = "s3accel_peer_ejections_total";
pub const HIT_AUTHORIZATIONS: &str = "s3accel_hit_authorizations_total";
pub const GRANTS: &str = "s3accel_grants";
pub const GRANT_DROPS: &str = "s3accel_grant_drops";
pub const GRANT_FLUSHES: &str = "s3accel_grant_flushes_total";
pub const LOCAL_REFUSALS: &str = "s3accel_local_refusals_total";
pub const ORIGIN_CONNECTIONS: &str = "s3accel_origin_connections";
pub const BUDGET_WAITS: &str = "s3accel_read_ahead_waits_total";
pub const CLIENT_CUTS: &str = "s3accel_client_cuts_total";
pub const PEER_SECONDS: &str = "s3accel_peer_response_seconds";
pub const PEER_FALLBACKS: &str = "s3accel_peer_fallbacks_total";
pub const CREDENTIAL_REFRESHES: &str = "s3accel_credential_refreshes_total";
pub const CREDENTIAL_FORCED_REFRESHES: &str = "s3accel_credential_forced_refreshes_total";
pub const CREDENTIAL_EXPIRY: &str = "s3accel_credential_expiry_seconds";
pub const CREDENTIAL_REJECTIONS: &str = "s3accel_credential_rejections_total";
pub const CORRUPT_CHUNKS: &str = "s3accel_corrupt_chunks_total";
pub const PEER_TLS: &str = "s3accel_peer_tls";
pub const OBJECT_CHECKS: &str = "s3accel_object_checks_total";

/// An object version whose chunks were all seen here, checked against its
/// full-object CRC: `ok`, or `mismatch` (every chunk of it dropped).
pub fn object_checked(outcome: &'static str) {
    metrics::counter!(OBJECT_CHECKS, "outcome" => outcome).increment(1);
}

/// A response that waited for read-ahead memory, and how that ended.
pub fn budget_waited(outcome: &'static str) {
    metrics::counter!(BUDGET_WAITS, "outcome" => outcome).increment(1);
}

/// A client connection the server cut, and why.
pub fn client_cut(reason: &'static str) {
    metrics::counter!(CLIENT_CUTS, "reason" => reason).increment(1);
}

/// A chunk request between peers: `role` is `reader` (asked) or `owner` (answered).
pub fn peer_request(role: &'static str, outcome: &'static str) {
    metrics::counter!(PEER_REQUESTS, "role" => role, "outcome" => outcome).increment(1);
}

/// A hit served, by what authorized it: `origin` (a probe), `presigned` or
/// `anonymous` (a live grant).
pub fn hit_authorized(path: &'static str) {
    metrics::counter!(HIT_AUTHORIZATIONS, "path" => path).increment(1);
}

/// A chunk this node does not own, filled here from the origin because its owner
/// (and the next in line) could not serve it: `refused` (an owner answered and could
/// not fill), `failed` (unreachable or broken), `ejected` (left alone after failing).
pub fn peer_fallback(reason: &'static str) {
    metrics::counter!(PEER_FALLBACKS, "reason" => reason).increment(1);
}

/// Chunk bytes received from (`in`) or sent to (`out`) peers.
pub fn peer_bytes(direction: &'static str, bytes: u64) {
    metrics::counter!(PEER_BYTES, "direction" => direction).increment(bytes);
}

/// The region as this node sees it: how many members, and a fingerprint of the
/// list (nodes that show different fingerprints place keys differently).
pub fn peer_members(count: usize, fingerprint: u64) {
    metrics::gauge!(PEER_MEMBERS).set(count as f64);
    // The low 52 bits fit a float exactly.
    metrics::gauge!(PEER_RING).set((fingerprint & ((1 << 52) - 1)) as f64);
}

/// The process-wide Prometheus recorder (installed once, however many proxies a
/// test process starts).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&latency)
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    describe_gauge!(PINS, "Pins in force on this node (leases not yet ended).");
    describe_gauge!(
        PINNED_BYTES,
        Unit::Bytes,
        "Bytes of pinned chunks this node keeps (out of the tiers' eviction)."
    );
    describe_gauge!(PINNED_CHUNKS, "Pinned chunks this node keeps.");
    describe_counter!(
        PIN_REFUSALS,
        "Pins refused, and pinned chunks not kept, by why (full, lease, empty, sync, restart)."
    );
    describe_counter!(
        PINNED_DROPPED_BYTES,
        Unit::Bytes,
        "Pinned bytes dropped at a restart because cache.pinned no longer holds them."
    );
    describe_gauge!(
        PEER_TLS,
        "1 when the peer port runs mutual TLS ([peers.tls]); 0 when the peer network is unprotected (plain HTTP)."
    );
    describe_counter!(
        CORRUPT_CHUNKS,
        "Chunks whose bytes did not match their CRC when read back, by where they were found (disk, peer); never served."
    );
    describe_counter!(
        OBJECT_CHECKS,
        "Object versions checked whole against their full-object CRC once every chunk was seen, by outcome (ok, mismatch: dropped)."
    );
    describe_counter!(
        CREDENTIAL_REFRESHES,
        "Attempts to get the fill credentials, by source and outcome (ok: new keys, unchanged, error)."
    );
    describe_counter!(
        CREDENTIAL_FORCED_REFRESHES,
        "Refreshes forced by an origin refusing the fill credentials."
    );
    describe_gauge!(
        CREDENTIAL_EXPIRY,
        Unit::Seconds,
        "Seconds until the fill credentials expire (negative: expired)."
    );
    describe_counter!(
        CREDENTIAL_REJECTIONS,
        "Fills the origin refused for their credentials, by S3 error code."
    );
    describe_counter!(
        PEER_REQUESTS,
        "Chunk requests between peers, by role (reader, owner) and outcome."
    );
    describe_counter!(
        PEER_BYTES,
        Unit::Bytes,
        "Chunk bytes received from (in) or sent to (out) peers."
    );
    describe_counter!(
        HIT_AUTHORIZATIONS,
        "Hits served, by what authorized them: origin (a probe), presigned or anonymous (a live grant)."
    );
    describe_gauge!(GRANTS, "Grants held (origin decisions served without asking again).");
    describe_gauge!(
        GRANT_DROPS,
        "Buckets and objects whose grants were dropped by an origin 403 or 404 within the grant TTL (bounded)."
    );
    describe_counter!(
        GRANT_FLUSHES,
        "Times every grant was dropped (SIGHUP, POST /admin/grants/flush)."
    );
    describe_counter!(
        BUDGET_WAITS,
        "Responses that found no room in cache.read_ahead_memory in time (outcome=busy: answered 503 SlowDown)."
    );
    describe_counter!(
        CLIENT_CUTS,
        "Client connections cut by the server, by reason: send_timeout (no bytes taken), idle (no request in flight)."
    );
    describe_gauge!(
        ORIGIN_CONNECTIONS,
        "Connections open to the region's origin, idle or busy (all regions together at most origin_client.max_connections)."
    );
    describe_counter!(
        LOCAL_REFUSALS,
        "Requests refused before the origin or the cache, by reason: method, uri, key, argument, host, body, expired, malformed, signature."
    );
    describe_histogram!(
        PEER_SECONDS,
        Unit::Seconds,
        "Time to a peer's answer to a chunk request (its head), by outcome."
    );
    describe_counter!(
        PEER_FALLBACKS,
        "Chunks another node owns, filled here from the origin, by reason (refused, failed, ejected)."
    );
    describe_counter!(PEER_EJECTIONS, "Peers left alone for a while after a failed request.");
    describe_gauge!(
        PEER_MEMBERS,
        "Members of the region as this node sees them, itself included."
    );
    describe_gauge!(
        PEER_RING,
        "A fingerprint of the member list: nodes that disagree place keys differently."
    );
    describe_counter!(
        REQUESTS,
        "Client requests by region, operation, status and cache outcome (hit, miss, origin, bypass; reason=...)."
    );
    describe_counter!(
        RESPONSE_BYTES,
        Unit::Bytes,
        "Body bytes sent to clients, by where they came from: memory, disk or origin."
    );
    describe_counter!(
        ORIGIN_REQUESTS,
        "Requests to origins by region, kind (probe, fill, relay, readiness) and status."
    );
    describe_counter!(
        ORIGIN_ERRORS,
        "Origin requests that got no response head, by region, kind and error (unreachable, timeout, protocol)."
    );
    describe_histogram!(
        ORIGIN_SECONDS,
        Unit::Seconds,
        "Time to an origin's response head, by region and kind."
    );
    describe_counter!(
        ORIGIN_FILL_BYTES,
        Unit::Bytes,
        "Body bytes fetched from origins by chunk fills, by region."
    );
    describe_gauge!(FILLS_IN_FLIGHT, "Chunk fills downloading from an origin now.");
    describe_gauge!(
        FILLS_WAITING,
        "Chunk fills waiting for their turn in the origin budget, by priority (client, read-ahead, background)."
    );
    describe_histogram!(
        FILL_WAIT_SECONDS,
        Unit::Seconds,
        "How long chunk fills waited for their turn in the origin budget, by priority."
    );
    describe_gauge!(
        ORIGIN_BUDGET_FILLS,
        "Fills this node may send the origin at once now (its bound, or its share of the region's)."
    );
    describe_gauge!(
        ORIGIN_BUDGET_RATE,
        Unit::Bytes,
        "Bytes a second this node's fills may take from the origin now (0: unbounded)."
    );
    describe_counter!(
        CHUNK_LOOKUPS,
        "Chunk lookups by result: memory, disk, fill (this lookup filled it) or coalesced (waited for another's fill)."
    );
    describe_counter!(
        PROBES,
        "Authorization probes by outcome (not_modified, same_etag, cold, changed, refused)."
    );
    describe_histogram!(
        PROBE_SECONDS,
        Unit::Seconds,
        "Time to the origin's answer to an authorization probe."
    );
    describe_gauge!(CACHE_USAGE, Unit::Bytes, "Bytes held by a cache tier.");
    describe_gauge!(CACHE_CAPACITY, Unit::Bytes, "Configured size of a cache tier.");
}

/// The log filter: `RUST_LOG` (default `info`), except that the signing crates are
/// always silent: at trace level they print the requests they sign, headers and all.
pub fn log_filter(directives: Option<&str>) -> tracing_subscriber::EnvFilter {
    let base = directives.filter(|d| !d.trim().is_empty()).unwrap_or("info");
    let filter =
        tracing_subscriber::EnvFilter::try_new(base).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    [
        "aws_sigv4=off",
        "aws_smithy_runtime_api=off",
        "aws_credential_types=off",
    ]
    .into_iter()
    .fold(filter, |filter, directive| {
        filter.add_directive(directive.parse().expect("static directive"))
    })
}

/// foyer's metrics registry, writing into the `metrics` crate's recorder.
#[derive(Debug, Default)]
pub struct FoyerMetrics;

#[derive(Debug)]
struct Family {
    name: Cow<'static, str>,
    label_names: &'static [&'static str],
}

impl Family {
    fn labels(&self, values: &[Cow<'static, str>]) -> Vec<metrics::Label> {
        self.label_names
            .iter()
            .zip(values)
            .map(|(name, value)| metrics::Label::new(*name, value.clone()))
            .collect()
    }
}

struct Counter(metrics::Counter);
struct Gauge(metrics::Gauge);
struct Histogram(metrics::Histogram);

macro_rules! opaque_debug {
    ($($ty:ty),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($ty))
            }
        }
    )*};
}
opaque_debug!(Counter, Gauge, Histogram);

impl CounterOps for Counter {
    fn increase(&self, val: u64) {
        self.0.increment(val);
    }
}

impl GaugeOps for Gauge {
    fn increase(&self, val: u64) {
        self.0.increment(val as f64);
    }
    fn decrease(&self, val: u64) {
        self.0.decrement(val as f64);
    }
    fn absolute(&self, val: u64) {
        self.0.set(val as f64);
    }
}

impl HistogramOps for Histogram {
    fn record(&self, val: f64) {
        self.0.record(val);
    }
}

impl CounterVecOps for Family {
    fn counter(&self, labels: &[Cow<'static, str>]) -> BoxedCounter {
        Box::new(Counter(metrics::counter!(self.name.to_string(), self.labels(labels))))
    }
}

impl GaugeVecOps for Family {
    fn gauge(&self, labels: &[Cow<'static, str>]) -> BoxedGauge {
        Box::new(Gauge(metrics::gauge!(self.name.to_string(), self.labels(labels))))
    }
}

impl HistogramVecOps for Family {
    fn histogram(&self, labels: &[Cow<'static, str>]) -> BoxedHistogram {
        Box::new(Histogram(metrics::histogram!(
            self.name.to_string(),
            self.labels(labels)
        )))
    }
}

impl RegistryOps for FoyerMetrics {
    fn register_counter_vec(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedCounterVec {
        describe_counter!(name.to_string(), desc.to_string());
        Box::new(Family { name, label_names })
    }

    fn register_gauge_vec(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedGaugeVec {
        describe_gauge!(name.to_string(), desc.to_string());
        Box::new(Family { name, label_names })
    }

    fn register_histogram_vec(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> BoxedHistogramVec {
        describe_histogram!(name.to_string(), desc.to_string());
        Box::new(Family { name, label_names })
    }

    fn register_histogram_vec_with_buckets(
        &self,
        name: Cow<'static, str>,
        desc: Cow<'static, str>,
        label_names: &'static [&'static str],
        _buckets: Vec<f64>,
    ) -> BoxedHistogramVec {
        self.register_histogram_vec(name, desc, label_names)
    }
}
