//! The server side: TLS handshakes off the accept loop, and a bound on
//! connections.
//!
//! [`incoming`] accepts TCP connections and runs each handshake in a task of
//! its own with a deadline, so a client that connects and never speaks
//! holds neither the accept loop nor a slot for longer than
//! [`HANDSHAKE_TIMEOUT`]; finished handshakes are handed to tonic as a
//! stream. The TLS configuration is taken per connection from
//! [`TlsMaterial`], so rotated certificates apply to new connections.
//!
//! At most [`max_connections`] connections are held at once; beyond that a
//! new connection is closed at once (its client sees UNAVAILABLE and can
//! try another instance) instead of taking the process's last file
//! descriptors, which would also starve health checks and registration.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::TlsMaterial;

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond this new connections wait in the
/// kernel's backlog instead of each holding a task and a buffer here.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Most connections one server holds: 4096, or three quarters of the
/// process's file-descriptor limit when that is lower (it is 1024 on many
/// systems), leaving the rest for the store, the registry and the logs.
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
pub struct Limited {
    stream: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
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

/// Finished TLS connections from `listener`, until the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    material: Arc<TlsMaterial>,
) -> impl Stream<Item = Result<Limited, std::io::Error>> {
    let (tx, rx) = mpsc::channel(MAX_PENDING_HANDSHAKES);
    tokio::spawn(accept_loop(listener, material, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    material: Arc<TlsMaterial>,
    tx: mpsc::Sender<Result<Limited, std::io::Error>>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let connections = Arc::new(Semaphore::new(max_connections()));
    let mut refused = 0u64;
    loop {
        let permit = tokio::select! {
            () = tx.closed() => return,
            permit = pending.clone().acquire_owned() => permit.expect("never closed"),
        };
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
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
        let config = match material.server_config() {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(error = %err, "no usable server certificate");
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
                .await
            {
                Ok(Ok(stream)) => {
                    let _ = tx
                        .send(Ok(Limited {
                            stream,
                            _permit: connection,
                        }))
                        .await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}
