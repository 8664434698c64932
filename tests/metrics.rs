//! `/metrics` (contract §6) scraped after real traffic: values per key, the histogram count,
//! `node_id` on every series, the key-label cap, `promtool check metrics`, and the monitor's
//! two PromQL queries answered by a real Prometheus scraping the nodes.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{get, post};
use common::procs::Gateway;
use common::{free_port, wait_for};

/// Every sample: (name, sorted labels) → value.
fn samples(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        labels.sort();
        out.insert((name.to_string(), labels.join(",")), value.parse().unwrap());
    }
    out
}

fn value(s: &BTreeMap<(String, String), f64>, name: &str, labels: &str) -> Option<f64> {
    s.get(&(name.to_string(), labels.to_string())).copied()
}

fn scrape(gw: &Gateway) -> String {
    let r = get(&gw.admin, "/metrics", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    r.body
}

/// `ratelimiter_refused_total`: one per request the proxy refused, under the rule that refused
/// it, whatever other rules applied; a banned key's requests under `reason="ban"`; `/check`
/// answers not at all.
#[test]
fn refused_requests_are_counted_once_under_the_rule_that_refused_them() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        "[node]\nid = \"r1\"\n[limits]\ndefault_limit = 1000\n\
         [[rules]]\nname = \"login\"\npath = \"/login\"\nlimit = 2\n\
         [[rules]]\nname = \"api\"\nkey = \"header:X-Api-Key\"\nlimit = 1\n",
    );
    // login: 2 allowed, then 3 refused by login (api and default applied too, and allowed).
    for i in 0..5 {
        let key = format!("k{i}");
        get(&gw.proxy, "/login", &[("X-Api-Key", key.as_str())]).unwrap();
    }
    // api: 1 allowed, then 1 refused by api.
    for _ in 0..2 {
        get(&gw.proxy, "/", &[("X-Api-Key", "same")]).unwrap();
    }
    // A banned key: 2 refused from memory.
    let r = common::http::Conn::open(&gw.admin)
        .unwrap()
        .send("PUT", "/api/bans/api/evil", &[], r#"{"for_ms": 60000}"#)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for _ in 0..2 {
        let r = get(&gw.proxy, "/", &[("X-Api-Key", "evil")]).unwrap();
        assert_eq!(r.status, 429);
    }
    // /check refusals are answers to a service, not refused requests.
    for _ in 0..2 {
        post(&gw.admin, "/check", &[], r#"{"key":"user:1","limit":1}"#).unwrap();
    }
    let s = samples(&scrape(&gw));
    let refused = |labels: &str| value(&s, "ratelimiter_refused_total", labels);
    assert_eq!(
        refused(r#"node_id="r1",reason="limit",rule="/check""#),
        None
    );
    assert_eq!(
        refused(r#"node_id="r1",reason="limit",rule="login""#),
        Some(3.0)
    );
    assert_eq!(
        refused(r#"node_id="r1",reason="limit",rule="api""#),
        Some(1.0)
    );
    assert_eq!(
        refused(r#"node_id="r1",reason="ban",rule="api""#),
        Some(2.0)
    );
    assert_eq!(
        refused(r#"node_id="r1",reason="limit",rule="default""#),
        None
    );
    // The per-rule series counts the login refusals under every rule applied.
    let blocked_default = s
        .iter()
        .filter(|((n, l), _)| {
            n == "ratelimiter_requests_checked_total"
                && l.contains(r#"result="blocked""#)
                && l.contains(r#"rule="default""#)
        })
        .map(|(_, v)| v)
        .sum::<f64>();
    assert_eq!(blocked_default, 4.0);
}

#[test]
fn metrics_count_decisions_per_key_with_node_id() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        "[node]\nid = \"m1\"\n[limits]\ndefault_limit = 3\n",
    );
    for _ in 0..5 {
        get(&gw.proxy, "/", &[]).unwrap(); // 3 allowed, 2 blocked
    }
    for _ in 0..2 {
        post(&gw.admin, "/check", &[], r#"{"key":"user:1","limit":1}"#).unwrap();
        // 1 + 1
    }
    let text = scrape(&gw);
    let s = samples(&text);
    let checked = "ratelimiter_requests_checked_total";
    assert_eq!(
        value(
            &s,
            checked,
            r#"key="ip:127.0.0.1",node_id="m1",result="allowed",rule="default""#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            checked,
            r#"key="ip:127.0.0.1",node_id="m1",result="blocked",rule="default""#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &s,
            checked,
            r#"key="user:sha256:6b86b273ff34fce1",node_id="m1",result="allowed",rule="/check""#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            checked,
            r#"key="user:sha256:6b86b273ff34fce1",node_id="m1",result="blocked",rule="/check""#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "ratelimiter_check_duration_seconds_count",
            r#"node_id="m1""#
        ),
        Some(7.0)
    );
    assert_eq!(
        value(&s, "ratelimiter_node_up", r#"node_id="m1""#),
        Some(1.0)
    );
    for bucket in [
        "0.0001", "0.00025", "0.0005", "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
        "0.5", "1", "+Inf",
    ] {
        let labels = format!(r#"le="{bucket}",node_id="m1""#);
        assert!(
            value(&s, "ratelimiter_check_duration_seconds_bucket", &labels).is_some(),
            "bucket {bucket}"
        );
    }
    assert!(text.contains("# TYPE ratelimiter_requests_checked_total counter"));
    assert!(text.contains("# TYPE ratelimiter_check_duration_seconds histogram"));
    assert!(text.contains("# TYPE ratelimiter_node_up gauge"));
    assert!(text.contains("# TYPE ratelimiter_active_counters gauge"));
    assert!(text.contains("# TYPE ratelimiter_store_errors_total counter"));
    for (name, labels) in s.keys() {
        if name.starts_with("ratelimiter_") {
            assert!(
                labels.contains(r#"node_id="m1""#),
                "{name}{{{labels}}} lacks node_id"
            );
        }
    }
    // The active-counter gauge follows a listing.
    get(&gw.admin, "/api/counters", &[]).unwrap();
    let s = samples(&scrape(&gw));
    assert_eq!(
        value(&s, "ratelimiter_active_counters", r#"node_id="m1""#),
        Some(2.0)
    );
}

#[test]
fn key_labels_are_capped_per_node() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        // Key values in clear, to read the labels (tests/keys.rs covers their digests).
        "[privacy]\nclear_keys = true\n[node]\nid = \"cap\"\n[limits]\ndefault_limit = 100\nkey = \"header:X-Api-Key\"\n[metrics]\nmax_key_labels = 2\n",
    );
    for k in ["a", "b", "c", "d", "a"] {
        get(&gw.proxy, "/", &[("X-Api-Key", k)]).unwrap();
    }
    let s = samples(&scrape(&gw));
    let allowed = |key: &str| {
        value(
            &s,
            "ratelimiter_requests_checked_total",
            &format!(r#"key="{key}",node_id="cap",result="allowed",rule="default""#),
        )
    };
    assert_eq!(allowed("x-api-key:a"), Some(2.0));
    assert_eq!(allowed("x-api-key:b"), Some(1.0));
    assert_eq!(allowed("_other"), Some(2.0));
    assert_eq!(allowed("x-api-key:c"), None);
}

#[test]
fn exposition_passes_promtool() {
    // Rules of each kind, so every label and result is in the exposition.
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        "[limits]\ndefault_limit = 1\n[[rules]]\nname = \"dry\"\nlimit = 1\nshadow = true\n[[rules]]\nname = \"all\"\nkey = \"global\"\nalgorithm = \"gcra\"\nlimit = 5\n",
    );
    get(&gw.proxy, "/", &[]).unwrap();
    get(&gw.proxy, "/", &[]).unwrap();
    let text = scrape(&gw);
    for want in [
        r#"result="shadow_blocked",rule="dry""#,
        r#"key="all/global",result="blocked",rule="all""#,
        "ratelimiter_config_reloads_total",
        "ratelimiter_config_loaded_timestamp_seconds",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed; scripts/test.sh does it");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus scraping two nodes every second.
struct Prometheus {
    child: std::process::Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(targets: &[&str]) -> Prometheus {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("ratelimiter-prom-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ratelimiter\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package) must be installed; scripts/test.sh does it");
        let addr = format!("127.0.0.1:{port}");
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            (get(&addr, "/-/ready", &[]).ok()?.status == 200).then_some(())
        });
        Prometheus { child, addr, dir }
    }

    /// An instant query; the result vector as (labels, value).
    fn query(&self, promql: &str, at: Option<f64>) -> Vec<(serde_json::Value, f64)> {
        let mut q = format!("/api/v1/query?query={}", encode(promql));
        if let Some(t) = at {
            q.push_str(&format!("&time={t}"));
        }
        let r = get(&self.addr, &q, &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metric"].clone(),
                    s["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn the_monitors_promql_queries_work_against_a_real_prometheus() {
    const LIMIT: usize = 1000;
    let mk = |id: &str| {
        Gateway::start(
            "[proxy.direct_response]\nbody = \"ok\"",
            &format!("[node]\nid = \"{id}\"\n[limits]\ndefault_limit = {LIMIT}\n"),
        )
    };
    let (n1, n2) = (mk("node-1"), mk("node-2"));
    // One request first, so the series exists (at 1) before the measured burst.
    get(&n1.proxy, "/", &[]).unwrap();
    let prom = Prometheus::start(&[&n1.admin, &n2.admin]);
    let series = r#"ratelimiter_requests_checked_total{result="allowed", key="ip:127.0.0.1", node_id="node-1"}"#;
    wait_for("a first sample", Duration::from_secs(30), || {
        (prom.query(series, None).first()?.1 == 1.0).then_some(())
    });
    const BURST: usize = 200;
    for _ in 0..BURST {
        assert_eq!(get(&n1.proxy, "/", &[]).unwrap().status, 200);
    }
    // Wait until Prometheus has scraped the burst twice over.
    let last_sample_at = wait_for("the burst scraped", Duration::from_secs(30), || {
        let r = get(
            &prom.addr,
            &format!("/api/v1/query?query={}", encode(&format!("{series}[10s]"))),
            &[],
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        let values = v["data"]["result"][0]["values"].as_array()?.clone();
        let done: Vec<f64> = values
            .iter()
            .filter(|p| p[1].as_str() == Some(&(BURST + 1).to_string()))
            .map(|p| p[0].as_f64().unwrap())
            .collect();
        (done.len() >= 2).then(|| done[done.len() - 1])
    });

    // The monitor's second query, as written, at the last scrape: every allowed request of
    // the last minute, node-1's 201 and none from node-2 (which served none).
    let q = r#"increase(ratelimiter_requests_checked_total{result="allowed", key="ip:127.0.0.1"}[60s])"#;
    let result = prom.query(q, Some(last_sample_at));
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0].0["node_id"], "node-1");
    let got = result[0].1;
    let want = (BURST + 1) as f64;
    // increase() extrapolates to the range edges; with the series starting at 1 the result
    // is the true count up to that extrapolation (well under 5% here).
    assert!(
        (got - want).abs() <= want * 0.05,
        "increase() = {got}, want about {want}"
    );

    // The first query: the p99 decision time of node-1, a finite value inside the buckets.
    let q = r#"histogram_quantile(0.99, rate(ratelimiter_check_duration_seconds_bucket{node_id="node-1"}[1m]))"#;
    let result = prom.query(q, Some(last_sample_at));
    assert_eq!(result.len(), 1, "{result:?}");
    let p99 = result[0].1;
    assert!(p99 > 0.0 && p99 <= 1.0, "p99 = {p99}");
}

#[test]
fn each_upstream_shows_its_health_responses_retries_and_errors_beside_the_build() {
    let up = common::upstream::Upstream::start();
    // Nothing listens on this port: every connection to it is refused.
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"{}\", \"{dead}\"]\nretries = 1\n\n[proxy.health_check]\ninterval_ms = 100\ntimeout_ms = 200",
            up.addr
        ),
        "[node]\nid = \"u1\"\n",
    );
    let healthy = |name: &str| {
        let s = samples(&scrape(&gw));
        value(
            &s,
            "ratelimiter_upstream_healthy",
            &format!(r#"node_id="u1",route="",upstream="{name}""#),
        )
    };
    wait_for(
        "the health check to find the dead upstream",
        Duration::from_secs(10),
        || (healthy(&dead) == Some(0.0)).then_some(()),
    );
    assert_eq!(healthy(&up.addr), Some(1.0));
    // Taken out by its check, the dead one gets no requests now.
    for _ in 0..4 {
        assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 200);
    }
    // A request is counted once its response is sent, just after the client has it.
    let s = wait_for("4 requests counted", Duration::from_secs(10), || {
        let s = samples(&scrape(&gw));
        let counted = |name: &str, labels: &str| value(&s, name, labels) == Some(4.0);
        (counted(
            "ratelimiter_upstream_requests_total",
            &format!(r#"code="2xx",node_id="u1",route="",upstream="{}""#, up.addr),
        ) && counted(
            "ratelimiter_request_duration_seconds_count",
            r#"node_id="u1""#,
        ))
        .then_some(s)
    });
    let build = s
        .keys()
        .find(|(name, _)| name == "ratelimiter_build_info")
        .map(|(_, labels)| labels.clone())
        .unwrap();
    assert!(
        build.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.contains("commit=\""), "{build}");

    // Without health checks the dead upstream is tried in turn: the refused connection is
    // counted against it, and the request goes to the live one.
    let unchecked = Gateway::start(
        &format!("upstreams = [\"{dead}\", \"{}\"]\nretries = 1", up.addr),
        "[node]\nid = \"u2\"\n",
    );
    for _ in 0..4 {
        assert_eq!(get(&unchecked.proxy, "/", &[]).unwrap().status, 200);
    }
    // Labels are compared sorted by name. The pool's upstreams are listed as it starts.
    let listed = format!(r#"node_id="u2",route="",upstream="{dead}""#);
    let s = wait_for("the upstreams listed", Duration::from_secs(10), || {
        let s = samples(&scrape(&unchecked));
        value(&s, "ratelimiter_upstream_healthy", &listed).map(|_| s)
    });
    let refused = value(
        &s,
        "ratelimiter_upstream_errors_total",
        &format!(r#"kind="connect",node_id="u2",route="",upstream="{dead}""#),
    )
    .unwrap();
    let retried = value(
        &s,
        "ratelimiter_upstream_retries_total",
        &format!(r#"node_id="u2",route="",upstream="{dead}""#),
    )
    .unwrap();
    assert!(refused >= 1.0 && retried == refused, "{refused} {retried}");
    assert_eq!(
        value(
            &s,
            "ratelimiter_upstream_healthy",
            &format!(r#"node_id="u2",route="",upstream="{dead}""#)
        ),
        Some(1.0),
        "without checks every upstream is taken as healthy"
    );
    assert_eq!(
        value(
            &s,
            "ratelimiter_upstream_errors_total",
            &format!(
                r#"kind="timeout",node_id="u2",route="",upstream="{}""#,
                up.addr
            )
        ),
        Some(0.0),
        "each kind is there from the start"
    );
}

/// The alerting rules shipped in `deploy/prometheus/` are valid (`promtool check rules`), pass
/// their unit tests (`promtool test rules`), and only name series the gateway exports.
#[test]
fn the_shipped_alerts_pass_promtool_and_name_real_series() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("promtool (scripts/deps.sh installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(format!("{dir}/alerts.yml")).unwrap();
    let exported: String = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("ratelimiter_") {
            named += 1;
            // A histogram's series are its name with _count, _sum or _bucket.
            let base = ["_count", "_sum", "_bucket"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                exported.contains(&format!("\"ratelimiter_{name}\""))
                    || exported.contains(&format!("\"ratelimiter_{base}\"")),
                "alerts.yml names ratelimiter_{name}, which no metric is called"
            );
        }
    }
    assert!(named >= 6, "{named}");
}

/// A request two rules refuse at once is counted once, under the one nearest its limit: both
/// have no room left, so the smaller limit (not the first in the file).
#[test]
fn a_request_refused_by_two_rules_is_counted_under_the_one_nearest_its_limit() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        "[node]\nid = \"t1\"\n[limits]\ndefault_limit = 1000\n\
         [[rules]]\nname = \"wide\"\npath = \"/both\"\nkey = \"header:X-B\"\nlimit = 3\n\
         [[rules]]\nname = \"narrow\"\npath = \"/both\"\nkey = \"header:X-A\"\nlimit = 2\n",
    );
    let send = |a: &str| {
        get(&gw.proxy, "/both", &[("X-A", a), ("X-B", "b")])
            .unwrap()
            .status
    };
    // narrow/a: 2 of 2, wide/b: 2 of 3; then narrow/a2 takes wide/b's last.
    assert_eq!([send("a"), send("a"), send("a2")], [200, 200, 200]);
    // Refused by both: wide/b and narrow/a have no room left.
    assert_eq!(send("a"), 429);
    let s = samples(&scrape(&gw));
    // Both refused it (the per-rule series)...
    for rule in ["wide", "narrow"] {
        let blocked: f64 = s
            .iter()
            .filter(|((n, l), _)| {
                n == "ratelimiter_requests_checked_total"
                    && l.contains(r#"result="blocked""#)
                    && l.contains(&format!(r#"rule="{rule}""#))
            })
            .map(|(_, v)| v)
            .sum();
        assert_eq!(blocked, 1.0, "{rule}");
    }
    // ...and it is one refused request, under narrow.
    let refused = |rule: &str| {
        value(
            &s,
            "ratelimiter_refused_total",
            &format!(r#"node_id="t1",reason="limit",rule="{rule}""#),
        )
    };
    assert_eq!(refused("narrow"), Some(1.0));
    assert_eq!(refused("wide"), None);
}
