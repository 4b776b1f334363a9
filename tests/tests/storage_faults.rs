//! Storage faults: a site agent whose disk fills up in the middle of a batch, and a
//! hub whose database is damaged or cannot be read.
//!
//! The agent's disk is a small ext4 file system of the test's own, loop-mounted
//! (a tmpfs would not do: it ignores fsync). That needs root, as in CI.

use carrel_tests::scenario::*;
use carrel_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A small ext4 file system in an image file, mounted for the test, unmounted and
/// deleted on drop.
struct LoopDisk {
    /// Holds the image and the mount point; removed after unmounting.
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LoopDisk {
    fn new(megabytes: u32) -> LoopDisk {
        let dir = tempfile::Builder::new()
            .prefix("carrel-disk-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        let image_text = image.to_str().expect("utf-8 path");
        run("truncate", &["-s", &format!("{megabytes}M"), image_text]);
        // No blocks reserved for root: the agent runs as root here, and "full"
        // should mean full.
        run("mkfs.ext4", &["-q", "-m", "0", image_text]);
        let mounted = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .output()
            .expect("mount");
        assert!(
            mounted.status.success(),
            "this test mounts a small ext4 image (it needs root and a loop device): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        LoopDisk { _dir: dir, mount }
    }

    fn path(&self) -> &Path {
        &self.mount
    }

    /// Bytes free on the file system.
    fn free(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %S"])
            .arg(&self.mount)
            .output()
            .expect("stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text
            .split_whitespace()
            .map(|p| p.parse::<u64>().expect("a number"));
        let (blocks, size) = (
            parts.next().expect("blocks"),
            parts.next().expect("block size"),
        );
        blocks * size
    }

    /// Fills the file system until at most `leave` bytes are free.
    fn fill(&self, leave: u64) {
        for n in 0.. {
            let free = self.free();
            if free <= leave {
                return;
            }
            let filler = self.mount.join(format!("filler-{n}"));
            let size = (free - leave).max(4096);
            let done = Command::new("fallocate")
                .args(["-l", &size.to_string()])
                .arg(&filler)
                .output()
                .expect("fallocate");
            if !done.status.success() {
                // Not that much room after all (metadata): take what is left in blocks.
                let _ = Command::new("dd")
                    .args(["if=/dev/zero", "bs=4096", "status=none"])
                    .arg(format!("of={}", filler.display()))
                    .arg(format!("count={}", size / 4096))
                    .status();
                if leave == 0 && self.free() > 0 {
                    continue;
                }
                return;
            }
        }
    }

    /// Deletes what [`LoopDisk::fill`] wrote.
    fn free_all(&self) {
        for entry in std::fs::read_dir(&self.mount).expect("read mount") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("filler-"))
            {
                std::fs::remove_file(&path).expect("remove filler");
            }
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        if self.mount.join("lost+found").exists() {
            // Still busy: detach it now, it goes when the last user does.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

const MIB: u64 = 1024 * 1024;

async fn started_steps(db: &sqlx::SqlitePool) -> i64 {
    count(
        db,
        "SELECT COUNT(*) FROM events WHERE kind = 'step_started'",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_at_a_site_refuses_new_steps_loudly_and_loses_nothing_recorded() {
    let disk = LoopDisk::new(64);
    let hub = Hub::start().await;
    add_people(&hub);
    let token = hub.add_site("site-s");
    // About 30 s of manufacturing; the expansion step alone takes 20 s.
    let mut agent = Agent::enroll_in(&hub, "site-s", &token, disk.path())
        .expect("enroll")
        .with_time_compression(30_000.0);
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-s", "P-7001");
    let db = agent.db().await;
    wait_step_running(&db, &batch_id, "expansion", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The disk fills up in the middle of a step.
    disk.fill(0);
    assert_eq!(disk.free(), 0);
    let full = "DISK FULL: cannot record";
    let noticed = wait_log(
        "the agent",
        || agent.log(),
        full,
        0,
        Duration::from_secs(30),
    )
    .await;
    let recorded_before = agent_events(&db).await;
    let line = agent
        .log()
        .lines()
        .find(|l| l.contains(full))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("disk is full") && line.contains("retries every second"),
        "the agent says what is wrong and what it does: {line}"
    );
    // While full, the batch records nothing more and starts no step; what was
    // recorded before still reaches the hub.
    let hub_db = hub.db().await;
    eventually(
        Duration::from_secs(10),
        "the hub to hold what the site recorded",
        || {
            let hub_db = hub_db.clone();
            let want = recorded_before.len() as i64;
            async move { (hub_acked(&hub_db, "site-s").await == want).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        agent_events(&db).await,
        recorded_before,
        "nothing is written, and nothing written is changed, while the disk is full"
    );

    // Space freed: the batch goes on by itself, no restart needed.
    disk.free_all();
    wait_log(
        "the agent",
        || agent.log(),
        "disk space freed: recording again",
        0,
        Duration::from_secs(10),
    )
    .await;
    eventually(Duration::from_secs(10), "the batch to record again", || {
        let db = db.clone();
        let before = recorded_before.len() as i64;
        async move { (last_seq(&db).await > before + 2).then_some(()) }
    })
    .await;

    // Full again, and then the power goes with the disk still full.
    disk.fill(0);
    wait_log(
        "the agent",
        || agent.log(),
        full,
        1,
        Duration::from_secs(30),
    )
    .await;
    let recorded_before = agent_events(&db).await;
    println!(
        "disk full noticed {noticed:?} after filling; {} events recorded before the second fill",
        recorded_before.len()
    );
    db.close().await;
    agent.kill();

    // Some space comes back, but less than a new step needs.
    disk.free_all();
    disk.fill(2 * MIB);
    assert!(disk.free() < carrel_site_agent::executor::MIN_FREE_BYTES_TO_START_STEP);
    let refused = "DISK NEARLY FULL: refusing to start a new step";
    agent.start();
    let db = agent.db().await;
    let after_restart = agent_events(&db).await;
    assert_eq!(
        &after_restart[..recorded_before.len()],
        &recorded_before[..],
        "everything recorded before the disk filled up survived the crash"
    );
    // The interrupted step goes on being recorded (its cells are in the process),
    // and the next step is refused until there is room.
    wait_log(
        "the agent",
        || agent.log(),
        refused,
        0,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        !step_running(&db, &batch_id, "expansion").await,
        "the step under way was recorded to its end"
    );
    let steps = started_steps(&db).await;
    let seq = last_seq(&db).await;
    // 3 s is 25 process hours here: the harvest and formulation steps would start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        started_steps(&db).await,
        steps,
        "no new step started without room"
    );
    assert_eq!(last_seq(&db).await, seq, "the batch waits");
    let refusal = agent
        .log()
        .lines()
        .find(|l| l.contains(refused))
        .unwrap_or_default()
        .to_owned();
    assert!(
        refusal.contains("step=harvest") && refusal.contains("free_bytes="),
        "the refusal names the step and the space left: {refusal}"
    );

    // Space freed: the batch goes on by itself, and everything reaches the hub.
    disk.free_all();
    wait_log(
        "the agent",
        || agent.log(),
        "disk space freed: starting the step",
        0,
        Duration::from_secs(10),
    )
    .await;
    wait_order_state(&hub, &order_id, "awaiting_release", Duration::from_secs(60)).await;
    let moved = assert_hub_has_the_site_log(&hub, &agent, Duration::from_secs(30)).await;
    let site_log = agent_events(&db).await;
    assert_eq!(&site_log[..recorded_before.len()], &recorded_before[..]);
    let restart_deviations = count(
        &db,
        "SELECT COUNT(*) FROM events WHERE kind = 'deviation_raised' AND json_extract(body, '$.kind.deviation_id') LIKE '%expansion-RESTART'",
    )
    .await;
    assert_eq!(
        restart_deviations, 1,
        "the interrupted step is on the record"
    );
    println!(
        "disk full at the site: {} events kept through the fault and a crash, {moved} events checked at the hub, nothing lost",
        recorded_before.len()
    );
}

/// Runs `carrel-hub serve` with `env` and waits up to 30 s for it to exit non-zero;
/// returns what it printed. Fails if it is still running then, or, unless
/// `may_bind`, as soon as it binds its port.
fn serve_until_it_stops(hub: &Hub, env: &[(&str, &str)], may_bind: bool) -> String {
    let _ = std::fs::remove_file(hub.data_dir().join("hub.addr"));
    let mut child = Command::new(binary("carrel-hub"))
        .args(["serve", "--config"])
        .arg(hub.config_path())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start carrel-hub");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        let bound = hub.data_dir().join("hub.addr").exists();
        if Instant::now() > deadline || (bound && !may_bind) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "carrel-hub served on a bad database:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !status.success(),
        "carrel-hub serve must exit non-zero:\n{text}"
    );
    text
}

/// Runs `carrel-hub serve` and waits for it to exit (failing if it serves instead).
fn serve_must_refuse(hub: &Hub) -> String {
    let text = serve_until_it_stops(hub, &[], false);
    assert!(
        !hub.data_dir().join("hub.addr").exists(),
        "the hub never bound its port"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_database_that_is_damaged_or_unreadable_stops_the_hub_with_a_clear_message() {
    let mut hub = Hub::start().await;
    add_people(&hub);
    for i in 0..40 {
        hub.add_site(&format!("site-{i:02}"));
    }
    // Stopped, and everything moved from the write-ahead log into the database
    // file itself, so that damaging the file damages what the hub would read.
    hub.stop();
    let db_path = hub.data_dir().join("hub.db");
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(&db_path),
    )
    .await
    .expect("open hub.db");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .expect("checkpoint");
    pool.close().await;
    let wal = hub.data_dir().join("hub.db-wal");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    let good = std::fs::read(&db_path).expect("hub.db");
    let page = 4096;
    assert!(good.len() >= 8 * page, "a database of {} bytes", good.len());

    // 1. One damaged page in the middle of the file.
    let mut damaged = good.clone();
    let at = (good.len() / page / 2) * page;
    for (i, byte) in damaged[at..at + page].iter_mut().enumerate() {
        *byte = (i * 7 + 13) as u8;
    }
    std::fs::write(&db_path, &damaged).expect("damage a page");
    let said = serve_must_refuse(&hub);
    assert!(
        said.contains("opening the hub database")
            && (said.contains("integrity check failed") || said.contains("malformed")),
        "the hub says its database is damaged:\n{said}"
    );
    assert_eq!(
        std::fs::read(&db_path).expect("hub.db"),
        damaged,
        "the hub left the damaged file as it was"
    );

    // 2. Not a database at all (the start of the file overwritten).
    let mut garbage = good.clone();
    garbage[..100].copy_from_slice(&[0x5a; 100]);
    std::fs::write(&db_path, &garbage).expect("overwrite the header");
    let said = serve_must_refuse(&hub);
    assert!(
        said.contains("opening the hub database") && said.contains("not a database"),
        "the hub says the file is not a database:\n{said}"
    );
    assert_eq!(std::fs::read(&db_path).expect("hub.db"), garbage);

    // 3. Cannot be read at all (root reads any file, so: a directory in its place).
    std::fs::remove_file(&db_path).expect("remove");
    std::fs::create_dir(&db_path).expect("a directory where the file was");
    let said = serve_must_refuse(&hub);
    assert!(
        said.contains("opening the hub database") && said.contains("unable to open"),
        "the hub says it cannot open its database:\n{said}"
    );
    std::fs::remove_dir(&db_path).expect("remove the directory");

    // The same database, undamaged, serves again with everything in it.
    std::fs::write(&db_path, &good).expect("restore");
    hub.restart().await;
    let sites: i64 = count(&hub.db().await, "SELECT COUNT(*) FROM sites").await;
    assert_eq!(sites, 40);
    println!(
        "3 bad hub databases refused at start, each with its own message; the good one served"
    );
}

/// A hub whose database is bigger than `sqlite_check_before_serving_mib` checks
/// every table but the site event log before it serves, and the whole file right
/// after: a damaged page of the log is found then, and stops the hub. The same file
/// under the default limit is refused before the hub serves at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_event_log_in_a_big_database_stops_the_hub_once_it_serves() {
    let mut hub = Hub::start().await;
    hub.add_site("site-a");
    hub.stop();
    let db_path = hub.data_dir().join("hub.db");
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(&db_path),
    )
    .await
    .expect("open hub.db");
    // Enough of a log to take pages of its own (the hub checks rows as they come;
    // here only the pages matter).
    for seq in 1..=400i64 {
        sqlx::query(
            "INSERT INTO site_events (site_id, seq, event_id, batch_id, kind, recorded_at, received_at, body, sha256) \
             VALUES ('site-a', ?, ?, ?, 'step_completed', '2026-11-27T00:00:00Z', '2026-11-27T00:00:00Z', ?, ?)",
        )
        .bind(seq)
        .bind(format!("00000000-0000-7000-8000-{seq:012}"))
        .bind("00000000-0000-7000-8000-000000000001")
        .bind("x".repeat(600))
        .bind("0".repeat(64))
        .execute(&pool)
        .await
        .expect("insert a log row");
    }
    let root: i64 =
        sqlx::query_scalar("SELECT rootpage FROM sqlite_schema WHERE name = 'site_events'")
            .fetch_one(&pool)
            .await
            .expect("the log's root page");
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .expect("checkpoint");
    pool.close().await;
    let mut file = std::fs::read(&db_path).expect("hub.db");
    let page = 4096;
    let at = (root as usize - 1) * page;
    for (i, byte) in file[at..at + page].iter_mut().enumerate() {
        *byte = (i * 7 + 13) as u8;
    }
    std::fs::write(&db_path, &file).expect("damage the log's root page");

    // Under the default limit: refused before serving.
    let said = serve_must_refuse(&hub);
    assert!(
        said.contains("integrity check failed") || said.contains("malformed"),
        "the hub says its database is damaged:\n{said}"
    );

    // Over the limit (0 MiB): the hub starts, and the check of the whole file stops
    // it. On a file this small the check may finish before the hub is done starting;
    // then it stops before it serves, which is as good.
    let text = serve_until_it_stops(
        &hub,
        &[("CARREL_HUB_SQLITE_CHECK_BEFORE_SERVING_MIB", "0")],
        true,
    );
    assert!(
        text.contains("all but the site event log checked")
            && text.contains("database integrity check failed"),
        "the hub says what it checked, and why it stopped:\n{text}"
    );
}

/// strace attached to a running process, making every fsync and fdatasync of it
/// fail with EIO, as a failing disk would. Detached (strace killed) on drop.
struct FsyncFaults {
    child: std::process::Child,
    /// What strace traced: one line per failed call.
    trace: PathBuf,
}

impl FsyncFaults {
    /// Attaches to every thread of `pid`; an error says why strace cannot.
    fn inject(pid: u32, dir: &Path) -> Result<FsyncFaults, String> {
        let trace = dir.join("strace.out");
        let said = dir.join("strace.err");
        let mut child = Command::new("strace")
            .args(["-f", "-p", &pid.to_string()])
            .args(["-e", "trace=fsync,fdatasync"])
            .args(["-e", "inject=fsync,fdatasync:error=EIO"])
            .arg("-o")
            .arg(&trace)
            .stderr(std::fs::File::create(&said).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("strace cannot run ({e}); install the Debian package strace"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&said).unwrap_or_default();
            if text.contains("attached") {
                return Ok(FsyncFaults { child, trace });
            }
            if let Some(status) = child.try_wait().ok().flatten() {
                return Err(format!("strace exited with {status}: {}", text.trim()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "strace did not attach within 10 s: {}",
                    text.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The calls made to fail so far.
    fn injected(&self) -> usize {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("(INJECTED)"))
            .count()
    }
}

impl Drop for FsyncFaults {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's own note of what the hub acknowledged.
async fn agent_acked(agent_db: &sqlx::SqlitePool) -> i64 {
    count(agent_db, "SELECT hub_acked_event_seq FROM link_state").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_whose_fsync_fails_acknowledges_nothing_it_did_not_keep_and_stops() {
    let mut hub = Hub::start().await;
    add_people(&hub);
    let token = hub.add_site("site-s");
    let mut agent = Agent::enroll(&hub, "site-s", &token)
        .expect("enroll")
        .with_time_compression(40_000.0);
    agent.start();
    let (order_id, batch_id) = create_order(&hub, "site-s", "P-9601");
    let agent_db = agent.db().await;
    let hub_db = hub.db().await;
    wait_step_running(&agent_db, &batch_id, "expansion", Duration::from_secs(60)).await;
    eventually(Duration::from_secs(30), "the hub to keep up", || {
        let (agent_db, hub_db) = (agent_db.clone(), hub_db.clone());
        async move {
            let last = last_seq(&agent_db).await;
            (hub_acked(&hub_db, "site-s").await + 3 >= last).then_some(())
        }
    })
    .await;

    // From now on every fsync of the hub fails.
    let scratch = tempfile::tempdir().expect("tempdir");
    let faults = match FsyncFaults::inject(hub.pid().expect("running"), scratch.path()) {
        Ok(faults) => faults,
        Err(why) if std::env::var("CI").as_deref() != Ok("true") => {
            println!("SKIPPED: strace cannot inject fsync failures here: {why}");
            return;
        }
        Err(why) => panic!("strace cannot inject fsync failures (in CI it must): {why}"),
    };
    let acked_at_injection = hub_acked(&hub_db, "site-s").await;
    let recorded_at_injection = last_seq(&agent_db).await;

    // The first commit whose fsync fails stops the hub, saying why.
    let status = hub
        .wait_exit(Duration::from_secs(30))
        .expect("the hub stops when a commit cannot be made durable");
    assert!(!status.success(), "the hub exits with an error: {status}");
    let injected = faults.injected();
    drop(faults);
    assert!(injected >= 1, "strace made no fsync fail");
    let log = hub.log();
    assert!(
        log.contains("the hub's store failed") && log.contains("(code: 1034) disk I/O error"),
        "the hub says its store failed at an fsync (SQLITE_IOERR_FSYNC = 1034):\n{log}"
    );
    assert!(
        log.contains("stopping the hub because its store failed"),
        "{log}"
    );
    assert!(
        log.contains("stopped because the hub's store failed"),
        "the exit status says why:\n{log}"
    );
    // What the hub holds is what it acknowledged, and the site knows no more than that.
    let hub_rows = count(
        &hub_db,
        "SELECT COALESCE(MAX(seq), 0) FROM site_events WHERE site_id = 'site-s'",
    )
    .await;
    let hub_cursor = hub_acked(&hub_db, "site-s").await;
    hub_db.close().await;
    assert_eq!(hub_rows, hub_cursor);
    let site_acked = agent_acked(&agent_db).await;
    assert!(
        site_acked <= hub_rows,
        "the site holds an acknowledgement of event {site_acked}, but the hub kept only {hub_rows}"
    );
    // The site went on recording; what the hub failed to keep waits at the site.
    eventually(Duration::from_secs(30), "the site to record more", || {
        let db = agent_db.clone();
        async move { (last_seq(&db).await > recorded_at_injection + 3).then_some(()) }
    })
    .await;
    let status_text = String::from_utf8_lossy(&agent.cli(&["status"], "").stdout).into_owned();
    let last = last_seq(&agent_db).await;
    let acked = agent_acked(&agent_db).await;
    assert!(acked <= hub_rows && last > hub_rows);
    assert!(
        status_text.contains(&format!("{acked} acknowledged by the hub")),
        "{status_text}"
    );
    // The site was told why its events were not acknowledged.
    let told = agent
        .log()
        .lines()
        .filter(|l| l.contains("link to the hub lost") && l.contains("the hub's store failed"))
        .count();
    assert!(told >= 1, "the agent logs the hub's error");
    println!(
        "fsync failing: {injected} fsync calls failed (EIO); hub stopped ({status}); hub had acknowledged {acked_at_injection} at injection, \
         kept {hub_rows}; site acked {acked}, recorded {last}; {told} agent log lines carry the hub's error; agent status: {}",
        status_text.lines().next().unwrap_or_default()
    );

    // Started again on a working disk, the hub recovers what it committed, and
    // every event arrives exactly once, in order.
    hub.restart().await;
    wait_order_state(
        &hub,
        &order_id,
        "awaiting_release",
        Duration::from_secs(120),
    )
    .await;
    let moved = assert_hub_has_the_site_log(&hub, &agent, Duration::from_secs(30)).await;
    println!("after the restart: {moved} events at the hub, once each, in order");
}
