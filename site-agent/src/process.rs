//! Process readings and the alarms they raise: what an instrument (or the simulated
//! process model) reports of a step's process parameters, and the rule that turns a
//! reading outside the recipe's limits into an alarm. Shared by [`crate::instrument`]
//! and [`crate::simulator`], and depending on neither.

use carrel_proto::recipe::Step;

/// One process parameter reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub parameter: String,
    pub value: f64,
    pub unit: String,
}

/// An alarm the instrument raises.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub code: String,
    pub message: String,
    pub critical: bool,
}

/// An alarm when a reading lies outside its recipe limits (critical for temperatures,
/// which endanger the cells at once; pH, DO and viability excursions are deviations
/// for the operator to assess). A temperature alarm outranks the others.
pub fn limit_alarm(step: &Step, readings: &[Reading]) -> Option<Alarm> {
    readings
        .iter()
        .filter_map(|r| {
            let p = step.parameters.iter().find(|p| p.name == r.parameter)?;
            let (side, limit) = match r.value {
                v if v < p.low => ("low", p.low),
                v if v > p.high => ("high", p.high),
                _ => return None,
            };
            Some(Alarm {
                code: format!("{}-{side}", r.parameter),
                message: format!(
                    "{} {} {} is beyond the {side} limit {limit} in step {}",
                    r.parameter, r.value, r.unit, step.id
                ),
                critical: r.parameter.contains("temperature"),
            })
        })
        .min_by_key(|a| !a.critical)
}
