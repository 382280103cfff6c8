//! Admission: how many calls one server handles at once, and from whom.
//!
//! Beyond [`Limits::concurrent_calls`] a new call is answered
//! RESOURCE_EXHAUSTED at once instead of queueing behind the others, so an
//! overloaded server stays quick to say so and clients can back off or go
//! to another instance. No single caller can take that capacity from the
//! others:
//!
//! - one *peer* — a mesh member's client certificate, or for a caller
//!   without one the IP address it calls from — has at most
//!   [`Limits::calls_per_peer`] calls handled at once;
//! - [`Limits::reserved_for_members`] of the calls are kept for mesh
//!   members (a verified client certificate), so however many anonymous
//!   addresses call at once, registration, renewal, agency → college calls
//!   and balancers still get in;
//! - one connection may hold at most [`Limits::calls_per_connection`] of
//!   them (tonic's own per-connection limit, with load shedding);
//! - health checks (`grpc.health.v1.Health`) are outside admission: an
//!   orchestrator asking whether the server is alive is never told it is
//!   busy. They are cheap and bounded per connection by HTTP/2.
//!
//! A streaming call counts until its handler has returned the stream; the
//! streams themselves are bounded per connection by HTTP/2
//! (`MAX_CONCURRENT_STREAMS`) and per service by the service.
//!
//! Each admitted call carries a [`Caller`] in its extensions, so a handler
//! can tell a member from an anonymous caller (`Ping` holds a call longer
//! only for members).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use grantmesh_discovery::incoming::ConnectionLimits;
use tonic::Status;

pub use crate::peers::Peer;
use crate::peers::{Full, Share, Shares, Split};

/// The path prefix of the health service, which admission lets through.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// What one server takes on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Calls being handled at once, over all connections.
    pub concurrent_calls: usize,
    /// Calls one connection may have being handled at once.
    pub calls_per_connection: usize,
    /// Calls one peer (a client certificate, or an address without one)
    /// may have being handled at once, over all its connections.
    pub calls_per_peer: usize,
    /// Of [`Self::concurrent_calls`], how many only mesh members may take.
    pub reserved_for_members: usize,
    /// The longest `Ping` delay a caller without a mesh certificate may ask
    /// for; members may ask for up to [`MAX_PING_DELAY`].
    pub anonymous_ping_delay: Duration,
    /// How many connections it holds, and from whom.
    pub connections: ConnectionLimits,
}

/// The longest `Ping` delay anyone may ask for.
pub const MAX_PING_DELAY: Duration = Duration::from_secs(30);

impl Default for Limits {
    /// 1024 calls, 128 per connection and 256 per peer: far above what the
    /// store's pool (16 connections) or a registry's CPU can serve at once,
    /// so only a flood meets them, and 256 leaves a client with 64
    /// concurrent callers (the benches), or a simulation of hundreds of
    /// researchers on one machine, room to spare. A quarter (256) is kept
    /// for mesh members: a registry's few hundred instances renew one call
    /// each per beat. Anonymous pings hold a call for at most a second.
    fn default() -> Self {
        Self {
            concurrent_calls: 1024,
            calls_per_connection: 128,
            calls_per_peer: 256,
            reserved_for_members: 256,
            anonymous_ping_delay: Duration::from_secs(1),
            connections: ConnectionLimits::default(),
        }
    }
}

impl Limits {
    /// What is wrong with these limits, if anything, naming the flags.
    pub fn check(&self) -> Result<(), String> {
        if self.concurrent_calls == 0 || self.calls_per_connection == 0 || self.calls_per_peer == 0
        {
            return Err(
                "--max-calls, --max-calls-per-connection and --max-calls-per-peer must be at least 1"
                    .into(),
            );
        }
        if self.reserved_for_members >= self.concurrent_calls {
            return Err(format!(
                "--calls-reserved-for-members ({}) must be less than --max-calls ({})",
                self.reserved_for_members, self.concurrent_calls
            ));
        }
        let connections = &self.connections;
        if connections.total == 0 || connections.per_address == 0 {
            return Err(
                "--max-connections and --max-connections-per-address must be at least 1".into(),
            );
        }
        if connections.idle_timeout.is_zero() {
            return Err("--idle-connection-timeout must be more than zero".into());
        }
        if connections.reserved_for_members >= connections.total {
            return Err(format!(
                "--connections-reserved-for-members ({}) must be less than --max-connections ({})",
                connections.reserved_for_members, connections.total
            ));
        }
        if self.anonymous_ping_delay > MAX_PING_DELAY {
            return Err(format!(
                "--max-anonymous-ping-delay must be at most {}",
                humantime::format_duration(MAX_PING_DELAY)
            ));
        }
        Ok(())
    }
}

/// Who an admitted call is from, in its request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The peer it counts against (a member when it presented a verified
    /// mesh client certificate, [`Peer::is_member`]).
    pub peer: Peer,
    /// The longest `Ping` delay this caller may ask for.
    pub max_ping_delay: Duration,
}

impl Caller {
    /// The caller of `request`, as admission saw it; `None` for a request
    /// that did not come through admission (a handler called directly).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Caller> {
        request.extensions().get::<Caller>().copied()
    }
}

/// The calls being handled, shared out by caller.
#[derive(Debug)]
struct Counts {
    limits: Limits,
    shares: Arc<Shares>,
}

impl Counts {
    /// Admits a call from `peer`, or says why not.
    fn admit(&self, peer: Peer) -> Result<Share, Status> {
        let limits = &self.limits;
        self.shares.take(peer).map_err(|full| {
            Status::resource_exhausted(match full {
                Full::Total => format!(
                    "this server is handling {} calls, the most it takes at once; retry shortly or call another instance",
                    limits.concurrent_calls
                ),
                Full::Anonymous => format!(
                    "this server is handling {} calls from callers without a mesh certificate, the most it takes from them at once; retry shortly or call another instance",
                    limits.concurrent_calls - limits.reserved_for_members
                ),
                Full::Peer => format!(
                    "this server is handling {} calls from {}, the most it takes from one caller at once; wait for some to finish",
                    limits.calls_per_peer,
                    peer.describe()
                ),
            })
        })
    }
}

/// The tower layer that applies [`Limits`] to every call but health checks.
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    counts: Arc<Counts>,
}

impl AdmissionLayer {
    pub fn new(limits: Limits) -> Self {
        Self {
            counts: Arc::new(Counts {
                limits,
                shares: Shares::new(Split {
                    total: limits.concurrent_calls,
                    per_peer: limits.calls_per_peer,
                    reserved_for_members: limits.reserved_for_members,
                }),
            }),
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            counts: Arc::clone(&self.counts),
        }
    }
}

/// A service that refuses calls beyond the server's limits.
#[derive(Clone, Debug)]
pub struct Admission<S> {
    inner: S,
    counts: Arc<Counts>,
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH) {
            return Box::pin(self.inner.call(request));
        }
        let peer = Peer::of(&request);
        let admitted = match self.counts.admit(peer) {
            Ok(admitted) => admitted,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        request.extensions_mut().insert(Caller {
            peer,
            max_ping_delay: if peer.is_member() {
                MAX_PING_DELAY
            } else {
                self.counts.limits.anonymous_ping_delay
            },
        });
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(admitted);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn small() -> Limits {
        Limits {
            concurrent_calls: 6,
            calls_per_connection: 6,
            calls_per_peer: 2,
            reserved_for_members: 2,
            anonymous_ping_delay: Duration::from_secs(1),
            connections: ConnectionLimits::default(),
        }
    }

    #[test]
    fn each_refusal_names_the_limit_it_met() {
        let counts = AdmissionLayer::new(small()).counts;
        let address = Peer::Address(IpAddr::from([127, 0, 0, 1]));
        let held: Vec<_> = (0..2).map(|_| counts.admit(address).unwrap()).collect();
        let refused = counts.admit(address).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("2 calls from 127.0.0.1"),
            "{refused:?}"
        );
        let others: Vec<_> = (2..=3)
            .map(|last| {
                counts
                    .admit(Peer::Address(IpAddr::from([127, 0, 0, last])))
                    .unwrap()
            })
            .collect();
        let refused = counts
            .admit(Peer::Address(IpAddr::from([127, 0, 0, 9])))
            .unwrap_err();
        assert!(
            refused.message().contains("4 calls from callers without"),
            "{refused:?}"
        );
        let members: Vec<_> = (1..=2)
            .map(|n| counts.admit(Peer::Member(n)).unwrap())
            .collect();
        let refused = counts.admit(Peer::Member(3)).unwrap_err();
        assert!(
            refused.message().contains("handling 6 calls, the most"),
            "{refused:?}"
        );
        drop((held, others, members));
    }

    #[test]
    fn limits_that_leave_anonymous_callers_nothing_or_hold_pings_too_long_are_refused() {
        let all_reserved = Limits {
            reserved_for_members: 6,
            ..small()
        };
        assert!(
            all_reserved
                .check()
                .unwrap_err()
                .contains("--calls-reserved-for-members")
        );
        let long_pings = Limits {
            anonymous_ping_delay: Duration::from_secs(31),
            ..small()
        };
        assert!(
            long_pings
                .check()
                .unwrap_err()
                .contains("--max-anonymous-ping-delay")
        );
        assert_eq!(Limits::default().check(), Ok(()));
    }
}
