//! Scheduling through the real hub: an administrator declares a site's capacity,
//! two physicians race for the last collection slot over gRPC, the loser is told
//! what is free instead, an order is rescheduled, and the CLI shows the order's
//! vein-to-vein clock, the site's utilisation and the network's figures.

use carrel_proto::pb;
use carrel_tests::{authed, Agent, Hub};
use chrono::{Duration, Utc};
use tonic::Code;

const ADMIN: (&str, &str) = ("adm.sched", "admin-password-123");
const DR_A: (&str, &str) = ("dr.one", "physician-password-1");
const DR_B: (&str, &str) = ("dr.two", "physician-password-2");
const SITE: &str = "site-s";

/// One collection a day, every day; one processing system.
const CAPACITY: &str = r#"
working_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
opens = "07:00"
closes = "19:00"
collection_slots_per_day = 1

[instruments]
apheresis = 1
bench = 1
closed-processing-system = 4
"#;

/// The administrator declares the site's capacity from `file` with the CLI.
fn declare_capacity(hub: &Hub, file: &std::path::Path) {
    hub.cli_ok(
        ADMIN.0,
        &[
            "schedule",
            "capacity",
            SITE,
            "--set",
            file.to_str().expect("path"),
        ],
        None,
    );
}

fn order_request(patient: &str, date: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        patient_pseudonym: patient.into(),
        product: "cd19-car-t".into(),
        site_id: SITE.into(),
        requested_collection_date: date.into(),
        request_id: String::new(),
        confirm_second_order: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn capacity_booking_rescheduling_and_the_clock_through_the_hub() {
    let hub = Hub::start().await;
    for (user, role, password) in [
        (ADMIN.0, "admin", ADMIN.1),
        (DR_A.0, "physician", DR_A.1),
        (DR_B.0, "physician", DR_B.1),
    ] {
        hub.add_user(user, role, password);
    }
    // The site is enrolled (active) but its agent is not running: the orders stay
    // ahead of their collection, as booked orders are.
    let token = hub.add_site(SITE);
    let _agent = Agent::enroll(&hub, SITE, &token).expect("enroll");
    let channel = hub.channel().await;
    let mut schedule = pb::schedule_service_client::ScheduleServiceClient::new(channel.clone());
    let admin = hub.login(ADMIN.0, ADMIN.1).await.expect("admin signs in");
    let dr_a = hub.login(DR_A.0, DR_A.1).await.expect("sign in");
    let dr_b = hub.login(DR_B.0, DR_B.1).await.expect("sign in");

    // A capacity that cannot work is refused with the reason, and nothing is stored.
    let mut bad = pb::Capacity {
        working_days: vec!["mon".into()],
        opens: "18:00".into(),
        closes: "08:00".into(),
        collection_slots_per_day: 1,
        instruments: vec![pb::InstrumentCount {
            instrument_type: "bench".into(),
            count: 1,
        }],
        closures: vec![],
        time_zone: String::new(),
    };
    let refused = schedule
        .set_capacity(authed(
            &admin,
            pb::SetCapacityRequest {
                site_id: SITE.into(),
                capacity: Some(bad.clone()),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("opens (18:00) must be before closes (08:00)"),
        "{}",
        refused.message()
    );
    bad.opens = "08:00".into();
    bad.closes = "18:00".into();
    let refused = schedule
        .set_capacity(authed(
            &dr_a,
            pb::SetCapacityRequest {
                site_id: SITE.into(),
                capacity: Some(bad),
            },
        ))
        .await
        .expect_err("a physician may not declare capacity");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let none = schedule
        .get_capacity(authed(
            &admin,
            pb::GetCapacityRequest {
                site_id: SITE.into(),
            },
        ))
        .await
        .expect_err("nothing declared");
    assert_eq!(none.code(), Code::NotFound);

    // Declared from a file with the CLI, and read back.
    let file = hub.data_dir().join("capacity.toml");
    std::fs::write(&file, CAPACITY).expect("write capacity file");
    declare_capacity(&hub, &file);
    let shown = hub.cli_ok(DR_A.0, &["schedule", "capacity", SITE], None);
    assert!(shown.contains("collection_slots_per_day = 1"), "{shown}");

    // Two physicians book the one slot of a day at the same moment: one succeeds, the
    // other is told the slot is taken and what is free next.
    let day = (Utc::now() + Duration::days(4)).date_naive();
    let next = day + Duration::days(1);
    let mut orders_a = pb::order_service_client::OrderServiceClient::new(channel.clone());
    let mut orders_b = pb::order_service_client::OrderServiceClient::new(channel.clone());
    let (a, b) = tokio::join!(
        orders_a.create_order(authed(&dr_a, order_request("PAT-A1", &day.to_string()))),
        orders_b.create_order(authed(&dr_b, order_request("PAT-B1", &day.to_string()))),
    );
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) => ((DR_A, won), lost),
        (Err(lost), Ok(won)) => ((DR_B, won), lost),
        other => panic!("expected one success and one refusal, got {other:?}"),
    };
    assert_eq!(lost.code(), Code::FailedPrecondition);
    assert!(
        lost.message()
            .contains(&format!("every collection slot on {day} is taken"))
            && lost
                .message()
                .contains(&format!("next free: {next} at {SITE} (slot 1, 07:00 UTC)")),
        "{}",
        lost.message()
    );
    let order = won.1.into_inner().order.expect("order");
    let proposals = schedule
        .propose_collection(authed(
            &dr_a,
            pb::ProposeCollectionRequest {
                product: "cd19-car-t".into(),
                site_id: SITE.into(),
                from: day.to_string(),
                other_sites: false,
                count: 2,
            },
        ))
        .await
        .expect("propose")
        .into_inner()
        .proposals;
    let dates: Vec<&str> = proposals
        .iter()
        .map(|p| p.collection_date.as_str())
        .collect();
    assert_eq!(
        dates,
        [next.to_string(), (next + Duration::days(1)).to_string()]
    );

    // The order's clock shows its booking; the physician who placed it reschedules it.
    let who = won.0;
    let response = pb::order_service_client::OrderServiceClient::new(channel.clone())
        .get_order(authed(
            if who == DR_A { &dr_a } else { &dr_b },
            pb::GetOrderRequest {
                order_id: order.order_id.clone(),
            },
        ))
        .await
        .expect("get order")
        .into_inner();
    let clock = response.clock.expect("clock");
    assert_eq!(
        clock.booking.as_ref().map(|b| b.collection_date.clone()),
        Some(day.to_string())
    );
    assert_eq!(clock.milestones.len(), 9);
    // The other physician cannot see it, let alone move it.
    let other = if who == DR_A { &dr_b } else { &dr_a };
    let refused = schedule
        .reschedule_order(authed(
            other,
            pb::RescheduleOrderRequest {
                order_id: order.order_id.clone(),
                collection_date: next.to_string(),
                reason: "mine now".into(),
            },
        ))
        .await
        .expect_err("another physician's order");
    assert_eq!(refused.code(), Code::NotFound);
    // A date far beyond the horizon is refused up front.
    let refused = pb::order_service_client::OrderServiceClient::new(channel.clone())
        .create_order(authed(other, order_request("PAT-B9", "+262143-12-31")))
        .await
        .expect_err("far future");
    assert_eq!(
        refused.code(),
        Code::InvalidArgument,
        "{}",
        refused.message()
    );
    let later = day + Duration::days(3);
    let out = hub.cli(
        who.0,
        &[
            "order",
            "reschedule",
            &order.order_id,
            "--collection-date",
            &later.to_string(),
            "--reason",
            "",
        ],
        None,
    );
    assert!(!out.status.success(), "a reschedule needs a reason");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Say why you move this collection"));
    hub.cli_ok(
        who.0,
        &[
            "order",
            "reschedule",
            &order.order_id,
            "--collection-date",
            &later.to_string(),
            "--reason",
            "patient's infection",
        ],
        None,
    );
    let shown = hub.cli_ok(who.0, &["order", "show", &order.order_id], None);
    eprintln!("order show, as the physician sees it:\n{shown}");
    assert!(
        shown.contains(&format!("Booked: collection {later} slot 1 at {SITE}")),
        "{shown}"
    );
    assert!(shown.contains("waiting: "), "{shown}");
    for milestone in [
        "ordered",
        "collection",
        "manufacturing_end",
        "qc_complete",
        "release",
        "infusion",
    ] {
        assert!(shown.contains(milestone), "{milestone} missing: {shown}");
    }
    // The freed day can be booked by the other physician now.
    pb::order_service_client::OrderServiceClient::new(channel.clone())
        .create_order(authed(other, order_request("PAT-B2", &day.to_string())))
        .await
        .expect("the freed day books");

    let utilisation = hub.cli_ok(
        ADMIN.0,
        &["schedule", "utilisation", SITE, "--weeks", "3"],
        None,
    );
    eprintln!("{utilisation}");
    let slots_booked: u32 = utilisation
        .lines()
        .filter(|l| l.contains("collection slots"))
        .map(|l| {
            l.split_whitespace()
                .nth(5)
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(slots_booked, 2, "{utilisation}");
    let summary = hub.cli_json(ADMIN.0, &["schedule", "summary"], None);
    assert_eq!(summary[0]["site_id"], "");
    assert_eq!(summary[0]["orders"], 2);
}

/// The next day within the booking horizon on which `zone`'s clocks change, and
/// whether they go forward (a 23-hour day).
fn next_change(zone: chrono_tz::Tz) -> Option<(chrono::NaiveDate, bool)> {
    use chrono::{Offset, TimeZone};
    let today = Utc::now().date_naive();
    let noon_offset = |d: chrono::NaiveDate| {
        zone.offset_from_utc_datetime(&d.and_hms_opt(12, 0, 0).expect("noon"))
            .fix()
            .local_minus_utc()
    };
    (2..170)
        .map(|n| today + Duration::days(n))
        .find(|d| noon_offset(*d) != noon_offset(*d - Duration::days(1)))
        .map(|d| (d, noon_offset(d) > noon_offset(d - Duration::days(1))))
}

/// A site declares its calendar in its own zone: on the day its clocks change, and on
/// the day before, a collection is booked at 08:00 local (a different UTC hour), and
/// the CLI shows it in the site's time with the viewer's own beside it. Europe/London
/// and America/New_York are tried first; when neither changes within the horizon
/// (from April to September) Australia/Sydney does. Both kinds of change in both
/// zones are covered at fixed dates by the schedule's unit tests.
#[tokio::test(flavor = "multi_thread")]
async fn a_site_books_in_its_own_time_zone_across_a_change_of_the_clocks() {
    let (zone, (day, forward)) = [
        chrono_tz::Europe::London,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Sydney,
    ]
    .into_iter()
    .find_map(|zone| next_change(zone).map(|change| (zone, change)))
    .expect("some zone changes its clocks within the horizon");
    let hub = Hub::start().await;
    hub.add_user(ADMIN.0, "admin", ADMIN.1);
    hub.add_user(DR_A.0, "physician", DR_A.1);
    let token = hub.add_site(SITE);
    let _agent = Agent::enroll(&hub, SITE, &token).expect("enroll");
    let file = hub.data_dir().join("capacity.toml");
    std::fs::write(
        &file,
        format!(
            "time_zone = \"{}\"\n{}",
            zone.name(),
            CAPACITY.replace("\"07:00\"", "\"08:00\"")
        ),
    )
    .expect("write capacity file");
    // A zone that is not one is refused with the reason, and nothing is stored.
    let bad = hub.data_dir().join("bad.toml");
    std::fs::write(&bad, format!("time_zone = \"Mars/Olympus\"\n{CAPACITY}")).expect("write");
    let out = hub.cli(
        ADMIN.0,
        &[
            "schedule",
            "capacity",
            SITE,
            "--set",
            bad.to_str().expect("path"),
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an IANA time zone name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    declare_capacity(&hub, &file);
    let shown = hub.cli_ok(ADMIN.0, &["schedule", "capacity", SITE], None);
    assert!(
        shown.contains(&format!("time_zone = \"{}\"", zone.name())),
        "{shown}"
    );

    let channel = hub.channel().await;
    let dr = hub.login(DR_A.0, DR_A.1).await.expect("sign in");
    let mut orders = pb::order_service_client::OrderServiceClient::new(channel.clone());
    let mut booked = Vec::new();
    for (patient, date) in [("PAT-Z1", day - Duration::days(1)), ("PAT-Z2", day)] {
        let order = orders
            .create_order(authed(&dr, order_request(patient, &date.to_string())))
            .await
            .unwrap_or_else(|e| panic!("book {date} in {}: {e}", zone.name()))
            .into_inner()
            .order
            .expect("order");
        let clock = orders
            .get_order(authed(
                &dr,
                pb::GetOrderRequest {
                    order_id: order.order_id.clone(),
                },
            ))
            .await
            .expect("get order")
            .into_inner()
            .clock
            .expect("clock");
        assert_eq!(clock.time_zone, zone.name());
        let booking = clock.booking.as_ref().expect("booked");
        assert_eq!(booking.time_zone, zone.name());
        assert_eq!(booking.collection_date, date.to_string());
        let collection = clock
            .milestones
            .iter()
            .find(|m| m.name == "collection")
            .and_then(|m| m.planned)
            .expect("planned collection");
        let at = chrono::DateTime::from_timestamp(collection.seconds, 0).expect("instant");
        let local = at.with_timezone(&zone);
        assert_eq!(
            (local.date_naive(), local.format("%H:%M").to_string()),
            (date, "08:00".to_owned()),
            "collection on {date} at 08:00 in {} (UTC {at})",
            zone.name()
        );
        booked.push((order.order_id, at));
    }
    // The same local hour on both days is an hour apart in UTC the other way round
    // from the change: an hour earlier after the clocks go forward.
    let shift = booked[1].1 - booked[0].1 - Duration::days(1);
    assert_eq!(
        shift,
        if forward {
            Duration::hours(-1)
        } else {
            Duration::hours(1)
        },
        "{booked:?}"
    );

    // The CLI shows the site's time with its abbreviation, and a viewer elsewhere
    // their own time beside it.
    let (order_id, at) = &booked[1];
    let site_text = at
        .with_timezone(&zone)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string();
    let out = hub.cli_env(
        DR_A.0,
        &["order", "show", order_id],
        None,
        &[("TZ", zone.name())],
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("{site_text} ")),
        "{site_text} in:\n{shown}"
    );
    assert!(
        !shown.contains(" here)"),
        "the viewer is in the site's zone:\n{shown}"
    );
    let viewer = if zone == chrono_tz::Asia::Tokyo {
        chrono_tz::Europe::London
    } else {
        chrono_tz::Asia::Tokyo
    };
    let out = hub.cli_env(
        DR_A.0,
        &["order", "show", order_id],
        None,
        &[("TZ", viewer.name())],
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    let theirs = at.with_timezone(&viewer);
    let beside = if theirs.date_naive() == at.with_timezone(&zone).date_naive() {
        theirs.format("%H:%M %Z").to_string()
    } else {
        theirs.format("%Y-%m-%d %H:%M %Z").to_string()
    };
    assert!(
        shown.contains(&format!("{site_text} ({beside} here)")),
        "{site_text} ({beside} here) in:\n{shown}"
    );
    // Proposals name each date's local slot time too.
    let out = hub.cli_env(
        DR_A.0,
        &[
            "schedule",
            "propose",
            "--site",
            SITE,
            "--from",
            &day.to_string(),
        ],
        None,
        &[("TZ", zone.name())],
    );
    let proposed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{proposed}");
    assert!(
        proposed.contains(&format!("{} 08:00", day + Duration::days(1))),
        "{proposed}"
    );
}
