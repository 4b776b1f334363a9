//! Carrel's process statistics against SciPy's, computed independently: Welch's
//! t-test and its interval, the Mann-Whitney U test, the Jarque-Bera test, and the
//! capability indices (written out in NumPy from their definitions in
//! tests/peers/stats.py). Groups of many shapes: normal, skewed, with ties, small.

use carrel_hub::model::analytics::{capability, compare};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// A group of `n` values of the given shape.
fn group(rng: &mut StdRng, shape: &str, n: usize, shift: f64) -> Vec<f64> {
    let normal = |rng: &mut StdRng| {
        // Box-Muller: two uniforms make one standard normal draw.
        let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen_range(0.0..1.0));
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    (0..n)
        .map(|_| {
            let z = normal(rng);
            match shape {
                "normal" => 72.0 + shift + 4.0 * z,
                "skewed" => 20.0 + shift + (0.8 * z).exp() * 5.0,
                // Results reported to whole percent: many ties.
                "ties" => (85.0 + shift + 3.0 * z).round(),
                _ => unreachable!("shape {shape}"),
            }
        })
        .collect()
}

fn close(what: &str, ours: f64, theirs: f64) {
    let tolerance = 1e-9 * theirs.abs().max(1.0);
    assert!(
        (ours - theirs).abs() <= tolerance.max(1e-12),
        "{what}: Carrel {ours}, SciPy {theirs}"
    );
}

#[test]
fn statistics_match_scipy() {
    let Some(python) = carrel_tests::peers::python() else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(2026);
    let mut cases = Vec::new();
    for (shape, n_a, n_b, shift) in [
        ("normal", 30, 120, 0.0),
        ("normal", 12, 40, 3.0),
        ("skewed", 25, 90, 0.0),
        ("skewed", 40, 40, 2.0),
        ("ties", 20, 80, 0.0),
        ("ties", 8, 15, 1.0),
        ("normal", 5, 6, -2.0),
    ] {
        let a = group(&mut rng, shape, n_a, shift);
        let b = group(&mut rng, shape, n_b, 0.0);
        cases.push((a, b, Some(60.0), Some(95.0)));
    }
    // A one-sided specification (viability >= 70 %).
    let a = group(&mut rng, "normal", 50, 10.0);
    let b = group(&mut rng, "normal", 60, 8.0);
    cases.push((a, b, Some(70.0), None));

    let request = json!({
        "cases": cases.iter().map(|(a, b, lower, upper)| json!({
            "a": a, "b": b, "lower": lower, "upper": upper, "confidence": 0.95,
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python)
        .arg(carrel_tests::peers::peers_dir().join("stats.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/peers/stats.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write request");
    let out = child.wait_with_output().expect("stats.py");
    assert!(
        out.status.success(),
        "stats.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON from stats.py");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), cases.len());

    for (i, ((a, b, lower, upper), theirs)) in cases.iter().zip(results).enumerate() {
        let f = |v: &Value| v.as_f64().expect("number");
        let w = compare::welch(a, b, 0.95).expect("welch");
        close(&format!("case {i} Welch t"), w.t, f(&theirs["welch"]["t"]));
        close(
            &format!("case {i} Welch df"),
            w.df,
            f(&theirs["welch"]["df"]),
        );
        close(&format!("case {i} Welch p"), w.p, f(&theirs["welch"]["p"]));
        close(
            &format!("case {i} Welch low"),
            w.low,
            f(&theirs["welch"]["low"]),
        );
        close(
            &format!("case {i} Welch high"),
            w.high,
            f(&theirs["welch"]["high"]),
        );
        let m = compare::mann_whitney(a, b).expect("mann-whitney");
        close(&format!("case {i} U"), m.u, f(&theirs["mann_whitney"]["u"]));
        close(
            &format!("case {i} U p"),
            m.p,
            f(&theirs["mann_whitney"]["p"]),
        );
        for (g, values) in [a, b].iter().enumerate() {
            let (jb, p) = compare::jarque_bera(values).expect("jarque-bera");
            close(
                &format!("case {i} JB {g}"),
                jb,
                f(&theirs["jarque_bera"][g][0]),
            );
            close(
                &format!("case {i} JB p {g}"),
                p,
                f(&theirs["jarque_bera"][g][1]),
            );
        }
        let c = capability::capability(
            a,
            capability::Spec {
                lower: *lower,
                upper: *upper,
            },
            0.95,
        )
        .expect("capability");
        for (name, ours) in [("cpk", c.cpk), ("ppk", c.ppk)] {
            let t = &theirs["capability"][name];
            close(&format!("case {i} {name}"), ours.value, f(&t["value"]));
            close(&format!("case {i} {name} low"), ours.low, f(&t["low"]));
            close(&format!("case {i} {name} high"), ours.high, f(&t["high"]));
        }
    }
    // The skewed groups are the ones judged not normal, and compared by Mann-Whitney.
    let skewed = compare::compare(&cases[2].0, &cases[2].1, 0.95).expect("compare");
    assert_eq!(skewed.test, compare::Test::MannWhitney);
    let normal = compare::compare(&cases[0].0, &cases[0].1, 0.95).expect("compare");
    assert_eq!(normal.test, compare::Test::Welch);
}
