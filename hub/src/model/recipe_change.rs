//! Master batch records under change control: a new recipe version is drafted,
//! submitted by its author with a signature, approved by another QA person with a
//! signature, and effective from a date; a version can be retired. New orders pin
//! the version effective when they are placed; running batches keep theirs.
//!
//! [`diff`] says what a draft changes against the version it replaces, in the
//! recipe's own terms: steps, their parameters and ranges, and QC specifications.

use carrel_proto::recipe::{unit_words, Parameter, QcTest, Recipe, Step};
use chrono::{DateTime, Utc};

/// The site id of the hub's own simulator site, where drafts are dry-run. It
/// takes no patient's order, and its batches are never released.
pub const DRY_RUN_SITE: &str = "dry-run";

/// Who the audit trail names for registering the dry-run site (the only actor
/// that may register it).
pub const DRY_RUN_ACTOR: &str = "carrel-hub (dry-run simulator)";

/// The id a dry run's frozen copy of a draft is kept under: `<product>~dry-run-<n>`
/// (`~` never appears in a product id, so it cannot be taken by a product).
pub fn dry_run_copy_id(product: &str, n: u32) -> String {
    format!("{product}~dry-run-{n}")
}

/// Where a draft is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftState {
    /// Being written; may be edited.
    Draft,
    /// Signed by its author as ready; editing it again takes it back to a draft.
    Submitted,
    /// Approved (and published as a recipe version).
    Approved,
}

impl DraftState {
    pub fn as_str(self) -> &'static str {
        match self {
            DraftState::Draft => "draft",
            DraftState::Submitted => "submitted",
            DraftState::Approved => "approved",
        }
    }
}

/// A signature on a draft: who, their printed name, when, and the hash it binds.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftSignature {
    pub by: String,
    pub name: String,
    pub at: DateTime<Utc>,
    pub sha256: String,
}

/// A recipe version under change control.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeDraft {
    pub recipe: Recipe,
    /// SHA-256 of the draft's canonical JSON as last saved.
    pub sha256: String,
    pub author: String,
    pub drafted_at: DateTime<Utc>,
    /// The author's signature of submission; cleared when the draft is edited again.
    pub submitted: Option<DraftSignature>,
    pub approved: Option<DraftSignature>,
    /// From when new orders pin it (set at approval).
    pub effective_from: Option<DateTime<Utc>>,
}

impl RecipeDraft {
    pub fn state(&self) -> DraftState {
        if self.approved.is_some() {
            DraftState::Approved
        } else if self.submitted.is_some() {
            DraftState::Submitted
        } else {
            DraftState::Draft
        }
    }
}

/// One difference between two versions, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What changed: `step expansion`, `step expansion, parameter ph range`,
    /// `release test sterility, specification`.
    pub what: String,
    /// Before and after (empty when added or removed).
    pub before: String,
    pub after: String,
}

fn change(what: impl Into<String>, before: impl Into<String>, after: impl Into<String>) -> Change {
    Change {
        what: what.into(),
        before: before.into(),
        after: after.into(),
    }
}

fn step_words(s: &Step) -> String {
    format!(
        "{} ({}, {}, {} h)",
        s.name, s.operation, s.instrument_type, s.duration_hours
    )
}

fn parameter_words(p: &Parameter) -> String {
    format!("{} to {} {}", p.low, p.high, unit_words(&p.unit))
}

fn test_words(t: &QcTest) -> String {
    format!(
        "{} by {}: {} {}{}",
        t.name,
        t.method,
        t.spec,
        unit_words(&t.unit),
        if t.may_follow_release {
            " (may follow release)"
        } else {
            ""
        }
    )
}

fn tests_diff(place: &str, old: &[QcTest], new: &[QcTest], out: &mut Vec<Change>) {
    for t in new {
        match old.iter().find(|o| o.id == t.id) {
            None => out.push(change(format!("{place} {} added", t.id), "", test_words(t))),
            Some(o) if o != t => out.push(change(
                format!("{place} {}", t.id),
                test_words(o),
                test_words(t),
            )),
            Some(_) => {}
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|t| t.id == o.id)) {
        out.push(change(
            format!("{place} {} removed", o.id),
            test_words(o),
            "",
        ));
    }
}

/// What `new` changes against `old` (none: a new product), steps in the new order.
pub fn diff(old: Option<&Recipe>, new: &Recipe) -> Vec<Change> {
    let mut out = Vec::new();
    let Some(old) = old else {
        out.push(change(
            format!("new product {}", new.id),
            "",
            format!(
                "{} steps, {} release tests",
                new.steps.len(),
                new.release_tests.len()
            ),
        ));
        return out;
    };
    if old.title != new.title {
        out.push(change("title", &old.title, &new.title));
    }
    let old_order: Vec<&str> = old.steps.iter().map(|s| s.id.as_str()).collect();
    let new_order: Vec<&str> = new.steps.iter().map(|s| s.id.as_str()).collect();
    for s in &new.steps {
        let Some(o) = old.steps.iter().find(|o| o.id == s.id) else {
            out.push(change(format!("step {} added", s.id), "", step_words(s)));
            continue;
        };
        if step_words(o) != step_words(s) {
            out.push(change(
                format!("step {}", s.id),
                step_words(o),
                step_words(s),
            ));
        }
        if o.custody_checkpoint != s.custody_checkpoint {
            let words = |c: &Option<carrel_proto::recipe::CustodyCheckpoint>| {
                c.as_ref()
                    .map(|c| format!("{} ({} verifier(s))", c.name, c.verifiers))
                    .unwrap_or_else(|| "none".into())
            };
            out.push(change(
                format!("step {}, custody checkpoint", s.id),
                words(&o.custody_checkpoint),
                words(&s.custody_checkpoint),
            ));
        }
        for p in &s.parameters {
            match o.parameters.iter().find(|q| q.name == p.name) {
                None => out.push(change(
                    format!("step {}, parameter {} added", s.id, p.name),
                    "",
                    parameter_words(p),
                )),
                Some(q) if parameter_words(q) != parameter_words(p) => out.push(change(
                    format!("step {}, parameter {} range", s.id, p.name),
                    parameter_words(q),
                    parameter_words(p),
                )),
                Some(_) => {}
            }
        }
        for q in o
            .parameters
            .iter()
            .filter(|q| !s.parameters.iter().any(|p| p.name == q.name))
        {
            out.push(change(
                format!("step {}, parameter {} removed", s.id, q.name),
                parameter_words(q),
                "",
            ));
        }
        tests_diff(
            &format!("step {}, in-process test", s.id),
            &o.in_process_tests,
            &s.in_process_tests,
            &mut out,
        );
    }
    for o in old
        .steps
        .iter()
        .filter(|o| !new_order.contains(&o.id.as_str()))
    {
        out.push(change(format!("step {} removed", o.id), step_words(o), ""));
    }
    let kept_old: Vec<&str> = old_order
        .iter()
        .copied()
        .filter(|id| new_order.contains(id))
        .collect();
    let kept_new: Vec<&str> = new_order
        .iter()
        .copied()
        .filter(|id| old_order.contains(id))
        .collect();
    if kept_old != kept_new {
        out.push(change(
            "step order",
            kept_old.join(" → "),
            kept_new.join(" → "),
        ));
    }
    tests_diff(
        "release test",
        &old.release_tests,
        &new.release_tests,
        &mut out,
    );
    if old.bedside_checkpoints != new.bedside_checkpoints {
        let words = |c: &[carrel_proto::recipe::CustodyCheckpoint]| {
            c.iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(change(
            "bedside checkpoints",
            words(&old.bedside_checkpoints),
            words(&new.bedside_checkpoints),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Recipe {
        Recipe::from_toml(include_str!("../../recipes/cd19-car-t.v1.toml")).expect("shipped")
    }

    #[test]
    fn a_changed_range_an_added_step_and_a_changed_spec_are_each_named() {
        let old = shipped();
        let mut new = old.clone();
        new.version = 2;
        assert!(diff(Some(&old), &new).is_empty(), "same content: no change");
        let step = new
            .steps
            .iter_mut()
            .find(|s| !s.parameters.is_empty())
            .expect("a step with parameters");
        let step_id = step.id.clone();
        let name = step.parameters[0].name.clone();
        step.parameters[0].high += 1.0;
        let mut added = new.steps[0].clone();
        added.id = "hold".into();
        added.name = "Hold".into();
        new.steps.push(added);
        new.release_tests[0].spec.min = Some(99.0);
        let test_id = new.release_tests[0].id.clone();
        let changes = diff(Some(&old), &new);
        let whats: Vec<&str> = changes.iter().map(|c| c.what.as_str()).collect();
        assert!(
            whats.contains(&format!("step {step_id}, parameter {name} range").as_str()),
            "{whats:?}"
        );
        assert!(whats.contains(&"step hold added"), "{whats:?}");
        assert!(
            whats.contains(&format!("release test {test_id}").as_str()),
            "{whats:?}"
        );
        assert_eq!(changes.len(), 3, "{changes:?}");
    }

    #[test]
    fn a_removed_step_and_a_new_order_are_named() {
        let old = shipped();
        let mut new = old.clone();
        let last = new.steps.pop().expect("a step");
        new.steps.swap(0, 1);
        let whats: Vec<String> = diff(Some(&old), &new).into_iter().map(|c| c.what).collect();
        assert!(
            whats.contains(&format!("step {} removed", last.id)),
            "{whats:?}"
        );
        assert!(whats.contains(&"step order".to_owned()), "{whats:?}");
    }
}
