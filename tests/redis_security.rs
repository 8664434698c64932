//! Redis over TLS and with ACL users (contract §9), on real processes: a TLS redis-server with
//! a CA made by the suite, trusted through `tls_ca_file`; mutual TLS with a client
//! certificate; a wrong CA refused with a clear log line; the README's ACL user, allowed only
//! the commands, keys and channel the gateway needs, and that user as an older version's
//! (without the lease commands, without the override keys).

mod common;

use std::time::Duration;

use common::http::{get, post, Conn};
use common::procs::{Gateway, RedisServer};
use common::topologies::{Certs, TlsServer};
use common::wait_for;

const DIRECT: &str = "[proxy.direct_response]\nbody = \"ok\"";

/// The README's ACL user, as written there (`ACL SETUSER gw ...`), with the password
/// `gw-secret` for its `secret`: the line an operator copies is the one tested.
fn readme_acl() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER gw "))
        .expect("the README's ACL line");
    line.split_whitespace()
        .skip(3)
        .map(|r| match r {
            ">secret" => ">gw-secret".to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// Creates the user `gw` with `rules` on this server.
fn set_user(redis: &RedisServer, rules: &[String]) {
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER").arg("gw");
    for rule in rules {
        setuser.arg(rule);
    }
    setuser.query::<()>(&mut redis.conn()).unwrap();
}

/// Limits, the registry, listing and reset all work through this store.
fn works_end_to_end(gw: &Gateway) {
    let mut c = Conn::open(&gw.proxy).unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| c.get("/", &[]).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 429], "{}", gw.log());
    assert_eq!(get(&gw.admin, "/health", &[]).unwrap().status, 200);
    let counters = get(&gw.admin, "/api/counters", &[]).unwrap().body;
    assert!(
        counters.contains(r#""key":"ip:127.0.0.1","count":2"#),
        "{counters}"
    );
    wait_for("the node in the registry", Duration::from_secs(10), || {
        let nodes = get(&gw.admin, "/api/nodes", &[]).ok()?.body;
        nodes.contains("\"id\":\"gw\"").then_some(())
    });
    let r = post(&gw.admin, "/api/counters/ip:127.0.0.1/reset", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.get("/", &[]).unwrap().status, 200);
}

fn tls_gateway(server: &TlsServer, tls: &str) -> Gateway {
    Gateway::start(
        DIRECT,
        &format!(
            "[node]\nid = \"gw\"\n[redis]\nurl = \"{}\"\ntimeout_ms = 1000\n{tls}\n[limits]\ndefault_limit = 2\n[[rules]]\nname = \"slots\"\npath_prefix = \"/slots/\"\nconcurrency = 1\nskip_default = true\n",
            server.url()
        ),
    )
}

#[test]
fn tls_verified_against_the_suite_s_ca() {
    let certs = Certs::generate();
    let server = TlsServer::start(&certs, false);
    let gw = tls_gateway(
        &server,
        &format!("tls_ca_file = \"{}\"", certs.file("ca.pem")),
    );
    works_end_to_end(&gw);
    assert_eq!(
        server.cli(&["EXISTS", "ratelimit:ip:127.0.0.1"]).trim(),
        "1"
    );
    // Concurrency slots over TLS: taken and freed, one request after another.
    let mut c = Conn::open(&gw.proxy).unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/slots/x", &[]).unwrap().status, 200, "{}", gw.log());
    }
    // (The last is freed just after its answer.)
    wait_for("every slot freed", Duration::from_secs(2), || {
        (server
            .cli(&["EXISTS", "ratelimit:slots/ip:127.0.0.1"])
            .trim()
            == "0")
            .then_some(())
    });
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let certs = Certs::generate();
    let server = TlsServer::start(&certs, true);
    let gw = tls_gateway(
        &server,
        &format!(
            "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            certs.file("ca.pem"),
            certs.file("client.pem"),
            certs.file("client.key")
        ),
    );
    works_end_to_end(&gw);

    // Without the certificate, the server refuses the gateway: no decision, unhealthy.
    let without = tls_gateway(
        &server,
        &format!("tls_ca_file = \"{}\"", certs.file("ca.pem")),
    );
    let r = get(&without.proxy, "/", &[]).unwrap();
    assert_eq!(
        (r.status, r.header("X-RateLimit-Limit")),
        (200, None),
        "fails open"
    );
    assert_eq!(get(&without.admin, "/health", &[]).unwrap().status, 503);
}

#[test]
fn a_server_signed_by_another_ca_is_refused_with_a_clear_log_line() {
    let certs = Certs::generate();
    let server = TlsServer::start(&certs, false);
    let gw = tls_gateway(
        &server,
        &format!(
            "tls_ca_file = \"{}\"\non_error = \"deny\"",
            certs.file("other-ca.pem")
        ),
    );
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 503);
    assert_eq!(get(&gw.admin, "/health", &[]).unwrap().status, 503);
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        let log = gw.log();
        (log.contains("rate-limit store failed") && log.contains("certificate")).then_some(())
    });
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("rate-limit store failed"))
        .unwrap();
    assert!(
        line.contains("UnknownIssuer") || line.contains("unknown issuer"),
        "{line}"
    );
}

#[test]
fn tls_insecure_skips_verification_and_is_warned() {
    let certs = Certs::generate();
    let server = TlsServer::start(&certs, false);
    let gw = tls_gateway(
        &server,
        &format!(
            "tls_ca_file = \"{}\"\ntls_insecure = true",
            certs.file("other-ca.pem")
        ),
    );
    works_end_to_end(&gw);
    assert!(gw.log().contains("tls_insecure = true"), "{}", gw.log());
}

#[test]
fn an_acl_user_with_only_the_needed_commands_keys_and_channel() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    set_user(&redis, &readme_acl());
    let gw = Gateway::start(
        DIRECT,
        &format!(
            "[node]\nid = \"gw\"\n[redis]\nurl = \"redis://gw:gw-secret@127.0.0.1:{}\"\ntimeout_ms = 1000\n[limits]\ndefault_limit = 2\n[[rules]]\nname = \"leased\"\npath_prefix = \"/lease/\"\nlimit = 3\nwindow_ms = 60000\nskip_default = true\nsync = \"lease\"\nlease_size = 2\n[[rules]]\nname = \"slots\"\npath_prefix = \"/slots/\"\nconcurrency = 1\nskip_default = true\n\
             [[rules]]\nname = \"quota\"\npath_prefix = \"/quota/\"\nkey = \"header:X-Api-Key\"\nlimit = 2\nperiod = \"day\"\ntimezone = \"Europe/Berlin\"\nskip_default = true\n",
            redis.port
        ),
    );
    works_end_to_end(&gw);
    // Concurrency slots too: taken and freed, one request after another on a connection.
    let mut c = Conn::open(&gw.proxy).unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/slots/x", &[]).unwrap().status, 200, "{}", gw.log());
    }
    // Leases too: two calls take 2 and 1 slots, the third is refused; the listing counts them.
    let statuses: Vec<u16> = (0..4)
        .map(|_| get(&gw.proxy, "/lease/x", &[]).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", gw.log());
    let counters = get(&gw.admin, "/api/counters", &[]).unwrap();
    assert!(
        counters
            .body
            .contains(r#""key":"leased/ip:127.0.0.1","count":3"#),
        "{}",
        counters.body
    );
    // Every algorithm's script runs under the user too.
    for algorithm in ["gcra", "sliding_window"] {
        let body = format!(r#"{{"key":"svc-{algorithm}","limit":1,"algorithm":"{algorithm}"}}"#);
        let statuses: Vec<u16> = (0..2)
            .map(|_| post(&gw.admin, "/check", &[], &body).unwrap().status)
            .collect();
        assert_eq!(statuses, [200, 429], "{algorithm}: {}", gw.log());
    }
    // A calendar quota too.
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            get(&gw.proxy, "/quota/x", &[("X-Api-Key", "k")])
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429], "{}", gw.log());
    // Overrides, bans and the audit log too: each set and removed.
    let mut admin = Conn::open(&gw.admin).unwrap();
    for (method, path, body) in [
        ("PUT", "/api/overrides/default/10.9.9.9", r#"{"limit": 50}"#),
        ("PUT", "/api/bans/default/10.9.9.8", r#"{"for_ms": 60000}"#),
        ("DELETE", "/api/bans/default/10.9.9.8", ""),
        ("DELETE", "/api/overrides/default/10.9.9.9", ""),
    ] {
        let r = admin.send(method, path, &[], body).unwrap();
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    }
    let r = admin.get("/api/audit", &[]).unwrap();
    for action in ["override.put", "ban.put", "ban.delete", "override.delete"] {
        assert!(r.body.contains(action), "{action}: {}", r.body);
    }
    // Nothing was refused by the ACL.
    let log: Vec<Vec<redis::Value>> = redis::cmd("ACL").arg("LOG").query(&mut conn).unwrap();
    assert!(log.is_empty(), "the ACL refused: {log:?}");
    assert!(!gw.log().contains("NOPERM"), "{}", gw.log());
}

#[test]
fn an_acl_user_without_the_lease_commands_fails_every_check_and_on_error_decides() {
    // The user of a version before leases: no ZSCORE, ZINCRBY or ZREVRANGEBYSCORE.
    let redis = RedisServer::start();
    let lease_commands = ["+zscore", "+zincrby", "+zrevrangebyscore"];
    let rules: Vec<String> = readme_acl()
        .into_iter()
        .filter(|r| !lease_commands.contains(&r.as_str()))
        .collect();
    set_user(&redis, &rules);
    let gw = Gateway::start(
        DIRECT,
        &format!(
            "[redis]\nurl = \"redis://gw:gw-secret@127.0.0.1:{}\"\ntimeout_ms = 1000\non_error = \"deny\"\n[limits]\ndefault_limit = 2\n",
            redis.port
        ),
    );
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 503);
    // Refused, and said so; never taken for an empty counter (which would allow everything).
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 503);
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        gw.log().contains("can't run this command").then_some(())
    });
    // The other algorithms need none of them.
    for algorithm in ["gcra", "sliding_window"] {
        let body = format!(r#"{{"key":"old-{algorithm}","limit":1,"algorithm":"{algorithm}"}}"#);
        let statuses: Vec<u16> = (0..2)
            .map(|_| post(&gw.admin, "/check", &[], &body).unwrap().status)
            .collect();
        assert_eq!(statuses, [200, 429], "{algorithm}: {}", gw.log());
    }
}

#[test]
fn an_acl_user_without_the_tenant_keys_limits_but_refuses_changes_with_503() {
    // The user of a version before runtime overrides: what the README says to add, left out.
    let redis = RedisServer::start();
    let added = [
        "~ratelimiter:overrides",
        "~ratelimiter:overrides:version",
        "~ratelimiter:audit",
        "~ratelimiter:bans",
        "~ratelimiter:bans:version",
        "+hget",
        "+hdel",
        "+incr",
        "+lpush",
        "+ltrim",
        "+lrange",
    ];
    let rules: Vec<String> = readme_acl()
        .into_iter()
        .filter(|r| !added.contains(&r.as_str()))
        .collect();
    set_user(&redis, &rules);
    let gw = Gateway::start(
        DIRECT,
        &format!(
            "[redis]\nurl = \"redis://gw:gw-secret@127.0.0.1:{}\"\ntimeout_ms = 1000\n[limits]\ndefault_limit = 2\n",
            redis.port
        ),
    );
    // Limiting works; the overrides are not read, and the log says so.
    let statuses: Vec<u16> = (0..3)
        .map(|_| get(&gw.proxy, "/", &[]).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 429], "{}", gw.log());
    wait_for("the warning", Duration::from_secs(10), || {
        gw.log()
            .contains("overrides set at runtime: cannot read them")
            .then_some(())
    });
    // Changes through the admin API fail with 503.
    let mut admin = Conn::open(&gw.admin).unwrap();
    for (method, path, body) in [
        ("PUT", "/api/overrides/default/10.9.9.9", r#"{"limit": 50}"#),
        ("PUT", "/api/bans/default/10.9.9.8", r#"{"for_ms": 60000}"#),
    ] {
        let r = admin.send(method, path, &[], body).unwrap();
        assert_eq!(r.status, 503, "{method} {path}: {}", r.body);
    }
}
