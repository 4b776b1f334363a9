//! The release path in one place: the queue of batches awaiting QA, the review of a
//! batch record (exceptions first, computed once by [`crate::record::review`] for
//! both doors), and the signature that releases or rejects a batch and sends the
//! decision to its site. The gRPC `ReleaseService` and the console's release pages
//! call these and only render what they return.

use super::{field, require_role, Error};
use crate::app::Hub;
use crate::audit::{Action, NewEntry, Object};
use crate::model::{BatchState, ChangeReview, Justification, Order, Role, Signature, User};
use crate::record::{self, Review, Signed};
use carrel_proto::event::ReleaseMeaning;
use chrono::{SubsecRound, Utc};
use uuid::Uuid;

/// Who reviews batch records and sees the release queue.
const REVIEWERS: [Role; 1] = [Role::Qa];
/// Who signs release or rejection.
const SIGNERS: [Role; 1] = [Role::Qa];

/// Whether `user` may review batch records (a console page links to them only then).
pub fn may_review(user: &User) -> bool {
    require_role(user, &REVIEWERS).is_ok()
}

/// Whether `user` may sign release or rejection (the console shows the form only then).
pub fn may_sign(user: &User) -> bool {
    require_role(user, &SIGNERS).is_ok()
}

/// Batches awaiting a release decision, for QA.
/// The batches awaiting QA's decision, the one waiting longest first.
pub async fn queue(hub: &Hub, user: &User) -> Result<Vec<Order>, Error> {
    require_role(user, &REVIEWERS)?;
    let mut waiting = hub
        .store
        .list_orders(None, Some(BatchState::AwaitingRelease))
        .await?;
    waiting.sort_by_key(|o| (o.updated_at, o.created_at, o.order_id));
    Ok(waiting)
}

/// Decided batches whose record changed after the decision and await QA's review.
pub async fn changed_after_decision(hub: &Hub, user: &User) -> Result<Vec<Order>, Error> {
    require_role(user, &REVIEWERS)?;
    let mut changed = Vec::new();
    for state in [
        BatchState::Released,
        BatchState::Rejected,
        BatchState::HandedOver,
        BatchState::Infused,
    ] {
        changed.extend(
            hub.store
                .list_orders(None, Some(state))
                .await?
                .into_iter()
                .filter(|o| !o.progress.unreviewed_changes().is_empty()),
        );
    }
    Ok(changed)
}

/// A conditional release not yet completed, as QA follows it: the order, the
/// results it still waits for, and whether it can be completed now (or why not).
pub struct Conditional {
    pub order: Order,
    pub waiting_for: Vec<String>,
    pub completion: Result<Vec<String>, String>,
    /// Open patient follow-ups of the batch.
    pub open_follow_ups: usize,
}

/// Batches released conditionally whose release is not yet completed, the one
/// released longest ago first: what they wait for, and which QA can complete.
pub async fn conditional(hub: &Hub, user: &User) -> Result<Vec<Conditional>, Error> {
    require_role(user, &REVIEWERS)?;
    let mut found = Vec::new();
    for state in [
        BatchState::Released,
        BatchState::HandedOver,
        BatchState::Infused,
    ] {
        for order in hub.store.list_orders(None, Some(state)).await? {
            // Done with: completed, or failed and its follow-up closed.
            let failed = order.progress.release_failed();
            if order.progress.release_awaits.is_empty()
                || (!failed.is_empty() && order.progress.open_follow_ups().next().is_none())
            {
                continue;
            }
            let recipe = hub
                .store
                .recipe(&order.recipe_id, order.recipe_version)
                .await?;
            found.push(Conditional {
                waiting_for: order
                    .progress
                    .release_awaits
                    .iter()
                    .filter(|t| !order.progress.tests_recorded.contains(*t))
                    .cloned()
                    .collect(),
                completion: crate::model::release::check_completion(&order, &recipe.recipe),
                open_follow_ups: order.progress.open_follow_ups().count(),
                order,
            });
        }
    }
    found.sort_by_key(|c| (c.order.created_at, c.order.order_id));
    Ok(found)
}

/// A batch record as QA reviews it ([`record::review`]).
pub async fn review(hub: &Hub, user: &User, batch_id: Uuid) -> Result<Review, Error> {
    require_role(user, &REVIEWERS)?;
    Ok(record::review(
        hub.store.batch_record(batch_id).await?,
        hub.config.accept_simulated_people,
    ))
}

/// The batch record written out for archiving ([`crate::export`]): a PDF for people,
/// the record as stored for machines, and their digests. Who exported which record
/// (by its hash) goes into the audit trail.
pub async fn export(
    hub: &Hub,
    user: &User,
    batch_id: Uuid,
) -> Result<crate::export::Export, Error> {
    require_role(user, &REVIEWERS)?;
    let record = hub.store.batch_record(batch_id).await?;
    let exported_by = format!("{} ({})", user.full_name, user.username);
    let export = crate::export::build(
        record,
        hub.config.accept_simulated_people,
        &exported_by,
        Utc::now().trunc_subsecs(0),
    );
    hub.store
        .audit(
            &NewEntry::new(
                &user.username,
                Action::BatchRecordExported,
                Object::Batch(batch_id),
            )
            .batch(batch_id)
            .value(format!("record_sha256 {}", export.record_sha256)),
        )
        .await?;
    Ok(export)
}

/// What a person acknowledges, once, before their first electronic signature
/// (21 CFR 11.100(c)); kept with their account and in the audit trail.
pub const SIGNATURE_MEANING: &str = "I understand that my electronic signature in Carrel is the legally binding equivalent of my handwritten signature, and that I am accountable for every record I sign with it.";

/// Who is signing, as the door that carries the request knows them.
pub struct Signer<'a> {
    pub user: &'a User,
    /// SHA-256 of the session's token: its first signature asks for the user name.
    pub session: &'a str,
    /// The client's address: failed signings count towards the lock of this user
    /// name from there, as failed sign-ins do.
    pub source: &'a str,
}

/// The signer's identity, proved again: the user name at the first signature of a
/// session and the password every time; a person who has not yet acknowledged what
/// their signature means must do so with it. Failures count towards the lock, and
/// the attempt that reaches it ends the session.
pub struct Proof<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub acknowledge_meaning: bool,
}

/// A QA decision as entered: meaning, the hash of the record as reviewed, a reason
/// (required to reject), and for a release one justification per exception of the
/// record as reviewed, in the review's order.
pub struct SignForm<'a> {
    pub batch_id: Uuid,
    pub meaning: ReleaseMeaning,
    pub proof: Proof<'a>,
    pub record_sha256: &'a str,
    pub reason: &'a str,
    pub justifications: &'a [String],
    /// Released conditionally: the tests still outstanding, as the review listed
    /// them (the signer names what the release waits for).
    pub outstanding_tests: &'a [String],
}

/// The shortest justification of an exception accepted: a sentence, not a tick.
pub const MIN_JUSTIFICATION_CHARS: usize = 10;

fn check_sha(sha: &str) -> Result<String, Error> {
    let sha = sha.trim().to_ascii_lowercase();
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(field(
            "record_sha256",
            "record_sha256 must be the 64-hex-digit SHA-256 of the batch record as reviewed",
        ));
    }
    Ok(sha)
}

/// Whether this session has signed before (its next signature needs only the password).
pub async fn session_has_signed(hub: &Hub, session: &str) -> Result<bool, Error> {
    Ok(hub.store.session_signed_at(session).await?.is_some())
}

/// What a signature is about, for the audit entry of a failed attempt: a batch
/// (release, change review, deviation closure) or a recipe version.
pub(super) enum SignedOn {
    Batch(Uuid),
    Recipe(String, u32),
    /// A site's qualification for a product.
    Site(String),
}

impl SignedOn {
    fn entry(&self, actor: &str) -> NewEntry {
        match self {
            SignedOn::Batch(batch_id) => NewEntry::new(
                actor,
                Action::ReleaseSigningFailed,
                Object::Batch(*batch_id),
            )
            .batch(*batch_id),
            SignedOn::Recipe(id, version) => NewEntry::new(
                actor,
                Action::ReleaseSigningFailed,
                Object::Recipe {
                    id: id.clone(),
                    version: *version,
                },
            ),
            SignedOn::Site(site_id) => NewEntry::new(
                actor,
                Action::ReleaseSigningFailed,
                Object::Site(site_id.clone()),
            ),
        }
    }
}

/// Checks the signer's proof of identity. Refusals of the proof itself are
/// `Unauthenticated`; a missing user name or acknowledgement is a field error.
pub(super) async fn prove(
    hub: &Hub,
    signer: &Signer<'_>,
    proof: &Proof<'_>,
    signed: SignedOn,
) -> Result<(), Error> {
    let user = signer.user;
    let first = !session_has_signed(hub, signer.session).await?;
    let typed = proof.username.trim();
    if first && typed.is_empty() {
        return Err(field(
            "username",
            "this is the first signature of your session: enter your user name as well as your password",
        ));
    }
    if user.signature_acknowledged_at.is_none() && !proof.acknowledge_meaning {
        return Err(field(
            "acknowledge",
            "before your first electronic signature, acknowledge that it is the legally binding equivalent of your handwritten signature",
        ));
    }
    let key = super::bounded_username(&user.username);
    let (window, limits) = super::failure_gate(hub, &key, signer.source).await?;
    let name_ok = typed.is_empty() || typed.eq_ignore_ascii_case(&user.username);
    let ok = super::password_matches(proof.password, Some(&user.password_hash)).await && name_ok;
    if ok {
        return Ok(());
    }
    tracing::warn!(signer = %user.username, "failed signing attempt");
    hub.failed_sign_ins
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hub.store
        .audit(&signed.entry(&user.username).reason(if name_ok {
            "wrong password at signing"
        } else {
            "wrong user name at signing"
        }))
        .await?;
    let gate = hub
        .store
        .count_sign_in_failure(&key, signer.source, window, limits)
        .await?;
    if gate != crate::store::Gate::Open {
        hub.store.delete_session(signer.session).await?;
        return Err(Error::Unauthenticated(format!(
            "too many failed attempts: the signature was not made and your session has ended; sign in again after {}",
            window.1.format("%H:%M UTC")
        )));
    }
    Err(Error::Unauthenticated(
        if name_ok {
            "wrong password: the signature was not made"
        } else {
            "that is not your user name: the signature was not made"
        }
        .into(),
    ))
}

/// Keeps the signer's acknowledgement of what their signature means, the first time.
pub(super) async fn acknowledge(hub: &Hub, user: &User, proof: &Proof<'_>) -> Result<(), Error> {
    if user.signature_acknowledged_at.is_none() && proof.acknowledge_meaning {
        hub.store
            .acknowledge_signature(&user.username, SIGNATURE_MEANING)
            .await?;
    }
    Ok(())
}

/// Signs release or rejection (21 CFR Part 11): the signer proves identity again
/// ([`Proof`]); the signature binds to the record as reviewed, and a release despite
/// exceptions carries a written justification of each. The store writes the
/// signature, the batch's new state and the command that tells the site in one
/// transaction (refusing a record that changed since it was reviewed); the site's
/// live link is woken to carry the command. An attempt by someone without the
/// authority to sign is refused and audited.
pub async fn sign(
    hub: &Hub,
    signer: &Signer<'_>,
    form: SignForm<'_>,
) -> Result<(Signed, Order), Error> {
    let user = signer.user;
    if let Err(refused) = require_role(user, &SIGNERS) {
        tracing::warn!(username = %user.username, batch_id = %form.batch_id, "refused: signing without the QA role");
        hub.store
            .audit(
                &NewEntry::new(
                    &user.username,
                    Action::ReleaseSigningRefused,
                    Object::Batch(form.batch_id),
                )
                .batch(form.batch_id)
                .reason(refused.to_string()),
            )
            .await?;
        return Err(refused);
    }
    let sha = check_sha(form.record_sha256)?;
    if form.meaning == ReleaseMeaning::Rejected && form.reason.trim().is_empty() {
        return Err(field("reason", "a rejection needs a reason"));
    }
    // The record as it is now: the signature is refused unless it is the one
    // reviewed, and a release must justify each of its exceptions.
    let review = record::review(
        hub.store.batch_record(form.batch_id).await?,
        hub.config.accept_simulated_people,
    );
    if review.order.dry_run {
        return Err(Error::Store(crate::store::Error::FailedPrecondition(
            crate::store::dry_run_refusal(&review.order),
        )));
    }
    if form.meaning == ReleaseMeaning::ReleaseCompleted {
        return complete(hub, signer, form, &review, sha).await;
    }
    if !review.awaits_decision() {
        return Err(Error::Store(crate::store::Error::FailedPrecondition(format!(
            "batch {} is {}, not awaiting release; only a batch whose record is complete can be released or rejected",
            review.order.batch_id, review.order.state
        ))));
    }
    if review.record_sha256 != sha {
        return Err(Error::Store(crate::store::Error::FailedPrecondition(format!(
            "the batch record changed since it was reviewed (reviewed {sha}, now {}); review it again before signing",
            review.record_sha256
        ))));
    }
    // Said before the password is asked for; the store checks it again when it
    // writes the signature.
    let recipe = hub
        .store
        .recipe(&review.order.recipe_id, review.order.recipe_version)
        .await?;
    crate::model::release::check_decision(
        &review.order,
        &recipe.recipe,
        form.meaning,
        form.outstanding_tests,
    )
    .map_err(|why| field("meaning", why))?;
    if form.meaning == ReleaseMeaning::ReleasedConditionally {
        check_site_reads_conditional(hub, &review.order.site_id).await?;
    }
    if form.meaning.releases() {
        let open =
            crate::model::deviation::blocking(&hub.store.deviations(Some(form.batch_id)).await?);
        if !open.is_empty() {
            return Err(Error::Store(crate::store::Error::FailedPrecondition(format!(
                "the batch has open deviation(s) {}: a major or critical deviation must be investigated and closed by QA (root cause, CAPA) before the batch is released; it may be rejected",
                open.join(", ")
            ))));
        }
    }
    let justifications = if form.meaning.releases() {
        justify(&review, form.justifications)?
    } else {
        Vec::new()
    };
    prove(hub, signer, &form.proof, SignedOn::Batch(form.batch_id)).await?;
    acknowledge(hub, user, &form.proof).await?;
    let signature = Signature {
        signature_id: Uuid::now_v7(),
        batch_id: form.batch_id,
        signer: user.username.clone(),
        signer_name: user.full_name.clone(),
        meaning: form.meaning,
        record_sha256: sha,
        reason: form.reason.trim().to_owned(),
        signed_at: Utc::now().trunc_subsecs(6),
        justifications,
        // What is outstanding, in the recipe's order (the store checks it again).
        outstanding_tests: if form.meaning == ReleaseMeaning::ReleasedConditionally {
            crate::model::release::outstanding(&review.order, &recipe.recipe)
        } else {
            Vec::new()
        },
    };
    let order = hub
        .store
        .sign_release(&signature, hub.config.accept_simulated_people, Utc::now())
        .await?;
    hub.store.mark_session_signed(signer.session).await?;
    tracing::info!(batch_id = %order.batch_id, meaning = form.meaning.as_str(), signer = %user.username, "release decision signed");
    hub.commands_added(&order.site_id, order.batch_id);
    Ok((Signed::new(signature), order))
}

/// A conditional release and its completion reach the site as meanings an agent
/// older than site link protocol 1.4 cannot read (it would stop taking commands):
/// refused, before the password is asked for, unless the site's agent last spoke
/// 1.4 or later.
async fn check_site_reads_conditional(hub: &Hub, site_id: &str) -> Result<(), Error> {
    let spoken = hub.store.site_protocol(site_id).await?;
    let needed = carrel_proto::protocol::CONDITIONAL_RELEASE;
    if carrel_proto::protocol::at_least(&spoken, needed) {
        return Ok(());
    }
    Err(Error::Store(crate::store::Error::FailedPrecondition(format!(
        "the agent of site {site_id} {} cannot record a conditional release or its completion (it needs site link protocol {}.{}): upgrade the site agent first",
        if spoken.is_empty() {
            "has not connected since the hub was upgraded, so it may be older and".to_owned()
        } else {
            format!("speaks site link protocol {spoken} and")
        },
        needed.0,
        needed.1
    ))))
}

/// Completes a conditional release (meaning "release completed"): the results it
/// waited for are in and within specification ([`crate::model::release::check_completion`]),
/// which the signer confirms with their signature. Refused before the password is
/// asked for when it cannot be completed; the store checks again.
async fn complete(
    hub: &Hub,
    signer: &Signer<'_>,
    form: SignForm<'_>,
    review: &Review,
    sha: String,
) -> Result<(Signed, Order), Error> {
    let user = signer.user;
    if let Err(why) = &review.completion {
        return Err(Error::Store(crate::store::Error::FailedPrecondition(
            why.clone(),
        )));
    }
    if review.record_sha256 != sha {
        return Err(Error::Store(crate::store::Error::FailedPrecondition(format!(
            "the batch record changed since it was reviewed (reviewed {sha}, now {}); review it again before signing",
            review.record_sha256
        ))));
    }
    crate::model::release::check_named(&review.release_awaits, form.outstanding_tests)
        .map_err(|why| field("outstanding_tests", why))?;
    let open = crate::model::deviation::blocking(&hub.store.deviations(Some(form.batch_id)).await?);
    if !open.is_empty() {
        return Err(Error::Store(crate::store::Error::FailedPrecondition(format!(
            "the batch has open deviation(s) {}: a major or critical deviation must be investigated and closed by QA before its release is completed",
            open.join(", ")
        ))));
    }
    check_site_reads_conditional(hub, &review.order.site_id).await?;
    prove(hub, signer, &form.proof, SignedOn::Batch(form.batch_id)).await?;
    acknowledge(hub, user, &form.proof).await?;
    let signature = Signature {
        signature_id: Uuid::now_v7(),
        batch_id: form.batch_id,
        signer: user.username.clone(),
        signer_name: user.full_name.clone(),
        meaning: ReleaseMeaning::ReleaseCompleted,
        record_sha256: sha,
        reason: form.reason.trim().to_owned(),
        signed_at: Utc::now().trunc_subsecs(6),
        justifications: Vec::new(),
        outstanding_tests: review.release_awaits.clone(),
    };
    let order = hub
        .store
        .complete_release(&signature, hub.config.accept_simulated_people)
        .await?;
    hub.store.mark_session_signed(signer.session).await?;
    tracing::info!(batch_id = %order.batch_id, signer = %user.username, "conditional release completed");
    hub.commands_added(&order.site_id, order.batch_id);
    Ok((Signed::new(signature), order))
}

/// A QA person's closure of a patient follow-up: what was done for the patient.
pub struct FollowUpForm<'a> {
    pub batch_id: Uuid,
    pub site_seq: u64,
    pub proof: Proof<'a>,
    pub outcome: &'a str,
}

/// Patient follow-ups for QA: open ones, or every one with `all`.
pub async fn follow_ups(
    hub: &Hub,
    user: &User,
    all: bool,
) -> Result<Vec<crate::model::FollowUp>, Error> {
    require_role(user, &REVIEWERS)?;
    Ok(hub.store.follow_ups(all).await?)
}

/// Closes a patient follow-up with a signature saying what was done for the
/// patient; refused before the password is asked for when there is no such open
/// follow-up or the outcome is not a sentence.
pub async fn close_follow_up(
    hub: &Hub,
    signer: &Signer<'_>,
    form: FollowUpForm<'_>,
) -> Result<crate::model::FollowUp, Error> {
    let user = signer.user;
    require_role(user, &SIGNERS)?;
    let outcome = form.outcome.trim();
    if outcome.chars().count() < MIN_JUSTIFICATION_CHARS {
        return Err(field(
            "outcome",
            format!("say what was done for the patient and concluded (at least {MIN_JUSTIFICATION_CHARS} characters)"),
        ));
    }
    let order = hub.store.order_by_batch(form.batch_id).await?;
    match order
        .progress
        .follow_ups
        .iter()
        .find(|f| f.site_seq == form.site_seq)
    {
        None => {
            return Err(Error::Store(crate::store::Error::NotFound(format!(
                "follow-up of record {} of batch {}",
                form.site_seq, form.batch_id
            ))))
        }
        Some(f) if f.closed => {
            return Err(Error::Store(crate::store::Error::FailedPrecondition(
                format!(
                    "the follow-up of record {} of batch {} is closed already; nothing changed",
                    form.site_seq, form.batch_id
                ),
            )))
        }
        Some(_) => {}
    }
    prove(hub, signer, &form.proof, SignedOn::Batch(form.batch_id)).await?;
    acknowledge(hub, user, &form.proof).await?;
    let closure = crate::model::FollowUpClosure {
        closure_id: Uuid::now_v7(),
        batch_id: form.batch_id,
        site_seq: form.site_seq,
        signer: user.username.clone(),
        signer_name: user.full_name.clone(),
        outcome: outcome.to_owned(),
        signed_at: Utc::now().trunc_subsecs(6),
    };
    let order = hub.store.close_follow_up(&closure).await?;
    hub.store.mark_session_signed(signer.session).await?;
    tracing::info!(batch_id = %order.batch_id, site_seq = form.site_seq, signer = %user.username, "patient follow-up closed");
    let mark = order
        .progress
        .follow_ups
        .iter()
        .find(|f| f.site_seq == form.site_seq)
        .cloned()
        .ok_or_else(|| {
            Error::Store(crate::store::Error::Corrupt(
                "a closed follow-up is missing from its batch".into(),
            ))
        })?;
    Ok(crate::model::FollowUp {
        order,
        mark,
        closure: Some(closure),
    })
}

/// One justification per exception of the review, each a real sentence.
fn justify(review: &Review, given: &[String]) -> Result<Vec<Justification>, Error> {
    let exceptions = &review.exceptions;
    if given.len() != exceptions.len() {
        return Err(field(
            "justifications",
            format!(
                "releasing this batch despite its {} exception(s) needs a written justification for each ({} given)",
                exceptions.len(),
                given.len()
            ),
        ));
    }
    exceptions
        .iter()
        .zip(given)
        .enumerate()
        .map(|(i, (exception, text))| {
            let text = text.trim();
            if text.chars().count() < MIN_JUSTIFICATION_CHARS {
                return Err(field(
                    "justifications",
                    format!(
                        "exception {} ({}) needs a justification of at least {MIN_JUSTIFICATION_CHARS} characters: say why it does not stop the release",
                        i + 1,
                        exception.text()
                    ),
                ));
            }
            Ok(Justification {
                exception: exception.text(),
                justification: text.to_owned(),
            })
        })
        .collect()
}

/// A QA person's review of the records that arrived after a batch's decision.
pub struct ChangeReviewForm<'a> {
    pub batch_id: Uuid,
    pub proof: Proof<'a>,
    pub record_sha256: &'a str,
    pub comment: &'a str,
}

/// Signs the review of records that arrived after the release decision: the
/// "changed after decision" mark is cleared once a QA person has read them and
/// says, with their signature, what they concluded.
pub async fn review_change(
    hub: &Hub,
    signer: &Signer<'_>,
    form: ChangeReviewForm<'_>,
) -> Result<Order, Error> {
    let user = signer.user;
    require_role(user, &SIGNERS)?;
    let sha = check_sha(form.record_sha256)?;
    if form.comment.trim().chars().count() < MIN_JUSTIFICATION_CHARS {
        return Err(field(
            "comment",
            format!("say what you concluded from the new records (at least {MIN_JUSTIFICATION_CHARS} characters)"),
        ));
    }
    prove(hub, signer, &form.proof, SignedOn::Batch(form.batch_id)).await?;
    acknowledge(hub, user, &form.proof).await?;
    let order = hub
        .store
        .review_change(&ChangeReview {
            review_id: Uuid::now_v7(),
            batch_id: form.batch_id,
            signer: user.username.clone(),
            signer_name: user.full_name.clone(),
            through_seq: 0,
            record_sha256: sha,
            comment: form.comment.trim().to_owned(),
            signed_at: Utc::now(),
        })
        .await?;
    hub.store.mark_session_signed(signer.session).await?;
    tracing::info!(batch_id = %order.batch_id, signer = %user.username, "change after decision reviewed");
    Ok(order)
}
