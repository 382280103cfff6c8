//! Email ownership (issue 19): a researcher exists only once the code mailed
//! to their address comes back with the password they signed up with. The
//! attacks: a stranger signs up with the email of someone invited to an
//! account, to take the invitation; a stranger's sign-up of a registered
//! email, or of a new one, tells them which emails exist.
//!
//! The first test is the whole path on real parts: a registry and a college
//! of the real binary on TLS, the college mailing through a real SMTP server
//! (Python's `aiosmtpd`, keeping what it receives as a Maildir) that stands
//! for the researchers' mailboxes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use grantmesh_proto::CollegeClient;
use grantmesh_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::support::sandbox::{DAY, Mesh};
use crate::support::*;

/// A real SMTP server on a free loopback port, keeping every message it
/// receives in a Maildir; killed when dropped.
struct SmtpServer {
    _child: tokio::process::Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        let python = python_env_bin().await.join("python");
        let dir = tempfile::tempdir().unwrap();
        // aiosmtpd makes the Maildir itself (it must not exist yet).
        let maildir = dir.path().join("maildir");
        let port = free_port();
        let child = tokio::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("aiosmtpd starts");
        assert_eventually(Duration::from_secs(15), "aiosmtpd listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        SmtpServer {
            _child: child,
            port,
            maildir,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The messages to `to` it received, oldest first.
    fn mail_to(&self, to: &str) -> Vec<grantmesh_mail::Letter> {
        grantmesh_mail::outbox::read(&self.maildir)
            .unwrap()
            .into_iter()
            .filter(|letter| letter.to == to)
            .collect()
    }

    /// Waits until `to` has received `n` messages; returns the newest.
    async fn nth_mail_to(&self, to: &str, n: usize) -> grantmesh_mail::Letter {
        assert_eventually(
            Duration::from_secs(15),
            &format!("message {n} to {to}"),
            || async { self.mail_to(to).len() >= n },
        )
        .await;
        self.mail_to(to).pop().unwrap()
    }

    fn path(&self) -> &Path {
        &self.maildir
    }
}

fn code_of(letter: &grantmesh_mail::Letter) -> String {
    grantmesh_auth::signup::code_in(&letter.body)
        .unwrap_or_else(|| panic!("no code in {:?}", letter.body))
}

fn sign_up_request(name: &str, email: &str, password: &str) -> RegisterResearcherRequest {
    RegisterResearcherRequest {
        name: name.into(),
        email: email.into(),
        password: password.into(),
    }
}

fn verify_request(email: &str, code: &str, password: &str) -> VerifyEmailRequest {
    VerifyEmailRequest {
        email: email.into(),
        code: code.into(),
        password: password.into(),
    }
}

fn log_in(email: &str, password: &str) -> LoginRequest {
    LoginRequest {
        email: email.into(),
        password: password.into(),
    }
}

/// Opens an account of `award` for `pi` as the agency `nsf` (its
/// certificate, its credential).
async fn open_account(college_url: &str, pi: &str, award: i64) -> Account {
    let open = OpenAccountRequest {
        proposal_id: Uuid::new_v4().to_string(),
        agency: "nsf".into(),
        principal_investigator_id: pi.into(),
        title: "Invited".into(),
        award_minor: award,
        duration_days: 30,
        currency: "USD".into(),
    };
    let credential = agency_credential("nsf", &open);
    CollegeClient::new(tls::channel_as(college_url, "agency/nsf").await)
        .open_account(authed(open, &credential))
        .await
        .expect("nsf opens the account")
        .into_inner()
}

#[tokio::test]
async fn a_stranger_signing_up_with_an_invited_email_gets_neither_the_account_nor_the_invitation() {
    let smtp = SmtpServer::start().await;
    let db = db::TestDb::create().await;
    let dir = tls::dir().to_str().unwrap().to_owned();
    let registry = Proc::registry(&["--tls-dir", &dir]).await;
    let college = Proc::member(
        "college",
        &registry.url(),
        &[
            "--tls-dir",
            &dir,
            "--database-url",
            &db.url,
            "--instance-id",
            "college-mail",
            "--smtp-url",
            &smtp.url(),
            // Short, so the owner's own sign-up need not wait a minute
            // after the stranger's.
            "--signup-resend-after",
            "1s",
        ],
    )
    .await;
    let mut client = CollegeClient::new(tls::channel(&college.url()).await);

    // The principal investigator signs up through the real mailbox.
    let pi_email = format!("pi-{}@university.edu", Uuid::new_v4().simple());
    client
        .register_researcher(sign_up_request("Ada", &pi_email, "correct horse battery"))
        .await
        .unwrap();
    let letter = smtp.nth_mail_to(&pi_email, 1).await;
    assert!(letter.from.contains("grantmesh.invalid"), "{letter:?}");
    let pi = client
        .verify_email(verify_request(
            &pi_email,
            &code_of(&letter),
            "correct horse battery",
        ))
        .await
        .expect("the mailed code and the password make the researcher")
        .into_inner();
    let pi_id = pi.researcher.unwrap().researcher_id;
    let account = open_account(&college.url(), &pi_id, 400_000).await;

    // She invites a student who has no account yet.
    let student = format!("student-{}@university.edu", Uuid::new_v4().simple());
    client
        .add_member(authed(
            AddMemberRequest {
                account_id: account.account_id.clone(),
                email: student.clone(),
            },
            &pi.token,
        ))
        .await
        .unwrap();

    // Mallory signs up with the student's email: the reply looks like any
    // sign-up, but nothing exists, so there is nobody to log in as or to
    // accept with. Her code went to the student's mailbox.
    let mallory = "mallory's own passphrase";
    let reply = client
        .register_researcher(sign_up_request("Mallory", &student, mallory))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.researcher_id, "");
    let mallorys_code = code_of(&smtp.nth_mail_to(&student, 1).await);
    let refused = client.login(log_in(&student, mallory)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    for guess in ["00000000", "12345678", "99999999"] {
        let refused = client
            .verify_email(verify_request(&student, guess, mallory))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    // The student, reading Mallory's message in their own mailbox, cannot
    // turn it into an account with their own password either: a code
    // makes only the sign-up it was mailed for.
    let student_password = "quartz heron battery staple";
    let refused = client
        .verify_email(verify_request(&student, &mallorys_code, student_password))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let researchers = |email: String| {
        let db = &db;
        async move {
            let row = db
                .client()
                .await
                .query_one(
                    "SELECT count(*) FROM researchers WHERE email = $1",
                    &[&email],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };
    assert_eq!(
        researchers(student.clone()).await,
        0,
        "Mallory's sign-up made nobody"
    );

    // The student signs up for real, a moment later: a new code, to them.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    client
        .register_researcher(sign_up_request("Sam", &student, student_password))
        .await
        .unwrap();
    let own_code = code_of(&smtp.nth_mail_to(&student, 2).await);
    assert_ne!(own_code, mallorys_code);
    // Mallory's old code (with her password) is void now.
    let refused = client
        .verify_email(verify_request(&student, &mallorys_code, mallory))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let sam = client
        .verify_email(verify_request(&student, &own_code, student_password))
        .await
        .expect("the owner's code and password make their account")
        .into_inner();
    let invitations = client
        .list_invitations(authed(ListInvitationsRequest {}, &sam.token))
        .await
        .unwrap()
        .into_inner()
        .invitations;
    assert_eq!(invitations.len(), 1, "the invitation waited for its owner");
    let joined = client
        .accept_invitation(authed(
            AcceptInvitationRequest {
                invitation_id: invitations[0].invitation_id.clone(),
            },
            &sam.token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        joined
            .members
            .iter()
            .any(|m| m.researcher_id == sam.researcher.as_ref().unwrap().researcher_id)
    );
    // Mallory's password opens nothing.
    let refused = client.login(log_in(&student, mallory)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(researchers(student.clone()).await, 1);
    assert!(smtp.path().exists());
}

async fn college(mesh: &Mesh) -> CollegeClient<Channel> {
    mesh.college(0).await
}

#[tokio::test]
async fn a_code_takes_five_wrong_tries_then_is_dead_even_when_right() {
    let mesh = Mesh::start(DAY).await;
    let mut client = college(&mesh).await;
    let email = format!("tries-{}@university.edu", Uuid::new_v4().simple());
    let password = "correct horse battery";
    client
        .register_researcher(sign_up_request("Tries", &email, password))
        .await
        .unwrap();
    let code = mailed_code(&email).await;
    let wrong = if code == "11111111" {
        "22222222"
    } else {
        "11111111"
    };
    let mut messages = Vec::new();
    for _ in 0..5 {
        let refused = client
            .verify_email(verify_request(&email, wrong, password))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        messages.push(refused.message().to_owned());
    }
    let refused = client
        .verify_email(verify_request(&email, &code, password))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(
        refused.message(),
        messages[0],
        "a dead sign-up answers as a wrong code does"
    );
    // Not digits: said plainly, and no try is spent.
    let refused = client
        .verify_email(verify_request(&email, "a code", password))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("8 digits"), "{refused:?}");
}

#[tokio::test]
async fn sign_up_then_log_in_answers_alike_for_new_and_registered_emails() {
    let mesh = Mesh::start(DAY).await;
    let mut client = college(&mesh).await;
    let owner = format!("owner-{}@university.edu", Uuid::new_v4().simple());
    sign_up(&mut client, "Owner", &owner, "correct horse battery").await;
    let fresh = format!("fresh-{}@university.edu", Uuid::new_v4().simple());
    let guess = "quartz heron battery staple";

    let mut answers = Vec::new();
    for email in [&owner, &fresh] {
        let signed_up = client
            .register_researcher(sign_up_request("Mallory", email, guess))
            .await
            .unwrap()
            .into_inner();
        let login = client.login(log_in(email, guess)).await.unwrap_err();
        answers.push((
            signed_up.researcher_id,
            signed_up.name,
            login.code(),
            login.message().to_owned(),
        ));
    }
    assert_eq!(
        answers[0], answers[1],
        "a registered email and a new one answer alike"
    );
    assert_eq!(answers[0].2, Code::Unauthenticated);

    // The owner was told, without a code; the new address got a code.
    let letter = grantmesh_mail::outbox::latest_to(outbox(), &owner)
        .unwrap()
        .unwrap();
    assert!(letter.subject.contains("sign up"), "{letter:?}");
    assert_eq!(grantmesh_auth::signup::code_in(&letter.body), None);
    assert!(
        mailed_code(&fresh).await.len() == 8,
        "the new address got a code"
    );
    // The owner's password still logs in.
    client
        .login(log_in(&owner, "correct horse battery"))
        .await
        .expect("the owner is untouched");
}
