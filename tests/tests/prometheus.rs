//! Issue 18 §1: real clients read `/metrics`. A real Prometheus (Debian's 2.42, from
//! `scripts/services`) scrapes a real `trellis serve` and finds the target up; `promtool check
//! metrics` passes the classic text format; the OpenMetrics format (what Prometheus asks for)
//! passes the reference OpenMetrics parser. On `2e483a0` the target was down
//! (`invalid metric type "info"`: OpenMetrics text labelled as the classic format).

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_tests::{Server, custom_dir, free_port, run_workflow};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

fn tool(var: &str, name: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test (it installs {name})")
    })
}

/// A served folder with a workflow on SQLite and `/metrics` public (as a scraper needs it).
fn served() -> (tempfile::TempDir, Server) {
    let workflow = "[[nodes]]\nid = \"n\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1 AS one\" }\n";
    let rules = json!({"rules": trellis_tests::allow_rules("w", &["n"])}).to_string();
    let dir = custom_dir(workflow, &rules, "[server]\npublic = [\"metrics\"]\n");
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

async fn scrape(server: &Server, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", server.base_url()));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

/// Runs `program args…` with `input` on stdin: (success, stdout + stderr).
fn check(program: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The reference OpenMetrics parser (Python `prometheus-client`): strict about types, suffixes,
/// escaping and `# EOF`.
const PARSE_OPENMETRICS: &str = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfamilies = list(parse(sys.stdin.read()))\nprint(len(families), 'families')\n";

#[tokio::test]
async fn both_exposition_formats_pass_their_reference_checkers() {
    let (_dir, server) = served();
    let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
    assert_eq!(status, 200, "{body}");

    let (content_type, classic) = scrape(&server, None).await;
    assert_eq!(content_type, CLASSIC);
    assert!(
        !classic.contains("# EOF") && !classic.contains(" info\n"),
        "{classic}"
    );
    let (clean, out) = check(
        &tool("TRELLIS_TEST_PROMTOOL", "promtool"),
        &["check", "metrics"],
        &classic,
    );
    assert!(
        clean && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n---\n{classic}"
    );
    // Latencies are histograms; no series per connection id.
    for family in [
        "# TYPE trellis_http_request_duration_seconds histogram",
        "# TYPE trellis_pool_acquire_wait_seconds histogram",
        "# TYPE trellis_http_requests_total counter",
        "# TYPE trellis_plugin_changes_total counter",
        "# TYPE trellis_workflow_changes_total counter",
        "# TYPE trellis_build_info gauge",
    ] {
        assert!(classic.contains(family), "no `{family}`:\n{classic}");
    }
    assert!(
        classic.contains("trellis_pool_acquire_wait_seconds_bucket{le=\"+Inf\",pool=\"main\"} 1"),
        "{classic}"
    );
    assert!(!classic.contains("connection=\""), "{classic}");
    assert!(!classic.contains("quantile=\""), "{classic}");

    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, open) = scrape(&server, Some(prometheus_accept)).await;
    assert_eq!(content_type, OPENMETRICS);
    assert!(open.ends_with("# EOF\n"), "{open}");
    let (parsed, out) = check(
        &tool(
            "TRELLIS_TEST_OPENMETRICS_PYTHON",
            "the Python prometheus-client",
        ),
        &["-c", PARSE_OPENMETRICS],
        &open,
    );
    assert!(
        parsed,
        "the OpenMetrics parser refused it:\n{out}\n---\n{open}"
    );
}

struct Prometheus {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: trellis\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(tool("TRELLIS_TEST_PROMETHEUS", "prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_host_and_finds_it_up() {
    let (_dir, server) = served();
    let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let target = server.base_url().trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target);

    // Up after a scrape or two: at most a minute however slow the machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    let target_state = loop {
        let state = prometheus
            .get("/api/v1/targets")
            .await
            .and_then(|v| v["data"]["activeTargets"].get(0).cloned());
        if let Some(t) = &state
            && (t["health"] == "up" || (t["health"] == "down" && t["lastError"] != ""))
        {
            break t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(target_state["health"], "up", "{target_state}");
    assert_eq!(target_state["lastError"], "", "{target_state}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = prometheus
            .get("/api/v1/query?query=trellis_http_requests_total")
            .await
            .unwrap_or(Value::Null);
        let results = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let run = results.iter().find(|r| {
            r["metric"]["route"] == "/v1/workflows/{name}/run" && r["metric"]["status"] == "200"
        });
        if let Some(run) = run {
            assert_eq!(answer["status"], "success");
            assert_eq!(run["value"][1], "1", "{run}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no run in trellis_http_requests_total: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The histograms are histograms to Prometheus: a quantile over their buckets answers.
    let q = "/api/v1/query?query=histogram_quantile(0.5,%20sum%20by%20(le)%20(trellis_http_request_duration_seconds_bucket))";
    let answer = prometheus.get(q).await.unwrap_or(Value::Null);
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(
        answer["data"]["result"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    let answer = prometheus
        .get("/api/v1/query?query=trellis_build_info")
        .await
        .unwrap_or(Value::Null);
    assert_eq!(answer["data"]["result"][0]["value"][1], "1", "{answer}");
}
