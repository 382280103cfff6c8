//! Proposals: the list of mine (across every agency), the form, and one
//! proposal with its decision.
//!
//! Submitting shows the decision and its reason at once: the agency decides
//! within the call, and the page it redirects to reads it back. The form
//! carries an idempotency key made when it was rendered, so submitting it
//! twice (a double click, a retry after an error) makes one proposal.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use futures::future::join_all;
use grantmesh_proto::v1::{
    DescribeAgencyRequest, GetProposalRequest, ListProposalsRequest, SubmitProposalRequest,
};
use tonic::Code;

use super::{check_researcher_csrf, fresh_key, key_ok, researcher_nav, researcher_problem};
use crate::sessions::Researcher;
use crate::views::{
    self, AgencyChoice, NewProposal, ProposalForm, ProposalPage, ProposalRow, Proposals,
};
use crate::{App, money, words};

/// Proposals asked for per page (the agency's most).
const PAGE_SIZE: u32 = 100;
/// Pages read per agency at most: a bound on a loop over a server's answers.
const MAX_PAGES: usize = 10;
/// How long the form waits for an agency to describe its band before
/// listing it without one.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn list(State(app): State<Arc<App>>, researcher: Researcher) -> Response {
    let token = researcher.session.token.clone();
    let names = app.mesh.agency_names().await;
    let lists = join_all(names.iter().map(|name| {
        let (app, token) = (&app, &token);
        async move {
            let mut all = Vec::new();
            let mut page_token = String::new();
            for _ in 0..MAX_PAGES {
                let page = app
                    .mesh
                    .agency(
                        name,
                        token,
                        ListProposalsRequest {
                            page_size: PAGE_SIZE,
                            page_token: page_token.clone(),
                        },
                        |mut c, r| async move { c.list_proposals(r).await },
                    )
                    .await?;
                all.extend(page.proposals);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            Ok::<_, tonic::Status>(all)
        }
    }))
    .await;
    let mut proposals = Vec::new();
    let mut unreachable = Vec::new();
    for (name, listed) in names.iter().zip(lists) {
        match listed {
            Ok(list) => proposals.extend(list.into_iter().map(ProposalRow::from)),
            Err(status) if status.code() == Code::Unauthenticated => {
                return researcher_problem(
                    &app,
                    &researcher,
                    "My proposals",
                    words::explain(&status),
                );
            }
            Err(_) => unreachable.push(name.clone()),
        }
    }
    proposals.sort_by_key(|p| std::cmp::Reverse(p.submitted_at));
    let note = (!unreachable.is_empty()).then(|| {
        format!(
            "Agency {} could not be reached just now; its proposals are not shown.",
            unreachable.join(", ")
        )
    });
    views::render(
        StatusCode::OK,
        &Proposals {
            nav: researcher_nav(&app, &researcher),
            proposals,
            note,
        },
    )
}

pub async fn new_form(State(app): State<Arc<App>>, researcher: Researcher) -> Response {
    form_page(
        &app,
        &researcher,
        StatusCode::OK,
        None,
        ProposalForm::default(),
        fresh_key(),
    )
    .await
}

async fn form_page(
    app: &App,
    researcher: &Researcher,
    status: StatusCode,
    error: Option<String>,
    form: ProposalForm,
    key: String,
) -> Response {
    let agencies = agency_choices(app, &researcher.session.token).await;
    views::render(
        status,
        &NewProposal {
            nav: researcher_nav(app, researcher),
            error,
            agencies,
            form,
            key,
        },
    )
}

/// The running agencies with their bands, as the form lists them.
async fn agency_choices(app: &App, token: &str) -> Vec<AgencyChoice> {
    let names = app.mesh.agency_names().await;
    join_all(names.into_iter().map(|name| async move {
        let described = tokio::time::timeout(
            DESCRIBE_TIMEOUT,
            app.mesh.agency(
                &name,
                token,
                DescribeAgencyRequest {},
                |mut c, r| async move { c.describe_agency(r).await },
            ),
        )
        .await;
        let band = match described {
            Ok(Ok(info)) => format!(
                "{}–{}",
                money::format_in(&info.currency, info.min_amount_minor),
                money::currency(&info.currency).number(info.max_amount_minor)
            ),
            _ => String::new(),
        };
        AgencyChoice { name, band }
    }))
    .await
}

pub async fn submit(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Form(form): Form<ProposalForm>,
) -> Response {
    if let Some(refused) = check_researcher_csrf(&app, &researcher, &form.csrf) {
        return refused;
    }
    // A key we did not make is replaced: the form is then simply not
    // protected against a double submit, which only a forged form loses.
    let key = if key_ok(&form.key) {
        form.key.clone()
    } else {
        fresh_key()
    };
    let invalid = |error: String| {
        let form = form.clone();
        let key = key.clone();
        let app = &app;
        let researcher = &researcher;
        async move {
            form_page(
                app,
                researcher,
                StatusCode::BAD_REQUEST,
                Some(error),
                form,
                key,
            )
            .await
        }
    };
    // The amount is typed in the chosen agency's currency.
    let currency = match app
        .mesh
        .agency(
            &form.agency,
            &researcher.session.token,
            DescribeAgencyRequest {},
            |mut c, r| async move { c.describe_agency(r).await },
        )
        .await
    {
        Ok(info) => info.currency,
        Err(status) => {
            return invalid(format!("The agency: {}", words::explain(&status).sentence)).await;
        }
    };
    let amount = match money::parse_in(&currency, &form.amount) {
        Ok(amount) => amount,
        Err(err) => return invalid(format!("The amount: {err}.")).await,
    };
    let days = match form.days.trim().parse::<u32>() {
        Ok(days) if days > 0 => days,
        _ => {
            return invalid("The duration: enter a whole number of days, such as 365.".to_owned())
                .await;
        }
    };
    let submitted = app
        .mesh
        .agency(
            &form.agency,
            &researcher.session.token,
            SubmitProposalRequest {
                title: form.title.trim().to_owned(),
                description: form.description.trim().to_owned(),
                requested_amount_minor: amount,
                duration_days: days,
                idempotency_key: key.clone(),
            },
            |mut c, r| async move { c.submit_proposal(r).await },
        )
        .await;
    match submitted {
        Ok(proposal) => {
            let row = ProposalRow::from(proposal);
            // A rejection is a refusal and reads as one (the error banner),
            // not in the green of a success.
            match row.decision {
                "accepted" => researcher.session.flash(format!(
                    "{} accepted your proposal; its research account is open.",
                    row.agency
                )),
                "rejected" => researcher.session.flash_error(format!(
                    "{} turned your proposal down; no account was opened.",
                    row.agency
                )),
                _ => researcher.session.flash("Your proposal was submitted."),
            }
            Redirect::to(&format!("/proposals/{}/{}", row.agency, row.id)).into_response()
        }
        Err(status) => {
            let problem = words::explain(&status);
            if problem.log_in_again {
                return researcher_problem(&app, &researcher, "Proposal not submitted", problem);
            }
            let app = &app;
            form_page(
                app,
                &researcher,
                problem.http,
                Some(problem.sentence),
                form.clone(),
                key,
            )
            .await
        }
    }
}

pub async fn show(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Path((agency, id)): Path<(String, String)>,
) -> Response {
    let found = app
        .mesh
        .agency(
            &agency,
            &researcher.session.token,
            GetProposalRequest { proposal_id: id },
            |mut c, r| async move { c.get_proposal(r).await },
        )
        .await;
    match found {
        Ok(p) => views::render(
            StatusCode::OK,
            &ProposalPage {
                nav: researcher_nav(&app, &researcher),
                p: ProposalRow::from(p),
            },
        ),
        Err(status) => researcher_problem(&app, &researcher, "Proposal", words::explain(&status)),
    }
}
