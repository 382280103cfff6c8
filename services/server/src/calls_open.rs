//! Counts each call against the connection it came on until its response
//! ends (a stream, until it closes), so that the accept loop can close a
//! connection that has held no call for its idle timeout
//! ([`grantmesh_discovery::activity`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use grantmesh_discovery::activity::{Activities, CallOpen};

/// The tower layer of [`CallsOpen`].
#[derive(Clone, Debug)]
pub struct CallsOpenLayer {
    activities: Arc<Activities>,
}

impl CallsOpenLayer {
    pub fn new(activities: Arc<Activities>) -> Self {
        Self { activities }
    }
}

impl<S> tower::Layer<S> for CallsOpenLayer {
    type Service = CallsOpen<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallsOpen {
            inner,
            activities: Arc::clone(&self.activities),
        }
    }
}

/// Counts every call, health checks included, against its connection.
#[derive(Clone, Debug)]
pub struct CallsOpen<S> {
    inner: S,
    activities: Arc<Activities>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CallsOpen<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let open =
            crate::peers::remote_addr(&request).and_then(|peer| self.activities.call_started(peer));
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(match open {
                Some(open) => {
                    response.map(|body| tonic::body::Body::new(Counted { body, _open: open }))
                }
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted until it ends or is dropped.
struct Counted {
    body: tonic::body::Body,
    _open: CallOpen,
}

impl http_body::Body for Counted {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
