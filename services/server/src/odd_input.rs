//! Odd requests get a clear gRPC status, not a transport error or INTERNAL.
//!
//! - A request body that is not the message its method takes is the
//!   caller's mistake: INVALID_ARGUMENT. tonic answers it with INTERNAL
//!   "failed to decode Protobuf message" (what gRPC's status guide says for
//!   a *response* a client cannot read); on a server it is the request that
//!   is malformed, so that answer, when it comes before any message (a
//!   trailers-only response: every unary and server-streaming method), is
//!   turned into INVALID_ARGUMENT saying so. A client's own decoding of
//!   replies is untouched.
//! - Metadata (the header block) over [`MAX_METADATA_BYTES`] is
//!   RESOURCE_EXHAUSTED naming the limit. HTTP/2 itself takes header blocks
//!   up to [`MAX_HEADER_BLOCK_BYTES`] (`SETTINGS_MAX_HEADER_LIST_SIZE`);
//!   beyond that the connection answers HTTP 431, which clients can only
//!   call UNKNOWN, so the limit that callers meet is this layer's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

/// The most metadata, in HTTP/2's reckoning (each field's name and value
/// plus 32 bytes), a call may carry: a bearer token and a few headers are
/// under 2 KB.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// The header block HTTP/2 accepts at all (`SETTINGS_MAX_HEADER_LIST_SIZE`),
/// above [`MAX_METADATA_BYTES`] so that a call over that meets a gRPC status.
pub const MAX_HEADER_BLOCK_BYTES: u32 = 64 * 1024;

/// What tonic's codec says of a body it could not decode, as the
/// `grpc-message` header carries it (percent-encoded).
const DECODE_FAILURE: &[u8] = b"failed%20to%20decode%20Protobuf%20message";

/// The tower layer of [`OddInput`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OddInputLayer;

impl<S> tower::Layer<S> for OddInputLayer {
    type Service = OddInput<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OddInput { inner }
    }
}

/// Answers oversized metadata and undecodable bodies with clear statuses.
#[derive(Clone, Debug)]
pub struct OddInput<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for OddInput<S>
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
        let metadata = metadata_bytes(request.headers());
        if metadata > MAX_METADATA_BYTES {
            let status = tonic::Status::resource_exhausted(format!(
                "the call's metadata is {metadata} bytes; at most {MAX_METADATA_BYTES} are taken"
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

/// A header block's size as HTTP/2 counts it (RFC 9113 §6.5.2).
fn metadata_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// Turns a trailers-only INTERNAL decode failure into INVALID_ARGUMENT.
fn rewrite(headers: &mut http::HeaderMap) {
    let internal = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"13");
    let undecodable = headers
        .get("grpc-message")
        .is_some_and(|message| message.as_bytes().starts_with(DECODE_FAILURE));
    if internal && undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "the%20request%20body%20is%20not%20a%20valid%20protobuf%20message%20of%20the%20type%20this%20method%20takes",
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &'static str, message: &'static str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static(status));
        headers.insert("grpc-message", HeaderValue::from_static(message));
        headers
    }

    #[test]
    fn an_undecodable_request_is_the_callers_mistake() {
        let status = tonic::Status::internal(
            "failed to decode Protobuf message: invalid wire type value: 7",
        );
        let mut answer = status.into_http::<()>().into_parts().0.headers;
        rewrite(&mut answer);
        let status = tonic::Status::from_header_map(&answer).expect("a status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "the request body is not a valid protobuf message of the type this method takes"
        );
    }

    #[test]
    fn other_internal_errors_are_left_as_they_are() {
        let mut answer = headers("13", "the store failed");
        rewrite(&mut answer);
        assert_eq!(answer["grpc-status"], "13");
        assert_eq!(answer["grpc-message"], "the store failed");
    }
}
