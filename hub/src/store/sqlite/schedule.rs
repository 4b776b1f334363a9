//! [`ScheduleStore`] on SQLite. Bookings are made under the store's single writer
//! (`write_lock` and BEGIN IMMEDIATE), so the feasibility check and the insert see
//! the same bookings.

use super::*;
use crate::schedule::{Booked, BookedStep, Booking, Capacity, Moved, Plan};
use crate::store::schedule::{
    self as store_schedule, booked_from, capacity_json, capacity_of_json, BookingRow, DelayNotice,
    ScheduleStore,
};
use chrono::NaiveDate;
use sqlx::SqliteConnection;

const BOOKING_COLUMNS: &str = "b.order_id, o.batch_id, o.coi, b.site_id, b.collection_date, b.slot, \
     s.step_id, s.instrument_type, s.planned_start, s.planned_end, s.expected_start, s.expected_end \
     FROM bookings b JOIN orders o ON o.order_id = b.order_id \
     JOIN booking_steps s ON s.order_id = b.order_id";

fn booking_row(row: &SqliteRow) -> Result<BookingRow> {
    let date: String = row.try_get("collection_date")?;
    Ok(BookingRow {
        order_id: parse_uuid(&row.try_get::<String, _>("order_id")?)?,
        batch_id: parse_uuid(&row.try_get::<String, _>("batch_id")?)?,
        coi: row.try_get("coi")?,
        site_id: row.try_get("site_id")?,
        collection_date: NaiveDate::parse_from_str(&date, "%Y-%m-%d")
            .map_err(|e| Error::Corrupt(format!("booking date {date:?}: {e}")))?,
        slot: u32::try_from(row.try_get::<i64, _>("slot")?)
            .map_err(|_| Error::Corrupt("booking slot is negative".into()))?,
        step: BookedStep {
            step_id: row.try_get("step_id")?,
            instrument_type: row.try_get("instrument_type")?,
            planned_start: parse_ts(&row.try_get::<String, _>("planned_start")?)?,
            planned_end: parse_ts(&row.try_get::<String, _>("planned_end")?)?,
            expected_start: parse_ts(&row.try_get::<String, _>("expected_start")?)?,
            expected_end: parse_ts(&row.try_get::<String, _>("expected_end")?)?,
            started_at: None,
            completed_at: None,
        },
    })
}

impl SqliteStore {
    pub(super) async fn capacity_in(
        conn: &mut SqliteConnection,
        site_id: &str,
    ) -> Result<Option<Capacity>> {
        let document: Option<String> =
            sqlx::query_scalar("SELECT document FROM site_capacity WHERE site_id = ?")
                .bind(site_id)
                .fetch_optional(conn)
                .await?;
        document.as_deref().map(capacity_of_json).transpose()
    }

    /// Active bookings of a site.
    async fn site_bookings_in(conn: &mut SqliteConnection, site_id: &str) -> Result<Vec<Booking>> {
        let rows = sqlx::query(&format!(
            "SELECT {BOOKING_COLUMNS} WHERE b.site_id = ? AND b.active = 1 \
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
        conn: &mut SqliteConnection,
        order_id: Uuid,
    ) -> Result<Option<(Booking, bool)>> {
        let rows = sqlx::query(&format!(
            "SELECT b.active AS active, {BOOKING_COLUMNS} WHERE b.order_id = ? ORDER BY s.position"
        ))
        .bind(order_id.to_string())
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

    async fn insert_steps_in(
        conn: &mut SqliteConnection,
        order_id: Uuid,
        plan: &Plan,
    ) -> Result<()> {
        for (position, step) in plan.steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO booking_steps (order_id, position, step_id, instrument_type, \
                 planned_start, planned_end, expected_start, expected_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(order_id.to_string())
            .bind(position as i64)
            .bind(&step.step_id)
            .bind(&step.instrument_type)
            .bind(ts(step.start))
            .bind(ts(step.end))
            .bind(ts(step.start))
            .bind(ts(step.end))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    /// Books the order's collection inside the order's transaction (see
    /// [`store_schedule::decide`]); returns the plan, or `None` when the site
    /// declares no capacity.
    pub(super) async fn book_in(
        conn: &mut SqliteConnection,
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
             VALUES (?, ?, ?, ?, 1, ?, ?)",
        )
        .bind(order_id.to_string())
        .bind(site_id)
        .bind(plan.collection_date.to_string())
        .bind(i64::from(plan.slot))
        .bind(ts(now))
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
        Self::insert_steps_in(conn, order_id, &plan).await?;
        Ok(Some(plan))
    }

    /// Frees an order's booking inside a transaction that closes the order.
    pub(super) async fn release_booking_in(
        conn: &mut SqliteConnection,
        order_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE bookings SET active = 0, updated_at = ? WHERE order_id = ? AND active = 1",
        )
        .bind(ts(now))
        .bind(order_id.to_string())
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn set_capacity(
        &self,
        site_id: &str,
        capacity: &Capacity,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        capacity.check().map_err(Error::Invalid)?;
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let site = Self::site_in(&mut tx, site_id).await?;
        if site.status == SiteStatus::Ceased {
            return Err(Error::FailedPrecondition(format!(
                "site {site_id:?} has ceased; its capacity cannot change"
            )));
        }
        let old = Self::capacity_in(&mut tx, site_id).await?;
        let unbooked = sqlx::query(store_schedule::UNBOOKED_OPEN_ORDERS)
            .bind(site_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    parse_uuid(&r.try_get::<String, _>("order_id")?)?,
                    r.try_get("coi")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let bookings = Self::site_bookings_in(&mut tx, site_id).await?;
        store_schedule::check_new_capacity(site_id, capacity, &bookings, &unbooked, now)?;
        let document = capacity_json(capacity)?;
        sqlx::query(
            "INSERT INTO site_capacity (site_id, document, updated_at, updated_by) VALUES (?, ?, ?, ?) \
             ON CONFLICT (site_id) DO UPDATE SET document = excluded.document, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(site_id)
        .bind(&document)
        .bind(ts(now))
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        let old = old
            .as_ref()
            .map(capacity_json)
            .transpose()?
            .unwrap_or_default();
        Self::append_audit(
            &mut tx,
            &NewEntry::new(
                actor,
                "site.capacity_changed",
                format!("site/{site_id}/capacity"),
            )
            .change(old, document),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn capacity(&self, site_id: &str) -> Result<Option<Capacity>> {
        let mut tx = self.pool.begin().await?;
        Self::site_in(&mut tx, site_id).await?;
        let capacity = Self::capacity_in(&mut tx, site_id).await;
        tx.commit().await?;
        capacity
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
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let order = Self::order_in(&mut tx, "order_id", order_id).await?;
        let current = Self::order_booking_in(&mut tx, order_id)
            .await?
            .filter(|(_, active)| *active)
            .map(|(b, _)| b);
        store_schedule::check_reschedulable(&order, current.as_ref())?;
        let current = current.expect("checked above");
        let capacity = Self::capacity_in(&mut tx, &order.site_id).await?;
        let recipe = self
            .recipe_in(&mut tx, &order.recipe_id, order.recipe_version)
            .await?;
        let mut others = Self::site_bookings_in(&mut tx, &order.site_id).await?;
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
        sqlx::query("UPDATE bookings SET collection_date = ?, slot = ?, announced_release = NULL, updated_at = ? WHERE order_id = ?")
            .bind(plan.collection_date.to_string())
            .bind(i64::from(plan.slot))
            .bind(ts(now))
            .bind(order_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE orders SET requested_collection_date = ? WHERE order_id = ?")
            .bind(plan.collection_date.to_string())
            .bind(order_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM booking_steps WHERE order_id = ?")
            .bind(order_id.to_string())
            .execute(&mut *tx)
            .await?;
        Self::insert_steps_in(&mut tx, order_id, &plan).await?;
        Self::append_audit(
            &mut tx,
            &NewEntry::new(by, "order.rescheduled", format!("order/{order_id}"))
                .batch(order.batch_id)
                .change(
                    format!("{} slot {}", current.collection_date, current.slot + 1),
                    format!("{} slot {}", plan.collection_date, plan.slot + 1),
                )
                .reason(reason),
            now,
        )
        .await?;
        let booking = Self::order_booking_in(&mut tx, order_id)
            .await?
            .map(|(b, _)| b)
            .ok_or_else(|| Error::Corrupt(format!("booking of order {order_id} vanished")))?;
        tx.commit().await?;
        Ok(booking)
    }

    async fn store_replan(
        &self,
        seen: &Booking,
        moved: &Moved,
        notice: Option<&DelayNotice>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        let order = Self::order_in(&mut tx, "order_id", moved.order_id).await?;
        let current = Self::order_booking_in(&mut tx, moved.order_id).await?;
        if !store_schedule::unchanged(current.as_ref(), seen) {
            return Ok(false);
        }
        for (step_id, start, end) in &moved.steps {
            sqlx::query(
                "UPDATE booking_steps SET expected_start = ?, expected_end = ? WHERE order_id = ? AND step_id = ?",
            )
            .bind(ts(*start))
            .bind(ts(*end))
            .bind(moved.order_id.to_string())
            .bind(step_id)
            .execute(&mut *tx)
            .await?;
        }
        let mut announced = false;
        if let Some(notice) = notice {
            // Only if nobody announced another release since the caller looked.
            announced = sqlx::query(
                "UPDATE bookings SET announced_release = ?, updated_at = ? \
                 WHERE order_id = ? AND announced_release IS ?",
            )
            .bind(ts(notice.expected_release))
            .bind(ts(now))
            .bind(moved.order_id.to_string())
            .bind(notice.replaces.map(ts))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        }
        if let Some(notice) = notice.filter(|_| announced) {
            Self::append_audit(
                &mut tx,
                &NewEntry::new("hub", "order.delayed", format!("order/{}", moved.order_id))
                    .batch(order.batch_id)
                    .change(ts(notice.planned_release), ts(notice.expected_release))
                    .reason(&notice.reason),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(announced)
    }

    async fn announced_release(&self, order_id: Uuid) -> Result<Option<DateTime<Utc>>> {
        let text: Option<Option<String>> =
            sqlx::query_scalar("SELECT announced_release FROM bookings WHERE order_id = ?")
                .bind(order_id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        text.flatten().as_deref().map(parse_ts).transpose()
    }

    async fn release_booking(&self, order_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let _w = self.write_lock.lock().await;
        let mut tx = self.begin_write().await?;
        Self::release_booking_in(&mut tx, order_id, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
