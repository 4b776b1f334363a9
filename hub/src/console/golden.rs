//! The golden batch on the hub's batch pages: the same figures as the site
//! console's ([`carrel_site_agent::console::golden`]), over the steps
//! [`crate::service::analytics::golden_of`] gave.

use crate::service::analytics::GoldenStep;
use carrel_site_agent::console::golden::{self as view, Step};
use maud::{html, Markup};

pub use view::CSS;

/// The section of the steps given (a dry run is not compared).
pub fn section(steps: &[GoldenStep], dry_run: bool) -> Markup {
    if dry_run {
        return html! {
            section.golden data-golden {
                h2 { "Process against the golden batch" }
                p.muted { "A dry run is not compared with the golden batch." }
            }
        };
    }
    let steps: Vec<Step<'_>> = steps
        .iter()
        .map(|s| Step {
            name: &s.name,
            panels: &s.panels,
        })
        .collect();
    view::section(&steps, false, None)
}
