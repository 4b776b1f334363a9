//! [`NotifyStore`] on SQLite: writers hold the store's write lock, as every other
//! writer here does, so the notifier's cursor and the outbox are changed by one
//! writer at a time.

use super::*;
use crate::model::notification::happening::{self as derive, Needs, OrderFacts, SiteEventFacts};
use crate::model::notification::InboxEntry;
use crate::model::notification::{Delivery, OutboxEntry, OutboxState, Subscription};
use crate::store::notify::{NotifyStore, OutboxCounts, OutboxFilter};
use crate::store::rows::{INBOX_COLUMNS, OUTBOX_COLUMNS};

fn later(now: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX)
}

impl SqliteStore {
    pub(super) async fn outbox_entry_in(
        tx: &mut Transaction<'_, Sqlite>,
        notification_id: Uuid,
    ) -> Result<OutboxEntry> {
        let row = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} WHERE o.notification_id = ?"
        ))
        .bind(notification_id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("notification {notification_id}")))?;
        rows::outbox(&row)
    }

    /// The facts [`derive::needs`] asks for, read inside the notifier's transaction.
    pub(super) async fn facts_in(
        tx: &mut Transaction<'_, Sqlite>,
        needs: Needs,
    ) -> Result<(Option<OrderFacts>, Vec<SiteEventFacts>)> {
        match needs {
            Needs::Nothing => Ok((None, Vec::new())),
            Needs::Order(batch_id) => {
                let row = sqlx::query(
                    "SELECT order_id, batch_id, coi, site_id, physician FROM orders o WHERE o.batch_id = ? AND o.dry_run = 0",
                )
                .bind(batch_id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
                Ok((row.as_ref().map(rows::order_facts).transpose()?, Vec::new()))
            }
            Needs::SiteEvents {
                site_id,
                first,
                last,
            } => {
                let rows = sqlx::query(&format!(
                    "SELECT e.body, o.order_id, o.batch_id, o.coi, o.site_id, o.physician, q.hub_outcome \
                     FROM site_events e JOIN orders o ON o.batch_id = e.batch_id \
                     LEFT JOIN qc_results q ON q.site_id = e.site_id AND q.site_seq = e.seq \
                     WHERE o.dry_run = 0 AND e.site_id = ? AND e.seq BETWEEN ? AND ? AND e.kind IN ({}) ORDER BY e.seq",
                    derive::EVENT_KINDS.map(|k| format!("'{k}'")).join(", ")
                ))
                .bind(&site_id)
                .bind(i64_of(first)?)
                .bind(i64_of(last)?)
                .fetch_all(&mut **tx)
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
impl NotifyStore for SqliteStore {
    async fn notifier_behind(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_log WHERE position > (SELECT position FROM notification_cursor WHERE name = 'audit'))",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn site_links_changed(&self, silent_since: DateTime<Utc>) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sites s WHERE s.status = 'active' AND s.site_id <> 'dry-run' AND s.last_contact_at < ?1 \
             AND NOT EXISTS (SELECT 1 FROM site_link_down d WHERE d.site_id = s.site_id)) \
             OR EXISTS (SELECT 1 FROM site_link_down d JOIN sites s ON s.site_id = d.site_id \
             WHERE s.last_contact_at > d.last_contact_at)",
        )
        .bind(ts(silent_since))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn subscriptions(&self, owner: Option<&str>) -> Result<Vec<Subscription>> {
        sqlx::query(
            "SELECT * FROM notification_subscriptions WHERE removed_at IS NULL AND (?1 IS NULL OR owner = ?1) \
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
            "SELECT * FROM notification_subscriptions WHERE subscription_id = ? AND removed_at IS NULL",
        )
        .bind(subscription_id.to_string())
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
        let due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM notification_outbox WHERE state = 'pending' AND next_attempt_at <= ?1 \
             AND (leased_until IS NULL OR leased_until <= ?1))",
        )
        .bind(ts(now))
        .fetch_one(&self.pool)
        .await?;
        if !due {
            return Ok(Vec::new());
        }
        let mut w = self.begin_write().await?;
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} WHERE o.state = 'pending' AND o.next_attempt_at <= ?1 \
             AND (o.leased_until IS NULL OR o.leased_until <= ?1) \
             AND o.id = (SELECT MIN(p.id) FROM notification_outbox p WHERE p.subscription_id = o.subscription_id AND p.state = 'pending') \
             ORDER BY o.id LIMIT ?2"
        ))
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *w.tx)
        .await?;
        let deliveries: Vec<Delivery> = rows.iter().map(rows::delivery).collect::<Result<_>>()?;
        for delivery in &deliveries {
            sqlx::query(
                "UPDATE notification_outbox SET leased_until = ? WHERE notification_id = ?",
            )
            .bind(ts(later(now, lease)))
            .bind(delivery.entry.notification_id.to_string())
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await?;
        Ok(deliveries)
    }

    async fn delivery_succeeded(&self, notification_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE notification_outbox SET state = 'delivered', delivered_at = ?, attempts = attempts + 1, leased_until = NULL \
             WHERE notification_id = ? AND state = 'pending'",
        )
        .bind(ts(now))
        .bind(notification_id.to_string())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(())
    }

    async fn delivery_failed(
        &self,
        notification_id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<()> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "UPDATE notification_outbox SET attempts = attempts + 1, last_error = ?1, leased_until = NULL, \
             state = CASE WHEN ?2 IS NULL THEN 'failed' ELSE 'pending' END, \
             next_attempt_at = COALESCE(?2, next_attempt_at) \
             WHERE notification_id = ?3 AND state = 'pending'",
        )
        .bind(error)
        .bind(retry_at.map(ts))
        .bind(notification_id.to_string())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        Ok(())
    }

    async fn outbox(&self, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>> {
        sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} WHERE (?1 IS NULL OR s.owner = ?1) AND (?2 IS NULL OR o.state = ?2) \
             AND (?3 IS NULL OR o.subscription_id = ?3) ORDER BY o.id DESC LIMIT ?4"
        ))
        .bind(filter.owner.as_deref())
        .bind(filter.state.map(OutboxState::as_str))
        .bind(filter.subscription_id.map(|s| s.to_string()))
        .bind(if filter.limit == 0 { -1 } else { i64::from(filter.limit) })
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::outbox)
        .collect()
    }

    async fn outbox_entry(&self, notification_id: Uuid) -> Result<OutboxEntry> {
        let mut tx = self.pool.begin().await?;
        Self::outbox_entry_in(&mut tx, notification_id).await
    }

    async fn outbox_counts(&self) -> Result<OutboxCounts> {
        let (pending, failed): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'failed'), 0) FROM notification_outbox",
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
            "SELECT {INBOX_COLUMNS} WHERE recipient = ? ORDER BY created_at DESC, inbox_id DESC LIMIT ?"
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
            "SELECT COUNT(*) FROM inbox WHERE recipient = ? AND read_at IS NULL",
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
        let mut w = self.begin_write().await?;
        let marked = sqlx::query(
            "UPDATE inbox SET read_at = ?1 WHERE recipient = ?2 AND read_at IS NULL AND (?3 IS NULL OR inbox_id = ?3)",
        )
        .bind(ts(now))
        .bind(recipient)
        .bind(inbox_id.map(|i| i.to_string()))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(marked)
    }
}
