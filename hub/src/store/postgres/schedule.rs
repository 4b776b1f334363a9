//! [`ScheduleStore`] on PostgreSQL. A booking is made with its site's row locked
//! (`lock_site`, `lock_order`), so two hub processes booking at one site take turns,
//! and the feasibility check and the insert see the same bookings.

use super::*;
use crate::schedule::{Booked, Booking, Capacity, Plan};
use crate::store::schedule::{
    self as store_schedule, booked_from, capacity_of_json, ScheduleStore,
};

const BOOKING_COLUMNS: &str = "b.order_id, o.batch_id, o.coi, b.site_id, b.collection_date, b.slot, \
     s.step_id, s.instrument_type, s.planned_start, s.planned_end, s.expected_start, s.expected_end \
     FROM bookings b JOIN orders o ON o.order_id = b.order_id \
     JOIN booking_steps s ON s.order_id = b.order_id";

impl PgStore {
    pub(super) async fn capacity_in(
        conn: &mut PgConnection,
        site_id: &str,
    ) -> Result<Option<Capacity>> {
        let document: Option<String> =
            sqlx::query_scalar("SELECT document FROM site_capacity WHERE site_id = $1")
                .bind(site_id)
                .fetch_optional(conn)
                .await?;
        document.as_deref().map(capacity_of_json).transpose()
    }

    /// Active bookings of a site.
    pub(super) async fn site_bookings_in(
        conn: &mut PgConnection,
        site_id: &str,
    ) -> Result<Vec<Booking>> {
        let rows = sqlx::query(&format!(
            "SELECT {BOOKING_COLUMNS} WHERE b.site_id = $1 AND b.active \
             ORDER BY b.collection_date, b.slot, b.order_id, s.position"
        ))
        .bind(site_id)
        .fetch_all(conn)
        .await?;
        Ok(store_schedule::group(
            rows.iter().map(rows::booking).collect::<Result<_>>()?,
        ))
    }

    pub(super) async fn order_booking_in(
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
        let booking = store_schedule::group(rows.iter().map(rows::booking).collect::<Result<_>>()?)
            .into_iter()
            .next();
        Ok(booking.zip(active))
    }

    pub(super) async fn insert_steps_in(
        conn: &mut PgConnection,
        order_id: Uuid,
        plan: &Plan,
    ) -> Result<()> {
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
    async fn capacity(&self, site_id: &str) -> Result<Option<Capacity>> {
        Store::site(self, site_id).await?; // NotFound for an unknown site
        let mut conn = self.pool.acquire().await?;
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

    async fn announced_release(&self, order_id: Uuid) -> Result<Option<DateTime<Utc>>> {
        let at: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT announced_release FROM bookings WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(at.flatten())
    }
}
