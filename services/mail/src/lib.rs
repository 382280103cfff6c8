//! The mail grantmesh sends — today, the codes that prove a researcher
//! owns the email they sign up with.
//!
//! A [`Mailer`] delivers a [`Mail`] one of two ways: to an SMTP relay
//! (`smtp://host:port`, `smtps://…`, `smtp://…?tls=required`, with
//! credentials in the URL, as lettre reads it), or into an **outbox**: a
//! directory where each message is one RFC 5322 file (`*.eml`, mode 0600),
//! which `grantmesh dev` keeps as its mail catcher and [`outbox::read`]
//! reads back (it also reads a Maildir's `new/` and `cur/`, as a test SMTP
//! server writes them).
//!
//! Services do not wait for the relay: they [`MailQueue::post`] a message
//! and one task per process delivers the queue in order. The queue is
//! bounded; a full queue refuses the message (the caller logs and counts
//! it) rather than holding more.

pub mod outbox;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use outbox::Letter;

/// The sender of every message unless configured otherwise.
pub const DEFAULT_FROM: &str = "grantmesh <no-reply@grantmesh.invalid>";
/// How long one delivery to the relay may take before it counts as failed.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages a [`MailQueue`] holds before it refuses more.
pub const QUEUE_CAPACITY: usize = 1024;

/// One message: plain text to one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("{0} is not a mail address: {1}")]
    Address(String, lettre::address::AddressError),
    #[error("the SMTP URL is not one lettre reads (smtp://host:port, smtps://…): {0}")]
    Url(lettre::transport::smtp::Error),
    #[error("the message could not be built: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("the SMTP relay refused or did not take the message: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("the outbox {0} cannot be written: {1}")]
    Outbox(PathBuf, std::io::Error),
}

enum Transport {
    Smtp {
        relay: AsyncSmtpTransport<Tokio1Executor>,
        /// The URL without its credentials, for logs.
        shown: String,
    },
    Outbox(PathBuf),
}

/// Delivers [`Mail`] by SMTP or into an outbox directory.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

fn mailbox(address: &str) -> Result<Mailbox, MailError> {
    address
        .parse()
        .map_err(|err| MailError::Address(address.to_owned(), err))
}

/// `url` without its user and password, for logs.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Mailer {
    /// Delivers through the SMTP relay at `url`, as `from`.
    /// Call within a Tokio runtime (the relay's connection pool runs on it).
    pub fn smtp(url: &str, from: &str) -> Result<Self, MailError> {
        let from = mailbox(from)?;
        let relay = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(MailError::Url)?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        Ok(Self {
            transport: Transport::Smtp {
                relay,
                shown: without_credentials(url),
            },
            from,
        })
    }

    /// Keeps every message as a file in `dir` (made, mode 0700, if missing).
    pub fn outbox(dir: impl Into<PathBuf>, from: &str) -> Result<Self, MailError> {
        let dir = dir.into();
        outbox::prepare(&dir).map_err(|err| MailError::Outbox(dir.clone(), err))?;
        Ok(Self {
            transport: Transport::Outbox(dir),
            from: mailbox(from)?,
        })
    }

    /// Where messages go, for the start-up log: the relay (without
    /// credentials) or the outbox.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp { shown, .. } => format!("SMTP relay {shown}"),
            Transport::Outbox(dir) => format!("outbox {}", dir.display()),
        }
    }

    /// The outbox directory, when messages are kept in one.
    pub fn outbox_dir(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Outbox(dir) => Some(dir),
            Transport::Smtp { .. } => None,
        }
    }

    /// Delivers `mail` now.
    pub async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let message = Message::builder()
            .from(self.from.clone())
            .to(mailbox(&mail.to)?)
            .subject(mail.subject.clone())
            .body(mail.body.clone())?;
        match &self.transport {
            Transport::Smtp { relay, .. } => {
                relay.send(message).await?;
            }
            Transport::Outbox(dir) => {
                let (target, to, bytes) = (dir.clone(), mail.to.clone(), message.formatted());
                tokio::task::spawn_blocking(move || outbox::keep(&target, &to, &bytes))
                    .await
                    .unwrap_or_else(|err| Err(std::io::Error::other(err.to_string())))
                    .map_err(|err| MailError::Outbox(dir.clone(), err))?;
            }
        }
        Ok(())
    }
}

/// A bounded queue of messages, delivered in order by one task.
#[derive(Clone)]
pub struct MailQueue {
    sender: mpsc::Sender<Mail>,
}

impl MailQueue {
    /// Starts the task that delivers what is posted through `mailer` (call
    /// within a Tokio runtime). It ends when every clone of the queue is
    /// dropped and what was queued is delivered, or at `closing` (what is
    /// queued then is dropped, logged).
    pub fn start(mailer: Mailer, capacity: usize, closing: CancellationToken) -> Self {
        let (sender, mut queue) = mpsc::channel::<Mail>(capacity.max(1));
        tokio::spawn(async move {
            loop {
                let mail = tokio::select! {
                    mail = queue.recv() => match mail {
                        Some(mail) => mail,
                        None => break,
                    },
                    () = closing.cancelled() => break,
                };
                match mailer.send(&mail).await {
                    Ok(()) => tracing::debug!(to = %mail.to, subject = %mail.subject, "mail sent"),
                    Err(err) => {
                        tracing::warn!(to = %mail.to, subject = %mail.subject, error = %err, "mail not sent")
                    }
                }
            }
            let dropped = queue.len();
            if dropped > 0 {
                tracing::warn!(dropped, "stopping with mail not yet sent");
            }
        });
        Self { sender }
    }

    /// Queues `mail`; `false` when the queue is full (or stopped) and the
    /// message was not taken.
    pub fn post(&self, mail: Mail) -> bool {
        self.sender.try_send(mail).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_left_out_of_the_relay_shown_in_logs() {
        assert_eq!(
            without_credentials("smtps://user:secret@relay.example:465"),
            "smtps://relay.example:465"
        );
        assert_eq!(without_credentials("smtp://relay:25"), "smtp://relay:25");
    }

    #[tokio::test]
    async fn a_sender_that_is_not_an_address_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Mailer::outbox(dir.path(), "not an address").is_err());
        assert!(Mailer::smtp("smtp://127.0.0.1:25", "nobody").is_err());
        assert!(Mailer::smtp("ftp://127.0.0.1", DEFAULT_FROM).is_err());
    }

    #[tokio::test]
    async fn a_message_kept_in_the_outbox_reads_back_as_it_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::outbox(dir.path().join("mail"), DEFAULT_FROM).unwrap();
        let mail = Mail {
            to: "ada@uni.edu".into(),
            subject: "Your code".into(),
            body: "Your code is 12345678.\nIt lasts an hour.\n".into(),
        };
        mailer.send(&mail).await.unwrap();
        mailer
            .send(&Mail {
                to: "grace@uni.edu".into(),
                ..mail.clone()
            })
            .await
            .unwrap();
        let letters = outbox::read(&dir.path().join("mail")).unwrap();
        let latest = outbox::latest_to(&dir.path().join("mail"), "Grace@Uni.edu").unwrap();
        assert_eq!(latest.map(|l| l.to).as_deref(), Some("grace@uni.edu"));
        assert!(
            outbox::latest_to(&dir.path().join("mail"), "nobody@uni.edu")
                .unwrap()
                .is_none()
        );
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[0].to, "ada@uni.edu");
        assert_eq!(letters[1].to, "grace@uni.edu");
        assert_eq!(letters[0].subject, "Your code");
        assert_eq!(letters[0].body.trim_end(), mail.body.trim_end());
        assert!(letters[0].from.contains("no-reply@grantmesh.invalid"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&letters[0].file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "a message is readable by its owner only");
        }
    }
}
