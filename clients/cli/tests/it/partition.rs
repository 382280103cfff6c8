//! A blackhole partition between the colleges and the registry, through a
//! real proxy: the sockets stay open, nothing gets through. Every college
//! goes silent together, so self-preservation keeps them listed, even once
//! HTTP/2 keepalive has closed their KeepAlive streams (~15 s in).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A TCP proxy to `upstream` that forwards until [`Blackhole::cut`], then
/// holds every socket open and forwards nothing, new connections included.
struct Blackhole {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Blackhole {
    async fn start(upstream: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let cut = Arc::clone(&flag);
                tokio::spawn(async move {
                    if cut.load(Ordering::SeqCst) {
                        // Held, never answered.
                        std::future::pending::<()>().await;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = tokio::spawn(forward(client_read, server_write, Arc::clone(&cut)));
                    forward(server_read, client_write, cut).await;
                    up.abort();
                });
            }
        });
        Blackhole { addr, cut }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; once `cut`, reads nothing
/// more and keeps both open.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = until(&cut) => std::future::pending().await,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if cut.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Resolves once `cut` is set.
async fn until(cut: &AtomicBool) {
    while !cut.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn colleges_cut_off_by_a_blackhole_stay_listed_past_their_keepalive_timeout() {
    let registry = Proc::registry(&[]).await;
    let proxy = Blackhole::start(registry.addr).await;
    let _a = Proc::member("college", &proxy.url(), &["--instance-id", "college-a"]).await;
    let _b = Proc::member("college", &proxy.url(), &["--instance-id", "college-b"]).await;
    assert_eventually(
        Duration::from_secs(10),
        "both colleges hold KeepAlive streams through the proxy",
        || async {
            let listed = list(&registry.url(), "college").await;
            listed.len() == 2 && listed.iter().all(|i| i.keep_alive_stream)
        },
    )
    .await;

    proxy.cut();
    // Past the TTL (3 s), past HTTP/2 keepalive closing the streams (10 s
    // of quiet, then 5 s for a ping's answer), within self-preservation's
    // 10 TTLs.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(
        ids(&registry.url(), "college").await,
        ["college-a", "college-b"],
        "a partition is silence, subject to self-preservation, not a departure"
    );
}
