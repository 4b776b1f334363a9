//! `OrderService`: physicians order therapies and follow them to release.

use super::{authenticate, order_to_pb, parse_id, require, state_from_pb, status, Shared};
use crate::record::describe;
use crate::store::{NewOrder, Order, Role, User};
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use chrono::{NaiveDate, Utc};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub struct OrderApi(pub Arc<Shared>);

/// Roles that may see every order (a physician sees only their own).
const SEE_ALL: [Role; 3] = [Role::Qa, Role::Admin, Role::Technician];

impl OrderApi {
    /// The order, if this user may see it. Another physician's order is reported as
    /// not found, so its existence is not revealed.
    async fn visible_order(&self, user: &User, order_id: Uuid) -> Result<Order, Status> {
        let order = self.0.store.order(order_id).await.map_err(status)?;
        if user.role == Role::Physician && order.physician != user.username {
            return Err(Status::not_found(format!("order {order_id} not found")));
        }
        Ok(order)
    }
}

fn validate_pseudonym(text: &str) -> Result<String, Status> {
    let text = text.trim();
    let ok = (3..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Status::invalid_argument(
            "patient_pseudonym must be 3 to 64 letters, digits, '-', '_' or '.' (a pseudonym, never a name)",
        ));
    }
    Ok(text.to_owned())
}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for OrderApi {
    #[tracing::instrument(skip_all, fields(site_id = %request.get_ref().site_id))]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let user = require(&self.0, &request, &[Role::Physician]).await?;
        let req = request.into_inner();
        let patient_pseudonym = validate_pseudonym(&req.patient_pseudonym)?;
        if req.product.trim().is_empty() {
            return Err(Status::invalid_argument(
                "product is required (a recipe id such as cd19-car-t)",
            ));
        }
        if req.site_id.trim().is_empty() {
            return Err(Status::invalid_argument("site_id is required"));
        }
        let date = NaiveDate::parse_from_str(req.requested_collection_date.trim(), "%Y-%m-%d")
            .map_err(|_| {
                Status::invalid_argument(format!(
                    "requested_collection_date {:?} is not a date (YYYY-MM-DD)",
                    req.requested_collection_date
                ))
            })?;
        let today = Utc::now().date_naive();
        if date < today {
            return Err(Status::invalid_argument(format!(
                "requested_collection_date {date} is in the past"
            )));
        }
        let order = self
            .0
            .store
            .create_order(
                &NewOrder {
                    patient_pseudonym,
                    recipe_id: req.product.trim().to_owned(),
                    site_id: req.site_id.trim().to_owned(),
                    requested_collection_date: date.to_string(),
                    physician: user.username.clone(),
                    facility: self.0.config.facility.clone(),
                },
                Utc::now(),
            )
            .await
            .map_err(status)?;
        tracing::info!(order_id = %order.order_id, batch_id = %order.batch_id, coi = %order.coi, "order created");
        self.0.commands_added(&order.site_id, order.batch_id);
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
        let physician = (!SEE_ALL.contains(&user.role)).then_some(user.username.as_str());
        let orders = self
            .0
            .store
            .list_orders(physician, state)
            .await
            .map_err(status)?;
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
        let order = self.visible_order(&user, order_id).await?;
        let record = self
            .0
            .store
            .batch_record(order.batch_id)
            .await
            .map_err(status)?;
        let mut timeline = vec![pb::TimelineEntry {
            at: Some(to_timestamp(order.created_at)),
            source: "hub".into(),
            what: "order created".into(),
            detail: format!(
                "by {}, COI {}, site {}",
                order.physician, order.coi, order.site_id
            ),
        }];
        for stored in record.events.iter().filter(|e| {
            !matches!(
                e.event.kind,
                carrel_proto::event::EventKind::ProcessSamples { .. }
            )
        }) {
            let (what, detail) = describe(&stored.event.kind);
            timeline.push(pb::TimelineEntry {
                at: Some(to_timestamp(stored.event.recorded_at)),
                source: "site".into(),
                what,
                detail,
            });
        }
        for sig in &record.signatures {
            timeline.push(pb::TimelineEntry {
                at: Some(to_timestamp(sig.signed_at)),
                source: "hub".into(),
                what: format!("QA {}", sig.meaning.as_str()),
                detail: format!("signed by {} ({})", sig.signer_name, sig.signer),
            });
        }
        timeline.sort_by_key(|e| e.at.map(|t| (t.seconds, t.nanos)));
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order_to_pb(&order)),
            timeline,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let user = require(&self.0, &request, &[Role::Physician, Role::Admin]).await?;
        let req = request.get_ref();
        let order_id = parse_id("order_id", &req.order_id)?;
        if req.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a reason is required to cancel an order",
            ));
        }
        self.visible_order(&user, order_id).await?;
        let order = self
            .0
            .store
            .cancel_order(order_id, req.reason.trim(), &user.username, Utc::now())
            .await
            .map_err(status)?;
        tracing::info!(%order_id, "order cancelled");
        self.0.commands_added(&order.site_id, order.batch_id);
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
        let first = self.visible_order(&user, order_id).await?;
        let mut changes = self.0.changes.subscribe();
        let shared = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let batch_id = first.batch_id;
            let mut last = first;
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
                    change = changes.recv() => match change {
                        Ok(id) if id != batch_id => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
                let order = match shared.store.order_by_batch(batch_id).await {
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
