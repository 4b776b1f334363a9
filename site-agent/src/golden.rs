//! The golden batch at the site. The band of each step's parameters is the
//! network's (the hub computes it over released batches) and is asked of the hub
//! over the link's connection; the batch drawn over it is the site's own samples,
//! from its own records, so the drawing follows the batch as it is made, link or
//! no link. The last band the hub sent for a batch is kept and shown, with its
//! time, while the hub cannot be reached.

use carrel_proto::event::{EventKind, SiteEvent};
use carrel_proto::golden::{self, Panel};
use carrel_proto::pb;
use carrel_proto::recipe::Recipe;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;
use uuid::Uuid;

/// A band is asked of the hub again after this long (it changes as batches are
/// released, not by the second).
const FRESH_FOR: Duration = Duration::from_secs(30);
/// After the hub could not answer, it is not asked again for this long (every
/// open page polls; an older hub, or one that is struggling, is asked once).
const RETRY_AFTER: Duration = Duration::from_secs(15);
/// How long a page waits for the hub's answer before it shows what it has.
const ASK_TIMEOUT: Duration = Duration::from_millis(1500);

/// The hub's answer for one batch, and when it came.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub at: DateTime<Utc>,
    pub answer: pb::GetGoldenBatchResponse,
}

/// What a page has of a batch's band: the hub's answer (if any) and, when it is
/// not a fresh one, why.
#[derive(Debug, Clone)]
pub struct Bands {
    pub fetched: Option<Fetched>,
    pub stale: Option<String>,
}

/// Where the console gets bands: the link's connection to the hub while it is up
/// (`None` while it is down), and the answers kept.
pub struct Source {
    channel: watch::Receiver<Option<Channel>>,
    kept: Mutex<HashMap<Uuid, Fetched>>,
    /// Per batch: when the hub was last asked, and why it did not answer (`None`
    /// while the ask is under way), so pages never ask twice at once.
    asking: Mutex<HashMap<Uuid, (std::time::Instant, Option<String>)>>,
}

impl Source {
    pub fn new(channel: watch::Receiver<Option<Channel>>) -> Source {
        Source {
            channel,
            kept: Mutex::new(HashMap::new()),
            asking: Mutex::new(HashMap::new()),
        }
    }

    fn kept(&self, batch_id: Uuid) -> Option<Fetched> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&batch_id)
            .cloned()
    }

    /// The band of `batch_id`: kept if fresh, else asked of the hub; the last one
    /// kept, with why, when the hub cannot answer.
    pub async fn bands(&self, batch_id: Uuid) -> Bands {
        let kept = self.kept(batch_id);
        let answer = |stale: Option<String>| Bands {
            fetched: kept.clone(),
            stale,
        };
        if let Some(k) = &kept {
            if (Utc::now() - k.at).to_std().unwrap_or_default() < FRESH_FOR {
                return answer(None);
            }
        }
        let channel = self.channel.borrow().clone();
        let Some(channel) = channel else {
            return answer(Some("the link to the hub is down".to_owned()));
        };
        // One ask per batch at a time (an ask whose page went away is given up
        // after its timeout), and none soon after one failed.
        {
            let mut asking = self.asking.lock().unwrap_or_else(|e| e.into_inner());
            match asking.get(&batch_id) {
                Some((at, None)) if at.elapsed() < ASK_TIMEOUT * 2 => {
                    return answer(Some("the hub is being asked for it".to_owned()));
                }
                Some((at, Some(why))) if at.elapsed() < RETRY_AFTER => {
                    return answer(Some(why.clone()));
                }
                _ => {
                    asking.insert(batch_id, (std::time::Instant::now(), None));
                }
            }
        }
        let mut client = pb::site_link_service_client::SiteLinkServiceClient::new(channel);
        let asked = client.golden_batch(pb::SiteGoldenBatchRequest {
            batch_id: batch_id.to_string(),
        });
        let why = match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(Ok(sent)) => {
                let fetched = Fetched {
                    at: Utc::now(),
                    answer: sent.into_inner(),
                };
                self.kept
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(batch_id, fetched.clone());
                self.asking
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&batch_id);
                return Bands {
                    fetched: Some(fetched),
                    stale: None,
                };
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                "the hub is of a version that does not send it".to_owned()
            }
            Ok(Err(status)) => {
                tracing::warn!(%batch_id, error = %status, "the hub did not send the golden batch");
                format!("the hub did not send it ({})", status.message())
            }
            Err(_) => "the hub did not answer in time".to_owned(),
        };
        self.asking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(batch_id, (std::time::Instant::now(), Some(why.clone())));
        answer(Some(why))
    }
}

/// Each step of `recipe` the batch has samples of (in recipe order), with its
/// parameters' panels: the hub's band from `answer` (none when it sent none) with
/// the batch's own samples from `events` over it. Only samples in the recipe's
/// unit are drawn, as at the hub.
pub fn steps(
    recipe: &Recipe,
    events: &[SiteEvent],
    answer: Option<&pb::GetGoldenBatchResponse>,
) -> Vec<(String, Vec<Panel>)> {
    let mut out = Vec::new();
    for step in &recipe.steps {
        let samples: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::ProcessSamples { step_id, samples } if *step_id == step.id => {
                    Some(samples)
                }
                _ => None,
            })
            .flatten()
            .collect();
        if samples.is_empty() || step.parameters.is_empty() {
            continue;
        }
        let sent = answer.and_then(|a| a.steps.iter().find(|s| s.step_id == step.id));
        let panels = step
            .parameters
            .iter()
            .map(|p| {
                let band =
                    match sent.and_then(|s| s.parameters.iter().find(|q| q.parameter == p.name)) {
                        Some(q) => Panel::band_from_pb(step, q),
                        None => Panel::band_from_pb(
                            step,
                            &pb::GoldenParameter {
                                parameter: p.name.clone(),
                                unit: p.unit.clone(),
                                range_low: p.low,
                                range_high: p.high,
                                ..Default::default()
                            },
                        ),
                    };
                let own = samples
                    .iter()
                    .filter(|s| s.parameter == p.name && (p.unit.is_empty() || s.unit == p.unit))
                    .map(|s| (s.step_hours, s.value));
                band.with_points(golden::points_of(step, own))
            })
            .collect();
        out.push((step.name.clone(), panels));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use carrel_proto::event::Sample;

    fn recipe() -> Recipe {
        Recipe::from_toml(include_str!("../../hub/recipes/cd19-car-t.v1.toml")).expect("shipped")
    }

    fn samples(values: &[(f64, f64)]) -> SiteEvent {
        SiteEvent {
            seq: 1,
            event_id: Uuid::nil(),
            recorded_at: Utc::now(),
            batch_id: Uuid::nil(),
            recorded_by: "agent".into(),
            prev_sha256: String::new(),
            identity: Default::default(),
            kind: EventKind::ProcessSamples {
                step_id: "expansion".into(),
                samples: values
                    .iter()
                    .map(|&(step_hours, value)| Sample {
                        step_hours,
                        parameter: "temperature".into(),
                        value,
                        unit: "degC".into(),
                    })
                    .collect(),
            },
        }
    }

    #[tokio::test]
    async fn without_the_hub_the_sites_own_samples_are_drawn_and_why_is_said() {
        let (_keep, channel) = watch::channel(None);
        let source = Source::new(channel);
        let bands = source.bands(Uuid::nil()).await;
        assert!(bands.fetched.is_none());
        assert_eq!(bands.stale.as_deref(), Some("the link to the hub is down"));
        let events = [samples(&[(0.0, 37.0), (6.0, 37.2), (20.0, 36.9)])];
        let drawn = steps(&recipe(), &events, None);
        assert_eq!(drawn.len(), 1, "only expansion was sampled");
        let (name, panels) = &drawn[0];
        assert_eq!(name, "Expansion");
        let temperature = panels
            .iter()
            .find(|p| p.parameter == "temperature")
            .expect("temperature");
        assert!(temperature.bins.is_empty());
        assert_eq!(temperature.points.len(), 2, "{temperature:?}");
        assert!((temperature.points[0].mean() - 37.1).abs() < 1e-9);
        // With the hub's band, a sample beyond it is flagged.
        let mut sent = temperature.clone();
        sent.bins = vec![golden::BandBin {
            bin: 0,
            batches: 10,
            low: 36.9,
            median: 37.0,
            high: 37.05,
        }];
        let answer = pb::GetGoldenBatchResponse {
            steps: vec![pb::GoldenStep {
                step_id: "expansion".into(),
                name: "Expansion".into(),
                parameters: vec![sent.to_pb()],
            }],
            ..Default::default()
        };
        let drawn = steps(&recipe(), &events, Some(&answer));
        let temperature = drawn[0]
            .1
            .iter()
            .find(|p| p.parameter == "temperature")
            .expect("temperature");
        assert_eq!(temperature.excursions.len(), 1, "{temperature:?}");
        assert_eq!(temperature.excursions[0].bin, 0);
    }
}
