//! The `carrel-site-agent` binary's command line: clear refusals, and the example
//! configuration in deploy/ parses.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_carrel-site-agent"))
}

#[test]
fn run_without_enrollment_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("agent.toml"),
        "hub = \"https://127.0.0.1:1\"\n",
    )
    .expect("config");
    let out = agent()
        .args(["run", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no enrolled site") && stderr.contains("carrel-site-agent enroll"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("agent.db").exists(),
        "nothing is created before the identity is checked"
    );
}

#[test]
fn malformed_token_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("site");
    // The token comes from a file, standard input or the environment, never an
    // argument (any user of the machine can read those in the process list).
    let out = agent()
        .args([
            "enroll",
            "--hub",
            "https://127.0.0.1:1",
            "--token",
            "hello",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("enroll");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = dir.path().join("token.txt");
    std::fs::write(&token, "hello\n").expect("token file");
    let out = agent()
        .args(["enroll", "--hub", "https://127.0.0.1:1", "--token-file"])
        .arg(&token)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("enroll");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed"));
    let out = agent()
        .args(["enroll", "--hub", "https://127.0.0.1:1", "--data-dir"])
        .arg(&data)
        .env("CARREL_ENROLLMENT_TOKEN", "hello")
        .output()
        .expect("enroll");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed"));
    assert!(!data.join("site.key").exists());
}

#[test]
fn example_config_parses_and_unknown_keys_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.example.toml");
    std::fs::copy(example, dir.path().join("agent.toml")).expect("copy example");
    let out = agent()
        .args(["run", "--dump-config", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = String::from_utf8_lossy(&out.stdout);
    assert!(
        dumped.contains("hub = \"https://hub.example.org:7443\""),
        "{dumped}"
    );

    std::fs::write(
        dir.path().join("agent.toml"),
        "hub = \"https://h:1\"\nheartbeat_timout_ms = 5\n",
    )
    .expect("config");
    let out = agent()
        .args(["run", "--dump-config", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("dump");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat_timout_ms"));
}

#[test]
fn check_config_validates_then_requires_enrollment_and_exits_2_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent.example.toml");
    std::fs::copy(example, dir.path().join("agent.toml")).expect("copy example");
    let check = || {
        agent()
            .args(["run", "--check-config", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("check")
    };
    // A valid configuration in a directory that holds no site yet.
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds no enrolled site"), "{stderr}");

    // An invalid value is named before enrollment is looked at.
    std::fs::write(
        dir.path().join("agent.toml"),
        "hub = \"https://h:1\"\nheartbeat_timeout_ms = 0\n",
    )
    .expect("config");
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("heartbeat"), "{stderr}");
    assert!(!stderr.contains("enrolled"), "{stderr}");
}

#[test]
fn check_config_exits_2_on_a_parse_error_and_checks_mappings_against_a_recipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recipe = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../hub/recipes/cd19-car-t.v1.toml"
    );
    let check = |extra: &[&str]| {
        agent()
            .args(["run", "--check-config", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("check")
    };
    // A file that does not parse is a configuration error like any other: exit 2.
    std::fs::write(
        dir.path().join("agent.toml"),
        "hub = \"https://h:1\"\n[[steps\n",
    )
    .expect("config");
    let out = check(&[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A SiLA 2 instrument that lists no features cannot hold the step's command.
    let sila = "[[instruments]]\nname = \"cps\"\nkind = \"sila2\"\naddress = \"127.0.0.1:1\"\ninsecure = true\n";
    std::fs::write(
        dir.path().join("agent.toml"),
        format!("hub = \"https://h:1\"\n{sila}[[steps]]\nstep = \"expansion\"\ninstrument = \"cps\"\ncommand = \"RunExpansion\"\n"),
    )
    .expect("config");
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lists no features"), "{stderr}");

    // Against the recipe: each misfit is named, all at once.
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "hub = \"https://h:1\"\n{sila}features = [\"org.carrel/bioprocess/CellExpansionController/v1\"]\n\
             [[steps]]\nstep = \"expansion\"\ninstrument = \"cps\"\ncommand = \"RunExpansion\"\n\
             qc = [{{ test = \"ip-viability\", result = \"Viability\", unit = \"fraction\" }}]\n\
             readings = [{{ parameter = \"temperature\", instrument = \"cps\", source = \"CurrentTemperature\", unit = \"degF\" }},\
             {{ parameter = \"stirring\", instrument = \"cps\", source = \"Stirring\", unit = \"rpm\" }}]\n\
             [[steps]]\nstep = \"expanson\"\ninstrument = \"cps\"\ncommand = \"RunExpansion\"\n"
        ),
    )
    .expect("config");
    let out = check(&["--recipe", recipe]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "reading \"temperature\" is in \"degF\"; recipe cd19-car-t v1 has it in \"degC\"",
        "reading \"stirring\" is not a parameter of step expansion",
        "QC test \"ip-viability\" is given in \"fraction\"",
        "step \"expanson\" is not a step",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(!stderr.contains("enrolled"), "{stderr}");
}
