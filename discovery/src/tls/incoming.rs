//! The server side: TLS handshakes off the accept loop.
//!
//! [`incoming`] accepts TCP connections and runs each handshake in a task of
//! its own with a deadline, so a client that connects and never speaks
//! holds neither the accept loop nor a slot for longer than
//! [`HANDSHAKE_TIMEOUT`]; finished handshakes are handed to tonic as a
//! stream. The TLS configuration is taken per connection from
//! [`TlsMaterial`], so rotated certificates apply to new connections.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::TlsMaterial;

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond this new connections wait in the
/// kernel's backlog instead of each holding a task and a buffer here.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Finished TLS connections from `listener`, until the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    material: Arc<TlsMaterial>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(MAX_PENDING_HANDSHAKES);
    tokio::spawn(accept_loop(listener, material, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    material: Arc<TlsMaterial>,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
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
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}
