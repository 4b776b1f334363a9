//! The gRPC edge of the hub: wire types are converted to domain types here and
//! nowhere else (invariant 8), and store errors become `tonic::Status` in exactly
//! one place ([`status`]). Each call is authenticated here ([`authenticate`], the
//! bearer token of the request's metadata); what the user's role allows is decided
//! by [`crate::service`], which the services call. The state they share is
//! [`crate::app::Hub`].

pub mod admin;
pub mod analytics;
pub mod auth;
pub mod notifications;
pub mod orders;
pub mod refusals;
pub mod release;
pub mod schedule;
pub mod site_link;

use crate::app::Hub;
use crate::model::{BatchState, Order, Role, User};
use crate::store;
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use tonic::{Request, Status};
use uuid::Uuid;

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
        E::Held(why) => Status::unavailable(why),
        E::Store(e) => status(e),
    }
}

/// The client's address: failed sign-ins and signings are counted per source.
pub fn source<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The SHA-256 of the request's session token (empty without one): what the store
/// knows the session by.
pub fn session_of<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(crate::auth::secret_sha256)
        .unwrap_or_default()
}

/// The user of the session token in the request's `authorization` metadata.
pub async fn authenticate<T>(hub: &Hub, request: &Request<T>) -> Result<User, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("sign in first: no authorization token in the request")
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
    crate::service::bearer_user(hub, token)
        .await
        .map_err(service_status)
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
        release_awaits: order.progress.release_awaits.iter().cloned().collect(),
        release_failed: order.progress.release_failed(),
        dry_run: order.dry_run,
    }
}
