//! The shared test suite of the hub's [`Store`] interface.
//!
//! Every case is an `async fn case_*(store: Arc<dyn Store>)` in the module of its
//! concern: it seeds what it needs through the store's own methods, calls the method
//! under test and asserts on what is stored afterwards (rows, cursors, state), never
//! only on "no error". The cases know nothing about the backend. The list at the
//! bottom of this file names each case once; `every_backend!` runs each of them
//! against a fresh SQLite file and against a fresh PostgreSQL database (test names
//! `sqlite::<module>::<case>` and `postgres::<module>::<case>`); `scripts/test` starts
//! the throw-away PostgreSQL server they use and names it in
//! `CARREL_TEST_POSTGRES_URL`. Cases that only make sense on one backend are in
//! `backend_specific`.
//!
//! To add a case: write it in the module of its concern and add its name to the list.
//!
//! [`Store`]: carrel_hub::store::Store

#[macro_use]
mod fixtures;
mod backends;

// The concerns, in the order of the list at the bottom: recipes first.
mod recipes;
// People and sessions.
mod people;
// The audit trail.
mod audit;
// Sites: enrollment, lifecycle, certificates, link claims.
mod sites;
// The two logs: site events in (ingest, projections), hub commands out.
mod logs;
// Orders and cancelling them.
mod orders;
// Release: the e-signature and the decision sent to the site.
mod release;
// Scheduling: capacity, bookings, re-planning, the clock.
mod scheduling;
// Notifications: the notifier and the outbox.
mod notifications;
// Process analytics: measures kept at ingest, baselines.
mod analytics;
// Operations: durability across reopening.
mod operations;
// Cases of one backend only, last.
mod backend_specific;

/// One `#[tokio::test]` per case of the list, for every backend: a module per
/// backend (`sqlite`, `postgres`) with a module per concern, each test on a fresh,
/// empty database. A case marked `(reopen)` is also given a function that closes the
/// store and opens the same database again.
macro_rules! every_backend {
    ($($list:tt)*) => {
        on_backend!(sqlite, open_sqlite, open_sqlite_reopenable; $($list)*);
        on_backend!(postgres, open_postgres, open_postgres_reopenable; $($list)*);
    };
}

macro_rules! on_backend {
    ($backend:ident, $open:ident, $open_reopenable:ident;
     $($module:ident: [$($case:ident $(($how:ident))?),+ $(,)?]),+ $(,)?) => {
        mod $backend {
            $(
                mod $module {
                    $(case_test!($open, $open_reopenable, $module, $case $(($how))?);)+
                }
            )+
        }
    };
}

macro_rules! case_test {
    ($open:ident, $open_reopenable:ident, $module:ident, $case:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $case() {
            let (_guard, store) = crate::backends::$open().await;
            crate::$module::$case(store).await;
        }
    };
    ($open:ident, $open_reopenable:ident, $module:ident, $case:ident(reopen)) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $case() {
            let (_guard, store, reopen) = crate::backends::$open_reopenable().await;
            crate::$module::$case(store, async move |store| reopen(store).await).await;
        }
    };
}

// The cases, once, by concern.
every_backend! {
    recipes: [
        case_recipe_versions_are_immutable,
        case_a_new_version_is_drafted_submitted_approved_by_another_and_pinned_when_effective,
        case_a_draft_is_dry_run_on_the_simulator_site_and_never_released,
    ],
    people: [
        case_sessions_expire_and_end,
        case_failed_sign_ins_are_counted_per_user_and_source,
        case_the_first_signature_of_a_session_and_the_acknowledgement_are_kept,
        case_people_reach_their_sites_as_directory_commands,
        case_records_are_checked_against_the_directory_the_site_used,
        case_a_lock_at_a_site_is_stored_and_audited,
        case_a_system_account_acts_for_its_physicians_until_disabled,
    ],
    audit: [
        case_changes_are_audited_in_one_chain,
        case_a_witness_the_trail_contradicts_is_a_finding_until_acknowledged,
    ],
    sites: [
        case_expired_enrollment_token_is_refused,
        case_enrollment_token_works_once,
        case_adding_a_site_twice_is_refused,
        case_suspending_a_site_flags_its_running_batches_for_qa,
        case_a_site_ceases_only_when_its_batches_are_closed_and_for_good,
        case_a_renewed_certificate_replaces_the_old_one_when_first_used,
        case_the_newest_link_claim_wins,
        case_an_order_needs_the_sites_qualification_for_the_product,
        case_a_qualification_is_replaced_and_withdrawn_never_changed,
        case_an_order_for_a_version_out_of_the_range_is_refused,
        case_a_bad_qualification_is_refused_and_stores_nothing,
    ],
    logs: [
        case_ingest_stores_consecutive_events_and_advances_cursor,
        case_ingest_accepts_identical_repeats_and_changes_nothing,
        case_the_writer_counts_its_commits_requests_and_new_events,
        case_ingest_refuses_a_changed_repeat,
        case_ingest_refuses_a_gap_and_stores_nothing_of_the_call,
        case_ingest_refuses_events_for_another_sites_batch,
        case_ingest_refuses_events_for_a_batch_never_ordered,
        case_site_log_must_be_a_hash_chain,
        case_one_message_may_repeat_and_correct_its_own_records,
        case_concurrent_ingests_commit_together_and_a_refused_one_changes_nothing,
        case_batch_awaits_release_exactly_when_its_record_is_complete,
        case_out_of_spec_result_is_kept_and_flagged,
        case_custody_mismatch_is_an_exception_and_audited,
        case_command_acks_are_bounded_by_what_was_issued,
    ],
    orders: [
        case_order_queues_a_batch_order_command,
        case_successive_orders_get_distinct_valid_cois,
        case_refused_orders_create_nothing,
        case_cancel_stops_a_batch_in_process,
        case_an_order_request_sent_twice_places_one_order,
    ],
    release: [
        case_release_needs_a_complete_record,
        case_release_is_bound_to_the_record_as_reviewed,
        case_a_qa_who_took_part_at_the_site_may_not_release_it,
        case_a_name_typed_at_a_site_neither_bars_nor_clears_a_qa,
        case_simulated_operators_work_is_released_only_where_accepted,
        case_release_decision_matches_the_stored_signature,
        case_a_record_after_the_decision_marks_the_batch_until_qa_reviews_it,
        case_an_open_major_deviation_stops_release_until_qa_closes_it,
        case_a_conditional_release_names_what_is_outstanding_and_completes_with_a_signature,
        case_a_result_out_of_specification_after_release_opens_a_follow_up_qa_closes,
    ],
    scheduling: [
        case_concurrent_bookings_of_the_last_slot_give_one_success,
        case_two_bookings_racing_for_the_last_instrument_give_one_success,
        case_cancelling_frees_a_slot_and_rescheduling_moves_it,
        case_a_capacity_that_breaks_bookings_or_misses_open_orders_is_refused,
        case_a_batch_running_long_pushes_the_bookings_behind_it,
        case_the_clock_reads_milestones_from_the_record,
    ],
    notifications: [
        case_notifier_queues_each_happening_once,
        case_a_physicians_subscription_matches_only_their_orders,
        case_the_ordering_physician_finds_critical_news_in_the_console_list,
        case_deliveries_back_off_fail_and_can_be_requeued,
        case_a_site_link_down_is_reported_once_per_outage,
        case_concurrent_notifiers_and_workers_queue_and_claim_each_once,
    ],
    analytics: [
        case_measures_are_kept_at_ingest_and_a_baseline_is_chosen_and_audited,
        case_a_trend_signal_is_kept_once_and_an_audited_exception_while_undecided,
        case_trajectories_are_kept_at_ingest_and_the_golden_batch_is_of_released_batches,
        case_measures_of_the_last_records_survive_reopening(reopen),
    ],
    operations: [
        case_data_survives_reopening(reopen),
    ],
}
