//! The reads ([`ReadTx`]) and write primitives ([`WriteTx`]) of a transaction on
//! PostgreSQL: the store's transactions (`store/transactions.rs`) run on these. Locks are taken in the
//! order the module above documents: the site's row, then a COI serial's, then (at
//! commit) the audit chain.

use super::super::backend::{OrderKey, ReadTx, RoleGrant, WriteTx};
use super::super::rows;
use super::super::*;
use super::{stored, PgStore, PgTx, COMMANDS_CHANNEL, ORDER_COLUMNS};
use crate::audit::{self, NewEntry};
use crate::model::notification::happening::{self, Happening, OrderFacts, SiteEventFacts};
use crate::model::notification::{kinds_text, payload, OutboxEntry, Subscription};
use crate::model::{QcRecord, Role, StatusChange};

use crate::model::{Progress, Projection};
use crate::schedule::{Booking, Capacity, Plan};
use sqlx::Row;

#[async_trait]
impl ReadTx for PgTx<'_> {
    async fn recipe_draft(
        &mut self,
        recipe_id: &str,
        version: u32,
    ) -> Result<Option<crate::model::recipe_change::RecipeDraft>> {
        sqlx::query("SELECT * FROM recipe_drafts WHERE recipe_id = $1 AND version = $2")
            .bind(recipe_id)
            .bind(i64::from(version))
            .fetch_optional(self.conn())
            .await?
            .as_ref()
            .map(rows::recipe_draft)
            .transpose()
    }

    async fn batch_measures(
        &mut self,
        product_id: &str,
        attribute: &str,
    ) -> Result<Vec<crate::model::analytics::measure::Stored>> {
        sqlx::query(
            "SELECT * FROM batch_measures WHERE product_id = $1 AND attribute = $2 AND NOT ambiguous AND n > 0 ORDER BY batch_at, batch_id",
        )
        .bind(product_id)
        .bind(attribute)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::measure)
        .collect()
    }

    async fn measure_attributes(&mut self, product_id: &str) -> Result<Vec<(String, String)>> {
        sqlx::query(
            "SELECT attribute, max(unit) AS unit FROM batch_measures WHERE product_id = $1 AND NOT ambiguous AND n > 0 GROUP BY attribute ORDER BY attribute",
        )
        .bind(product_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(|row| Ok((row.try_get("attribute")?, row.try_get("unit")?)))
        .collect()
    }

    async fn measured_products(&mut self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar(
                "SELECT DISTINCT product_id FROM batch_measures ORDER BY product_id",
            )
            .fetch_all(self.conn())
            .await?,
        )
    }

    async fn analytics_baselines(
        &mut self,
        product_id: &str,
    ) -> Result<Vec<crate::model::analytics::measure::Baseline>> {
        sqlx::query("SELECT * FROM analytics_baselines WHERE product_id = $1 ORDER BY chosen_at")
            .bind(product_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::baseline)
            .collect()
    }

    async fn measured_batches(
        &mut self,
        product_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT batch_id FROM batch_measures WHERE product_id = $1 AND batch_at >= $2 AND batch_at < $3 \
             GROUP BY batch_id ORDER BY min(batch_at), batch_id",
        )
        .bind(product_id)
        .bind(stored(from))
        .bind(stored(to))
        .fetch_all(self.conn())
        .await?)
    }

    async fn batch_trajectory(
        &mut self,
        batch_id: Uuid,
    ) -> Result<Vec<(String, f64, crate::model::analytics::golden::Point)>> {
        sqlx::query(
            "SELECT attribute, bin_hours, bin, n, sum FROM batch_trajectories WHERE batch_id = $1 ORDER BY attribute, bin",
        )
        .bind(batch_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::trajectory_point)
        .collect()
    }

    async fn released_trajectories(
        &mut self,
        product_id: &str,
        attribute: &str,
        bin_hours: f64,
    ) -> Result<Vec<(Uuid, u32, f64)>> {
        sqlx::query(
            "SELECT t.batch_id, t.bin, t.sum / t.n AS mean FROM batch_trajectories t \
             JOIN batches b ON b.batch_id = t.batch_id \
             WHERE t.product_id = $1 AND t.attribute = $2 AND t.bin_hours = $3 \
               AND b.state IN ('released', 'handed_over', 'infused')",
        )
        .bind(product_id)
        .bind(attribute)
        .bind(bin_hours)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::released_point)
        .collect()
    }

    async fn site_qualifications(
        &mut self,
        site_id: Option<&str>,
    ) -> Result<Vec<crate::model::Qualification>> {
        sqlx::query(&format!(
            "SELECT {} FROM site_qualifications WHERE ($1::text IS NULL OR site_id = $1) \
             ORDER BY site_id, recipe_id, qualified_at",
            rows::QUALIFICATION_COLUMNS
        ))
        .bind(site_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::qualification)
        .collect()
    }

    async fn recipe_drafts(&mut self) -> Result<Vec<crate::model::recipe_change::RecipeDraft>> {
        sqlx::query("SELECT * FROM recipe_drafts ORDER BY recipe_id, version")
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::recipe_draft)
            .collect()
    }

    async fn recipe_dates(
        &mut self,
        recipe_id: &str,
        version: u32,
    ) -> Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
        let row = sqlx::query(
            "SELECT effective_from, retired_at FROM recipes WHERE recipe_id = $1 AND version = $2",
        )
        .bind(recipe_id)
        .bind(i64::from(version))
        .fetch_optional(self.conn())
        .await?
        .ok_or_else(|| Error::NotFound(format!("recipe {recipe_id} v{version}")))?;
        Ok((
            rows::Columns::opt_time(&row, "effective_from")?,
            rows::Columns::opt_time(&row, "retired_at")?,
        ))
    }

    async fn deviation_events(&mut self, batch_id: Option<Uuid>) -> Result<Vec<StoredEvent>> {
        sqlx::query(
            "SELECT site_id, body, received_at FROM site_events WHERE kind = 'deviation_raised' AND ($1::uuid IS NULL OR batch_id = $1) ORDER BY site_id, seq",
        )
        .bind(batch_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::event)
        .collect()
    }

    async fn deviation_rows(
        &mut self,
        batch_id: Option<Uuid>,
    ) -> Result<Vec<crate::model::deviation::DeviationRow>> {
        sqlx::query("SELECT * FROM deviations WHERE $1::uuid IS NULL OR batch_id = $1 ORDER BY batch_id, deviation_id")
            .bind(batch_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::deviation_row)
            .collect()
    }

    async fn deviation_notes(
        &mut self,
        batch_id: Option<Uuid>,
    ) -> Result<Vec<crate::model::deviation::Note>> {
        sqlx::query("SELECT * FROM deviation_notes WHERE $1::uuid IS NULL OR batch_id = $1 ORDER BY written_at, note_id")
            .bind(batch_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::deviation_note)
            .collect()
    }

    async fn system_account(&mut self, client_id: &str) -> Result<crate::model::SystemAccount> {
        let row = sqlx::query("SELECT * FROM system_accounts WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(self.conn())
            .await?
            .ok_or_else(|| Error::NotFound(format!("system account {client_id}")))?;
        let physicians: Vec<String> = sqlx::query_scalar(
            "SELECT physician FROM system_account_physicians WHERE client_id = $1 ORDER BY physician",
        )
        .bind(client_id)
        .fetch_all(self.conn())
        .await?;
        rows::system_account(&row, physicians)
    }

    async fn system_accounts(&mut self) -> Result<Vec<crate::model::SystemAccount>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT client_id FROM system_accounts ORDER BY client_id")
                .fetch_all(self.conn())
                .await?;
        let mut accounts = Vec::with_capacity(ids.len());
        for id in ids {
            accounts.push(self.system_account(&id).await?);
        }
        Ok(accounts)
    }

    async fn system_token_client(
        &mut self,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT client_id FROM system_tokens WHERE token_sha256 = $1 AND expires_at > $2",
        )
        .bind(token_sha256)
        .bind(stored(now))
        .fetch_optional(self.conn())
        .await?)
    }

    async fn notifier_position(&mut self) -> Result<u64> {
        let position: i64 =
            sqlx::query_scalar("SELECT position FROM notification_cursor WHERE name = 'audit'")
                .fetch_one(self.conn())
                .await?;
        u64::try_from(position).map_err(|_| Error::Corrupt("notifier cursor is negative".into()))
    }

    async fn audit_after(&mut self, position: u64, limit: u32) -> Result<Vec<audit::Entry>> {
        sqlx::query("SELECT * FROM audit_log WHERE position > $1 ORDER BY position LIMIT $2")
            .bind(i64_of(position)?)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(|row| Ok(rows::audit_entry(row)?.0))
            .collect()
    }

    async fn subscribers(&mut self) -> Result<Vec<(Subscription, Role)>> {
        sqlx::query(
            "SELECT s.*, u.role FROM notification_subscriptions s JOIN users u ON u.username = s.owner \
             WHERE s.removed_at IS NULL AND NOT u.disabled",
        )
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(|row| {
            let role: String = row.try_get("role")?;
            let role =
                Role::parse(&role).ok_or_else(|| Error::Corrupt(format!("role {role:?}")))?;
            Ok((rows::subscription(row)?, role))
        })
        .collect()
    }

    async fn happening_facts(
        &mut self,
        needs: happening::Needs,
    ) -> Result<(Option<OrderFacts>, Vec<SiteEventFacts>)> {
        PgStore::facts_in(self.conn(), needs).await
    }

    async fn site(&mut self, site_id: &str) -> Result<Site> {
        let row = sqlx::query("SELECT * FROM sites WHERE site_id = $1")
            .bind(site_id)
            .fetch_optional(self.conn())
            .await?
            .ok_or_else(|| Error::NotFound(format!("site {site_id:?}")))?;
        rows::site(&row)
    }

    async fn order(&mut self, key: OrderKey) -> Result<Order> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} WHERE o.{} = $1",
            key.column()
        ))
        .bind(key.id())
        .fetch_optional(self.conn())
        .await?
        .ok_or_else(|| key.not_found())?;
        rows::order(&row)
    }

    async fn recipe(&mut self, recipe_id: &str, version: u32) -> Result<StoredRecipe> {
        if let Some(found) = self.store.recipes.get(recipe_id, version) {
            return Ok(found);
        }
        let row = sqlx::query(
            "SELECT sha256, document FROM recipes WHERE recipe_id = $1 AND version = $2",
        )
        .bind(recipe_id)
        .bind(i64::from(version))
        .fetch_optional(self.conn())
        .await?
        .ok_or_else(|| Error::NotFound(format!("recipe {recipe_id} v{version}")))?;
        let stored = rows::recipe(&row)?;
        self.store.recipes.keep(recipe_id, version, stored.clone());
        Ok(stored)
    }

    async fn events_of_batch(&mut self, batch_id: Uuid) -> Result<Vec<StoredEvent>> {
        sqlx::query(
            "SELECT site_id, body, received_at FROM site_events WHERE batch_id = $1 \
             ORDER BY site_id COLLATE \"C\", seq",
        )
        .bind(batch_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::event)
        .collect()
    }

    async fn qc_of_batch(&mut self, batch_id: Uuid) -> Result<Vec<QcRecord>> {
        sqlx::query("SELECT * FROM qc_results WHERE batch_id = $1 ORDER BY site_seq")
            .bind(batch_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::qc)
            .collect()
    }

    async fn signatures_of_batch(&mut self, batch_id: Uuid) -> Result<Vec<Signature>> {
        sqlx::query("SELECT * FROM signatures WHERE batch_id = $1 ORDER BY signed_at")
            .bind(batch_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::signature)
            .collect()
    }

    async fn audit_trail(&mut self, batch_id: Option<Uuid>) -> Result<Vec<(audit::Entry, String)>> {
        sqlx::query(
            "SELECT * FROM audit_log WHERE ($1::uuid IS NULL OR batch_id = $1) ORDER BY position",
        )
        .bind(batch_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::audit_entry)
        .collect()
    }

    async fn site_directory(&mut self, site_id: &str) -> Result<Vec<HubCommand>> {
        sqlx::query("SELECT body FROM hub_commands WHERE site_id = $1 AND kind = 'person_updated' ORDER BY seq")
            .bind(site_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::command)
            .collect()
    }

    async fn site_protocol(&mut self, site_id: &str) -> Result<String> {
        sqlx::query_scalar("SELECT protocol_version FROM sites WHERE site_id = $1")
            .bind(site_id)
            .fetch_optional(self.conn())
            .await?
            .ok_or_else(|| Error::NotFound(format!("site {site_id}")))
    }

    async fn follow_up_closures(
        &mut self,
        batch_id: Option<Uuid>,
    ) -> Result<Vec<crate::model::FollowUpClosure>> {
        sqlx::query(
            "SELECT * FROM follow_up_closures WHERE ($1::uuid IS NULL OR batch_id = $1) ORDER BY signed_at, batch_id, site_seq",
        )
        .bind(batch_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::follow_up_closure)
        .collect()
    }

    async fn change_reviews_of_batch(
        &mut self,
        batch_id: Uuid,
    ) -> Result<Vec<crate::model::ChangeReview>> {
        sqlx::query("SELECT * FROM change_reviews WHERE batch_id = $1 ORDER BY signed_at")
            .bind(batch_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(rows::change_review)
            .collect()
    }

    async fn session_signed_at(&mut self, token_sha256: &str) -> Result<Option<DateTime<Utc>>> {
        let at: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT signed_at FROM sessions WHERE token_sha256 = $1")
                .bind(token_sha256)
                .fetch_optional(self.conn())
                .await?;
        Ok(at.flatten())
    }

    async fn sign_in_failures(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<(u64, bool)> {
        let row: Option<(i64, bool)> = sqlx::query_as(
            "SELECT failures, lock_audited FROM sign_in_failures \
             WHERE username = $1 AND source = $2 AND window_start = $3",
        )
        .bind(username)
        .bind(source)
        .bind(stored(window_start))
        .fetch_optional(self.conn())
        .await?;
        Ok(row.map_or((0, false), |(n, audited)| (n as u64, audited)))
    }

    async fn audit_sha_at(&mut self, position: u64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT sha256 FROM audit_log WHERE position = $1")
                .bind(i64_of(position)?)
                .fetch_optional(self.conn())
                .await?,
        )
    }

    async fn audit_head(&mut self) -> Result<Option<(u64, String)>> {
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT position, sha256 FROM audit_log ORDER BY position DESC LIMIT 1")
                .fetch_optional(self.conn())
                .await?;
        Ok(row.map(|(p, s)| (p as u64, s)))
    }

    async fn audit_witnesses(&mut self) -> Result<Vec<(String, u64, String, DateTime<Utc>)>> {
        sqlx::query("SELECT * FROM audit_witnesses ORDER BY site_id")
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(|row| {
                use rows::Columns;
                Ok((
                    row.text("site_id")?,
                    row.count("position")?,
                    row.text("sha256")?,
                    row.time("reported_at")?,
                ))
            })
            .collect()
    }

    async fn audit_findings(&mut self, open: bool) -> Result<Vec<crate::audit::Finding>> {
        sqlx::query(
            "SELECT * FROM audit_findings WHERE (NOT $1 OR acknowledged_at IS NULL) ORDER BY found_at",
        )
        .bind(open)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::audit_finding)
        .collect()
    }
}

#[async_trait]
impl WriteTx for PgTx<'_> {
    async fn analytics_backfilled(&mut self) -> Result<bool> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM analytics_backfill")
                .fetch_one(self.conn())
                .await?
                > 0,
        )
    }

    async fn mark_analytics_backfilled(&mut self, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("INSERT INTO analytics_backfill (done_at) VALUES ($1)")
            .bind(stored(now))
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn replace_measures(
        &mut self,
        order: &Order,
        rows: &[crate::model::analytics::measure::Row],
        points: &[(String, f64, crate::model::analytics::golden::Point)],
    ) -> Result<()> {
        sqlx::query("DELETE FROM batch_measures WHERE batch_id = $1")
            .bind(order.batch_id)
            .execute(self.conn())
            .await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO batch_measures (batch_id, attribute, product_id, site_id, batch_at, unit, n, sum, min, max, first_hours, last_hours, last_out, out_of_range_hours, seq, retest_of, ambiguous) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .bind(order.batch_id)
            .bind(&r.attribute)
            .bind(&order.recipe_id)
            .bind(&order.site_id)
            .bind(stored(order.created_at))
            .bind(&r.unit)
            .bind(i64_of(r.run.n)?)
            .bind(r.run.sum)
            .bind(r.run.min)
            .bind(r.run.max)
            .bind(r.run.first_hours)
            .bind(r.run.last_hours)
            .bind(r.run.last_out)
            .bind(r.run.out_of_range_hours)
            .bind(i64_of(r.seq)?)
            .bind(r.retest_of.map(i64_of).transpose()?)
            .bind(r.ambiguous)
            .execute(self.conn())
            .await?;
        }
        sqlx::query("DELETE FROM batch_trajectories WHERE batch_id = $1")
            .bind(order.batch_id)
            .execute(self.conn())
            .await?;
        for (attribute, bin_hours, point) in points {
            sqlx::query(
                "INSERT INTO batch_trajectories (batch_id, attribute, bin, product_id, bin_hours, n, sum) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(order.batch_id)
            .bind(attribute)
            .bind(i64::from(point.bin))
            .bind(&order.recipe_id)
            .bind(bin_hours)
            .bind(i64_of(point.n)?)
            .bind(point.sum)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    async fn insert_trend_signal(
        &mut self,
        s: &crate::model::analytics::trend::TrendSignal,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO trend_signals (batch_id, attribute, statistic, rule, product_id, site_id, value, found_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(s.batch_id)
        .bind(&s.attribute)
        .bind(&s.statistic)
        .bind(i32::from(s.rule))
        .bind(&s.product_id)
        .bind(&s.site_id)
        .bind(s.value)
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_analytics_baseline(
        &mut self,
        b: &crate::model::analytics::measure::Baseline,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO analytics_baselines (product_id, chosen_at, chosen_by, reason, batches) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&b.product_id)
        .bind(stored(b.chosen_at))
        .bind(&b.chosen_by)
        .bind(&b.reason)
        .bind(json_text(&b.batches)?)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_site_qualification(&mut self, q: &crate::model::Qualification) -> Result<()> {
        sqlx::query(
            "INSERT INTO site_qualifications (site_id, recipe_id, min_version, max_version, qualified_by, qualified_name, qualified_at, meaning, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&q.site_id)
        .bind(&q.recipe_id)
        .bind(i64::from(q.min_version))
        .bind(q.max_version.map(i64::from))
        .bind(&q.qualified_by)
        .bind(&q.qualified_name)
        .bind(stored(q.qualified_at))
        .bind(&q.meaning)
        .bind(&q.reason)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn withdraw_site_qualification(
        &mut self,
        site_id: &str,
        recipe_id: &str,
        withdrawal: &StatusChange,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE site_qualifications SET withdrawn_by = $1, withdrawn_at = $2, withdrawn_reason = $3 WHERE site_id = $4 AND recipe_id = $5 AND withdrawn_at IS NULL",
        )
        .bind(&withdrawal.by)
        .bind(stored(withdrawal.at))
        .bind(&withdrawal.reason)
        .bind(site_id)
        .bind(recipe_id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn save_recipe_draft(
        &mut self,
        draft: &crate::model::recipe_change::RecipeDraft,
    ) -> Result<()> {
        let (sub, app) = (draft.submitted.as_ref(), draft.approved.as_ref());
        sqlx::query(
            "INSERT INTO recipe_drafts (recipe_id, version, document, sha256, author, drafted_at, submitted_by, submitted_name, \
             submitted_at, submitted_sha256, approved_by, approved_name, approved_at, approved_sha256, effective_from) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (recipe_id, version) DO UPDATE SET document = excluded.document, sha256 = excluded.sha256, \
             author = excluded.author, drafted_at = excluded.drafted_at, submitted_by = excluded.submitted_by, \
             submitted_name = excluded.submitted_name, submitted_at = excluded.submitted_at, \
             submitted_sha256 = excluded.submitted_sha256, approved_by = excluded.approved_by, \
             approved_name = excluded.approved_name, approved_at = excluded.approved_at, \
             approved_sha256 = excluded.approved_sha256, effective_from = excluded.effective_from",
        )
        .bind(&draft.recipe.id)
        .bind(i64::from(draft.recipe.version))
        .bind(draft.recipe.to_canonical_json())
        .bind(&draft.sha256)
        .bind(&draft.author)
        .bind(stored(draft.drafted_at))
        .bind(sub.map(|s| s.by.clone()))
        .bind(sub.map(|s| s.name.clone()))
        .bind(sub.map(|s| s.at).map(stored))
        .bind(sub.map(|s| s.sha256.clone()))
        .bind(app.map(|s| s.by.clone()))
        .bind(app.map(|s| s.name.clone()))
        .bind(app.map(|s| s.at).map(stored))
        .bind(app.map(|s| s.sha256.clone()))
        .bind(draft.effective_from.map(stored))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn set_recipe_effective(
        &mut self,
        recipe_id: &str,
        version: u32,
        from: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("UPDATE recipes SET effective_from = $1 WHERE recipe_id = $2 AND version = $3")
            .bind(stored(from))
            .bind(recipe_id)
            .bind(i64::from(version))
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn retire_recipe(
        &mut self,
        recipe_id: &str,
        version: u32,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("UPDATE recipes SET retired_at = $1, retired_by = $2 WHERE recipe_id = $3 AND version = $4")
            .bind(stored(at))
            .bind(by)
            .bind(recipe_id)
            .bind(i64::from(version))
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn insert_deviation_row(
        &mut self,
        row: &crate::model::deviation::DeviationRow,
    ) -> Result<bool> {
        let raised = row.raised_at_hub.as_ref();
        let done = sqlx::query(
            "INSERT INTO deviations (batch_id, deviation_id, site_id, raised_by, raised_at, step_id, description, classification) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (batch_id, deviation_id) DO NOTHING",
        )
        .bind(row.batch_id)
        .bind(&row.deviation_id)
        .bind(&row.site_id)
        .bind(raised.map(|r| r.0.clone()))
        .bind(raised.map(|r| r.1).map(stored))
        .bind(raised.map(|r| r.2.clone()))
        .bind(raised.map(|r| r.3.clone()))
        .bind(&row.classification)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn close_deviation_row(
        &mut self,
        batch_id: Uuid,
        deviation_id: &str,
        closure: &crate::model::deviation::Closure,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE deviations SET root_cause = $1, capa_ref = $2, closed_by = $3, closed_by_name = $4, closed_at = $5 \
             WHERE batch_id = $6 AND deviation_id = $7",
        )
        .bind(&closure.root_cause)
        .bind(&closure.capa_ref)
        .bind(&closure.closed_by)
        .bind(&closure.closed_by_name)
        .bind(stored(closure.closed_at))
        .bind(batch_id)
        .bind(deviation_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_deviation_note(&mut self, note: &crate::model::deviation::Note) -> Result<()> {
        sqlx::query(
            "INSERT INTO deviation_notes (note_id, batch_id, deviation_id, author, written_at, text) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(note.note_id)
        .bind(note.batch_id)
        .bind(&note.deviation_id)
        .bind(&note.author)
        .bind(stored(note.written_at))
        .bind(&note.text)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn lock_system_account(
        &mut self,
        client_id: &str,
    ) -> Result<crate::model::SystemAccount> {
        sqlx::query("SELECT client_id FROM system_accounts WHERE client_id = $1 FOR UPDATE")
            .bind(client_id)
            .fetch_optional(self.conn())
            .await?
            .ok_or_else(|| Error::NotFound(format!("system account {client_id}")))?;
        self.system_account(client_id).await
    }

    async fn insert_system_account(
        &mut self,
        account: &crate::model::SystemAccount,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO system_accounts (client_id, name, secret_hash, disabled, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (client_id) DO NOTHING",
        )
        .bind(&account.client_id)
        .bind(&account.name)
        .bind(&account.secret_hash)
        .bind(account.disabled)
        .bind(&account.created_by)
        .bind(stored(account.created_at))
        .execute(self.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        for physician in &account.physicians {
            self.set_system_scope(&account.client_id, physician, true)
                .await?;
        }
        Ok(true)
    }

    async fn set_system_account_disabled(&mut self, client_id: &str, disabled: bool) -> Result<()> {
        sqlx::query("UPDATE system_accounts SET disabled = $1 WHERE client_id = $2")
            .bind(disabled)
            .bind(client_id)
            .execute(self.conn())
            .await?;
        if disabled {
            sqlx::query("DELETE FROM system_tokens WHERE client_id = $1")
                .bind(client_id)
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    async fn set_system_account_secret(
        &mut self,
        client_id: &str,
        secret_hash: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE system_accounts SET secret_hash = $1 WHERE client_id = $2")
            .bind(secret_hash)
            .bind(client_id)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM system_tokens WHERE client_id = $1")
            .bind(client_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn set_system_scope(
        &mut self,
        client_id: &str,
        physician: &str,
        in_scope: bool,
    ) -> Result<bool> {
        let done = if in_scope {
            sqlx::query(
                "INSERT INTO system_account_physicians (client_id, physician) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(client_id)
            .bind(physician)
            .execute(self.conn())
            .await?
        } else {
            sqlx::query(
                "DELETE FROM system_account_physicians WHERE client_id = $1 AND physician = $2",
            )
            .bind(client_id)
            .bind(physician)
            .execute(self.conn())
            .await?
        };
        Ok(done.rows_affected() == 1)
    }

    async fn insert_system_token(
        &mut self,
        token_sha256: &str,
        client_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("DELETE FROM system_tokens WHERE expires_at < $1")
            .bind(stored(now))
            .execute(self.conn())
            .await?;
        sqlx::query(
            "INSERT INTO system_tokens (token_sha256, client_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_sha256)
        .bind(client_id)
        .bind(stored(now))
        .bind(stored(expires_at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn lock_site(&mut self, site_id: &str) -> Result<Site> {
        PgStore::lock_site(self.conn(), site_id).await
    }

    async fn latest_recipe(&mut self, recipe_id: &str) -> Result<Option<StoredRecipe>> {
        sqlx::query(
            "SELECT sha256, document FROM recipes WHERE recipe_id = $1 AND retired_at IS NULL AND dry_run_of IS NULL \
             AND (effective_from IS NULL OR effective_from <= $2) ORDER BY version DESC LIMIT 1",
        )
        .bind(recipe_id)
        .bind(stored(Utc::now()))
        .fetch_optional(self.conn())
        .await?
        .as_ref()
        .map(rows::recipe)
        .transpose()
    }

    async fn recipe_sha256(&mut self, recipe_id: &str, version: u32) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT sha256 FROM recipes WHERE recipe_id = $1 AND version = $2")
                .bind(recipe_id)
                .bind(i64::from(version))
                .fetch_optional(self.conn())
                .await?,
        )
    }

    async fn dry_run_copies(&mut self, product: &str) -> Result<u32> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM recipes WHERE dry_run_of = $1")
            .bind(product)
            .fetch_one(self.conn())
            .await?;
        u32::try_from(n).map_err(|_| Error::Corrupt("dry-run count out of range".into()))
    }

    async fn batches_of_site(
        &mut self,
        site_id: &str,
    ) -> Result<Vec<(Uuid, BatchState, Progress)>> {
        sqlx::query(
            "SELECT batch_id, state, progress::text AS progress FROM batches WHERE site_id = $1",
        )
        .bind(site_id)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::batch)
        .collect()
    }

    async fn notifier_cursor(&mut self) -> Result<u64> {
        // One notifier at a time: the others wait here, then read the moved cursor.
        let position: i64 = sqlx::query_scalar(
            "SELECT position FROM notification_cursor WHERE name = 'audit' FOR UPDATE",
        )
        .fetch_one(self.conn())
        .await?;
        u64::try_from(position).map_err(|_| Error::Corrupt("notifier cursor is negative".into()))
    }

    async fn outbox_entry(&mut self, notification_id: Uuid) -> Result<OutboxEntry> {
        PgStore::outbox_entry_in(self.conn(), notification_id).await
    }

    async fn subscription_live(&mut self, subscription_id: Uuid) -> Result<bool> {
        let live: Option<Uuid> = sqlx::query_scalar(
            "SELECT subscription_id FROM notification_subscriptions WHERE subscription_id = $1 AND removed_at IS NULL",
        )
        .bind(subscription_id)
        .fetch_optional(self.conn())
        .await?;
        Ok(live.is_some())
    }

    async fn insert_recipe(
        &mut self,
        recipe: &Recipe,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO recipes (recipe_id, version, title, sha256, document, published_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (recipe_id, version) DO NOTHING",
        )
        .bind(&recipe.id)
        .bind(i64::from(recipe.version))
        .bind(&recipe.title)
        .bind(sha256)
        .bind(recipe.to_canonical_json())
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_dry_run_copy(
        &mut self,
        copy_id: &str,
        recipe: &Recipe,
        sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO recipes (recipe_id, version, title, sha256, document, published_at, dry_run_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(copy_id)
        .bind(i64::from(recipe.version))
        .bind(&recipe.title)
        .bind(sha256)
        .bind(recipe.to_canonical_json())
        .bind(stored(now))
        .bind(&recipe.id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_user(&mut self, user: &User, now: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO users (username, full_name, role, password_hash, disabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&user.username)
        .bind(&user.full_name)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .bind(user.disabled)
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_session(
        &mut self,
        token_sha256: &str,
        username: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(stored(now))
            .execute(self.conn())
            .await?;
        sqlx::query(
            "INSERT INTO sessions (token_sha256, username, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_sha256)
        .bind(username)
        .bind(stored(now))
        .bind(stored(expires_at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn delete_session(&mut self, token_sha256: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("DELETE FROM sessions WHERE token_sha256 = $1 RETURNING username")
                .bind(token_sha256)
                .fetch_optional(self.conn())
                .await?,
        )
    }

    async fn insert_site(
        &mut self,
        site_id: &str,
        name: &str,
        token_sha256: &str,
        token_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO sites (site_id, name, status, token_sha256, token_expires_at, created_at) \
             VALUES ($1, $2, 'pending', $3, $4, $5) ON CONFLICT (site_id) DO NOTHING",
        )
        .bind(site_id)
        .bind(name)
        .bind(token_sha256)
        .bind(stored(token_expires_at))
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enroll_site(
        &mut self,
        site_id: &str,
        token_sha256: &str,
        cert: &IssuedCert,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sites SET token_sha256 = NULL, token_expires_at = NULL, cert_sha256 = $1, \
             cert_not_after = $5, cert_ca_sha256 = $6, \
             pending_cert_sha256 = NULL, pending_cert_not_after = NULL, pending_cert_ca_sha256 = NULL, \
             status = CASE WHEN status = 'pending' THEN 'active' ELSE status END \
             WHERE site_id = $2 AND token_sha256 = $3 AND token_expires_at > $4",
        )
        .bind(&cert.sha256)
        .bind(site_id)
        .bind(token_sha256)
        .bind(stored(now))
        .bind(stored(cert.not_after))
        .bind(&cert.ca_sha256)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_site_status(
        &mut self,
        site_id: &str,
        status: SiteStatus,
        change: &StatusChange,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sites SET status = $1, \
             status_reason = $3, status_changed_by = $4, status_changed_at = $5, \
             token_sha256 = CASE WHEN $1 = 'ceased' THEN NULL ELSE token_sha256 END, \
             token_expires_at = CASE WHEN $1 = 'ceased' THEN NULL ELSE token_expires_at END \
             WHERE site_id = $2",
        )
        .bind(status.as_str())
        .bind(site_id)
        .bind(&change.reason)
        .bind(&change.by)
        .bind(change.at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn set_pending_certificate(&mut self, site_id: &str, cert: &IssuedCert) -> Result<()> {
        sqlx::query(
            "UPDATE sites SET pending_cert_sha256 = $1, pending_cert_not_after = $2, \
             pending_cert_ca_sha256 = $4 WHERE site_id = $3",
        )
        .bind(&cert.sha256)
        .bind(stored(cert.not_after))
        .bind(site_id)
        .bind(&cert.ca_sha256)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn promote_pending_certificate(&mut self, site_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE sites SET cert_sha256 = pending_cert_sha256, cert_not_after = pending_cert_not_after, \
             cert_ca_sha256 = pending_cert_ca_sha256, pending_cert_sha256 = NULL, \
             pending_cert_not_after = NULL, pending_cert_ca_sha256 = NULL WHERE site_id = $1",
        )
        .bind(site_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn ack_commands(&mut self, site_id: &str, seq: u64) -> Result<()> {
        sqlx::query(
            "UPDATE sites SET acked_command_seq = GREATEST(acked_command_seq, $1) WHERE site_id = $2",
        )
        .bind(i64_of(seq)?)
        .bind(site_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn next_coi_serial(&mut self, facility: &str, year: i32) -> Result<i64> {
        // One statement allocates the serial and locks its row until commit, so two
        // hubs never hand out the same one.
        Ok(sqlx::query_scalar(
            "INSERT INTO coi_serials (facility, year, last) VALUES ($1, $2, 1) \
             ON CONFLICT (facility, year) DO UPDATE SET last = coi_serials.last + 1 RETURNING last",
        )
        .bind(facility)
        .bind(year)
        .fetch_one(self.conn())
        .await?)
    }

    async fn insert_order(&mut self, order: &Order) -> Result<()> {
        sqlx::query(
            "INSERT INTO orders (order_id, batch_id, coi, patient_pseudonym, recipe_id, recipe_version, site_id, \
             requested_collection_date, physician, created_at, dry_run) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(order.order_id)
        .bind(order.batch_id)
        .bind(&order.coi)
        .bind(&order.patient_pseudonym)
        .bind(&order.recipe_id)
        .bind(i64::from(order.recipe_version))
        .bind(&order.site_id)
        .bind(&order.requested_collection_date)
        .bind(&order.physician)
        .bind(stored(order.created_at))
        .bind(order.dry_run)
        .execute(self.conn())
        .await?;
        sqlx::query(
            "INSERT INTO batches (batch_id, site_id, state, current_step, progress, decision_recorded, updated_at) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)",
        )
        .bind(order.batch_id)
        .bind(&order.site_id)
        .bind(order.state.as_str())
        .bind(order.current_step.as_deref())
        .bind(json_text(&order.progress)?)
        .bind(order.decision_recorded)
        .bind(stored(order.updated_at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn capacity(&mut self, site_id: &str) -> Result<Option<Capacity>> {
        PgStore::capacity_in(self.conn(), site_id).await
    }

    async fn site_bookings(&mut self, site_id: &str) -> Result<Vec<Booking>> {
        PgStore::site_bookings_in(self.conn(), site_id).await
    }

    async fn order_booking(&mut self, order_id: Uuid) -> Result<Option<(Booking, bool)>> {
        PgStore::order_booking_in(self.conn(), order_id).await
    }

    async fn unbooked_open_orders(&mut self, site_id: &str) -> Result<Vec<(Uuid, String)>> {
        sqlx::query(super::super::schedule::UNBOOKED_OPEN_ORDERS)
            .bind(site_id)
            .fetch_all(self.conn())
            .await?
            .iter()
            .map(|r| Ok((r.try_get("order_id")?, r.try_get("coi")?)))
            .collect()
    }

    async fn set_capacity(
        &mut self,
        site_id: &str,
        document: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO site_capacity (site_id, document, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (site_id) DO UPDATE SET document = excluded.document, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(site_id)
        .bind(document)
        .bind(stored(now))
        .bind(actor)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_booking(
        &mut self,
        order_id: Uuid,
        site_id: &str,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO bookings (order_id, site_id, collection_date, slot, active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, TRUE, $5, $6)",
        )
        .bind(order_id)
        .bind(site_id)
        .bind(plan.collection_date)
        .bind(plan.slot as i32)
        .bind(stored(now))
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        PgStore::insert_steps_in(self.conn(), order_id, plan).await
    }

    async fn move_booking(
        &mut self,
        order_id: Uuid,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE bookings SET collection_date = $1, slot = $2, announced_release = NULL, \
             updated_at = $3 WHERE order_id = $4",
        )
        .bind(plan.collection_date)
        .bind(plan.slot as i32)
        .bind(stored(now))
        .bind(order_id)
        .execute(self.conn())
        .await?;
        sqlx::query("UPDATE orders SET requested_collection_date = $1 WHERE order_id = $2")
            .bind(plan.collection_date.to_string())
            .bind(order_id)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM booking_steps WHERE order_id = $1")
            .bind(order_id)
            .execute(self.conn())
            .await?;
        PgStore::insert_steps_in(self.conn(), order_id, plan).await
    }

    async fn set_expected(
        &mut self,
        order_id: Uuid,
        step_id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE booking_steps SET expected_start = $1, expected_end = $2 \
             WHERE order_id = $3 AND step_id = $4",
        )
        .bind(stored(start))
        .bind(stored(end))
        .bind(order_id)
        .bind(step_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn announce_release(
        &mut self,
        order_id: Uuid,
        expected: DateTime<Utc>,
        replaces: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE bookings SET announced_release = $1, updated_at = $2 \
             WHERE order_id = $3 AND announced_release IS NOT DISTINCT FROM $4",
        )
        .bind(stored(expected))
        .bind(stored(now))
        .bind(order_id)
        .bind(replaces.map(stored))
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_booking(&mut self, order_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        PgStore::release_booking_in(self.conn(), order_id, now).await
    }

    async fn insert_subscription(
        &mut self,
        subscription: &Subscription,
        secret: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO notification_subscriptions (subscription_id, owner, kinds, channel, target, secret, site_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(subscription.subscription_id)
        .bind(&subscription.owner)
        .bind(kinds_text(&subscription.kinds))
        .bind(subscription.channel.name())
        .bind(subscription.channel.target())
        .bind(secret)
        .bind(subscription.site_id.as_deref())
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn end_subscription(
        &mut self,
        subscription_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>> {
        let removed = sqlx::query(
            "UPDATE notification_subscriptions SET removed_at = $1 WHERE subscription_id = $2 AND removed_at IS NULL",
        )
        .bind(stored(now))
        .bind(subscription_id)
        .execute(self.conn())
        .await?;
        if removed.rows_affected() == 0 {
            return Ok(None);
        }
        let dropped = sqlx::query(
            "UPDATE notification_outbox SET state = 'failed', last_error = 'unsubscribed', leased_until = NULL \
             WHERE subscription_id = $1 AND state = 'pending'",
        )
        .bind(subscription_id)
        .execute(self.conn())
        .await?;
        Ok(Some(dropped.rows_affected()))
    }

    async fn queue_notification(
        &mut self,
        notification_id: Uuid,
        subscription: &Subscription,
        happening: &Happening,
        now: DateTime<Utc>,
    ) -> Result<bool> {
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
        .bind(payload(notification_id, happening))
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn deliver_to_inbox(
        &mut self,
        inbox_id: Uuid,
        recipient: &str,
        happening: &Happening,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let order = happening.order.as_ref();
        let inserted = sqlx::query(
            "INSERT INTO inbox (inbox_id, recipient, source, kind, site_id, order_id, batch_id, coi, summary, happened_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (recipient, source, kind) DO NOTHING",
        )
        .bind(inbox_id)
        .bind(recipient)
        .bind(&happening.source)
        .bind(happening.kind.as_str())
        .bind(happening.site_id.as_deref())
        .bind(order.map(|o| o.order_id))
        .bind(order.map(|o| o.batch_id))
        .bind(order.map(|o| o.coi.as_str()))
        .bind(&happening.summary)
        .bind(stored(happening.at))
        .bind(stored(now))
        .execute(self.conn())
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn set_notifier_cursor(&mut self, position: u64) -> Result<()> {
        sqlx::query("UPDATE notification_cursor SET position = $1 WHERE name = 'audit'")
            .bind(i64_of(position)?)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn mark_links_down(
        &mut self,
        silent_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>> {
        // A row per episode: of two processes checking at once, one inserts it (and
        // audits), the other's insert does nothing.
        Ok(sqlx::query_as(
            "INSERT INTO site_link_down (site_id, last_contact_at, detected_at) \
             SELECT s.site_id, s.last_contact_at, $2 FROM sites s \
             WHERE s.status = 'active' AND s.site_id <> 'dry-run' AND s.last_contact_at IS NOT NULL AND s.last_contact_at < $1 \
             ON CONFLICT (site_id) DO NOTHING RETURNING site_id, last_contact_at",
        )
        .bind(stored(silent_since))
        .bind(stored(now))
        .fetch_all(self.conn())
        .await?)
    }

    async fn mark_links_restored(&mut self) -> Result<Vec<(String, Option<DateTime<Utc>>)>> {
        Ok(sqlx::query_as(
            "DELETE FROM site_link_down d USING sites s \
             WHERE s.site_id = d.site_id AND s.last_contact_at > d.last_contact_at \
             RETURNING d.site_id, s.last_contact_at",
        )
        .fetch_all(self.conn())
        .await?)
    }

    async fn requeue_notification(
        &mut self,
        notification_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE notification_outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, leased_until = NULL \
             WHERE notification_id = $2",
        )
        .bind(stored(now))
        .bind(notification_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn save_projection(
        &mut self,
        batch_id: Uuid,
        p: &Projection,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE batches SET state = $1, current_step = $2, progress = $3::jsonb, \
             decision_recorded = $4, updated_at = $5 WHERE batch_id = $6",
        )
        .bind(p.state.as_str())
        .bind(p.current_step.as_deref())
        .bind(json_text(&p.progress)?)
        .bind(p.decision_recorded)
        .bind(stored(now))
        .bind(batch_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn set_progress(
        &mut self,
        batch_id: Uuid,
        progress: &Progress,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("UPDATE batches SET progress = $1::jsonb, updated_at = $2 WHERE batch_id = $3")
            .bind(json_text(progress)?)
            .bind(stored(now))
            .bind(batch_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn insert_signature(&mut self, signature: &Signature) -> Result<()> {
        sqlx::query(
            "INSERT INTO signatures (signature_id, batch_id, signer, signer_name, meaning, record_sha256, reason, signed_at, justifications, outstanding_tests) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(signature.signature_id)
        .bind(signature.batch_id)
        .bind(&signature.signer)
        .bind(&signature.signer_name)
        .bind(signature.meaning.as_str())
        .bind(&signature.record_sha256)
        .bind(&signature.reason)
        .bind(stored(signature.signed_at))
        .bind(json_text(&signature.justifications)?)
        .bind(json_text(&signature.outstanding_tests)?)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_change_review(&mut self, review: &crate::model::ChangeReview) -> Result<()> {
        sqlx::query(
            "INSERT INTO change_reviews (review_id, batch_id, signer, signer_name, through_seq, record_sha256, comment, signed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(review.review_id)
        .bind(review.batch_id)
        .bind(&review.signer)
        .bind(&review.signer_name)
        .bind(i64_of(review.through_seq)?)
        .bind(&review.record_sha256)
        .bind(&review.comment)
        .bind(stored(review.signed_at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn set_site_protocol(&mut self, site_id: &str, version: &str) -> Result<()> {
        sqlx::query(
            "UPDATE sites SET protocol_version = $1 WHERE site_id = $2 AND protocol_version <> $1",
        )
        .bind(version)
        .bind(site_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_follow_up_closure(
        &mut self,
        closure: &crate::model::FollowUpClosure,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO follow_up_closures (closure_id, batch_id, site_seq, signer, signer_name, outcome, signed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(closure.closure_id)
        .bind(closure.batch_id)
        .bind(i64_of(closure.site_seq)?)
        .bind(&closure.signer)
        .bind(&closure.signer_name)
        .bind(&closure.outcome)
        .bind(stored(closure.signed_at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn mark_session_signed(&mut self, token_sha256: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET signed_at = $1 WHERE token_sha256 = $2 AND signed_at IS NULL",
        )
        .bind(stored(now))
        .bind(token_sha256)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn set_signature_acknowledged(
        &mut self,
        username: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("UPDATE users SET signature_acknowledged_at = $1 WHERE username = $2")
            .bind(stored(at))
            .bind(username)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn bump_sign_in_failures(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "INSERT INTO sign_in_failures (username, source, window_start, failures) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (username, source, window_start) DO UPDATE SET failures = sign_in_failures.failures + 1 \
             RETURNING failures",
        )
        .bind(username)
        .bind(source)
        .bind(stored(window_start))
        .fetch_one(self.conn())
        .await?;
        Ok(n as u64)
    }

    async fn set_sign_in_lock_audited(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sign_in_failures SET lock_audited = TRUE WHERE username = $1 AND source = $2 AND window_start = $3",
        )
        .bind(username)
        .bind(source)
        .bind(stored(window_start))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn unreported_sign_in_failures(
        &mut self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, String, DateTime<Utc>, u64)>> {
        let rows: Vec<(String, String, DateTime<Utc>, i64)> = sqlx::query_as(
            "SELECT username, source, window_start, failures FROM sign_in_failures \
             WHERE NOT reported AND window_start < $1 ORDER BY window_start, username, source LIMIT $2",
        )
        .bind(stored(before))
        .bind(i64::from(limit))
        .fetch_all(self.conn())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(username, source, start, n)| (username, source, start, n as u64))
            .collect())
    }

    async fn set_sign_in_failures_reported(
        &mut self,
        username: &str,
        source: &str,
        window_start: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sign_in_failures SET reported = TRUE WHERE username = $1 AND source = $2 AND window_start = $3",
        )
        .bind(username)
        .bind(source)
        .bind(stored(window_start))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn forget_sign_in_failures(&mut self, before: DateTime<Utc>) -> Result<()> {
        sqlx::query("DELETE FROM sign_in_failures WHERE reported AND window_start < $1")
            .bind(stored(before))
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn set_user_password(&mut self, username: &str, password_hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE username = $2")
            .bind(password_hash)
            .bind(username)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn set_user_role(&mut self, username: &str, role: Role) -> Result<()> {
        sqlx::query("UPDATE users SET role = $1 WHERE username = $2")
            .bind(role.as_str())
            .bind(username)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn password_reset_of(
        &mut self,
        username: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>> {
        let row: Option<(Option<String>, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT reset_sha256, reset_expires_at FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(self.conn())
                .await?;
        Ok(match row {
            Some((Some(sha), Some(expires))) => Some((sha, expires)),
            _ => None,
        })
    }

    async fn set_password_reset(
        &mut self,
        username: &str,
        reset: Option<(&str, DateTime<Utc>)>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE users SET reset_sha256 = $1, reset_expires_at = $2 WHERE username = $3",
        )
        .bind(reset.map(|(sha, _)| sha.to_owned()))
        .bind(reset.map(|(_, at)| stored(at)))
        .bind(username)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn delete_sessions_of(&mut self, username: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE username = $1")
            .bind(username)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn set_audit_witness(
        &mut self,
        site_id: &str,
        position: u64,
        sha256: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_witnesses (site_id, position, sha256, reported_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (site_id) DO UPDATE SET position = excluded.position, sha256 = excluded.sha256, \
             reported_at = excluded.reported_at",
        )
        .bind(site_id)
        .bind(i64_of(position)?)
        .bind(sha256)
        .bind(stored(at))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn forget_audit_witness(&mut self, site_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM audit_witnesses WHERE site_id = $1")
            .bind(site_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn insert_audit_finding(&mut self, finding: &crate::audit::Finding) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO audit_findings (site_id, position, sha256, found_at, detail) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&finding.site_id)
        .bind(i64_of(finding.position)?)
        .bind(&finding.sha256)
        .bind(stored(finding.found_at))
        .bind(&finding.detail)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn acknowledge_audit_findings(
        &mut self,
        by: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE audit_findings SET acknowledged_by = $1, acknowledged_at = $2, reason = $3 \
             WHERE acknowledged_at IS NULL",
        )
        .bind(by)
        .bind(stored(at))
        .bind(reason)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn count_active_admins(&mut self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND NOT disabled")
                .fetch_one(self.conn())
                .await?;
        Ok(n as u64)
    }

    async fn pending_role_grants(&mut self, username: Option<&str>) -> Result<Vec<RoleGrant>> {
        sqlx::query(
            "SELECT * FROM role_grants WHERE decided_at IS NULL AND ($1::text IS NULL OR username = $1) ORDER BY requested_at",
        )
        .bind(username)
        .fetch_all(self.conn())
        .await?
        .iter()
        .map(rows::role_grant)
        .collect()
    }

    async fn insert_role_grant(&mut self, grant: &RoleGrant) -> Result<()> {
        sqlx::query(
            "INSERT INTO role_grants (grant_id, username, role, requested_by, requested_at, reason) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(grant.grant_id)
        .bind(&grant.username)
        .bind(grant.role.as_str())
        .bind(&grant.requested_by)
        .bind(stored(grant.requested_at))
        .bind(&grant.reason)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn decide_role_grant(
        &mut self,
        grant_id: Uuid,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("UPDATE role_grants SET decided_by = $1, decided_at = $2 WHERE grant_id = $3")
            .bind(by)
            .bind(stored(at))
            .bind(grant_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn insert_command(&mut self, site_id: &str, command: &HubCommand) -> Result<()> {
        sqlx::query(
            "INSERT INTO hub_commands (site_id, seq, command_id, batch_id, kind, issued_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(site_id)
        .bind(i64_of(command.seq)?)
        .bind(command.command_id)
        .bind(command.batch_id)
        .bind(command.kind.name())
        .bind(stored(command.issued_at))
        .bind(command.canonical_json())
        .execute(self.conn())
        .await?;
        sqlx::query("UPDATE sites SET last_command_seq = $1 WHERE site_id = $2")
            .bind(i64_of(command.seq)?)
            .bind(site_id)
            .execute(self.conn())
            .await?;
        // Wakes the replica holding the site's link, whichever it is, at commit.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(COMMANDS_CHANNEL)
            .bind(site_id)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn audit(&mut self, entry: NewEntry, now: DateTime<Utc>) -> Result<()> {
        // Appended to the chain at commit (see `PgTx::commit`).
        PgTx::audit(self, entry, now);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        PgTx::commit(*self).await
    }

    async fn lock_user(&mut self, username: &str) -> Result<User> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1 FOR UPDATE")
            .bind(username)
            .fetch_optional(self.conn())
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {username:?}")))?;
        rows::user(&row)
    }

    async fn set_user_disabled(&mut self, username: &str, disabled: bool) -> Result<()> {
        sqlx::query("UPDATE users SET disabled = $1 WHERE username = $2")
            .bind(disabled)
            .bind(username)
            .execute(self.conn())
            .await?;
        if disabled {
            sqlx::query("DELETE FROM sessions WHERE username = $1")
                .bind(username)
                .execute(self.conn())
                .await?;
        }
        Ok(())
    }

    async fn sites_of_user(&mut self, username: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT site_id FROM user_sites WHERE username = $1 ORDER BY site_id COLLATE \"C\"",
        )
        .bind(username)
        .fetch_all(self.conn())
        .await?)
    }

    async fn set_user_site(
        &mut self,
        username: &str,
        site_id: &str,
        assigned: bool,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = if assigned {
            sqlx::query("INSERT INTO user_sites (username, site_id, assigned_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(username)
                .bind(site_id)
                .bind(now)
                .execute(self.conn())
                .await?
        } else {
            sqlx::query("DELETE FROM user_sites WHERE username = $1 AND site_id = $2")
                .bind(username)
                .bind(site_id)
                .execute(self.conn())
                .await?
        };
        Ok(done.rows_affected() == 1)
    }

    async fn badge_of(&mut self, username: &str) -> Result<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT badge_id, pin_hash FROM badges WHERE username = $1")
                .bind(username)
                .fetch_optional(self.conn())
                .await?,
        )
    }

    async fn set_badge(
        &mut self,
        username: &str,
        badge_id: &str,
        pin_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let taken: Option<String> =
            sqlx::query_scalar("SELECT username FROM badges WHERE badge_id = $1")
                .bind(badge_id)
                .fetch_optional(self.conn())
                .await?;
        if taken.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO badges (username, badge_id, pin_hash, issued_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (username) DO UPDATE SET badge_id = excluded.badge_id, \
             pin_hash = excluded.pin_hash, issued_at = excluded.issued_at",
        )
        .bind(username)
        .bind(badge_id)
        .bind(pin_hash)
        .bind(now)
        .execute(self.conn())
        .await?;
        Ok(true)
    }

    async fn order_of_request(
        &mut self,
        physician: &str,
        request_id: Uuid,
    ) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT order_id FROM order_requests WHERE physician = $1 AND request_id = $2",
        )
        .bind(physician)
        .bind(request_id)
        .fetch_optional(self.conn())
        .await?)
    }

    async fn insert_order_request(
        &mut self,
        physician: &str,
        request_id: Uuid,
        order_id: Uuid,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO order_requests (physician, request_id, order_id) VALUES ($1, $2, $3)",
        )
        .bind(physician)
        .bind(request_id)
        .bind(order_id)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
