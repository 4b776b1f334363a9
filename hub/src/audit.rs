//! The audit trail: an append-only, hash-chained log of who did what to which record,
//! when and why (21 CFR Part 11 / EU GMP Annex 11; ARCHITECTURE.md invariant 6).
//!
//! Each entry's `sha256 = SHA-256(prev_sha256 || canonical bytes)`, where the
//! canonical bytes are a JSON object of the entry's position and fields. Changing
//! an entry breaks its own hash; removing one leaves a gap in positions; inserting
//! one breaks the link of the entry after it. [`verify`] walks the chain and names
//! the first entry that does not hold.
//!
//! What the chain alone cannot show: a cut of the newest entries, or a forger who
//! recomputes every later hash. Against both, record the head (`carrel-hub audit
//! verify` prints it) somewhere the database's administrators cannot write.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `prev_sha256` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an audit entry records: one typed action per kind of change or security
/// event. The text form (`order.created`) is what is stored and hashed, and what
/// people read in the trail.
macro_rules! actions {
    ($($(#[$doc:meta])* $name:ident = $text:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $($(#[$doc])* $name,)*
        }

        impl Action {
            /// Every action, in the order declared.
            pub const ALL: &'static [Action] = &[$(Action::$name,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Action::$name => $text,)*
                }
            }

            pub fn parse(text: &str) -> Option<Action> {
                match text {
                    $($text => Some(Action::$name),)*
                    _ => None,
                }
            }
        }
    };
}

actions! {
    RecipePublished = "recipe.published",
    /// A recipe version drafted (or its draft edited), with the draft's hash.
    RecipeDrafted = "recipe.drafted",
    /// The author signed a draft as ready for approval.
    RecipeSubmitted = "recipe.submitted",
    /// Another QA person signed the submitted draft's approval; it is published,
    /// effective from the date given.
    RecipeApproved = "recipe.approved",
    /// A published version retired: no new order pins it.
    RecipeRetired = "recipe.retired",
    /// A draft sent to the hub's simulator site for a dry run (a batch that is
    /// never released).
    RecipeDryRun = "recipe.dry_run",
    /// QA chose the batches of a product's baseline for its control limits.
    AnalyticsBaselineChosen = "analytics.baseline_chosen",
    /// A signal on a site's control chart of a QC result (a trend signal): an
    /// exception in QA's review of a batch still awaiting a decision.
    TrendSignal = "analytics.trend_signal",
    /// QA signed a site's qualification for a product (and versions): orders of it
    /// are taken there.
    SiteQualified = "site.qualified",
    /// A site's qualification for a product withdrawn: no new order of it there.
    SiteQualificationWithdrawn = "site.qualification_withdrawn",
    UserCreated = "user.created",
    UserSignedIn = "user.signed_in",
    UserSignedOut = "user.signed_out",
    UserSignInFailed = "user.sign_in_failed",
    /// Sign-in refused because of too many recent failures.
    UserSignInLocked = "user.sign_in_locked",
    /// The failed sign-ins (and signings) of one user name from one source in one
    /// window, counted: strangers' attempts reach the trail as counts, not one by one.
    UserSignInFailuresCounted = "user.sign_in_failures_counted",
    /// A source address refused further sign-ins for the rest of a window after too
    /// many failures for any user names.
    SourceSignInThrottled = "source.sign_in_throttled",
    /// A person acknowledged that their electronic signature is the legally binding
    /// equivalent of their handwritten signature.
    UserSignatureAcknowledged = "user.signature_acknowledged",
    UserDisabled = "user.disabled",
    /// A password changed: by its owner, or chosen by them after a reset.
    UserPasswordChanged = "user.password_changed",
    /// An administrator issued a one-time password reset (the old password stops working).
    UserPasswordReset = "user.password_reset",
    UserRoleChanged = "user.role_changed",
    /// The qa or admin role asked for, waiting for a second administrator.
    UserRoleGrantRequested = "user.role_grant_requested",
    UserRoleGrantApproved = "user.role_grant_approved",
    UserEnabled = "user.enabled",
    /// A person assigned to a site (or their entry sent again, which unlocks them there).
    UserAssignedToSite = "user.assigned_to_site",
    UserRemovedFromSite = "user.removed_from_site",
    /// A bedside badge (with its PIN) issued to a person, replacing any earlier one.
    UserBadgeIssued = "user.badge_issued",
    /// A person locked at a site after failed sign-ins there (reported by the site).
    UserLockedAtSite = "user.locked_at_site",
    /// An integration engine's system account made, with the physicians it acts for.
    SystemAccountAdded = "system_account.added",
    /// Physicians put in or taken out of a system account's scope.
    SystemAccountScopeChanged = "system_account.scope_changed",
    SystemAccountDisabled = "system_account.disabled",
    SystemAccountEnabled = "system_account.enabled",
    /// A new client secret issued; the old one and every token stop working.
    SystemAccountSecretRotated = "system_account.secret_rotated",
    /// An access token issued at the token endpoint (client credentials).
    SystemAccountTokenIssued = "system_account.token_issued",
    SiteRegistered = "site.registered",
    SiteEnrolled = "site.enrolled",
    SiteEnrollmentRefused = "site.enrollment_refused",
    SiteSuspended = "site.suspended",
    SiteResumed = "site.resumed",
    SiteCeased = "site.ceased",
    SiteCertificateIssued = "site.certificate_issued",
    SiteCertificateReplaced = "site.certificate_replaced",
    SiteCapacityChanged = "site.capacity_changed",
    SiteLinkDown = "site.link_down",
    SiteLinkRestored = "site.link_restored",
    SiteLinkRefused = "site.link_refused",
    SiteEventsRefused = "site.events_refused",
    /// A run of a site's events stored (object `site/{id}/events/{first}..{last}`).
    SiteEventsReplicated = "site_events.replicated",
    /// A running batch flagged for a QA decision (its site was suspended).
    BatchFlagged = "batch.flagged",
    BatchStateChanged = "batch.state_changed",
    CustodyMismatch = "custody.mismatch",
    RecordCorrected = "record.corrected",
    /// A deviation raised by a person at the hub (the site's are its records).
    DeviationRaised = "deviation.raised",
    /// An investigation note on a deviation.
    DeviationNoteAdded = "deviation.note_added",
    /// QA closed a deviation with a signed root cause and CAPA reference.
    DeviationClosed = "deviation.closed",
    OrderCreated = "order.created",
    OrderCancelled = "order.cancelled",
    OrderRescheduled = "order.rescheduled",
    /// The expected release slipped past what was last announced.
    OrderDelayed = "order.delayed",
    OrderAccessRefused = "order.access_refused",
    ReleaseSigned = "release.signed",
    ReleaseSigningRefused = "release.signing_refused",
    ReleaseSigningFailed = "release.signing_failed",
    /// The batch record written out for archiving (PDF and JSON), by whom.
    BatchRecordExported = "batch_record.exported",
    /// A record arrived after the batch's release decision and changes what QA reviewed.
    BatchChangedAfterDecision = "batch.changed_after_decision",
    /// A QA person reviewed, with a signature, the records that arrived after the decision.
    BatchChangeReviewed = "batch.change_reviewed",
    /// A result out of specification arrived after the batch's release: a patient
    /// follow-up is open until QA closes it.
    FollowUpOpened = "follow_up.opened",
    /// QA closed a patient follow-up with a signature saying what was done.
    FollowUpClosed = "follow_up.closed",
    NotificationSubscribed = "notification.subscribed",
    NotificationUnsubscribed = "notification.unsubscribed",
    NotificationRequeued = "notification.requeued",
    /// A site's witness contradicts the trail: entries removed, or an older backup restored.
    AuditIntegrityFinding = "audit.integrity_finding",
    /// An administrator acknowledged the integrity findings; people are served again.
    AuditFindingsAcknowledged = "audit.findings_acknowledged",
    CaRotated = "ca.rotated",
    CaPreviousRetired = "ca.previous_retired",
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Action {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Which record an audit entry is about. Its text form (`order/{id}`,
/// `site/{id}/events/{first}..{last}`) is what is stored and hashed;
/// [`Object::parse`] reads it back, so the format is written here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// The hub's certificate authority.
    Ca,
    Recipe {
        id: String,
        version: u32,
    },
    User(String),
    /// An integration engine's system account, by client id.
    SystemAccount(String),
    Site(String),
    /// A product (a recipe id, every version).
    Product(String),
    /// A site that could not be identified (a refused enrollment).
    UnknownSite,
    SiteCapacity(String),
    /// One event of a site's log.
    SiteEvent {
        site_id: String,
        seq: u64,
    },
    /// A run of a site's log, both ends included.
    SiteEvents {
        site_id: String,
        first: u64,
        last: u64,
    },
    Order(Uuid),
    Batch(Uuid),
    Subscription(Uuid),
    Notification(Uuid),
    /// A network address people sign in from (failed sign-ins are counted per source).
    Source(String),
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Ca => write!(f, "ca"),
            Object::Recipe { id, version } => write!(f, "recipe/{id}/v{version}"),
            Object::User(name) => write!(f, "user/{name}"),
            Object::SystemAccount(id) => write!(f, "system_account/{id}"),
            Object::Site(id) => write!(f, "site/{id}"),
            Object::Product(id) => write!(f, "product/{id}"),
            Object::UnknownSite => write!(f, "site/?"),
            Object::SiteCapacity(id) => write!(f, "site/{id}/capacity"),
            Object::SiteEvent { site_id, seq } => write!(f, "site/{site_id}/event/{seq}"),
            Object::SiteEvents {
                site_id,
                first,
                last,
            } => write!(f, "site/{site_id}/events/{first}..{last}"),
            Object::Order(id) => write!(f, "order/{id}"),
            Object::Batch(id) => write!(f, "batch/{id}"),
            Object::Subscription(id) => write!(f, "subscription/{id}"),
            Object::Notification(id) => write!(f, "notification/{id}"),
            Object::Source(address) => write!(f, "source/{address}"),
        }
    }
}

impl Object {
    /// The object a stored text names; `None` for text this hub never writes.
    pub fn parse(text: &str) -> Option<Object> {
        if text == "ca" {
            return Some(Object::Ca);
        }
        let (kind, rest) = text.split_once('/')?;
        let id = |rest: &str| rest.parse::<Uuid>().ok();
        Some(match kind {
            "recipe" => {
                let (id, version) = rest.rsplit_once("/v")?;
                Object::Recipe {
                    id: id.to_owned(),
                    version: version.parse().ok()?,
                }
            }
            "user" => Object::User(rest.to_owned()),
            "system_account" => Object::SystemAccount(rest.to_owned()),
            "product" => Object::Product(rest.to_owned()),
            "order" => Object::Order(id(rest)?),
            "batch" => Object::Batch(id(rest)?),
            "subscription" => Object::Subscription(id(rest)?),
            "notification" => Object::Notification(id(rest)?),
            "source" => Object::Source(rest.to_owned()),
            "site" if rest == "?" => Object::UnknownSite,
            "site" => {
                if let Some(site_id) = rest.strip_suffix("/capacity") {
                    Object::SiteCapacity(site_id.to_owned())
                } else if let Some((site_id, range)) = rest.rsplit_once("/events/") {
                    let (first, last) = range.split_once("..")?;
                    Object::SiteEvents {
                        site_id: site_id.to_owned(),
                        first: first.parse().ok()?,
                        last: last.parse().ok()?,
                    }
                } else if let Some((site_id, seq)) = rest.rsplit_once("/event/") {
                    Object::SiteEvent {
                        site_id: site_id.to_owned(),
                        seq: seq.parse().ok()?,
                    }
                } else {
                    Object::Site(rest.to_owned())
                }
            }
            _ => return None,
        })
    }
}

/// An entry to append; the store assigns position, time and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub actor: String,
    pub action: Action,
    pub object: String,
    pub batch_id: Option<Uuid>,
    pub old_value: String,
    pub new_value: String,
    pub reason: String,
}

impl NewEntry {
    pub fn new(actor: &str, action: Action, object: Object) -> NewEntry {
        NewEntry {
            actor: actor.to_owned(),
            action,
            object: object.to_string(),
            batch_id: None,
            old_value: String::new(),
            new_value: String::new(),
            reason: String::new(),
        }
    }

    pub fn batch(mut self, batch_id: Uuid) -> NewEntry {
        self.batch_id = Some(batch_id);
        self
    }

    pub fn change(
        mut self,
        old_value: impl Into<String>,
        new_value: impl Into<String>,
    ) -> NewEntry {
        self.old_value = old_value.into();
        self.new_value = new_value.into();
        self
    }

    pub fn value(mut self, new_value: impl Into<String>) -> NewEntry {
        self.new_value = new_value.into();
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> NewEntry {
        self.reason = reason.into();
        self
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub position: u64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: Action,
    pub object: String,
    pub batch_id: Option<Uuid>,
    pub old_value: String,
    pub new_value: String,
    pub reason: String,
    pub prev_sha256: String,
    pub sha256: String,
}

impl Entry {
    /// The record this entry is about, read back from its stored text.
    pub fn about(&self) -> Option<Object> {
        Object::parse(&self.object)
    }

    /// What the entry records, without its place in the chain.
    pub fn fields(&self) -> NewEntry {
        NewEntry {
            actor: self.actor.clone(),
            action: self.action,
            object: self.object.clone(),
            batch_id: self.batch_id,
            old_value: self.old_value.clone(),
            new_value: self.new_value.clone(),
            reason: self.reason.clone(),
        }
    }
}

#[derive(Serialize)]
struct Canonical<'a> {
    position: u64,
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    object: &'a str,
    batch_id: Option<String>,
    old_value: &'a str,
    new_value: &'a str,
    reason: &'a str,
}

/// The bytes an entry's hash covers after `prev_sha256`: a JSON object of its
/// position, its time as stored (`at`, RFC 3339) and its fields, in that order.
pub fn canonical_json(position: u64, at: &str, entry: &NewEntry) -> String {
    let canonical = Canonical {
        position,
        at,
        actor: &entry.actor,
        action: entry.action.as_str(),
        object: &entry.object,
        batch_id: entry.batch_id.map(|b| b.to_string()),
        old_value: &entry.old_value,
        new_value: &entry.new_value,
        reason: &entry.reason,
    };
    serde_json::to_string(&canonical).expect("an audit entry always serialises")
}

/// SHA-256 (hex) of `prev_sha256` followed by an entry's canonical JSON.
pub fn chained_sha256(prev_sha256: &str, canonical_json: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(prev_sha256.as_bytes());
    hash.update(canonical_json.as_bytes());
    hex::encode(hash.finalize())
}

/// The hash of an entry at `position` after `prev_sha256`; `at` as stored (RFC 3339).
pub fn entry_sha256(prev_sha256: &str, position: u64, at: &str, entry: &NewEntry) -> String {
    chained_sha256(prev_sha256, &canonical_json(position, at, entry))
}

/// The chain holds: this many entries, ending in this hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intact {
    pub entries: u64,
    pub head_sha256: String,
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {position}: {what}")]
pub struct Broken {
    pub position: u64,
    pub what: String,
}

/// Walks entries in position order (`at` is the stored RFC 3339 text).
pub fn verify(entries: impl IntoIterator<Item = (Entry, String)>) -> Result<Intact, Broken> {
    let mut expected = 1;
    let mut prev = GENESIS.to_owned();
    for (entry, at_text) in entries {
        if entry.position < expected {
            return Err(Broken {
                position: entry.position,
                what: "appears twice or out of order: an entry was inserted".into(),
            });
        }
        if entry.position > expected {
            return Err(Broken {
                position: expected,
                what: format!(
                    "is missing (the next entry is {}): an entry was removed",
                    entry.position
                ),
            });
        }
        if entry.prev_sha256 != prev {
            return Err(Broken {
                position: entry.position,
                what: "does not follow the entry before it: an entry was inserted or replaced here"
                    .into(),
            });
        }
        let recomputed = entry_sha256(&prev, entry.position, &at_text, &entry.fields());
        if recomputed != entry.sha256 {
            return Err(Broken {
                position: entry.position,
                what: format!(
                    "was altered: its content hashes to {recomputed}, not the stored {}",
                    entry.sha256
                ),
            });
        }
        prev = entry.sha256;
        expected += 1;
    }
    Ok(Intact {
        entries: expected - 1,
        head_sha256: prev,
    })
}

/// Keeps a flood of refusals from filling the audit trail. The first refusal of a
/// kind (a key such as site and reason) is entered at once; the ones that follow
/// within `window` are only counted, and when the window ends with a count, one
/// entry says how many there were ([`Throttle::due`]) and a new window opens. So a
/// sustained flood costs one entry per key per window, and none is lost from view.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    open: HashMap<String, Window>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    counted: u64,
    entry: NewEntry,
}

impl Throttle {
    pub fn new(window: Duration) -> Throttle {
        Throttle {
            window,
            open: HashMap::new(),
        }
    }

    /// Whether this refusal gets its own entry now (true), or is only counted.
    pub fn admit(&mut self, key: &str, entry: &NewEntry, now: Instant) -> bool {
        if let Some(window) = self.open.get_mut(key) {
            window.counted += 1;
            return false;
        }
        self.open.insert(
            key.to_owned(),
            Window {
                opened: now,
                counted: 0,
                entry: entry.clone(),
            },
        );
        true
    }

    /// The entries due at `now`: one for each window that ended with refusals only
    /// counted, saying how many. Windows that ended quietly are forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<NewEntry> {
        let mut due = Vec::new();
        let length = self.window;
        self.open.retain(|_, window| {
            if now.saturating_duration_since(window.opened) < length {
                return true;
            }
            if window.counted == 0 {
                return false;
            }
            due.push(window.entry.clone().value(format!(
                "{} more times in {} s (counted, not entered one by one)",
                window.counted,
                length.as_secs()
            )));
            window.opened = now;
            window.counted = 0;
            true
        });
        due
    }

    /// Kinds of refusal with a window open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_object_reads_back_from_its_stored_text() {
        let id = Uuid::from_u128(7);
        let objects = [
            Object::Ca,
            Object::Recipe {
                id: "car-t/v".into(),
                version: 3,
            },
            Object::User("qa.grace".into()),
            Object::Site("site-a".into()),
            Object::UnknownSite,
            Object::SiteCapacity("site-a".into()),
            Object::SiteEvent {
                site_id: "site-a".into(),
                seq: 9,
            },
            Object::SiteEvents {
                site_id: "site-a".into(),
                first: 3,
                last: 17,
            },
            Object::Order(id),
            Object::Batch(id),
            Object::Subscription(id),
            Object::Notification(id),
            Object::Source("127.0.0.2".into()),
        ];
        for object in objects {
            let text = object.to_string();
            assert_eq!(Object::parse(&text), Some(object), "{text}");
        }
        assert_eq!(
            Object::SiteEvents {
                site_id: "site-a".into(),
                first: 3,
                last: 17
            }
            .to_string(),
            "site/site-a/events/3..17"
        );
        // One event is not a run of events.
        assert_eq!(
            Object::parse("site/site-a/event/3"),
            Some(Object::SiteEvent {
                site_id: "site-a".into(),
                seq: 3
            })
        );
        for foreign in [
            "",
            "order/x",
            "order/not-a-uuid",
            "site/a/events/3",
            "lot/1",
            "recipe/x",
        ] {
            assert_eq!(Object::parse(foreign), None, "{foreign}");
        }
    }

    fn chain(n: u64) -> Vec<(Entry, String)> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|position| {
                let at = format!("2026-11-27T00:00:{position:02}.000000Z");
                let new = NewEntry::new(
                    "qa.one",
                    Action::ReleaseSigned,
                    Object::Batch(Uuid::from_u128(position.into())),
                )
                .value("released");
                let sha = entry_sha256(&prev, position, &at, &new);
                let entry = Entry {
                    position,
                    at: DateTime::parse_from_rfc3339(&at)
                        .expect("time")
                        .with_timezone(&Utc),
                    actor: new.actor,
                    action: new.action,
                    object: new.object,
                    batch_id: None,
                    old_value: new.old_value,
                    new_value: new.new_value,
                    reason: new.reason,
                    prev_sha256: prev.clone(),
                    sha256: sha.clone(),
                };
                prev = sha;
                (entry, at)
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let entries = chain(5);
        let head = entries[4].0.sha256.clone();
        assert_eq!(
            verify(entries),
            Ok(Intact {
                entries: 5,
                head_sha256: head
            })
        );
    }

    #[test]
    fn altered_removed_and_inserted_entries_are_named() {
        let mut altered = chain(5);
        altered[2].0.new_value = "rejected".into();
        assert_eq!(verify(altered).expect_err("altered").position, 3);

        let mut removed = chain(5);
        removed.remove(1);
        let broken = verify(removed).expect_err("removed");
        assert_eq!(broken.position, 2);
        assert!(broken.what.contains("missing"));

        let mut inserted = chain(5);
        let mut extra = inserted[1].clone();
        extra.0.new_value = "forged".into();
        inserted.insert(2, extra);
        let broken = verify(inserted).expect_err("inserted");
        assert_eq!(broken.position, 2);
        assert!(broken.what.contains("inserted"));
    }

    #[test]
    fn a_flood_of_refusals_is_one_entry_per_kind_and_window_with_a_count() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut throttle = Throttle::new(minute);
        let suspended = NewEntry::new(
            "site-a",
            Action::SiteLinkRefused,
            Object::Site("site-a".into()),
        )
        .reason("site \"site-a\" is suspended");
        let other = NewEntry::new(
            "site-b",
            Action::SiteLinkRefused,
            Object::Site("site-b".into()),
        );
        assert!(throttle.admit("site-a suspended", &suspended, start));
        assert!(throttle.admit("site-b", &other, start));
        for i in 0..1_000 {
            let at = start + Duration::from_millis(i);
            assert!(!throttle.admit("site-a suspended", &suspended, at));
        }
        assert!(throttle.due(start + Duration::from_secs(59)).is_empty());
        let due = throttle.due(start + minute);
        assert_eq!(due.len(), 1, "site-b's window ended quietly: {due:?}");
        assert_eq!(due[0].actor, "site-a");
        assert_eq!(due[0].reason, suspended.reason);
        assert!(due[0].new_value.starts_with("1000 more times in 60 s"));
        assert_eq!(throttle.open_windows(), 1, "the flood's window goes on");
        // Still flooding: counted into the next window, not entered.
        assert!(!throttle.admit("site-a suspended", &suspended, start + minute));
        assert_eq!(throttle.due(start + 2 * minute).len(), 1);
        assert!(throttle.due(start + 3 * minute).is_empty());
        assert_eq!(throttle.open_windows(), 0);
        assert!(throttle.admit("site-a suspended", &suspended, start + 3 * minute));
    }
}

/// A site's witness that the trail contradicts: the site was sent the head
/// (`position`, `sha256`) and the trail now ends before it, or holds another hash
/// there.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub site_id: String,
    pub position: u64,
    pub sha256: String,
    pub found_at: DateTime<Utc>,
    pub detail: String,
    /// Who acknowledged it, when and why; `None` while it holds the hub.
    pub acknowledged: Option<(String, DateTime<Utc>, String)>,
}
