//! [`NotifyStore`] on PostgreSQL, where several hub processes share the tables:
//! the notifier locks its cursor row (one notifier reads and advances it at a
//! time), workers claim outbox rows with `FOR UPDATE SKIP LOCKED` and a lease (two
//! workers never send the same row at once), and a link-down episode is one row,
//! so two processes checking at once report it once.

use super::*;
use crate::model::notification::happening::{self as derive, Needs, OrderFacts, SiteEventFacts};
use crate::model::notification::InboxEntry;
use crate::model::notification::{Delivery, OutboxEntry, OutboxState, Subscription};
use crate::store::notify::{NotifyStore, OutboxCounts, OutboxFilter};
use crate::store::rows::{INBOX_COLUMNS, OUTBOX_COLUMNS};

fn later(now: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX)
}

impl PgStore {
    pub(super) async fn outbox_entry_in(
        conn: &mut PgConnection,
        notification_id: Uuid,
    ) -> Result<OutboxEntry> {
        let row = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} WHERE o.notification_id = $1"
        ))
        .bind(notification_id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {notification_id}")))?;
        rows::outbox(&row)
    }

    /// The facts [`derive::needs`] asks for, read inside the notifier's transaction.
    pub(super) async fn facts_in(
        conn: &mut PgConnection,
        needs: Needs,
    ) -> Result<(Option<OrderFacts>, Vec<SiteEventFacts>)> {
        match needs {
            Needs::Nothing => Ok((None, Vec::new())),
            Needs::Order(batch_id) => {
                let row = sqlx::query(
                    "SELECT order_id, batch_id, coi, site_id, physician FROM orders o WHERE o.batch_id = $1 AND NOT o.dry_run",
                )
                .bind(batch_id)
                .fetch_optional(conn)
                .await?;
                Ok((row.as_ref().map(rows::order_facts).transpose()?, Vec::new()))
            }
            Needs::SiteEvents {
                site_id,
                first,
                last,
            } => {
                let rows = sqlx::query(
                    "SELECT e.body, o.order_id, o.batch_id, o.coi, o.site_id, o.physician, q.hub_outcome \
                     FROM site_events e JOIN orders o ON o.batch_id = e.batch_id \
                     LEFT JOIN qc_results q ON q.site_id = e.site_id AND q.site_seq = e.seq \
                     WHERE NOT o.dry_run AND e.site_id = $1 AND e.seq BETWEEN $2 AND $3 AND e.kind = ANY($4) ORDER BY e.seq",
                )
                .bind(&site_id)
                .bind(i64_of(first)?)
                .bind(i64_of(last)?)
                .bind(derive::EVENT_KINDS.to_vec())
                .fetch_all(conn)
                .await?;
                let mut events = Vec::with_capacity(rows.len());
                for row in &rows {
                    let body: String = row.try_get("body")?;
                    let outcome: Option<String> = row.try_get("hub_outcome")?;
                    events.push(SiteEventFacts {
                        site_id: site_id.clone(),
                        event: serde_json::from_str(&body)
                            .map_err(|e| Error::Corrupt(format!("site event: {e}")))?,
                        order: rows::order_facts(row)?,
                        hub_out_of_specification: outcome.as_deref()
                            == Some(rows::outcome_text(Outcome::OutOfSpecification)),
                    });
                }
                Ok((None, events))
            }
        }
    }
}

#[async_trait]
impl NotifyStore for PgStore {
    async fn notifier_behind(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_log WHERE position > (SELECT position FROM notification_cursor WHERE name = 'audit'))",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn site_links_changed(&self, silent_since: DateTime<Utc>) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sites s WHERE s.status = 'active' AND s.site_id <> 'dry-run' AND s.last_contact_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM site_link_down d WHERE d.site_id = s.site_id)) \
             OR EXISTS (SELECT 1 FROM site_link_down d JOIN sites s ON s.site_id = d.site_id \
             WHERE s.last_contact_at > d.last_contact_at)",
        )
        .bind(stored(silent_since))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn subscriptions(&self, owner: Option<&str>) -> Result<Vec<Subscription>> {
        sqlx::query(
            "SELECT * FROM notification_subscriptions WHERE removed_at IS NULL AND ($1::text IS NULL OR owner = $1) \
             ORDER BY created_at, subscription_id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::subscription)
        .collect()
    }

    async fn subscription(&self, subscription_id: Uuid) -> Result<Subscription> {
        let row = sqlx::query(
            "SELECT * FROM notification_subscriptions WHERE subscription_id = $1 AND removed_at IS NULL",
        )
        .bind(subscription_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("subscription {subscription_id}")))?;
        rows::subscription(&row)
    }

    async fn claim_deliveries(
        &self,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Delivery>> {
        let mut w = self.begin_write().await?;
        let claimed: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE notification_outbox SET leased_until = $3 WHERE id IN ( \
                SELECT o.id FROM notification_outbox o WHERE o.state = 'pending' AND o.next_attempt_at <= $1 \
                AND (o.leased_until IS NULL OR o.leased_until <= $1) \
                AND o.id = (SELECT MIN(p.id) FROM notification_outbox p WHERE p.subscription_id = o.subscription_id AND p.state = 'pending') \
                ORDER BY o.id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING notification_id",
        )
        .bind(stored(now))
        .bind(i64::from(limit))
        .bind(stored(later(now, lease)))
        .fetch_all(w.conn())
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} WHERE o.notification_id = ANY($1) ORDER BY o.id"
        ))
        .bind(&claimed)
        .fetch_all(w.conn())
        .await?;
        let deliveries = rows.iter().map(rows::delivery).collect::<Result<_>>()?;
        w.commit().await?;
        Ok(deliveries)
    }

    async fn delivery_succeeded(&self, notification_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE notification_outbox SET state = 'delivered', delivered_at = $1, attempts = attempts + 1, leased_until = NULL \
             WHERE notification_id = $2 AND state = 'pending'",
        )
        .bind(stored(now))
        .bind(notification_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delivery_failed(
        &self,
        notification_id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE notification_outbox SET attempts = attempts + 1, last_error = $1, leased_until = NULL, \
             state = CASE WHEN $2::timestamptz IS NULL THEN 'failed' ELSE 'pending' END, \
             next_attempt_at = COALESCE($2, next_attempt_at) \
             WHERE notification_id = $3 AND state = 'pending'",
        )
        .bind(error)
        .bind(retry_at.map(stored))
        .bind(notification_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outbox(&self, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>> {
        sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} WHERE ($1::text IS NULL OR s.owner = $1) AND ($2::text IS NULL OR o.state = $2) \
             AND ($3::uuid IS NULL OR o.subscription_id = $3) ORDER BY o.id DESC LIMIT $4"
        ))
        .bind(filter.owner.as_deref())
        .bind(filter.state.map(OutboxState::as_str))
        .bind(filter.subscription_id)
        .bind((filter.limit != 0).then_some(i64::from(filter.limit)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::outbox)
        .collect()
    }

    async fn outbox_entry(&self, notification_id: Uuid) -> Result<OutboxEntry> {
        let mut conn = self.pool.acquire().await?;
        Self::outbox_entry_in(&mut conn, notification_id).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        let (pending, failed): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE state = 'pending'), COUNT(*) FILTER (WHERE state = 'failed') FROM notification_outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxCounts {
            pending: pending as u64,
            failed: failed as u64,
        })
    }

    async fn inbox(&self, recipient: &str, limit: u32) -> Result<Vec<InboxEntry>> {
        sqlx::query(&format!(
            "SELECT {INBOX_COLUMNS} WHERE recipient = $1 ORDER BY created_at DESC, inbox_id DESC LIMIT $2"
        ))
        .bind(recipient)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::inbox)
        .collect()
    }

    async fn inbox_unread(&self, recipient: &str) -> Result<u64> {
        let unread: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox WHERE recipient = $1 AND read_at IS NULL",
        )
        .bind(recipient)
        .fetch_one(&self.pool)
        .await?;
        Ok(unread.max(0) as u64)
    }

    async fn mark_inbox_read(
        &self,
        recipient: &str,
        inbox_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE inbox SET read_at = $1 WHERE recipient = $2 AND read_at IS NULL AND ($3::uuid IS NULL OR inbox_id = $3)",
        )
        .bind(stored(now))
        .bind(recipient)
        .bind(inbox_id)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
