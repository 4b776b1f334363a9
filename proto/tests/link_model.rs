//! The site link, model-checked with `stateright`: every interleaving of a small
//! world (`link_world`) up to the bounds below, with the properties checked on every
//! reachable state.
//!
//! The world drives the same [`carrel_proto::link`] ends the real link drives. Its
//! actions are the ends' inputs (a message delivered, a commit done, a stream opened
//! or closed, a timer) and faults (a crash of either side losing what was not
//! durable; the network losing or repeating a message, and delivering in any order).
//!
//! `cargo test -p carrel-proto --test link_model` checks the bounds CI can afford;
//! `CARREL_MODEL=wide cargo test --release -p carrel-proto --test link_model -- --nocapture`
//! explores a wider world (see the README).

mod link_world;

use carrel_proto::link::Limits;
use link_world::{Action, Bounds, World};
use stateright::{Checker, Model, Property};

struct LinkModel {
    bounds: Bounds,
}

impl Model for LinkModel {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        vec![World::new(self.bounds)]
    }

    fn actions(&self, state: &World, actions: &mut Vec<Action>) {
        let mut all = Vec::new();
        state.actions(&mut all);
        // Heartbeats and time change nothing the properties read here: a silent
        // link's end is the `Closed` action.
        actions.extend(
            all.into_iter()
                .filter(|a| !matches!(a, Action::SiteTick { .. } | Action::Wait { .. })),
        );
    }

    fn next_state(&self, state: &World, action: Action) -> Option<World> {
        let mut next = state.clone();
        next.step(action);
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("the properties hold (World::check)", |_, w: &World| {
                w.check().is_ok()
            }),
            // The world can get somewhere: everything recorded reaches the other side.
            Property::sometimes("everything reaches the other side", |_, w: &World| {
                w.settled() && w.sites.iter().all(|s| s.log == w.bounds.events)
            }),
        ]
    }
}

/// The bounds checked on every `cargo test`, and a wider world on request.
fn bounds() -> Bounds {
    let limits = Limits {
        window: 2,
        per_message: 1,
        silence_ms: 1_000,
    };
    let small = Bounds {
        sites: 1,
        replicas: 2,
        events: 2,
        commands: 2,
        connections: 2,
        site_crashes: 1,
        hub_crashes: 1,
        losses: 1,
        repeats: 1,
        in_flight: 3,
        limits,
        commands_per_message: 1,
        heartbeats: false,
    };
    match std::env::var("CARREL_MODEL").as_deref() {
        Ok("wide") => Bounds {
            events: 3,
            connections: 3,
            in_flight: 4,
            limits: Limits {
                per_message: 2,
                ..limits
            },
            ..small
        },
        _ => small,
    }
}

#[test]
fn the_site_link_keeps_its_properties_in_every_reachable_state() {
    let bounds = bounds();
    let started = std::time::Instant::now();
    let checker = LinkModel { bounds }
        .checker()
        .threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .spawn_bfs()
        .join();
    eprintln!(
        "link model: {} states ({} unique), depth {}, {:.1} s, bounds {bounds:?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = checker.discovery("the properties hold (World::check)") {
        let last = path.last_state().clone();
        let mut trace = String::new();
        for (_, action) in path.into_vec() {
            if let Some(action) = action {
                trace.push_str(&format!("  {action:?}\n"));
            }
        }
        panic!(
            "a property fails: {}\ncounterexample ({} steps):\n{trace}",
            last.check().expect_err("the failing state"),
            trace.lines().count()
        );
    }
    assert!(
        checker
            .discovery("everything reaches the other side")
            .is_some(),
        "no state where everything reached the other side: the model does not get anywhere"
    );
    assert!(
        checker.unique_state_count() > 1_000,
        "the model explored too little"
    );
}
