//! `GET /metrics` (the classic Prometheus text format, or OpenMetrics on request), and the middleware that counts HTTP requests.
//!
//! Label values are bounded: the route is the matched pattern (`/v1/workflows/{name}/run`), never
//! the raw path, and unknown methods count as `OTHER`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet as NoLabels,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::App;
use super::exposition::Format;
use crate::database::Databases;
use crate::pool::ACQUIRE_BUCKETS;
use crate::pool::PoolStats;

/// The labels of one HTTP request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// The labels of one workflow-run series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    workflow: String,
    outcome: &'static str,
}

/// The labels of one route's latency series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// The host's metrics registry. Cheap to clone; all clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    uptime: Gauge<f64, AtomicU64>,
    runs: Family<RunLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Metrics {
    /// A registry with build info, uptime, the HTTP series, and `databases`' pool figures.
    pub fn new(databases: Databases, host: Option<super::host_metrics::HostCollector>) -> Metrics {
        let mut registry = Registry::with_prefix("trellis");
        registry.register_collector(Box::new(PoolCollector(databases)));
        if let Some(host) = host {
            registry.register_collector(Box::new(host));
        }
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "workflow_runs",
            "Workflow runs, by workflow and outcome (ok, denied, invalid, failed)",
            runs.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", crate::VERSION)]),
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "uptime_seconds",
            "Seconds since the host started serving",
            uptime.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route pattern",
            latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being answered now",
            in_flight.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            in_flight,
            uptime,
            runs,
        }
    }

    /// Counts one run of `workflow` ending in `outcome` (`ok`, `denied`, `invalid`, `failed`).
    pub fn record_run(&self, workflow: &str, outcome: &'static str) {
        self.runs
            .get_or_create(&RunLabels {
                workflow: workflow.to_owned(),
                outcome,
            })
            .inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self, started: Instant) -> Result<String, std::fmt::Error> {
        self.uptime.set(started.elapsed().as_secs_f64());
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Reads every pool's statistics at scrape time.
#[derive(Debug)]
struct PoolCollector(Databases);

/// A series' labels.
type Labels = Vec<(&'static str, String)>;

/// Every pool's statistics at one instant, each with its labels (`pool`, and `tenant` for a
/// database per tenant's pools, of which there are at most `max_tenants`).
struct Snapshot {
    pools: Vec<(Labels, PoolStats)>,
    /// `pool_circuit_open` per tenant pool.
    circuits: Vec<(Labels, f64)>,
}

impl PoolCollector {
    fn snapshot(&self) -> Snapshot {
        let mut pools: Vec<(Labels, PoolStats)> = self
            .0
            .iter()
            .map(|p| {
                let s = p.stats();
                (vec![("pool", s.pool.clone())], s)
            })
            .collect();
        let mut circuits = Vec::new();
        for tenants in self.0.tenanted() {
            for v in tenants.views() {
                let labels = vec![
                    ("pool", tenants.name().to_owned()),
                    ("tenant", v.tenant.clone()),
                ];
                circuits.push((labels.clone(), if v.circuit_open { 1.0 } else { 0.0 }));
                pools.push((labels, v.pool.stats()));
            }
        }
        Snapshot { pools, circuits }
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot();
        encode_gauges(&mut encoder, &snap)?;
        encode_wait(&mut encoder, &snap)?;
        encode_counters(&mut encoder, &snap)
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `labels` and one more label.
fn with(labels: &Labels, key: &'static str, value: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push((key, value.to_owned()));
    labels
}

/// What the pools hold now: connections by state, waiters, health, open circuits.
fn encode_gauges(e: &mut DescriptorEncoder, snap: &Snapshot) -> Result<(), std::fmt::Error> {
    let pools = &snap.pools;
    gauge(
        e,
        "pool_connections",
        "Pool connections now, by state",
        pools
            .iter()
            .flat_map(|(labels, s)| {
                let c = &s.connections;
                // No `total` state: a sum over the states would count it twice.
                [
                    ("active", c.active),
                    ("idle", c.idle),
                    ("opening", c.opening),
                ]
                .map(|(state, n)| (with(labels, "state", state), n as f64))
            })
            .collect(),
    )?;
    gauge(
        e,
        "pool_waiters",
        "Callers waiting for a connection now",
        pools
            .iter()
            .map(|(labels, s)| (labels.clone(), s.acquisition.waiters as f64))
            .collect(),
    )?;
    // Per connection would be a series per connection id, without bound: the pool's lowest
    // score says whether any connection is near recycling.
    gauge(
        e,
        "pool_connection_health_min",
        "Lowest health score (0-100) among the pool's open connections (100 with none)",
        pools
            .iter()
            .map(|(labels, s)| {
                let min = s.health.iter().map(|h| h.score).min().unwrap_or(100);
                (labels.clone(), min as f64)
            })
            .collect(),
    )?;
    gauge(
        e,
        "pool_circuit_open",
        "1 while a tenant's circuit is open: its database kept failing, and callers fail at once",
        snap.circuits.clone(),
    )
}

/// How long callers waited for a connection, as a histogram per pool.
fn encode_wait(e: &mut DescriptorEncoder, snap: &Snapshot) -> Result<(), std::fmt::Error> {
    let mut family = e.encode_descriptor(
        "pool_acquire_wait_seconds",
        "Time callers waited for a connection",
        None,
        MetricType::Histogram,
    )?;
    for (labels, s) in &snap.pools {
        let a = &s.acquisition;
        let buckets: Vec<(f64, u64)> = ACQUIRE_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(a.buckets.iter().copied())
            .collect();
        let count = a.buckets.iter().sum();
        family
            .encode_family(labels)?
            .encode_histogram::<NoLabels>(a.sum_s, count, &buckets, None)?;
    }
    Ok(())
}

/// What the pools have done since they opened.
fn encode_counters(e: &mut DescriptorEncoder, snap: &Snapshot) -> Result<(), std::fmt::Error> {
    let per_pool = |f: &dyn Fn(&PoolStats) -> u64| -> Vec<(Labels, u64)> {
        snap.pools
            .iter()
            .map(|(labels, s)| (labels.clone(), f(s)))
            .collect()
    };
    for (name, help, rows) in [
        (
            "pool_connections_created",
            "Connections opened",
            per_pool(&|s| s.connections.created),
        ),
        (
            "pool_connections_recycled",
            "Connections recycled for age or health",
            per_pool(&|s| s.connections.recycled),
        ),
        (
            "pool_connect_failures",
            "Connection attempts that failed",
            per_pool(&|s| s.connections.failed),
        ),
        (
            "pool_queries",
            "Statements run",
            per_pool(&|s| s.queries.executed),
        ),
        (
            "pool_query_errors",
            "Statements that failed",
            per_pool(&|s| s.queries.errors),
        ),
        (
            "pool_acquire_timeouts",
            "Acquires that gave up after acquire_timeout",
            per_pool(&|s| s.acquisition.timeouts),
        ),
        (
            "pool_leases_reclaimed",
            "Leases taken back after lease_timeout",
            per_pool(&|s| s.leases.reclaimed),
        ),
    ] {
        counter(e, name, help, rows)?;
    }
    counter(
        e,
        "pool_connections_closed",
        "Connections closed, by reason",
        snap.pools
            .iter()
            .flat_map(|(labels, s)| {
                s.connections
                    .closed
                    .iter()
                    .map(move |(reason, n)| (with(labels, "reason", reason), *n))
            })
            .collect(),
    )
}

/// `GET /metrics`: the classic text format, or OpenMetrics when `Accept` asks for it (see
/// [`super::exposition`]).
pub async fn scrape(State(app): State<App>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match app.metrics().render(app.started()) {
        Ok(open) => {
            let body = match format {
                Format::OpenMetrics => open,
                Format::Classic => super::exposition::classic(&open),
            };
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                )],
                body,
            )
                .into_response()
        }
        Err(err) => {
            tracing::error!(%err, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Counts every request by method, matched route and status, and times it.
pub async fn track(State(app): State<App>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let metrics = app.metrics();
    let _in_flight = InFlight::enter(&metrics.in_flight);
    let start = Instant::now();
    let response = next.run(request).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Holds one unit of the in-flight gauge; dropping it (also when the client goes away) releases it.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
