//! The gateway behind Redis Sentinel (contract §9): one master, one replica and three
//! sentinels, all real processes. The master is found through the sentinels, and followed
//! when it dies or hangs: every request is answered within the timeout meanwhile, and exact
//! limiting resumes on the promoted replica.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::failover::{check_and_report, first_decision, Load};
use common::http::{get, post, Conn};
use common::procs::Gateway;
use common::topologies::{cli, Sentinels};
use common::wait_for;

fn gateway_body(set: &Sentinels, extra: &str) -> String {
    format!(
        "[privacy]\nclear_keys = true\n[node]\nttl_seconds = 3\nheartbeat_seconds = 1\n[redis]\nsentinels = {}\nsentinel_master = \"mymaster\"\n{extra}\n[proxy.direct_response]\nbody = \"ok\"\n",
        set.urls()
    )
}

fn zcard(set: &Sentinels, key: &str) -> usize {
    cli(set.current_master(), &[], &["ZCARD", key])
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_master_is_found_through_the_sentinels() {
    let set = Sentinels::start();
    let body = gateway_body(
        &set,
        "timeout_ms = 1000\n[limits]\ndefault_limit = 3\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\"\n\
         [[rules]]\nname = \"slots\"\npath_prefix = \"/slots/\"\nkey = \"header:X-Api-Key\"\nconcurrency = 1\nskip_default = true",
    );
    let gw = Gateway::start("", &body.replace("[node]\n", "[node]\nid = \"gw-s\"\n"));
    // Concurrency slots on the master: taken and freed, one request after another.
    let mut c = Conn::open(&gw.proxy).unwrap();
    for _ in 0..3 {
        let r = c.get("/slots/x", &[("X-Api-Key", "alice")]).unwrap();
        assert_eq!(r.status, 200, "{}", gw.log());
    }
    // (The last is freed just after its answer.)
    wait_for("every slot freed", Duration::from_secs(2), || {
        (zcard(&set, "ratelimit:slots/x-api-key:alice") == 0).then_some(())
    });
    let k = [("X-Api-Key", "alice")];
    let mut c = Conn::open(&gw.proxy).unwrap();
    let statuses: Vec<u16> = (0..4).map(|_| c.get("/", &k).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", gw.log());
    // Recorded on the master, and copied to the replica.
    assert_eq!(
        cli(
            set.master.port,
            &[],
            &["ZCARD", "ratelimit:x-api-key:alice"]
        )
        .trim(),
        "3"
    );
    wait_for("the replica's copy", Duration::from_secs(5), || {
        let n = cli(
            set.replica.port,
            &[],
            &["ZCARD", "ratelimit:x-api-key:alice"],
        );
        (n.trim() == "3").then_some(())
    });
    assert_eq!(get(&gw.admin, "/health", &[]).unwrap().status, 200);
    let counters = get(&gw.admin, "/api/counters", &[]).unwrap().body;
    assert!(
        counters.contains(r#""key":"x-api-key:alice","count":3"#),
        "{counters}"
    );
    wait_for("the node in the registry", Duration::from_secs(10), || {
        let nodes = get(&gw.admin, "/api/nodes", &[]).ok()?.body;
        nodes.contains(r#""id":"gw-s""#).then_some(())
    });
    let r = post(&gw.admin, "/api/counters/x-api-key:alice/reset", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(c.get("/", &k).unwrap().status, 200);
}

/// How the master fails.
#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Freeze,
}

/// Two gateways under load lose the master; every request is answered within the timeout and
/// a margin, and once the sentinels promote the replica, limiting is exact again.
fn master_failure_under_load(fault: Fault, what: &str) {
    const TIMEOUT_MS: u64 = 300;
    const LIMIT: usize = 15;
    let mut set = Sentinels::start();
    let old_master = set.master.port;
    let body = gateway_body(
        &set,
        &format!(
            "timeout_ms = {TIMEOUT_MS}\non_error = \"allow\"\n[limits]\ndefault_limit = 1000000\ndefault_window_ms = 60000\nkey = \"header:X-Api-Key\""
        ),
    );
    let gws: Vec<Gateway> = (0..2).map(|_| Gateway::start("", &body)).collect();
    let keys: Vec<String> = (0..2).map(|i| format!("load-{i}")).collect();

    let load = Load::start(&gws.iter().collect::<Vec<_>>(), &keys);
    std::thread::sleep(Duration::from_millis(500));
    match fault {
        Fault::Kill => set.master.kill(),
        Fault::Freeze => set.master.freeze(),
    }
    let at = load.now();
    let recovery = first_decision(&load, &gws[0], &keys[0], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let samples = load.finish();
    check_and_report(what, &samples, at, &recovery, TIMEOUT_MS);
    assert_eq!(
        set.current_master(),
        set.replica.port,
        "the replica took over"
    );
    assert_ne!(set.current_master(), old_master);

    // Exact again on the promoted replica, from both gateways at once.
    let limited = body.replace(
        "default_limit = 1000000",
        &format!("default_limit = {LIMIT}"),
    );
    for gw in &gws {
        gw.reload_with("", &limited);
        // Every worker thread decides again (each on its connection to the new master).
        wait_for("the new limit", Duration::from_secs(10), || {
            (0..10)
                .all(|_| {
                    get(&gw.proxy, "/", &[("X-Api-Key", "probe")])
                        .is_ok_and(|r| r.header("X-RateLimit-Limit") == Some("15"))
                })
                .then_some(())
        });
    }
    let allowed = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(6));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let addr = gws[i % 2].proxy.clone();
            let (allowed, barrier) = (allowed.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(&addr).unwrap();
                barrier.wait();
                for _ in 0..10 {
                    let r = conn.get("/", &[("X-Api-Key", "after")]).unwrap();
                    assert!(r.header("X-RateLimit-Limit").is_some(), "decided: {r:?}");
                    if r.status == 200 {
                        allowed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::SeqCst), LIMIT);
    assert_eq!(zcard(&set, "ratelimit:x-api-key:after"), LIMIT);
    for gw in &gws {
        wait_for("healthy again", Duration::from_secs(10), || {
            let r = get(&gw.admin, "/health", &[]).ok()?;
            (r.status == 200).then_some(())
        });
    }
}

#[test]
fn a_killed_master_is_followed_and_exact_limiting_resumes() {
    master_failure_under_load(Fault::Kill, "sentinel, master killed");
}

#[test]
fn a_hung_master_is_followed_and_exact_limiting_resumes() {
    master_failure_under_load(Fault::Freeze, "sentinel, master hung");
}
