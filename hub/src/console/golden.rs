//! The golden batch on the hub's batch pages: the same figures as the site
//! console's ([`carrel_site_agent::console::golden`]), over the steps
//! [`crate::service::analytics::golden_of`] found sampled.

use crate::service::analytics::GoldenStep;
use carrel_site_agent::console::golden::{self as view, Step};
use maud::Markup;

pub use view::CSS;

/// The section: only the latest sampled step when `latest_only` (the live order
/// page), every sampled step otherwise (the batch record).
pub fn section(steps: &[GoldenStep], latest_only: bool) -> Markup {
    let steps: Vec<Step<'_>> = steps
        .iter()
        .map(|s| Step {
            name: &s.name,
            panels: &s.panels,
        })
        .collect();
    view::section(&steps, latest_only, None)
}
