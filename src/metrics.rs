//! What happens in this process, counted for Prometheus: API requests and retries, run
//! durations and lateness, snapshots seen, deliveries, pings ([`global`]). The API
//! client, the runs and the outbox count here; [`crate::serve::metrics`] adds what the
//! database knows and renders the lot.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::config::Settings;

pub(crate) type Labels1 = [(&'static str, String); 1];
pub(crate) type Labels2 = [(&'static str, String); 2];
type Labels3 = [(&'static str, String); 3];
pub(crate) type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Run durations from 10 s to about 3 h (snapshots take minutes).
fn duration_histogram() -> Histogram {
    Histogram::new([
        10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 10800.0,
    ])
}

/// How late a scheduled run started: 50 ms to about 10 min.
fn lateness_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
    ])
}

/// What this process counts as it goes.
pub struct Metrics {
    api_requests: Family<Labels2, Counter>,
    api_retries: Family<Labels1, Counter>,
    run_duration: Family<Labels1, Histogram, fn() -> Histogram>,
    lateness: Family<Labels1, Histogram, fn() -> Histogram>,
    snapshots: Family<Labels3, Gauge>,
    deliveries: Family<Labels2, Counter>,
    pings: Family<Labels2, Counter>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    api_requests: Family::default(),
    api_retries: Family::default(),
    run_duration: Family::new_with_constructor(duration_histogram),
    lateness: Family::new_with_constructor(lateness_histogram),
    snapshots: Family::default(),
    deliveries: Family::default(),
    pings: Family::default(),
});

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

pub(crate) fn l<const N: usize>(pairs: [(&'static str, &str); N]) -> [(&'static str, String); N] {
    pairs.map(|(k, v)| (k, v.to_string()))
}

impl Metrics {
    /// One API request's answer: `ok`, `rate_limited`, `client_error`, `server_error`,
    /// `malformed` or `transport_error`.
    pub fn api_request(&self, endpoint: &str, outcome: &str) {
        let labels = l([("endpoint", endpoint), ("outcome", outcome)]);
        self.api_requests.get_or_create(&labels).inc();
    }

    pub fn api_retry(&self, endpoint: &str) {
        self.api_retries
            .get_or_create(&l([("endpoint", endpoint)]))
            .inc();
    }

    /// A run for a fire time started `late` after it.
    pub fn run_started(&self, job: &str, late: Duration) {
        let h = self.lateness.get_or_create(&l([("job_name", job)]));
        h.observe(late.as_secs_f64());
    }

    pub fn run_finished(&self, job: &str, took: Duration) {
        let h = self.run_duration.get_or_create(&l([("job_name", job)]));
        h.observe(took.as_secs_f64());
    }

    /// The snapshots a run saw on its job's server: the job's own, and the others.
    pub fn snapshots_seen(&self, job: &str, server_id: u64, managed: usize, unmanaged: usize) {
        let server = server_id.to_string();
        for (owner, n) in [("managed", managed), ("unmanaged", unmanaged)] {
            let labels = l([("job_name", job), ("server_id", &server), ("owner", owner)]);
            self.snapshots
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// One delivery attempt on `channel`: `sent` or `failed`.
    pub fn delivery(&self, channel: &str, outcome: &str) {
        let labels = l([("channel", channel), ("outcome", outcome)]);
        self.deliveries.get_or_create(&labels).inc();
    }

    /// One ping: `sent`, `failed` (retried) or `dropped`.
    pub fn ping(&self, kind: &str, outcome: &str) {
        let labels = l([("kind", kind), ("outcome", outcome)]);
        self.pings.get_or_create(&labels).inc();
    }

    /// Counters start at 0 for what `settings` makes possible, so a rate over them is
    /// defined before the first event (a retry, a failed delivery).
    pub(crate) fn init(&self, settings: &Settings) {
        for endpoint in ["list", "create", "delete", "restore"] {
            // Created at 0; the guard is released at once.
            let _ = self.api_retries.get_or_create(&l([("endpoint", endpoint)]));
        }
        let email = settings.email.as_ref().map(|_| "email");
        let channels = email
            .into_iter()
            .chain(settings.notify.iter().map(|n| n.name.as_str()));
        for channel in channels {
            for outcome in ["sent", "failed"] {
                let _ = self
                    .deliveries
                    .get_or_create(&l([("channel", channel), ("outcome", outcome)]));
            }
        }
        let mut kinds = Vec::new();
        if settings.jobs.iter().any(|j| j.ping_url.is_some()) {
            kinds.extend(["start", "success", "fail"]);
        }
        if settings.heartbeat.is_some() {
            kinds.push("heartbeat");
        }
        for kind in kinds {
            for outcome in ["sent", "failed", "dropped"] {
                let _ = self
                    .pings
                    .get_or_create(&l([("kind", kind), ("outcome", outcome)]));
            }
        }
    }

    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "vps_snapshot_api_requests",
            "API requests sent, by endpoint and outcome",
            self.api_requests.clone(),
        );
        r.register(
            "vps_snapshot_api_retries",
            "API requests sent again after a transient failure",
            self.api_retries.clone(),
        );
        r.register_with_unit(
            "vps_snapshot_run_duration",
            "How long snapshot runs took, start to end",
            Unit::Seconds,
            self.run_duration.clone(),
        );
        r.register_with_unit(
            "vps_snapshot_run_lateness",
            "How long after its fire time a scheduled (or caught-up) run started",
            Unit::Seconds,
            self.lateness.clone(),
        );
        r.register(
            "vps_snapshot_server_snapshots",
            "Snapshots on the job's server when its last run ended in this process, by owner (managed: the job's own)",
            self.snapshots.clone(),
        );
        r.register(
            "vps_snapshot_alert_delivery_attempts",
            "Alert delivery attempts, by channel and outcome",
            self.deliveries.clone(),
        );
        r.register(
            "vps_snapshot_pings",
            "Dead-man pings, by kind and outcome (sent, failed and retried, dropped when expired)",
            self.pings.clone(),
        );
    }
}
