//! Rows into domain values, written once for both databases.
//!
//! The two schemas keep the same columns with the same meaning; they differ only in
//! how a value is typed (SQLite keeps ids and times as text, PostgreSQL as `uuid`
//! and `timestamptz`). Each backend says how to read one column of each kind
//! ([`Columns`]); what a row means is decided here, and a value that cannot be what
//! the column promises is reported as corrupt data, never guessed.

use super::{Error, Result};
use crate::audit;
use crate::model::notification::happening::OrderFacts;
use crate::model::notification::{
    parse_kinds, Channel, Delivery, InboxEntry, Kind, OutboxEntry, OutboxState, Subscription,
};
use crate::model::{
    BatchState, Order, QcRecord, Role, Signature, Site, SiteStatus, StatusChange, StoredEvent,
    StoredRecipe, User,
};
use crate::schedule::BookedStep;
use carrel_proto::event::ReleaseMeaning;
use carrel_proto::recipe::{Outcome, Recipe};
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// How a backend reads one column of a row, by the kind of value it holds.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    /// A whole number (of any width the schema uses).
    fn int(&self, column: &str) -> Result<i64>;
    fn flag(&self, column: &str) -> Result<bool>;
    /// A floating-point number.
    fn real(&self, column: &str) -> Result<f64>;
    fn uuid(&self, column: &str) -> Result<Uuid>;
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>>;
    fn time(&self, column: &str) -> Result<DateTime<Utc>>;
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>>;
    /// A time as the text an audit entry's hash covers.
    fn time_text(&self, column: &str) -> Result<String>;
    fn date(&self, column: &str) -> Result<NaiveDate>;

    /// A count, sequence number or position: never negative.
    fn count(&self, column: &str) -> Result<u64> {
        u64::try_from(self.int(column)?)
            .map_err(|_| Error::Corrupt(format!("{column} is negative")))
    }
}

fn corrupt<T>(what: &str, text: &str) -> Result<T> {
    Err(Error::Corrupt(format!("unknown {what} {text:?}")))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn user(row: &impl Columns) -> Result<User> {
    let role = row.text("role")?;
    Ok(User {
        username: row.text("username")?,
        full_name: row.text("full_name")?,
        role: Role::parse(&role).map_or_else(|| corrupt("role", &role), Ok)?,
        disabled: row.flag("disabled")?,
        password_hash: row.text("password_hash")?,
        signature_acknowledged_at: row.opt_time("signature_acknowledged_at")?,
    })
}

pub(crate) fn site(row: &impl Columns) -> Result<Site> {
    let status = row.text("status")?;
    Ok(Site {
        site_id: row.text("site_id")?,
        name: row.text("name")?,
        status: SiteStatus::parse(&status).map_or_else(|| corrupt("site status", &status), Ok)?,
        cert_sha256: row.opt_text("cert_sha256")?,
        cert_not_after: row.opt_time("cert_not_after")?,
        cert_ca_sha256: row.opt_text("cert_ca_sha256")?,
        pending_cert_sha256: row.opt_text("pending_cert_sha256")?,
        acked_event_seq: row.count("acked_event_seq")?,
        last_command_seq: row.count("last_command_seq")?,
        acked_command_seq: row.count("acked_command_seq")?,
        last_contact_at: row.opt_time("last_contact_at")?,
        status_change: match (
            row.opt_text("status_changed_by")?,
            row.opt_time("status_changed_at")?,
        ) {
            (Some(by), Some(at)) => Some(StatusChange {
                by,
                at,
                reason: row.opt_text("status_reason")?.unwrap_or_default(),
            }),
            _ => None,
        },
    })
}

/// An order with its batch (the backend's `ORDER_COLUMNS`).
pub(crate) fn order(row: &impl Columns) -> Result<Order> {
    let state = row.text("state")?;
    Ok(Order {
        order_id: row.uuid("order_id")?,
        batch_id: row.uuid("batch_id")?,
        coi: row.text("coi")?,
        patient_pseudonym: row.text("patient_pseudonym")?,
        recipe_id: row.text("recipe_id")?,
        recipe_version: u32::try_from(row.int("recipe_version")?)
            .map_err(|_| Error::Corrupt("recipe version out of range".into()))?,
        site_id: row.text("site_id")?,
        requested_collection_date: row.text("requested_collection_date")?,
        physician: row.text("physician")?,
        created_at: row.time("created_at")?,
        state: BatchState::parse(&state).map_or_else(|| corrupt("batch state", &state), Ok)?,
        current_step: row.opt_text("current_step")?,
        progress: json("batch progress", &row.text("progress")?)?,
        decision_recorded: row.flag("decision_recorded")?,
        updated_at: row.time("updated_at")?,
        dry_run: row.flag("dry_run")?,
    })
}

/// A batch's id, state and progress.
pub(crate) fn batch(row: &impl Columns) -> Result<(Uuid, BatchState, crate::model::Progress)> {
    let state = row.text("state")?;
    Ok((
        row.uuid("batch_id")?,
        BatchState::parse(&state).map_or_else(|| corrupt("batch state", &state), Ok)?,
        json("batch progress", &row.text("progress")?)?,
    ))
}

/// A stored hub command (its canonical JSON in `body`).
pub(crate) fn command(row: &impl Columns) -> Result<carrel_proto::event::HubCommand> {
    json("hub command", &row.text("body")?)
}

pub(crate) fn event(row: &impl Columns) -> Result<StoredEvent> {
    Ok(StoredEvent {
        site_id: row.text("site_id")?,
        event: json("site event", &row.text("body")?)?,
        received_at: row.time("received_at")?,
    })
}

pub(crate) fn recipe(row: &impl Columns) -> Result<StoredRecipe> {
    let document = row.text("document")?;
    let recipe =
        Recipe::from_json(&document).map_err(|e| Error::Corrupt(format!("stored recipe: {e}")))?;
    Ok(StoredRecipe {
        sha256: row.text("sha256")?,
        canonical_json: document,
        recipe,
    })
}

/// An audit entry and its `at` as the text its hash covers.
pub(crate) fn audit_entry(row: &impl Columns) -> Result<(audit::Entry, String)> {
    Ok((
        audit::Entry {
            position: row.count("position")?,
            at: row.time("at")?,
            actor: row.text("actor")?,
            action: {
                let action = row.text("action")?;
                audit::Action::parse(&action)
                    .map_or_else(|| corrupt("audit action", &action), Ok)?
            },
            object: row.text("object")?,
            batch_id: row.opt_uuid("batch_id")?,
            old_value: row.text("old_value")?,
            new_value: row.text("new_value")?,
            reason: row.text("reason")?,
            prev_sha256: row.text("prev_sha256")?,
            sha256: row.text("sha256")?,
        },
        row.time_text("at")?,
    ))
}

fn outcome(text: &str) -> Result<Outcome> {
    match text {
        "pass" => Ok(Outcome::Pass),
        "out_of_specification" => Ok(Outcome::OutOfSpecification),
        other => corrupt("QC outcome", other),
    }
}

/// How a QC outcome is stored.
pub(crate) fn outcome_text(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::OutOfSpecification => "out_of_specification",
    }
}

pub(crate) fn qc(row: &impl Columns) -> Result<QcRecord> {
    Ok(QcRecord {
        site_seq: row.count("site_seq")?,
        test_id: row.text("test_id")?,
        value: json("QC value", &row.text("value")?)?,
        hub_outcome: outcome(&row.text("hub_outcome")?)?,
        site_outcome: outcome(&row.text("site_outcome")?)?,
        reason: row.text("reason")?,
    })
}

pub(crate) fn signature(row: &impl Columns) -> Result<Signature> {
    let meaning = row.text("meaning")?;
    Ok(Signature {
        signature_id: row.uuid("signature_id")?,
        batch_id: row.uuid("batch_id")?,
        signer: row.text("signer")?,
        signer_name: row.text("signer_name")?,
        meaning: ReleaseMeaning::parse(&meaning)
            .map_or_else(|| corrupt("meaning", &meaning), Ok)?,
        record_sha256: row.text("record_sha256")?,
        reason: row.text("reason")?,
        signed_at: row.time("signed_at")?,
        justifications: serde_json::from_str(&row.text("justifications")?)
            .map_err(|e| Error::Corrupt(format!("signature justifications: {e}")))?,
        outstanding_tests: serde_json::from_str(&row.text("outstanding_tests")?)
            .map_err(|e| Error::Corrupt(format!("signature outstanding tests: {e}")))?,
    })
}

pub(crate) fn follow_up_closure(row: &impl Columns) -> Result<crate::model::FollowUpClosure> {
    Ok(crate::model::FollowUpClosure {
        closure_id: row.uuid("closure_id")?,
        batch_id: row.uuid("batch_id")?,
        site_seq: row.count("site_seq")?,
        signer: row.text("signer")?,
        signer_name: row.text("signer_name")?,
        outcome: row.text("outcome")?,
        signed_at: row.time("signed_at")?,
    })
}

pub(crate) fn change_review(row: &impl Columns) -> Result<crate::model::ChangeReview> {
    Ok(crate::model::ChangeReview {
        review_id: row.uuid("review_id")?,
        batch_id: row.uuid("batch_id")?,
        signer: row.text("signer")?,
        signer_name: row.text("signer_name")?,
        through_seq: row.count("through_seq")?,
        record_sha256: row.text("record_sha256")?,
        comment: row.text("comment")?,
        signed_at: row.time("signed_at")?,
    })
}

/// One step of a booking (the backend's `BOOKING_COLUMNS`).
pub(crate) fn booking(row: &impl Columns) -> Result<super::schedule::BookingRow> {
    Ok(super::schedule::BookingRow {
        order_id: row.uuid("order_id")?,
        batch_id: row.uuid("batch_id")?,
        coi: row.text("coi")?,
        site_id: row.text("site_id")?,
        collection_date: row.date("collection_date")?,
        slot: u32::try_from(row.int("slot")?)
            .map_err(|_| Error::Corrupt("booking slot is negative".into()))?,
        step: BookedStep {
            step_id: row.text("step_id")?,
            instrument_type: row.text("instrument_type")?,
            planned_start: row.time("planned_start")?,
            planned_end: row.time("planned_end")?,
            expected_start: row.time("expected_start")?,
            expected_end: row.time("expected_end")?,
            started_at: None,
            completed_at: None,
        },
    })
}

fn channel(row: &impl Columns, name: &str, target: String) -> Result<Channel> {
    match name {
        "email" => Ok(Channel::Email { address: target }),
        "webhook" => Ok(Channel::Webhook {
            url: target,
            secret: row.opt_text("secret")?.unwrap_or_default(),
        }),
        other => corrupt("channel", other),
    }
}

pub(crate) fn subscription(row: &impl Columns) -> Result<Subscription> {
    Ok(Subscription {
        subscription_id: row.uuid("subscription_id")?,
        owner: row.text("owner")?,
        kinds: parse_kinds(&row.text("kinds")?).map_err(|e| Error::Corrupt(e.to_string()))?,
        channel: channel(row, &row.text("channel")?, row.text("target")?)?,
        site_id: row.opt_text("site_id")?,
        created_at: row.time("created_at")?,
    })
}

/// Columns of an outbox row with its subscription's owner and channel.
pub(crate) const OUTBOX_COLUMNS: &str = "o.notification_id, o.subscription_id, s.owner, s.channel, s.target, s.secret, \
     o.source, o.kind, o.site_id, o.batch_id, o.coi, o.summary, o.payload, o.created_at, o.state, \
     o.attempts, o.next_attempt_at, o.last_error, o.delivered_at \
     FROM notification_outbox o JOIN notification_subscriptions s ON s.subscription_id = o.subscription_id";

/// A notification of the outbox ([`OUTBOX_COLUMNS`]).
pub(crate) fn outbox(row: &impl Columns) -> Result<OutboxEntry> {
    let kind = row.text("kind")?;
    let state = row.text("state")?;
    Ok(OutboxEntry {
        notification_id: row.uuid("notification_id")?,
        subscription_id: row.uuid("subscription_id")?,
        owner: row.text("owner")?,
        channel: row.text("channel")?,
        target: row.text("target")?,
        source: row.text("source")?,
        kind: Kind::parse(&kind).map_err(|e| Error::Corrupt(e.to_string()))?,
        site_id: row.opt_text("site_id")?,
        batch_id: row.opt_uuid("batch_id")?,
        coi: row.opt_text("coi")?,
        summary: row.text("summary")?,
        payload: row.text("payload")?,
        created_at: row.time("created_at")?,
        state: OutboxState::parse(&state).map_or_else(|| corrupt("outbox state", &state), Ok)?,
        attempts: u32::try_from(row.count("attempts")?).unwrap_or(u32::MAX),
        next_attempt_at: row.time("next_attempt_at")?,
        last_error: row.opt_text("last_error")?,
        delivered_at: row.opt_time("delivered_at")?,
    })
}

pub(crate) const INBOX_COLUMNS: &str =
    "inbox_id, recipient, kind, site_id, order_id, coi, summary, happened_at, read_at FROM inbox";

/// A notification of a person's console list ([`INBOX_COLUMNS`]).
pub(crate) fn inbox(row: &impl Columns) -> Result<InboxEntry> {
    let kind = row.text("kind")?;
    Ok(InboxEntry {
        inbox_id: row.uuid("inbox_id")?,
        recipient: row.text("recipient")?,
        kind: Kind::parse(&kind).map_err(|e| Error::Corrupt(e.to_string()))?,
        site_id: row.opt_text("site_id")?,
        order_id: row.opt_uuid("order_id")?,
        coi: row.opt_text("coi")?,
        summary: row.text("summary")?,
        happened_at: row.time("happened_at")?,
        read_at: row.opt_time("read_at")?,
    })
}

/// A notification to send, with where to ([`OUTBOX_COLUMNS`]).
pub(crate) fn delivery(row: &impl Columns) -> Result<Delivery> {
    let entry = outbox(row)?;
    let name = if entry.channel == "email" {
        "email"
    } else {
        "webhook"
    };
    let channel = channel(row, name, entry.target.clone())?;
    Ok(Delivery { entry, channel })
}

pub(crate) fn order_facts(row: &impl Columns) -> Result<OrderFacts> {
    Ok(OrderFacts {
        order_id: row.uuid("order_id")?,
        batch_id: row.uuid("batch_id")?,
        coi: row.text("coi")?,
        site_id: row.text("site_id")?,
        physician: row.text("physician")?,
    })
}

pub(crate) fn audit_finding(row: &impl Columns) -> Result<crate::audit::Finding> {
    let acknowledged = match row.opt_time("acknowledged_at")? {
        Some(at) => Some((
            row.opt_text("acknowledged_by")?.unwrap_or_default(),
            at,
            row.opt_text("reason")?.unwrap_or_default(),
        )),
        None => None,
    };
    Ok(crate::audit::Finding {
        site_id: row.text("site_id")?,
        position: row.count("position")?,
        sha256: row.text("sha256")?,
        found_at: row.time("found_at")?,
        detail: row.text("detail")?,
        acknowledged,
    })
}

pub(crate) fn role_grant(row: &impl Columns) -> Result<super::backend::RoleGrant> {
    let role = row.text("role")?;
    Ok(super::backend::RoleGrant {
        grant_id: row.uuid("grant_id")?,
        username: row.text("username")?,
        role: Role::parse(&role).map_or_else(|| corrupt("role", &role), Ok)?,
        requested_by: row.text("requested_by")?,
        requested_at: row.time("requested_at")?,
        reason: row.text("reason")?,
    })
}

/// A system account from its row, with the physicians it acts for.
pub(crate) fn system_account(
    row: &impl Columns,
    physicians: Vec<String>,
) -> Result<crate::model::SystemAccount> {
    Ok(crate::model::SystemAccount {
        client_id: row.text("client_id")?,
        name: row.text("name")?,
        secret_hash: row.text("secret_hash")?,
        disabled: row.flag("disabled")?,
        created_by: row.text("created_by")?,
        created_at: row.time("created_at")?,
        physicians,
    })
}

/// The hub's part of a deviation from its row.
pub(crate) fn deviation_row(row: &impl Columns) -> Result<crate::model::deviation::DeviationRow> {
    let raised_at_hub = match (row.opt_text("raised_by")?, row.opt_time("raised_at")?) {
        (Some(by), Some(at)) => Some((
            by,
            at,
            row.opt_text("step_id")?.unwrap_or_default(),
            row.opt_text("description")?.unwrap_or_default(),
        )),
        _ => None,
    };
    let closure = match (row.opt_text("closed_by")?, row.opt_time("closed_at")?) {
        (Some(closed_by), Some(closed_at)) => Some(crate::model::deviation::Closure {
            root_cause: row.opt_text("root_cause")?.unwrap_or_default(),
            capa_ref: row.opt_text("capa_ref")?.unwrap_or_default(),
            closed_by,
            closed_by_name: row.opt_text("closed_by_name")?.unwrap_or_default(),
            closed_at,
        }),
        _ => None,
    };
    Ok(crate::model::deviation::DeviationRow {
        batch_id: row.uuid("batch_id")?,
        deviation_id: row.text("deviation_id")?,
        site_id: row.text("site_id")?,
        raised_at_hub,
        classification: row.text("classification")?,
        closure,
    })
}

/// An investigation note from its row.
pub(crate) fn deviation_note(row: &impl Columns) -> Result<crate::model::deviation::Note> {
    Ok(crate::model::deviation::Note {
        note_id: row.uuid("note_id")?,
        batch_id: row.uuid("batch_id")?,
        deviation_id: row.text("deviation_id")?,
        author: row.text("author")?,
        written_at: row.time("written_at")?,
        text: row.text("text")?,
    })
}

/// A recipe version under change control from its row.
pub(crate) fn recipe_draft(row: &impl Columns) -> Result<crate::model::recipe_change::RecipeDraft> {
    use crate::model::recipe_change::DraftSignature;
    let document = row.text("document")?;
    let recipe =
        Recipe::from_json(&document).map_err(|e| Error::Corrupt(format!("recipe draft: {e}")))?;
    let signature =
        |who: &str, name: &str, at: &str, sha: &str| -> Result<Option<DraftSignature>> {
            Ok(match (row.opt_text(who)?, row.opt_time(at)?) {
                (Some(by), Some(at)) => Some(DraftSignature {
                    by,
                    name: row.opt_text(name)?.unwrap_or_default(),
                    at,
                    sha256: row.opt_text(sha)?.unwrap_or_default(),
                }),
                _ => None,
            })
        };
    Ok(crate::model::recipe_change::RecipeDraft {
        recipe,
        sha256: row.text("sha256")?,
        author: row.text("author")?,
        drafted_at: row.time("drafted_at")?,
        submitted: signature(
            "submitted_by",
            "submitted_name",
            "submitted_at",
            "submitted_sha256",
        )?,
        approved: signature(
            "approved_by",
            "approved_name",
            "approved_at",
            "approved_sha256",
        )?,
        effective_from: row.opt_time("effective_from")?,
    })
}

/// The columns [`qualification`] reads (an open range's `max_version` as 0).
pub(crate) const QUALIFICATION_COLUMNS: &str = "site_id, recipe_id, min_version, COALESCE(max_version, 0) AS max_version, \
     qualified_by, qualified_name, qualified_at, meaning, reason, withdrawn_by, withdrawn_at, withdrawn_reason";

/// A site's qualification for a product from its row ([`QUALIFICATION_COLUMNS`]).
pub(crate) fn qualification(row: &impl Columns) -> Result<crate::model::Qualification> {
    let version = |column: &str| -> Result<u32> {
        u32::try_from(row.int(column)?)
            .map_err(|_| Error::Corrupt(format!("site_qualifications.{column} out of range")))
    };
    let withdrawn = match (row.opt_text("withdrawn_by")?, row.opt_time("withdrawn_at")?) {
        (Some(by), Some(at)) => Some(crate::model::StatusChange {
            by,
            at,
            reason: row.opt_text("withdrawn_reason")?.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(crate::model::Qualification {
        site_id: row.text("site_id")?,
        recipe_id: row.text("recipe_id")?,
        min_version: version("min_version")?,
        max_version: Some(version("max_version")?).filter(|&v| v != 0),
        qualified_by: row.text("qualified_by")?,
        qualified_name: row.text("qualified_name")?,
        qualified_at: row.time("qualified_at")?,
        meaning: row.text("meaning")?,
        reason: row.text("reason")?,
        withdrawn,
    })
}

/// A row of `batch_measures`.
pub(crate) fn measure(row: &impl Columns) -> Result<crate::model::analytics::measure::Stored> {
    use crate::model::analytics::measure::{Run, Stored};
    Ok(Stored {
        batch_id: row.uuid("batch_id")?,
        site_id: row.text("site_id")?,
        batch_at: row.time("batch_at")?,
        unit: row.text("unit")?,
        run: Run {
            n: row.count("n")?,
            sum: row.real("sum")?,
            min: row.real("min")?,
            max: row.real("max")?,
            first_hours: row.real("first_hours")?,
            last_hours: row.real("last_hours")?,
            last_out: row.flag("last_out")?,
            out_of_range_hours: row.real("out_of_range_hours")?,
        },
    })
}

fn bin(row: &impl Columns) -> Result<u32> {
    u32::try_from(row.count("bin")?)
        .map_err(|_| Error::Corrupt("batch_trajectories.bin out of range".into()))
}

/// A row of `batch_trajectories`: its attribute, bin width and point.
pub(crate) fn trajectory_point(
    row: &impl Columns,
) -> Result<(String, f64, crate::model::analytics::golden::Point)> {
    Ok((
        row.text("attribute")?,
        row.real("bin_hours")?,
        crate::model::analytics::golden::Point {
            bin: bin(row)?,
            n: row.count("n")?,
            sum: row.real("sum")?,
        },
    ))
}

/// A released batch's mean in one bin: `(batch, bin, mean)`.
pub(crate) fn released_point(row: &impl Columns) -> Result<(Uuid, u32, f64)> {
    Ok((row.uuid("batch_id")?, bin(row)?, row.real("mean")?))
}

/// A row of `analytics_baselines`.
pub(crate) fn baseline(row: &impl Columns) -> Result<crate::model::analytics::measure::Baseline> {
    Ok(crate::model::analytics::measure::Baseline {
        product_id: row.text("product_id")?,
        chosen_at: row.time("chosen_at")?,
        chosen_by: row.text("chosen_by")?,
        reason: row.text("reason")?,
        batches: json("analytics_baselines.batches", &row.text("batches")?)?,
    })
}
