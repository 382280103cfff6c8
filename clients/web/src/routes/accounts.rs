//! Research accounts: the list of mine, one account with its journal, and
//! the forms that change one (withdraw, invite and remove members). Adding
//! a member sends an invitation, which the invited researcher answers on
//! their invitations page ([`super::invitations`]).
//!
//! Every call is made with the researcher's token, so the College decides
//! who may see or change what; the pages only hide buttons that would be
//! refused anyway. The withdraw form carries an idempotency key made when
//! the page was rendered: a double submit withdraws once.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use grantmesh_proto::v1::{
    AddMemberRequest, GetAccountRequest, ListAccountsRequest, ListTransactionsRequest,
    RemoveMemberRequest, WithdrawRequest,
};
use serde::Deserialize;

use super::{check_researcher_csrf, fresh_key, key_ok, researcher_nav, researcher_problem};
use crate::sessions::Researcher;
use crate::views::{self, AccountPage, AccountView, Accounts, TransactionRow};
use crate::{App, money, words};

/// Transactions per page of the account page.
pub const TRANSACTIONS_PER_PAGE: u32 = 10;
/// Pages of accounts read at most (50 each): a bound on a loop over a
/// server's answers.
const MAX_ACCOUNT_PAGES: usize = 20;

pub async fn list(State(app): State<Arc<App>>, researcher: Researcher) -> Response {
    let mut accounts = Vec::new();
    let mut page_token = String::new();
    for _ in 0..MAX_ACCOUNT_PAGES {
        let page = app
            .mesh
            .college(
                Some(&researcher.session.token),
                ListAccountsRequest {
                    page_size: 0,
                    page_token: page_token.clone(),
                },
                |mut c, r| async move { c.list_accounts(r).await },
            )
            .await;
        match page {
            Ok(page) => {
                accounts.extend(page.accounts.into_iter().map(AccountView::from));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            Err(status) => {
                return researcher_problem(
                    &app,
                    &researcher,
                    "My accounts",
                    words::explain(&status),
                );
            }
        }
    }
    views::render(
        StatusCode::OK,
        &Accounts {
            nav: researcher_nav(&app, &researcher),
            accounts,
        },
    )
}

#[derive(Deserialize)]
pub struct Page {
    /// The page token of the transactions to start after (older ones).
    after: Option<String>,
}

pub async fn show(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let token = Some(researcher.session.token.as_str());
    let after = page.after.unwrap_or_default();
    let (account, journal) = tokio::join!(
        app.mesh.college(
            token,
            GetAccountRequest {
                account_id: id.clone()
            },
            |mut c, r| async move { c.get_account(r).await },
        ),
        app.mesh.college(
            token,
            ListTransactionsRequest {
                account_id: id.clone(),
                page_size: TRANSACTIONS_PER_PAGE,
                page_token: after.clone(),
            },
            |mut c, r| async move { c.list_transactions(r).await },
        ),
    );
    let (account, journal) = match (account, journal) {
        (Ok(account), Ok(journal)) => (account, journal),
        (Err(status), _) | (_, Err(status)) => {
            return researcher_problem(&app, &researcher, "Account", words::explain(&status));
        }
    };
    let a = AccountView::from(account);
    let me = researcher.session.researcher_id.clone();
    let is_pi = a.members.iter().any(|m| m.id == me && m.is_pi);
    let transactions = journal
        .transactions
        .into_iter()
        .map(|t| TransactionRow::new(t, &a.members, &a.currency))
        .collect();
    views::render(
        StatusCode::OK,
        &AccountPage {
            nav: researcher_nav(&app, &researcher),
            a,
            me,
            is_pi,
            key: fresh_key(),
            transactions,
            first_page: after.is_empty(),
            next_page: (!journal.next_page_token.is_empty()).then_some(journal.next_page_token),
        },
    )
}

#[derive(Deserialize)]
pub struct WithdrawForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    amount: String,
    /// The account's currency, as the page showed it: the amount is typed in it.
    #[serde(default)]
    currency: String,
    #[serde(default)]
    memo: String,
}

pub async fn withdraw(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Path(id): Path<String>,
    Form(form): Form<WithdrawForm>,
) -> Response {
    if let Some(refused) = check_researcher_csrf(&app, &researcher, &form.csrf) {
        return refused;
    }
    let back = Redirect::to(&format!("/accounts/{id}"));
    let session = &researcher.session;
    if !key_ok(&form.key) {
        session.flash_error("The form was damaged; nothing was withdrawn. Please try again.");
        return back.into_response();
    }
    let amount = match money::parse_in(&form.currency, &form.amount) {
        Ok(amount) => amount,
        Err(err) => {
            session.flash_error(format!("Nothing was withdrawn. The amount: {err}."));
            return back.into_response();
        }
    };
    let withdrawn = app
        .mesh
        .college(
            Some(&session.token),
            WithdrawRequest {
                account_id: id.clone(),
                amount_minor: amount,
                idempotency_key: form.key,
                memo: form.memo.trim().to_owned(),
            },
            |mut c, r| async move { c.withdraw(r).await },
        )
        .await;
    match withdrawn {
        Ok(reply) if reply.replayed => session.flash(format!(
            "That withdrawal was already made (the form was sent twice); it was applied once. The balance is {}.",
            money::format_in(&form.currency, reply.balance_minor)
        )),
        Ok(reply) => session.flash(format!(
            "Withdrew {}. The balance is now {}.",
            money::format_in(&form.currency, amount),
            money::format_in(&form.currency, reply.balance_minor)
        )),
        Err(status) => {
            let problem = words::explain(&status);
            if problem.log_in_again {
                return researcher_problem(&app, &researcher, "Withdrawal", problem);
            }
            session.flash_error(format!("Nothing was withdrawn. {}", problem.sentence));
        }
    }
    back.into_response()
}

#[derive(Deserialize)]
pub struct AddMemberForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
}

pub async fn add_member(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Path(id): Path<String>,
    Form(form): Form<AddMemberForm>,
) -> Response {
    if let Some(refused) = check_researcher_csrf(&app, &researcher, &form.csrf) {
        return refused;
    }
    let email = form.email.trim().to_owned();
    let added = app
        .mesh
        .college(
            Some(&researcher.session.token),
            AddMemberRequest {
                account_id: id.clone(),
                email: email.clone(),
            },
            |mut c, r| async move { c.add_member(r).await },
        )
        .await;
    finish(
        &app,
        &researcher,
        &id,
        added.map(|_| {
            format!(
                "Sent an invitation to {email}. They become a member once they accept it (under Invitations, when logged in)."
            )
        }),
        "Adding a member",
    )
}

/// A form that carries nothing but the session's CSRF token.
#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub(super) csrf: String,
}

pub async fn remove_member(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Path((id, member)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(refused) = check_researcher_csrf(&app, &researcher, &form.csrf) {
        return refused;
    }
    let removed = app
        .mesh
        .college_once(
            Some(&researcher.session.token),
            RemoveMemberRequest {
                account_id: id.clone(),
                researcher_id: member,
            },
            |mut c, r| async move { c.remove_member(r).await },
        )
        .await;
    finish(
        &app,
        &researcher,
        &id,
        removed.map(|_| "Removed the member from the account.".to_owned()),
        "Removing a member",
    )
}

/// Back to the account page with the outcome as its message.
fn finish(
    app: &App,
    researcher: &Researcher,
    id: &str,
    outcome: Result<String, tonic::Status>,
    what: &str,
) -> Response {
    match outcome {
        Ok(message) => researcher.session.flash(message),
        Err(status) => {
            let problem = words::explain(&status);
            if problem.log_in_again {
                return researcher_problem(app, researcher, what, problem);
            }
            researcher
                .session
                .flash_error(format!("{what} failed. {}", problem.sentence));
        }
    }
    Redirect::to(&format!("/accounts/{id}")).into_response()
}
