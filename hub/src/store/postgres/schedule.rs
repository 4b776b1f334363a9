//! [`ScheduleStore`] on PostgreSQL. A booking is made with its site's row locked
//! (`lock_site`, `lock_order`), so two hub processes booking at one site take turns,
//! and the feasibility check and the insert see the same bookings.

use super::*;
use crate::schedule::{Booked, BookedStep, Booking, Capacity, Moved, Plan};
use crate::store::schedule::{
    self as store_schedule, booked_from, capacity_json, capacity_of_json, BookingRow, DelayNotice,
    ScheduleStore,
};
use chrono::NaiveDate;

const BOOKING_COLUMNS: &str = "b.order_id, o.batch_id, o.coi, b.site_id, b.collection_date, b.slot, \
     s.step_id, s.instrument_type, s.planned_start, s.planned_end, s.expected_start, s.expected_end \
     FROM bookings b JOIN orders o ON o.order_id = b.order_id \
     JOIN booking_steps s ON s.order_id = b.order_id";

fn booking_row(row: &PgRow) -> Result<BookingRow> {
    Ok(BookingRow {
        order_id: row.try_get("order_id")?,
        batch_id: row.try_get("batch_id")?,
        coi: row.try_get("coi")?,
        site_id: row.try_get("site_id")?,
        collection_date: row.try_get("collection_date")?,
        slot: u32::try_from(row.try_get::<i32, _>("slot")?)
            .map_err(|_| Error::Corrupt("booking slot is negative".into()))?,
        step: BookedStep {
            step_id: row.try_get("step_id")?,
            instrument_type: row.try_get("instrument_type")?,
            planned_start: row.try_get("planned_start")?,
            planned_end: row.try_get("planned_end")?,
            expected_start: row.try_get("expected_start")?,
            expected_end: row.try_get("expected_end")?,
            started_at: None,
            completed_at: None,
        },
    })
}

impl PgStore {
    async fn capacity_in(conn: &mut PgConnection, site_id: &str) -> Result<Option<Capacity>> {
        let document: Option<String> =
            sqlx::query_scalar("SELECT document FROM site_capacity WHERE site_id = $1")
                .bind(site_id)
                .fetch_optional(conn)
                .await?;
        document.as_deref().map(capacity_of_json).transpose()
    }

    /// Active bookings of a site.
    async fn site_bookings_in(conn: &mut PgConnection, site_id: &str) -> Result<Vec<Booking>> {
        let rows = sqlx::query(&format!(
            "SELECT {BOOKING_COLUMNS} WHERE b.site_id = $1 AND b.active \
             ORDER BY b.collection_date, b.slot, b.order_id, s.position"
        ))
        .bind(site_id)
        .fetch_all(conn)
        .await?;
        Ok(store_schedule::group(
            rows.iter().map(booking_row).collect::<Result<_>>()?,
        ))
    }

    async fn order_booking_in(
        conn: &mut PgConnection,
        order_id: Uuid,
    ) -> Result<Option<(Booking, bool)>> {
        let rows = sqlx::query(&format!(
            "SELECT b.active AS active, {BOOKING_COLUMNS} WHERE b.order_id = $1 ORDER BY s.position"
        ))
        .bind(order_id)
        .fetch_all(conn)
        .await?;
        let active = rows
            .first()
            .map(|r| r.try_get::<bool, _>("active"))
            .transpose()?;
        let booking = store_schedule::group(rows.iter().map(booking_row).collect::<Result<_>>()?)
            .into_iter()
            .next();
        Ok(booking.zip(active))
    }

    async fn insert_steps_in(conn: &mut PgConnection, order_id: Uuid, plan: &Plan) -> Result<()> {
        for (position, step) in plan.steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO booking_steps (order_id, position, step_id, instrument_type, \
                 planned_start, planned_end, expected_start, expected_end) VALUES ($1, $2, $3, $4, $5, $6, $5, $6)",
            )
            .bind(order_id)
            .bind(position as i32)
            .bind(&step.step_id)
            .bind(&step.instrument_type)
            .bind(stored(step.start))
            .bind(stored(step.end))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Books the order's collection inside the order's transaction, which holds the
    /// site's row lock (see [`store_schedule::decide`]); returns the plan, or `None`
    /// when the site declares no capacity.
    pub(super) async fn book_in(
        conn: &mut PgConnection,
        order_id: Uuid,
        site_id: &str,
        recipe: &carrel_proto::recipe::Recipe,
        requested_date: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Plan>> {
        let capacity = Self::capacity_in(conn, site_id).await?;
        let booked = match capacity {
            Some(_) => booked_from(&Self::site_bookings_in(conn, site_id).await?),
            None => Booked::default(),
        };
        let Some(plan) = store_schedule::decide(
            site_id,
            capacity.as_ref(),
            recipe,
            &booked,
            requested_date,
            now,
        )?
        else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO bookings (order_id, site_id, collection_date, slot, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, TRUE, $5, $5)",
        )
        .bind(order_id)
        .bind(site_id)
        .bind(plan.collection_date)
        .bind(plan.slot as i32)
        .bind(stored(now))
        .execute(&mut *conn)
        .await?;
        Self::insert_steps_in(conn, order_id, &plan).await?;
        Ok(Some(plan))
    }

    /// Frees an order's booking inside a transaction that closes the order.
    pub(super) async fn release_booking_in(
        conn: &mut PgConnection,
        order_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE bookings SET active = FALSE, updated_at = $1 WHERE order_id = $2 AND active",
        )
        .bind(stored(now))
        .bind(order_id)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for PgStore {
    async fn set_capacity(
        &self,
        site_id: &str,
        capacity: &Capacity,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        capacity.check().map_err(Error::Invalid)?;
        let mut w = self.begin_write().await?;
        let site = Self::lock_site(w.conn(), site_id).await?;
        if site.status == SiteStatus::Ceased {
            return Err(Error::FailedPrecondition(format!(
                "site {site_id:?} has ceased; its capacity cannot change"
            )));
        }
        let old = Self::capacity_in(w.conn(), site_id).await?;
        let unbooked = sqlx::query(store_schedule::UNBOOKED_OPEN_ORDERS)
            .bind(site_id)
            .fetch_all(w.conn())
            .await?
            .iter()
            .map(|r| Ok((r.try_get("order_id")?, r.try_get("coi")?)))
            .collect::<Result<Vec<_>>>()?;
        let bookings = Self::site_bookings_in(w.conn(), site_id).await?;
        store_schedule::check_new_capacity(site_id, capacity, &bookings, &unbooked, now)?;
        let document = capacity_json(capacity)?;
        sqlx::query(
            "INSERT INTO site_capacity (site_id, document, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (site_id) DO UPDATE SET document = excluded.document, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(site_id)
        .bind(&document)
        .bind(stored(now))
        .bind(actor)
        .execute(w.conn())
        .await?;
        let old = old
            .as_ref()
            .map(capacity_json)
            .transpose()?
            .unwrap_or_default();
        w.audit(
            NewEntry::new(
                actor,
                "site.capacity_changed",
                format!("site/{site_id}/capacity"),
            )
            .change(old, document),
            now,
        );
        w.commit().await?;
        Ok(())
    }

    async fn capacity(&self, site_id: &str) -> Result<Option<Capacity>> {
        let mut conn = self.pool.acquire().await?;
        Self::site_in(&mut conn, site_id).await?;
        Self::capacity_in(&mut conn, site_id).await
    }

    async fn booked(&self, site_id: &str) -> Result<Booked> {
        Ok(booked_from(&self.bookings(site_id).await?))
    }

    async fn bookings(&self, site_id: &str) -> Result<Vec<Booking>> {
        let mut conn = self.pool.acquire().await?;
        Self::site_bookings_in(&mut conn, site_id).await
    }

    async fn booking(&self, order_id: Uuid) -> Result<Option<Booking>> {
        let mut conn = self.pool.acquire().await?;
        Ok(Self::order_booking_in(&mut conn, order_id)
            .await?
            .map(|(b, _)| b))
    }

    async fn reschedule_order(
        &self,
        order_id: Uuid,
        date: NaiveDate,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Booking> {
        let mut w = self.begin_write().await?;
        let order = Self::lock_order(&mut w, "order_id", order_id).await?;
        let current = Self::order_booking_in(w.conn(), order_id)
            .await?
            .filter(|(_, active)| *active)
            .map(|(b, _)| b);
        store_schedule::check_reschedulable(&order, current.as_ref())?;
        let current = current.expect("checked above");
        let capacity = Self::capacity_in(w.conn(), &order.site_id).await?;
        let recipe = self
            .recipe_in(w.conn(), &order.recipe_id, order.recipe_version)
            .await?;
        let mut others = Self::site_bookings_in(w.conn(), &order.site_id).await?;
        others.retain(|b| b.order_id != order_id);
        let plan = store_schedule::decide(
            &order.site_id,
            capacity.as_ref(),
            &recipe.recipe,
            &booked_from(&others),
            &date.to_string(),
            now,
        )?
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "site {:?} no longer declares its capacity; declare it before rescheduling",
                order.site_id
            ))
        })?;
        sqlx::query("UPDATE bookings SET collection_date = $1, slot = $2, announced_release = NULL, updated_at = $3 WHERE order_id = $4")
            .bind(plan.collection_date)
            .bind(plan.slot as i32)
            .bind(stored(now))
            .bind(order_id)
            .execute(w.conn())
            .await?;
        sqlx::query("UPDATE orders SET requested_collection_date = $1 WHERE order_id = $2")
            .bind(plan.collection_date.to_string())
            .bind(order_id)
            .execute(w.conn())
            .await?;
        sqlx::query("DELETE FROM booking_steps WHERE order_id = $1")
            .bind(order_id)
            .execute(w.conn())
            .await?;
        Self::insert_steps_in(w.conn(), order_id, &plan).await?;
        w.audit(
            NewEntry::new(by, "order.rescheduled", format!("order/{order_id}"))
                .batch(order.batch_id)
                .change(
                    format!("{} slot {}", current.collection_date, current.slot + 1),
                    format!("{} slot {}", plan.collection_date, plan.slot + 1),
                )
                .reason(reason),
            now,
        );
        let booking = Self::order_booking_in(w.conn(), order_id)
            .await?
            .map(|(b, _)| b)
            .ok_or_else(|| Error::Corrupt(format!("booking of order {order_id} vanished")))?;
        w.commit().await?;
        Ok(booking)
    }

    async fn store_replan(
        &self,
        seen: &Booking,
        moved: &Moved,
        notice: Option<&DelayNotice>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut w = self.begin_write().await?;
        let order = Self::lock_order(&mut w, "order_id", moved.order_id).await?;
        let current = Self::order_booking_in(w.conn(), moved.order_id).await?;
        if !store_schedule::unchanged(current.as_ref(), seen) {
            return Ok(false);
        }
        for (step_id, start, end) in &moved.steps {
            sqlx::query(
                "UPDATE booking_steps SET expected_start = $1, expected_end = $2 WHERE order_id = $3 AND step_id = $4",
            )
            .bind(stored(*start))
            .bind(stored(*end))
            .bind(moved.order_id)
            .bind(step_id)
            .execute(w.conn())
            .await?;
        }
        let mut announced = false;
        if let Some(notice) = notice {
            // Only if no other hub process announced another release since the
            // caller looked (the row lock of `lock_order` orders the two).
            announced = sqlx::query(
                "UPDATE bookings SET announced_release = $1, updated_at = $2 \
                 WHERE order_id = $3 AND announced_release IS NOT DISTINCT FROM $4",
            )
            .bind(stored(notice.expected_release))
            .bind(stored(now))
            .bind(moved.order_id)
            .bind(notice.replaces.map(stored))
            .execute(w.conn())
            .await?
            .rows_affected()
                == 1;
        }
        if let Some(notice) = notice.filter(|_| announced) {
            w.audit(
                NewEntry::new("hub", "order.delayed", format!("order/{}", moved.order_id))
                    .batch(order.batch_id)
                    .change(ts(notice.planned_release), ts(notice.expected_release))
                    .reason(&notice.reason),
                now,
            );
        }
        w.commit().await?;
        Ok(announced)
    }

    async fn announced_release(&self, order_id: Uuid) -> Result<Option<DateTime<Utc>>> {
        let at: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT announced_release FROM bookings WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(at.flatten())
    }

    async fn release_booking(&self, order_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let mut w = self.begin_write().await?;
        Self::release_booking_in(w.conn(), order_id, now).await?;
        w.commit().await?;
        Ok(())
    }
}
