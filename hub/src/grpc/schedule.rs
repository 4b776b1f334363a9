//! `ScheduleService`: capacity, booking, utilisation and the vein-to-vein clock.

use super::{authenticate, parse_id, service_status};
use crate::app::Hub;
use crate::clock::Clock;
use crate::schedule::{Booking, Capacity, Closure};
use crate::service::schedule as service;
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use chrono::{NaiveDate, NaiveTime, Weekday};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ScheduleApi(pub Arc<Hub>);

/// A capacity as the API carries it, checked; the error names what is wrong.
pub fn capacity_from_pb(pb: pb::Capacity) -> Result<Capacity, Status> {
    let bad = |why: String| Status::invalid_argument(format!("capacity: {why}"));
    let time = |name: &str, text: &str| {
        NaiveTime::parse_from_str(text, "%H:%M")
            .map_err(|_| bad(format!("{name} {text:?} is not a time (HH:MM)")))
    };
    let date = |text: &str| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| bad(format!("closure date {text:?} is not a date (YYYY-MM-DD)")))
    };
    let mut instruments = std::collections::BTreeMap::new();
    for i in pb.instruments {
        if instruments
            .insert(i.instrument_type.clone(), i.count)
            .is_some()
        {
            return Err(bad(format!(
                "instrument type {:?} is named twice",
                i.instrument_type
            )));
        }
    }
    let capacity = Capacity {
        time_zone: if pb.time_zone.trim().is_empty() {
            "UTC".into()
        } else {
            pb.time_zone.trim().to_owned()
        },
        working_days: pb
            .working_days
            .iter()
            .map(|d| {
                d.parse::<Weekday>()
                    .map_err(|_| bad(format!("{d:?} is not a day of the week")))
            })
            .collect::<Result<_, _>>()?,
        opens: time("opens", &pb.opens)?,
        closes: time("closes", &pb.closes)?,
        collection_slots_per_day: pb.collection_slots_per_day,
        instruments,
        closures: pb
            .closures
            .iter()
            .map(|c| {
                Ok(Closure {
                    from: date(&c.from)?,
                    to: date(&c.to)?,
                    reason: c.reason.clone(),
                })
            })
            .collect::<Result<_, Status>>()?,
    };
    capacity.check().map_err(bad)?;
    Ok(capacity)
}

pub fn capacity_to_pb(c: &Capacity) -> pb::Capacity {
    pb::Capacity {
        working_days: c
            .working_days
            .iter()
            .map(|d| d.to_string().to_lowercase())
            .collect(),
        opens: c.opens.format("%H:%M").to_string(),
        closes: c.closes.format("%H:%M").to_string(),
        collection_slots_per_day: c.collection_slots_per_day,
        instruments: c
            .instruments
            .iter()
            .map(|(t, n)| pb::InstrumentCount {
                instrument_type: t.clone(),
                count: *n,
            })
            .collect(),
        closures: c
            .closures
            .iter()
            .map(|c| pb::Closure {
                from: c.from.to_string(),
                to: c.to.to_string(),
                reason: c.reason.clone(),
            })
            .collect(),
        time_zone: c.time_zone.clone(),
    }
}

pub fn booking_to_pb(b: &Booking, zone: chrono_tz::Tz) -> pb::Booking {
    pb::Booking {
        order_id: b.order_id.to_string(),
        site_id: b.site_id.clone(),
        collection_date: b.collection_date.to_string(),
        slot: b.slot + 1,
        steps: b
            .steps
            .iter()
            .map(|s| pb::BookedStep {
                step_id: s.step_id.clone(),
                instrument_type: s.instrument_type.clone(),
                planned_start: Some(to_timestamp(s.planned_start)),
                planned_end: Some(to_timestamp(s.planned_end)),
                expected_start: Some(to_timestamp(s.expected_start)),
                expected_end: Some(to_timestamp(s.expected_end)),
            })
            .collect(),
        time_zone: zone.name().into(),
    }
}

pub fn clock_to_pb(
    clock: &Clock,
    booking: Option<&Booking>,
    zone: chrono_tz::Tz,
) -> pb::VeinToVein {
    pb::VeinToVein {
        milestones: clock
            .milestones
            .iter()
            .map(|m| pb::Milestone {
                name: m.milestone.as_str().into(),
                planned: Some(to_timestamp(m.planned)),
                actual: m.actual.map(to_timestamp),
                expected: Some(to_timestamp(m.expected)),
            })
            .collect(),
        planned_release: Some(to_timestamp(clock.planned_release)),
        expected_release: Some(to_timestamp(clock.expected_release)),
        delayed: clock.delay.is_some(),
        delay_secs: clock.delay.as_ref().map_or(0, |d| d.by.num_seconds()),
        delayed_since: clock
            .delay
            .as_ref()
            .map_or(String::new(), |d| d.since.as_str().into()),
        delay_reasons: clock.delay.as_ref().map_or(Vec::new(), |d| {
            d.reasons.iter().chain(&d.announced).cloned().collect()
        }),
        vein_to_vein_secs: clock.vein_to_vein.map_or(0, |d| d.num_seconds()),
        booking: booking.map(|b| booking_to_pb(b, zone)),
        stopped: clock.stopped.is_some(),
        time_zone: zone.name().into(),
    }
}

/// The order's clock for `GetOrder`.
pub async fn order_clock_pb(
    hub: &Hub,
    order: &crate::model::Order,
) -> Result<pb::VeinToVein, Status> {
    let (clock, booking) = service::order_clock(hub, order)
        .await
        .map_err(service_status)?;
    let zone = service::site_zone(hub, &order.site_id)
        .await
        .map_err(service_status)?;
    Ok(clock_to_pb(&clock, booking.as_ref(), zone))
}

#[tonic::async_trait]
impl pb::schedule_service_server::ScheduleService for ScheduleApi {
    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        authenticate(&self.0, &request).await?;
        let site_id = &request.get_ref().site_id;
        let capacity = service::capacity(&self.0, site_id)
            .await
            .map_err(service_status)?
            .ok_or_else(|| Status::not_found(format!("site {site_id:?} declares no capacity")))?;
        Ok(Response::new(pb::GetCapacityResponse {
            capacity: Some(capacity_to_pb(&capacity)),
        }))
    }

    async fn set_capacity(
        &self,
        request: Request<pb::SetCapacityRequest>,
    ) -> Result<Response<pb::SetCapacityResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let capacity = capacity_from_pb(
            req.capacity
                .ok_or_else(|| Status::invalid_argument("capacity is required"))?,
        )?;
        service::set_capacity(&self.0, &user, &req.site_id, &capacity)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::SetCapacityResponse {}))
    }

    async fn propose_collection(
        &self,
        request: Request<pb::ProposeCollectionRequest>,
    ) -> Result<Response<pb::ProposeCollectionResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let count = if req.count == 0 {
            3
        } else {
            req.count as usize
        };
        let proposals = service::propose(
            &self.0,
            &user,
            &req.product,
            &req.site_id,
            &req.from,
            req.other_sites,
            count,
        )
        .await
        .map_err(service_status)?;
        Ok(Response::new(pb::ProposeCollectionResponse {
            proposals: proposals
                .iter()
                .map(|p| pb::Proposal {
                    site_id: p.plan.site_id.clone(),
                    collection_date: p.plan.collection_date.to_string(),
                    slot: p.plan.slot + 1,
                    collection_start: Some(to_timestamp(p.plan.collection_start())),
                    manufacturing_end: Some(to_timestamp(p.plan.end())),
                    expected_release: Some(to_timestamp(p.expected_release)),
                    time_zone: p.zone.name().into(),
                })
                .collect(),
        }))
    }

    async fn reschedule_order(
        &self,
        request: Request<pb::RescheduleOrderRequest>,
    ) -> Result<Response<pb::RescheduleOrderResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let order_id = parse_id("order_id", &req.order_id)?;
        let booking =
            service::reschedule(&self.0, &user, order_id, &req.collection_date, &req.reason)
                .await
                .map_err(service_status)?;
        let zone = service::site_zone(&self.0, &booking.site_id)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::RescheduleOrderResponse {
            booking: Some(booking_to_pb(&booking, zone)),
        }))
    }

    async fn get_utilisation(
        &self,
        request: Request<pb::GetUtilisationRequest>,
    ) -> Result<Response<pb::GetUtilisationResponse>, Status> {
        authenticate(&self.0, &request).await?;
        let req = request.into_inner();
        let weeks = if req.weeks == 0 { 4 } else { req.weeks };
        let rows = service::utilisation(&self.0, &req.site_id, &req.from, weeks)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::GetUtilisationResponse {
            rows: rows
                .iter()
                .map(|r| pb::UtilisationRow {
                    week_start: r.week_start.to_string(),
                    resource: r.resource.clone(),
                    units: r.units,
                    available: r.available,
                    booked: r.booked,
                })
                .collect(),
        }))
    }

    async fn get_vein_to_vein_summary(
        &self,
        request: Request<pb::GetVeinToVeinSummaryRequest>,
    ) -> Result<Response<pb::GetVeinToVeinSummaryResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let site = request.get_ref().site_id.trim().to_owned();
        let rows = service::summary(&self.0, &user, (!site.is_empty()).then_some(site.as_str()))
            .await
            .map_err(service_status)?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::GetVeinToVeinSummaryResponse {
            summaries: rows
                .iter()
                .map(|(site_id, s)| pb::VeinToVeinSummary {
                    site_id: site_id.clone(),
                    orders: count(s.orders),
                    open: count(s.open),
                    delayed: count(s.delayed),
                    released: count(s.released),
                    released_on_time: count(s.released_on_time),
                    median_vein_to_vein_secs: s.median_vein_to_vein.map_or(0, |d| d.num_seconds()),
                    median_order_to_release_secs: s
                        .median_order_to_release
                        .map_or(0, |d| d.num_seconds()),
                })
                .collect(),
        }))
    }
}
