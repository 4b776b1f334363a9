//! `AdminService`: sites, users and recipes, for administrators.

use super::{authenticate, role_from_pb, service_status, status, user_to_pb};
use crate::app::Hub;
use crate::model::{Site, SiteStatus};
use crate::service::{admin, integration};
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminApi(pub Arc<Hub>);

impl AdminApi {
    async fn change(
        &self,
        user: &crate::model::User,
        site_id: &str,
        to: SiteStatus,
        reason: &str,
    ) -> Result<pb::Site, Status> {
        let site = admin::change_site_status(&self.0, user, site_id, to, reason)
            .await
            .map_err(service_status)?;
        Ok(self.site_to_pb(&site))
    }

    fn site_to_pb(&self, site: &Site) -> pb::Site {
        let change = site.status_change.as_ref();
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
            status_changed_by: change.map(|c| c.by.clone()).unwrap_or_default(),
            status_changed_at: change.map(|c| to_timestamp(c.at)),
            status_reason: change.map(|c| c.reason.clone()).unwrap_or_default(),
        }
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn add_site(
        &self,
        request: Request<pb::AddSiteRequest>,
    ) -> Result<Response<pb::AddSiteResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let ttl = (req.token_ttl_seconds != 0).then_some(req.token_ttl_seconds);
        let registered = admin::register_site(&self.0, &user, &req.site_id, &req.name, ttl)
            .await
            .map_err(service_status)?;
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
        let user = authenticate(&self.0, &request).await?;
        let sites = admin::sites(&self.0, &user).await.map_err(service_status)?;
        Ok(Response::new(pb::ListSitesResponse {
            sites: sites.iter().map(|s| self.site_to_pb(s)).collect(),
        }))
    }

    async fn suspend_site(
        &self,
        request: Request<pb::SuspendSiteRequest>,
    ) -> Result<Response<pb::SuspendSiteResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
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
        let user = authenticate(&self.0, &request).await?;
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
        let user = authenticate(&self.0, &request).await?;
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
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let new = admin::NewUser {
            username: &req.username,
            full_name: &req.full_name,
            role: role_from_pb(req.role)?,
            password: &req.password,
        };
        let (user, code) = admin::add_user_with_code(&self.0, &user, new)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::AddUserResponse {
            user: Some(user_to_pb(&user)),
            setup_code: code.as_ref().map(|(c, _)| c.clone()).unwrap_or_default(),
            setup_code_expires_at: code.map(|(_, at)| to_timestamp(at)),
        }))
    }

    async fn assign_user_to_site(
        &self,
        request: Request<pb::AssignUserToSiteRequest>,
    ) -> Result<Response<pb::DirectoryChangeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let version = admin::assign_user_to_site(&self.0, &user, &req.username, &req.site_id)
            .await
            .map_err(service_status)?;
        Ok(directory_changed(vec![(req.site_id, version)]))
    }

    async fn remove_user_from_site(
        &self,
        request: Request<pb::RemoveUserFromSiteRequest>,
    ) -> Result<Response<pb::DirectoryChangeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let version = admin::remove_user_from_site(&self.0, &user, &req.username, &req.site_id)
            .await
            .map_err(service_status)?;
        Ok(directory_changed(vec![(req.site_id, version)]))
    }

    async fn disable_user(
        &self,
        request: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::DirectoryChangeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let sites = admin::set_user_disabled(&self.0, &user, &req.username, true, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(directory_changed(sites))
    }

    async fn enable_user(
        &self,
        request: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::DirectoryChangeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let sites = admin::set_user_disabled(&self.0, &user, &req.username, false, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(directory_changed(sites))
    }

    async fn change_role(
        &self,
        request: Request<pb::ChangeRoleRequest>,
    ) -> Result<Response<pb::DirectoryChangeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let role = role_from_pb(req.role)?;
        match admin::change_role(&self.0, &user, &req.username, role, &req.reason)
            .await
            .map_err(service_status)?
        {
            admin::RoleChange::Changed(sites) => Ok(directory_changed(sites)),
            admin::RoleChange::AwaitsApproval => Ok(Response::new(pb::DirectoryChangeResponse {
                sites: Vec::new(),
                awaits_approval: true,
            })),
        }
    }

    async fn approve_role(
        &self,
        request: Request<pb::ApproveRoleRequest>,
    ) -> Result<Response<pb::DirectoryChangeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let (_, sites) = admin::approve_role(&self.0, &user, &req.username, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(directory_changed(sites))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let (code, expires_at) = admin::reset_password(&self.0, &user, &req.username, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ResetPasswordResponse {
            reset_code: code,
            expires_at: Some(to_timestamp(expires_at)),
            sites: Vec::new(),
        }))
    }

    async fn issue_badge(
        &self,
        request: Request<pb::IssueBadgeRequest>,
    ) -> Result<Response<pb::IssueBadgeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let (badge_id, sites) = admin::issue_badge(&self.0, &user, &req.username, &req.pin)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::IssueBadgeResponse {
            badge_id,
            sites: directory_changed(sites).into_inner().sites,
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let users = admin::users(&self.0, &user).await.map_err(service_status)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_to_pb).collect(),
        }))
    }

    async fn list_recipes(
        &self,
        request: Request<pb::ListRecipesRequest>,
    ) -> Result<Response<pb::ListRecipesResponse>, Status> {
        authenticate(&self.0, &request).await?;
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

    async fn add_system_account(
        &self,
        request: Request<pb::AddSystemAccountRequest>,
    ) -> Result<Response<pb::SystemAccountSecret>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let (account, secret) =
            integration::add(&self.0, &user, &req.client_id, &req.name, &req.physicians)
                .await
                .map_err(service_status)?;
        Ok(Response::new(pb::SystemAccountSecret {
            account: Some(system_account_to_pb(&account)),
            client_secret: secret,
        }))
    }

    async fn list_system_accounts(
        &self,
        request: Request<pb::ListSystemAccountsRequest>,
    ) -> Result<Response<pb::ListSystemAccountsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let accounts = integration::list(&self.0, &user)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListSystemAccountsResponse {
            accounts: accounts.iter().map(system_account_to_pb).collect(),
        }))
    }

    async fn change_system_account_scope(
        &self,
        request: Request<pb::ChangeSystemAccountScopeRequest>,
    ) -> Result<Response<pb::SystemAccount>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let account = integration::change_scope(
            &self.0,
            &user,
            &req.client_id,
            &req.add_physicians,
            &req.remove_physicians,
            &req.reason,
        )
        .await
        .map_err(service_status)?;
        Ok(Response::new(system_account_to_pb(&account)))
    }

    async fn disable_system_account(
        &self,
        request: Request<pb::SetSystemAccountDisabledRequest>,
    ) -> Result<Response<pb::SystemAccount>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let account = integration::set_disabled(&self.0, &user, &req.client_id, true, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(Response::new(system_account_to_pb(&account)))
    }

    async fn enable_system_account(
        &self,
        request: Request<pb::SetSystemAccountDisabledRequest>,
    ) -> Result<Response<pb::SystemAccount>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let account = integration::set_disabled(&self.0, &user, &req.client_id, false, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(Response::new(system_account_to_pb(&account)))
    }

    async fn rotate_system_account_secret(
        &self,
        request: Request<pb::RotateSystemAccountSecretRequest>,
    ) -> Result<Response<pb::SystemAccountSecret>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let (account, secret) =
            integration::rotate_secret(&self.0, &user, &req.client_id, &req.reason)
                .await
                .map_err(service_status)?;
        Ok(Response::new(pb::SystemAccountSecret {
            account: Some(system_account_to_pb(&account)),
            client_secret: secret,
        }))
    }
}

fn system_account_to_pb(account: &crate::model::SystemAccount) -> pb::SystemAccount {
    pb::SystemAccount {
        client_id: account.client_id.clone(),
        name: account.name.clone(),
        disabled: account.disabled,
        physicians: account.physicians.clone(),
        created_by: account.created_by.clone(),
        created_at: Some(to_timestamp(account.created_at)),
    }
}

fn directory_changed(sites: Vec<(String, u64)>) -> Response<pb::DirectoryChangeResponse> {
    Response::new(pb::DirectoryChangeResponse {
        sites: sites
            .into_iter()
            .map(|(site_id, directory_version)| pb::SiteDirectoryVersion {
                site_id,
                directory_version,
            })
            .collect(),
        awaits_approval: false,
    })
}
