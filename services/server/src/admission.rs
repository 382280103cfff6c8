//! Admission: how many calls one server handles at once.
//!
//! Beyond [`Limits::concurrent_calls`] a new call is answered
//! RESOURCE_EXHAUSTED at once instead of queueing behind the others, so an
//! overloaded server stays quick to say so and clients can back off or go
//! to another instance. One connection may hold at most
//! [`Limits::calls_per_connection`] of them (tonic's own per-connection
//! limit, with load shedding), so a single client cannot take them all.
//!
//! A streaming call counts until its handler has returned the stream; the
//! streams themselves are bounded per connection by HTTP/2
//! (`MAX_CONCURRENT_STREAMS`) and per service by the service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::Status;

/// What one server takes on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Calls being handled at once, over all connections.
    pub concurrent_calls: usize,
    /// Calls one connection may have being handled at once.
    pub calls_per_connection: usize,
}

impl Default for Limits {
    /// 1024 calls, 128 per connection: far above what the store's pool
    /// (16 connections) or a registry's CPU can serve at once, so only a
    /// flood meets them, and 128 leaves a client with 64 concurrent callers
    /// on one connection (the benches) room to spare.
    fn default() -> Self {
        Self {
            concurrent_calls: 1024,
            calls_per_connection: 128,
        }
    }
}

/// The tower layer that applies [`Limits::concurrent_calls`].
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl AdmissionLayer {
    pub fn new(limits: Limits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.concurrent_calls)),
            limit: limits.concurrent_calls,
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            permits: Arc::clone(&self.permits),
            limit: self.limit,
        }
    }
}

/// A service that refuses calls beyond the server's limit.
#[derive(Clone, Debug)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            let status = Status::resource_exhausted(format!(
                "this server is handling {} calls, the most it takes at once; retry shortly or call another instance",
                self.limit
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(permit);
            response
        })
    }
}
