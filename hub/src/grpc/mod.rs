//! The gRPC edge of the hub: wire types are converted to domain types here and
//! nowhere else (invariant 8), and store errors become `tonic::Status` in exactly
//! one place ([`status`]).

pub mod admin;
pub mod auth;
pub mod notifications;
pub mod orders;
pub mod refusals;
pub mod release;
pub mod schedule;
pub mod site_link;

use crate::model::{BatchState, Order, Role, User};
use crate::pki::Ca;
use crate::store::{self, Store};
use crate::Config;
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use uuid::Uuid;

/// State shared by every service of one hub process.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub config: Config,
    pub ca: Arc<Ca>,
    pub links: Links,
    /// Batch ids whose projection changed, for watchers.
    pub changes: broadcast::Sender<Uuid>,
    /// Cancelled when the hub shuts down, to end long-lived streams.
    pub shutdown: CancellationToken,
    /// Names this hub process when it claims a site's live link.
    pub instance_id: String,
    /// How long committing site events takes, for `/metrics`.
    pub commit_latency: crate::metrics::Histogram,
    /// Refusals audited lately, so that a flood of them cannot fill the database.
    refusals: Mutex<crate::audit::Throttle>,
}

impl Shared {
    pub fn new(
        store: Arc<dyn Store>,
        config: Config,
        ca: Arc<Ca>,
        shutdown: CancellationToken,
    ) -> Arc<Shared> {
        let (changes, _) = broadcast::channel(1024);
        let window = std::time::Duration::from_secs(u64::from(config.audit_refusals_window_secs));
        Arc::new(Shared {
            refusals: Mutex::new(crate::audit::Throttle::new(window)),
            store,
            config,
            ca,
            links: Links::default(),
            changes,
            shutdown,
            instance_id: Uuid::new_v4().to_string(),
            commit_latency: crate::metrics::Histogram::default(),
        })
    }

    /// Tells a site's live link (if any) that new commands are waiting, and watchers
    /// that the batch changed.
    /// Signs a site's CSR for the configured certificate lifetime.
    pub fn sign_site_csr(
        &self,
        csr_pem: &str,
        site_id: &str,
    ) -> Result<crate::pki::SiteCert, crate::pki::Error> {
        self.ca.sign_site_csr(
            csr_pem,
            site_id,
            chrono::Duration::days(i64::from(self.config.site_certificate_days)),
        )
    }

    pub fn commands_added(&self, site_id: &str, batch_id: Uuid) {
        self.links.notifier(site_id).notify_one();
        let _ = self.changes.send(batch_id);
    }
}

impl Shared {
    /// Audits a refused request of a site (or of an agent not yet enrolled): the
    /// first of its `kind` from `entry.actor` at once, those that follow within the
    /// window only counted ([`crate::audit::Throttle`]). A failure to write is
    /// logged; the request is refused all the same.
    pub async fn audit_refusal(&self, kind: &str, entry: crate::audit::NewEntry) {
        let key = format!("{}\u{0}{}\u{0}{kind}", entry.actor, entry.action);
        let admitted = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&key, &entry, std::time::Instant::now());
        if admitted {
            self.write_audit(&entry).await;
        }
    }

    /// Enters the counts of refusal windows that have ended (all of them when
    /// `all`, at shutdown).
    pub async fn audit_counted_refusals(&self, all: bool) {
        let mut now = std::time::Instant::now();
        if all {
            now +=
                std::time::Duration::from_secs(u64::from(self.config.audit_refusals_window_secs));
        }
        let due = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now);
        for entry in due {
            self.write_audit(&entry).await;
        }
    }

    /// Runs [`Shared::audit_counted_refusals`] every second until shutdown.
    pub fn audit_refusals_periodically(self: &Arc<Self>) {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tick.tick() => shared.audit_counted_refusals(false).await,
                }
            }
            shared.audit_counted_refusals(true).await;
        });
    }

    async fn write_audit(&self, entry: &crate::audit::NewEntry) {
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!(error = %e, action = %entry.action, actor = %entry.actor, "cannot audit a refusal");
        }
    }
}

impl Shared {
    /// Relays what other hub processes on the same database announce (new commands
    /// for a site, a site's link claimed elsewhere) to this process's live links.
    pub async fn relay_notifications(self: &Arc<Self>) -> Result<(), store::Error> {
        let Some(mut notifications) = self.store.notifications().await? else {
            return Ok(());
        };
        let shared = self.clone();
        tokio::spawn(async move {
            while let Some(notification) = notifications.recv().await {
                match notification {
                    store::Notification::Commands(site)
                    | store::Notification::LinkClaimed(site) => {
                        shared.links.notifier(&site).notify_one();
                    }
                }
            }
        });
        Ok(())
    }
}

/// The live site links of this process: at most one per site.
#[derive(Default)]
pub struct Links {
    inner: Mutex<LinksInner>,
}

#[derive(Default)]
struct LinksInner {
    next_generation: u64,
    live: HashMap<String, (u64, CancellationToken)>,
    notifiers: HashMap<String, Arc<Notify>>,
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinksInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new live link for a site, closing the one it replaces.
    pub fn take_over(&self, site_id: &str) -> (u64, CancellationToken) {
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let token = CancellationToken::new();
        if let Some((_, old)) = inner
            .live
            .insert(site_id.to_owned(), (generation, token.clone()))
        {
            old.cancel();
        }
        (generation, token)
    }

    /// Removes a link when it ends, unless a newer one has replaced it.
    pub fn release(&self, site_id: &str, generation: u64) {
        let mut inner = self.lock();
        if inner.live.get(site_id).map(|(g, _)| *g) == Some(generation) {
            inner.live.remove(site_id);
        }
    }

    /// Closes the site's live link, if any (suspension).
    pub fn close(&self, site_id: &str) {
        if let Some((_, token)) = self.lock().live.remove(site_id) {
            token.cancel();
        }
    }

    pub fn is_connected(&self, site_id: &str) -> bool {
        self.lock().live.contains_key(site_id)
    }

    pub fn notifier(&self, site_id: &str) -> Arc<Notify> {
        self.lock()
            .notifiers
            .entry(site_id.to_owned())
            .or_default()
            .clone()
    }
}

/// The one place where store errors become gRPC statuses.
pub fn status(error: store::Error) -> Status {
    use store::Error as E;
    match error {
        E::NotFound(what) => Status::not_found(format!("{what} not found")),
        E::AlreadyExists(what) => Status::already_exists(format!("{what} already exists")),
        E::FailedPrecondition(why) | E::Unavailable(why) => Status::failed_precondition(why),
        E::Invalid(why) => Status::invalid_argument(why),
        E::PermissionDenied(why) => Status::permission_denied(why),
        E::Protocol(why) => Status::invalid_argument(format!("protocol violation: {why}")),
        e @ (E::Database(_) | E::Engine(_) | E::Migrate(_) | E::Corrupt(_)) => {
            tracing::error!(error = %e, "store failure");
            Status::unavailable("the hub's store is unavailable; try again")
        }
        // Logged where it happened; the hub is stopping.
        E::Failed(why) => Status::unavailable(format!(
            "the hub's store failed and the hub is stopping; this is not acknowledged: {why}"
        )),
    }
}

/// The one place where refusals of the shared service layer become gRPC statuses.
pub fn service_status(error: crate::service::Error) -> Status {
    use crate::service::Error as E;
    match error {
        E::Field { message, .. } => Status::invalid_argument(message),
        E::Unauthenticated(why) => Status::unauthenticated(why),
        E::PermissionDenied(why) => Status::permission_denied(why),
        E::Store(e) => status(e),
    }
}

/// The user of the session token in the request's `authorization` metadata.
pub async fn authenticate<T>(shared: &Shared, request: &Request<T>) -> Result<User, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("sign in first: no authorization token in the request")
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
    let user = match shared
        .store
        .session_user(&crate::auth::secret_sha256(token), chrono::Utc::now())
        .await
    {
        Ok(user) => user,
        Err(store::Error::NotFound(_)) => {
            return Err(Status::unauthenticated(
                "session is unknown or has expired; sign in again",
            ))
        }
        Err(e) => return Err(status(e)),
    };
    if user.disabled {
        return Err(Status::unauthenticated("this account is disabled"));
    }
    Ok(user)
}

/// Authenticates and checks that the user has one of `roles`.
pub async fn require<T>(
    shared: &Shared,
    request: &Request<T>,
    roles: &[Role],
) -> Result<User, Status> {
    let user = authenticate(shared, request).await?;
    crate::service::require_role(&user, roles).map_err(service_status)?;
    Ok(user)
}

pub fn parse_id(field: &str, text: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(text.trim())
        .map_err(|_| Status::invalid_argument(format!("{field} {text:?} is not a valid id (UUID)")))
}

pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Physician => pb::Role::Physician,
        Role::Qa => pb::Role::Qa,
        Role::Technician => pb::Role::Technician,
        Role::Admin => pb::Role::Admin,
    }
}

pub fn role_from_pb(value: i32) -> Result<Role, Status> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Physician) => Ok(Role::Physician),
        Ok(pb::Role::Qa) => Ok(Role::Qa),
        Ok(pb::Role::Technician) => Ok(Role::Technician),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        _ => Err(Status::invalid_argument(
            "role must be physician, qa, technician or admin",
        )),
    }
}

pub fn user_to_pb(user: &User) -> pb::User {
    pb::User {
        username: user.username.clone(),
        full_name: user.full_name.clone(),
        role: role_to_pb(user.role) as i32,
        disabled: user.disabled,
    }
}

pub fn state_to_pb(state: BatchState) -> pb::BatchState {
    match state {
        BatchState::Ordered => pb::BatchState::Ordered,
        BatchState::Accepted => pb::BatchState::Accepted,
        BatchState::InProcess => pb::BatchState::InProcess,
        BatchState::AwaitingRelease => pb::BatchState::AwaitingRelease,
        BatchState::Released => pb::BatchState::Released,
        BatchState::Rejected => pb::BatchState::Rejected,
        BatchState::Cancelled => pb::BatchState::Cancelled,
        BatchState::HandedOver => pb::BatchState::HandedOver,
        BatchState::Infused => pb::BatchState::Infused,
    }
}

pub fn state_from_pb(value: i32) -> Result<Option<BatchState>, Status> {
    Ok(match pb::BatchState::try_from(value) {
        Ok(pb::BatchState::Unspecified) => None,
        Ok(pb::BatchState::Ordered) => Some(BatchState::Ordered),
        Ok(pb::BatchState::Accepted) => Some(BatchState::Accepted),
        Ok(pb::BatchState::InProcess) => Some(BatchState::InProcess),
        Ok(pb::BatchState::AwaitingRelease) => Some(BatchState::AwaitingRelease),
        Ok(pb::BatchState::Released) => Some(BatchState::Released),
        Ok(pb::BatchState::Rejected) => Some(BatchState::Rejected),
        Ok(pb::BatchState::Cancelled) => Some(BatchState::Cancelled),
        Ok(pb::BatchState::HandedOver) => Some(BatchState::HandedOver),
        Ok(pb::BatchState::Infused) => Some(BatchState::Infused),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "{value} is not a batch state"
            )))
        }
    })
}

pub fn order_to_pb(order: &Order) -> pb::Order {
    pb::Order {
        order_id: order.order_id.to_string(),
        batch_id: order.batch_id.to_string(),
        coi: order.coi.clone(),
        patient_pseudonym: order.patient_pseudonym.clone(),
        product: order.recipe_id.clone(),
        recipe_version: order.recipe_version,
        site_id: order.site_id.clone(),
        requested_collection_date: order.requested_collection_date.clone(),
        physician: order.physician.clone(),
        state: state_to_pb(order.state) as i32,
        created_at: Some(to_timestamp(order.created_at)),
        updated_at: Some(to_timestamp(order.updated_at)),
        current_step: order.current_step.clone().unwrap_or_default(),
        decision_recorded_at_site: order.decision_recorded,
    }
}
