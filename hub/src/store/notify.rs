//! The part of the store that notifications use (see [`crate::notify`]).
//!
//! What we store: subscriptions (who, which kinds, where to), the outbox of queued
//! notifications with their delivery state, each person's console notification
//! list (critical news of the orders a physician placed, read or not), the notifier's cursor into the audit
//! trail, and the sites whose link is currently reported down.
//!
//! Why it is durable: the notifier queues outbox rows and advances its cursor in
//! one transaction, so an audit entry is turned into notifications exactly once;
//! a delivery is marked delivered only after the receiver took it.

use super::{transactions, Result};
use crate::model::notification::{
    Delivery, InboxEntry, NewSubscription, NotifierPass, OutboxEntry, OutboxState, Subscription,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// Which outbox rows to list.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    /// Only notifications of this user's subscriptions.
    pub owner: Option<String>,
    pub state: Option<OutboxState>,
    /// Only this subscription's.
    pub subscription_id: Option<Uuid>,
    /// Newest this many (0: all).
    pub limit: u32,
}

/// How many notifications wait and how many failed for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: u64,
    pub failed: u64,
}

#[async_trait]
pub trait NotifyStore: super::backend::Writes + super::backend::Reads {
    /// Stores a validated subscription (audited `notification.subscribed`). The
    /// webhook secret is stored as given.
    async fn subscribe(&self, new: &NewSubscription, now: DateTime<Utc>) -> Result<Subscription> {
        transactions::subscribe(self.write().await?, new, now).await
    }
    /// Live subscriptions, oldest first; one user's when `owner` is given.
    async fn subscriptions(&self, owner: Option<&str>) -> Result<Vec<Subscription>>;
    /// A live subscription.
    async fn subscription(&self, subscription_id: Uuid) -> Result<Subscription>;
    /// Ends a subscription (audited `notification.unsubscribed`); its undelivered
    /// notifications are marked failed, as nobody wants them any more.
    async fn unsubscribe(
        &self,
        subscription_id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let tx = self.write().await?;
        transactions::unsubscribe(tx, subscription_id, actor, now).await
    }

    /// Reads up to `limit` audit entries after the notifier's cursor, queues the
    /// notifications they mean for every matching subscription, and moves the cursor
    /// past them: the queueing and the cursor in one transaction. Concurrent notifiers (several hub
    /// processes) take turns on the cursor.
    async fn run_notifier(&self, limit: u32, now: DateTime<Utc>) -> Result<NotifierPass> {
        // Idle most of the time: look before taking the writer.
        if !self.notifier_behind().await? {
            return Ok(NotifierPass::default());
        }
        transactions::run_notifier(self, limit, now).await
    }
    /// Whether the audit trail holds entries after the notifier's cursor (a cheap
    /// look, outside any write transaction).
    async fn notifier_behind(&self) -> Result<bool>;
    /// Reports (audits `site.link_down`) each active site not heard from for
    /// `down_after`, once per outage, and (`site.link_restored`) each reported site
    /// heard from since. Returns the sites whose report changed.
    async fn check_site_links(
        &self,
        down_after: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        if !(self.site_links_changed(transactions::silent_since(down_after, now))).await? {
            return Ok(Vec::new());
        }
        transactions::check_site_links(self.write().await?, down_after, now).await
    }
    /// Whether a site's link should be reported down (active, silent since
    /// `silent_since`, not reported) or restored (reported, heard from since): a
    /// cheap look, outside any write transaction.
    async fn site_links_changed(&self, silent_since: DateTime<Utc>) -> Result<bool>;

    /// Claims up to `limit` due notifications for delivery until `now + lease`: the
    /// oldest pending one of each subscription (so each subscription's arrive in
    /// order), skipping rows another worker holds.
    async fn claim_deliveries(
        &self,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Delivery>>;
    /// The receiver took it.
    async fn delivery_succeeded(&self, notification_id: Uuid, now: DateTime<Utc>) -> Result<()>;
    /// An attempt failed: retry at `retry_at`, or mark it failed when `None`.
    async fn delivery_failed(
        &self,
        notification_id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Notifications, newest first.
    async fn outbox(&self, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>>;
    async fn outbox_entry(&self, notification_id: Uuid) -> Result<OutboxEntry>;
    /// Puts a failed notification back in the queue with its attempts reset
    /// (audited `notification.requeued`).
    async fn requeue(
        &self,
        notification_id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<OutboxEntry> {
        let tx = self.write().await?;
        transactions::requeue(tx, notification_id, actor, now).await
    }
    async fn outbox_counts(&self) -> Result<OutboxCounts>;

    /// A person's console notification list, newest first (at most `limit`).
    async fn inbox(&self, recipient: &str, limit: u32) -> Result<Vec<InboxEntry>>;
    /// How many of a person's console notifications are not read yet.
    async fn inbox_unread(&self, recipient: &str) -> Result<u64>;
    /// Marks a person's unread console notifications read (all of them, or the
    /// one given); answers how many it marked.
    async fn mark_inbox_read(
        &self,
        recipient: &str,
        inbox_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<u64>;
}
