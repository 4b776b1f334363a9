//! Process analytics, whichever door: the products and attributes charted, one
//! chart (the network's and each site's control chart, capability, and each site
//! against the rest), its data as CSV, and QA choosing a product's baseline.
//!
//! Every chart is built from the measures the store keeps at ingest, one index
//! range per chart, never from the batches' events.

use super::{field, require_role, sentence_reason, Error};
use crate::app::Hub;
use crate::model::analytics::chart::{self, Chart};
use crate::model::analytics::golden::{self, Panel, Point};
use crate::model::analytics::measure::{self, Baseline, Statistic};
use crate::model::{Order, Role, User};
use chrono::{DateTime, NaiveDate, Utc};

/// Who reads the charts: QA, and administrators who run the network.
const READERS: [Role; 2] = [Role::Qa, Role::Admin];
/// Who chooses a baseline.
const QUALITY: [Role; 1] = [Role::Qa];

/// One charted attribute of a product.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub attribute: String,
    pub unit: String,
    /// Each statistic charted, with its label.
    pub statistics: Vec<(Statistic, String)>,
}

/// A step's golden-batch panels, one per parameter the recipe names.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenStep {
    pub step_id: String,
    pub name: String,
    pub panels: Vec<Panel>,
}

/// Which steps' golden batch to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steps {
    /// Every step the batch has sampled (the batch record, the API).
    Sampled,
    /// The last step the batch has sampled (a live page: one step's bands read).
    Latest,
    /// Every step of the recipe with parameters, sampled or not (for the site,
    /// which draws its own samples, perhaps not yet sent, over the bands).
    Recipe,
}

/// May `user` read golden batches? As the charts: QA and administrators (process
/// detail, like deviations, is QA's work; a physician hears of exceptions).
pub fn may_read_golden(user: &User) -> bool {
    READERS.contains(&user.role)
}

/// The golden batch of every step the batch of order `order_id` has sampled, with
/// the batch over it; for QA and administrators.
pub async fn golden_batch(
    hub: &Hub,
    user: &User,
    order_id: uuid::Uuid,
) -> Result<(Order, Vec<GoldenStep>), Error> {
    require_role(user, &READERS)?;
    let order = super::visible_order(hub, user, order_id).await?;
    let steps = golden_of(hub, &order, Steps::Sampled).await?;
    Ok((order, steps))
}

/// The golden batch of `order`'s batch (none for a dry run): for the steps
/// `which` says, each parameter's band over the product's released batches in
/// bins of the batch's own recipe version, with the batch's points as stored.
pub async fn golden_of(hub: &Hub, order: &Order, which: Steps) -> Result<Vec<GoldenStep>, Error> {
    if order.dry_run {
        return Ok(Vec::new());
    }
    let recipe = hub
        .store
        .recipe(&order.recipe_id, order.recipe_version)
        .await?;
    let trajectory = hub.store.batch_trajectory(order.batch_id).await?;
    let sampled = |step: &carrel_proto::recipe::Step| {
        let prefix = format!("{}{}/", measure::STEP, step.id);
        trajectory.iter().any(|(a, _, _)| a.starts_with(&prefix))
    };
    let wanted: Vec<&carrel_proto::recipe::Step> = match which {
        Steps::Recipe => recipe
            .recipe
            .steps
            .iter()
            .filter(|s| !s.parameters.is_empty())
            .collect(),
        Steps::Sampled => recipe.recipe.steps.iter().filter(|s| sampled(s)).collect(),
        Steps::Latest => recipe
            .recipe
            .steps
            .iter()
            .rev()
            .find(|s| sampled(s))
            .into_iter()
            .collect(),
    };
    let mut steps = Vec::new();
    for step in wanted {
        let prefix = format!("{}{}/", measure::STEP, step.id);
        let bin_hours = golden::bin_hours(step);
        let mut panels = Vec::new();
        for parameter in &step.parameters {
            let attribute = format!("{prefix}{}", parameter.name);
            let points: Vec<Point> = trajectory
                .iter()
                .filter(|(a, h, _)| *a == attribute && *h == bin_hours)
                .map(|(_, _, p)| *p)
                .collect();
            let released = hub
                .store
                .released_trajectories(&order.recipe_id, &attribute, bin_hours)
                .await?;
            panels.push(golden::band(step, parameter, released).with_points(points));
        }
        steps.push(GoldenStep {
            step_id: step.id.clone(),
            name: step.name.clone(),
            panels,
        });
    }
    Ok(steps)
}

/// The products whose batches have measures.
pub async fn products(hub: &Hub, user: &User) -> Result<Vec<String>, Error> {
    require_role(user, &READERS)?;
    Ok(hub.store.measured_products().await?)
}

/// A product's charted attributes (labels from its version in force), and the
/// baseline in force.
pub async fn attributes(
    hub: &Hub,
    user: &User,
    product_id: &str,
) -> Result<(Vec<Attribute>, Option<Baseline>), Error> {
    require_role(user, &READERS)?;
    let product_id = product(product_id)?;
    let recipe = recipe_of(hub, product_id).await?;
    let attributes = hub
        .store
        .measure_attributes(product_id)
        .await?
        .into_iter()
        .map(|(attribute, unit)| Attribute {
            statistics: chart::statistics_of(&attribute)
                .iter()
                .map(|s| (*s, chart::label(&recipe.recipe, &attribute, *s)))
                .collect(),
            attribute,
            unit,
        })
        .collect();
    Ok((attributes, hub.store.analytics_baseline(product_id).await?))
}

/// The chart of `statistic` (its name, such as `mean`) of `attribute` of a product.
pub async fn chart(
    hub: &Hub,
    user: &User,
    product_id: &str,
    attribute: &str,
    statistic: &str,
) -> Result<Chart, Error> {
    require_role(user, &READERS)?;
    let product_id = product(product_id)?;
    let attribute = attribute.trim();
    let statistic = parse_statistic(attribute, statistic)?;
    let recipe = recipe_of(hub, product_id).await?;
    let measures = hub.store.batch_measures(product_id, attribute).await?;
    if measures.is_empty() {
        return Err(field(
            "attribute",
            format!("no batch of {product_id} has a measure of {attribute:?}"),
        ));
    }
    let baseline = hub.store.analytics_baseline(product_id).await?;
    Ok(chart::chart(
        product_id,
        attribute,
        statistic,
        chart::label(&recipe.recipe, attribute, statistic),
        &measures,
        baseline.as_ref(),
        chart::spec(&recipe.recipe, attribute, statistic),
    ))
}

/// What QA chooses as a baseline: the batches with results whose orders were
/// placed from `from` to `to` (dates, both days included, UTC), at most the first
/// `first` of them (0: all).
pub struct BaselineRequest<'a> {
    pub product_id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub first: u32,
    pub reason: &'a str,
}

/// Chooses a product's baseline, with QA's reason; audited.
pub async fn choose_baseline(
    hub: &Hub,
    user: &User,
    request: &BaselineRequest<'_>,
) -> Result<Baseline, Error> {
    let BaselineRequest {
        product_id,
        from,
        to,
        first,
        reason,
    } = *request;
    require_role(user, &QUALITY)?;
    let product_id = product(product_id)?;
    let from_day = date("from", from)?;
    let to_day = date("to", to)?;
    if to_day < from_day {
        return Err(field(
            "to",
            format!("the window ends ({to_day}) before it starts ({from_day})"),
        ));
    }
    let reason = sentence_reason(reason, "choose this baseline")?;
    let start = |d: NaiveDate| -> DateTime<Utc> { d.and_time(chrono::NaiveTime::MIN).and_utc() };
    Ok(hub
        .store
        .choose_baseline(&crate::store::analytics::BaselineChoice {
            product_id,
            from: start(from_day),
            to: start(to_day.succ_opt().unwrap_or(to_day)),
            first: (first > 0).then_some(first as usize),
            reason: &reason,
            by: &user.username,
        })
        .await?)
}

fn product(product_id: &str) -> Result<&str, Error> {
    let product_id = product_id.trim();
    if product_id.is_empty() {
        return Err(field("product", "name the product (such as cd19-car-t)"));
    }
    Ok(product_id)
}

async fn recipe_of(hub: &Hub, product_id: &str) -> Result<crate::model::StoredRecipe, Error> {
    match hub.store.latest_recipe(product_id).await {
        Err(crate::store::Error::NotFound(_)) => Err(field(
            "product",
            format!("product {product_id:?} is not known to the hub"),
        )),
        other => Ok(other?),
    }
}

fn parse_statistic(attribute: &str, statistic: &str) -> Result<Statistic, Error> {
    let allowed = chart::statistics_of(attribute);
    let statistic = statistic.trim();
    if statistic.is_empty() {
        return Ok(allowed[0]);
    }
    Statistic::parse(statistic)
        .filter(|s| allowed.contains(s))
        .ok_or_else(|| {
            let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            field(
                "statistic",
                format!(
                    "{statistic:?} is not charted for {attribute}; choose {}",
                    names.join(", ")
                ),
            )
        })
}

/// A day of a baseline's window: a date from 1970 to 9998 (a wider year is a
/// slip, and would not compare as a time on every backend).
fn date(name: &'static str, text: &str) -> Result<NaiveDate, Error> {
    let day = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| field(name, format!("{text:?} is not a date (YYYY-MM-DD)")))?;
    if !(1970..=9998).contains(&chrono::Datelike::year(&day)) {
        return Err(field(
            name,
            format!("{day} is out of range: give a date from 1970 to 9998"),
        ));
    }
    Ok(day)
}

/// The chart's data, one row per batch, as CSV: the network's and the batch's
/// site's limits and the rules signalled at the batch on each.
pub fn csv(chart: &Chart) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "product,attribute,statistic,unit,batch_id,site_id,placed_at,value,in_baseline,\
         network_center,network_lcl,network_ucl,network_rules,site_center,site_lcl,site_ucl,site_limits_of_network,site_rules\n",
    );
    let limits = |l: Option<crate::model::analytics::spc::Limits>| {
        l.map_or((String::new(), String::new(), String::new()), |l| {
            (
                format!("{}", l.center),
                format!("{}", l.lcl()),
                format!("{}", l.ucl()),
            )
        })
    };
    let rules = |series: &chart::Series, index: usize| {
        series
            .signals
            .iter()
            .filter(|s| s.index == index)
            .map(|s| s.rule.number().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (nc, nl, nu) = limits(chart.network.limits);
    for (i, p) in chart.network.points.iter().enumerate() {
        let site = chart
            .sites
            .iter()
            .find(|s| s.site_id.as_deref() == Some(p.site_id.as_str()));
        let (sc, sl, su, of_network, site_rules) = match site {
            Some(s) => {
                let at = s
                    .points
                    .iter()
                    .position(|q| q.batch_id == p.batch_id)
                    .unwrap_or(usize::MAX);
                let (c, l, u) = limits(s.limits);
                (c, l, u, s.limits_of_network.to_string(), rules(s, at))
            }
            None => Default::default(),
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{nc},{nl},{nu},{},{sc},{sl},{su},{of_network},{site_rules}",
            csv_field(&chart.product_id),
            csv_field(&chart.attribute),
            chart.statistic.as_str(),
            csv_field(&chart.unit),
            p.batch_id,
            csv_field(&p.site_id),
            p.batch_at.format("%Y-%m-%dT%H:%M:%SZ"),
            p.value,
            p.in_baseline,
            rules(&chart.network, i),
        );
    }
    out
}

/// A text field of the CSV: quoted when it holds a comma, a quote or a line
/// break, and never read as a formula by a spreadsheet (a leading `=`, `+`, `-`,
/// `@` or tab gets a `'` before it). The texts come from sites.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Looks for new trend signals every `[analytics] trend_interval_secs`, when this
/// hub stored new site records or a baseline changed since it last looked: every
/// site's chart of every QC result of every product, against the baseline in force
/// (built from the measures, not the events). What it finds is kept once, whichever
/// replica finds it first ([`crate::store::Store::record_trend_signals`]).
pub async fn run_trend_watch(hub: std::sync::Arc<Hub>) {
    let rules = match hub.config.analytics.rules() {
        Ok(rules) => rules,
        Err(why) => {
            tracing::error!(%why, "no trend signals: the configuration's rules are not valid");
            return;
        }
    };
    let every = std::time::Duration::from_secs(u64::from(hub.config.analytics.trend_interval_secs));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<(u64, Vec<Option<DateTime<Utc>>>)> = None;
    // The signals this process has already handed to the store.
    let mut kept = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match trend_pass(&hub, &rules, &mut seen, &mut kept).await {
            Ok(0) => {}
            Ok(new) => tracing::info!(new, "trend signals found"),
            Err(e) => {
                tracing::warn!(error = %e, "looking for trend signals failed; trying again at the next interval")
            }
        }
    }
}

/// One look for trend signals, unless nothing changed since `seen`.
async fn trend_pass(
    hub: &Hub,
    rules: &[crate::model::analytics::spc::Rule],
    seen: &mut Option<(u64, Vec<Option<DateTime<Utc>>>)>,
    kept: &mut std::collections::HashSet<(uuid::Uuid, String, u8)>,
) -> Result<usize, crate::store::Error> {
    let events = hub.store.ingest_counts().events;
    let products = hub.store.measured_products().await?;
    let mut baselines = Vec::new();
    for product in &products {
        baselines.push(
            hub.store
                .analytics_baseline(product)
                .await?
                .map(|b| b.chosen_at),
        );
    }
    let now = (events, baselines);
    if seen.as_ref() == Some(&now) {
        return Ok(0);
    }
    let mut signals = Vec::new();
    for product in &products {
        let recipe = match hub.store.latest_recipe(product).await {
            Ok(r) => r,
            Err(crate::store::Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let baseline = hub.store.analytics_baseline(product).await?;
        for (attribute, _) in hub.store.measure_attributes(product).await? {
            if !attribute.starts_with(crate::model::analytics::measure::QC) {
                continue;
            }
            let statistic = Statistic::Value;
            let measures = hub.store.batch_measures(product, &attribute).await?;
            let c = chart::chart(
                product,
                &attribute,
                statistic,
                chart::label(&recipe.recipe, &attribute, statistic),
                &measures,
                baseline.as_ref(),
                None,
            );
            signals.extend(
                crate::model::analytics::trend::of_chart(&c, rules)
                    .into_iter()
                    .filter(|s| !kept.contains(&(s.batch_id, s.attribute.clone(), s.rule))),
            );
        }
    }
    let new = hub.store.record_trend_signals(&signals).await?;
    kept.extend(
        signals
            .into_iter()
            .map(|s| (s.batch_id, s.attribute, s.rule)),
    );
    *seen = Some(now);
    Ok(new)
}
