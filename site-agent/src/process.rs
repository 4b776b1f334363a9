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

/// An alarm when a reading lies outside its recipe limits, as grave as the recipe says
/// ([`carrel_proto::recipe::Parameter::critical`]: by default critical for
/// temperatures, which endanger the cells at once, while pH, DO and viability
/// excursions are for the operator to assess). A critical alarm outranks the others.
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
                critical: p.critical(),
            })
        })
        .min_by_key(|a| !a.critical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(parameters: &str) -> Step {
        toml::from_str(&format!(
            "id = \"expansion\"\nname = \"Expansion\"\noperation = \"expansion\"\ninstrument_type = \"bioreactor\"\nduration_hours = 1.0\nparameters = [{parameters}]\n"
        ))
        .expect("step")
    }

    fn reading(parameter: &str, value: f64) -> Reading {
        Reading {
            parameter: parameter.into(),
            value,
            unit: String::new(),
        }
    }

    #[test]
    fn the_recipe_says_how_grave_an_excursion_is() {
        // Without a word from the recipe: temperatures are critical, the rest warnings.
        let default = step(
            "{ name = \"temperature\", unit = \"degC\", low = 36.5, high = 37.5 }, { name = \"ph\", unit = \"pH\", low = 6.9, high = 7.5 }",
        );
        let ph = limit_alarm(&default, &[reading("ph", 6.0)]).expect("alarm");
        assert!(!ph.critical);
        assert_eq!(ph.code, "ph-low");
        let both = limit_alarm(
            &default,
            &[reading("ph", 6.0), reading("temperature", 40.0)],
        )
        .expect("alarm");
        assert_eq!(both.code, "temperature-high", "the critical one first");
        // The recipe's word wins either way.
        let said = step(
            "{ name = \"temperature\", unit = \"degC\", low = 20.0, high = 26.0, alarm = \"warning\" }, { name = \"ph\", unit = \"pH\", low = 6.9, high = 7.5, alarm = \"critical\" }",
        );
        assert!(
            limit_alarm(&said, &[reading("ph", 6.0)])
                .expect("alarm")
                .critical
        );
        assert!(
            !limit_alarm(&said, &[reading("temperature", 30.0)])
                .expect("alarm")
                .critical
        );
        assert!(limit_alarm(&said, &[reading("ph", 7.0)]).is_none());
    }
}
