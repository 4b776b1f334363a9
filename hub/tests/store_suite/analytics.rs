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
use uuid::Uuid;

pub const TEMPERATURE: &str = "step/expansion/temperature";

pub fn samples(values: &[(f64, f64)]) -> EventKind {
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
    let result_b_seq = result_b.seq;
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

    // Several results of a test in one message (as a site catching up sends them)
    // count as they would one by one: a retest of the stored result and a retest
    // of that; a result and its retest; and a result with another that retests
    // nothing, which leaves the test off the chart.
    let retest = |test: &str, value: f64, of: Option<u64>| EventKind::QcResult {
        test_id: test.into(),
        value: QcValue::Numeric(value),
        unit: "%".into(),
        method: "automated cell counter".into(),
        site_outcome: Outcome::Pass,
        retest_of: of,
    };
    let v1 = b.record(
        second.batch_id,
        retest("viability", 94.0, Some(result_b_seq)),
    );
    let c1 = b.record(second.batch_id, retest("cd3", 70.0, None));
    let p1 = b.record(second.batch_id, retest("car-positive", 30.0, None));
    let v2 = b.record(second.batch_id, retest("viability", 95.0, Some(v1.seq)));
    let c2 = b.record(second.batch_id, retest("cd3", 72.0, Some(c1.seq)));
    let p2 = b.record(second.batch_id, retest("car-positive", 31.0, None));
    ingest(&*store, SITE_B, &[v1, c1, p1, v2, c2, p2]).await;
    let charted = |rows: Vec<Stored>| -> Vec<(Uuid, f64)> {
        rows.iter().map(|m| (m.batch_id, m.run.mean())).collect()
    };
    assert_eq!(
        charted(measures(&*store, "qc/viability").await),
        vec![(first.batch_id, 88.0), (second.batch_id, 95.0)]
    );
    assert_eq!(
        charted(measures(&*store, "qc/cd3").await),
        vec![(second.batch_id, 72.0)]
    );
    assert!(measures(&*store, "qc/car-positive").await.is_empty());

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

/// A complete record with expansion temperature samples in two messages' worth of
/// records (`first`, then `then`); answers the record and where the second begins.
fn record_with_samples(
    log: &mut SiteLog,
    order: &carrel_hub::model::Order,
    recipe: &carrel_proto::recipe::Recipe,
    first: &[(f64, f64)],
    then: &[(f64, f64)],
) -> (Vec<carrel_proto::event::SiteEvent>, usize) {
    let id = order.batch_id;
    let mut events = vec![log.record(id, accepted(order, recipe))];
    let mut split = 0;
    for step in &recipe.steps {
        if let Some(c) = &step.custody_checkpoint {
            events.push(log.record(id, matched_scan(order, &c.id)));
        }
        events.push(log.record(id, step_started(&step.id)));
        if step.id == "expansion" {
            events.push(log.record(id, samples(first)));
            split = events.len();
            if !then.is_empty() {
                events.push(log.record(id, samples(then)));
            }
        }
        events.push(log.record(id, step_completed(&step.id)));
    }
    for test in recipe.all_tests() {
        events.push(log.record(id, qc_result(&test.id, passing_value(test), Outcome::Pass)));
    }
    (events, split)
}

pub async fn case_trajectories_are_kept_at_ingest_and_the_golden_batch_is_of_released_batches(
    store: Arc<dyn Store>,
) {
    use carrel_hub::model::analytics::golden::{self, Point, Side};
    let recipe = seed(&*store).await;
    let expansion = recipe.step("expansion").expect("expansion").clone();
    let bin_hours = expansion.duration_hours / 12.0;
    // Six released batches at site B: each has samples at 0 and 1 h (bin 0; the
    // second in a later message) and four of them one at 20 h (bin 1).
    let mut means_bin_0 = Vec::new();
    // One log for the site: its records are numbered across batches.
    let mut log = SiteLog::new();
    for i in 0..6u32 {
        let order = order_at(&*store, SITE_B).await;
        let v = 36.9 + 0.03 * f64::from(i);
        let later: Vec<(f64, f64)> = if i < 4 {
            vec![(1.0, v + 0.02), (20.0, v)]
        } else {
            vec![(1.0, v + 0.02)]
        };
        let (record, split) = record_with_samples(&mut log, &order, &recipe, &[(0.0, v)], &later);
        ingest(&*store, SITE_B, &record[..split]).await;
        ingest(&*store, SITE_B, &record[split..]).await;
        // A repeat of the second message adds nothing.
        ingest(&*store, SITE_B, &record[split..]).await;
        means_bin_0.push(v + 0.01);
        let sha = reviewed_sha256(&*store, order.batch_id).await;
        store
            .sign_release(&signature(&order, QA, sha), false, now())
            .await
            .expect("release");
        let kept = store
            .batch_trajectory(order.batch_id)
            .await
            .expect("trajectory");
        assert_eq!(kept[0].0, TEMPERATURE);
        assert_eq!((kept[0].1, kept[0].2.bin, kept[0].2.n), (bin_hours, 0, 2));
        assert!((kept[0].2.mean() - (v + 0.01)).abs() < 1e-9, "{kept:?}");
        assert_eq!(kept.len(), if i < 4 { 2 } else { 1 }, "{kept:?}");
    }
    // A batch still running at site A, warm in its first bin: its own trajectory,
    // not part of the band.
    let running = order_at(&*store, SITE_A).await;
    let mut a = SiteLog::new();
    let accepted_a = a.record(running.batch_id, accepted(&running, &recipe));
    let started = a.record(running.batch_id, step_started("expansion"));
    let warm = a.record(running.batch_id, samples(&[(0.5, 37.4), (2.0, 37.45)]));
    ingest(&*store, SITE_A, &[accepted_a, started, warm]).await;
    let trajectory = store
        .batch_trajectory(running.batch_id)
        .await
        .expect("trajectory");
    assert_eq!(
        trajectory,
        vec![(
            TEMPERATURE.to_owned(),
            bin_hours,
            Point {
                bin: 0,
                n: 2,
                sum: 37.4 + 37.45
            }
        )]
    );
    let released = store
        .released_trajectories(RECIPE_ID, TEMPERATURE, bin_hours)
        .await
        .expect("released");
    assert_eq!(released.len(), 6 + 4, "{released:?}");
    assert!(released.iter().all(|(b, _, _)| *b != running.batch_id));
    // Bins of another width (another version's duration) are not mixed in.
    assert!(store
        .released_trajectories(RECIPE_ID, TEMPERATURE, bin_hours * 2.0)
        .await
        .expect("released")
        .is_empty());
    let parameter = expansion
        .parameters
        .iter()
        .find(|p| p.name == "temperature")
        .expect("temperature");
    let band = golden::band(&expansion, parameter, released);
    assert_eq!(band.batches, 6);
    // Bin 1 has four batches: no band there.
    assert_eq!(
        band.bins
            .iter()
            .map(|b| (b.bin, b.batches))
            .collect::<Vec<_>>(),
        vec![(0, 6)]
    );
    means_bin_0.sort_by(f64::total_cmp);
    assert!((band.bins[0].median - (means_bin_0[2] + means_bin_0[3]) / 2.0).abs() < 1e-9);
    let out = band.with_points(vec![trajectory[0].2]).excursions;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].bin, out[0].side), (0, Side::Above));

    // Three batches' samples in one message, in every bin: more trajectory rows
    // than one statement of the SQLite writer takes (it writes them many rows to a
    // statement).
    let mut message = Vec::new();
    let mut wide = Vec::new();
    for k in 0..3u32 {
        let order = order_at(&*store, SITE_A).await;
        message.push(a.record(order.batch_id, accepted(&order, &recipe)));
        message.push(a.record(order.batch_id, step_started("expansion")));
        let values: Vec<(f64, f64)> = (0..12u32)
            .map(|bin| {
                (
                    (f64::from(bin) + 0.5) * bin_hours,
                    37.0 + 0.1 * f64::from(k),
                )
            })
            .collect();
        message.push(a.record(order.batch_id, samples(&values)));
        wide.push((order.batch_id, 37.0 + 0.1 * f64::from(k)));
    }
    ingest(&*store, SITE_A, &message).await;
    for (batch_id, value) in wide {
        let kept = store.batch_trajectory(batch_id).await.expect("trajectory");
        let bins: Vec<(u32, u64)> = kept.iter().map(|(_, _, p)| (p.bin, p.n)).collect();
        assert_eq!(bins, (0..12u32).map(|bin| (bin, 1)).collect::<Vec<_>>());
        assert!(kept.iter().all(|(_, _, p)| (p.sum - value).abs() < 1e-9));
    }

    // The trajectories made from the whole records are those ingest kept.
    let mut kept = Vec::new();
    for order in store.list_orders(None, None).await.expect("orders") {
        kept.push(store.batch_trajectory(order.batch_id).await.expect("kept"));
    }
    assert_eq!(store.backfill_measures().await.expect("backfill"), Some(10));
    let mut again = Vec::new();
    for order in store.list_orders(None, None).await.expect("orders") {
        again.push(store.batch_trajectory(order.batch_id).await.expect("again"));
    }
    assert_eq!(kept, again);
}

/// A batch placed at site A, with its site's log and the records that accept it
/// and start its expansion step (not ingested yet).
pub async fn a_batch_starting_expansion(
    store: &dyn Store,
) -> (
    carrel_hub::model::Order,
    SiteLog,
    Vec<carrel_proto::event::SiteEvent>,
) {
    let recipe = seed(store).await;
    let order = store
        .create_order(&new_order(SITE_A), now())
        .await
        .expect("order");
    let mut log = SiteLog::new();
    let started = vec![
        log.record(order.batch_id, accepted(&order, &recipe)),
        log.record(order.batch_id, step_started("expansion")),
    ];
    (order, log, started)
}

/// A batch's measures and trajectory as the store reads them.
pub async fn measured(
    store: &dyn Store,
    batch_id: Uuid,
) -> (
    Vec<Stored>,
    Vec<Stored>,
    Vec<(String, f64, carrel_hub::model::analytics::golden::Point)>,
) {
    (
        measures(store, TEMPERATURE).await,
        measures(store, "qc/viability").await,
        store.batch_trajectory(batch_id).await.expect("trajectory"),
    )
}

/// Measures of records stored just before the store is closed (none read in
/// between) are there, counted once, after it is opened again.
pub async fn case_measures_of_the_last_records_survive_reopening(
    store: Arc<dyn Store>,
    reopen: impl AsyncFnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) {
    let (order, mut a, mut first) = a_batch_starting_expansion(&*store).await;
    first.push(a.record(order.batch_id, samples(&[(0.0, 37.0), (1.0, 38.0)])));
    ingest(&*store, SITE_A, &first).await;
    let second = vec![
        a.record(order.batch_id, samples(&[(2.0, 37.2), (3.0, 36.9)])),
        a.record(
            order.batch_id,
            qc_result("viability", QcValue::Numeric(90.0), Outcome::Pass),
        ),
    ];
    ingest(&*store, SITE_A, &second).await;
    let store = reopen(store).await;
    let (temperature, viability, trajectory) = measured(&*store, order.batch_id).await;
    assert_eq!(temperature.len(), 1, "{temperature:?}");
    let run = temperature[0].run;
    assert_eq!((run.n, run.min, run.max), (4, 36.9, 38.0));
    assert!((run.sum - 149.1).abs() < 1e-9, "{run:?}");
    assert!((run.out_of_range_hours - 1.0).abs() < 1e-9, "{run:?}");
    assert_eq!(viability.len(), 1);
    assert_eq!(viability[0].run.mean(), 90.0);
    assert_eq!(
        trajectory.iter().map(|(_, _, p)| p.n).sum::<u64>(),
        4,
        "{trajectory:?}"
    );
}
