//! The researcher's commands: sign up, log in, propose, and use accounts —
//! every call found through the registry and balanced across instances.
//!
//! `login` keeps the token in the session file ([`crate::session`]); every
//! other command takes it from there unless `--token`/`GRANTMESH_TOKEN` is
//! given. Replies print as tables, or as protobuf JSON with `--output json`.

use std::future::Future;
use std::io::BufRead as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use grantmesh_discovery::{Balancer, BalancerOptions, parse_registry_list};
use grantmesh_proto::v1::*;
use grantmesh_proto::{AgencyClient, CollegeClient};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::exit::CliError;
use crate::output::{self, Format};
use crate::session::{Session, Store};

/// Where the mesh is found when neither a flag, the environment nor the session says.
pub use crate::transport::DEFAULT_REGISTRY;

/// Proposals fetched per page; the agency caps pages anyway.
const PROPOSALS_PAGE_SIZE: u32 = 100;

/// How many times in a row `watch` reopens its stream before giving up: enough
/// to ride out a drain or a crash while the registry catches up (a TTL of a
/// few seconds), few enough that a mesh that is gone is reported.
const WATCH_REOPENS: u32 = 6;
/// First pause before reopening a watch; doubled each failure up to the cap.
const WATCH_BACKOFF: Duration = Duration::from_millis(250);
const WATCH_BACKOFF_CAP: Duration = Duration::from_secs(2);
/// A watch that stayed open this long before ending starts its count of
/// reopens afresh; one that keeps ending sooner (a flapping mesh) uses them up.
const WATCH_STABLE: Duration = Duration::from_secs(30);

/// Most pages of accounts `accounts` reads (5,000 accounts at the server's
/// default page size): a bound on a loop over a server's answers.
const MAX_ACCOUNT_PAGES: usize = 100;

/// Which mesh to talk to and as whom; every researcher command takes these.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Registry replicas to discover instances through, comma separated
    /// [default: the one used at login, else https://127.0.0.1:7000].
    #[arg(long, env = "GRANTMESH_REGISTRY")]
    registry: Option<String>,
    /// Bearer token; overrides the saved login session.
    #[arg(long, env = "GRANTMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args, Debug)]
pub struct PasswordArgs {
    /// The password; asked for without echo when neither this nor --password-stdin is given.
    #[arg(long, env = "GRANTMESH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Sign up at the college: a code is mailed to EMAIL, and `verify-email`
    /// with it makes your researcher record and logs you in.
    Signup {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Finish signing up with the code mailed to you; logs you in, as `login`.
    VerifyEmail {
        #[arg(long, env = "GRANTMESH_EMAIL")]
        email: String,
        /// The 8 digits from the message (spaces and dashes are ignored).
        #[arg(long)]
        code: String,
        /// The password you signed up with.
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Log in and keep the session for later commands.
    Login {
        #[arg(long, env = "GRANTMESH_EMAIL")]
        email: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Change your password: every session of yours ends (here and in every
    /// other place you are logged in), and this one starts afresh.
    Passwd {
        /// The current password (see --password / --password-stdin).
        #[command(flatten)]
        current: PasswordArgs,
        /// The new password; asked for twice without echo when not given.
        #[arg(long, env = "GRANTMESH_NEW_PASSWORD", hide_env_values = true)]
        new_password: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Forget the saved session.
    Logout,
    /// Who is logged in, and until when (checked with a college: a session
    /// whose store was reset is told to log in again).
    Whoami {
        #[command(flatten)]
        target: Target,
    },
    /// Submit a grant proposal to an agency; you are its principal investigator.
    Propose {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Requested award in the agency's currency, as written: 400000,
        /// 400000.00 or 400,000.00 (sent as minor units, 40000000).
        #[arg(long)]
        amount: String,
        /// Duration in days.
        #[arg(long)]
        days: u32,
        /// Which agency (its name, as `grantmesh agencies` lists them); one of them at random when omitted.
        #[arg(long)]
        agency: Option<String>,
        /// Idempotency key; a fresh one by default. Reuse it to retry safely.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Your proposals at every agency, newest first.
    Proposals {
        /// Only those at this agency (its name, as `grantmesh agencies` lists them).
        #[arg(long)]
        agency: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The funding agencies in the mesh: each with its award band, like a
    /// list of open funding calls.
    Agencies {
        #[command(flatten)]
        target: Target,
    },
    /// One account in full: balance, expiry, members.
    Account {
        account_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// The accounts you are a member of.
    Accounts {
        #[command(flatten)]
        target: Target,
    },
    /// Invite a researcher (by email) to an account you lead; they become a
    /// member once they accept (`grantmesh accept`).
    AddMember {
        account_id: String,
        email: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a member (by researcher id) from an account you lead.
    RemoveMember {
        account_id: String,
        researcher_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Leave an account you are a member of (a principal investigator
    /// hands the role over first: `grantmesh hand-over`).
    Leave {
        account_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Your pending invitations to accounts.
    Invitations {
        #[command(flatten)]
        target: Target,
    },
    /// Accept an invitation: you become a member of its account.
    Accept {
        invitation_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Decline an invitation to you, or withdraw one on an account you lead.
    Decline {
        invitation_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Hand the principal investigator's role on an account you lead to
    /// another member (by email or researcher id); you stay a member.
    HandOver {
        account_id: String,
        /// The member who takes over: their email or researcher id.
        member: String,
        #[command(flatten)]
        target: Target,
    },
    /// Withdraw from an account you are a member of.
    Withdraw {
        account_id: String,
        /// Amount in the account's currency, as written: 12.50, 1,250 or 1250.
        amount: String,
        #[arg(long, default_value = "")]
        memo: String,
        /// Idempotency key; a fresh one by default. Reuse it to retry safely.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// An account's journal, newest first.
    Transactions {
        account_id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// An account's spend against its time: awarded, spent, available, the
    /// burn rate (share of the award spent beside share of the period
    /// elapsed) and when the money runs out at the rate so far
    /// (`--output json|csv` for spreadsheets).
    Report {
        account_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Follow an account's balance, membership and expiry until interrupted;
    /// moves to another college when the one serving it goes away.
    Watch {
        account_id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Saves the session a login (or a verified sign-up) opened, and says so.
fn keep_session(
    store: &Store,
    mesh: &Mesh,
    reply: &LoginReply,
    format: Format,
) -> anyhow::Result<()> {
    let researcher = reply.researcher.clone().unwrap_or_default();
    let session = Session {
        token: reply.token.clone(),
        researcher_id: researcher.researcher_id,
        name: researcher.name,
        email: researcher.email,
        expires_at: output::time(reply.expires_at.as_ref()),
        registry: mesh.registry.clone(),
        refresh_token: reply.refresh_token.clone(),
    };
    let path = store.save(&session)?;
    output::emit(format, reply, |_| {
        output::record(&[
            (
                "logged in as",
                format!("{} <{}>", session.name, session.email),
            ),
            ("researcher", session.researcher_id.clone()),
            ("expires", session.expires_at.clone()),
            ("session", path.display().to_string()),
        ])
    })
}

pub async fn run(verb: Verb, format: Format) -> anyhow::Result<ExitCode> {
    let store = Store::locate()?;
    if !matches!(
        verb,
        Verb::Login { .. } | Verb::VerifyEmail { .. } | Verb::Logout
    ) {
        renew_session(&store).await?;
    }
    match verb {
        Verb::Signup {
            name,
            email,
            password,
            target,
        } => {
            let password = password.read(true)?;
            let mesh = Mesh::new(&store, target, format)?;
            let message = RegisterResearcherRequest {
                name,
                email,
                password,
            };
            let r = mesh
                .college(message, false, |mut c, r| async move {
                    c.register_researcher(r).await
                })
                .await?;
            // The reply is the same whether the email was new or already
            // registered (whose account is left as it was, and whose owner
            // is mailed a notice): the college does not say which emails
            // exist.
            output::emit(format, &r, |r| {
                output::record(&[
                    ("signed up", format!("{} <{}>", r.name, r.email)),
                    (
                        "next",
                        format!(
                            "check {} for a verification code, then: grantmesh verify-email --email {} --code CODE (with your password)",
                            r.email, r.email
                        ),
                    ),
                ])
            })?;
        }
        Verb::VerifyEmail {
            email,
            code,
            password,
            target,
        } => {
            let password = password.read(false)?;
            let mesh = Mesh::new(&store, target, format)?;
            let reply = mesh
                .college(
                    VerifyEmailRequest {
                        email,
                        code,
                        password,
                    },
                    false,
                    |mut c, r| async move { c.verify_email(r).await },
                )
                .await?;
            keep_session(&store, &mesh, &reply, format)?;
        }
        Verb::Passwd {
            current,
            new_password,
            target,
        } => {
            let current_password = current.read(false)?;
            let new_password = PasswordArgs {
                password: new_password,
                password_stdin: false,
            }
            .read_as("New password", true)?;
            let mesh = Mesh::new(&store, target, format)?;
            let reply = mesh
                .college(
                    ChangePasswordRequest {
                        current_password,
                        new_password,
                    },
                    true,
                    |mut c, r| async move { c.change_password(r).await },
                )
                .await?;
            eprintln!("password changed: every other session of yours has ended");
            keep_session(&store, &mesh, &reply, format)?;
        }
        Verb::Login {
            email,
            password,
            target,
        } => {
            let password = password.read(false)?;
            let mesh = Mesh::new(&store, target, format)?;
            let reply = mesh
                .college(
                    LoginRequest { email, password },
                    false,
                    |mut c, r| async move { c.login(r).await },
                )
                .await?;
            keep_session(&store, &mesh, &reply, format)?;
        }
        Verb::Logout => {
            // The session ends at the colleges first (its tokens are refused
            // at every one within seconds), then the file goes.
            if let Some(session) = store.load()? {
                let target = Target {
                    registry: Some(session.registry.clone()),
                    token: None,
                };
                let mesh = Mesh::new(&store, target, format)?;
                let ended = mesh
                    .college(
                        LogoutRequest {
                            refresh_token: session.refresh_token.clone(),
                        },
                        !session.is_expired(SystemTime::now()),
                        |mut c, r| async move { c.logout(r).await },
                    )
                    .await;
                if let Err(err) = ended {
                    eprintln!(
                        "warning: the colleges could not be told to end the session ({err:#}); \
                         its access token stays valid until it expires (at most 15 minutes)"
                    );
                }
            }
            if store.remove()? {
                eprintln!("logged out ({} removed)", store.path().display());
            } else {
                eprintln!("not logged in");
            }
        }
        Verb::Whoami { target } => {
            let session = store.load()?.ok_or(CliError::NotLoggedIn)?;
            if session.is_expired(SystemTime::now()) {
                return Err(CliError::SessionExpired.into());
            }
            // The file alone cannot tell a session whose store was reset
            // (`grantmesh dev --fresh`): ask a college whom the token names.
            let mesh = Mesh::new(&store, target, format)?;
            if let Err(err) = mesh.check_session().await {
                if err.downcast_ref::<CliError>().is_some() {
                    return Err(err);
                }
                let (message, _) = crate::exit::describe(&err);
                eprintln!("(not checked with the mesh: {message})");
            }
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "researcherId": session.researcher_id, "name": session.name,
                        "email": session.email, "expiresAt": session.expires_at,
                        "registry": session.registry,
                    })
                ),
                Format::Table | Format::Csv => println!(
                    "{}",
                    output::record(&[
                        (
                            "logged in as",
                            format!("{} <{}>", session.name, session.email)
                        ),
                        ("researcher", session.researcher_id.clone()),
                        ("expires", session.expires_at.clone()),
                        ("registry", session.registry.clone()),
                    ])
                    .trim_fmt()
                ),
            }
        }
        Verb::Propose {
            title,
            description,
            amount,
            days,
            agency,
            key,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            // "Any agency" means one, chosen now: the balancer retries an
            // unavailable call on another instance, and another agency's
            // instance would decide the same proposal a second time.
            // Not logged in is said before anything goes over the network.
            mesh.credentials()?;
            let agency = match agency {
                Some(name) => Some(mesh.known_agency(name).await?),
                None => {
                    use rand::seq::IndexedRandom as _;
                    let names = mesh.agency_names().await?;
                    let chosen = names.choose(&mut rand::rng()).cloned();
                    if let Some(name) = &chosen {
                        eprintln!(
                            "proposing to {name}, one of: {} (--agency chooses)",
                            names.join(", ")
                        );
                    }
                    chosen
                }
            };
            // The amount is typed in the agency's currency.
            let info = mesh
                .agency(&agency, DescribeAgencyRequest {}, |mut c, r| async move {
                    c.describe_agency(r).await
                })
                .await?;
            let amount = amount_in(&info.currency, &amount)?;
            let message = SubmitProposalRequest {
                title,
                description,
                requested_amount_minor: amount,
                duration_days: days,
                idempotency_key: key.unwrap_or_else(fresh_key),
            };
            let p = mesh
                .agency(&agency, message, |mut c, r| async move {
                    c.submit_proposal(r).await
                })
                .await?;
            output::emit(format, &p, |p| output::proposals(std::slice::from_ref(p)))?;
            if p.decision() == proposal::Decision::Rejected {
                return Err(CliError::Rejected { reason: p.reason }.into());
            }
        }
        Verb::Proposals { agency, target } => {
            let mesh = Mesh::new(&store, target, format)?;
            // One agency when named, else every agency the registry lists:
            // each keeps only its own proposals.
            mesh.credentials()?;
            let names = match agency {
                Some(name) => vec![mesh.known_agency(name).await?],
                None => mesh.agency_names().await?,
            };
            let mut all = ListProposalsReply::default();
            for name in names {
                let name = Some(name);
                let mut page_token = String::new();
                loop {
                    let message = ListProposalsRequest {
                        page_size: PROPOSALS_PAGE_SIZE,
                        page_token,
                    };
                    let page = mesh
                        .agency(&name, message, |mut c, r| async move {
                            c.list_proposals(r).await
                        })
                        .await?;
                    all.proposals.extend(page.proposals);
                    page_token = page.next_page_token;
                    if page_token.is_empty() {
                        break;
                    }
                }
            }
            all.proposals.sort_by(|a, b| {
                let at = |p: &Proposal| p.submitted_at.map(|t| (t.seconds, t.nanos));
                at(b).cmp(&at(a))
            });
            output::emit(format, &all, |all| output::proposals(&all.proposals))?;
        }
        Verb::Agencies { target } => {
            let mesh = Mesh::new(&store, target, format)?;
            let mut agencies = Vec::new();
            for name in mesh.agency_names().await? {
                let info = mesh
                    .agency_call(
                        &Some(name),
                        DescribeAgencyRequest {},
                        false,
                        |mut c, r| async move { c.describe_agency(r).await },
                    )
                    .await?;
                agencies.push(info);
            }
            match format {
                Format::Json => {
                    let listed = agencies
                        .iter()
                        .map(|a| Ok(serde_json::from_str(&output::to_json(a)?)?))
                        .collect::<anyhow::Result<Vec<serde_json::Value>>>()?;
                    println!("{}", serde_json::json!({ "agencies": listed }));
                }
                Format::Table | Format::Csv => {
                    println!("{}", output::agencies(&agencies).trim_fmt())
                }
            }
        }
        Verb::Account { account_id, target } => {
            let mesh = Mesh::new(&store, target, format)?;
            let a = mesh.account(account_id).await?;
            output::emit(format, &a, output::account)?;
        }
        Verb::Accounts { target } => {
            let mesh = Mesh::new(&store, target, format)?;
            // An empty list from a store that was reset would look like
            // "no accounts yet": make sure the session is still someone.
            mesh.check_session().await?;
            // Every page, one after another, shown as one list.
            let mut reply = ListAccountsReply::default();
            let mut page_token = String::new();
            for _ in 0..MAX_ACCOUNT_PAGES {
                let page = mesh
                    .college(
                        ListAccountsRequest {
                            page_size: 0,
                            page_token: page_token.clone(),
                        },
                        true,
                        |mut c, r| async move { c.list_accounts(r).await },
                    )
                    .await?;
                reply.accounts.extend(page.accounts);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            output::emit(format, &reply, |r| output::accounts(&r.accounts))?;
        }
        Verb::AddMember {
            account_id,
            email,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            let message = AddMemberRequest { account_id, email };
            let a = mesh
                .college(
                    message,
                    true,
                    |mut c, r| async move { c.add_member(r).await },
                )
                .await?;
            output::emit(format, &a, output::account)?;
            if format == Format::Table {
                eprintln!(
                    "invited: they become a member once they accept (grantmesh invitations, grantmesh accept ID)"
                );
            }
        }
        Verb::Invitations { target } => {
            let mesh = Mesh::new(&store, target, format)?;
            let reply = mesh
                .college(ListInvitationsRequest {}, true, |mut c, r| async move {
                    c.list_invitations(r).await
                })
                .await?;
            output::emit(format, &reply, |r| output::invitations(&r.invitations))?;
        }
        Verb::Accept {
            invitation_id,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            let a = mesh
                .college_once(
                    AcceptInvitationRequest { invitation_id },
                    |mut c, r| async move { c.accept_invitation(r).await },
                )
                .await?;
            output::emit(format, &a, output::account)?;
        }
        Verb::Decline {
            invitation_id,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            let reply = mesh
                .college_once(
                    DeclineInvitationRequest {
                        invitation_id: invitation_id.clone(),
                    },
                    |mut c, r| async move { c.decline_invitation(r).await },
                )
                .await?;
            output::emit(format, &reply, |_| {
                output::record(&[("declined", invitation_id.clone())])
            })?;
        }
        Verb::HandOver {
            account_id,
            member,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            let account = mesh.account(account_id.clone()).await?;
            // An email is looked up among the members; anything else is
            // taken as a researcher id and judged by the college.
            let wanted = member.trim().to_lowercase();
            let researcher_id = match account
                .members
                .iter()
                .find(|m| m.researcher_id == wanted || m.email.to_lowercase() == wanted)
            {
                Some(m) => m.researcher_id.clone(),
                None if wanted.contains('@') => {
                    return Err(Status::failed_precondition(format!(
                        "{member} is not a member of account {account_id}; invite them (grantmesh add-member) and let them accept first"
                    ))
                    .into());
                }
                None => wanted,
            };
            let a = mesh
                .college_once(
                    TransferPrincipalRequest {
                        account_id,
                        researcher_id,
                    },
                    |mut c, r| async move { c.transfer_principal(r).await },
                )
                .await?;
            output::emit(format, &a, output::account)?;
        }
        Verb::Leave { account_id, target } => {
            let mesh = Mesh::new(&store, target, format)?;
            let researcher_id = mesh
                .session
                .as_ref()
                .map(|session| session.researcher_id.clone())
                .ok_or(CliError::NotLoggedIn)?;
            remove_member(&mesh, account_id, researcher_id, format).await?;
        }
        Verb::RemoveMember {
            account_id,
            researcher_id,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            remove_member(&mesh, account_id, researcher_id, format).await?;
        }
        Verb::Withdraw {
            account_id,
            amount,
            memo,
            key,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            // The amount is typed in the account's currency.
            let account = mesh.account(account_id.clone()).await?;
            let currency = account.currency.clone();
            let amount = amount_in(&currency, &amount)?;
            let message = WithdrawRequest {
                account_id,
                amount_minor: amount,
                idempotency_key: key.unwrap_or_else(fresh_key),
                memo,
            };
            let reply = mesh
                .college(message, true, |mut c, r| async move { c.withdraw(r).await })
                .await?;
            output::emit(format, &reply, |w| {
                let t = w.transaction.clone().unwrap_or_default();
                output::record(&[
                    ("transaction", t.transaction_id),
                    ("account", t.account_id),
                    ("amount", output::money(&currency, t.amount_minor)),
                    ("balance", output::money(&currency, w.balance_minor)),
                    ("memo", t.memo),
                    ("key", t.idempotency_key),
                    (
                        "replayed",
                        if w.replayed {
                            "yes: applied once, earlier"
                        } else {
                            "no"
                        }
                        .to_owned(),
                    ),
                ])
            })?;
        }
        Verb::Transactions {
            account_id,
            limit,
            target,
        } => {
            let mesh = Mesh::new(&store, target, format)?;
            let message = ListTransactionsRequest {
                account_id: account_id.clone(),
                page_size: limit,
                page_token: String::new(),
            };
            let reply = mesh
                .college(message, true, |mut c, r| async move {
                    c.list_transactions(r).await
                })
                .await?;
            // The journal names researchers by id; the account's members
            // give their names (JSON keeps the reply as the server sent it).
            let account = match format {
                Format::Json => Account::default(),
                Format::Table | Format::Csv => mesh.account(account_id).await?,
            };
            if format == Format::Csv {
                crate::report::journal_csv(
                    &reply.transactions,
                    &account.members,
                    &account.currency,
                )?;
            } else {
                output::emit(format, &reply, |r| {
                    output::transactions(&r.transactions, &account.members, &account.currency)
                })?;
            }
        }
        Verb::Report { account_id, target } => {
            let mesh = Mesh::new(&store, target, format)?;
            let account = mesh.account(account_id.clone()).await?;
            let journal = mesh.journal(account_id).await?;
            let report = crate::report::report(&account, &journal, SystemTime::now());
            crate::report::print(&report, format)?;
        }
        Verb::Watch { account_id, target } => {
            let mesh = Mesh::new(&store, target, format)?;
            mesh.watch(account_id).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl PasswordArgs {
    /// The password from the flag or environment, standard input, or a prompt
    /// without echo (twice when `confirm`, as for a new password).
    fn read(self, confirm: bool) -> anyhow::Result<String> {
        self.read_as("Password", confirm)
    }

    /// As [`Self::read`], prompting with `prompt`.
    fn read_as(self, prompt: &str, confirm: bool) -> anyhow::Result<String> {
        let password = if let Some(password) = self.password {
            password
        } else if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("failed to read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        } else {
            let password = rpassword::prompt_password(format!("{prompt}: "))
                .context("failed to ask for the password (no terminal? use --password-stdin)")?;
            if confirm {
                let again = rpassword::prompt_password(format!("{prompt} again: "))
                    .context("failed to ask for the password again")?;
                if again != password {
                    return Err(CliError::Usage("the two passwords differ".to_owned()).into());
                }
            }
            password
        };
        if password.is_empty() {
            return Err(CliError::Usage("the password is empty".to_owned()).into());
        }
        Ok(password)
    }
}

/// Removes a member (or, with the caller's own id, leaves) and shows the account.
async fn remove_member(
    mesh: &Mesh,
    account_id: String,
    researcher_id: String,
    format: Format,
) -> anyhow::Result<()> {
    let message = RemoveMemberRequest {
        account_id,
        researcher_id,
    };
    let account = mesh
        .college_once(message, |mut c, r| async move { c.remove_member(r).await })
        .await?;
    output::emit(format, &account, output::account)
}

/// Renews the saved session's access token when it is about to expire,
/// with its refresh token (the session file is replaced); a session the
/// colleges have ended is reported as such.
async fn renew_session(store: &Store) -> anyhow::Result<()> {
    let Some(session) = store.load()? else {
        return Ok(());
    };
    if !session.needs_refresh(SystemTime::now()) {
        return Ok(());
    }
    let target = Target {
        registry: Some(session.registry.clone()),
        token: None,
    };
    let mesh = Mesh::new(store, target, Format::Table)?;
    let request = RefreshRequest {
        refresh_token: session.refresh_token.clone(),
    };
    let reply = mesh
        .college(request, false, |mut c, r| async move { c.refresh(r).await })
        .await;
    match reply {
        Ok(reply) => {
            store.save(&Session {
                token: reply.token,
                expires_at: output::time(reply.expires_at.as_ref()),
                refresh_token: reply.refresh_token,
                ..session
            })?;
            Ok(())
        }
        Err(err) => match err.downcast_ref::<Status>() {
            Some(status) if status.code() == Code::Unauthenticated => {
                Err(CliError::StaleSession(status.message().to_owned()).into())
            }
            _ => Err(err),
        },
    }
}

/// The mesh as one command sees it: the registry list, the token, the format.
struct Mesh {
    registry: String,
    /// TLS for an https:// registry, plaintext for an http:// one.
    transport: grantmesh_discovery::tls::Transport,
    token: Option<String>,
    session: Option<Session>,
    format: Format,
}

impl Mesh {
    fn new(store: &Store, target: Target, format: Format) -> anyhow::Result<Self> {
        let session = store.load()?;
        let registry = target
            .registry
            .or_else(|| session.as_ref().map(|s| s.registry.clone()))
            .unwrap_or_else(|| DEFAULT_REGISTRY.to_owned());
        Ok(Self {
            transport: crate::transport::for_registries(&registry, None)?,
            registry,
            token: target.token,
            session,
            format,
        })
    }

    /// Asks a college whom the token names. A token for a researcher it does
    /// not know (the store was reset, e.g. `grantmesh dev --fresh`) or one it
    /// refuses is a dead session: the user is told to log in again.
    async fn check_session(&self) -> anyhow::Result<()> {
        let answer = self
            .college(WhoAmIRequest {}, true, |mut c, r| async move {
                c.who_am_i(r).await
            })
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(err) => match err.downcast_ref::<Status>().map(Status::code) {
                Some(Code::NotFound | Code::Unauthenticated) => {
                    let status = err.downcast_ref::<Status>().expect("a status");
                    let reason = status.message().trim_end_matches("; run grantmesh login");
                    Err(CliError::StaleSession(reason.to_owned()).into())
                }
                _ => Err(err),
            },
        }
    }

    /// The `authorization` metadata: `--token`, else the saved session.
    fn credentials(&self) -> anyhow::Result<MetadataMap> {
        let token = match (&self.token, &self.session) {
            (Some(token), _) => token.clone(),
            (None, Some(session)) if session.is_expired(SystemTime::now()) => {
                return Err(CliError::SessionExpired.into());
            }
            (None, Some(session)) => session.token.clone(),
            (None, None) => return Err(CliError::NotLoggedIn.into()),
        };
        let mut request = Request::new(());
        grantmesh_auth::authorize(&mut request, &token)?;
        Ok(request.into_parts().0)
    }

    fn balancer(&self, service: &str, labels: Vec<(String, String)>) -> Balancer {
        let options = BalancerOptions {
            labels,
            transport: self.transport.clone(),
            ..BalancerOptions::default()
        };
        Balancer::new(parse_registry_list(&self.registry), service, options)
    }

    /// One unary (or stream-opening) College call, through the balancer.
    async fn college<Req, Rep, F, Fut>(
        &self,
        message: Req,
        authed: bool,
        method: F,
    ) -> anyhow::Result<Rep>
    where
        Req: Clone,
        F: Fn(CollegeClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let balancer = self.balancer("college", Vec::new());
        self.college_on(&balancer, message, authed, method).await
    }

    /// An authenticated College call that carries no idempotency key: sent
    /// to another instance only if it never reached one
    /// ([`Balancer::call_once`]).
    async fn college_once<Req, Rep, F, Fut>(&self, message: Req, method: F) -> anyhow::Result<Rep>
    where
        Req: Clone,
        F: Fn(CollegeClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let balancer = self.balancer("college", Vec::new());
        let metadata = Some(self.credentials()?);
        let reply = balancer
            .call_once(|channel| {
                method(
                    CollegeClient::new(channel),
                    request(message.clone(), &metadata),
                )
            })
            .await
            .map_err(relogin_hint)?;
        Ok(reply.into_inner())
    }

    async fn college_on<Req, Rep, F, Fut>(
        &self,
        balancer: &Balancer,
        message: Req,
        authed: bool,
        method: F,
    ) -> anyhow::Result<Rep>
    where
        Req: Clone,
        F: Fn(CollegeClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        self.call_on(balancer, CollegeClient::new, message, authed, method)
            .await
    }

    /// One call through `balancer` on the client `client` makes of a
    /// channel, with the token when `authed`.
    async fn call_on<C, Req, Rep, F, Fut>(
        &self,
        balancer: &Balancer,
        client: fn(Channel) -> C,
        message: Req,
        authed: bool,
        method: F,
    ) -> anyhow::Result<Rep>
    where
        Req: Clone,
        F: Fn(C, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let metadata = if authed {
            Some(self.credentials()?)
        } else {
            None
        };
        let reply = balancer
            .call(|channel| method(client(channel), request(message.clone(), &metadata)))
            .await
            .map_err(|status| if authed { relogin_hint(status) } else { status })?;
        Ok(reply.into_inner())
    }

    /// One authenticated Agency call, to the named agency or any.
    async fn agency<Req, Rep, F, Fut>(
        &self,
        name: &Option<String>,
        message: Req,
        method: F,
    ) -> anyhow::Result<Rep>
    where
        Req: Clone,
        F: Fn(AgencyClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        self.agency_call(name, message, true, method).await
    }

    /// One Agency call, to the named agency or any.
    async fn agency_call<Req, Rep, F, Fut>(
        &self,
        name: &Option<String>,
        message: Req,
        authed: bool,
        method: F,
    ) -> anyhow::Result<Rep>
    where
        Req: Clone,
        F: Fn(AgencyClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let labels = name
            .iter()
            .map(|n| ("agency".to_owned(), n.clone()))
            .collect();
        let balancer = self.balancer("agency", labels);
        self.call_on(&balancer, AgencyClient::new, message, authed, method)
            .await
    }

    /// `name` when the registry lists an agency of that name; else
    /// NOT_FOUND naming the agencies it does list, not an outage. Asked once,
    /// where a name typed by the user enters.
    /// An account's whole journal, newest first (at most
    /// [`MAX_ACCOUNT_PAGES`] pages of the college's largest).
    async fn journal(&self, account_id: String) -> anyhow::Result<Vec<Transaction>> {
        let mut journal = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_ACCOUNT_PAGES {
            let message = ListTransactionsRequest {
                account_id: account_id.clone(),
                page_size: 500,
                page_token,
            };
            let page = self
                .college(message, true, |mut c, r| async move {
                    c.list_transactions(r).await
                })
                .await?;
            journal.extend(page.transactions);
            if page.next_page_token.is_empty() {
                return Ok(journal);
            }
            page_token = page.next_page_token;
        }
        anyhow::bail!("the journal of {account_id} is longer than this command reads")
    }

    /// The account, as the caller may see it (`GetAccount`).
    async fn account(&self, account_id: String) -> anyhow::Result<Account> {
        self.college(
            GetAccountRequest { account_id },
            true,
            |mut c, r| async move { c.get_account(r).await },
        )
        .await
    }

    async fn known_agency(&self, name: String) -> anyhow::Result<String> {
        let known = self.agency_names().await?;
        if known.contains(&name) {
            return Ok(name);
        }
        Err(Status::not_found(if known.is_empty() {
            format!("no agency named {name:?}: the mesh lists no agency at all")
        } else {
            format!(
                "no agency named {name:?}; the agencies are: {}",
                known.join(", ")
            )
        })
        .into())
    }

    /// The names of the agencies the registry lists live (their `agency`
    /// label), sorted.
    async fn agency_names(&self) -> anyhow::Result<Vec<String>> {
        let registries = parse_registry_list(&self.registry);
        let (_, reply) = crate::ops::list_from_any(&registries, "agency").await?;
        let names: std::collections::BTreeSet<String> = reply
            .instances
            .iter()
            .filter_map(|i| i.labels.get("agency").cloned())
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Follows an account, reopening the stream on another College when the
    /// one serving it drains or dies (bounded, with backoff).
    async fn watch(&self, account_id: String) -> anyhow::Result<()> {
        let balancer = self.balancer("college", Vec::new());
        let message = WatchAccountRequest { account_id };
        let mut failures = 0u32;
        let mut backoff = WATCH_BACKOFF;
        let mut reopening = false;
        loop {
            let opened = self
                .college_on(&balancer, message.clone(), true, |mut c, r| async move {
                    c.watch_account(r).await
                })
                .await;
            let mut events = match opened {
                Ok(events) => events,
                Err(err) if reopening && failures < WATCH_REOPENS && is_unavailable(&err) => {
                    failures += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(WATCH_BACKOFF_CAP);
                    continue;
                }
                Err(err) => return Err(err),
            };
            let opened_at = tokio::time::Instant::now();
            let ended = loop {
                match events.message().await {
                    Ok(Some(event)) => {
                        if reopening {
                            eprintln!("watch: moved to another college; following again");
                            reopening = false;
                        }
                        self.print_event(&event)?;
                    }
                    Ok(None) => break "the college closed the stream (draining?)".to_owned(),
                    Err(status) if stream_broke(&status) => {
                        let (message, _) = crate::exit::describe(&anyhow::Error::new(status));
                        break message;
                    }
                    Err(status) => return Err(status.into()),
                }
            };
            if opened_at.elapsed() >= WATCH_STABLE {
                // It had settled: this is a new incident, not the same one going on.
                failures = 0;
                backoff = WATCH_BACKOFF;
            }
            if failures >= WATCH_REOPENS {
                return Err(CliError::Unavailable(format!(
                    "the watch ended and could not be reopened: {ended}"
                ))
                .into());
            }
            eprintln!("watch: {ended}; reopening on another college");
            failures += 1;
            reopening = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(WATCH_BACKOFF_CAP);
        }
    }

    fn print_event(&self, event: &AccountEvent) -> anyhow::Result<()> {
        if self.format == Format::Json {
            println!("{}", output::to_json(event)?);
            return Ok(());
        }
        let kind = output::enum_word(event.kind().as_str_name(), "KIND_");
        let account = event.account.clone().unwrap_or_default();
        let mut line = format!(
            "{} {kind:<10} balance {} of {} ({}), {} member(s), expires {}",
            humantime::format_rfc3339_seconds(SystemTime::now()),
            output::money(&account.currency, account.balance_minor),
            output::money(&account.currency, account.award_minor),
            output::enum_word(account.state().as_str_name(), "STATE_"),
            account.members.len(),
            output::time(account.expires_at.as_ref()),
        );
        if let Some(t) = &event.transaction {
            line.push_str(&format!(
                "; withdrew {} by {} ({})",
                output::money(&account.currency, t.amount_minor),
                output::researcher_name(&account.members, &t.researcher_id),
                t.memo
            ));
        }
        println!("{line}");
        Ok(())
    }
}

/// A token the mesh refused (revoked, signed with an old key) needs a new login.
fn relogin_hint(status: Status) -> Status {
    if status.code() == Code::Unauthenticated {
        Status::unauthenticated(format!("{}; run grantmesh login", status.message()))
    } else {
        status
    }
}

fn request<T>(message: T, metadata: &Option<MetadataMap>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(metadata) = metadata {
        *request.metadata_mut() = metadata.clone();
    }
    request
}

/// Whether a watch stream ended because its College went away (so another
/// may carry on) rather than because the College refused it.
fn stream_broke(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled | Code::Internal => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

fn is_unavailable(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Status>()
        .is_some_and(|s| s.code() == Code::Unavailable)
}

/// `text` as minor units of `currency`: `400000`, `400000.00`,
/// `400,000.00` (major units, as people write them; never through floating
/// point), refused in words saying how to write it.
fn amount_in(currency: &str, text: &str) -> anyhow::Result<i64> {
    let currency = grantmesh_proto::money::Currency::parse(if currency.is_empty() {
        grantmesh_proto::money::DEFAULT_CURRENCY
    } else {
        currency
    })
    .map_err(|err| CliError::Usage(err.to_string()))?;
    currency
        .parse_amount(text)
        .map_err(|err| CliError::Usage(format!("{err} ({currency})")).into())
}

fn fresh_key() -> String {
    grantmesh_discovery::new_instance_id("cli")
}

#[cfg(test)]
mod tests {
    use super::amount_in;

    #[test]
    fn amounts_are_typed_in_major_units_of_the_currency() {
        assert_eq!(amount_in("EUR", "400000").unwrap(), 40_000_000);
        assert_eq!(amount_in("EUR", "400,000.00").unwrap(), 40_000_000);
        assert_eq!(amount_in("", "12.5").unwrap(), 1_250);
        assert_eq!(amount_in("JPY", "1500").unwrap(), 1_500);
        let refused = amount_in("EUR", "12.505").unwrap_err().to_string();
        assert!(refused.contains("at most 2 after the point"), "{refused}");
        assert!(refused.contains("EUR"), "{refused}");
    }
}
