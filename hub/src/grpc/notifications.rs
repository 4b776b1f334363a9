//! `NotificationService`: subscriptions and the notifications sent for them.

use super::{authenticate, parse_id, service_status};
use crate::app::Hub;
use crate::notify::service::{self, Target};
use crate::notify::{OutboxEntry, OutboxState, Subscription};
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct NotificationApi(pub Arc<Hub>);

fn subscription_to_pb(s: &Subscription) -> pb::Subscription {
    pb::Subscription {
        subscription_id: s.subscription_id.to_string(),
        owner: s.owner.clone(),
        kinds: s.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        channel: s.channel.name().to_owned(),
        target: s.channel.target().to_owned(),
        site_id: s.site_id.clone().unwrap_or_default(),
        created_at: Some(to_timestamp(s.created_at)),
    }
}

fn state_to_pb(state: OutboxState) -> pb::DeliveryState {
    match state {
        OutboxState::Pending => pb::DeliveryState::Pending,
        OutboxState::Delivered => pb::DeliveryState::Delivered,
        OutboxState::Failed => pb::DeliveryState::Failed,
    }
}

fn state_from_pb(value: i32) -> Result<Option<OutboxState>, Status> {
    match pb::DeliveryState::try_from(value) {
        Ok(pb::DeliveryState::Unspecified) => Ok(None),
        Ok(pb::DeliveryState::Pending) => Ok(Some(OutboxState::Pending)),
        Ok(pb::DeliveryState::Delivered) => Ok(Some(OutboxState::Delivered)),
        Ok(pb::DeliveryState::Failed) => Ok(Some(OutboxState::Failed)),
        Err(_) => Err(Status::invalid_argument(format!(
            "{value} is not a delivery state"
        ))),
    }
}

pub fn notification_to_pb(n: &OutboxEntry) -> pb::Notification {
    pb::Notification {
        notification_id: n.notification_id.to_string(),
        subscription_id: n.subscription_id.to_string(),
        owner: n.owner.clone(),
        channel: n.channel.clone(),
        target: n.target.clone(),
        kind: n.kind.as_str().to_owned(),
        summary: n.summary.clone(),
        site_id: n.site_id.clone().unwrap_or_default(),
        batch_id: n.batch_id.map(|b| b.to_string()).unwrap_or_default(),
        coi: n.coi.clone().unwrap_or_default(),
        created_at: Some(to_timestamp(n.created_at)),
        state: state_to_pb(n.state) as i32,
        attempts: n.attempts,
        next_attempt_at: Some(to_timestamp(n.next_attempt_at)),
        last_error: n.last_error.clone().unwrap_or_default(),
        delivered_at: n.delivered_at.map(to_timestamp),
    }
}

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for NotificationApi {
    #[tracing::instrument(skip_all)]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let target = match (req.email.trim(), req.webhook_url.trim()) {
            (email, "") if !email.is_empty() => Target::Email(email.to_owned()),
            ("", url) if !url.is_empty() => Target::Webhook(url.to_owned()),
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of email and webhook_url",
                ))
            }
        };
        let site = (!req.site_id.is_empty()).then_some(req.site_id.as_str());
        let (subscription, secret) = service::subscribe(&self.0, &user, &req.kinds, target, site)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::SubscribeResponse {
            subscription: Some(subscription_to_pb(&subscription)),
            webhook_secret: secret.unwrap_or_default(),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let subscriptions = service::subscriptions(&self.0, &user, request.get_ref().all)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subscriptions.iter().map(subscription_to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(subscription_id = %request.get_ref().subscription_id))]
    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let id = parse_id("subscription_id", &request.get_ref().subscription_id)?;
        service::unsubscribe(&self.0, &user, id)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::UnsubscribeResponse {}))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.get_ref();
        let state = state_from_pb(req.state)?;
        let rows = service::notifications(&self.0, &user, req.all, state, req.limit)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows.iter().map(notification_to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(notification_id = %request.get_ref().notification_id))]
    async fn requeue(
        &self,
        request: Request<pb::RequeueRequest>,
    ) -> Result<Response<pb::RequeueResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let id = parse_id("notification_id", &request.get_ref().notification_id)?;
        let entry = service::requeue(&self.0, &user, id)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::RequeueResponse {
            notification: Some(notification_to_pb(&entry)),
        }))
    }
}
