//! `ReleaseService`: QA reviews the batch record by exception and signs.

use super::{authenticate, order_to_pb, parse_id, require, service_status, status};
use crate::app::Hub;
use crate::model::{BatchRecord, BatchState, Role, Signature};
use crate::record::{describe, record_sha256};
use crate::service;
use carrel_proto::event::{meaning_to_wire, outcome_to_wire, to_timestamp, ReleaseMeaning};
use carrel_proto::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ReleaseApi(pub Arc<Hub>);

fn signature_to_pb(sig: &Signature) -> pb::Signature {
    pb::Signature {
        signature_id: sig.signature_id.to_string(),
        signer: sig.signer.clone(),
        signer_name: sig.signer_name.clone(),
        meaning: meaning_to_wire(sig.meaning) as i32,
        signed_at: Some(to_timestamp(sig.signed_at)),
        record_sha256: sig.record_sha256.clone(),
        reason: sig.reason.clone(),
        manifestation: service::manifestation(
            &sig.signer_name,
            &sig.signer,
            sig.meaning,
            sig.signed_at,
        ),
    }
}

pub fn audit_to_pb(entry: &crate::audit::Entry) -> pb::AuditEntry {
    pb::AuditEntry {
        position: entry.position,
        at: Some(to_timestamp(entry.at)),
        actor: entry.actor.clone(),
        action: entry.action.clone(),
        object: entry.object.clone(),
        old_value: entry.old_value.clone(),
        new_value: entry.new_value.clone(),
        reason: entry.reason.clone(),
        sha256: entry.sha256.clone(),
    }
}

pub fn record_to_pb(record: &BatchRecord) -> pb::BatchRecord {
    let exceptions: std::collections::HashSet<u64> =
        record.order.progress.exceptions.iter().copied().collect();
    let entry = |stored: &crate::model::StoredEvent| {
        let (kind, summary) = describe(&stored.event.kind);
        pb::RecordEntry {
            site_seq: stored.event.seq,
            recorded_at: Some(to_timestamp(stored.event.recorded_at)),
            recorded_by: stored.event.recorded_by.clone(),
            kind,
            summary,
        }
    };
    let qc = record
        .qc
        .iter()
        .map(|q| {
            let test = record.recipe.recipe.test(&q.test_id);
            pb::QcEvaluation {
                test_id: q.test_id.clone(),
                test_name: test.map(|t| t.name.clone()).unwrap_or_default(),
                result: match test {
                    Some(t) if !t.unit.is_empty() => format!("{} {}", q.value, t.unit),
                    _ => q.value.to_string(),
                },
                specification: test
                    .map(|t| t.spec.to_string())
                    .unwrap_or_else(|| "not in recipe".into()),
                hub_outcome: outcome_to_wire(q.hub_outcome) as i32,
                site_outcome: outcome_to_wire(q.site_outcome) as i32,
                reason: q.reason.clone(),
            }
        })
        .collect();
    let mut exception_entries: Vec<pb::RecordEntry> = record
        .events
        .iter()
        .filter(|e| exceptions.contains(&e.event.seq))
        .map(entry)
        .collect();
    for anomaly in &record.order.progress.anomalies {
        exception_entries.push(pb::RecordEntry {
            site_seq: 0,
            recorded_at: None,
            recorded_by: "hub".into(),
            kind: "hub check".into(),
            summary: anomaly.clone(),
        });
    }
    pb::BatchRecord {
        order: Some(order_to_pb(&record.order)),
        exceptions: exception_entries,
        entries: record.events.iter().map(entry).collect(),
        qc,
        record_sha256: record_sha256(&record.order, &record.recipe.sha256, &record.events),
        signatures: record.signatures.iter().map(signature_to_pb).collect(),
        audit: record.audit.iter().map(audit_to_pb).collect(),
    }
}

#[tonic::async_trait]
impl pb::release_service_server::ReleaseService for ReleaseApi {
    async fn list_pending(
        &self,
        request: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        require(&self.0, &request, &[Role::Qa]).await?;
        let orders = self
            .0
            .store
            .list_orders(None, Some(BatchState::AwaitingRelease))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListPendingResponse {
            batches: orders.iter().map(order_to_pb).collect(),
        }))
    }

    async fn get_batch_record(
        &self,
        request: Request<pb::GetBatchRecordRequest>,
    ) -> Result<Response<pb::GetBatchRecordResponse>, Status> {
        require(&self.0, &request, &[Role::Qa]).await?;
        let batch_id = parse_id("batch_id", &request.get_ref().batch_id)?;
        let record = self.0.store.batch_record(batch_id).await.map_err(status)?;
        Ok(Response::new(pb::GetBatchRecordResponse {
            record: Some(record_to_pb(&record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn sign_release(
        &self,
        request: Request<pb::SignReleaseRequest>,
    ) -> Result<Response<pb::SignReleaseResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let batch_id = parse_id("batch_id", &req.batch_id)?;
        let meaning = match pb::ReleaseMeaning::try_from(req.meaning) {
            Ok(pb::ReleaseMeaning::Released) => ReleaseMeaning::Released,
            Ok(pb::ReleaseMeaning::Rejected) => ReleaseMeaning::Rejected,
            _ => {
                return Err(Status::invalid_argument(
                    "meaning must be released or rejected",
                ))
            }
        };
        let form = service::SignForm {
            batch_id,
            meaning,
            password: &req.password,
            record_sha256: &req.record_sha256,
            reason: &req.reason,
        };
        let (signature, order) = service::sign_release(&self.0, &user, form)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::SignReleaseResponse {
            signature: Some(signature_to_pb(&signature)),
            order: Some(order_to_pb(&order)),
        }))
    }
}
