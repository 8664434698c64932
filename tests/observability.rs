//! What an operator traces a request by (contract §17), on the wire and in the access log:
//! `X-Request-Id` kept or made and carried to the upstream, back to the client and into the
//! log; `traceparent` passed through with its trace id logged; the access log's fields over
//! HTTP/1.1 and HTTP/2 with TLS; `--version` with its commit.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::http::{curl_tls, get, post, Conn};
use common::procs::Gateway;
use common::topologies::Certs;
use common::upstream::Upstream;
use common::{free_port, wait_for};
use serde_json::Value;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn access_log_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("ratelimiter-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("access-{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// The access log's JSON lines once there are `n` of them (it is written every 100 ms).
fn lines(path: &PathBuf, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} access log lines"),
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            // A line still being written has no newline yet: only whole ones.
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let lines: Vec<Value> = whole
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (lines.len() >= n).then_some(lines)
        },
    )
}

fn is_generated(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[test]
fn request_ids_go_from_the_client_to_the_upstream_back_and_into_the_log() {
    let up = Upstream::start();
    let log = access_log_path("ids");
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!(
            "[limits]\ndefault_limit = 3\ndefault_window_ms = 60000\n\n[log]\naccess = \"{}\"\nformat = \"json\"\n",
            log.display()
        ),
    );

    // A client's valid ID is kept, end to end; its traceparent passes untouched.
    let kept = get(
        &gw.proxy,
        "/a",
        &[
            ("X-Request-Id", "f47ac10b-58cc-4372-a567-0e02b2c3d479"),
            ("traceparent", TRACEPARENT),
        ],
    )
    .unwrap();
    assert_eq!(kept.status, 200);
    let id = "f47ac10b-58cc-4372-a567-0e02b2c3d479";
    assert_eq!(kept.header("X-Request-Id"), Some(id));
    assert_eq!(kept.header("X-Seen-Request-Id"), Some(id));
    assert_eq!(kept.header("X-Seen-Traceparent"), Some(TRACEPARENT));

    // None sent: one is made, the same for the upstream and the client.
    let made = get(&gw.proxy, "/b", &[]).unwrap();
    let made_id = made.header("X-Request-Id").unwrap().to_string();
    assert!(is_generated(&made_id), "{made_id}");
    assert_eq!(made.header("X-Seen-Request-Id"), Some(made_id.as_str()));

    // One that could smuggle anything into the log is replaced.
    let hostile = get(&gw.proxy, "/c", &[("X-Request-Id", "a b\"c{}")]).unwrap();
    let replaced = hostile.header("X-Request-Id").unwrap().to_string();
    assert!(is_generated(&replaced), "{replaced}");
    assert_eq!(hostile.header("X-Seen-Request-Id"), Some(replaced.as_str()));

    // The gateway's own answers carry it too.
    let blocked = get(&gw.proxy, "/d", &[("X-Request-Id", "req-429")]).unwrap();
    assert_eq!(blocked.status, 429);
    assert_eq!(blocked.header("X-Request-Id"), Some("req-429"));
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let refused = conn
        .send("get", "/", &[("X-Request-Id", "req-400")], "")
        .unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("X-Request-Id"), Some("req-400"));
    assert_eq!(up.served(), 3);

    // Lines are written as requests end, which two worker threads may do in either order.
    let logged = lines(&log, 5);
    let by_id = |want: &str| {
        logged
            .iter()
            .find(|l| l["request_id"] == want)
            .unwrap_or_else(|| panic!("no line for {want}: {logged:?}"))
    };
    assert_eq!(by_id(id)["path"], "/a");
    assert_eq!(by_id(id)["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(by_id(&made_id)["path"], "/b");
    assert_eq!(by_id(&made_id)["trace_id"], Value::Null);
    assert_eq!(by_id(&replaced)["path"], "/c");
    assert_eq!(by_id("req-429")["decision"], "blocked");
    assert_eq!(by_id("req-400")["decision"], "rejected");
}

#[test]
fn access_log_lines_say_host_protocol_tls_upstream_and_sizes() {
    let up = Upstream::start();
    let certs = Certs::generate();
    let tls_port = free_port();
    let log = access_log_path("fields");
    let gw = Gateway::start(
        &format!(
            "upstreams = [\"{}\"]\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            up.addr,
            certs.file("server.pem"),
            certs.file("server.key")
        ),
        &format!(
            "[log]\naccess = \"{}\"\nformat = \"json\"\n",
            log.display()
        ),
    );
    let r = post(
        &gw.proxy,
        "/upload",
        &[
            ("Host", "api.example.com"),
            ("User-Agent", "probe/1.0 (test)"),
        ],
        "hello world",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    wait_for("the TLS listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).ok()
    });
    let h2 = curl_tls(
        tls_port,
        &certs.file("ca.pem"),
        &["--http2", "-A", "curl-h2"],
        "/over-h2",
    )
    .unwrap();
    assert_eq!((h2.version.as_str(), h2.status), ("HTTP/2", 200));

    // Lines are written as requests end; find each by its path.
    let logged = lines(&log, 2);
    let by_path = |path: &str| logged.iter().find(|l| l["path"] == path).unwrap();
    let plain = by_path("/upload");
    assert_eq!(plain["host"], "api.example.com");
    assert_eq!(plain["protocol"], "HTTP/1.1");
    assert_eq!(plain["tls"], false);
    assert_eq!(plain["user_agent"], "probe/1.0 (test)");
    assert_eq!(plain["upstream"], up.addr.as_str());
    assert_eq!(plain["upstream_status"], 200);
    assert!(plain["upstream_ms"].as_f64().unwrap() >= 0.0, "{plain}");
    assert_eq!(plain["request_bytes"], 11);
    assert_eq!(plain["bytes"], r.body.len());
    let secure = by_path("/over-h2");
    assert_eq!(secure["host"], format!("localhost:{tls_port}"));
    assert_eq!(secure["protocol"], "HTTP/2");
    assert_eq!(secure["tls"], true);
    assert_eq!(secure["user_agent"], "curl-h2");

    // `duration_ms` and `upstream_ms` have at most 3 decimals, as written.
    let text = std::fs::read_to_string(&log).unwrap();
    for field in ["\"duration_ms\":", "\"upstream_ms\":"] {
        for line in text.lines() {
            let number = line.split(field).nth(1).unwrap().split([',', '}']).next();
            let decimals = number.unwrap().split('.').nth(1).map_or(0, str::len);
            assert!(decimals <= 3, "{field} in {line}");
        }
    }
}

#[test]
fn version_names_the_commit_the_binary_was_built_from() {
    let out = Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let commit = text
        .trim()
        .strip_prefix(&format!(
            "ratelimiter {} (commit ",
            env!("CARGO_PKG_VERSION")
        ))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text:?}"));
    // What build.rs found, as the metrics say it too; built from this repository, the
    // first 12 digits of HEAD (no git, or a source archive: `unknown`).
    assert_eq!(commit, env!("RATELIMITER_COMMIT"));
    let head = Command::new("git")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    match head {
        Some(out) => assert_eq!(commit, &String::from_utf8(out.stdout).unwrap()[..12]),
        None => assert_eq!(commit, "unknown"),
    }
}
