//! `AnalyticsService`: control charts, capability, site comparability and QA's
//! baseline; the charts themselves are built by [`crate::service::analytics`].

use super::{authenticate, service_status};
use crate::app::Hub;
use crate::model::analytics::chart::{Chart, Series};
use crate::model::analytics::measure::Baseline;
use crate::service::analytics as service;
use carrel_proto::event::to_timestamp;
use carrel_proto::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AnalyticsApi(pub Arc<Hub>);

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub fn baseline_to_pb(b: &Baseline) -> pb::AnalyticsBaseline {
    pb::AnalyticsBaseline {
        product_id: b.product_id.clone(),
        chosen_at: Some(to_timestamp(b.chosen_at)),
        chosen_by: b.chosen_by.clone(),
        reason: b.reason.clone(),
        batch_ids: b.batches.iter().map(|id| id.to_string()).collect(),
    }
}

fn series_to_pb(s: &Series) -> pb::ChartSeries {
    pb::ChartSeries {
        site_id: s.site_id.clone().unwrap_or_default(),
        points: s
            .points
            .iter()
            .map(|p| pb::ChartPoint {
                batch_id: p.batch_id.to_string(),
                site_id: p.site_id.clone(),
                placed_at: Some(to_timestamp(p.batch_at)),
                value: p.value,
                in_baseline: p.in_baseline,
            })
            .collect(),
        limits: s.limits.map(|l| pb::ChartLimits {
            center: l.center,
            lcl: l.lcl(),
            ucl: l.ucl(),
            mr_ucl: l.mr_ucl(),
        }),
        limits_of_network: s.limits_of_network,
        signals: s
            .signals
            .iter()
            .map(|signal| {
                let point = &s.points[signal.index];
                pb::ChartSignal {
                    index: count(signal.index),
                    rule: u32::from(signal.rule.number()),
                    words: signal.rule.words().to_owned(),
                    batch_id: point.batch_id.to_string(),
                    site_id: point.site_id.clone(),
                }
            })
            .collect(),
        capability: s.capability.map(|c| pb::ChartCapability {
            n: count(c.n),
            mean: c.mean,
            sigma_within: c.sigma_within,
            sigma_overall: c.sigma_overall,
            cpk: c.cpk.value,
            cpk_low: c.cpk.low,
            cpk_high: c.cpk.high,
            ppk: c.ppk.value,
            ppk_low: c.ppk.low,
            ppk_high: c.ppk.high,
        }),
    }
}

pub fn chart_to_pb(c: &Chart) -> pb::Chart {
    use crate::model::analytics::chart::Basis;
    pb::Chart {
        product_id: c.product_id.clone(),
        attribute: c.attribute.clone(),
        statistic: c.statistic.as_str().to_owned(),
        label: c.label.clone(),
        unit: c.unit.clone(),
        has_spec_lower: c.spec.is_some_and(|s| s.lower.is_some()),
        spec_lower: c.spec.and_then(|s| s.lower).unwrap_or_default(),
        has_spec_upper: c.spec.is_some_and(|s| s.upper.is_some()),
        spec_upper: c.spec.and_then(|s| s.upper).unwrap_or_default(),
        baseline: match &c.basis {
            Basis::Baseline(b) => Some(baseline_to_pb(b)),
            Basis::Provisional => None,
        },
        network: Some(series_to_pb(&c.network)),
        sites: c.sites.iter().map(series_to_pb).collect(),
        comparisons: c
            .comparisons
            .iter()
            .map(|(site_id, cmp)| match cmp {
                None => pb::SiteComparison {
                    site_id: site_id.clone(),
                    ..Default::default()
                },
                Some(cmp) => pb::SiteComparison {
                    site_id: site_id.clone(),
                    computed: true,
                    n_site: count(cmp.n_site),
                    n_rest: count(cmp.n_rest),
                    mean_site: cmp.mean_site,
                    mean_rest: cmp.mean_rest,
                    difference: cmp.welch.difference,
                    low: cmp.welch.low,
                    high: cmp.welch.high,
                    test: cmp.test.as_str().to_owned(),
                    p: cmp.p,
                },
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::analytics_service_server::AnalyticsService for AnalyticsApi {
    async fn list_analytics_products(
        &self,
        request: Request<pb::ListAnalyticsProductsRequest>,
    ) -> Result<Response<pb::ListAnalyticsProductsResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let product_ids = service::products(&self.0, &user)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::ListAnalyticsProductsResponse {
            product_ids,
        }))
    }

    async fn list_attributes(
        &self,
        request: Request<pb::ListAttributesRequest>,
    ) -> Result<Response<pb::ListAttributesResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let (attributes, baseline) =
            service::attributes(&self.0, &user, &request.get_ref().product_id)
                .await
                .map_err(service_status)?;
        Ok(Response::new(pb::ListAttributesResponse {
            attributes: attributes
                .into_iter()
                .map(|a| pb::AnalyticsAttribute {
                    attribute: a.attribute,
                    unit: a.unit,
                    statistics: a
                        .statistics
                        .into_iter()
                        .map(|(s, label)| pb::AnalyticsStatistic {
                            statistic: s.as_str().to_owned(),
                            label,
                        })
                        .collect(),
                })
                .collect(),
            baseline: baseline.as_ref().map(baseline_to_pb),
        }))
    }

    async fn get_chart(
        &self,
        request: Request<pb::GetChartRequest>,
    ) -> Result<Response<pb::GetChartResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let r = request.get_ref();
        let chart = service::chart(&self.0, &user, &r.product_id, &r.attribute, &r.statistic)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::GetChartResponse {
            csv: if r.csv {
                service::csv(&chart)
            } else {
                String::new()
            },
            chart: Some(chart_to_pb(&chart)),
        }))
    }

    async fn choose_baseline(
        &self,
        request: Request<pb::ChooseBaselineRequest>,
    ) -> Result<Response<pb::ChooseBaselineResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let r = request.get_ref();
        let baseline = service::choose_baseline(
            &self.0,
            &user,
            &service::BaselineRequest {
                product_id: &r.product_id,
                from: &r.from,
                to: &r.to,
                first: r.first,
                reason: &r.reason,
            },
        )
        .await
        .map_err(service_status)?;
        Ok(Response::new(pb::ChooseBaselineResponse {
            baseline: Some(baseline_to_pb(&baseline)),
        }))
    }

    async fn get_golden_batch(
        &self,
        request: Request<pb::GetGoldenBatchRequest>,
    ) -> Result<Response<pb::GetGoldenBatchResponse>, Status> {
        let user = authenticate(&self.0, &request).await?;
        let order_id = super::parse_id("order_id", &request.get_ref().order_id)?;
        let (order, steps) = service::golden_batch(&self.0, &user, order_id)
            .await
            .map_err(service_status)?;
        Ok(Response::new(pb::GetGoldenBatchResponse {
            order_id: order.order_id.to_string(),
            batch_id: order.batch_id.to_string(),
            product_id: order.recipe_id,
            steps: steps.iter().map(golden_step_to_pb).collect(),
        }))
    }
}

pub fn golden_step_to_pb(step: &service::GoldenStep) -> pb::GoldenStep {
    pb::GoldenStep {
        step_id: step.step_id.clone(),
        name: step.name.clone(),
        parameters: step.panels.iter().map(|p| p.to_pb()).collect(),
    }
}
