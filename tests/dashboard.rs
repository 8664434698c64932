//! The Grafana dashboard (`deploy/grafana/ratelimiter.json`) against a real Prometheus that
//! scraped a running gateway: every query of every panel returns data.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{get, Conn};
use common::procs::Gateway;
use common::upstream::Upstream;
use common::{free_port, wait_for};
use serde_json::Value;

/// A Prometheus server scraping `target` every second; killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: common::topologies::Scratch,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = common::topologies::Scratch::new("prometheus");
        let config = dir.path("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ratelimiter\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={config}"))
            .arg(format!("--storage.tsdb.path={}", dir.path("data")))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/deps.sh installs it)");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for("Prometheus ready", Duration::from_secs(30), || {
            get(&p.addr, "/-/ready", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
        p
    }

    /// The result of an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = get(&self.addr, &format!("/api/v1/query?query={encoded}"), &[]).unwrap();
        let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_eq!(v["status"], "success", "{expr}: {}", r.body);
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let upstream = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        "[limits]\ndefault_limit = 100000\n\
         [[rules]]\nname = \"login\"\npath = \"/login\"\nlimit = 1\nwindow_ms = 60000\nban = { after = 2, within_ms = 60000, for_ms = 60000 }\n\
         [[rules]]\nname = \"gpu\"\npath_prefix = \"/sleep/\"\nconcurrency = 1\nqueue = { max_waiting = 4, max_wait_ms = 2000 }\n",
    );
    let prometheus = Prometheus::start(&gw.admin);
    // Traffic of every kind the panels show: allowed and refused checks, a ban, a request
    // waiting for a concurrency slot, a change through the admin API, a reload.
    let mut c = Conn::open(&gw.proxy).unwrap();
    for _ in 0..4 {
        c.get("/login", &[]).unwrap();
    }
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = gw.proxy.clone();
            std::thread::spawn(move || get(&addr, "/sleep/300", &[]).map(|r| r.status))
        })
        .collect();
    for s in slow {
        assert_eq!(s.join().unwrap().unwrap(), 200);
    }
    let r = Conn::open(&gw.admin)
        .unwrap()
        .send(
            "PUT",
            "/api/overrides/login/10.1.2.3",
            &[],
            r#"{"limit": 5}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    gw.signal("HUP");
    // A few scrapes of steady traffic, so every rate() has two samples.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        c.get("/", &[]).unwrap();
        c.get("/login", &[]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/ratelimiter.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().replace("$node", ".*");
            let result = wait_for(&format!("data for {expr}"), Duration::from_secs(15), || {
                let r = prometheus.query(&expr);
                (!r.is_empty()).then_some(r)
            });
            queried += 1;
            println!("{} — {}: {} series", panel["title"], expr, result.len());
        }
    }
    assert_eq!(queried, 18, "every query of every panel");
}
