//! `AuthService`: sign-in for people.

use super::{authenticate, service_status, status, user_to_pb};
use crate::app::Hub;
use crate::auth::secret_sha256;
use crate::service;
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuthApi(pub Arc<Hub>);

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    #[tracing::instrument(skip_all, fields(username = %service::bounded_username(&request.get_ref().username)))]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let source = super::source(&request);
        let req = request.into_inner();
        let (token, expires_at, user) =
            service::sign_in(&self.0, &req.username, &req.password, &source)
                .await
                .map_err(service_status)?;
        Ok(Response::new(pb::LoginResponse {
            token,
            expires_at: Some(to_timestamp(expires_at)),
            user: Some(user_to_pb(&user)),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let source = super::source(&request);
        let req = request.into_inner();
        service::change_password(
            &self.0,
            &user,
            &req.current_password,
            &req.new_password,
            &source,
        )
        .await
        .map_err(service_status)?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    #[tracing::instrument(skip_all, fields(username = %service::bounded_username(&request.get_ref().username)))]
    async fn complete_password_reset(
        &self,
        request: Request<pb::CompletePasswordResetRequest>,
    ) -> Result<Response<pb::CompletePasswordResetResponse>, Status> {
        let source = super::source(&request);
        let req = request.into_inner();
        service::complete_password_reset(
            &self.0,
            &req.username,
            &req.reset_code,
            &req.new_password,
            &source,
        )
        .await
        .map_err(service_status)?;
        Ok(Response::new(pb::CompletePasswordResetResponse {}))
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
