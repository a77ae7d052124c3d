//! Issue 20 §3 and §4 against the real binary and PostgreSQL 15: hosts that follow a control
//! plane (`trellis serve --control`), `trellis publish --wait`, `trellis fleet status` and
//! `GET /v1/fleet`.
//!
//! - Three hosts serve while twenty generations are published, with clients going round them:
//!   no request fails, every answer names one generation and carries exactly that
//!   generation's workflow, a host's generations never go backwards, and all converge. Meanwhile
//!   one host is killed and restarted (it is at the newest generation before it serves), and
//!   every connection to the control database is cut (the hosts keep serving, reconnect and
//!   resync).
//! - A generation one host cannot load (a Python plugin over that host's memory cap) blocks
//!   `publish --wait`, which names the host and why; `fleet status` shows it, and the fleet keeps
//!   serving the active generation. The next `--wait` activates on every host together, and the
//!   activation skew is measured.
//! - A forged notice moves no host: what serves is read from the tables.
//! - A blob altered in the database is refused by every host, which keeps the last good
//!   generation.
//!
//! On 863c270 there was no `serve --control`, `publish --wait` or `fleet status`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use trellis_tests::{
    Server, drop_postgres_database, fresh_postgres_database, run_stamp, run_trellis, stamp_bundle,
    stamp_workflow,
};

fn workflow(marker: u32) -> String {
    stamp_workflow(marker.into())
}

/// A host's (and the publisher's) folder: `trellis.toml` with dev auth, fast heartbeats and
/// the shared data directory `data` (the plugin compile cache and the blob cache), plus
/// `extra`.
fn host_dir(data: &Path, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        format!(
            "[auth]\nmode = \"dev\"\n[paths]\ndata = \"{}\"\n\
             [control]\nheartbeat_interval = \"200ms\"\npoll_interval = \"1s\"\n{extra}",
            data.display()
        ),
    )
    .unwrap();
    dir
}

fn bundle(dir: &Path, marker: u32) -> PathBuf {
    stamp_bundle(dir, marker.into())
}

fn publish(dir: &Path, bundle: &Path, url: &str, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["publish", bundle.to_str().unwrap(), "--to", url];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = run_trellis(dir, &args, Duration::from_secs(180));
    (status.success(), stdout, stderr)
}

const USER: &str = r#"{"user_id": "u"}"#;

async fn run(client: &reqwest::Client, base: &str) -> (u16, Option<u64>, Option<u64>) {
    run_stamp(client, base).await
}

/// Answers one client saw, in order: the host, the status, the generation, the marker.
type Seen = Vec<(String, u16, Option<u64>, Option<u64>)>;

/// Runs `w` round-robin on the hosts in `hosts` (starting at the `first`), as a load balancer
/// would, until `stop`.
fn client(
    hosts: Arc<Mutex<Vec<String>>>,
    first: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut seen = Vec::new();
        let mut next = first;
        while !stop.load(Ordering::Relaxed) {
            let base = {
                let hosts = hosts.lock().unwrap();
                next = (next + 1) % hosts.len();
                hosts[next].clone()
            };
            let (status, generation, marker) = run(&client, &base).await;
            seen.push((base, status, generation, marker));
        }
        seen
    })
}

/// Checks one client's answers: all 200, generation = marker, and on each host never
/// backwards.
fn check(client: usize, seen: &Seen) {
    assert!(!seen.is_empty(), "client {client}: no answers");
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for (i, (host, status, generation, marker)) in seen.iter().enumerate() {
        assert_eq!(
            *status, 200,
            "client {client}: answer {i} from {host} failed"
        );
        let generation =
            generation.unwrap_or_else(|| panic!("client {client}: answer {i} names no generation"));
        assert_eq!(
            Some(generation),
            *marker,
            "client {client}: answer {i} from {host} ran another generation's workflow"
        );
        let before = last.insert(host, generation).unwrap_or(0);
        assert!(
            generation >= before,
            "{host} went back from {before} to {generation}"
        );
    }
}

async fn fleet_json(server: &Server) -> Value {
    server
        .get_json("/v1/fleet", Some(&serde_json::from_str(USER).unwrap()))
        .await
}

/// Waits until every server answers with `generation`.
async fn converge(servers: &[&Server], generation: u64) {
    let client = reqwest::Client::new();
    for server in servers {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, g, _) = run(&client, &server.base_url()).await;
            if g == Some(generation) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} stayed at {g:?}, not {generation}",
                server.base_url()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_follow_twenty_publishes_under_load() {
    let Some((name, url)) = fresh_postgres_database("fleet").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let dir = host_dir(data.path(), "");
    let b = bundle(dir.path(), 1);
    let (ok, out, err) = publish(dir.path(), &b, &url, &[]);
    assert!(ok, "{out}\n{err}");

    // Started after the publish: each serves generation 1 from its first answer.
    let control = ["--control", url.as_str()];
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::start(dir.path(), &control))
        .collect();
    let client0 = reqwest::Client::new();
    for s in &servers {
        assert_eq!(run(&client0, &s.base_url()).await, (200, Some(1), Some(1)));
    }
    let mut servers: Vec<Option<Server>> = servers.into_iter().map(Some).collect();
    // Three clients, each going round the live hosts.
    let hosts = Arc::new(Mutex::new(
        servers
            .iter()
            .flatten()
            .map(Server::base_url)
            .collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|i| client(hosts.clone(), i, stop.clone()))
        .collect();

    for marker in 2..=21u32 {
        std::fs::write(b.join("workflows/w.toml"), workflow(marker)).unwrap();
        if marker == 6 {
            // Killed while a publish is under way, once the balancer no longer sends it
            // requests (those under way finish first).
            let gone = servers[2].as_ref().unwrap().base_url();
            hosts.lock().unwrap().retain(|h| *h != gone);
            let (d, bundle, to) = (dir.path().to_owned(), b.clone(), url.clone());
            let publishing = tokio::task::spawn_blocking(move || publish(&d, &bundle, &to, &[]));
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(servers[2].take());
            let (ok, out, err) = publishing.await.unwrap();
            assert!(ok, "publish {marker}: {out}\n{err}");
        } else {
            let (ok, out, err) = publish(dir.path(), &b, &url, &[]);
            assert!(ok, "publish {marker}: {out}\n{err}");
            assert!(
                out.contains(&format!("published generation {marker} ")),
                "{out}"
            );
        }
        if marker == 10 {
            // Every connection to the control database cut (what the hosts see of a restart of
            // the shared server; tests/fleet_restart.rs restarts one of its own): the notices
            // of the next publish may be lost, and the hosts resync when back.
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            let cut: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            assert!(cut.len() >= 2, "the hosts' connections: {cut:?}");
            admin.close().await.unwrap();
        }
        if marker == 14 {
            // Restarted: the newest generation before it serves, then back behind the balancer.
            let back = Server::start(dir.path(), &control);
            assert_eq!(
                run(&client0, &back.base_url()).await,
                (200, Some(14), Some(14)),
                "the restarted host"
            );
            hosts.lock().unwrap().push(back.base_url());
            servers[2] = Some(back);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let live: Vec<&Server> = servers.iter().flatten().collect();
    converge(&live, 21).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = 0;
    let mut per_host: std::collections::HashMap<String, usize> = Default::default();
    for (i, handle) in clients.into_iter().enumerate() {
        let seen = handle.await.unwrap();
        check(i, &seen);
        answers += seen.len();
        for (host, ..) in &seen {
            *per_host.entry(host.clone()).or_default() += 1;
        }
    }
    assert!(answers > 60, "only {answers} answers");
    assert_eq!(per_host.len(), 4, "answers per host: {per_host:?}");

    // Every live host shows, as staged and serving 21.
    let fleet = fleet_json(live[0]).await;
    let hosts = fleet["hosts"].as_array().unwrap();
    let serving: Vec<&Value> = hosts.iter().filter(|h| h["live"] == true).collect();
    assert_eq!(serving.len(), 3, "{fleet:#}");
    for h in serving {
        assert_eq!(h["active"], 21, "{fleet:#}");
    }
    assert_eq!(fleet["active"], 21);
    assert_eq!(fleet["this_host"]["active"], 21);
    let (status, table, err) = run_trellis(
        dir.path(),
        &["fleet", "status", "--control", &url],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{err}");
    assert!(table.contains("active generation: 21"), "{table}");
    assert!(table.matches(" live ").count() >= 3, "{table}");

    drop(servers);
    drop_postgres_database(&name).await;
}

/// The heartbeat rows: (id, staged, active, activated_at_us, failed, last_error).
type Row = (
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

async fn rows(url: &str) -> Vec<Row> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let rows = sqlx::query_as(
        "SELECT id, staged, active, activated_at_us, failed, last_error FROM trellis_control.hosts ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_blocked_by_a_host_that_cannot_load_and_a_tampered_blob_is_refused() {
    let Some((name, url)) = fresh_postgres_database("fleet_wait").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    // The Python plugin needs about 12 MiB to start: 256 MiB here, 4 MiB on host C.
    let roomy = "[plugins.limits.py-stamp]\nmax_memory_bytes = 268435456\n";
    let dir = host_dir(data.path(), roomy);
    let tight = host_dir(
        data.path(),
        "[plugins.limits.py-stamp]\nmax_memory_bytes = 4194304\n",
    );
    let b = bundle(dir.path(), 1);
    let (ok, out, err) = publish(dir.path(), &b, &url, &[]);
    assert!(ok, "{out}\n{err}");
    let control = ["--control", url.as_str()];
    let a = Server::start(dir.path(), &control);
    let bb = Server::start(dir.path(), &control);
    let c = Server::start(tight.path(), &control);
    let servers = [&a, &bb, &c];
    converge(&servers, 1).await;
    // Every host live in the heartbeat table before `--wait` counts them.
    let mut live = 0;
    for _ in 0..500 {
        let fleet = fleet_json(&a).await;
        live = fleet["hosts"]
            .as_array()
            .map_or(0, |h| h.iter().filter(|h| h["live"] == true).count());
        if live == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live, 3);

    // Generation 2 holds a Python plugin host C cannot start: `--wait` names C and why, and
    // nothing switches.
    std::fs::copy(
        trellis_tests::repo().join("plugins/python/wasm/py_stamp.wasm"),
        b.join("plugins/py_stamp.wasm"),
    )
    .unwrap();
    std::fs::write(b.join("workflows/w.toml"), workflow(2)).unwrap();
    let (ok, out, err) = publish(dir.path(), &b, &url, &["--wait", "--timeout", "60s"]);
    assert!(
        !ok,
        "activated although host C cannot load it:\n{out}\n{:#?}",
        fleet_json(&a).await
    );
    assert!(
        err.contains("generation 2 was published but NOT activated"),
        "{err}"
    );
    assert!(err.contains("cannot load it"), "{err}");
    assert!(err.contains("memory"), "{err}");
    for s in servers {
        let (status, generation, _) = run(&reqwest::Client::new(), &s.base_url()).await;
        assert_eq!((status, generation), (200, Some(1)));
    }
    let (status, table, _) = run_trellis(
        dir.path(),
        &["fleet", "status", "--control", &url],
        Duration::from_secs(30),
    );
    assert!(status.success());
    assert!(table.contains("generation 2:"), "{table}");
    let staged: Vec<Option<i64>> = rows(&url).await.iter().map(|r| r.1).collect();
    assert_eq!(
        staged.iter().filter(|s| **s == Some(2)).count(),
        2,
        "{staged:?}"
    );

    // Without the plugin: every host stages generation 3, then all switch on one notice.
    std::fs::remove_file(b.join("plugins/py_stamp.wasm")).unwrap();
    std::fs::write(b.join("workflows/w.toml"), workflow(3)).unwrap();
    let (ok, out, err) = publish(dir.path(), &b, &url, &["--wait", "--timeout", "60s"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("generation 3 is active: staged by 3 live host(s)"),
        "{out}"
    );
    converge(&servers, 3).await;
    let switched: Vec<i64> = rows(&url)
        .await
        .iter()
        .filter(|r| r.2 == Some(3))
        .filter_map(|r| r.3)
        .collect();
    assert_eq!(switched.len(), 3);
    let skew_ms = (switched.iter().max().unwrap() - switched.iter().min().unwrap()) as f64 / 1e3;
    eprintln!("activation skew across 3 hosts: {skew_ms:.2} ms");
    assert!(skew_ms < 1000.0, "skew {skew_ms} ms");

    // A notice is only a wake-up: anyone who can connect may send one. A forged
    // `{"active":1}` rolls no host back (on 8fdb708 every host served generation 1 again).
    let mut forger = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_notify('trellis_generations', '{\"active\":1}')")
        .execute(&mut forger)
        .await
        .unwrap();
    forger.close().await.unwrap();
    let client = reqwest::Client::new();
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        for s in servers {
            let (status, generation, _) = run(&client, &s.base_url()).await;
            assert_eq!(
                (status, generation),
                (200, Some(3)),
                "a forged notice moved a host"
            );
        }
    }

    // A blob altered in the database: generation 4 names content that does not hash to its
    // name. Every host refuses it and keeps serving 3.
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let honest = workflow(4);
    let sha = sha256_hex(honest.as_bytes());
    sqlx::query("INSERT INTO trellis_control.blobs (sha256, size, content) VALUES ($1, $2, $3)")
        .bind(&sha)
        .bind(honest.len() as i64)
        .bind(workflow(666).into_bytes())
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO trellis_control.generations (id, manifest, published_by) \
         SELECT 4, jsonb_set(manifest, '{files,workflows/w.toml}', \
         jsonb_build_object('sha256', $1::text, 'size', $2::bigint)), 'mallory' \
         FROM trellis_control.generations WHERE id = 3",
    )
    .bind(&sha)
    .bind(honest.len() as i64)
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    let (status, out, err) = run_trellis(
        dir.path(),
        &["publish", "--to", &url, "--activate", "4"],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{out}\n{err}");
    let mut refused = false;
    for _ in 0..500 {
        let rows = rows(&url).await;
        refused = rows.len() == 3
            && rows.iter().all(|r| {
                r.4 == Some(4)
                    && r.5
                        .as_deref()
                        .is_some_and(|e| e.contains("does not match its SHA-256"))
            });
        if refused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "{:?}", rows(&url).await);
    for s in servers {
        let (status, generation, marker) = run(&reqwest::Client::new(), &s.base_url()).await;
        assert_eq!((status, generation, marker), (200, Some(3), Some(3)));
    }
    // A refused generation is not fetched and checked again on every poll (1 s here): the
    // bundle cannot change.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (_, log) = a.wait(Duration::from_secs(30));
    let tries = log
        .lines()
        .filter(|l| l.contains("generation not loaded") && l.contains("generation=4"))
        .count();
    assert_eq!(tries, 1, "{log}");
    drop((bb, c));
    drop_postgres_database(&name).await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Two hosts given one `[control] host_id`: the row stays the first one's (the second cannot
/// overwrite a live host's heartbeat, and says why in its log), and the first one's stop
/// removes only its own row. A host that follows no control plane answers `GET /v1/fleet`
/// with 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_id_is_one_live_host() {
    let Some((name, url)) = fresh_postgres_database("fleet_ids").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let dir = host_dir(data.path(), "host_id = \"web-1\"\n");
    let b = bundle(dir.path(), 1);
    let (ok, out, err) = publish(dir.path(), &b, &url, &[]);
    assert!(ok, "{out}\n{err}");
    let control = ["--control", url.as_str()];
    let first = Server::start(dir.path(), &control);
    converge(&[&first], 1).await;
    let second = Server::start(dir.path(), &control);
    converge(&[&second], 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let address = |fleet: &Value| {
        fleet["hosts"]
            .as_array()
            .map(|h| h.iter().map(|h| h["address"].clone()).collect::<Vec<_>>())
    };
    let fleet = fleet_json(&first).await;
    assert_eq!(
        address(&fleet),
        Some(vec![json!(first.base_url().trim_start_matches("http://"))]),
        "{fleet:#}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (_, log) = second.wait(Duration::from_secs(30));
    assert!(
        log.contains("another live host writes its heartbeat under this host id"),
        "{log}"
    );
    // The second host's stop left the first one's row.
    let fleet = fleet_json(&first).await;
    assert_eq!(
        fleet["hosts"].as_array().map(Vec::len),
        Some(1),
        "{fleet:#}"
    );

    // A host serving its directories follows no control plane.
    std::fs::write(b.join("trellis.toml"), "[auth]\nmode = \"dev\"\n").unwrap();
    let plain = Server::start(&b, &[]);
    let response = reqwest::Client::new()
        .get(format!("{}/v1/fleet", plain.base_url()))
        .header("x-trellis-user", USER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "this host does not follow a control plane",
        "{body}"
    );
    drop((first, plain));
    drop_postgres_database(&name).await;
}
