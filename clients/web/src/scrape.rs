//! Reading request counters from an instance's Prometheus `/metrics`.
//!
//! An instance that serves metrics says where in its registry labels
//! (`metrics=http://host:port/metrics`). The dashboard fetches that page now
//! and then, adds up the samples of [`REQUESTS_COUNTER`] (over every
//! service, method and code label), and turns two readings into a rate.
//! Health checks are left out ([`PROBE_SERVICES`]): the dashboard itself
//! probes every instance each second, and a rate of its own probes would
//! show an idle instance as busy.
//! Only the text exposition format is read, and only the lines that matter.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The counter every grantmesh gRPC server increments once per call.
pub const REQUESTS_COUNTER: &str = "grpc_server_requests_total";

/// Samples of these gRPC services are probes, not requests: the
/// dashboard's (and any orchestrator's) health checks.
pub const PROBE_SERVICES: [&str; 1] = ["grpc.health.v1.Health"];

/// The registry label that carries an instance's metrics URL.
pub const METRICS_LABEL: &str = "metrics";

/// How long one scrape may take: the dashboard refreshes every few
/// seconds, and a slow instance must not hold its row back.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest metrics page read: a grantmesh server's page is a few kilobytes;
/// a larger one is cut off rather than held in memory.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Fetches metrics pages over plain HTTP.
#[derive(Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Scraper {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Scraper {
    /// The sum of [`REQUESTS_COUNTER`] at `url`, or why it could not be read.
    pub async fn requests_total(&self, url: &str) -> Result<f64, String> {
        if !url.starts_with("http://") {
            return Err(format!("only http:// metrics URLs are read, not {url:?}"));
        }
        let uri: hyper::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let fetch = async {
            let response = self.client.get(uri).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        let page = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer within {SCRAPE_TIMEOUT:?}"))??;
        sum_counter(&page, REQUESTS_COUNTER, &PROBE_SERVICES)
            .ok_or_else(|| format!("the page has no {REQUESTS_COUNTER}"))
    }
}

/// The sum of every sample of `name` in a text-format page, leaving out
/// those whose `service` label is one of `skip_services`, or `None` when
/// there is no sample of `name` at all.
pub fn sum_counter(page: &str, name: &str, skip_services: &[&str]) -> Option<f64> {
    let mut total = None;
    for line in page.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{labels} value [timestamp]` or `name value [timestamp]`.
        let mut skipped = false;
        let after_labels = if let Some(labels) = rest.strip_prefix('{') {
            match end_of_labels(labels) {
                Some(end) => {
                    skipped = skip_services
                        .iter()
                        .any(|s| has_label(&labels[..end], "service", s));
                    &labels[end + 1..]
                }
                None => continue,
            }
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            continue; // another metric whose name starts with this one
        };
        let Some(value) = after_labels.split_whitespace().next() else {
            continue;
        };
        if let Ok(value) = value.parse::<f64>() {
            let sum = total.get_or_insert(0.0);
            if !skipped {
                *sum += value;
            }
        }
    }
    total
}

/// Whether a label set (`a="1",b="2"`, without its braces) has `key="value"`.
/// Values of ours have no quotes or backslashes, so a plain match will do;
/// a label of another name ending in `key` (`subservice=`) does not count.
fn has_label(labels: &str, key: &str, value: &str) -> bool {
    let wanted = format!("{key}=\"{value}\"");
    labels.match_indices(&wanted).any(|(at, _)| {
        labels[..at]
            .trim_end()
            .chars()
            .last()
            .is_none_or(|c| c == ',')
    })
}

/// The index of the `}` that closes a label set (quotes and escapes respected).
fn end_of_labels(labels: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Turns successive readings of a counter into a rate per second.
#[derive(Debug, Default)]
pub struct Rate {
    last: Option<(tokio::time::Instant, f64)>,
}

impl Rate {
    /// Records a reading taken `at`; returns the rate since the previous
    /// one, or `None` on the first reading or after a counter reset.
    pub fn record(&mut self, at: tokio::time::Instant, value: f64) -> Option<f64> {
        let previous = self.last.replace((at, value));
        let (then, before) = previous?;
        let seconds = at.duration_since(then).as_secs_f64();
        if seconds <= 0.0 || value < before {
            return None;
        }
        Some((value - before) / seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP grpc_server_requests_total gRPC calls answered
# TYPE grpc_server_requests_total counter
grpc_server_requests_total{service="grantmesh.v1.College",method="Withdraw",code="OK"} 40
grpc_server_requests_total{service="grantmesh.v1.College",method="Get}Account",code="NotFound"} 2 1700000000000
grpc_server_requests_total_other 1000
grpc_server_requests_total 3
grpc_server_latency_seconds_bucket{le="0.1"} 7
"#;

    #[test]
    fn every_sample_of_the_counter_is_added_up_and_other_metrics_are_not() {
        assert_eq!(sum_counter(PAGE, REQUESTS_COUNTER, &[]), Some(45.0));
        assert_eq!(sum_counter(PAGE, "absent_total", &[]), None);
    }

    #[test]
    fn health_probes_are_not_counted_as_requests() {
        let page = format!(
            "{PAGE}grpc_server_requests_total{{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"OK\"}} 900\n\
             grpc_server_requests_total{{subservice=\"grpc.health.v1.Health\"}} 1\n"
        );
        assert_eq!(
            sum_counter(&page, REQUESTS_COUNTER, &PROBE_SERVICES),
            Some(46.0)
        );
        // An instance answering only probes has a rate of zero, not none.
        let idle = "grpc_server_requests_total{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"OK\"} 12\n";
        assert_eq!(
            sum_counter(idle, REQUESTS_COUNTER, &PROBE_SERVICES),
            Some(0.0)
        );
    }

    #[test]
    fn a_rate_needs_two_readings_and_restarts_after_a_counter_reset() {
        let start = tokio::time::Instant::now();
        let mut rate = Rate::default();
        assert_eq!(rate.record(start, 10.0), None);
        assert_eq!(
            rate.record(start + Duration::from_secs(2), 30.0),
            Some(10.0)
        );
        assert_eq!(rate.record(start + Duration::from_secs(3), 5.0), None);
        assert_eq!(rate.record(start + Duration::from_secs(4), 6.0), Some(1.0));
    }
}
