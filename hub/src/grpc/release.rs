//! `ReleaseService`: QA reviews the batch record by exception and signs. The release
//! path itself is [`crate::service::release`]; this file only turns its answers into
//! protobuf.

use super::{authenticate, order_to_pb, parse_id, service_status};
use crate::app::Hub;
use crate::record::{Counts, Exception, Review, Signed};
use crate::service::{deviations, qualifications, recipes, release};
use carrel_proto::event::{meaning_to_wire, outcome_to_wire, to_timestamp, ReleaseMeaning};
use carrel_proto::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ReleaseApi(pub Arc<Hub>);

fn signature_to_pb(signed: &Signed) -> pb::Signature {
    let sig = &signed.signature;
    pb::Signature {
        signature_id: sig.signature_id.to_string(),
        signer: sig.signer.clone(),
        signer_name: sig.signer_name.clone(),
        meaning: meaning_to_wire(sig.meaning) as i32,
        signed_at: Some(to_timestamp(sig.signed_at)),
        record_sha256: sig.record_sha256.clone(),
        reason: sig.reason.clone(),
        manifestation: signed.manifestation.clone(),
        justifications: sig
            .justifications
            .iter()
            .map(|j| pb::Justification {
                exception: j.exception.clone(),
                justification: j.justification.clone(),
            })
            .collect(),
        outstanding_tests: sig.outstanding_tests.clone(),
    }
}

pub fn follow_up_to_pb(
    batch_id: uuid::Uuid,
    mark: &crate::model::FollowUpMark,
    closure: Option<&crate::model::FollowUpClosure>,
) -> pb::FollowUp {
    pb::FollowUp {
        batch_id: batch_id.to_string(),
        site_seq: mark.site_seq,
        test_id: mark.test_id.clone(),
        summary: format!(
            "{} out of specification after release (record {})",
            mark.test_id, mark.site_seq
        ),
        opened_at: Some(to_timestamp(mark.opened_at)),
        closed_by: closure.map(|c| c.signer.clone()).unwrap_or_default(),
        closed_by_name: closure.map(|c| c.signer_name.clone()).unwrap_or_default(),
        outcome: closure.map(|c| c.outcome.clone()).unwrap_or_default(),
        closed_at: closure.map(|c| to_timestamp(c.signed_at)),
    }
}

pub fn audit_to_pb(entry: &crate::audit::Entry) -> pb::AuditEntry {
    pb::AuditEntry {
        position: entry.position,
        at: Some(to_timestamp(entry.at)),
        actor: entry.actor.clone(),
        action: entry.action.to_string(),
        object: entry.object.clone(),
        old_value: entry.old_value.clone(),
        new_value: entry.new_value.clone(),
        reason: entry.reason.clone(),
        sha256: entry.sha256.clone(),
    }
}

fn entry_to_pb(entry: &crate::record::Entry) -> pb::RecordEntry {
    pb::RecordEntry {
        site_seq: entry.seq,
        recorded_at: Some(to_timestamp(entry.recorded_at)),
        recorded_by: entry.recorded_by.clone(),
        kind: entry.what.clone(),
        summary: entry.detail.clone(),
    }
}

pub fn review_to_pb(review: &Review) -> pb::BatchRecord {
    let exceptions = review
        .exceptions
        .iter()
        .map(|exception| match exception {
            Exception::Record(entry) => entry_to_pb(entry),
            Exception::Anomaly(anomaly) => pb::RecordEntry {
                site_seq: 0,
                recorded_at: None,
                recorded_by: "hub".into(),
                kind: "hub check".into(),
                summary: anomaly.clone(),
            },
        })
        .collect();
    let qc = review
        .qc
        .iter()
        .map(|q| pb::QcEvaluation {
            test_id: q.test_id.clone(),
            test_name: q.test_name.clone().unwrap_or_default(),
            result: if q.unit.is_empty() {
                q.value.to_string()
            } else {
                format!("{} {}", q.value, q.unit)
            },
            specification: q.specification.clone(),
            hub_outcome: outcome_to_wire(q.hub_outcome) as i32,
            site_outcome: outcome_to_wire(q.site_outcome) as i32,
            reason: q.reason.clone(),
            site_seq: q.seq,
            retest_of_seq: q.retest_of.unwrap_or(0),
            counts: match q.counts {
                Counts::Reportable => pb::QcCounts::Reportable,
                Counts::RetestedBy(_) => pb::QcCounts::Retested,
                Counts::Unstated => pb::QcCounts::Unstated,
            } as i32,
            retested_by_seq: match q.counts {
                Counts::RetestedBy(by) => by,
                _ => 0,
            },
        })
        .collect();
    pb::BatchRecord {
        order: Some(order_to_pb(&review.order)),
        exceptions,
        entries: review.entries.iter().map(entry_to_pb).collect(),
        qc,
        record_sha256: review.record_sha256.clone(),
        signatures: review.signatures.iter().map(signature_to_pb).collect(),
        audit: review.audit.iter().map(audit_to_pb).collect(),
        changed_after_decision: review
            .changed_after_decision
            .iter()
            .map(entry_to_pb)
            .collect(),
        change_reviews: review
            .change_reviews
            .iter()
            .map(|r| pb::ChangeReview {
                review_id: r.review_id.to_string(),
                signer: r.signer.clone(),
                signer_name: r.signer_name.clone(),
                through_seq: r.through_seq,
                record_sha256: r.record_sha256.clone(),
                comment: r.comment.clone(),
                signed_at: Some(to_timestamp(r.signed_at)),
            })
            .collect(),
        outstanding_results: review.outstanding.clone(),
        release_awaits: review.release_awaits.clone(),
        release_completable: review.completion.is_ok(),
        follow_ups: review
            .follow_ups
            .iter()
            .map(|(mark, closure)| follow_up_to_pb(review.order.batch_id, mark, closure.as_ref()))
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::release_service_server::ReleaseService for ReleaseApi {
    async fn list_pending(
        &self,
        request: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let orders = release::queue(&self.0, &user)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListPendingResponse {
            batches: orders.iter().map(order_to_pb).collect(),
        }))
    }

    async fn get_batch_record(
        &self,
        request: Request<pb::GetBatchRecordRequest>,
    ) -> Result<Response<pb::GetBatchRecordResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let batch_id = parse_id("batch_id", &request.get_ref().batch_id)?;
        let review = release::review(&self.0, &user, batch_id)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::GetBatchRecordResponse {
            record: Some(review_to_pb(&review)),
        }))
    }

    async fn export_batch_record(
        &self,
        request: Request<pb::ExportBatchRecordRequest>,
    ) -> Result<Response<pb::ExportBatchRecordResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let batch_id = parse_id("batch_id", &request.get_ref().batch_id)?;
        let export = release::export(&self.0, &user, batch_id)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ExportBatchRecordResponse {
            record_sha256: export.record_sha256,
            files: export
                .files
                .into_iter()
                .map(|(name, content)| pb::ExportedFile { name, content })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn sign_release(
        &self,
        request: Request<pb::SignReleaseRequest>,
    ) -> Result<Response<pb::SignReleaseResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let (session, source) = (super::session_of(&request), super::source(&request));
        let req = request.into_inner();
        let batch_id = parse_id("batch_id", &req.batch_id)?;
        let meaning = match pb::ReleaseMeaning::try_from(req.meaning) {
            Ok(pb::ReleaseMeaning::Released) => ReleaseMeaning::Released,
            Ok(pb::ReleaseMeaning::Rejected) => ReleaseMeaning::Rejected,
            Ok(pb::ReleaseMeaning::ReleasedConditionally) => ReleaseMeaning::ReleasedConditionally,
            Ok(pb::ReleaseMeaning::ReleaseCompleted) => ReleaseMeaning::ReleaseCompleted,
            _ => return Err(Status::invalid_argument(
                "meaning must be released, rejected, released conditionally or release completed",
            )),
        };
        let signer = release::Signer {
            user: &user,
            session: &session,
            source: &source,
        };
        let form = release::SignForm {
            batch_id,
            meaning,
            proof: release::Proof {
                username: &req.username,
                password: &req.password,
                acknowledge_meaning: req.acknowledge_signature_meaning,
            },
            record_sha256: &req.record_sha256,
            reason: &req.reason,
            justifications: &req.justifications,
            outstanding_tests: &req.outstanding_tests,
        };
        let (signed, order) = release::sign(&self.0, &signer, form)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::SignReleaseResponse {
            signature: Some(signature_to_pb(&signed)),
            order: Some(order_to_pb(&order)),
        }))
    }

    async fn list_conditional_releases(
        &self,
        request: Request<pb::ListConditionalReleasesRequest>,
    ) -> Result<Response<pb::ListConditionalReleasesResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let found = release::conditional(&self.0, &user)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListConditionalReleasesResponse {
            releases: found
                .iter()
                .map(|c| pb::ConditionalRelease {
                    order: Some(order_to_pb(&c.order)),
                    waiting_for: c.waiting_for.clone(),
                    completable: c.completion.is_ok(),
                    not_completable_because: c.completion.clone().err().unwrap_or_default(),
                    open_follow_ups: c.open_follow_ups as u32,
                })
                .collect(),
        }))
    }

    async fn list_follow_ups(
        &self,
        request: Request<pb::ListFollowUpsRequest>,
    ) -> Result<Response<pb::ListFollowUpsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let found = release::follow_ups(&self.0, &user, request.get_ref().all)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListFollowUpsResponse {
            follow_ups: found
                .iter()
                .map(|f| follow_up_to_pb(f.order.batch_id, &f.mark, f.closure.as_ref()))
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn close_follow_up(
        &self,
        request: Request<pb::CloseFollowUpRequest>,
    ) -> Result<Response<pb::FollowUp>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let (session, source) = (super::session_of(&request), super::source(&request));
        let req = request.into_inner();
        let batch_id = parse_id("batch_id", &req.batch_id)?;
        let signer = release::Signer {
            user: &user,
            session: &session,
            source: &source,
        };
        let form = release::FollowUpForm {
            batch_id,
            site_seq: req.site_seq,
            proof: release::Proof {
                username: &req.username,
                password: &req.password,
                acknowledge_meaning: req.acknowledge_signature_meaning,
            },
            outcome: &req.outcome,
        };
        let closed = release::close_follow_up(&self.0, &signer, form)
            .await
            .map_err(service_status)?;
        Ok(Response::new(follow_up_to_pb(
            closed.order.batch_id,
            &closed.mark,
            closed.closure.as_ref(),
        )))
    }

    #[tracing::instrument(skip_all, fields(batch_id = %request.get_ref().batch_id))]
    async fn review_change(
        &self,
        request: Request<pb::ReviewChangeRequest>,
    ) -> Result<Response<pb::ReviewChangeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let (session, source) = (super::session_of(&request), super::source(&request));
        let req = request.into_inner();
        let batch_id = parse_id("batch_id", &req.batch_id)?;
        let signer = release::Signer {
            user: &user,
            session: &session,
            source: &source,
        };
        let form = release::ChangeReviewForm {
            batch_id,
            proof: release::Proof {
                username: &req.username,
                password: &req.password,
                acknowledge_meaning: req.acknowledge_signature_meaning,
            },
            record_sha256: &req.record_sha256,
            comment: &req.comment,
        };
        let order = release::review_change(&self.0, &signer, form)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ReviewChangeResponse {
            order: Some(order_to_pb(&order)),
        }))
    }

    async fn list_deviations(
        &self,
        request: Request<pb::ListDeviationsRequest>,
    ) -> Result<Response<pb::ListDeviationsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let mut found = if req.batch_id.trim().is_empty() {
            deviations::list(&self.0, &user, false).await
        } else {
            let batch_id = parse_id("batch_id", &req.batch_id)?;
            deviations::of_batch(&self.0, &user, batch_id).await
        }
        .map_err(service_status)?;
        found.retain(|d| !req.open_only || d.is_open());
        Ok(Response::new(pb::ListDeviationsResponse {
            deviations: found.iter().map(deviation_to_pb).collect(),
        }))
    }

    async fn raise_deviation(
        &self,
        request: Request<pb::RaiseDeviationRequest>,
    ) -> Result<Response<pb::DeviationResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let batch_id = parse_id("batch_id", &req.batch_id)?;
        let raised = deviations::raise(
            &self.0,
            &user,
            batch_id,
            &req.step_id,
            &req.classification,
            &req.description,
        )
        .await
        .map_err(service_status)?;
        Ok(Response::new(pb::DeviationResponse {
            deviation: Some(deviation_to_pb(&raised)),
        }))
    }

    async fn add_deviation_note(
        &self,
        request: Request<pb::AddDeviationNoteRequest>,
    ) -> Result<Response<pb::DeviationResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let batch_id = parse_id("batch_id", &req.batch_id)?;
        let noted = deviations::note(&self.0, &user, batch_id, &req.deviation_id, &req.text)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::DeviationResponse {
            deviation: Some(deviation_to_pb(&noted)),
        }))
    }

    async fn close_deviation(
        &self,
        request: Request<pb::CloseDeviationRequest>,
    ) -> Result<Response<pb::DeviationResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let (session, source) = (super::session_of(&request), super::source(&request));
        let req = request.into_inner();
        let batch_id = parse_id("batch_id", &req.batch_id)?;
        let signer = release::Signer {
            user: &user,
            session: &session,
            source: &source,
        };
        let closed = deviations::close(
            &self.0,
            &signer,
            deviations::CloseForm {
                batch_id,
                deviation_id: &req.deviation_id,
                root_cause: &req.root_cause,
                capa_ref: &req.capa_ref,
                proof: release::Proof {
                    username: &req.username,
                    password: &req.password,
                    acknowledge_meaning: req.acknowledge_signature_meaning,
                },
            },
        )
        .await
        .map_err(service_status)?;
        Ok(Response::new(pb::DeviationResponse {
            deviation: Some(deviation_to_pb(&closed)),
        }))
    }

    async fn draft_recipe(
        &self,
        request: Request<pb::DraftRecipeRequest>,
    ) -> Result<Response<pb::RecipeDraftResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let reviewed = recipes::draft(&self.0, &user, &request.into_inner().toml)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::RecipeDraftResponse {
            draft: Some(draft_to_pb(&reviewed.draft, Some(&reviewed))),
        }))
    }

    async fn show_recipe_draft(
        &self,
        request: Request<pb::ShowRecipeDraftRequest>,
    ) -> Result<Response<pb::RecipeDraftResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let reviewed = recipes::review(&self.0, &user, &req.recipe_id, req.version)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::RecipeDraftResponse {
            draft: Some(draft_to_pb(&reviewed.draft, Some(&reviewed))),
        }))
    }

    async fn list_recipe_drafts(
        &self,
        request: Request<pb::ListRecipeDraftsRequest>,
    ) -> Result<Response<pb::ListRecipeDraftsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let drafts = recipes::drafts(&self.0, &user)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListRecipeDraftsResponse {
            drafts: drafts.iter().map(|d| draft_to_pb(d, None)).collect(),
        }))
    }

    async fn submit_recipe(
        &self,
        request: Request<pb::SignRecipeRequest>,
    ) -> Result<Response<pb::RecipeDraftResponse>, Status> {
        self.sign_recipe(request, false).await
    }

    async fn approve_recipe(
        &self,
        request: Request<pb::SignRecipeRequest>,
    ) -> Result<Response<pb::RecipeDraftResponse>, Status> {
        self.sign_recipe(request, true).await
    }

    async fn dry_run_recipe(
        &self,
        request: Request<pb::ShowRecipeDraftRequest>,
    ) -> Result<Response<pb::DryRunRecipeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let run = recipes::dry_run(&self.0, &user, &req.recipe_id, req.version)
            .await
            .map_err(service_status)?;
        // The dry run has started: a failure to read the draft again must not make
        // the client think it did not (and start another).
        let reviewed = recipes::review(&self.0, &user, &req.recipe_id, req.version)
            .await
            .inspect_err(
                |e| tracing::warn!(error = %e, "dry run started; reading its draft again failed"),
            )
            .ok();
        let mut dry_run = super::order_to_pb(&run.order);
        dry_run.dry_run = true;
        Ok(Response::new(pb::DryRunRecipeResponse {
            dry_run: Some(pb::RecipeDryRun {
                order: Some(dry_run),
                recipe_sha256: run.recipe_sha256.clone(),
                of_current_draft: reviewed.as_ref().is_none_or(|r| run.of(&r.draft)),
            }),
            draft: reviewed.map(|r| draft_to_pb(&r.draft, Some(&r))),
        }))
    }

    async fn retire_recipe(
        &self,
        request: Request<pb::RetireRecipeRequest>,
    ) -> Result<Response<pb::RetireRecipeResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        recipes::retire(&self.0, &user, &req.recipe_id, req.version, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::RetireRecipeResponse {}))
    }

    async fn qualify_site(
        &self,
        request: Request<pb::QualifySiteRequest>,
    ) -> Result<Response<pb::SiteQualification>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let (session, source) = (super::session_of(&request), super::source(&request));
        let req = request.into_inner();
        let signer = release::Signer {
            user: &user,
            session: &session,
            source: &source,
        };
        let proof = release::Proof {
            username: &req.username,
            password: &req.password,
            acknowledge_meaning: req.acknowledge_signature_meaning,
        };
        let asked = qualifications::Request {
            site_id: &req.site_id,
            recipe_id: &req.product,
            from_version: req.from_version,
            to_version: req.to_version,
            reason: &req.reason,
        };
        let qualified = qualifications::qualify(&self.0, &signer, proof, &asked)
            .await
            .map_err(service_status)?;
        Ok(Response::new(qualification_to_pb(&qualified)))
    }

    async fn withdraw_site_qualification(
        &self,
        request: Request<pb::WithdrawSiteQualificationRequest>,
    ) -> Result<Response<pb::WithdrawSiteQualificationResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        qualifications::withdraw(&self.0, &user, &req.site_id, &req.product, &req.reason)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::WithdrawSiteQualificationResponse {}))
    }

    async fn list_site_qualifications(
        &self,
        request: Request<pb::ListSiteQualificationsRequest>,
    ) -> Result<Response<pb::ListSiteQualificationsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let all = qualifications::list(&self.0, &user, Some(&req.site_id))
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListSiteQualificationsResponse {
            qualifications: all.iter().map(qualification_to_pb).collect(),
        }))
    }
}

fn qualification_to_pb(q: &crate::model::Qualification) -> pb::SiteQualification {
    let withdrawn = q.withdrawn.as_ref();
    pb::SiteQualification {
        site_id: q.site_id.clone(),
        product: q.recipe_id.clone(),
        from_version: q.min_version,
        to_version: q.max_version.unwrap_or_default(),
        versions: q.versions(),
        qualified_by: q.qualified_by.clone(),
        qualified_name: q.qualified_name.clone(),
        qualified_at: Some(to_timestamp(q.qualified_at)),
        meaning: q.meaning.clone(),
        reason: q.reason.clone(),
        in_force: q.in_force(),
        withdrawn_by: withdrawn.map(|w| w.by.clone()).unwrap_or_default(),
        withdrawn_at: withdrawn.map(|w| to_timestamp(w.at)),
        withdrawn_reason: withdrawn.map(|w| w.reason.clone()).unwrap_or_default(),
    }
}

impl ReleaseApi {
    /// A submission (`approve` false) or an approval, signed.
    async fn sign_recipe(
        &self,
        request: Request<pb::SignRecipeRequest>,
        approve: bool,
    ) -> Result<Response<pb::RecipeDraftResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let (session, source) = (super::session_of(&request), super::source(&request));
        let req = request.into_inner();
        let signer = release::Signer {
            user: &user,
            session: &session,
            source: &source,
        };
        let proof = release::Proof {
            username: &req.username,
            password: &req.password,
            acknowledge_meaning: req.acknowledge_signature_meaning,
        };
        let signed = if approve {
            recipes::approve(
                &self.0,
                &signer,
                proof,
                &req.recipe_id,
                req.version,
                &req.sha256,
                &req.effective_from,
            )
            .await
        } else {
            recipes::submit(
                &self.0,
                &signer,
                proof,
                &req.recipe_id,
                req.version,
                &req.sha256,
            )
            .await
        }
        .map_err(service_status)?;
        let reviewed = recipes::review(&self.0, &user, &signed.recipe.id, signed.recipe.version)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::RecipeDraftResponse {
            draft: Some(draft_to_pb(&reviewed.draft, Some(&reviewed))),
        }))
    }
}

/// A recipe draft on the wire, with its changes when reviewed.
fn draft_to_pb(
    d: &crate::model::recipe_change::RecipeDraft,
    reviewed: Option<&recipes::Reviewed>,
) -> pb::RecipeDraft {
    pb::RecipeDraft {
        recipe_id: d.recipe.id.clone(),
        version: d.recipe.version,
        title: d.recipe.title.clone(),
        sha256: d.sha256.clone(),
        state: d.state().as_str().into(),
        author: d.author.clone(),
        drafted_at: Some(to_timestamp(d.drafted_at)),
        submitted_by: d
            .submitted
            .as_ref()
            .map(|s| s.by.clone())
            .unwrap_or_default(),
        submitted_at: d.submitted.as_ref().map(|s| to_timestamp(s.at)),
        approved_by: d
            .approved
            .as_ref()
            .map(|s| s.by.clone())
            .unwrap_or_default(),
        approved_at: d.approved.as_ref().map(|s| to_timestamp(s.at)),
        effective_from: d.effective_from.map(to_timestamp),
        in_force_version: reviewed
            .and_then(|r| r.in_force.as_ref())
            .map_or(0, |r| r.recipe.version),
        changes: reviewed
            .map(|r| {
                r.changes
                    .iter()
                    .map(|c| pb::RecipeChange {
                        what: c.what.clone(),
                        before: c.before.clone(),
                        after: c.after.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        dry_runs: reviewed
            .map(|r| r.dry_runs.iter().map(|run| dry_run_to_pb(run, d)).collect())
            .unwrap_or_default(),
    }
}

/// A dry run of a draft on the wire.
fn dry_run_to_pb(
    run: &recipes::DryRun,
    draft: &crate::model::recipe_change::RecipeDraft,
) -> pb::RecipeDryRun {
    pb::RecipeDryRun {
        order: Some(super::order_to_pb(&run.order)),
        recipe_sha256: run.recipe_sha256.clone(),
        of_current_draft: run.of(draft),
    }
}

/// A deviation on the wire.
fn deviation_to_pb(d: &crate::model::deviation::Deviation) -> pb::Deviation {
    use crate::model::deviation::Origin;
    let closure = d.closure.as_ref();
    pb::Deviation {
        batch_id: d.batch_id.to_string(),
        deviation_id: d.deviation_id.clone(),
        site_id: d.site_id.clone(),
        origin: match d.origin {
            Origin::Site { .. } => "site",
            Origin::Hub => "hub",
        }
        .into(),
        site_seq: match d.origin {
            Origin::Site { seq, .. } => seq,
            Origin::Hub => 0,
        },
        raised_by: d.raised_by.clone(),
        raised_at: Some(to_timestamp(d.raised_at)),
        step_id: d.step_id.clone(),
        description: d.description.clone(),
        classification: d.classification.clone(),
        status: d.status().into(),
        notes: d
            .notes
            .iter()
            .map(|n| pb::DeviationNote {
                author: n.author.clone(),
                written_at: Some(to_timestamp(n.written_at)),
                text: n.text.clone(),
            })
            .collect(),
        root_cause: closure.map(|c| c.root_cause.clone()).unwrap_or_default(),
        capa_ref: closure.map(|c| c.capa_ref.clone()).unwrap_or_default(),
        closed_by: closure.map(|c| c.closed_by.clone()).unwrap_or_default(),
        closed_by_name: closure
            .map(|c| c.closed_by_name.clone())
            .unwrap_or_default(),
        closed_at: closure.map(|c| to_timestamp(c.closed_at)),
    }
}
