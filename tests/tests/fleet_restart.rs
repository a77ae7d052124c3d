//! Issue 20 §3 against the real binary: the control plane's PostgreSQL restarted under two hosts
//! that follow it. The server is one of this test's own (PostgreSQL 18's programs from
//! `scripts/services`, `TRELLIS_TEST_PG_BIN`, on a free port), so restarting it disturbs no other
//! test. While it is down the hosts keep serving the last good generation with no failed
//! request; once it is back they reconnect, resync, and serve what was published after.
//!
//! On 863c270 there was no `serve --control`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trellis_tests::{Server, free_port, run_stamp, run_trellis, stamp_bundle, stamp_workflow};

/// A PostgreSQL server of this test's own, stopped on drop.
struct OwnServer {
    bin: std::path::PathBuf,
    data: tempfile::TempDir,
    port: u16,
}

/// `runuser -u postgres --` when root (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl OwnServer {
    fn start(bin: &Path) -> OwnServer {
        let data = tempfile::Builder::new()
            .prefix("trellis-control-pg")
            .tempdir_in("/var/tmp")
            .unwrap();
        let _ = Command::new("chown")
            .args(["postgres", data.path().to_str().unwrap()])
            .status();
        let cluster = data.path().join("cluster");
        let init = as_postgres(&bin.join("initdb"))
            .args([
                "-D",
                cluster.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let server = OwnServer {
            bin: bin.to_owned(),
            data,
            port: free_port(),
        };
        server.pg_ctl("start");
        server
    }

    fn pg_ctl(&self, what: &str) {
        let cluster = self.data.path().join("cluster");
        let log = self.data.path().join("log");
        let out = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D", cluster.to_str().unwrap(), "-l", log.to_str().unwrap()])
            .args(["-w", "-t", "60", "-m", "fast"])
            .args([
                "-o",
                &format!("-p {} -k /tmp -c listen_addresses=127.0.0.1", self.port),
            ])
            .arg(what)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let cluster = self.data.path().join("cluster");
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                cluster.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_ride_out_a_restart_of_the_control_database() {
    let Some(bin) = std::env::var_os("TRELLIS_TEST_PG_BIN") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "TRELLIS_TEST_PG_BIN is not set: run `eval \"$(scripts/services)\"`"
        );
        return;
    };
    let pg = OwnServer::start(Path::new(&bin));
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("trellis.toml"),
        "[auth]\nmode = \"dev\"\n[control]\nheartbeat_interval = \"200ms\"\npoll_interval = \"1s\"\n",
    )
    .unwrap();
    let b = stamp_bundle(d, 1);
    let publish = |marker: u64| {
        std::fs::write(b.join("workflows/w.toml"), stamp_workflow(marker)).unwrap();
        let (status, out, err) = run_trellis(
            d,
            &["publish", "bundle", "--to", &url],
            Duration::from_secs(120),
        );
        assert!(status.success(), "{out}\n{err}");
    };
    publish(1);
    let control = ["--control", url.as_str()];
    let hosts = [Server::start(d, &control), Server::start(d, &control)];
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = hosts
        .iter()
        .map(|h| {
            let (base, stop) = (h.base_url(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    seen.push(run_stamp(&client, &base).await);
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Down for two seconds, then back: the hosts answer from generation 1 all along.
    pg.pg_ctl("stop");
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.pg_ctl("start");
    // Published as soon as the server is back: a host still reconnecting misses the notice,
    // and finds the generation when it resyncs.
    publish(2);
    let client = reqwest::Client::new();
    for h in &hosts {
        let mut at = None;
        for _ in 0..1000 {
            at = run_stamp(&client, &h.base_url()).await.1;
            if at == Some(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(at, Some(2), "{} did not resync", h.base_url());
    }
    stop.store(true, Ordering::Relaxed);
    for (i, c) in clients.into_iter().enumerate() {
        let seen = c.await.unwrap();
        assert!(seen.len() > 10, "host {i}: {} answers", seen.len());
        let mut last = 0;
        for (status, generation, marker) in &seen {
            assert_eq!(*status, 200, "host {i}: {seen:?}");
            let g = generation.unwrap();
            assert_eq!(Some(g), *marker, "host {i}");
            assert!(g >= last, "host {i} went back");
            last = g;
        }
    }
    drop(hosts);
}
