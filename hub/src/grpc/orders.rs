//! `OrderService`: physicians order therapies and follow them to release.

use super::{authenticate, order_to_pb, parse_id, service_status, state_from_pb, status};
use crate::app::Hub;
use crate::record::timeline;
use crate::service::{self, OrderForm};
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct OrderApi(pub Arc<Hub>);

#[tonic::async_trait]
impl pb::order_service_server::OrderService for OrderApi {
    #[tracing::instrument(skip_all, fields(site_id = %request.get_ref().site_id))]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let form = OrderForm {
            patient_pseudonym: req.patient_pseudonym,
            product: req.product,
            site_id: req.site_id,
            requested_collection_date: req.requested_collection_date,
            request_id: req.request_id,
            confirm_second_order: req.confirm_second_order,
        };
        let order = service::create_order(&self.0, &user, &form)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order_to_pb(&order)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let state = state_from_pb(request.get_ref().state)?;
        let orders = service::visible_orders(&self.0, &user, state)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(order_to_pb).collect(),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let order_id = parse_id("order_id", &request.get_ref().order_id)?;
        let order = service::visible_order(&self.0, &user, order_id)
            .await
            .map_err(service_status)?;
        let record = self
            .0
            .store
            .batch_record(order.batch_id)
            .await
            .map_err(status)?;
        let timeline = timeline(&record)
            .into_iter()
            .map(|e| pb::TimelineEntry {
                at: Some(to_timestamp(e.at)),
                source: e.source.into(),
                what: e.what,
                detail: e.detail,
            })
            .collect();
        let clock = super::schedule::order_clock_pb(&self.0, &order).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order_to_pb(&order)),
            timeline,
            clock: Some(clock),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.get_ref();
        let order_id = parse_id("order_id", &req.order_id)?;
        let order = service::cancel_order(&self.0, &user, order_id, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order_to_pb(&order)),
        }))
    }

    type WatchOrderStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchOrderResponse, Status>> + Send + 'static>>;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let order_id = parse_id("order_id", &request.get_ref().order_id)?;
        let first = service::visible_order(&self.0, &user, order_id)
            .await
            .map_err(service_status)?;
        let mut changes = self.0.changes.subscribe();
        let hub = self.0.clone();
        let session = super::session_of(&request);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let batch_id = first.batch_id;
            let mut last = first;
            // The stream lives only as long as the session: signing out, being
            // disabled, a new role or a password reset end it within seconds.
            let mut recheck = tokio::time::interval(std::time::Duration::from_secs(2));
            let live = |hub: Arc<Hub>, session: String| async move {
                matches!(
                    hub.store.session_user(&session, chrono::Utc::now()).await,
                    Ok(user) if !user.disabled
                )
            };
            if tx
                .send(Ok(pb::WatchOrderResponse {
                    order: Some(order_to_pb(&last)),
                }))
                .await
                .is_err()
            {
                return;
            }
            loop {
                use tokio::sync::broadcast::error::RecvError;
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = recheck.tick() => {
                        if !live(hub.clone(), session.clone()).await {
                            let _ = tx.send(Err(Status::unauthenticated(
                                "your session has ended (signed out, disabled, a new role or a password reset); sign in again",
                            ))).await;
                            return;
                        }
                        continue;
                    }
                    change = changes.recv() => match change {
                        Ok(id) if id != batch_id => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
                let order = match hub.store.order_by_batch(batch_id).await {
                    Ok(order) => order,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                if order != last {
                    last = order;
                    if tx
                        .send(Ok(pb::WatchOrderResponse {
                            order: Some(order_to_pb(&last)),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
