//! The server side of a connection: accepted off the accept loop, bounded
//! in number, and dropped when it never speaks.
//!
//! [`tls`] and [`plaintext`] accept TCP connections and run each one's
//! opening in a task of its own with a deadline: the TLS handshake, or for
//! plaintext the client's first bytes (its HTTP/2 preface). A client that
//! connects and never speaks holds neither the accept loop nor a slot for
//! longer than [`HANDSHAKE_TIMEOUT`]; opened connections are handed to tonic
//! as a stream. The loop never waits for an opening to finish before it
//! accepts the next connection: when [`MAX_PENDING_HANDSHAKES`] openings are
//! in progress, the oldest is dropped for the newcomer. A real client opens
//! in milliseconds, so a flood of clients that connect and say nothing
//! evicts its own kind and never locks real clients out (which a fixed set
//! of opening slots, each held for the whole timeout, would: a few dozen
//! silent connections a second kept a server closed to new clients). The TLS configuration is taken per connection from
//! [`TlsMaterial`], so rotated certificates apply to new connections.
//!
//! At most [`ConnectionLimits::total`] connections are held at once; beyond
//! that a new connection is closed at once (its client sees UNAVAILABLE and
//! can try another instance) instead of taking the process's last file
//! descriptors, which would also starve health checks and registration.
//! Once opened, a connection without a mesh client certificate is one of at
//! most [`ConnectionLimits::per_address`] from its IP address, and of at
//! most `total − reserved_for_members` anonymous ones: a client that holds
//! thousands of connections open (answering keepalive pings, sending
//! nothing) takes its own share, not everyone's. Members (a verified
//! client certificate) are counted only against the total.
//! When `accept` itself fails (out of file descriptors), the loop backs off
//! instead of spinning.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::activity::{Activities, Entered};
use crate::peers::{Full, Peer, Share, Shares, Split};
use crate::tls::TlsMaterial;

/// How long a client may take to open its connection: finish the TLS
/// handshake, or send its first bytes on plaintext.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Openings in progress at once, each holding a task and a buffer; beyond
/// this the oldest is dropped for the newest.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Idle time before TCP keepalive probes start on a server connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// How long the accept loop pauses after `accept` fails (EMFILE and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How many connections one server holds, and from whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections held at once, opening or open.
    pub total: usize,
    /// Open connections without a mesh certificate from one IP address.
    pub per_address: usize,
    /// Of [`Self::total`], how many only mesh members may hold open.
    pub reserved_for_members: usize,
    /// How long an open connection may hold no call before it is closed,
    /// even if it answers HTTP/2 keepalive pings.
    pub idle_timeout: Duration,
}

/// [`ConnectionLimits::idle_timeout`] by default: five minutes without a
/// call. Balancers keep a connection per instance and use it every few
/// seconds; a connection unused that long gives its place to newcomers.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for ConnectionLimits {
    /// [`max_connections`] in all, an eighth of them per address and an
    /// eighth kept for members: a machine's clients (a CLI, a simulation's
    /// balancer, a portal) need a handful each, and one process holding
    /// hundreds open leaves the rest to everyone else.
    fn default() -> Self {
        let total = max_connections();
        Self {
            total,
            per_address: (total / 8).max(16),
            reserved_for_members: total / 8,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Most connections one server holds by default: 4096, or three quarters of
/// the process's file-descriptor limit when that is lower (it is 1024 on
/// many systems), leaving the rest for the store, the registry and the logs.
pub fn max_connections() -> usize {
    const CEILING: usize = 4096;
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => CEILING
            .min(usize::try_from(soft / 4 * 3).unwrap_or(CEILING))
            .max(16),
        Err(_) => CEILING,
    }
}

/// A server connection that gives its place back when it closes.
pub struct Limited<S> {
    stream: S,
    _permit: OwnedSemaphorePermit,
    _anonymous: Option<Share>,
    /// Its calls, counted by the server's admission layer.
    entered: Entered,
    idle_timeout: Duration,
    /// Wakes the connection's reads to look whether it has gone idle.
    idle_check: Pin<Box<tokio::time::Sleep>>,
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // HTTP/2 always has a read pending, so this runs when the check is due.
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let idle_timeout = self.idle_timeout;
            match self.entered.activity.idle_deadline(idle_timeout) {
                Some(deadline) if deadline <= tokio::time::Instant::now() => {
                    tracing::debug!("connection closed: no call for {idle_timeout:?}");
                    // End of stream: the server closes the connection.
                    return Poll::Ready(Ok(()));
                }
                Some(deadline) => self.idle_check.as_mut().reset(deadline),
                // A call is open: look again a timeout from now.
                None => self
                    .idle_check
                    .as_mut()
                    .reset(tokio::time::Instant::now() + idle_timeout),
            }
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Connections that finished their TLS handshake, until the stream is dropped.
pub fn tls(
    listener: TcpListener,
    material: Arc<TlsMaterial>,
    limits: ConnectionLimits,
    activities: Arc<Activities>,
) -> impl Stream<Item = Result<Limited<TlsStream<TcpStream>>, std::io::Error>> {
    spawn_accept_loop(listener, limits, activities, move |tcp| {
        let config = material.server_config().inspect_err(|err| {
            tracing::error!(error = %err, "no usable server certificate; closing the connection");
        });
        async move {
            let config = config.map_err(std::io::Error::other)?;
            let tls = TlsAcceptor::from(config).accept(tcp).await?;
            // The verifier accepted the chain: a member of the mesh.
            let member = tls.get_ref().1.peer_certificates().is_some();
            Ok((tls, member))
        }
    })
}

/// Plaintext connections whose client has sent something, until the stream
/// is dropped.
pub fn plaintext(
    listener: TcpListener,
    limits: ConnectionLimits,
    activities: Arc<Activities>,
) -> impl Stream<Item = Result<Limited<TcpStream>, std::io::Error>> {
    spawn_accept_loop(listener, limits, activities, |tcp: TcpStream| async move {
        // Waits for the first byte without taking it (readiness alone may
        // be reported before any data arrives).
        tcp.peek(&mut [0u8; 1]).await?;
        // Nobody proves who they are in plaintext.
        Ok((tcp, false))
    })
}

fn spawn_accept_loop<S, F, Fut>(
    listener: TcpListener,
    limits: ConnectionLimits,
    activities: Arc<Activities>,
    open: F,
) -> impl Stream<Item = Result<Limited<S>, std::io::Error>>
where
    S: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<(S, bool)>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(MAX_PENDING_HANDSHAKES);
    tokio::spawn(accept_loop(listener, limits, activities, open, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop<S, F, Fut>(
    listener: TcpListener,
    limits: ConnectionLimits,
    activities: Arc<Activities>,
    open: F,
    tx: mpsc::Sender<Result<Limited<S>, std::io::Error>>,
) where
    S: Send + 'static,
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<(S, bool)>> + Send + 'static,
{
    let openings = Arc::new(Openings::default());
    let connections = Arc::new(Semaphore::new(limits.total));
    // Strangers' open connections: members take none of these shares.
    let anonymous = Shares::new(Split {
        total: limits.total,
        per_peer: limits.per_address,
        reserved_for_members: limits.reserved_for_members,
    });
    let refused_strangers = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut refused = 0u64;
    // Since when `accept` has failed without a success in between.
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; backing off");
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= crate::activity::ACCEPT_FAILING {
                        activities.set_accepting(false);
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if failing_since.take().is_some() {
            activities.set_accepting(true);
        }
        let Ok(connection) = connections.clone().try_acquire_owned() else {
            // Full: close it now, so its client fails fast and goes elsewhere.
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "connection limit reached; closing new connections");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // Finds peers that vanished without a FIN (power loss, a cut cable).
        let _ = socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        let opening = open(tcp);
        let (id, evicted) = openings.start();
        let openings = Arc::clone(&openings);
        let anonymous = Arc::clone(&anonymous);
        let refused_strangers = Arc::clone(&refused_strangers);
        let activities = Arc::clone(&activities);
        let tx = tx.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, opening) => Some(opened),
                _ = evicted => None,
            };
            openings.finish(id);
            match outcome {
                Some(Ok(Ok((stream, member)))) => {
                    let slot = if member {
                        None
                    } else {
                        match anonymous.take(Peer::Address(peer.ip())) {
                            Ok(share) => Some(share),
                            Err(full) => {
                                let why = match full {
                                    Full::Peer => format!(
                                        "{} already holds {} connections without a mesh certificate, the most one address may",
                                        peer.ip(),
                                        limits.per_address
                                    ),
                                    Full::Total | Full::Anonymous => format!(
                                        "{} connections without a mesh certificate are open, the most this server holds; the rest are kept for members",
                                        limits.total - limits.reserved_for_members
                                    ),
                                };
                                let refused = refused_strangers
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                                    + 1;
                                if refused.is_power_of_two() {
                                    tracing::warn!(%peer, refused, "{why}; closing new connections from it");
                                }
                                tracing::debug!(%peer, "connection closed: {why}");
                                return;
                            }
                        }
                    };
                    let entered = activities.enter(peer);
                    let idle_check = Box::pin(tokio::time::sleep(limits.idle_timeout));
                    let _ = tx
                        .send(Ok(Limited {
                            stream,
                            _permit: connection,
                            _anonymous: slot,
                            entered,
                            idle_timeout: limits.idle_timeout,
                            idle_check,
                        }))
                        .await;
                }
                Some(Ok(Err(err))) => log_failed(peer, &err),
                Some(Err(_)) => {
                    tracing::debug!(%peer, "connection closed: nothing received within {HANDSHAKE_TIMEOUT:?}")
                }
                None => {
                    tracing::debug!(%peer, "connection closed: still opening while {MAX_PENDING_HANDSHAKES} newer ones were")
                }
            }
        });
    }
}

/// The openings in progress, oldest first, each with the sender whose drop
/// tells it to give up.
#[derive(Default)]
struct Openings {
    /// The next id, and the openings in progress.
    queue: std::sync::Mutex<(u64, VecDeque<Opening>)>,
}

/// An opening in progress: its id, and the sender whose drop evicts it.
type Opening = (u64, oneshot::Sender<()>);

impl Openings {
    /// Registers a new opening (evicting the oldest when full): its id, and
    /// what resolves when it is evicted.
    fn start(&self) -> (u64, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let mut queue = self.queue.lock().expect("openings poisoned");
        let (next, pending) = &mut *queue;
        let id = *next;
        *next += 1;
        if pending.len() >= MAX_PENDING_HANDSHAKES {
            // Dropping its sender resolves its receiver.
            pending.pop_front();
        }
        pending.push_back((id, evict));
        (id, evicted)
    }

    fn finish(&self, id: u64) {
        let mut queue = self.queue.lock().expect("openings poisoned");
        if let Some(at) = queue.1.iter().position(|(pending, _)| *pending == id) {
            queue.1.remove(at);
        }
    }
}

fn log_failed(peer: SocketAddr, err: &std::io::Error) {
    tracing::debug!(%peer, error = %err, "connection failed while opening");
}
