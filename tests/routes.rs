//! Routes (contract §18), on the wire: requests go to the pool of the first route whose
//! conditions they meet (by path, by host), the rest to `[proxy] upstreams`; each route has
//! its own timeouts; routes are added and removed by a reload under load without a failed
//! request; `/api/limits` lists them.

mod common;

use std::time::Duration;

use common::http::{get, Conn};
use common::load::KeepAliveLoad;
use common::procs::Gateway;
use common::upstream::Upstream;
use common::wait_for;

fn routes(api: &Upstream, admin: &Upstream, extra: &str) -> String {
    format!(
        "[limits]\ndefault_limit = 1000000\n\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstreams = [\"{}\"]\nread_timeout_ms = 300\n\n\
         [[routes]]\nname = \"admin-site\"\nhost = \"admin.example.com\"\nupstreams = [\"{}\"]\n\n{extra}",
        api.addr, admin.addr
    )
}

fn upstream_of(gw: &Gateway, path: &str, host: &str) -> (u16, String) {
    let r = get(&gw.proxy, path, &[("Host", host)]).unwrap();
    (r.status, r.header("X-Upstream").unwrap_or("").to_string())
}

#[test]
fn requests_go_to_the_pool_of_the_first_route_they_meet_and_the_rest_to_the_default() {
    let (default, api, admin) = (Upstream::start(), Upstream::start(), Upstream::start());
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", default.addr),
        &routes(&api, &admin, ""),
    );
    assert_eq!(
        upstream_of(&gw, "/api/orders", "shop.example.com"),
        (200, api.addr.clone())
    );
    assert_eq!(
        upstream_of(&gw, "/", "admin.example.com"),
        (200, admin.addr.clone())
    );
    // Both routes match: the first in the file takes it.
    assert_eq!(
        upstream_of(&gw, "/api/x", "admin.example.com"),
        (200, api.addr.clone())
    );
    assert_eq!(
        upstream_of(&gw, "/other", "shop.example.com"),
        (200, default.addr.clone())
    );
    let limits: serde_json::Value =
        serde_json::from_str(&get(&gw.admin, "/api/limits", &[]).unwrap().body).unwrap();
    assert_eq!(limits["routes"][0]["name"], "api");
    assert_eq!(limits["routes"][0]["match"]["path_prefix"], "/api/");
    assert_eq!(limits["routes"][0]["read_timeout_ms"], 300);
    assert_eq!(limits["routes"][1]["match"]["host"], "admin.example.com");
    assert_eq!(limits["routes"][1]["read_timeout_ms"], 60_000, "[proxy]'s");
}

#[test]
fn each_route_has_its_own_read_timeout() {
    let upstream = Upstream::start();
    // The same upstream, slow to answer: past the route's 300 ms, within [proxy]'s 60 s.
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", upstream.addr),
        &format!(
            "[limits]\ndefault_limit = 1000000\n\n[[routes]]\nname = \"impatient\"\npath_prefix = \"/sleep/1\"\nupstreams = [\"{}\"]\nread_timeout_ms = 300\n",
            upstream.addr
        ),
    );
    let started = std::time::Instant::now();
    assert_eq!(
        upstream_of(&gw, "/sleep/1000", "h").0,
        504,
        "the route's 300 ms"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert_eq!(
        upstream_of(&gw, "/sleep/800", "h"),
        (200, upstream.addr.clone())
    );
}

#[test]
fn a_reload_adds_and_removes_routes_under_load_with_no_failed_request() {
    let (default, api, admin) = (Upstream::start(), Upstream::start(), Upstream::start());
    let proxy = format!("upstreams = [\"{}\"]", default.addr);
    let gw = Gateway::start(&proxy, "[limits]\ndefault_limit = 1000000\n");
    let load = KeepAliveLoad::start(&gw.proxy, 8, "/api/orders");
    std::thread::sleep(Duration::from_millis(300));
    // Added: /api/ goes to its own pool.
    gw.reload_with(&proxy, &routes(&api, &admin, ""));
    wait_for("the route in force", Duration::from_secs(5), || {
        (upstream_of(&gw, "/api/orders", "h").1 == api.addr).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let served = api.served();
    assert!(served > 0);
    // Removed again.
    gw.reload_with(&proxy, "[limits]\ndefault_limit = 1000000\n");
    wait_for("the route gone", Duration::from_secs(5), || {
        (upstream_of(&gw, "/api/orders", "h").1 == default.addr).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let tally = load.finish();
    println!(
        "two reloads under 8 keep-alive clients: {:?}",
        tally.answered
    );
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(tally.answered.keys().copied().collect::<Vec<_>>(), [200]);
    assert!(api.served() >= served && default.served() > 0);
    let mut c = Conn::open(&gw.proxy).unwrap();
    assert_eq!(
        c.get("/api/x", &[]).unwrap().header("X-Upstream"),
        Some(default.addr.as_str())
    );
}
