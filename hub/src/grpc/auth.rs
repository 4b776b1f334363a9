//! `AuthService`: sign-in for people.

use super::{authenticate, status, user_to_pb, Shared};
use crate::audit::NewEntry;
use crate::auth::{new_secret, secret_sha256, verify_password};
use crate::store;
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use chrono::{Duration, Utc};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuthApi(pub Arc<Shared>);

/// The same answer for an unknown user and a wrong password, so sign-in does not
/// reveal which user names exist.
const BAD_CREDENTIALS: &str = "unknown user or wrong password";

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    #[tracing::instrument(skip_all, fields(username = %request.get_ref().username))]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let req = request.into_inner();
        let username = req.username.trim();
        if username.is_empty() || req.password.is_empty() {
            return Err(Status::invalid_argument(
                "username and password are required",
            ));
        }
        let user = match self.0.store.user(username).await {
            Ok(user) => Some(user),
            Err(store::Error::NotFound(_)) => None,
            Err(e) => return Err(status(e)),
        };
        let ok = user
            .as_ref()
            .is_some_and(|u| !u.disabled && verify_password(&req.password, &u.password_hash));
        let Some(user) = user.filter(|_| ok) else {
            tracing::warn!("failed sign-in");
            self.0
                .store
                .audit(
                    &NewEntry::new(username, "user.sign_in_failed", format!("user/{username}"))
                        .reason("wrong password, unknown or disabled user"),
                )
                .await
                .map_err(status)?;
            return Err(Status::unauthenticated(BAD_CREDENTIALS));
        };
        let token = new_secret();
        let expires_at = Utc::now() + Duration::seconds(i64::from(self.0.config.session_ttl_secs));
        self.0
            .store
            .create_session(&secret_sha256(&token), &user.username, expires_at)
            .await
            .map_err(status)?;
        tracing::info!(role = %user.role, "signed in");
        Ok(Response::new(pb::LoginResponse {
            token,
            expires_at: Some(to_timestamp(expires_at)),
            user: Some(user_to_pb(&user)),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        authenticate(&self.0, &request).await?;
        if let Some(token) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            self.0
                .store
                .delete_session(&secret_sha256(token))
                .await
                .map_err(status)?;
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            user: Some(user_to_pb(&user)),
        }))
    }
}
