//! `GET /metrics` in the Prometheus text format, and the middleware that counts HTTP requests.
//!
//! Label values are bounded: the route is the matched pattern (`/v1/workflows/{name}/run`), never
//! the raw path, and unknown methods count as `OTHER`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::App;

/// The labels of one HTTP request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
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
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Metrics {
    /// A registry with build info, uptime and the HTTP series.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("trellis");
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
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self, started: Instant) -> Result<String, std::fmt::Error> {
        self.uptime.set(started.elapsed().as_secs_f64());
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `GET /metrics`.
pub async fn scrape(State(app): State<App>) -> Response {
    match app.metrics().render(app.started()) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            body,
        )
            .into_response(),
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
