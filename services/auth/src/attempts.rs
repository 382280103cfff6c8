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

/// Login attempts one email gets per minute from one client address on one
/// College instance, right or wrong: a person who mistypes a few times is
/// not slowed, a guesser is held to this rate (it was ~25 a second against
/// one account) — and the owner, logging in from elsewhere, is not held
/// back by a stranger's failures (keyed by email alone, twelve wrong
/// passwords locked the owner out).
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;

/// Login attempts one email gets per minute from all addresses together on
/// one College instance: what bounds a guesser spread over many addresses.
/// Ten addresses' worth, so one stranger, or a few, never shut the owner out.
pub const EMAIL_ATTEMPTS_PER_MINUTE: u32 = 100;

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
    /// Per email and client address (its IPv6 /64).
    by_email: DefaultKeyedRateLimiter<(String, Option<IpAddr>)>,
    /// Per email, from everywhere.
    by_email_anywhere: DefaultKeyedRateLimiter<String>,
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
        let anywhere = NonZeroU32::new(EMAIL_ATTEMPTS_PER_MINUTE).expect("not zero");
        Self {
            by_email: RateLimiter::keyed(Quota::per_minute(per_email)),
            by_email_anywhere: RateLimiter::keyed(Quota::per_minute(anywhere)),
            by_peer: RateLimiter::keyed(Quota::per_minute(per_peer).allow_burst(burst)),
        }
    }

    /// Counts a login for `email` (known or not) from `peer`;
    /// RESOURCE_EXHAUSTED with when to retry once the email has used up its
    /// rate from that address, or from all of them. An attempt refused for
    /// its address is not counted against the email's overall rate.
    pub fn check_email(&self, email: &str, peer: Option<IpAddr>) -> Result<(), Status> {
        let now = || DefaultClock::default().now();
        self.by_email
            .check_key(&(email.to_owned(), peer.map(prefix)))
            .map_err(|wait| {
                Status::resource_exhausted(format!(
                    "too many login attempts for this email from your address (at most {LOGIN_ATTEMPTS_PER_MINUTE} a minute); retry in {}",
                    retry_in(wait.wait_time_from(now()))
                ))
            })?;
        self.by_email_anywhere
            .check_key(&email.to_owned())
            .map_err(|wait| {
                Status::resource_exhausted(format!(
                    "too many login attempts for this email (at most {EMAIL_ATTEMPTS_PER_MINUTE} a minute from all addresses); retry in {}",
                    retry_in(wait.wait_time_from(now()))
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
        self.by_email_anywhere.retain_recent();
        self.by_email_anywhere.shrink_to_fit();
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
    fn a_strangers_failures_do_not_hold_the_owner_back_from_another_address() {
        let attempts = Attempts::new();
        let stranger = "192.0.2.66".parse().ok();
        let owner = "198.51.100.7".parse().ok();
        let mut refused = 0;
        for _ in 0..100 {
            refused += usize::from(attempts.check_email("ada@uni.edu", stranger).is_err());
        }
        assert_eq!(refused, 100 - LOGIN_ATTEMPTS_PER_MINUTE as usize);
        attempts
            .check_email("ada@uni.edu", owner)
            .expect("the owner, elsewhere, is let in at once");
    }

    #[test]
    fn an_email_guessed_from_many_addresses_is_held_to_its_overall_rate() {
        let attempts = Attempts::new();
        let mut let_in = 0;
        for n in 0..=255u8 {
            for _ in 0..LOGIN_ATTEMPTS_PER_MINUTE {
                let peer = Some(IpAddr::from([192, 0, 2, n]));
                let_in += usize::from(attempts.check_email("ada@uni.edu", peer).is_ok());
            }
        }
        let most = EMAIL_ATTEMPTS_PER_MINUTE as usize;
        // (One more may have come back while the loop ran.)
        assert!((most..=most + 2).contains(&let_in), "{let_in}");
    }

    #[test]
    fn an_email_past_its_rate_is_told_when_to_retry() {
        let attempts = Attempts::new();
        let peer = "192.0.2.9".parse().ok();
        for _ in 0..LOGIN_ATTEMPTS_PER_MINUTE {
            attempts.check_email("ada@uni.edu", peer).unwrap();
        }
        let refused = attempts.check_email("ada@uni.edu", peer).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("retry in 6 s"), "{refused:?}");
        attempts.check_email("grace@uni.edu", peer).unwrap();
    }
}
