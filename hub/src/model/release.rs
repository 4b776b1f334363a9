//! The rules of a release decision that need nothing but the batch and its recipe:
//! which meaning a signature may carry, and when a conditional release may be
//! completed. The service asks them before the password is asked for; the store
//! asks them again in the transaction that writes the signature.
//!
//! A test that may follow release (a sterility culture takes 14 days) need not be
//! in when QA signs. A release signed while such a result is outstanding is
//! *conditional* and names the results it waits for; a plain release is refused
//! then, so nobody releases a batch without saying, and signing, that results are
//! missing. When every named result has arrived within specification, a QA person
//! *completes* the release with a signature of its own. A result out of
//! specification after release opens a patient follow-up (the projection does, in
//! the transaction that stores it) and the release can no longer be completed.

use super::{BatchState, Order};
use carrel_proto::event::ReleaseMeaning;
use carrel_proto::recipe::Recipe;

/// The tests (ids, in the recipe's order) that may follow release and have no
/// result in this batch's record yet.
pub fn outstanding(order: &Order, recipe: &Recipe) -> Vec<String> {
    recipe
        .outstanding_after_release(&order.progress.tests_recorded)
        .map(|t| t.id.clone())
        .collect()
}

fn named(recipe: &Recipe, ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("{} ({id})", recipe.test_name(id)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a decision on a batch awaiting release may carry `meaning`, given the
/// tests the signer `names` as outstanding. Err says why not.
pub fn check_decision(
    order: &Order,
    recipe: &Recipe,
    meaning: ReleaseMeaning,
    names: &[String],
) -> Result<(), String> {
    let outstanding = outstanding(order, recipe);
    match meaning {
        ReleaseMeaning::Rejected => Ok(()),
        ReleaseMeaning::Released if outstanding.is_empty() => Ok(()),
        ReleaseMeaning::Released => Err(format!(
            "results that may follow release are still outstanding: {}; a release before them is conditional: sign \"released conditionally\" naming them",
            named(recipe, &outstanding)
        )),
        ReleaseMeaning::ReleasedConditionally if outstanding.is_empty() => Err(
            "every result of this batch is in: nothing is outstanding, so the release is not conditional; sign \"released\"".into(),
        ),
        ReleaseMeaning::ReleasedConditionally => {
            let mut given: Vec<&str> = names.iter().map(|n| n.trim()).collect();
            given.sort_unstable();
            given.dedup();
            let mut expected: Vec<&str> = outstanding.iter().map(String::as_str).collect();
            expected.sort_unstable();
            if given == expected {
                Ok(())
            } else {
                Err(format!(
                    "a conditional release names exactly the results still outstanding: {} (named: {})",
                    named(recipe, &outstanding),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ))
            }
        }
        ReleaseMeaning::ReleaseCompleted => Err(format!(
            "batch {} awaits its release decision; \"release completed\" is signed only after a conditional release, once its results are in",
            order.batch_id
        )),
    }
}

/// A completion names the results the conditional release waited for, as the
/// signer saw them (`awaited`); Err says what it should have named.
pub fn check_named(awaited: &[String], named: &[String]) -> Result<(), String> {
    let mut given: Vec<&str> = named.iter().map(|n| n.trim()).collect();
    given.sort_unstable();
    given.dedup();
    let mut expected: Vec<&str> = awaited.iter().map(String::as_str).collect();
    expected.sort_unstable();
    if given == expected {
        Ok(())
    } else {
        Err(format!(
            "a completion names the results the conditional release waited for: {} (named: {})",
            awaited.join(", "),
            if named.is_empty() {
                "none".to_owned()
            } else {
                named.join(", ")
            }
        ))
    }
}

/// The tests a completion of `order`'s conditional release confirms, or why it
/// cannot be completed now: the batch was not released conditionally (or its
/// release is complete already), a named result has not arrived, one arrived out
/// of specification (a patient follow-up), or records that arrived after the
/// decision await QA's review.
pub fn check_completion(order: &Order, recipe: &Recipe) -> Result<Vec<String>, String> {
    let progress = &order.progress;
    let released = matches!(
        order.state,
        BatchState::Released | BatchState::HandedOver | BatchState::Infused
    );
    if !released || progress.release_awaits.is_empty() {
        return Err(format!(
            "batch {} is {} and has no conditional release to complete",
            order.batch_id, order.state
        ));
    }
    let awaited: Vec<String> = progress.release_awaits.iter().cloned().collect();
    if let Some(failed) = progress
        .follow_ups
        .iter()
        .find(|f| progress.release_awaits.contains(&f.test_id))
    {
        return Err(format!(
            "{} arrived out of specification after release (record {}): the release cannot be completed; the patient follow-up stands until QA closes it",
            named(recipe, std::slice::from_ref(&failed.test_id)),
            failed.site_seq
        ));
    }
    let missing: Vec<String> = awaited
        .iter()
        .filter(|t| !progress.tests_recorded.contains(*t))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the release still waits for {}",
            named(recipe, &missing)
        ));
    }
    let unreviewed = progress.unreviewed_changes();
    if !unreviewed.is_empty() {
        return Err(format!(
            "records {} arrived after the release decision and await QA's review; review them first",
            unreviewed
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(awaited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FollowUpMark, Progress};
    use chrono::Utc;
    use uuid::Uuid;

    fn recipe() -> Recipe {
        Recipe::from_toml(include_str!("../../recipes/cd19-car-t.v1.toml")).expect("shipped")
    }

    fn order(state: BatchState, recorded: &[&str]) -> Order {
        Order {
            order_id: Uuid::nil(),
            batch_id: Uuid::nil(),
            coi: String::new(),
            patient_pseudonym: String::new(),
            recipe_id: "cd19-car-t".into(),
            recipe_version: 1,
            site_id: "site-a".into(),
            requested_collection_date: String::new(),
            physician: String::new(),
            created_at: Utc::now(),
            state,
            current_step: None,
            progress: Progress {
                tests_recorded: recorded.iter().map(|t| t.to_string()).collect(),
                ..Progress::default()
            },
            decision_recorded: false,
            updated_at: Utc::now(),
            dry_run: false,
        }
    }

    fn all_but_sterility(recipe: &Recipe) -> Vec<&str> {
        recipe
            .all_tests()
            .filter(|t| !t.may_follow_release)
            .map(|t| t.id.as_str())
            .collect()
    }

    #[test]
    fn a_release_with_a_result_outstanding_must_say_it_is_conditional() {
        let recipe = recipe();
        let order = order(BatchState::AwaitingRelease, &all_but_sterility(&recipe));
        assert_eq!(outstanding(&order, &recipe), ["sterility"]);
        let refused = check_decision(&order, &recipe, ReleaseMeaning::Released, &[])
            .expect_err("plain release refused");
        assert!(refused.contains("Sterility (sterility)"), "{refused}");
        assert!(refused.contains("released conditionally"), "{refused}");
        let refused = check_decision(
            &order,
            &recipe,
            ReleaseMeaning::ReleasedConditionally,
            &["mycoplasma".into()],
        )
        .expect_err("names the wrong test");
        assert!(refused.contains("named: mycoplasma"), "{refused}");
        check_decision(
            &order,
            &recipe,
            ReleaseMeaning::ReleasedConditionally,
            &["sterility".into()],
        )
        .expect("names what is outstanding");
        check_decision(&order, &recipe, ReleaseMeaning::Rejected, &[]).expect("reject");
        assert!(check_decision(&order, &recipe, ReleaseMeaning::ReleaseCompleted, &[]).is_err());
    }

    #[test]
    fn with_every_result_in_a_release_is_not_conditional() {
        let recipe = recipe();
        let ids: Vec<&str> = recipe.all_tests().map(|t| t.id.as_str()).collect();
        let order = order(BatchState::AwaitingRelease, &ids);
        check_decision(&order, &recipe, ReleaseMeaning::Released, &[]).expect("plain");
        let refused = check_decision(
            &order,
            &recipe,
            ReleaseMeaning::ReleasedConditionally,
            &["sterility".into()],
        )
        .expect_err("nothing outstanding");
        assert!(refused.contains("nothing is outstanding"), "{refused}");
    }

    #[test]
    fn a_conditional_release_completes_only_with_its_results_in_specification() {
        let recipe = recipe();
        let mut order = order(BatchState::HandedOver, &all_but_sterility(&recipe));
        assert!(check_completion(&order, &recipe)
            .expect_err("not conditional")
            .contains("no conditional release"));
        order.progress.release_awaits.insert("sterility".into());
        assert!(check_completion(&order, &recipe)
            .expect_err("still waiting")
            .contains("still waits for Sterility"));
        order.progress.tests_recorded.insert("sterility".into());
        order.progress.changed_after_decision.push(40);
        assert!(check_completion(&order, &recipe)
            .expect_err("unreviewed change")
            .contains("records 40"));
        order.progress.changes_reviewed_through = 40;
        assert_eq!(
            check_completion(&order, &recipe).expect("complete"),
            ["sterility"]
        );
        order.progress.follow_ups.push(FollowUpMark {
            site_seq: 41,
            test_id: "sterility".into(),
            opened_at: Utc::now(),
            closed: true,
        });
        let refused = check_completion(&order, &recipe).expect_err("failed after release");
        assert!(refused.contains("record 41"), "{refused}");
    }
}
