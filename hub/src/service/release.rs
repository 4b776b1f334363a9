//! The release path in one place: the queue of batches awaiting QA, the review of a
//! batch record (exceptions first, computed once by [`crate::record::review`] for
//! both doors), and the signature that releases or rejects a batch and sends the
//! decision to its site. The gRPC `ReleaseService` and the console's release pages
//! call these and only render what they return.

use super::{field, require_role, Error};
use crate::app::Hub;
use crate::audit::{Action, NewEntry, Object};
use crate::auth::verify_password;
use crate::model::{BatchState, Order, Role, Signature, User};
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
pub async fn queue(hub: &Hub, user: &User) -> Result<Vec<Order>, Error> {
    require_role(user, &REVIEWERS)?;
    Ok(hub
        .store
        .list_orders(None, Some(BatchState::AwaitingRelease))
        .await?)
}

/// A batch record as QA reviews it ([`record::review`]).
pub async fn review(hub: &Hub, user: &User, batch_id: Uuid) -> Result<Review, Error> {
    require_role(user, &REVIEWERS)?;
    Ok(record::review(
        hub.store.batch_record(batch_id).await?,
        hub.config.accept_simulated_people,
    ))
}

/// A QA decision as entered: meaning, password again, the hash of the record as
/// reviewed, and a reason (required to reject).
pub struct SignForm<'a> {
    pub batch_id: Uuid,
    pub meaning: ReleaseMeaning,
    pub password: &'a str,
    pub record_sha256: &'a str,
    pub reason: &'a str,
}

/// Signs release or rejection (21 CFR Part 11): the signer proves identity again
/// with the password; the signature binds to the record as reviewed. The store
/// writes the signature, the batch's new state and the command that tells the site
/// in one transaction (refusing a record that changed since it was reviewed); the
/// site's live link is woken to carry the command. An attempt by someone without
/// the authority to sign is refused and audited.
pub async fn sign(hub: &Hub, user: &User, form: SignForm<'_>) -> Result<(Signed, Order), Error> {
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
    let sha = form.record_sha256.trim().to_ascii_lowercase();
    if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(field(
            "record_sha256",
            "record_sha256 must be the 64-hex-digit SHA-256 of the batch record as reviewed",
        ));
    }
    if form.meaning == ReleaseMeaning::Rejected && form.reason.trim().is_empty() {
        return Err(field("reason", "a rejection needs a reason"));
    }
    if !verify_password(form.password, &user.password_hash) {
        tracing::warn!(signer = %user.username, "failed signing attempt");
        hub.store
            .audit(
                &NewEntry::new(
                    &user.username,
                    Action::ReleaseSigningFailed,
                    Object::Batch(form.batch_id),
                )
                .batch(form.batch_id)
                .reason("wrong password at signing"),
            )
            .await?;
        return Err(Error::Unauthenticated(
            "wrong password: the signature was not made".into(),
        ));
    }
    let signature = Signature {
        signature_id: Uuid::now_v7(),
        batch_id: form.batch_id,
        signer: user.username.clone(),
        signer_name: user.full_name.clone(),
        meaning: form.meaning,
        record_sha256: sha,
        reason: form.reason.trim().to_owned(),
        signed_at: Utc::now().trunc_subsecs(6),
    };
    let order = hub
        .store
        .sign_release(&signature, hub.config.accept_simulated_people, Utc::now())
        .await?;
    tracing::info!(batch_id = %order.batch_id, meaning = form.meaning.as_str(), signer = %user.username, "release decision signed");
    hub.commands_added(&order.site_id, order.batch_id);
    Ok((Signed::new(signature), order))
}
