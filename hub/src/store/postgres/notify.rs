//! [`NotifyStore`] on PostgreSQL, where several hub processes share the tables:
//! the notifier locks its cursor row (one notifier reads and advances it at a
//! time), workers claim outbox rows with `FOR UPDATE SKIP LOCKED` and a lease (two
//! workers never send the same row at once), and a link-down episode is one row,
//! so two processes checking at once report it once.

use super::*;
use crate::model::notification::happening::{self as derive, Needs, OrderFacts, SiteEventFacts};
use crate::model::notification::{
    kinds_text, parse_kinds, payload, Channel, Delivery, Kind, NewSubscription, NotifierPass,
    OutboxEntry, OutboxState, Subscription,
};
use crate::store::notify::{NotifyStore, OutboxCounts, OutboxFilter};

fn subscription_from_row(row: &PgRow) -> Result<Subscription> {
    let channel: String = row.try_get("channel")?;
    let target: String = row.try_get("target")?;
    let channel = match channel.as_str() {
        "email" => Channel::Email { address: target },
        "webhook" => Channel::Webhook {
            url: target,
            secret: row
                .try_get::<Option<String>, _>("secret")?
                .unwrap_or_default(),
        },
        other => return Err(Error::Corrupt(format!("unknown channel {other:?}"))),
    };
    Ok(Subscription {
        subscription_id: row.try_get("subscription_id")?,
        owner: row.try_get("owner")?,
        kinds: parse_kinds(&row.try_get::<String, _>("kinds")?)
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        channel,
        site_id: row.try_get("site_id")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Columns of an outbox row with its subscription's owner and channel.
const OUTBOX_COLUMNS: &str = "o.notification_id, o.subscription_id, s.owner, s.channel, s.target, s.secret, \
     o.source, o.kind, o.site_id, o.batch_id, o.coi, o.summary, o.payload, o.created_at, o.state, \
     o.attempts, o.next_attempt_at, o.last_error, o.delivered_at \
     FROM notification_outbox o JOIN notification_subscriptions s ON s.subscription_id = o.subscription_id";

fn outbox_from_row(row: &PgRow) -> Result<OutboxEntry> {
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    Ok(OutboxEntry {
        notification_id: row.try_get("notification_id")?,
        subscription_id: row.try_get("subscription_id")?,
        owner: row.try_get("owner")?,
        channel: row.try_get("channel")?,
        target: row.try_get("target")?,
        source: row.try_get("source")?,
        kind: Kind::parse(&kind).map_err(|e| Error::Corrupt(e.to_string()))?,
        site_id: row.try_get("site_id")?,
        batch_id: row.try_get("batch_id")?,
        coi: row.try_get("coi")?,
        summary: row.try_get("summary")?,
        payload: row.try_get("payload")?,
        created_at: row.try_get("created_at")?,
        state: OutboxState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("unknown outbox state {state:?}")))?,
        attempts: u64_of(row, "attempts")? as u32,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

fn delivery_from_row(row: &PgRow) -> Result<Delivery> {
    let entry = outbox_from_row(row)?;
    let channel = match entry.channel.as_str() {
        "email" => Channel::Email {
            address: entry.target.clone(),
        },
        _ => Channel::Webhook {
            url: entry.target.clone(),
            secret: row
                .try_get::<Option<String>, _>("secret")?
                .unwrap_or_default(),
        },
    };
    Ok(Delivery { entry, channel })
}

fn order_facts_from_row(row: &PgRow) -> Result<OrderFacts> {
    Ok(OrderFacts {
        order_id: row.try_get("order_id")?,
        batch_id: row.try_get("batch_id")?,
        coi: row.try_get("coi")?,
        site_id: row.try_get("site_id")?,
        physician: row.try_get("physician")?,
    })
}

fn later(now: DateTime<Utc>, by: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX)
}

impl PgStore {
    async fn outbox_entry_in(
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
        outbox_from_row(&row)
    }

    /// The facts [`derive::needs`] asks for, read inside the notifier's transaction.
    async fn facts_in(
        conn: &mut PgConnection,
        needs: Needs,
    ) -> Result<(Option<OrderFacts>, Vec<SiteEventFacts>)> {
        match needs {
            Needs::Nothing => Ok((None, Vec::new())),
            Needs::Order(batch_id) => {
                let row = sqlx::query(
                    "SELECT order_id, batch_id, coi, site_id, physician FROM orders WHERE batch_id = $1",
                )
                .bind(batch_id)
                .fetch_optional(conn)
                .await?;
                Ok((
                    row.as_ref().map(order_facts_from_row).transpose()?,
                    Vec::new(),
                ))
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
                     WHERE e.site_id = $1 AND e.seq BETWEEN $2 AND $3 AND e.kind = ANY($4) ORDER BY e.seq",
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
                        order: order_facts_from_row(row)?,
                        hub_out_of_specification: outcome.as_deref()
                            == Some(outcome_str(Outcome::OutOfSpecification)),
                    });
                }
                Ok((None, events))
            }
        }
    }
}

#[async_trait]
impl NotifyStore for PgStore {
    async fn subscribe(&self, new: &NewSubscription, now: DateTime<Utc>) -> Result<Subscription> {
        let mut w = self.begin_write().await?;
        if let Some(site_id) = &new.site_id {
            Self::site_in(w.conn(), site_id).await?;
        }
        let subscription = Subscription {
            subscription_id: Uuid::now_v7(),
            owner: new.owner.clone(),
            kinds: new.kinds.clone(),
            channel: new.channel.clone(),
            site_id: new.site_id.clone(),
            created_at: stored(now),
        };
        let secret = match &new.channel {
            Channel::Webhook { secret, .. } => Some(secret.as_str()),
            Channel::Email { .. } => None,
        };
        sqlx::query(
            "INSERT INTO notification_subscriptions (subscription_id, owner, kinds, channel, target, secret, site_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(subscription.subscription_id)
        .bind(&new.owner)
        .bind(kinds_text(&new.kinds))
        .bind(new.channel.name())
        .bind(new.channel.target())
        .bind(secret)
        .bind(new.site_id.as_deref())
        .bind(stored(now))
        .execute(w.conn())
        .await?;
        w.audit(
            NewEntry::new(
                &new.owner,
                "notification.subscribed",
                format!("subscription/{}", subscription.subscription_id),
            )
            .value(format!(
                "{} {} for {}{}",
                new.channel.name(),
                new.channel.target(),
                kinds_text(&new.kinds),
                new.site_id
                    .as_deref()
                    .map(|s| format!(" at site {s}"))
                    .unwrap_or_default()
            )),
            now,
        );
        w.commit().await?;
        Ok(subscription)
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
        .map(subscription_from_row)
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
        subscription_from_row(&row)
    }

    async fn unsubscribe(
        &self,
        subscription_id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut w = self.begin_write().await?;
        let removed = sqlx::query(
            "UPDATE notification_subscriptions SET removed_at = $1 WHERE subscription_id = $2 AND removed_at IS NULL",
        )
        .bind(stored(now))
        .bind(subscription_id)
        .execute(w.conn())
        .await?;
        if removed.rows_affected() == 0 {
            return Err(Error::NotFound(format!("subscription {subscription_id}")));
        }
        let dropped = sqlx::query(
            "UPDATE notification_outbox SET state = 'failed', last_error = 'unsubscribed', leased_until = NULL \
             WHERE subscription_id = $1 AND state = 'pending'",
        )
        .bind(subscription_id)
        .execute(w.conn())
        .await?;
        w.audit(
            NewEntry::new(
                actor,
                "notification.unsubscribed",
                format!("subscription/{subscription_id}"),
            )
            .value(format!(
                "{} undelivered notification(s) dropped",
                dropped.rows_affected()
            )),
            now,
        );
        w.commit().await
    }

    async fn run_notifier(&self, limit: u32, now: DateTime<Utc>) -> Result<NotifierPass> {
        // Idle most of the time: look before locking the cursor.
        let behind: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_log WHERE position > (SELECT position FROM notification_cursor WHERE name = 'audit'))",
        )
        .fetch_one(&self.pool)
        .await?;
        if !behind {
            return Ok(NotifierPass::default());
        }
        let mut w = self.begin_write().await?;
        // One notifier at a time: the others wait here, then read the moved cursor.
        let cursor: i64 = sqlx::query_scalar(
            "SELECT position FROM notification_cursor WHERE name = 'audit' FOR UPDATE",
        )
        .fetch_one(w.conn())
        .await?;
        let entries: Vec<audit::Entry> =
            sqlx::query("SELECT * FROM audit_log WHERE position > $1 ORDER BY position LIMIT $2")
                .bind(cursor)
                .bind(i64::from(limit))
                .fetch_all(w.conn())
                .await?
                .iter()
                .map(|row| Ok(audit_from_row(row)?.0))
                .collect::<Result<_>>()?;
        let Some(last) = entries.last() else {
            return Ok(NotifierPass::default());
        };
        let last_position = last.position;
        let mut subscribers = Vec::new();
        for row in sqlx::query(
            "SELECT s.*, u.role FROM notification_subscriptions s JOIN users u ON u.username = s.owner \
             WHERE s.removed_at IS NULL AND NOT u.disabled",
        )
        .fetch_all(w.conn())
        .await?
        {
            let role: String = row.try_get("role")?;
            let role =
                Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("role {role:?}")))?;
            subscribers.push((subscription_from_row(&row)?, role));
        }
        let mut queued = 0;
        if !subscribers.is_empty() {
            for entry in &entries {
                let (order, events) = Self::facts_in(w.conn(), derive::needs(entry)).await?;
                for happening in derive::happenings(entry, order.as_ref(), &events) {
                    for (subscription, role) in &subscribers {
                        if !subscription.wants(*role, &happening) {
                            continue;
                        }
                        let notification_id = Uuid::now_v7();
                        let order = happening.order.as_ref();
                        let inserted = sqlx::query(
                            "INSERT INTO notification_outbox (notification_id, subscription_id, source, kind, site_id, batch_id, coi, summary, payload, created_at, state, next_attempt_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $10) ON CONFLICT (subscription_id, source) DO NOTHING",
                        )
                        .bind(notification_id)
                        .bind(subscription.subscription_id)
                        .bind(&happening.source)
                        .bind(happening.kind.as_str())
                        .bind(happening.site_id.as_deref())
                        .bind(order.map(|o| o.batch_id))
                        .bind(order.map(|o| o.coi.as_str()))
                        .bind(&happening.summary)
                        .bind(payload(notification_id, &happening))
                        .bind(stored(now))
                        .execute(w.conn())
                        .await?;
                        queued += inserted.rows_affected() as usize;
                    }
                }
            }
        }
        sqlx::query("UPDATE notification_cursor SET position = $1 WHERE name = 'audit'")
            .bind(i64_of(last_position)?)
            .execute(w.conn())
            .await?;
        w.commit().await?;
        Ok(NotifierPass {
            entries: entries.len(),
            queued,
        })
    }

    async fn check_site_links(
        &self,
        down_after: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let silent_since = stored(now - chrono::Duration::from_std(down_after).unwrap_or_default());
        let changes: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sites s WHERE s.status = 'active' AND s.last_contact_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM site_link_down d WHERE d.site_id = s.site_id)) \
             OR EXISTS (SELECT 1 FROM site_link_down d JOIN sites s ON s.site_id = d.site_id \
             WHERE s.last_contact_at > d.last_contact_at)",
        )
        .bind(silent_since)
        .fetch_one(&self.pool)
        .await?;
        if !changes {
            return Ok(Vec::new());
        }
        let mut w = self.begin_write().await?;
        // A row per episode: of two processes checking at once, one inserts it (and
        // audits), the other's insert does nothing.
        let down: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO site_link_down (site_id, last_contact_at, detected_at) \
             SELECT s.site_id, s.last_contact_at, $2 FROM sites s \
             WHERE s.status = 'active' AND s.last_contact_at IS NOT NULL AND s.last_contact_at < $1 \
             ON CONFLICT (site_id) DO NOTHING RETURNING site_id, last_contact_at",
        )
        .bind(silent_since)
        .bind(stored(now))
        .fetch_all(w.conn())
        .await?;
        let back: Vec<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "DELETE FROM site_link_down d USING sites s \
             WHERE s.site_id = d.site_id AND s.last_contact_at > d.last_contact_at \
             RETURNING d.site_id, s.last_contact_at",
        )
        .fetch_all(w.conn())
        .await?;
        let mut changed = Vec::new();
        for (site_id, last_contact) in down {
            w.audit(
                NewEntry::new("hub", "site.link_down", format!("site/{site_id}"))
                    .change(ts(last_contact), "")
                    .reason(format!(
                        "not heard from for more than {} s",
                        down_after.as_secs()
                    )),
                now,
            );
            changed.push(site_id);
        }
        for (site_id, last_contact) in back {
            w.audit(
                NewEntry::new("hub", "site.link_restored", format!("site/{site_id}"))
                    .value(last_contact.map(ts).unwrap_or_default()),
                now,
            );
            changed.push(site_id);
        }
        changed.sort();
        w.commit().await?;
        Ok(changed)
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
        let deliveries = rows.iter().map(delivery_from_row).collect::<Result<_>>()?;
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
        .map(outbox_from_row)
        .collect()
    }

    async fn outbox_entry(&self, notification_id: Uuid) -> Result<OutboxEntry> {
        let mut conn = self.pool.acquire().await?;
        Self::outbox_entry_in(&mut conn, notification_id).await
    }

    async fn requeue(
        &self,
        notification_id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<OutboxEntry> {
        let mut w = self.begin_write().await?;
        sqlx::query("SELECT 1 FROM notification_outbox WHERE notification_id = $1 FOR UPDATE")
            .bind(notification_id)
            .execute(w.conn())
            .await?;
        let entry = Self::outbox_entry_in(w.conn(), notification_id).await?;
        if entry.state != OutboxState::Failed {
            return Err(Error::FailedPrecondition(format!(
                "notification {notification_id} is {}; only a failed one can be requeued",
                entry.state.as_str()
            )));
        }
        let live: Option<Uuid> = sqlx::query_scalar(
            "SELECT subscription_id FROM notification_subscriptions WHERE subscription_id = $1 AND removed_at IS NULL",
        )
        .bind(entry.subscription_id)
        .fetch_optional(w.conn())
        .await?;
        if live.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "notification {notification_id} belongs to subscription {}, which was ended",
                entry.subscription_id
            )));
        }
        sqlx::query(
            "UPDATE notification_outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, leased_until = NULL \
             WHERE notification_id = $2",
        )
        .bind(stored(now))
        .bind(notification_id)
        .execute(w.conn())
        .await?;
        w.audit(
            NewEntry::new(
                actor,
                "notification.requeued",
                format!("notification/{notification_id}"),
            )
            .change(
                format!(
                    "failed after {} attempt(s): {}",
                    entry.attempts,
                    entry.last_error.as_deref().unwrap_or("")
                ),
                "pending",
            ),
            now,
        );
        let entry = Self::outbox_entry_in(w.conn(), notification_id).await?;
        w.commit().await?;
        Ok(entry)
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
}
