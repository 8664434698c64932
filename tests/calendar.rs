//! Calendar quotas (contract §15) at their boundaries, on gateways whose clock says it is
//! just before one (libfaketime, with the monotonic clock left alone, so timers run as they
//! should): a daily quota in Berlin renews at Berlin's midnight, also on the 23-hour day
//! daylight saving makes (29 March 2026); a monthly quota billed on the 31st renews on the
//! 30th of a 30-day month; `Retry-After` and the IETF fields count to the boundary. Both
//! stores.

mod common;

use std::time::{Duration, Instant};

use common::http::{Conn, Response};
use common::procs::{Gateway, RedisServer};

/// libfaketime, as Debian installs it.
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([std::path::PathBuf::from(
            "/usr/lib/faketime/libfaketime.so.1",
        )])
        .find(|p| p.exists());
    found
        .expect("libfaketime must be installed (scripts/deps.sh installs faketime)")
        .to_string_lossy()
        .into_owned()
}

/// A gateway whose wall clock starts at `utc` (and runs from there).
fn at(utc: &str, store: &str, rule: &str) -> Gateway {
    let lib = libfaketime();
    let fake = format!("@{utc}");
    Gateway::start_with_env(
        "",
        &format!(
            "{store}\n[proxy.direct_response]\nbody = \"ok\"\n[headers]\nstyle = \"both\"\n[limits]\ndefault_limit = 100000\n{rule}"
        ),
        &[
            ("TZ", "UTC"),
            ("LD_PRELOAD", &lib),
            ("FAKETIME", &fake),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

fn quota(period: &str, zone: &str, extra: &str, limit: u32) -> String {
    format!(
        "[[rules]]\nname = \"quota\"\nkey = \"header:X-Api-Key\"\nlimit = {limit}\nperiod = \"{period}\"\ntimezone = \"{zone}\"\n{extra}\n"
    )
}

/// The policy's window (`w`) of the quota rule, in seconds.
fn window(r: &Response) -> u64 {
    let policy = r.header("RateLimit-Policy").unwrap();
    let item = policy
        .split(", ")
        .find(|i| i.starts_with("\"quota\""))
        .unwrap();
    item.rsplit("w=").next().unwrap().parse().unwrap()
}

/// Uses up `limit` requests, checks the refusal counts to the boundary (at most `within`
/// seconds away) with the period's length `w`, and returns once a request is allowed again
/// (the new period), with how long that took.
fn renews(gw: &Gateway, limit: u32, w: u64, within: u64) -> (Duration, Response) {
    let mut c = Conn::open(&gw.proxy).unwrap();
    let key = [("X-Api-Key", "tenant-1")];
    for _ in 0..limit {
        let r = c.get("/", &key).unwrap();
        assert_eq!(r.status, 200, "{}", gw.log());
        assert_eq!(window(&r), w, "the period's length");
    }
    let refused = c.get("/", &key).unwrap();
    let asked = Instant::now();
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.header("Retry-After").unwrap().parse().unwrap();
    assert!(
        (1..=within).contains(&retry),
        "Retry-After {retry}: to the boundary, at most {within} s away"
    );
    assert_eq!(
        refused.header("X-RateLimit-Reset"),
        Some(retry.to_string().as_str())
    );
    let state = refused.header("RateLimit").unwrap();
    assert!(
        state.contains(&format!("\"quota\";r=0;t={retry}")),
        "{state}"
    );
    loop {
        let r = c.get("/", &key).unwrap();
        if r.status == 200 {
            return (asked.elapsed(), r);
        }
        assert!(
            asked.elapsed() < Duration::from_secs(within + 2),
            "not renewed at the boundary"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daily_quota_renews_at_berlin_midnight() {
    // 23:59:55 in Berlin (CET, UTC+1) on 10 March 2026.
    let gw = at(
        "2026-03-10 22:59:55",
        "",
        &quota("day", "Europe/Berlin", "", 2),
    );
    let (took, r) = renews(&gw, 2, 86_400, 5);
    println!("Berlin midnight: renewed {took:?} after the refusal");
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("1"), "a fresh day");
    assert_eq!(window(&r), 86_400);
}

#[test]
fn the_23_hour_day_of_daylight_saving_renews_at_its_midnight() {
    // 23:59:55 in Berlin (CEST, UTC+2) on 29 March 2026, which began at 23:00 UTC the day
    // before: a day of 23 hours. A quota that took days as 24 hours would renew an hour late.
    let redis = RedisServer::start();
    for store in [
        String::new(),
        format!("[redis]\nurl = \"{}\"\n", redis.url()),
    ] {
        let gw = at(
            "2026-03-29 21:59:55",
            &store,
            &quota("day", "Europe/Berlin", "", 2),
        );
        let (took, r) = renews(&gw, 2, 23 * 3600, 5);
        println!(
            "29 March (23 hours), {}: renewed {took:?} after the refusal",
            if store.is_empty() {
                "embedded"
            } else {
                "redis"
            }
        );
        assert_eq!(window(&r), 86_400, "30 March has 24");
    }
}

#[test]
fn a_month_billed_on_the_31st_renews_on_the_30th_of_a_30_day_month() {
    // 23:59:55 UTC on 29 April 2026: the period began on 31 March, and April has no 31st.
    let gw = at(
        "2026-04-29 23:59:55",
        "",
        &quota("month", "UTC", "anchor_day = 31", 1),
    );
    // 31 March to 30 April: 30 days.
    let (took, r) = renews(&gw, 1, 30 * 86_400, 5);
    println!("anchor_day 31 in April: renewed {took:?} after the refusal");
    // 30 April to 31 May: 31 days.
    assert_eq!(window(&r), 31 * 86_400);
}

#[test]
fn a_calendar_quota_counts_costs_in_units_in_both_stores() {
    let redis = RedisServer::start();
    for store in [
        String::new(),
        format!("[redis]\nurl = \"{}\"\n", redis.url()),
    ] {
        let gw = Gateway::start(
            "",
            &format!(
                "{store}\n[proxy.direct_response]\nbody = \"ok\"\n[limits]\ndefault_limit = 100000\n{}",
                quota("month", "UTC", "cost = \"header:X-Cost\"\nmax_cost = 10", 10)
            ),
        );
        let mut c = Conn::open(&gw.proxy).unwrap();
        let mut send = |cost: &str| {
            let r = c.get("/", &[("X-Api-Key", "t"), ("X-Cost", cost)]).unwrap();
            (
                r.status,
                r.header("X-RateLimit-Remaining").map(str::to_string),
            )
        };
        assert_eq!(send("4"), (200, Some("6".into())));
        assert_eq!(send("4"), (200, Some("2".into())));
        assert_eq!(send("3").0, 429, "3 units do not fit in 2");
        assert_eq!(send("2"), (200, Some("0".into())), "2 do");
        assert_eq!(gw.count("quota/x-api-key:t"), 10, "{store}");
    }
}
