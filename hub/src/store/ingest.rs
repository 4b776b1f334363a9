//! A site's message of events, planned once for every backend: which events are
//! new, whether each is the next link of the site's chain and belongs to a batch the
//! hub placed at that site, how each moves its batch, the QC results the hub
//! evaluates, and what is audited. Pure: the backend looks up what [`needs`] names,
//! [`plan`] decides, and the backend writes the [`Plan`] in one transaction (SQLite
//! in its group commit, `sqlite/ingest.rs`; PostgreSQL in `postgres.rs`).
//!
//! The semantics are those [`super::Store::ingest_events`] documents: repeats of
//! stored events are accepted and skipped; a gap, a changed repeat, a broken chain
//! or a record for another site's batch refuses the whole message.

use super::{Error, Ingested, Received, Result};
use crate::audit::{Action, NewEntry, Object};
use crate::model::analytics::measure;
use crate::model::{Order, Projection, QcRecord, StoredRecipe};
use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::link::Misplaced;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// What the writer of site events has committed since the store was opened, counted
/// by the writer itself: durable transactions, the sites' requests they held and the
/// new events in them. Events per commit is `events / commits` (a group commit holds
/// many requests; an audit entry is written per request, not per commit).
#[derive(Debug, Default)]
pub struct Counters {
    commits: std::sync::atomic::AtomicU64,
    requests: std::sync::atomic::AtomicU64,
    events: std::sync::atomic::AtomicU64,
}

/// A reading of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub commits: u64,
    pub requests: u64,
    pub events: u64,
}

impl Counters {
    /// One transaction committed, holding `requests` stored requests with `events`
    /// new events between them.
    pub fn committed(&self, requests: u64, events: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.commits.fetch_add(1, Relaxed);
        self.requests.fetch_add(requests, Relaxed);
        self.events.fetch_add(events, Relaxed);
    }

    pub fn counts(&self) -> Counts {
        use std::sync::atomic::Ordering::Relaxed;
        Counts {
            commits: self.commits.load(Relaxed),
            requests: self.requests.load(Relaxed),
            events: self.events.load(Relaxed),
        }
    }
}

/// What the backend must look up, in its transaction, before planning a message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Seqs at or below the cursor that the message repeats: their stored bodies.
    pub stored_bodies: Vec<u64>,
    /// The seq whose hash the first new event must name (none when it is seq 1).
    pub chain_head: Option<u64>,
    /// Batches of the new events: their orders, and the recipes those pin.
    pub batches: Vec<Uuid>,
    /// Seqs stored before this message that a correction points at: their batch.
    pub correction_targets: Vec<u64>,
}

/// What the backend found for [`Needs`]; a missing key is a row that does not exist.
#[derive(Debug, Default)]
pub struct Found {
    pub stored_bodies: HashMap<u64, String>,
    pub chain_head: Option<String>,
    pub orders: HashMap<Uuid, (Order, std::sync::Arc<StoredRecipe>)>,
    pub correction_targets: HashMap<u64, Uuid>,
}

/// What to write for a message, in this order: the new events' rows, their QC
/// evaluations, the projections of the batches they touched, the audit entries,
/// and the site's cursor (`ingested.acked_event_seq`).
#[derive(Debug)]
pub struct Plan<'a> {
    pub events: Vec<&'a Received>,
    pub qc: Vec<(Uuid, QcRecord)>,
    pub projections: Vec<(Uuid, Projection)>,
    /// What the new events add to their batches' charted measures (none for a
    /// dry run's batch).
    pub measures: Vec<Measures>,
    pub audit: Vec<NewEntry>,
    pub ingested: Ingested,
}

/// A batch's measure updates from one message, with what the chart rows carry.
#[derive(Debug)]
pub struct Measures {
    pub batch_id: Uuid,
    pub product_id: String,
    pub site_id: String,
    /// When the order was placed: the order of batches on a chart.
    pub batch_at: chrono::DateTime<chrono::Utc>,
    pub updates: measure::Pending,
}

impl Measures {
    /// `order`'s batch's `updates`.
    pub fn new(order: &Order, updates: measure::Pending) -> Measures {
        Measures {
            batch_id: order.batch_id,
            product_id: order.recipe_id.clone(),
            site_id: order.site_id.clone(),
            batch_at: order.created_at,
            updates,
        }
    }
}

/// What a message at `cursor` (the highest seq stored for the site) needs looked
/// up. Stops at the first event that will be refused: nothing after it is needed.
pub fn needs(cursor: u64, events: &[Received]) -> Needs {
    let mut needs = Needs::default();
    let mut next = cursor;
    let mut batches = HashSet::new();
    for received in events {
        let event = received.event();
        match place(event, next) {
            Err(_) => break,
            Ok(Placement::Repeat) => {
                if event.seq <= cursor {
                    needs.stored_bodies.push(event.seq);
                }
            }
            Ok(Placement::Next) => {
                if next == cursor && event.seq > 1 {
                    needs.chain_head = Some(cursor);
                }
                next = event.seq;
                if !event.is_site_wide() && batches.insert(event.batch_id) {
                    needs.batches.push(event.batch_id);
                }
                if let EventKind::Correction { corrects_seq, .. } = &event.kind {
                    if *corrects_seq <= cursor {
                        needs.correction_targets.push(*corrects_seq);
                    }
                }
            }
        }
    }
    needs
}

/// Plans a message of `site_id`'s events at `cursor`, from what the backend
/// [`Found`] for its [`needs`]; refuses it whole, with the first reason, or says
/// what to write.
pub fn plan<'a>(
    site_id: &str,
    cursor: u64,
    events: &'a [Received],
    found: &Found,
) -> Result<Plan<'a>> {
    let first_new = cursor + 1;
    let mut next = cursor;
    let mut plan = Plan {
        events: Vec::new(),
        qc: Vec::new(),
        projections: Vec::new(),
        measures: Vec::new(),
        audit: Vec::new(),
        ingested: Ingested {
            acked_event_seq: cursor,
            new_events: 0,
        },
    };
    // The events of this message already planned, by seq (for repeats and
    // corrections that point into the message itself).
    let mut planned: HashMap<u64, &Received> = HashMap::new();
    // The hash the next event must carry as prev_sha256 (the site's log is a chain).
    let mut chain_head: Option<String> = None;
    // Batches touched, with their projection and measure updates, in the order
    // first touched.
    let mut touched: Vec<(Order, Projection, &StoredRecipe, measure::Pending)> = Vec::new();
    // Checks that an event is the next link of the site's chain after `head` (the
    // hash of the event before it in this message, if any); returns its own hash.
    let link = |received: &Received, head: Option<String>| -> Result<String> {
        let event = received.event();
        let expected_prev = match head {
            Some(head) => head,
            None if event.seq == 1 => carrel_proto::event::GENESIS_SHA256.to_owned(),
            None => found
                .chain_head
                .clone()
                .ok_or_else(|| missing_below_cursor(site_id, event.seq - 1))?,
        };
        check_chain(event, &expected_prev)?;
        Ok(received.sha256().to_owned())
    };
    for received in events {
        let event = received.event();
        if place(event, next)? == Placement::Repeat {
            let stored = match planned.get(&event.seq) {
                Some(earlier) => Some(earlier.body()),
                None => found.stored_bodies.get(&event.seq).map(String::as_str),
            };
            check_repeat(site_id, received, stored)?;
            continue;
        }
        if event.is_site_wide() {
            // A record about the site, not a batch: chained and stored like any
            // other, audited, and no batch moves.
            chain_head = Some(link(received, chain_head.take())?);
            planned.insert(event.seq, received);
            plan.events.push(received);
            if let EventKind::PersonLocked { username, failures } = &event.kind {
                tracing::warn!(
                    site_id,
                    username,
                    failures,
                    "a person was locked at a site after failed sign-ins"
                );
                plan.audit.push(
                    NewEntry::new(
                        site_id,
                        Action::UserLockedAtSite,
                        Object::User(username.clone()),
                    )
                    .value(format!(
                        "locked at site {site_id} (site record {})",
                        event.seq
                    ))
                    .reason(format!("{failures} failed sign-ins at the site")),
                );
            }
            next = event.seq;
            plan.ingested.new_events += 1;
            continue;
        }
        let slot = match touched
            .iter()
            .position(|(o, _, _, _)| o.batch_id == event.batch_id)
        {
            Some(slot) => slot,
            None => {
                let found_order = found.orders.get(&event.batch_id);
                let order =
                    check_batch_of_site(site_id, event, found_order.map(|(o, _)| o.clone()))?;
                let recipe = &found_order.expect("checked above").1;
                let projection = order.projection();
                touched.push((order, projection, recipe, measure::Pending::default()));
                touched.len() - 1
            }
        };
        chain_head = Some(link(received, chain_head.take())?);
        planned.insert(event.seq, received);
        plan.events.push(received);
        let (order, projection, recipe, measures) = &mut touched[slot];
        let state_before = projection.state;
        if let Some(qc) = projection.apply(
            event,
            &recipe.recipe,
            &recipe.sha256,
            crate::model::Patient {
                coi: &order.coi,
                pseudonym: &order.patient_pseudonym,
            },
        ) {
            plan.qc.push((event.batch_id, qc));
        }
        if !order.dry_run {
            measures.add(event.seq, &event.kind, &recipe.recipe);
        }
        let target = |seq: u64| match planned.get(&seq) {
            Some(earlier) => Some(earlier.event().batch_id),
            None => found.correction_targets.get(&seq).copied(),
        };
        audit_site_event(
            &mut plan.audit,
            site_id,
            event,
            order,
            projection,
            state_before,
            target,
        );
        next = event.seq;
        plan.ingested.new_events += 1;
    }
    plan.ingested.acked_event_seq = next;
    for (order, projection, _, updates) in touched {
        if !updates.is_empty() {
            plan.measures.push(Measures::new(&order, updates));
        }
        plan.projections.push((order.batch_id, projection));
    }
    if plan.ingested.new_events > 0 {
        plan.audit.push(
            NewEntry::new(
                site_id,
                Action::SiteEventsReplicated,
                Object::SiteEvents {
                    site_id: site_id.to_owned(),
                    first: first_new,
                    last: next,
                },
            )
            .value(format!(
                "{} events; last hash {}",
                plan.ingested.new_events,
                chain_head.unwrap_or_default()
            )),
        );
    }
    Ok(plan)
}

/// Audits what one site event changed or revealed: batch state changes, custody
/// mismatches (raised to QA), and corrections (with their reason). A correction
/// must point at an earlier record of the same batch (`target` tells the batch of
/// a seq of the site's log).
fn audit_site_event(
    audit: &mut Vec<NewEntry>,
    site_id: &str,
    event: &SiteEvent,
    order: &Order,
    projection: &mut Projection,
    state_before: crate::model::BatchState,
    target: impl Fn(u64) -> Option<Uuid>,
) {
    let object = Object::SiteEvent {
        site_id: site_id.to_owned(),
        seq: event.seq,
    };
    match &event.kind {
        EventKind::CustodyScan {
            checkpoint_id,
            expected_coi,
            scanned_coi,
            matched: false,
            ..
        } => {
            tracing::warn!(site_id, batch_id = %event.batch_id, checkpoint_id, scanned_coi, "COI MISMATCH at custody checkpoint: raised to QA");
            audit.push(
                NewEntry::new(&event.recorded_by, Action::CustodyMismatch, object)
                    .batch(event.batch_id)
                    .change(expected_coi.clone(), scanned_coi.clone())
                    .reason(format!("hard stop at checkpoint {checkpoint_id}")),
            );
        }
        EventKind::Correction {
            corrects_seq,
            reason,
            field,
            new_value,
        } => {
            if target(*corrects_seq) != Some(event.batch_id) {
                projection.flag(
                    event,
                    format!("correction points at record {corrects_seq}, which is not a record of this batch"),
                );
            }
            audit.push(
                NewEntry::new(
                    &event.recorded_by,
                    Action::RecordCorrected,
                    Object::SiteEvent {
                        site_id: site_id.to_owned(),
                        seq: *corrects_seq,
                    },
                )
                .batch(event.batch_id)
                .value(format!("{field} = {new_value} (by record {})", event.seq))
                .reason(reason.clone()),
            );
        }
        _ => {}
    }
    if projection.progress.changed_after_decision.last() == Some(&event.seq) {
        let (what, detail) = crate::record::describe(&event.kind);
        tracing::warn!(site_id, batch_id = %order.batch_id, seq = event.seq, what, "a record arrived after the release decision: QA must review it");
        audit.push(
            NewEntry::new(
                site_id,
                Action::BatchChangedAfterDecision,
                Object::SiteEvent {
                    site_id: site_id.to_owned(),
                    seq: event.seq,
                },
            )
            .batch(order.batch_id)
            .value(format!("{what}: {detail}"))
            .reason(format!(
                "arrived after the batch was {}; QA must review it",
                state_before
            )),
        );
    }
    if let Some(opened) = projection
        .progress
        .follow_ups
        .last()
        .filter(|f| f.site_seq == event.seq)
    {
        let (_, detail) = crate::record::describe(&event.kind);
        tracing::error!(site_id, batch_id = %order.batch_id, seq = event.seq, test_id = %opened.test_id, "a result out of specification arrived after release: patient follow-up opened");
        audit.push(
            NewEntry::new(
                site_id,
                Action::FollowUpOpened,
                Object::SiteEvent {
                    site_id: site_id.to_owned(),
                    seq: event.seq,
                },
            )
            .batch(order.batch_id)
            .value(format!("{}: {detail}", opened.test_id))
            .reason(format!(
                "out of specification after the batch was {state_before}; QA must close the patient follow-up"
            )),
        );
    }
    if projection.state != state_before {
        audit.push(
            NewEntry::new(
                site_id,
                Action::BatchStateChanged,
                Object::Batch(order.batch_id),
            )
            .batch(order.batch_id)
            .change(state_before.as_str(), projection.state.as_str())
            .reason(format!("site record {}", event.seq)),
        );
    }
}

/// Where a site event stands against the hub's cursor for its site: the link's
/// one rule for both logs ([`carrel_proto::link::place`]).
pub(crate) use carrel_proto::link::Placement;

/// Checks a site event's seq against the cursor (the highest seq stored): seq 0
/// and gaps are refused. Shared by both backends' ingest.
pub(crate) fn place(event: &SiteEvent, cursor: u64) -> Result<Placement> {
    carrel_proto::link::place(event.seq, cursor).map_err(|e| match e {
        Misplaced::Zero => Error::Protocol("event seq 0: a site log starts at 1".into()),
        Misplaced::Gap { seq, cursor } => Error::Protocol(format!(
            "event seq {seq} leaves a gap: the hub has everything up to {cursor}, the next must be {}",
            cursor + 1
        )),
    })
}

/// A repeated event must be what is stored under its seq (`stored`, the body).
fn check_repeat(site_id: &str, received: &Received, stored: Option<&str>) -> Result<()> {
    let event = received.event();
    match stored {
        Some(body) if body == received.body() => Ok(()),
        Some(_) => Err(Error::Protocol(format!(
            "event seq {} is already stored with different content; a record cannot be changed, send a correction instead",
            event.seq
        ))),
        None => Err(missing_below_cursor(site_id, event.seq)),
    }
}

/// The order an event's batch belongs to (`found`, looked up by batch), which must
/// be one the hub placed at this site.
fn check_batch_of_site(site_id: &str, event: &SiteEvent, found: Option<Order>) -> Result<Order> {
    let order = found.ok_or_else(|| {
        Error::PermissionDenied(format!(
            "event seq {} is for batch {}, which the hub never ordered",
            event.seq, event.batch_id
        ))
    })?;
    if order.site_id != site_id {
        return Err(Error::PermissionDenied(format!(
            "event seq {} is for batch {}, which belongs to another site",
            event.seq, event.batch_id
        )));
    }
    Ok(order)
}

/// The event must name `expected_prev`, the hash of the site's previous event.
fn check_chain(event: &SiteEvent, expected_prev: &str) -> Result<()> {
    if event.prev_sha256 != expected_prev {
        return Err(Error::Protocol(format!(
            "event seq {} breaks the site's hash chain: it names {} as the previous event's hash, \
             but event {} hashes to {expected_prev}; the site's log was altered",
            event.seq,
            event.prev_sha256,
            event.seq - 1
        )));
    }
    Ok(())
}

/// The error for a site event missing below the cursor.
fn missing_below_cursor(site_id: &str, seq: u64) -> Error {
    Error::Corrupt(format!(
        "site {site_id} event {seq} is missing below the cursor"
    ))
}
