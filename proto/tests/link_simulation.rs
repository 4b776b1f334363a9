//! The site link, simulated: many sites and hub replicas (`link_world`) driven
//! through long random runs, each decided by one seed: random partitions, message
//! losses, repeats and reordering, crashes and restarts of either side, and a
//! simulated clock (heartbeats and silence).
//!
//! Each run has two halves. First the storm: any action, faults included. Then the
//! calm: connections are closed once, and from then on only the ends' ordinary
//! inputs happen (sites reconnect, messages arrive, commits finish, timers fire),
//! until everything recorded has reached the other side. The properties
//! (`World::check`) are checked after every step of both halves; the calm must
//! settle within its step budget.
//!
//! The seeds are `0..CARREL_SIM_SEEDS` (default 3,000); `CARREL_SIM_SEED=N` runs
//! only seed N and prints its steps. A failing seed prints that command.

mod link_world;

use carrel_proto::link::Limits;
use link_world::{Action, Bounds, World};

/// A small, fixed generator (SplitMix64): a seed gives the same run on every
/// machine and every version of every crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn bounds(rng: &mut Rng) -> Bounds {
    Bounds {
        sites: 1 + rng.below(4) as usize,
        replicas: 1 + rng.below(3) as usize,
        events: 10 + rng.below(40),
        commands: rng.below(8),
        connections: u32::MAX,
        site_crashes: rng.below(4) as u32,
        hub_crashes: rng.below(4) as u32,
        losses: rng.below(6) as u32,
        repeats: rng.below(6) as u32,
        in_flight: 64,
        limits: Limits {
            window: 1 + rng.below(8),
            per_message: 1 + rng.below(4),
            silence_ms: 3_000,
        },
        commands_per_message: 1 + rng.below(3) as usize,
        heartbeats: true,
    }
}

/// Whether an action is a fault or a break (left out in the calm).
fn is_fault(action: &Action) -> bool {
    matches!(
        action,
        Action::Closed { .. }
            | Action::SiteCrash { .. }
            | Action::HubCrash { .. }
            | Action::Lose(_)
            | Action::Repeat(_)
    )
}

/// How likely an action is picked, relative to others (faults are rarer than
/// ordinary steps).
fn weight(action: &Action) -> u64 {
    match action {
        Action::Deliver(_) => 40,
        Action::EventsCommitted { .. } | Action::CommandsCommitted { .. } => 20,
        Action::EventLogged { .. } => 10,
        Action::Opened { .. } => 10,
        Action::CommandIssued { .. } => 3,
        Action::Tick { .. } | Action::SiteTick { .. } => 2,
        Action::Closed { .. } => 2,
        Action::Lose(_) | Action::Repeat(_) => 2,
        Action::SiteCrash { .. } | Action::HubCrash { .. } => 1,
        Action::Wait { .. } => 5,
    }
}

const STORM_STEPS: usize = 400;
const CALM_STEPS: usize = 20_000;

/// One run; `Err` names the failure and the steps that led to it.
fn run(seed: u64, verbose: bool) -> Result<usize, String> {
    let mut rng = Rng(seed);
    let bounds = bounds(&mut rng);
    let mut world = World::new(bounds);
    let mut trace: Vec<String> = Vec::new();
    let mut actions = Vec::new();
    let mut steps = 0;
    let fail = |why: String, trace: &[String]| {
        let shown = trace.len().saturating_sub(60);
        Err(format!(
            "{why}\nbounds: {bounds:?}\nlast {} of {} steps:\n  {}",
            trace.len() - shown,
            trace.len(),
            trace[shown..].join("\n  ")
        ))
    };
    for calm in [false, true] {
        if calm {
            // The storm is over: every connection breaks once, then none again.
            let conns: Vec<u32> = world
                .sites
                .iter()
                .filter_map(|s| s.conn.map(|c| c.0))
                .collect();
            for conn in conns {
                world.step(Action::Closed { conn });
            }
        }
        let budget = if calm { CALM_STEPS } else { STORM_STEPS };
        for _ in 0..budget {
            if calm && world.settled() && world.sites.iter().all(|s| s.log == bounds.events) {
                if verbose {
                    eprintln!("{}", trace.join("\n"));
                }
                return Ok(steps);
            }
            actions.clear();
            world.actions(&mut actions);
            actions.push(Action::Wait {
                ms: 1 + rng.below(400),
            });
            if calm {
                actions.retain(|a| !is_fault(a));
            }
            let total: u64 = actions.iter().map(weight).sum();
            let mut pick = rng.below(total);
            let action = actions
                .iter()
                .find(|a| {
                    let w = weight(a);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .cloned()
                .expect("an action");
            trace.push(format!("{:>5} t={:>6} {action:?}", steps, world.now));
            world.step(action);
            steps += 1;
            if let Err(why) = world.check() {
                return fail(why, &trace);
            }
        }
    }
    fail(
        format!(
            "did not settle within {CALM_STEPS} calm steps: sites {:?}, hub {:?}",
            world
                .sites
                .iter()
                .map(|s| (s.log, s.acked, s.commands.len()))
                .collect::<Vec<_>>(),
            world
                .stored
                .iter()
                .map(|s| (s.events.len(), s.commands.len()))
                .collect::<Vec<_>>()
        ),
        &trace,
    )
}

#[test]
fn random_partitions_crashes_and_faults_lose_nothing_and_apply_nothing_twice() {
    if let Ok(seed) = std::env::var("CARREL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("CARREL_SIM_SEED is a number");
        match run(seed, true) {
            Ok(steps) => eprintln!("seed {seed}: settled after {steps} steps"),
            Err(why) => panic!("seed {seed}: {why}"),
        }
        return;
    }
    let seeds: u64 = std::env::var("CARREL_SIM_SEEDS")
        .ok()
        .map(|n| n.parse().expect("CARREL_SIM_SEEDS is a number"))
        .unwrap_or(3_000);
    let started = std::time::Instant::now();
    let mut steps = 0;
    for seed in 0..seeds {
        match run(seed, false) {
            Ok(n) => steps += n,
            Err(why) => panic!(
                "seed {seed} fails: {why}\n\nreplay it: CARREL_SIM_SEED={seed} cargo test -p carrel-proto --test link_simulation -- --nocapture"
            ),
        }
    }
    eprintln!(
        "link simulation: {seeds} seeds, {steps} steps, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
