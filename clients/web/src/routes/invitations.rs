//! Invitations to research accounts: adding a member is an invitation,
//! which the invited researcher accepts or declines here.
//!
//! The list and both answers are made with the researcher's token, so the
//! College shows each researcher only the invitations sent to their own
//! email, and refuses an answer to anyone else's. Both answers are forms
//! with the session's CSRF token, like every other form of the portal.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use grantmesh_proto::v1::{
    AcceptInvitationRequest, DeclineInvitationRequest, ListInvitationsRequest,
};

use super::accounts::CsrfOnly;
use super::{check_researcher_csrf, researcher_nav, researcher_problem};
use crate::sessions::Researcher;
use crate::views::{self, InvitationRow, Invitations};
use crate::{App, words};

pub async fn list(State(app): State<Arc<App>>, researcher: Researcher) -> Response {
    let listed = app
        .mesh
        .college(
            Some(&researcher.session.token),
            ListInvitationsRequest {},
            |mut c, r| async move { c.list_invitations(r).await },
        )
        .await;
    match listed {
        Ok(reply) => views::render(
            StatusCode::OK,
            &Invitations {
                nav: researcher_nav(&app, &researcher),
                invitations: reply
                    .invitations
                    .into_iter()
                    .map(InvitationRow::from)
                    .collect(),
            },
        ),
        Err(status) => {
            researcher_problem(&app, &researcher, "Invitations", words::explain(&status))
        }
    }
}

/// Joins the account; on to its page.
pub async fn accept(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(refused) = check_researcher_csrf(&app, &researcher, &form.csrf) {
        return refused;
    }
    let accepted = app
        .mesh
        .college_once(
            Some(&researcher.session.token),
            AcceptInvitationRequest { invitation_id: id },
            |mut c, r| async move { c.accept_invitation(r).await },
        )
        .await;
    match accepted {
        Ok(account) => {
            researcher.session.flash(format!(
                "You joined “{}”: you can now see the account and withdraw from it.",
                account.title
            ));
            Redirect::to(&format!("/accounts/{}", account.account_id)).into_response()
        }
        Err(status) => answer_failed(&app, &researcher, "Accepting the invitation", &status),
    }
}

/// Turns the invitation down; back to the list.
pub async fn decline(
    State(app): State<Arc<App>>,
    researcher: Researcher,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(refused) = check_researcher_csrf(&app, &researcher, &form.csrf) {
        return refused;
    }
    let declined = app
        .mesh
        .college_once(
            Some(&researcher.session.token),
            DeclineInvitationRequest { invitation_id: id },
            |mut c, r| async move { c.decline_invitation(r).await },
        )
        .await;
    match declined {
        Ok(_) => {
            researcher
                .session
                .flash("Declined the invitation; you were not added to the account.");
            Redirect::to("/invitations").into_response()
        }
        Err(status) => answer_failed(&app, &researcher, "Declining the invitation", &status),
    }
}

/// Back to the list with what went wrong, or the problem page when the
/// researcher must log in again.
fn answer_failed(
    app: &App,
    researcher: &Researcher,
    what: &str,
    status: &tonic::Status,
) -> Response {
    let problem = words::explain(status);
    if problem.log_in_again {
        return researcher_problem(app, researcher, what, problem);
    }
    researcher
        .session
        .flash_error(format!("{what} failed. {}", problem.sentence));
    Redirect::to("/invitations").into_response()
}
