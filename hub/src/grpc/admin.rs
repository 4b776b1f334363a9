//! `AdminService`: sites, users and recipes, for administrators.

use super::{require, role_from_pb, service_status, status, user_to_pb};
use crate::admin::{self, register_site};
use crate::app::Hub;
use crate::model::{Role, Site, SiteStatus};
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminApi(pub Arc<Hub>);

fn admin_status(error: admin::Error) -> Status {
    match error {
        admin::Error::Invalid(why) => Status::invalid_argument(why),
        admin::Error::Auth(e) => Status::invalid_argument(e.to_string()),
        admin::Error::Store(e) => status(e),
    }
}

impl AdminApi {
    async fn change(
        &self,
        user: &crate::model::User,
        site_id: &str,
        to: SiteStatus,
        reason: &str,
    ) -> Result<pb::Site, Status> {
        let site = crate::service::change_site_status(&self.0, user, site_id, to, reason)
            .await
            .map_err(service_status)?;
        Ok(self.site_to_pb(&site))
    }

    fn site_to_pb(&self, site: &Site) -> pb::Site {
        pb::Site {
            site_id: site.site_id.clone(),
            name: site.name.clone(),
            status: match site.status {
                SiteStatus::Pending => pb::SiteStatus::Pending,
                SiteStatus::Active => pb::SiteStatus::Active,
                SiteStatus::Suspended => pb::SiteStatus::Suspended,
                SiteStatus::Ceased => pb::SiteStatus::Ceased,
            } as i32,
            connected: self.0.links.is_connected(&site.site_id),
            last_contact_at: site.last_contact_at.map(to_timestamp),
            acked_event_seq: site.acked_event_seq,
            last_command_seq: site.last_command_seq,
            acked_command_seq: site.acked_command_seq,
            certificate_expires_at: site.cert_not_after.map(to_timestamp),
            certificate_from_current_ca: site.cert_ca_sha256.as_deref()
                == Some(self.0.ca.fingerprint()),
        }
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn add_site(
        &self,
        request: Request<pb::AddSiteRequest>,
    ) -> Result<Response<pb::AddSiteResponse>, Status> {
        let admin = require(&self.0, &request, &[Role::Admin]).await?;
        let req = request.into_inner();
        let ttl = if req.token_ttl_seconds == 0 {
            self.0.config.enrollment_ttl_secs
        } else {
            req.token_ttl_seconds
        };
        let registered = register_site(
            self.0.store.as_ref(),
            &self.0.ca,
            req.site_id.trim(),
            &req.name,
            ttl,
            &admin.username,
        )
        .await
        .map_err(admin_status)?;
        Ok(Response::new(pb::AddSiteResponse {
            site: Some(self.site_to_pb(&registered.site)),
            enrollment_token: registered.token,
            token_expires_at: Some(to_timestamp(registered.expires_at)),
        }))
    }

    async fn list_sites(
        &self,
        request: Request<pb::ListSitesRequest>,
    ) -> Result<Response<pb::ListSitesResponse>, Status> {
        require(&self.0, &request, &[Role::Admin, Role::Qa]).await?;
        let sites = self.0.store.list_sites().await.map_err(status)?;
        Ok(Response::new(pb::ListSitesResponse {
            sites: sites.iter().map(|s| self.site_to_pb(s)).collect(),
        }))
    }

    async fn suspend_site(
        &self,
        request: Request<pb::SuspendSiteRequest>,
    ) -> Result<Response<pb::SuspendSiteResponse>, Status> {
        let user = require(&self.0, &request, &[Role::Admin]).await?;
        let req = request.into_inner();
        let site = self
            .change(&user, &req.site_id, SiteStatus::Suspended, &req.reason)
            .await?;
        Ok(Response::new(pb::SuspendSiteResponse { site: Some(site) }))
    }

    async fn resume_site(
        &self,
        request: Request<pb::ResumeSiteRequest>,
    ) -> Result<Response<pb::ResumeSiteResponse>, Status> {
        let user = require(&self.0, &request, &[Role::Admin]).await?;
        let req = request.into_inner();
        let site = self
            .change(&user, &req.site_id, SiteStatus::Active, &req.reason)
            .await?;
        Ok(Response::new(pb::ResumeSiteResponse { site: Some(site) }))
    }

    async fn cease_site(
        &self,
        request: Request<pb::CeaseSiteRequest>,
    ) -> Result<Response<pb::CeaseSiteResponse>, Status> {
        let user = require(&self.0, &request, &[Role::Admin]).await?;
        let req = request.into_inner();
        let site = self
            .change(&user, &req.site_id, SiteStatus::Ceased, &req.reason)
            .await?;
        Ok(Response::new(pb::CeaseSiteResponse { site: Some(site) }))
    }

    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        let admin = require(&self.0, &request, &[Role::Admin]).await?;
        let req = request.into_inner();
        let role = role_from_pb(req.role)?;
        let user = admin::add_user(
            self.0.store.as_ref(),
            req.username.trim(),
            &req.full_name,
            role,
            &req.password,
            &admin.username,
        )
        .await
        .map_err(admin_status)?;
        Ok(Response::new(pb::AddUserResponse {
            user: Some(user_to_pb(&user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        require(&self.0, &request, &[Role::Admin]).await?;
        let users = self.0.store.list_users().await.map_err(status)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_pb).collect(),
        }))
    }

    async fn list_recipes(
        &self,
        request: Request<pb::ListRecipesRequest>,
    ) -> Result<Response<pb::ListRecipesResponse>, Status> {
        super::authenticate(&self.0, &request).await?;
        let recipes = self.0.store.list_recipes().await.map_err(status)?;
        Ok(Response::new(pb::ListRecipesResponse {
            recipes: recipes
                .iter()
                .map(|r| pb::RecipeSummary {
                    recipe_id: r.recipe.id.clone(),
                    version: r.recipe.version,
                    title: r.recipe.title.clone(),
                    sha256: r.sha256.clone(),
                    steps: r.recipe.steps.len() as u32,
                    release_tests: r.recipe.release_tests.len() as u32,
                })
                .collect(),
        }))
    }
}
