//! `--sql-profile`: where the hub's database time goes, from the timings sqlx logs
//! for every statement (`sqlx::query` events at DEBUG, with `elapsed_secs`).
//!
//! sqlx runs each SQLite connection on its own thread and logs there, so statements
//! are grouped by thread; a thread belongs to the hub when it ran statements on the
//! hub's tables, to a site when it ran statements on the agent's. COMMIT (and with it
//! the fsync) is not a logged statement: the rest of an ingest transaction's time is
//! commit, lock waits and hand-offs between the async tasks and the SQLite threads.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    count: u64,
    secs: f64,
}

type PerThread = HashMap<ThreadId, HashMap<String, Tally>>;

#[derive(Clone, Default)]
pub struct SqlProfile {
    inner: Arc<Mutex<PerThread>>,
}

#[derive(Default)]
struct Fields {
    statement: Option<String>,
    summary: Option<String>,
    elapsed_secs: Option<f64>,
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = Some(value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "db.statement" if !value.trim().is_empty() => self.statement = Some(value.to_owned()),
            "summary" => self.summary = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn Debug) {}
}

/// A statement's text, short: whitespace folded, at most 90 characters.
fn key(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    folded.chars().take(90).collect()
}

impl<S: Subscriber> Layer<S> for SqlProfile {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let (Some(text), Some(secs)) = (fields.statement.or(fields.summary), fields.elapsed_secs)
        else {
            return;
        };
        let thread = std::thread::current().id();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tally = inner
            .entry(thread)
            .or_default()
            .entry(key(&text))
            .or_default();
        tally.count += 1;
        tally.secs += secs;
    }
}

fn is_hub_statement(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "site_events",
        "audit_log",
        "from sites",
        "update sites",
        "qc_results",
        "orders o",
        "hub_commands",
    ]
    .iter()
    .any(|needle| t.contains(needle))
}

impl SqlProfile {
    pub fn reset(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The hub's statements since the last reset, slowest total first.
    pub fn hub_report(&self, events: u64, transactions: u64) -> Value {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut totals: HashMap<String, Tally> = HashMap::new();
        for statements in inner.values() {
            if !statements.keys().any(|k| is_hub_statement(k)) {
                continue;
            }
            for (text, tally) in statements {
                let total = totals.entry(text.clone()).or_default();
                total.count += tally.count;
                total.secs += tally.secs;
            }
        }
        let mut rows: Vec<(String, Tally)> = totals.into_iter().collect();
        rows.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs));
        let total_secs: f64 = rows.iter().map(|(_, t)| t.secs).sum();
        let per_event = |secs: f64| {
            if events > 0 {
                secs * 1e6 / events as f64
            } else {
                f64::NAN
            }
        };
        json!({
            "events": events,
            "transactions": transactions,
            "statement_secs_total": total_secs,
            "statement_us_per_event": per_event(total_secs),
            "statements": rows.iter().take(15).map(|(text, t)| json!({
                "statement": text,
                "count": t.count,
                "secs": t.secs,
                "us_per_event": per_event(t.secs),
                "us_each": t.secs * 1e6 / t.count.max(1) as f64,
            })).collect::<Vec<_>>(),
        })
    }
}
