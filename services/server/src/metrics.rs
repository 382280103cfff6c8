//! Prometheus metrics: every server counts its calls, and exposes them with
//! what its service adds on an HTTP admin port (`GET /metrics`, the text
//! format). docs/metrics.md lists every metric.
//!
//! Each server has its own [`Metrics`] (its own `prometheus::Registry`), so
//! several servers in one process (`grantmesh dev`, the tests) report
//! separately. A service registers its own collectors in
//! [`Metrics::registry`].
//!
//! Labels are bounded whatever clients send: a call to a path that is no
//! method of the built-in descriptor sets, or to a method this server does
//! not serve (answered UNIMPLEMENTED), is counted under `service="unknown",
//! method="unknown"` — even when it was refused for load before reaching a
//! handler — so made-up paths cannot grow the set of series.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
/// The metrics crate, for services that register collectors of their own
/// (one version of it across the workspace, whatever each crate names).
pub use prometheus;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The metrics of one server.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "grpc_server_requests_total",
                "gRPC calls handled, by service, method and status code",
            ),
            &["service", "method", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_request_duration_seconds",
                "Time from a call's arrival to its response headers (the whole call for unary calls)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["service", "method"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "grpc_server_calls_in_flight",
            "Calls being handled now (a stream counts until its handler returns it)",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        Self {
            registry,
            requests,
            duration,
            in_flight,
        }
    }

    /// Where a service registers its own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything, in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// The tower layer that counts every call.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
        }
    }
}

/// Connections the metrics endpoint holds at once: a scraper or two and an
/// operator's curl need a handful. Beyond it a new connection is closed at
/// once, so the admin port can never take the process's file descriptors
/// from gRPC.
pub const MAX_METRICS_CONNECTIONS: usize = 32;

/// Connections the metrics endpoint holds from one address: a scraper
/// needs one, so a stranger holding connections open keeps this many and
/// leaves the rest to Prometheus.
pub const MAX_METRICS_CONNECTIONS_PER_ADDRESS: usize = 4;

/// How long a metrics client may take to send a request's headers, the
/// first or the next on a kept-alive connection: an idle connection is
/// closed after it.
pub const METRICS_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest one metrics connection is kept, whatever it does.
pub const METRICS_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled, over
/// HTTP/1.1 with at most [`MAX_METRICS_CONNECTIONS`] connections
/// ([`MAX_METRICS_CONNECTIONS_PER_ADDRESS`] from one address), each
/// closed when idle for [`METRICS_HEADER_TIMEOUT`] or after
/// [`METRICS_CONNECTION_LIFETIME`].
pub fn spawn_endpoint(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<std::net::SocketAddr> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let addr = listener
        .local_addr()
        .context("failed to read the metrics listener's address")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    metrics.render(),
                )
            }
        }),
    );
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    let per_address = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        std::net::IpAddr,
        usize,
    >::new()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(METRICS_HEADER_TIMEOUT);
    tokio::spawn(async move {
        let mut refused = 0u64;
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%addr, error = %err, "the metrics endpoint failed to accept; backing off");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let from_peer = {
                let mut held = per_address.lock().expect("metrics connections poisoned");
                let from_peer = held.entry(peer.ip()).or_insert(0);
                if *from_peer < MAX_METRICS_CONNECTIONS_PER_ADDRESS {
                    *from_peer += 1;
                    true
                } else {
                    false
                }
            };
            let permit = if from_peer {
                std::sync::Arc::clone(&connections).try_acquire_owned().ok()
            } else {
                None
            };
            let give_back = {
                let per_address = std::sync::Arc::clone(&per_address);
                let ip = peer.ip();
                move || {
                    let mut held = per_address.lock().expect("metrics connections poisoned");
                    if let Some(count) = held.get_mut(&ip) {
                        *count -= 1;
                        if *count == 0 {
                            held.remove(&ip);
                        }
                    }
                }
            };
            let Some(permit) = permit else {
                if from_peer {
                    give_back();
                }
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%addr, %peer, refused, "the metrics endpoint holds {MAX_METRICS_CONNECTIONS} connections ({MAX_METRICS_CONNECTIONS_PER_ADDRESS} per address); closing new ones");
                }
                drop(stream);
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::timeout(METRICS_CONNECTION_LIFETIME, connection) => {}
                    () = shutdown.cancelled() => {}
                }
                drop(permit);
                give_back();
            });
        }
    });
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(addr)
}

/// Counts calls for [`Metrics`].
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls are counted.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    metrics: Metrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        let metrics = self.metrics.clone();
        metrics.in_flight.inc();
        let started = Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            metrics.in_flight.dec();
            let code = match &response {
                Ok(response) => grpc_code(response.headers()),
                Err(_) => tonic::Code::Internal,
            };
            let (service, method) = if code == tonic::Code::Unimplemented {
                ("unknown".to_owned(), "unknown".to_owned())
            } else {
                (service, method)
            };
            metrics
                .duration
                .with_label_values(&[&service, &method])
                .observe(started.elapsed().as_secs_f64());
            metrics
                .requests
                .with_label_values(&[&service, &method, &format!("{code:?}")])
                .inc();
            response
        })
    }
}

/// The labels of a call to `path`: its service and method if some grantmesh,
/// health or reflection service has that method, else `unknown` for both,
/// whether or not the call reaches a handler (a call refused for load never
/// does, and must not add a series either).
fn labels(path: &str) -> (String, String) {
    if known_methods().contains(path) {
        split_path(path)
    } else {
        ("unknown".to_owned(), "unknown".to_owned())
    }
}

/// Every `/package.Service/Method` path of the descriptor sets a server
/// serves from, read once.
fn known_methods() -> &'static std::collections::HashSet<String> {
    static KNOWN: std::sync::OnceLock<std::collections::HashSet<String>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message as _;
        [
            grantmesh_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .flat_map(|encoded| {
            prost_types::FileDescriptorSet::decode(encoded)
                .expect("the built-in descriptor sets decode")
                .file
        })
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service.into_iter().flat_map(move |service| {
                let prefix = format!("/{package}.{}/", service.name());
                service
                    .method
                    .into_iter()
                    .map(move |method| format!("{prefix}{}", method.name()))
            })
        })
        .collect()
    })
}

/// `/grantmesh.v1.College/Withdraw` → (`grantmesh.v1.College`, `Withdraw`).
fn split_path(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    (service.to_owned(), method.to_owned())
}

/// The status of a call whose handler has answered: a refusal travels in
/// the response headers (trailers-only); a call that succeeded has none
/// there, and its OK comes in the trailers.
fn grpc_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_splits_into_service_and_method() {
        assert_eq!(
            split_path("/grantmesh.v1.College/Withdraw"),
            ("grantmesh.v1.College".into(), "Withdraw".into())
        );
        assert_eq!(split_path("/"), (String::new(), String::new()));
    }

    #[test]
    fn only_methods_some_service_has_get_their_own_labels() {
        assert_eq!(
            labels("/grantmesh.v1.College/Withdraw"),
            ("grantmesh.v1.College".into(), "Withdraw".into())
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health".into(), "Check".into())
        );
        let unknown = ("unknown".to_owned(), "unknown".to_owned());
        assert_eq!(labels("/grantmesh.v1.College/MadeUp"), unknown);
        assert_eq!(labels(&format!("/{}/x", "a".repeat(2048))), unknown);
        assert_eq!(labels("/"), unknown);
    }

    #[test]
    fn a_refusal_in_the_headers_is_its_code_and_none_is_ok() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_code(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(grpc_code(&headers), tonic::Code::InvalidArgument);
    }
}
