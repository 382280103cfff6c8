//! Keeping one instance registered with every registry replica.
//!
//! One task per registry URL runs a session: `Register`, then a `KeepAlive`
//! stream that renews the lease every heartbeat interval. A reply saying the
//! registry does not know the instance (it expired it, or restarted) makes the
//! session register again at once. A broken stream, or no reply within the
//! TTL, ends the session and a new one starts after a short pause, so a
//! restarted registry relearns the instance well within one heartbeat
//! interval of coming back.
//!
//! Leaving ([`Registrar::deregister`]) sends `Deregister` on each live
//! session's own connection *before* its KeepAlive stream closes, so each
//! registry records a clean departure, not a lost stream; a registry that
//! had no live session is sent one on a connection of its own.

use std::time::Duration;

use grantmesh_proto::RegistryClient;
use grantmesh_proto::v1::{DeregisterRequest, Instance, KeepAliveRequest, RegisterRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::tls::Transport;

/// What to register and where.
#[derive(Clone, Debug)]
pub struct RegistrarOptions {
    /// Registry URLs, e.g. `http://127.0.0.1:7000`; the instance registers with each.
    pub registries: Vec<String>,
    /// The instance to register: id, service, address and labels.
    pub instance: Instance,
    /// How often the lease is renewed.
    pub heartbeat_interval: Duration,
    /// How long a registry waits for a renewal before removing the instance.
    pub ttl: Duration,
    /// How the registries are dialled (with TLS, this instance's certificate
    /// is what entitles it to register under its service).
    pub transport: Transport,
}

/// A running registration; [`Registrar::deregister`] ends it.
pub struct Registrar {
    options: RegistrarOptions,
    /// Ends every session at once, the stream with it.
    stop: CancellationToken,
    /// Asks every live session to deregister, then end.
    leave: CancellationToken,
    /// One per registry: its URL, and whether its session deregistered.
    sessions: JoinSet<(String, bool)>,
}

/// How long one registry is given to confirm a `Deregister`.
const DEREGISTER_WAIT: Duration = Duration::from_secs(1);

impl Registrar {
    /// Starts registering with every registry. Returns at once; registration
    /// happens in the background and is retried for as long as the registrar lives.
    pub fn start(options: RegistrarOptions) -> Self {
        let stop = CancellationToken::new();
        let leave = CancellationToken::new();
        let mut sessions = JoinSet::new();
        for url in &options.registries {
            sessions.spawn(keep_registered(
                url.clone(),
                options.clone(),
                stop.clone(),
                leave.clone(),
            ));
        }
        Self {
            options,
            stop,
            leave,
            sessions,
        }
    }

    /// The instance this registrar registers.
    pub fn instance(&self) -> &Instance {
        &self.options.instance
    }

    /// Stops renewing and removes the instance from every registry: a live
    /// session deregisters on its own connection and then closes its stream;
    /// a registry without one is sent `Deregister` on a new connection. Each
    /// registry is given about a second.
    pub async fn deregister(mut self) {
        self.leave.cancel();
        let mut left = Vec::new();
        let _ = tokio::time::timeout(DEREGISTER_WAIT + Duration::from_millis(200), async {
            while let Some(Ok((url, deregistered))) = self.sessions.join_next().await {
                if deregistered {
                    left.push(url);
                }
            }
        })
        .await;
        self.stop.cancel();
        while self.sessions.join_next().await.is_some() {}
        let request = deregister_request(&self.options);
        let transport = &self.options.transport;
        let calls = self
            .options
            .registries
            .iter()
            .filter(|url| !left.contains(url))
            .map(|url| {
                let request = request.clone();
                async move {
                    let call = async {
                        let channel = transport
                            .channel(url, Some(crate::REGISTRY_SERVICE))
                            .await?;
                        RegistryClient::new(channel).deregister(request).await?;
                        Ok::<_, SessionError>(())
                    };
                    report_deregistered(url, tokio::time::timeout(DEREGISTER_WAIT, call).await);
                }
            });
        futures::future::join_all(calls).await;
        tracing::info!(instance = %self.options.instance.id, "left the mesh");
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn deregister_request(options: &RegistrarOptions) -> DeregisterRequest {
    DeregisterRequest {
        service: options.instance.service.clone(),
        instance_id: options.instance.id.clone(),
    }
}

/// Logs how a `Deregister` to `url` went; true when it was answered.
fn report_deregistered<T, E: std::fmt::Display>(
    url: &str,
    outcome: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> bool {
    match outcome {
        Ok(Ok(_)) => return true,
        Ok(Err(err)) => tracing::warn!(registry = %url, error = %err, "failed to deregister"),
        Err(_) => tracing::warn!(registry = %url, "deregistering timed out"),
    }
    false
}

/// Keeps the instance registered with `url` until `stop`, or until `leave`
/// once the live session (if any) deregistered. Returns the URL and whether
/// this session deregistered.
async fn keep_registered(
    url: String,
    options: RegistrarOptions,
    stop: CancellationToken,
    leave: CancellationToken,
) -> (String, bool) {
    let retry_pause = (options.heartbeat_interval / 5)
        .clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut was_registered = false;
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return (url, false),
            outcome = session(&url, &options, &mut was_registered, &leave) => outcome,
        };
        match outcome {
            Ok(deregistered) => return (url, deregistered),
            Err(err) if was_registered => {
                tracing::warn!(registry = %url, error = %err, "lost the registry; registering again")
            }
            Err(err) => {
                tracing::debug!(registry = %url, error = %err, "registry not reachable yet")
            }
        }
        was_registered = false;
        tokio::select! {
            () = stop.cancelled() => return (url, false),
            () = leave.cancelled() => return (url, false),
            () = tokio::time::sleep(retry_pause) => {}
        }
    }
}

type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// One connection's worth of registration; returns an error when it
/// breaks, or, once `leave` is cancelled, whether it deregistered.
async fn session(
    url: &str,
    options: &RegistrarOptions,
    registered: &mut bool,
    leave: &CancellationToken,
) -> Result<bool, SessionError> {
    if leave.is_cancelled() {
        return Ok(false);
    }
    let channel = options
        .transport
        .channel(url, Some(crate::REGISTRY_SERVICE))
        .await?;
    let mut client = RegistryClient::new(channel);
    let mut instance = options.instance.clone();
    instance.ttl = Some(prost_types::Duration::try_from(options.ttl)?);
    let register = RegisterRequest {
        instance: Some(instance),
    };
    client.register(register.clone()).await?;
    *registered = true;
    tracing::info!(registry = %url, instance = %options.instance.id, "registered");

    let beat = KeepAliveRequest {
        service: options.instance.service.clone(),
        instance_id: options.instance.id.clone(),
    };
    let (beats, beat_stream) = mpsc::channel(4);
    beats.send(beat.clone()).await?;
    let mut replies = client
        .keep_alive(ReceiverStream::new(beat_stream))
        .await?
        .into_inner();
    let mut ticker = tokio::time::interval(options.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_reply = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = leave.cancelled() => {
                // Deregister while the stream is still open: the registry
                // removes the instance as deregistered, and the stream's
                // close that follows finds nothing left to remove.
                let call = client.deregister(deregister_request(options));
                let outcome = tokio::time::timeout(DEREGISTER_WAIT, call).await;
                return Ok(report_deregistered(url, outcome));
            }
            _ = ticker.tick() => {
                if last_reply.elapsed() > options.ttl {
                    return Err("no keep-alive reply within the TTL".into());
                }
                beats.send(beat.clone()).await?;
            }
            reply = replies.message() => {
                let Some(reply) = reply? else {
                    return Err("the registry closed the keep-alive stream".into());
                };
                last_reply = Instant::now();
                if !reply.known {
                    tracing::info!(registry = %url, "the registry forgot this instance; registering again");
                    client.register(register.clone()).await?;
                }
            }
        }
    }
}
