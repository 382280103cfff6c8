//! The researcher's commands: register, log in, propose, and use accounts —
//! every call found through the registry and balanced across instances.
//!
//! The bearer token comes from `grantmesh login` and is passed back with
//! `--token` or `GRANTMESH_TOKEN`. Output is one JSON object per line, the
//! same field names as `grpcurl` prints.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use grantmesh_discovery::{Balancer, BalancerOptions, parse_registry_list};
use grantmesh_proto::v1::*;
use grantmesh_proto::{AgencyClient, CollegeClient};
use tonic::Request;

#[derive(Args, Debug)]
pub struct Target {
    /// Registry replicas to discover instances through, comma separated.
    #[arg(
        long,
        env = "GRANTMESH_REGISTRY",
        default_value = "http://127.0.0.1:7000",
        global = true
    )]
    registry: String,
    /// Bearer token from `grantmesh login`.
    #[arg(long, env = "GRANTMESH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Grant {
    /// Create a researcher at the college.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long, env = "GRANTMESH_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Log in; prints the bearer token (use it as GRANTMESH_TOKEN).
    Login {
        #[arg(long)]
        email: String,
        #[arg(long, env = "GRANTMESH_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Submit a grant proposal to an agency; you are its principal investigator.
    Propose {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Requested award in minor units.
        #[arg(long)]
        amount: i64,
        /// Duration in days.
        #[arg(long)]
        days: u32,
        /// Which agency (its --name); any when omitted.
        #[arg(long)]
        agency: Option<String>,
        /// Idempotency key; a fresh one by default. Reuse it to retry safely.
        #[arg(long)]
        key: Option<String>,
    },
    /// Your proposals at an agency.
    Proposals {
        #[arg(long)]
        agency: Option<String>,
    },
    /// Your accounts, or one account in full.
    Account { account_id: Option<String> },
    /// Add a researcher (by email) to an account you lead.
    AddMember { account_id: String, email: String },
    /// Remove a member from an account you lead.
    RemoveMember {
        account_id: String,
        researcher_id: String,
    },
    /// Withdraw from an account you are a member of.
    Withdraw {
        account_id: String,
        /// Amount in minor units.
        amount: i64,
        #[arg(long, default_value = "")]
        memo: String,
        /// Idempotency key; a fresh one by default. Reuse it to retry safely.
        #[arg(long)]
        key: Option<String>,
    },
    /// An account's journal, newest first.
    Transactions {
        account_id: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Follow an account's balance, membership and expiry until interrupted.
    Watch { account_id: String },
}

struct Session {
    target: Target,
}

impl Session {
    fn balancer(&self, service: &str, labels: Vec<(String, String)>) -> Balancer {
        let options = BalancerOptions {
            labels,
            ..BalancerOptions::default()
        };
        Balancer::new(parse_registry_list(&self.target.registry), service, options)
    }

    fn colleges(&self) -> Balancer {
        self.balancer("college", Vec::new())
    }

    fn agencies(&self, name: &Option<String>) -> Balancer {
        let labels = name
            .iter()
            .map(|n| ("agency".to_owned(), n.clone()))
            .collect();
        self.balancer("agency", labels)
    }

    fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let token = self
            .target
            .token
            .as_deref()
            .context("no token: run `grantmesh login` and set GRANTMESH_TOKEN")?;
        let mut request = Request::new(message);
        grantmesh_auth::authorize(&mut request, token)?;
        Ok(request)
    }
}

fn fresh_key() -> String {
    grantmesh_discovery::new_instance_id("cli")
}

fn print(value: serde_json::Value) {
    println!("{value}");
}

/// Calls a College with a fresh copy of `$message` per attempt.
macro_rules! college {
    ($session:expr, $method:ident, $message:expr, $authed:expr) => {{
        let message = $message;
        let authed: bool = $authed;
        let balancer = $session.colleges();
        let token = if authed {
            Some($session.request(())?)
        } else {
            None
        };
        balancer
            .call(|channel| {
                let mut request = Request::new(message.clone());
                if let Some(t) = &token {
                    *request.metadata_mut() = t.metadata().clone();
                }
                async move { CollegeClient::new(channel).$method(request).await }
            })
            .await
            .with_context(|| format!("{} failed", stringify!($method)))?
            .into_inner()
    }};
}

macro_rules! agency {
    ($session:expr, $agency:expr, $method:ident, $message:expr) => {{
        let message = $message;
        let balancer = $session.agencies($agency);
        let token = $session.request(())?;
        balancer
            .call(|channel| {
                let mut request = Request::new(message.clone());
                *request.metadata_mut() = token.metadata().clone();
                async move { AgencyClient::new(channel).$method(request).await }
            })
            .await
            .with_context(|| format!("{} failed", stringify!($method)))?
            .into_inner()
    }};
}

pub async fn run(target: Target, command: Grant) -> anyhow::Result<ExitCode> {
    let session = Session { target };
    match command {
        Grant::Register {
            name,
            email,
            password,
        } => {
            let r = college!(
                session,
                register_researcher,
                RegisterResearcherRequest {
                    name,
                    email,
                    password
                },
                false
            );
            print(
                serde_json::json!({"researcherId": r.researcher_id, "name": r.name, "email": r.email}),
            );
        }
        Grant::Login { email, password } => {
            let reply = college!(session, login, LoginRequest { email, password }, false);
            println!("{}", reply.token);
        }
        Grant::Propose {
            title,
            description,
            amount,
            days,
            agency,
            key,
        } => {
            let message = SubmitProposalRequest {
                title,
                description,
                requested_amount_minor: amount,
                duration_days: days,
                idempotency_key: key.unwrap_or_else(fresh_key),
            };
            let p = agency!(session, &agency, submit_proposal, message);
            print(proposal_json(&p));
        }
        Grant::Proposals { agency } => {
            let mut token = String::new();
            loop {
                let reply = agency!(
                    session,
                    &agency,
                    list_proposals,
                    ListProposalsRequest {
                        page_size: 100,
                        page_token: token.clone()
                    }
                );
                reply.proposals.iter().for_each(|p| print(proposal_json(p)));
                if reply.next_page_token.is_empty() {
                    break;
                }
                token = reply.next_page_token;
            }
        }
        Grant::Account {
            account_id: Some(account_id),
        } => {
            let a = college!(session, get_account, GetAccountRequest { account_id }, true);
            print(account_json(&a));
        }
        Grant::Account { account_id: None } => {
            let reply = college!(session, list_accounts, ListAccountsRequest {}, true);
            reply.accounts.iter().for_each(|a| print(account_json(a)));
        }
        Grant::AddMember { account_id, email } => {
            let a = college!(
                session,
                add_member,
                AddMemberRequest { account_id, email },
                true
            );
            print(account_json(&a));
        }
        Grant::RemoveMember {
            account_id,
            researcher_id,
        } => {
            let a = college!(
                session,
                remove_member,
                RemoveMemberRequest {
                    account_id,
                    researcher_id
                },
                true
            );
            print(account_json(&a));
        }
        Grant::Withdraw {
            account_id,
            amount,
            memo,
            key,
        } => {
            let message = WithdrawRequest {
                account_id,
                amount_minor: amount,
                idempotency_key: key.unwrap_or_else(fresh_key),
                memo,
            };
            let reply = college!(session, withdraw, message, true);
            let mut json = transaction_json(reply.transaction.as_ref());
            json["balanceMinor"] = reply.balance_minor.into();
            json["replayed"] = reply.replayed.into();
            print(json);
        }
        Grant::Transactions { account_id, limit } => {
            let reply = college!(
                session,
                list_transactions,
                ListTransactionsRequest {
                    account_id,
                    page_size: limit,
                    page_token: String::new()
                },
                true
            );
            reply
                .transactions
                .iter()
                .for_each(|t| print(transaction_json(Some(t))));
        }
        Grant::Watch { account_id } => {
            let mut events = college!(
                session,
                watch_account,
                WatchAccountRequest { account_id },
                true
            );
            while let Some(event) = events.message().await.context("the watch ended")? {
                let mut json = serde_json::json!({"kind": event.kind().as_str_name()});
                if let Some(account) = &event.account {
                    json["account"] = account_json(account);
                }
                if event.transaction.is_some() {
                    json["transaction"] = transaction_json(event.transaction.as_ref());
                }
                print(json);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn proposal_json(p: &Proposal) -> serde_json::Value {
    serde_json::json!({
        "proposalId": p.proposal_id, "agency": p.agency, "title": p.title,
        "requestedAmountMinor": p.requested_amount_minor, "durationDays": p.duration_days,
        "decision": p.decision().as_str_name(), "reason": p.reason, "accountId": p.account_id,
    })
}

fn account_json(a: &Account) -> serde_json::Value {
    serde_json::json!({
        "accountId": a.account_id, "proposalId": a.proposal_id, "agency": a.agency, "title": a.title,
        "awardMinor": a.award_minor, "balanceMinor": a.balance_minor, "state": a.state().as_str_name(),
        "expiresAt": a.expires_at.map(|t| t.to_string()),
        "members": a.members.iter().map(|m| serde_json::json!({
            "researcherId": m.researcher_id, "name": m.name, "email": m.email, "role": m.role().as_str_name(),
        })).collect::<Vec<_>>(),
    })
}

fn transaction_json(t: Option<&Transaction>) -> serde_json::Value {
    let Some(t) = t else {
        return serde_json::json!({});
    };
    serde_json::json!({
        "transactionId": t.transaction_id, "accountId": t.account_id, "researcherId": t.researcher_id,
        "amountMinor": t.amount_minor, "memo": t.memo, "idempotencyKey": t.idempotency_key,
        "balanceAfterMinor": t.balance_after_minor, "createdAt": t.created_at.map(|c| c.to_string()),
    })
}
