//! The pages' templates (askama, compiled in) and the rows they show,
//! made from the services' messages with amounts and times already in words.

use std::time::{SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use grantmesh_proto::v1::{
    Account, Invitation, Member, Proposal, Transaction, account, member, proposal,
};
use serde::Serialize;

use crate::{money, words};

/// What every page's header needs.
pub struct Nav {
    /// The signed-in researcher's name.
    pub user: Option<String>,
    /// The session's CSRF token, for the log-out form and the page's forms.
    pub csrf: String,
    /// A message left by the previous action.
    pub flash: Option<String>,
    /// Whether that message reports a failure.
    pub flash_error: bool,
}

/// Renders `page` with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "a page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "home.html")]
pub struct Home {
    pub nav: Nav,
}

#[derive(Template)]
#[template(path = "signup.html")]
pub struct Signup {
    pub nav: Nav,
    pub error: Option<String>,
    pub name: String,
    pub email: String,
    pub rule: PasswordRule,
}

/// The College's rule for a new password, as the sign-up form states it.
pub struct PasswordRule {
    pub min_chars: usize,
    pub max_chars: usize,
    /// The lowest zxcvbn score accepted, of 4.
    pub min_score: u8,
}

impl PasswordRule {
    /// The rule `grantmesh_auth::check_new_password` applies.
    pub const COLLEGE: Self = Self {
        min_chars: grantmesh_auth::strength::MIN_PASSWORD_CHARS,
        max_chars: grantmesh_auth::strength::MAX_PASSWORD_CHARS,
        min_score: grantmesh_auth::strength::MIN_PASSWORD_SCORE as u8,
    };
}

#[derive(Template)]
#[template(path = "verify.html")]
pub struct Verify {
    pub nav: Nav,
    pub error: Option<String>,
    pub email: String,
    /// Where the dev mail catcher is, when the portal shows one.
    pub dev_mail: bool,
}

#[derive(Template)]
#[template(path = "dev_mail.html")]
pub struct DevMail {
    pub nav: Nav,
    pub outbox: String,
    /// Newest first.
    pub letters: Vec<DevLetter>,
}

pub struct DevLetter {
    pub to: String,
    pub subject: String,
    pub sent: String,
    pub body: String,
    pub code: Option<String>,
}

#[derive(Template)]
#[template(path = "password.html")]
pub struct PasswordChange {
    pub nav: Nav,
    pub error: Option<String>,
    pub rule: PasswordRule,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct Login {
    pub nav: Nav,
    pub error: Option<String>,
    pub email: String,
    pub next: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub nav: Nav,
    pub title: String,
    pub sentence: String,
    pub log_in_again: bool,
}

#[derive(Template)]
#[template(path = "proposals.html")]
pub struct Proposals {
    pub nav: Nav,
    pub proposals: Vec<ProposalRow>,
    /// Agencies that could not be asked, in words.
    pub note: Option<String>,
}

#[derive(Template)]
#[template(path = "proposal.html")]
pub struct ProposalPage {
    pub nav: Nav,
    pub p: ProposalRow,
}

/// An agency on the proposal form.
pub struct AgencyChoice {
    pub name: String,
    /// `3,000.00–5,000.00`, or empty when the agency did not say.
    pub band: String,
}

/// What the researcher typed into the proposal form (kept on errors).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ProposalForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub agency: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub amount: String,
    #[serde(default)]
    pub days: String,
}

#[derive(Template)]
#[template(path = "proposal_new.html")]
pub struct NewProposal {
    pub nav: Nav,
    pub error: Option<String>,
    pub agencies: Vec<AgencyChoice>,
    pub form: ProposalForm,
    /// The idempotency key of this form: a double submit makes one proposal.
    pub key: String,
}

#[derive(Template)]
#[template(path = "accounts.html")]
pub struct Accounts {
    pub nav: Nav,
    pub accounts: Vec<AccountView>,
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage {
    pub nav: Nav,
    pub a: AccountView,
    /// The signed-in researcher's id.
    pub me: String,
    /// Whether the signed-in researcher is the principal investigator.
    pub is_pi: bool,
    /// The withdraw form's idempotency key, new on every render.
    pub key: String,
    pub transactions: Vec<TransactionRow>,
    pub first_page: bool,
    pub next_page: Option<String>,
}

#[derive(Template)]
#[template(path = "invitations.html")]
pub struct Invitations {
    pub nav: Nav,
    pub invitations: Vec<InvitationRow>,
}

/// An invitation as its invited researcher sees it.
pub struct InvitationRow {
    pub id: String,
    pub account_title: String,
    pub invited_by_name: String,
    pub invited_by_email: String,
    pub invited_at: String,
}

impl From<Invitation> for InvitationRow {
    fn from(i: Invitation) -> Self {
        Self {
            invited_at: when(time(i.invited_at.as_ref())),
            id: i.invitation_id,
            account_title: i.account_title,
            invited_by_name: i.invited_by_name,
            invited_by_email: i.invited_by_email,
        }
    }
}

#[derive(Template)]
#[template(path = "mesh.html")]
pub struct MeshPage {
    pub nav: Nav,
}

pub struct ProposalRow {
    pub id: String,
    pub agency: String,
    pub title: String,
    pub amount: String,
    pub days: u32,
    /// "accepted", "rejected" or "pending".
    pub decision: &'static str,
    pub reason: String,
    pub account_id: String,
    pub submitted: String,
    pub submitted_at: SystemTime,
}

impl From<Proposal> for ProposalRow {
    fn from(p: Proposal) -> Self {
        let submitted_at = time(p.submitted_at.as_ref());
        Self {
            decision: match p.decision() {
                proposal::Decision::Accepted => "accepted",
                proposal::Decision::Rejected => "rejected",
                proposal::Decision::Unspecified => "pending",
            },
            id: p.proposal_id,
            agency: p.agency,
            title: p.title,
            amount: money::format_in(&p.currency, p.requested_amount_minor),
            days: p.duration_days,
            reason: if p.reason.is_empty() {
                String::new()
            } else {
                words::sentence(&words::in_words(&p.reason))
            },
            account_id: p.account_id,
            submitted: when(submitted_at),
            submitted_at,
        }
    }
}

/// An account as pages and live updates show it.
#[derive(Clone, Debug, Serialize)]
pub struct AccountView {
    pub id: String,
    pub title: String,
    pub agency: String,
    pub balance: String,
    pub balance_minor: i64,
    pub award: String,
    /// The ISO 4217 code amounts are typed and shown in.
    pub currency: String,
    /// "open" or "expired".
    pub state: &'static str,
    pub expires: String,
    pub expires_ms: u64,
    pub members: Vec<MemberView>,
    /// Emails invited and not yet answered (the College tells only the
    /// principal investigator; empty for others and in live updates).
    pub invited: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: &'static str,
    pub is_pi: bool,
}

impl From<Account> for AccountView {
    fn from(a: Account) -> Self {
        let expires_at = time(a.expires_at.as_ref());
        Self {
            state: match a.state() {
                account::State::Expired => "expired",
                _ => "open",
            },
            id: a.account_id,
            title: a.title,
            agency: a.agency,
            balance: money::format_in(&a.currency, a.balance_minor),
            balance_minor: a.balance_minor,
            award: money::format_in(&a.currency, a.award_minor),
            currency: money::currency(&a.currency).code().to_owned(),
            expires: when(expires_at),
            expires_ms: expires_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            members: a.members.into_iter().map(MemberView::from).collect(),
            invited: a.invitations.into_iter().map(|i| i.email).collect(),
        }
    }
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        let is_pi = m.role() == member::Role::PrincipalInvestigator;
        Self {
            id: m.researcher_id,
            name: m.name,
            email: m.email,
            role: if is_pi {
                "principal investigator"
            } else {
                "member"
            },
            is_pi,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TransactionRow {
    pub id: String,
    pub when: String,
    /// The member's name when the account lists them, else their id.
    pub who: String,
    pub amount: String,
    pub memo: String,
    pub balance_after: String,
}

impl TransactionRow {
    pub fn new(t: Transaction, members: &[MemberView], currency: &str) -> Self {
        let who = members
            .iter()
            .find(|m| m.id == t.researcher_id)
            .map(|m| m.name.clone())
            .unwrap_or(t.researcher_id);
        Self {
            id: t.transaction_id,
            when: when(time(t.created_at.as_ref())),
            who,
            amount: money::format_in(currency, t.amount_minor),
            memo: t.memo,
            balance_after: money::format_in(currency, t.balance_after_minor),
        }
    }
}

fn time(t: Option<&prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(UNIX_EPOCH)
}

/// `2026-12-01 08:33:54 UTC`.
pub fn when(at: SystemTime) -> String {
    if at == UNIX_EPOCH {
        return "—".to_owned();
    }
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}
