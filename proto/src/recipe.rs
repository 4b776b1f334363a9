//! The master batch record (recipe): versioned data that says how a product is made
//! and what it must meet (ARCHITECTURE.md, invariant 9).
//!
//! A recipe is written as TOML by people and stored and shipped as canonical JSON,
//! whose SHA-256 identifies the exact version an order pinned. Nothing
//! product-specific is hard-coded anywhere else: steps, process parameters, custody
//! checkpoints and release specifications all come from here.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::fmt;

/// Why a recipe document is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("recipe is not valid TOML: {0}")]
    Toml(String),
    #[error("recipe is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("recipe {id} v{version}: {problem}")]
    Invalid {
        id: String,
        version: u32,
        problem: String,
    },
}

/// One version of a master batch record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Product id, stable across versions, e.g. `cd19-car-t`.
    pub id: String,
    pub version: u32,
    pub title: String,
    /// Manufacturing steps, run in this order.
    pub steps: Vec<Step>,
    /// Tests the product must pass before QA may release it.
    pub release_tests: Vec<QcTest>,
    /// Custody checkpoints after release, in order: hand-over for infusion, then
    /// infusion at the bedside. They are accepted only for a released batch.
    #[serde(default)]
    pub bedside_checkpoints: Vec<CustodyCheckpoint>,
}

/// One manufacturing step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    pub name: String,
    /// What the step does, which also tells an instrument (or the simulator) how it behaves:
    /// `receipt`, `selection`, `activation`, `transduction`, `expansion`, `harvest`,
    /// `formulation`, `fill`.
    pub operation: String,
    /// Instrument type the step needs, e.g. `closed-processing-system`.
    pub instrument_type: String,
    /// Planned duration in process hours.
    pub duration_hours: f64,
    /// Custody checkpoint at the start of this step, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custody_checkpoint: Option<CustodyCheckpoint>,
    /// Process parameters recorded during the step, with their normal ranges.
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// In-process tests taken at the end of the step.
    #[serde(default)]
    pub in_process_tests: Vec<QcTest>,
}

/// A label scan that must match the order's COI before the step may start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodyCheckpoint {
    pub id: String,
    pub name: String,
    /// Number of distinct people who must verify (1 to 5).
    pub verifiers: u8,
}

/// A process parameter and the range outside which an alarm is raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    /// The name instruments and records use (`dissolved_o2`).
    pub name: String,
    pub unit: String,
    pub low: f64,
    pub high: f64,
    /// How people read the name ("Dissolved O₂"); without it, the name in words
    /// ([`parameter_words`]). Not part of a recipe written without it, so adding the
    /// field changed no published recipe's hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// How grave a reading outside `low..high` is: `critical` (the cells are at risk
    /// at once) or `warning` (for the operator to assess). Without it, a temperature
    /// is critical and anything else a warning. Absent from recipes written without
    /// it, so their hashes stay what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<AlarmLevel>,
}

/// The severity of an alarm a recipe gives a process parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmLevel {
    Critical,
    Warning,
}

impl Parameter {
    /// True when a reading outside the limits is a critical alarm.
    pub fn critical(&self) -> bool {
        match self.alarm {
            Some(level) => level == AlarmLevel::Critical,
            None => self.name.contains("temperature"),
        }
    }

    /// The parameter as people read it.
    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| parameter_words(&self.name))
    }
}

/// A parameter's name in words: the common process parameters as a person writes
/// them, any other with its underscores as spaces and a capital first letter.
pub fn parameter_words(name: &str) -> String {
    match name {
        "ph" => "pH".into(),
        "dissolved_o2" => "Dissolved O₂".into(),
        "co2" => "CO₂".into(),
        _ => {
            let spaced = name.replace('_', " ");
            let mut chars = spaced.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        }
    }
}

/// A unit as people write it (`degC` is °C); the unit itself when it has no other
/// way of being written. A pH value has no unit beside it.
pub fn unit_words(unit: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match unit {
        "degC" => Cow::Borrowed("°C"),
        "degF" => Cow::Borrowed("°F"),
        "pct" | "percent" => Cow::Borrowed("%"),
        "pH" => Cow::Borrowed(""),
        // Powers of ten as written on paper: x10^6 cells/mL is ×10⁶ cells/mL.
        other if other.contains("x10^") => Cow::Owned(
            other
                .replace("x10^6", "×10⁶")
                .replace("x10^9", "×10⁹")
                .replace("x10^3", "×10³"),
        ),
        other => Cow::Borrowed(other),
    }
}

/// A QC test and its acceptance criterion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QcTest {
    pub id: String,
    pub name: String,
    pub method: String,
    #[serde(default)]
    pub unit: String,
    pub spec: Spec,
    /// The result may arrive after release (conditional release), e.g. sterility.
    #[serde(default)]
    pub may_follow_release: bool,
}

/// An acceptance criterion: a numeric range, or a set of accepted text results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted: Vec<String>,
}

/// A measured or observed QC result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QcValue {
    Numeric(f64),
    Text(String),
}

impl fmt::Display for QcValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QcValue::Numeric(v) => write!(f, "{v}"),
            QcValue::Text(t) => f.write_str(t),
        }
    }
}

/// Outcome of a QC result against its specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    OutOfSpecification,
}

/// The verdict and, for an out-of-specification result, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub outcome: Outcome,
    pub reason: String,
}

impl Spec {
    /// Evaluates a result against this specification.
    pub fn evaluate(&self, value: &QcValue) -> Evaluation {
        let oos = |reason: String| Evaluation {
            outcome: Outcome::OutOfSpecification,
            reason,
        };
        match value {
            QcValue::Numeric(v) if self.accepted.is_empty() => {
                if !v.is_finite() {
                    return oos(format!("{v} is not a number"));
                }
                if let Some(min) = self.min {
                    if *v < min {
                        return oos(format!("{v} is below the minimum {min}"));
                    }
                }
                if let Some(max) = self.max {
                    if *v > max {
                        return oos(format!("{v} is above the maximum {max}"));
                    }
                }
                Evaluation {
                    outcome: Outcome::Pass,
                    reason: String::new(),
                }
            }
            QcValue::Text(t) if !self.accepted.is_empty() => {
                let normalised = t.trim().to_lowercase();
                if self
                    .accepted
                    .iter()
                    .any(|a| a.trim().to_lowercase() == normalised)
                {
                    Evaluation {
                        outcome: Outcome::Pass,
                        reason: String::new(),
                    }
                } else {
                    oos(format!("{t:?} is not an accepted result ({self})"))
                }
            }
            QcValue::Numeric(v) => oos(format!(
                "{v} is a number but the specification expects text ({self})"
            )),
            QcValue::Text(t) => oos(format!(
                "{t:?} is text but the specification is numeric ({self})"
            )),
        }
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.accepted.is_empty() {
            return write!(f, "one of: {}", self.accepted.join(", "));
        }
        match (self.min, self.max) {
            (Some(min), Some(max)) => write!(f, "{min} to {max}"),
            (Some(min), None) => write!(f, ">= {min}"),
            (None, Some(max)) => write!(f, "<= {max}"),
            (None, None) => f.write_str("any value"),
        }
    }
}

impl Recipe {
    /// Reads a recipe written as TOML and checks it.
    pub fn from_toml(text: &str) -> Result<Recipe, Error> {
        let recipe: Recipe = toml_from_str(text)?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// Reads a recipe from its canonical JSON and checks it.
    pub fn from_json(text: &str) -> Result<Recipe, Error> {
        let recipe: Recipe = serde_json::from_str(text)?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// The canonical JSON form that is stored, shipped to sites and hashed.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a recipe always serialises")
    }

    /// SHA-256 (hex) of the canonical JSON.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.to_canonical_json().as_bytes()))
    }

    /// Every custody checkpoint, in the order they are passed.
    pub fn checkpoints(&self) -> impl Iterator<Item = &CustodyCheckpoint> {
        self.steps
            .iter()
            .filter_map(|s| s.custody_checkpoint.as_ref())
            .chain(self.bedside_checkpoints.iter())
    }

    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Every QC test of the recipe: in-process tests of each step, then release tests.
    pub fn all_tests(&self) -> impl Iterator<Item = &QcTest> {
        self.steps
            .iter()
            .flat_map(|s| s.in_process_tests.iter())
            .chain(self.release_tests.iter())
    }

    pub fn test(&self, id: &str) -> Option<&QcTest> {
        self.all_tests().find(|t| t.id == id)
    }

    /// A step's name, or its id when this recipe has no such step.
    pub fn step_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.step(id).map_or(id, |s| s.name.as_str())
    }

    /// A test's name, or its id when this recipe has no such test.
    pub fn test_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.test(id).map_or(id, |t| t.name.as_str())
    }

    /// A custody checkpoint's name, or its id when this recipe has none such.
    pub fn checkpoint_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.checkpoints()
            .find(|c| c.id == id)
            .map_or(id, |c| c.name.as_str())
    }

    /// A process parameter's label (see [`Parameter::label`]), from the first step
    /// that measures it; the name in words when none does.
    pub fn parameter_label(&self, name: &str) -> String {
        self.steps
            .iter()
            .flat_map(|s| s.parameters.iter())
            .find(|p| p.name == name)
            .map_or_else(|| parameter_words(name), Parameter::label)
    }

    /// The batch record is complete, so QA may review it for release: every step of
    /// this recipe completed and every test recorded that must precede release (a
    /// test that may follow release, such as sterility, is not waited for). Ids that
    /// are not in the recipe count for nothing. The hub and the site agent both ask
    /// this, so a batch awaits release at both under the same rule.
    pub fn record_complete(
        &self,
        steps_completed: &BTreeSet<String>,
        tests_recorded: &BTreeSet<String>,
    ) -> bool {
        self.steps.iter().all(|s| steps_completed.contains(&s.id))
            && self
                .all_tests()
                .filter(|t| !t.may_follow_release)
                .all(|t| tests_recorded.contains(&t.id))
    }

    /// The tests that may follow release and have no result yet, in the recipe's
    /// order: a release signed while any is outstanding is conditional, and names
    /// them.
    pub fn outstanding_after_release<'a>(
        &'a self,
        tests_recorded: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = &'a QcTest> + 'a {
        self.all_tests()
            .filter(move |t| t.may_follow_release && !tests_recorded.contains(&t.id))
    }

    /// Checks what serde cannot: ids unique, ranges sensible, at least one step.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |problem: String| Error::Invalid {
            id: self.id.clone(),
            version: self.version,
            problem,
        };
        if self.id.trim().is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid(
                "id must be non-empty and use only letters, digits and '-'".into(),
            ));
        }
        if self.version == 0 {
            return Err(invalid("version starts at 1".into()));
        }
        if self.steps.is_empty() {
            return Err(invalid("a recipe has at least one step".into()));
        }
        let mut step_ids = HashSet::new();
        for step in &self.steps {
            if !step_ids.insert(step.id.as_str()) {
                return Err(invalid(format!("step id {:?} appears twice", step.id)));
            }
            if !(step.duration_hours.is_finite() && step.duration_hours > 0.0) {
                return Err(invalid(format!(
                    "step {:?} needs a positive duration",
                    step.id
                )));
            }

            for p in &step.parameters {
                if !(p.low.is_finite() && p.high.is_finite()) {
                    return Err(invalid(format!(
                        "parameter {:?} of step {:?}: low and high must be finite numbers",
                        p.name, step.id
                    )));
                }
                if p.low > p.high {
                    return Err(invalid(format!(
                        "parameter {:?} of step {:?}: low {} is above high {}",
                        p.name, step.id, p.low, p.high
                    )));
                }
            }
        }
        let mut checkpoint_ids = HashSet::new();
        for cp in self.checkpoints() {
            if !checkpoint_ids.insert(cp.id.as_str()) {
                return Err(invalid(format!(
                    "custody checkpoint id {:?} appears twice",
                    cp.id
                )));
            }
            if !(1..=5).contains(&cp.verifiers) {
                return Err(invalid(format!(
                    "custody checkpoint {:?} needs 1 to 5 verifiers, not {}",
                    cp.id, cp.verifiers
                )));
            }
        }
        let mut test_ids = HashSet::new();
        for test in self.all_tests() {
            if !test_ids.insert(test.id.as_str()) {
                return Err(invalid(format!("test id {:?} appears twice", test.id)));
            }
            let spec = &test.spec;
            let numeric = spec.min.is_some() || spec.max.is_some();
            let textual = !spec.accepted.is_empty();
            if numeric == textual {
                return Err(invalid(format!(
                    "test {:?} needs either a numeric range (min/max) or accepted results, not both or neither",
                    test.id
                )));
            }
            if spec.min.into_iter().chain(spec.max).any(|v| !v.is_finite()) {
                return Err(invalid(format!(
                    "test {:?}: min and max must be finite numbers",
                    test.id
                )));
            }
            if let (Some(min), Some(max)) = (spec.min, spec.max) {
                if min > max {
                    return Err(invalid(format!(
                        "test {:?}: min {min} is above max {max}",
                        test.id
                    )));
                }
            }
        }
        Ok(())
    }
}

fn toml_from_str(text: &str) -> Result<Recipe, Error> {
    toml::from_str(text).map_err(|e| Error::Toml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_min(min: f64) -> Spec {
        Spec {
            min: Some(min),
            max: None,
            accepted: vec![],
        }
    }

    #[test]
    fn names_units_and_labels_read_as_people_write_them() {
        let recipe = Recipe::from_toml(EXAMPLE).expect("valid");
        assert_eq!(recipe.step_name("expansion"), "Expansion");
        assert_eq!(recipe.step_name("no-such-step"), "no-such-step");
        assert_eq!(
            recipe.test_name("ip-viability"),
            "Viability at end of expansion"
        );
        assert_eq!(
            recipe.checkpoint_name("manufacturing-start"),
            "Start of manufacturing"
        );
        assert_eq!(recipe.parameter_label("dissolved_o2"), "Dissolved O₂");
        assert_eq!(
            recipe.parameter_label("viable_cell_density"),
            "Viable cell density"
        );
        assert_eq!(recipe.parameter_label("ph"), "pH");
        assert_eq!(unit_words("degC"), "°C");
        assert_eq!(unit_words("pH"), "");
        assert_eq!(unit_words("EU/mL"), "EU/mL");
        assert_eq!(unit_words("x10^6 CAR+ cells/kg"), "×10⁶ CAR+ cells/kg");
        // A recipe that names no labels hashes as it did before labels existed.
        assert!(!recipe.to_canonical_json().contains("\"label\""));
        let mut labelled = recipe.clone();
        labelled.steps[3].parameters[2].label = Some("DO".into());
        assert_eq!(labelled.parameter_label("dissolved_o2"), "DO");
        assert_ne!(labelled.sha256(), recipe.sha256());
    }

    #[test]
    fn numeric_spec_passes_at_the_limit_and_fails_below() {
        let spec = spec_min(70.0);
        assert_eq!(
            spec.evaluate(&QcValue::Numeric(70.0)).outcome,
            Outcome::Pass
        );
        let below = spec.evaluate(&QcValue::Numeric(69.9));
        assert_eq!(below.outcome, Outcome::OutOfSpecification);
        assert!(
            below.reason.contains("below the minimum 70"),
            "{}",
            below.reason
        );
    }

    #[test]
    fn maximum_is_enforced() {
        let spec = Spec {
            min: None,
            max: Some(0.5),
            accepted: vec![],
        };
        assert_eq!(spec.evaluate(&QcValue::Numeric(0.5)).outcome, Outcome::Pass);
        assert_eq!(
            spec.evaluate(&QcValue::Numeric(0.51)).outcome,
            Outcome::OutOfSpecification
        );
        assert_eq!(
            spec.evaluate(&QcValue::Numeric(f64::NAN)).outcome,
            Outcome::OutOfSpecification
        );
    }

    #[test]
    fn text_spec_matches_case_insensitively_and_rejects_others() {
        let spec = Spec {
            min: None,
            max: None,
            accepted: vec!["No growth".into()],
        };
        assert_eq!(
            spec.evaluate(&QcValue::Text("no growth ".into())).outcome,
            Outcome::Pass
        );
        assert_eq!(
            spec.evaluate(&QcValue::Text("growth".into())).outcome,
            Outcome::OutOfSpecification
        );
        assert_eq!(
            spec.evaluate(&QcValue::Numeric(1.0)).outcome,
            Outcome::OutOfSpecification
        );
    }

    #[test]
    fn example_recipe_is_valid_and_hash_is_stable() {
        let recipe = Recipe::from_toml(EXAMPLE).expect("example recipe is valid");
        assert_eq!(recipe.id, "cd19-car-t");
        let again = Recipe::from_json(&recipe.to_canonical_json()).expect("round trip");
        assert_eq!(again.sha256(), recipe.sha256());
        assert!(recipe.test("viability").is_some());
    }

    #[test]
    fn invalid_recipes_say_why() {
        let mut recipe = Recipe::from_toml(EXAMPLE).expect("valid");
        recipe.steps.push(recipe.steps[0].clone());
        let err = recipe.validate().expect_err("duplicate step");
        assert!(err.to_string().contains("appears twice"), "{err}");

        let mut recipe = Recipe::from_toml(EXAMPLE).expect("valid");
        recipe.release_tests[0].spec.accepted = vec!["x".into()];
        let err = recipe.validate().expect_err("mixed spec");
        assert!(err.to_string().contains("not both or neither"), "{err}");

        let mut recipe = Recipe::from_toml(EXAMPLE).expect("valid");
        recipe.steps[0].parameters[0].high = f64::INFINITY;
        let err = recipe.validate().expect_err("infinite limit");
        assert!(err.to_string().contains("finite"), "{err}");

        let mut recipe = Recipe::from_toml(EXAMPLE).expect("valid");
        recipe.release_tests[0].spec.min = Some(f64::NAN);
        assert!(recipe.validate().is_err(), "NaN minimum");

        let err = Recipe::from_toml("id = 'x'").expect_err("incomplete");
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn the_record_is_complete_with_every_step_and_every_test_due_before_release() {
        let recipe = Recipe::from_toml(EXAMPLE).expect("valid");
        let ids = |items: &mut dyn Iterator<Item = &str>| -> BTreeSet<String> {
            items.map(str::to_owned).collect()
        };
        let steps = ids(&mut recipe.steps.iter().map(|s| s.id.as_str()));
        let due: BTreeSet<String> = ids(&mut recipe
            .all_tests()
            .filter(|t| !t.may_follow_release)
            .map(|t| t.id.as_str()));
        assert!(
            recipe.all_tests().any(|t| t.may_follow_release),
            "the example has a test that may follow release"
        );
        assert!(
            recipe.record_complete(&steps, &due),
            "a test that may follow release is not waited for"
        );
        assert!(!recipe.record_complete(&BTreeSet::new(), &BTreeSet::new()));

        let mut one_step_short = steps.clone();
        let last_step = recipe.steps.last().expect("a step").id.clone();
        one_step_short.remove(&last_step);
        assert!(!recipe.record_complete(&one_step_short, &due));
        // A step that is not in the recipe does not stand in for one that is.
        one_step_short.insert("not-a-step".into());
        assert!(!recipe.record_complete(&one_step_short, &due));

        for test in &due {
            let mut one_test_short = due.clone();
            one_test_short.remove(test);
            one_test_short.insert("not-a-test".into());
            assert!(
                !recipe.record_complete(&steps, &one_test_short),
                "{test} is due before release"
            );
        }
    }

    /// The example recipe that ships with the hub.
    pub(crate) const EXAMPLE: &str = include_str!("../../hub/recipes/cd19-car-t.v1.toml");
}
