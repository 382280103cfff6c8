//! Telling a user who dialled with the wrong scheme what happened.
//!
//! Plaintext HTTP/2 sent to a TLS server comes back as a TLS alert, which an
//! HTTP/2 client reads as a frame far larger than any allowed
//! (`FRAME_SIZE_ERROR`); a TLS handshake sent to a plaintext server fails
//! with a record it cannot parse. Neither message says "wrong scheme". After
//! a connection to a URL has failed, [`scheme_mismatch`] looks once at what
//! the server speaks and, when it is the other protocol, says so in words a
//! user can act on: `127.0.0.1:7000 speaks TLS: use https://127.0.0.1:7000`.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long the look may take: it runs only after a failure, on the way to
/// reporting it.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// The client connection preface of HTTP/2 (RFC 9113 §3.4) and an empty
/// SETTINGS frame: what a plaintext HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// TLS record content types a TLS server answers garbage with (RFC 8446 §5.1).
const TLS_ALERT: u8 = 0x15;
const TLS_HANDSHAKE: u8 = 0x16;
/// The frame type of SETTINGS, which every HTTP/2 server sends first (RFC 9113 §6.5).
const H2_SETTINGS: u8 = 0x04;

/// What a server at `url` speaks when it is not what the URL's scheme says:
/// a sentence naming the URL to use instead, or `None` when the scheme fits,
/// the server cannot be reached, or its answer is neither protocol.
pub async fn scheme_mismatch(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let tls = match scheme {
        "http" => false,
        "https" => true,
        _ => return None,
    };
    let first = tokio::time::timeout(PROBE_TIMEOUT, first_bytes(authority, tls))
        .await
        .ok()??;
    let speaks_tls = matches!(first.first(), Some(&TLS_ALERT | &TLS_HANDSHAKE));
    let speaks_h2 = first.len() >= 4 && first[3] == H2_SETTINGS;
    match (tls, speaks_tls, speaks_h2) {
        (false, true, _) => Some(format!("{authority} speaks TLS: use https://{rest}")),
        (true, false, true) => Some(format!(
            "{authority} speaks plaintext (a mesh started with --insecure): use http://{rest}"
        )),
        _ => None,
    }
}

/// Sends the HTTP/2 preface in plaintext and returns the first bytes the
/// server answers with. A TLS server answers it with an alert record; a
/// plaintext HTTP/2 server with its SETTINGS frame. (The `tls` flag only
/// adds the port's default.)
async fn first_bytes(authority: &str, tls: bool) -> Option<Vec<u8>> {
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(H2_PREFACE).await.ok()?;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).await.ok()?;
    Some(buf[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers anything with `reply` and closes.
    async fn answering(reply: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(reply).await;
            }
        });
        addr.to_string()
    }

    #[tokio::test]
    async fn an_http_url_to_a_server_that_answers_with_a_tls_alert_is_told_to_use_https() {
        let addr = answering(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]).await;
        assert_eq!(
            scheme_mismatch(&format!("http://{addr}")).await,
            Some(format!("{addr} speaks TLS: use https://{addr}"))
        );
        assert_eq!(scheme_mismatch(&format!("https://{addr}")).await, None);
    }

    #[tokio::test]
    async fn an_https_url_to_a_plaintext_http2_server_is_told_to_use_http() {
        let addr = answering(&[0, 0, 6, 0x04, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]).await;
        assert_eq!(
            scheme_mismatch(&format!("https://{addr}/")).await,
            Some(format!(
                "{addr} speaks plaintext (a mesh started with --insecure): use http://{addr}/"
            ))
        );
        assert_eq!(scheme_mismatch(&format!("http://{addr}")).await, None);
    }

    #[tokio::test]
    async fn nothing_is_said_when_nobody_listens() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        assert_eq!(scheme_mismatch(&format!("http://{addr}")).await, None);
    }
}
