//! Limits by caller: who a call or a connection is from ([`Peer`]), and a
//! capacity shared out so that no single caller, and no crowd of callers
//! without a mesh certificate, takes it from the others ([`Shares`]).
//!
//! The accept loop ([`crate::incoming`]) uses it for connections, a
//! server's admission for calls, the registry for Watch streams and the
//! College for account watches.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// One peer, as limits by caller count it: the holder of one client
/// certificate, or one address for callers without a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A mesh member: a digest of its leaf certificate.
    Member(u64),
    /// A caller without a certificate, by the address it calls from.
    Address(IpAddr),
    /// Not over TCP (an in-process transport): not counted per peer.
    Unknown,
}

/// The socket address a request on a tonic server connection came from,
/// on TLS or plaintext; `None` off TCP.
pub fn remote_addr<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .map(TlsConnectInfo::get_ref)
        .or_else(|| extensions.get::<TcpConnectInfo>())
        .and_then(TcpConnectInfo::remote_addr)
}

impl Peer {
    /// The peer of a request on a tonic server connection.
    pub fn of<B>(request: &http::Request<B>) -> Self {
        let leaf = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        if let Some(leaf) = leaf.as_deref().and_then(|certs| certs.first()) {
            let mut digest = DefaultHasher::new();
            leaf.as_ref().hash(&mut digest);
            return Peer::Member(digest.finish());
        }
        remote_addr(request).map_or(Peer::Unknown, |addr| Peer::Address(addr.ip()))
    }

    /// Whether it is a mesh member (a verified client certificate).
    pub fn is_member(&self) -> bool {
        matches!(self, Peer::Member(_))
    }

    /// Whether it is a caller without a certificate over the network, which
    /// only the share not kept for members is for. (A caller on an
    /// in-process transport is neither.)
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Peer::Address(_))
    }

    /// How a refusal names this peer.
    pub fn describe(&self) -> String {
        match self {
            Peer::Member(_) => "this mesh member's certificate".into(),
            Peer::Address(ip) => format!("{ip}"),
            Peer::Unknown => "this caller".into(),
        }
    }
}

/// How a capacity is shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// All of it.
    pub total: usize,
    /// How much one peer may hold.
    pub per_peer: usize,
    /// How much only mesh members may hold.
    pub reserved_for_members: usize,
}

/// Why a share was not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Everything is taken.
    Total,
    /// Everything callers without a certificate may take is taken.
    Anonymous,
    /// This peer holds its most.
    Peer,
}

/// A capacity shared out by [`Split`].
#[derive(Debug)]
pub struct Shares {
    split: Split,
    /// Taken in all, by callers without a certificate, and per peer.
    taken: Mutex<Taken>,
}

#[derive(Debug, Default)]
struct Taken {
    all: usize,
    anonymous: usize,
    peers: HashMap<Peer, usize>,
}

/// One share, given back when dropped.
#[derive(Debug)]
pub struct Share {
    shares: Arc<Shares>,
    peer: Peer,
}

impl Shares {
    pub fn new(split: Split) -> Arc<Self> {
        Arc::new(Self {
            split,
            taken: Mutex::new(Taken::default()),
        })
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// A share for `peer`, or which limit it met.
    pub fn take(self: &Arc<Self>, peer: Peer) -> Result<Share, Full> {
        let split = &self.split;
        let mut taken = self.taken.lock().expect("shares poisoned");
        if taken.all >= split.total {
            return Err(Full::Total);
        }
        if peer.is_anonymous()
            && taken.anonymous >= split.total.saturating_sub(split.reserved_for_members)
        {
            return Err(Full::Anonymous);
        }
        if peer != Peer::Unknown {
            let held = taken.peers.get(&peer).copied().unwrap_or(0);
            if held >= split.per_peer {
                return Err(Full::Peer);
            }
            taken.peers.insert(peer, held + 1);
        }
        taken.all += 1;
        if peer.is_anonymous() {
            taken.anonymous += 1;
        }
        Ok(Share {
            shares: Arc::clone(self),
            peer,
        })
    }

    /// How many shares are held.
    pub fn held(&self) -> usize {
        self.taken.lock().expect("shares poisoned").all
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut taken = self.shares.taken.lock().expect("shares poisoned");
        taken.all -= 1;
        if self.peer.is_anonymous() {
            taken.anonymous -= 1;
        }
        if let Some(held) = taken.peers.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                taken.peers.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(last: u8) -> Peer {
        Peer::Address(IpAddr::from([127, 0, 0, last]))
    }

    fn small() -> Arc<Shares> {
        Shares::new(Split {
            total: 6,
            per_peer: 2,
            reserved_for_members: 2,
        })
    }

    #[test]
    fn one_address_gets_at_most_its_share_and_others_still_get_in() {
        let shares = small();
        let held: Vec<_> = (0..2).map(|_| shares.take(address(1)).unwrap()).collect();
        assert_eq!(shares.take(address(1)).unwrap_err(), Full::Peer);
        shares
            .take(address(2))
            .expect("another address still gets in");
        drop(held);
        shares
            .take(address(1))
            .expect("its share comes back when its holds end");
    }

    #[test]
    fn anonymous_callers_together_leave_the_members_reserve_alone() {
        let shares = small();
        let anonymous: Vec<_> = (1..=4).map(|n| shares.take(address(n)).unwrap()).collect();
        assert_eq!(shares.take(address(5)).unwrap_err(), Full::Anonymous);
        let members: Vec<_> = (1..=2)
            .map(|n| {
                shares
                    .take(Peer::Member(n))
                    .expect("the reserve is the members'")
            })
            .collect();
        assert_eq!(shares.take(Peer::Member(3)).unwrap_err(), Full::Total);
        drop((anonymous, members));
        let taken = shares.taken.lock().unwrap();
        assert_eq!((taken.all, taken.anonymous), (0, 0));
        assert!(taken.peers.is_empty(), "no peer left counted");
    }
}
