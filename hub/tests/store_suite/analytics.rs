//! Process analytics: each batch's measures are kept at ingest, and QA's baseline is
//! chosen, fixed and audited.

use crate::fixtures::*;
use carrel_hub::audit::Action;
use carrel_hub::model::analytics::measure::{Run, Stored};
use carrel_hub::model::analytics::trend::TrendSignal;
use carrel_hub::notify::{Channel, Kind, NewSubscription};
use carrel_hub::store::analytics::BaselineChoice;
use carrel_hub::store::notify::OutboxFilter;
use carrel_hub::store::{Error, Store};
use carrel_proto::event::{EventKind, Sample};
use carrel_proto::recipe::{Outcome, QcValue};
use chrono::Duration;
use std::sync::Arc;

const TEMPERATURE: &str = "step/expansion/temperature";

fn samples(values: &[(f64, f64)]) -> EventKind {
    EventKind::ProcessSamples {
        step_id: "expansion".into(),
        samples: values
            .iter()
            .map(|&(step_hours, value)| Sample {
                step_hours,
                parameter: "temperature".into(),
                value,
                unit: "degC".into(),
            })
            .collect(),
    }
}

/// QA's choice of a baseline.
fn choice<'a>(
    product_id: &'a str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    first: Option<usize>,
    reason: &'a str,
) -> BaselineChoice<'a> {
    BaselineChoice {
        product_id,
        from,
        to,
        first,
        reason,
        by: QA,
    }
}

async fn measures(store: &dyn Store, attribute: &str) -> Vec<Stored> {
    store
        .batch_measures(RECIPE_ID, attribute)
        .await
        .expect("measures")
}

pub async fn case_measures_are_kept_at_ingest_and_a_baseline_is_chosen_and_audited(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let t0 = now() - Duration::days(10);
    let first = store
        .create_order(&new_order(SITE_A), t0)
        .await
        .expect("order");
    let second = store
        .create_order(&new_order(SITE_B), t0 + Duration::days(1))
        .await
        .expect("order");
    let mut a = SiteLog::new();
    let accepted_a = a.record(first.batch_id, accepted(&first, &recipe));
    let started = a.record(first.batch_id, step_started("expansion"));
    // The range is 36.5..=37.5: 38.0 at 1 h is out until the next sample at 2 h,
    // and 36.0 at 3 h is out until the sample at 4.5 h, which arrives in the next
    // message: the time out of range crosses it.
    let one = a.record(
        first.batch_id,
        samples(&[(0.0, 37.0), (1.0, 38.0), (2.0, 37.1), (3.0, 36.0)]),
    );
    ingest(&*store, SITE_A, &[accepted_a, started, one]).await;
    let two = a.record(first.batch_id, samples(&[(4.5, 37.0), (5.0, 37.2)]));
    let viability = a.record(
        first.batch_id,
        qc_result("viability", QcValue::Numeric(91.5), Outcome::Pass),
    );
    // A text result is stored but not charted.
    let sterility = a.record(
        first.batch_id,
        qc_result(
            "sterility",
            QcValue::Text("no growth".into()),
            Outcome::Pass,
        ),
    );
    ingest(&*store, SITE_A, &[two.clone(), viability, sterility]).await;
    // A repeat of a stored record changes no measure.
    ingest(&*store, SITE_A, &[two]).await;

    let got = measures(&*store, TEMPERATURE).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let run = got[0].run;
    let expected = [
        (0.0, 37.0),
        (1.0, 38.0),
        (2.0, 37.1),
        (3.0, 36.0),
        (4.5, 37.0),
        (5.0, 37.2),
    ]
    .iter()
    .map(|&(h, v)| Run::of(h, v, 36.5, 37.5))
    .reduce(Run::then)
    .expect("samples");
    assert_eq!(run.n, 6);
    assert_eq!((run.min, run.max), (36.0, 38.0));
    assert!((run.out_of_range_hours - 2.5).abs() < 1e-9, "{run:?}");
    assert!((run.sum - expected.sum).abs() < 1e-9);
    assert_eq!(run.last_out, expected.last_out);
    assert_eq!(
        (
            got[0].site_id.as_str(),
            got[0].batch_at,
            got[0].unit.as_str()
        ),
        (SITE_A, t0, "degC")
    );
    assert_eq!(measures(&*store, "qc/viability").await[0].run.mean(), 91.5);
    assert!(measures(&*store, "qc/sterility").await.is_empty());

    // A retest replaces the value charted.
    let retest = a.record(
        first.batch_id,
        EventKind::QcResult {
            test_id: "viability".into(),
            value: QcValue::Numeric(88.0),
            unit: "%".into(),
            method: "automated cell counter".into(),
            site_outcome: Outcome::Pass,
            retest_of: Some(5),
        },
    );
    ingest(&*store, SITE_A, &[retest]).await;
    let viability = measures(&*store, "qc/viability").await;
    assert_eq!(viability.len(), 1);
    assert_eq!((viability[0].run.n, viability[0].run.mean()), (1, 88.0));
    // A second result of a test that retests nothing (or not the charted one), or
    // a result in another unit: which counts is unclear, or it is not comparable.
    // The test is left off the chart (the batch record flags it for QA).
    let cd3 = a.record(
        first.batch_id,
        qc_result("cd3", QcValue::Numeric(80.0), Outcome::Pass),
    );
    let cd3_again = a.record(
        first.batch_id,
        qc_result("cd3", QcValue::Numeric(95.0), Outcome::Pass),
    );
    let mut other_unit = a.record(
        first.batch_id,
        qc_result("car-positive", QcValue::Numeric(0.3), Outcome::Pass),
    );
    if let EventKind::QcResult { unit, .. } = &mut other_unit.kind {
        *unit = "fraction".into();
    }
    // (re-chained: the kind changed after the record was made)
    let other_unit = {
        let mut log = SiteLog {
            next_seq: other_unit.seq,
            last_sha256: other_unit.prev_sha256.clone(),
        };
        let e = log.record(first.batch_id, other_unit.kind.clone());
        a = SiteLog {
            next_seq: log.next_seq,
            last_sha256: log.last_sha256,
        };
        e
    };
    ingest(&*store, SITE_A, &[cd3]).await;
    assert_eq!(measures(&*store, "qc/cd3").await.len(), 1);
    ingest(&*store, SITE_A, &[cd3_again, other_unit]).await;
    assert!(measures(&*store, "qc/cd3").await.is_empty());
    assert!(measures(&*store, "qc/car-positive").await.is_empty());

    // The second site's batch, placed a day later, follows in chart order.
    let mut b = SiteLog::new();
    let accepted_b = b.record(second.batch_id, accepted(&second, &recipe));
    let result_b = b.record(
        second.batch_id,
        qc_result("viability", QcValue::Numeric(93.0), Outcome::Pass),
    );
    ingest(&*store, SITE_B, &[accepted_b, result_b]).await;
    let viability = measures(&*store, "qc/viability").await;
    assert_eq!(
        viability
            .iter()
            .map(|m| (m.batch_id, m.site_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(first.batch_id, SITE_A), (second.batch_id, SITE_B)]
    );
    assert_eq!(
        store
            .measure_attributes(RECIPE_ID)
            .await
            .expect("attributes"),
        vec![
            ("qc/viability".to_owned(), "%".to_owned()),
            (TEMPERATURE.to_owned(), "degC".to_owned()),
        ]
    );
    assert_eq!(
        store.measured_products().await.expect("products"),
        vec![RECIPE_ID.to_owned()]
    );

    // The measures made from the batches' whole records (as for batches stored
    // before measures were kept) are those ingest kept, message by message: runs
    // across messages, a retest, the ambiguous test and the other unit included.
    let attributes = ["qc/viability", "qc/cd3", "qc/car-positive", TEMPERATURE];
    let mut kept = Vec::new();
    for attribute in attributes {
        kept.push(measures(&*store, attribute).await);
    }
    assert_eq!(
        store.backfill_measures().await.expect("backfill"),
        Some(2),
        "both batches gone through"
    );
    for (attribute, before) in attributes.iter().zip(&kept) {
        assert_eq!(&measures(&*store, attribute).await, before, "{attribute}");
    }
    assert_eq!(store.backfill_measures().await.expect("again"), None);

    // A baseline: refused without a reason, with the window backwards, for an
    // unknown product and with too few batches, storing nothing.
    let window = (t0 - Duration::hours(1), t0 + Duration::days(2));
    assert_refused!(
        store
            .choose_baseline(&choice(RECIPE_ID, window.0, window.1, None, " "))
            .await,
        Error::Invalid
    );
    assert_refused!(
        store
            .choose_baseline(&choice(
                RECIPE_ID,
                window.1,
                window.0,
                None,
                "first batches"
            ))
            .await,
        Error::Invalid
    );
    assert_refused!(
        store
            .choose_baseline(&choice(
                "no-such-product",
                window.0,
                window.1,
                None,
                "first batches"
            ))
            .await,
        Error::NotFound
    );
    assert_refused!(
        store
            .choose_baseline(&choice(
                RECIPE_ID,
                window.0,
                t0 + Duration::hours(1),
                None,
                "first batch"
            ))
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(
        store.analytics_baseline(RECIPE_ID).await.expect("read"),
        None
    );
    assert_eq!(
        store
            .audit_count(Action::AnalyticsBaselineChosen)
            .await
            .expect("count"),
        0
    );

    let chosen = store
        .choose_baseline(&choice(
            RECIPE_ID,
            window.0,
            window.1,
            None,
            "validation batches",
        ))
        .await
        .expect("baseline");
    assert_eq!(chosen.batches, vec![first.batch_id, second.batch_id]);
    // Fixed when chosen: a batch placed in the window afterwards is not added.
    let late = store
        .create_order(&new_order(SITE_A), t0 + Duration::hours(12))
        .await
        .expect("order");
    let mut a2 = a;
    let accepted_late = a2.record(late.batch_id, accepted(&late, &recipe));
    let result_late = a2.record(
        late.batch_id,
        qc_result("viability", QcValue::Numeric(90.0), Outcome::Pass),
    );
    ingest(&*store, SITE_A, &[accepted_late, result_late]).await;
    let in_force = store
        .analytics_baseline(RECIPE_ID)
        .await
        .expect("read")
        .expect("chosen");
    assert_eq!(in_force.batches, chosen.batches);
    assert_eq!(
        (in_force.chosen_by.as_str(), in_force.reason.as_str()),
        (QA, "validation batches")
    );
    assert_eq!(
        store
            .audit_count(Action::AnalyticsBaselineChosen)
            .await
            .expect("count"),
        1
    );
    // The newest choice is in force; the earlier one is kept.
    let again = store
        .choose_baseline(&choice(
            RECIPE_ID,
            window.0,
            window.1,
            None,
            "with the late batch",
        ))
        .await
        .expect("baseline");
    assert_eq!(again.batches.len(), 3);
    // At most the first n, in the order placed: the late batch was placed second.
    let first_two = store
        .choose_baseline(&choice(
            RECIPE_ID,
            window.0,
            window.1,
            Some(2),
            "the first two",
        ))
        .await
        .expect("baseline");
    assert_eq!(first_two.batches, vec![first.batch_id, late.batch_id]);
    // One batch is too few, whatever the window holds.
    assert_refused!(
        store
            .choose_baseline(&choice(
                RECIPE_ID,
                window.0,
                window.1,
                Some(1),
                "the first one"
            ))
            .await,
        Error::FailedPrecondition
    );
    assert_eq!(
        store
            .analytics_baseline(RECIPE_ID)
            .await
            .expect("read")
            .expect("chosen")
            .reason,
        "the first two"
    );
}

fn trend_signal(order: &carrel_hub::model::Order, value: f64) -> TrendSignal {
    TrendSignal {
        batch_id: order.batch_id,
        product_id: RECIPE_ID.into(),
        site_id: order.site_id.clone(),
        attribute: "qc/viability".into(),
        statistic: "value".into(),
        rule: 1,
        value,
        text: format!(
            "trend signal: Viability {value} at {}, Nelson rule 1",
            order.site_id
        ),
    }
}

pub async fn case_a_trend_signal_is_kept_once_and_an_audited_exception_while_undecided(
    store: Arc<dyn Store>,
) {
    let recipe = seed(&*store).await;
    let running = order_at(&*store, SITE_A).await;
    let released = order_at(&*store, SITE_B).await;
    let mut a = SiteLog::new();
    let accepted_a = a.record(running.batch_id, accepted(&running, &recipe));
    ingest(&*store, SITE_A, &[accepted_a]).await;
    let mut b = SiteLog::new();
    let record = complete_record(&mut b, &released, &recipe);
    ingest(&*store, SITE_B, &record).await;
    let sha = reviewed_sha256(&*store, released.batch_id).await;
    store
        .sign_release(&signature(&released, QA, sha), false, now())
        .await
        .expect("release");

    // QA subscribes to trend signals, the physician to everything.
    let subscribe = |owner: &'static str, kinds: Vec<Kind>| {
        let store = store.clone();
        async move {
            store
                .subscribe(
                    &NewSubscription {
                        owner: owner.into(),
                        kinds: kinds.into_iter().collect(),
                        channel: Channel::Webhook {
                            url: format!("https://receiver.example/{owner}"),
                            secret: "test-secret".into(),
                        },
                        site_id: None,
                    },
                    now(),
                )
                .await
                .expect("subscribe")
        }
    };
    let qa = subscribe(QA, vec![Kind::TrendSignal]).await;
    let signals = [trend_signal(&running, 71.5), trend_signal(&released, 72.0)];
    assert_eq!(
        store.record_trend_signals(&signals).await.expect("record"),
        2
    );
    // Found again (another pass, another replica): kept once.
    assert_eq!(
        store.record_trend_signals(&signals).await.expect("again"),
        0
    );
    // Only the batch awaiting a decision is audited (and so notified); the one
    // found on a released batch is kept for the record.
    assert_eq!(
        store.audit_count(Action::TrendSignal).await.expect("count"),
        1
    );
    // The batch awaiting a decision has it among its exceptions for QA; the
    // released one does not change.
    let running_now = store.order(running.order_id).await.expect("order");
    assert_eq!(
        running_now.progress.anomalies,
        vec![signals[0].text.clone()]
    );
    assert_eq!(running_now.state, carrel_hub::model::BatchState::Accepted);
    // The notifier turns the audited one into QA's notification.
    while store
        .run_notifier(100, now())
        .await
        .expect("notifier")
        .entries
        > 0
    {}
    let queued = store
        .outbox(&OutboxFilter {
            subscription_id: Some(qa.subscription_id),
            ..OutboxFilter::default()
        })
        .await
        .expect("outbox");
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].kind, Kind::TrendSignal);
    assert_eq!(queued[0].batch_id, Some(running.batch_id));
    let released_now = store.order(released.order_id).await.expect("order");
    assert!(released_now.progress.anomalies.is_empty());
    assert_eq!(released_now.state, carrel_hub::model::BatchState::Released);
}
