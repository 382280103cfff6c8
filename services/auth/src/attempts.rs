//! Rate limits on password attempts, per email and per peer, so that a
//! guesser is slowed down whichever way it spreads its guesses: many
//! passwords against one email (held by the per-email limit), or one
//! password against many emails, or many sign-ups, from one address (held by
//! the per-peer limit). Both are `governor` token buckets kept per process,
//! so each College instance holds a caller to the rate on its own; with N
//! instances behind a balancer a caller gets at most N times the rate.
//!
//! A refusal is RESOURCE_EXHAUSTED and says when to retry. Keys whose
//! buckets have refilled are forgotten by [`Attempts::forget_idle`], so
//! made-up emails or addresses do not grow the tables without end.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;

/// Login attempts one email gets per minute on one College instance, right
/// or wrong: a person who mistypes a few times is not slowed, a guesser is
/// held to this rate (it was ~25 a second against one account).
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;

/// Logins and sign-ups one peer address gets per minute on one College
/// instance, after [`PEER_ATTEMPT_BURST`]: five a second sustained is more
/// than a lab behind one NAT address signs in, and holds a credential
/// stuffer trying one password against many emails to that rate (without
/// it the only bound was the hashing pool, ~80 a second).
pub const PEER_ATTEMPTS_PER_MINUTE: u32 = 300;

/// Attempts a peer may make at once before the per-minute rate applies: a
/// workshop signing up together, or a simulation's researchers logging in.
pub const PEER_ATTEMPT_BURST: u32 = 100;

/// The per-email and per-peer buckets of one process.
pub struct Attempts {
    by_email: DefaultKeyedRateLimiter<String>,
    by_peer: DefaultKeyedRateLimiter<IpAddr>,
}

impl Default for Attempts {
    fn default() -> Self {
        Self::new()
    }
}

impl Attempts {
    pub fn new() -> Self {
        let per_email = NonZeroU32::new(LOGIN_ATTEMPTS_PER_MINUTE).expect("not zero");
        let per_peer = NonZeroU32::new(PEER_ATTEMPTS_PER_MINUTE).expect("not zero");
        let burst = NonZeroU32::new(PEER_ATTEMPT_BURST).expect("not zero");
        Self {
            by_email: RateLimiter::keyed(Quota::per_minute(per_email)),
            by_peer: RateLimiter::keyed(Quota::per_minute(per_peer).allow_burst(burst)),
        }
    }

    /// Counts a login for `email` (known or not); RESOURCE_EXHAUSTED with
    /// when to retry once the email has used up its rate.
    pub fn check_email(&self, email: &str) -> Result<(), Status> {
        self.by_email.check_key(&email.to_owned()).map_err(|wait| {
            Status::resource_exhausted(format!(
                "too many login attempts for this email (at most {LOGIN_ATTEMPTS_PER_MINUTE} a minute); retry in {}",
                retry_in(wait.wait_time_from(DefaultClock::default().now()))
            ))
        })
    }

    /// Counts a login or sign-up from `peer` (its IPv6 /64 counts as one
    /// address, since one host commonly holds all of it); RESOURCE_EXHAUSTED
    /// with when to retry once the peer has used up its rate. A call whose
    /// peer is unknown (not over TCP) is not limited here.
    pub fn check_peer(&self, peer: Option<IpAddr>) -> Result<(), Status> {
        let Some(peer) = peer else { return Ok(()) };
        self.by_peer.check_key(&prefix(peer)).map_err(|wait| {
            Status::resource_exhausted(format!(
                "too many logins and sign-ups from your address (at most {PEER_ATTEMPTS_PER_MINUTE} a minute after {PEER_ATTEMPT_BURST} at once); retry in {}",
                retry_in(wait.wait_time_from(DefaultClock::default().now()))
            ))
        })
    }

    /// Forgets emails and peers whose buckets are full again.
    pub fn forget_idle(&self) {
        self.by_email.retain_recent();
        self.by_email.shrink_to_fit();
        self.by_peer.retain_recent();
        self.by_peer.shrink_to_fit();
    }
}

/// The key a peer is counted under: an IPv4 address (or an IPv4-mapped
/// IPv6 one) as it is, an IPv6 address by its /64.
fn prefix(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// "3 s": whole seconds, rounded up, at least one.
fn retry_in(wait: Duration) -> String {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    format!("{} s", secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_past_its_burst_is_told_when_to_retry() {
        let attempts = Attempts::new();
        let peer = Some("192.0.2.7".parse().unwrap());
        for _ in 0..PEER_ATTEMPT_BURST {
            attempts.check_peer(peer).unwrap();
        }
        let refused = attempts.check_peer(peer).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("retry in 1 s"), "{refused:?}");
        // Another address is not held back by this one.
        attempts
            .check_peer(Some("192.0.2.8".parse().unwrap()))
            .unwrap();
        attempts.check_peer(None).unwrap();
    }

    #[test]
    fn an_ipv6_peer_is_counted_by_its_64_prefix() {
        let attempts = Attempts::new();
        for n in 0..PEER_ATTEMPT_BURST {
            let peer = format!("2001:db8:1:2::{n:x}").parse().ok();
            attempts.check_peer(peer).unwrap();
        }
        let same_prefix = "2001:db8:1:2:ffff::1".parse().ok();
        assert!(attempts.check_peer(same_prefix).is_err());
        attempts.check_peer("2001:db8:1:3::1".parse().ok()).unwrap();
    }

    #[test]
    fn an_email_past_its_rate_is_told_when_to_retry() {
        let attempts = Attempts::new();
        for _ in 0..LOGIN_ATTEMPTS_PER_MINUTE {
            attempts.check_email("ada@uni.edu").unwrap();
        }
        let refused = attempts.check_email("ada@uni.edu").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("retry in 6 s"), "{refused:?}");
        attempts.check_email("grace@uni.edu").unwrap();
    }
}
