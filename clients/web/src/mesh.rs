//! How the portal reaches agencies and colleges: through discovery, like
//! every grantmesh client, with the researcher's own bearer token on each
//! call.
//!
//! One [`Balancer`] follows the colleges, one follows every agency (for the
//! list on the proposal form), and one per agency name is made on first use
//! to call that agency alone. Agency names come from the registry, never
//! straight from a form, so a browser cannot make the server hold balancers
//! for names that do not exist.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use grantmesh_discovery::tls::Transport;
use grantmesh_discovery::{Balancer, BalancerOptions, Resend};
use grantmesh_proto::{AgencyClient, CollegeClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::WebSettings;

/// The registry label that carries an agency's name.
pub const AGENCY_LABEL: &str = "agency";

/// How long the agency list waits for the registry's first answer after
/// start-up before showing what it has (possibly nothing).
const FIRST_VIEW_WAIT: Duration = Duration::from_secs(3);

/// Most agency balancers kept: one per agency the registry lists, with room
/// for renamed ones; beyond it, calls to new names are refused.
const MAX_AGENCY_BALANCERS: usize = 64;

/// The mesh as the portal sees it.
pub struct MeshClient {
    registries: Vec<String>,
    transport: Transport,
    college: Balancer,
    /// Every agency instance, whatever its name: the proposal form's list.
    agencies: Balancer,
    /// Balancers for one agency each, by name.
    by_name: Mutex<HashMap<String, Balancer>>,
}

impl MeshClient {
    pub fn new(settings: &WebSettings) -> Self {
        let transport = settings.transport.clone();
        let balancer = |service: &str| {
            Balancer::new(
                settings.registries.clone(),
                service,
                BalancerOptions {
                    transport: transport.clone(),
                    ..BalancerOptions::default()
                },
            )
        };
        Self {
            college: balancer("college"),
            agencies: balancer("agency"),
            registries: settings.registries.clone(),
            transport: settings.transport.clone(),
            by_name: Mutex::new(HashMap::new()),
        }
    }

    /// One College call, as the researcher whose token is given (or
    /// anonymously, for sign-up and log-in).
    pub async fn college<Req, Rep, F, Fut>(
        &self,
        token: Option<&str>,
        message: Req,
        method: F,
    ) -> Result<Rep, Status>
    where
        Req: Clone,
        F: Fn(CollegeClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        self.college_with(Resend::WhenUnavailable, token, message, method)
            .await
    }

    /// As [`MeshClient::college`], for a call that carries no idempotency
    /// key: sent to another College only if it never reached one
    /// ([`Balancer::call_once`]).
    pub async fn college_once<Req, Rep, F, Fut>(
        &self,
        token: Option<&str>,
        message: Req,
        method: F,
    ) -> Result<Rep, Status>
    where
        Req: Clone,
        F: Fn(CollegeClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        self.college_with(Resend::WhenNotSent, token, message, method)
            .await
    }

    async fn college_with<Req, Rep, F, Fut>(
        &self,
        resend: Resend,
        token: Option<&str>,
        message: Req,
        method: F,
    ) -> Result<Rep, Status>
    where
        Req: Clone,
        F: Fn(CollegeClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let bearer = bearer(token)?;
        let reply = self
            .college
            .call_with(resend, |channel| {
                method(
                    CollegeClient::new(channel),
                    request(message.clone(), &bearer),
                )
            })
            .await?;
        Ok(reply.into_inner())
    }

    /// One call to the agency called `name`, as the researcher whose token is given.
    pub async fn agency<Req, Rep, F, Fut>(
        &self,
        name: &str,
        token: &str,
        message: Req,
        method: F,
    ) -> Result<Rep, Status>
    where
        Req: Clone,
        F: Fn(AgencyClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Rep>, Status>>,
    {
        let bearer = bearer(Some(token))?;
        let balancer = self.agency_balancer(name).await?;
        let reply = balancer
            .call(|channel| {
                method(
                    AgencyClient::new(channel),
                    request(message.clone(), &bearer),
                )
            })
            .await?;
        Ok(reply.into_inner())
    }

    /// The names of the agencies the registry lists now, sorted.
    pub async fn agency_names(&self) -> Vec<String> {
        let mut view = self.agencies.subscribe();
        let _ = tokio::time::timeout(FIRST_VIEW_WAIT, view.wait_for(|v| v.connected)).await;
        let mut names: Vec<String> = self
            .agencies
            .view()
            .instances
            .iter()
            .filter_map(|i| i.labels.get(AGENCY_LABEL).cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    async fn agency_balancer(&self, name: &str) -> Result<Balancer, Status> {
        if let Some(balancer) = self.by_name.lock().expect("poisoned").get(name) {
            return Ok(balancer.clone());
        }
        if !self.agency_names().await.iter().any(|n| n == name) {
            return Err(Status::not_found(format!(
                "no agency called {} is running; pick one from the list",
                grantmesh_proto::errors::quote(name)
            )));
        }
        let mut by_name = self.by_name.lock().expect("poisoned");
        if by_name.len() >= MAX_AGENCY_BALANCERS && !by_name.contains_key(name) {
            return Err(Status::resource_exhausted(
                "too many different agencies have been called",
            ));
        }
        let balancer = by_name
            .entry(name.to_owned())
            .or_insert_with(|| {
                Balancer::new(
                    self.registries.clone(),
                    "agency",
                    BalancerOptions {
                        labels: vec![(AGENCY_LABEL.to_owned(), name.to_owned())],
                        transport: self.transport.clone(),
                        ..BalancerOptions::default()
                    },
                )
            })
            .clone();
        Ok(balancer)
    }
}

/// The `authorization` value for `token`.
fn bearer(token: Option<&str>) -> Result<Option<MetadataValue<Ascii>>, Status> {
    token
        .map(|token| {
            MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Status::unauthenticated("the saved token is not usable"))
        })
        .transpose()
}

/// A request carrying `authorization: Bearer TOKEN` when there is one.
fn request<T>(message: T, bearer: &Option<MetadataValue<Ascii>>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = bearer {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}
