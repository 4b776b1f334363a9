//! `carrel-hub analytics`: process analytics through the API: the products and
//! attributes charted, one control chart (the network's and each site's, with
//! signals, capability and each site against the rest), its data as CSV, and QA
//! choosing a product's baseline.

use super::client::{authed, ClientArgs};
use super::output::time_of as time;
use carrel_proto::pb;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum AnalyticsCommand {
    /// The products whose batches have results to chart.
    Products {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A product's charted attributes and statistics, and its baseline.
    Attributes {
        product: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One control chart: limits, signals by site, capability and comparability.
    Chart {
        product: String,
        /// As `attributes` lists it, such as qc/viability or step/expansion/temperature.
        attribute: String,
        /// value, mean, min, max or time_out_of_range (default: the attribute's first).
        #[arg(long, default_value = "")]
        statistic: String,
        /// Print the chart's data as CSV, one row per batch.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Choose a product's baseline (QA): the batches with results whose orders were
    /// placed from FROM to TO (both days included, UTC), or the first N of them.
    /// Audited.
    Baseline {
        product: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// At most the first N of those batches.
        #[arg(long, default_value_t = 0)]
        first: u32,
        /// Why these batches (goes into the audit trail).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// An order's batch over the golden batch of each step it has sampled: the
    /// band of each process parameter and where the batch left it.
    Golden {
        order_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn client(
    channel: super::client::Authed,
) -> pb::analytics_service_client::AnalyticsServiceClient<super::client::Authed> {
    pb::analytics_service_client::AnalyticsServiceClient::new(channel)
}

fn baseline_json(b: &pb::AnalyticsBaseline) -> serde_json::Value {
    serde_json::json!({
        "product_id": b.product_id,
        "chosen_at": time(&b.chosen_at).map(|t| t.to_rfc3339()),
        "chosen_by": b.chosen_by,
        "reason": b.reason,
        "batch_ids": b.batch_ids,
    })
}

fn baseline_line(b: &Option<pb::AnalyticsBaseline>) -> String {
    match b {
        None => {
            "no baseline chosen: limits are provisional, from each chart's first 20 batches".into()
        }
        Some(b) => format!(
            "baseline of {} batches chosen by {} on {}: {}",
            b.batch_ids.len(),
            b.chosen_by,
            time(&b.chosen_at)
                .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_default(),
            b.reason
        ),
    }
}

fn series_json(s: &pb::ChartSeries) -> serde_json::Value {
    serde_json::json!({
        "site_id": s.site_id,
        "batches": s.points.len(),
        "limits": s.limits.as_ref().map(|l| serde_json::json!({
            "center": l.center, "lcl": l.lcl, "ucl": l.ucl, "mr_ucl": l.mr_ucl,
        })),
        "limits_of_network": s.limits_of_network,
        "signals": s.signals.iter().map(|g| serde_json::json!({
            "batch_id": g.batch_id, "site_id": g.site_id, "rule": g.rule, "words": g.words,
        })).collect::<Vec<_>>(),
        "capability": s.capability.as_ref().map(|c| serde_json::json!({
            "n": c.n, "mean": c.mean, "cpk": c.cpk, "cpk_low": c.cpk_low, "cpk_high": c.cpk_high,
            "ppk": c.ppk, "ppk_low": c.ppk_low, "ppk_high": c.ppk_high,
        })),
    })
}

fn chart_json(c: &pb::Chart) -> serde_json::Value {
    serde_json::json!({
        "product_id": c.product_id,
        "attribute": c.attribute,
        "statistic": c.statistic,
        "label": c.label,
        "unit": c.unit,
        "spec_lower": c.has_spec_lower.then_some(c.spec_lower),
        "spec_upper": c.has_spec_upper.then_some(c.spec_upper),
        "baseline": c.baseline.as_ref().map(baseline_json),
        "network": c.network.as_ref().map(series_json),
        "sites": c.sites.iter().map(series_json).collect::<Vec<_>>(),
        "comparisons": c.comparisons.iter().map(|k| serde_json::json!({
            "site_id": k.site_id, "computed": k.computed, "n_site": k.n_site, "n_rest": k.n_rest,
            "difference": k.difference, "low": k.low, "high": k.high, "test": k.test, "p": k.p,
        })).collect::<Vec<_>>(),
    })
}

fn series_line(name: &str, s: &pb::ChartSeries) -> String {
    let limits = match &s.limits {
        Some(l) => format!(
            "centre {:.4} limits {:.4}..{:.4}{}",
            l.center,
            l.lcl,
            l.ucl,
            if s.limits_of_network {
                " (the network's)"
            } else {
                ""
            }
        ),
        None => "no limits".into(),
    };
    let capability = match &s.capability {
        Some(c) => format!(
            "; Cpk {:.2} ({:.2}..{:.2}), Ppk {:.2}",
            c.cpk, c.cpk_low, c.cpk_high, c.ppk
        ),
        None => String::new(),
    };
    format!(
        "{name:<14} {:>5} batches, {limits}{capability}; {} signal(s)",
        s.points.len(),
        s.signals.len()
    )
}

fn print_chart(c: &pb::Chart) {
    println!(
        "{} of {} ({}{})",
        c.label,
        c.product_id,
        c.attribute,
        if c.unit.is_empty() {
            String::new()
        } else {
            format!(", {}", c.unit)
        }
    );
    let spec = match (c.has_spec_lower, c.has_spec_upper) {
        (true, true) => format!("specification {}..{}", c.spec_lower, c.spec_upper),
        (true, false) => format!("specification at least {}", c.spec_lower),
        (false, true) => format!("specification at most {}", c.spec_upper),
        (false, false) => "no specification".into(),
    };
    println!("{spec}; {}", baseline_line(&c.baseline));
    if let Some(n) = &c.network {
        println!("{}", series_line("network", n));
    }
    for s in &c.sites {
        println!("{}", series_line(&s.site_id, s));
    }
    let signals: Vec<&pb::ChartSignal> = c.sites.iter().flat_map(|s| &s.signals).collect();
    if !signals.is_empty() {
        println!("Signals on the sites' charts:");
        for g in signals {
            println!(
                "  {} batch {}: rule {} ({})",
                g.site_id, g.batch_id, g.rule, g.words
            );
        }
    }
    println!("Each site against the rest of the network (difference of means, 95% interval):");
    for k in &c.comparisons {
        if k.computed {
            println!(
                "  {:<14} {:+.4} ({:+.4}..{:+.4}), {} p = {:.4}",
                k.site_id, k.difference, k.low, k.high, k.test, k.p
            );
        } else {
            println!("  {:<14} too few batches to compare", k.site_id);
        }
    }
}

/// The golden batch as JSON, field by field as the API answers it.
fn golden_json(r: &pb::GetGoldenBatchResponse) -> serde_json::Value {
    let steps: Vec<_> = r
        .steps
        .iter()
        .map(|s| {
            let parameters: Vec<_> = s
                .parameters
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "parameter": p.parameter,
                        "unit": p.unit,
                        "range": [p.range_low, p.range_high],
                        "bin_hours": p.bin_hours,
                        "released_batches": p.released_batches,
                        "band": p.band.iter().map(|b| serde_json::json!({
                            "bin": b.bin, "batches": b.batches, "p5": b.p5, "median": b.median, "p95": b.p95,
                        })).collect::<Vec<_>>(),
                        "points": p.points.iter().map(|pt| serde_json::json!({
                            "bin": pt.bin, "samples": pt.samples, "mean": pt.mean,
                        })).collect::<Vec<_>>(),
                        "excursions": p.excursions.iter().map(|e| serde_json::json!({
                            "bin": e.bin, "from_hours": e.from_hours, "to_hours": e.to_hours,
                            "value": e.value, "p5": e.p5, "p95": e.p95, "side": e.side,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::json!({ "step_id": s.step_id, "name": s.name, "parameters": parameters })
        })
        .collect();
    serde_json::json!({
        "order_id": r.order_id,
        "batch_id": r.batch_id,
        "product_id": r.product_id,
        "steps": steps,
    })
}

fn print_golden(r: &pb::GetGoldenBatchResponse) {
    println!(
        "Batch {} of {} (order {})",
        r.batch_id, r.product_id, r.order_id
    );
    if r.steps.is_empty() {
        println!("No process samples from the site yet.");
    }
    for s in &r.steps {
        println!("{} ({})", s.name, s.step_id);
        for p in &s.parameters {
            println!(
                "  {:<22} {:>3} of {:>3} bins sampled, band in {:>2} bins over {} released batches, {} outside",
                p.parameter,
                p.points.len(),
                p.points.iter().map(|pt| pt.bin + 1).max().unwrap_or(0).max(12),
                p.band.len(),
                p.released_batches,
                p.excursions.len()
            );
            for e in &p.excursions {
                println!(
                    "    {:.1}-{:.1} h: {:.4} {}, {} the band ({:.4}-{:.4})",
                    e.from_hours, e.to_hours, e.value, p.unit, e.side, e.p5, e.p95
                );
            }
        }
    }
}

pub async fn run(command: AnalyticsCommand) -> anyhow::Result<()> {
    match command {
        AnalyticsCommand::Products { client: args } => {
            let found = client(authed(&args).await?)
                .list_analytics_products(pb::ListAnalyticsProductsRequest {})
                .await?
                .into_inner()
                .product_ids;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else if found.is_empty() {
                println!("No batch has results to chart yet.");
            } else {
                for p in found {
                    println!("{p}");
                }
            }
            Ok(())
        }
        AnalyticsCommand::Attributes {
            product,
            client: args,
        } => {
            let r = client(authed(&args).await?)
                .list_attributes(pb::ListAttributesRequest {
                    product_id: product,
                })
                .await?
                .into_inner();
            if args.json {
                let list: Vec<_> = r
                    .attributes
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "attribute": a.attribute,
                            "unit": a.unit,
                            "statistics": a.statistics.iter().map(|s| serde_json::json!({
                                "statistic": s.statistic, "label": s.label,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "attributes": list,
                        "baseline": r.baseline.as_ref().map(baseline_json),
                    }))?
                );
            } else {
                println!("{}", baseline_line(&r.baseline));
                for a in &r.attributes {
                    for s in &a.statistics {
                        println!("{:<40} {:<18} {}", a.attribute, s.statistic, s.label);
                    }
                }
            }
            Ok(())
        }
        AnalyticsCommand::Chart {
            product,
            attribute,
            statistic,
            csv,
            client: args,
        } => {
            let r = client(authed(&args).await?)
                .get_chart(pb::GetChartRequest {
                    product_id: product,
                    attribute,
                    statistic,
                    csv,
                })
                .await?
                .into_inner();
            let chart = r.chart.unwrap_or_default();
            if csv {
                print!("{}", r.csv);
            } else if args.json {
                println!("{}", serde_json::to_string_pretty(&chart_json(&chart))?);
            } else {
                print_chart(&chart);
            }
            Ok(())
        }
        AnalyticsCommand::Baseline {
            product,
            from,
            to,
            first,
            reason,
            client: args,
        } => {
            let baseline = client(authed(&args).await?)
                .choose_baseline(pb::ChooseBaselineRequest {
                    product_id: product,
                    from,
                    to,
                    reason,
                    first,
                })
                .await?
                .into_inner()
                .baseline;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&baseline.as_ref().map(baseline_json))?
                );
            } else {
                println!("Baseline chosen: {}.", baseline_line(&baseline));
            }
            Ok(())
        }
        AnalyticsCommand::Golden {
            order_id,
            client: args,
        } => {
            let r = client(authed(&args).await?)
                .get_golden_batch(pb::GetGoldenBatchRequest { order_id })
                .await?
                .into_inner();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&golden_json(&r))?);
            } else {
                print_golden(&r);
            }
            Ok(())
        }
    }
}
