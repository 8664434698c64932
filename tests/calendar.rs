//! Calendar quotas (contract §15) at their boundaries, on gateways whose clock says it is
//! just before one (libfaketime, with the monotonic clock left alone, so timers run as they
//! should): a daily quota in Berlin renews at Berlin's midnight, also on the 23-hour day
//! daylight saving makes (29 March 2026); a monthly quota billed on the 31st renews on the
//! 30th of a 30-day month; `Retry-After` and the IETF fields count to the boundary. Both
//! stores.
//! Also: the count in Redis as one string (`c:<units>:<end>`) expiring at the period's end;
//! the file's and runtime overrides changing a quota's limit; `/api/limits` showing
//! `period`, `timezone` and `anchor_day`; `delay` refused with a quota; and every zone known
//! with no system time-zone database.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{get, Conn, Response};
use common::procs::{Gateway, RedisServer};
use serde_json::json;

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

/// How long before the boundary each gateway's clock starts: room for its start and the
/// requests before the boundary on a loaded machine (each test then waits that long, less
/// what the start took, for the boundary to pass).
const AHEAD: u64 = 20;

/// A gateway whose wall clock starts at `utc` (and runs from there), and when it was started
/// (its clock cannot have started before).
fn at(utc: &str, store: &str, rule: &str) -> (Gateway, Instant) {
    let lib = libfaketime();
    let fake = format!("@{utc}");
    let started = Instant::now();
    let gw = Gateway::start_with_env(
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
    );
    (gw, started)
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

/// Uses up `limit` requests on a gateway whose clock was started [`AHEAD`] seconds before
/// the boundary at `started`, checks the refusal counts to the boundary (at most [`AHEAD`]
/// seconds away, less no more than the time since `started`) with the period's length `w`,
/// and returns once a request is allowed again (the new period), with how long that took.
fn renews(gw: &Gateway, started: Instant, limit: u32, w: u64) -> (Duration, Response) {
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
    // The gateway's clock ran at most `since` from AHEAD s before the boundary.
    let since = (asked - started).as_secs_f64();
    assert!(
        (1..=AHEAD).contains(&retry) && retry as f64 >= AHEAD as f64 - since,
        "Retry-After {retry}: to the boundary, {AHEAD} s after the clock started, {since:.1} s ago"
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
            asked.elapsed() < Duration::from_secs(retry + 2),
            "not renewed at the boundary, {retry} s after the refusal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_daily_quota_renews_at_berlin_midnight() {
    // 23:59:40 in Berlin (CET, UTC+1) on 10 March 2026: AHEAD s before midnight.
    let (gw, started) = at(
        "2026-03-10 22:59:40",
        "",
        &quota("day", "Europe/Berlin", "", 2),
    );
    let (took, r) = renews(&gw, started, 2, 86_400);
    println!("Berlin midnight: renewed {took:?} after the refusal");
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("1"), "a fresh day");
    assert_eq!(window(&r), 86_400);
}

#[test]
fn the_23_hour_day_of_daylight_saving_renews_at_its_midnight() {
    // 23:59:40 in Berlin (CEST, UTC+2) on 29 March 2026, AHEAD s before midnight; the day
    // began at 23:00 UTC the day before: a day of 23 hours. A quota that took days as 24
    // hours would renew an hour late.
    // Both stores at once, each on a gateway of its own: the wait for the boundary is shared.
    let redis = RedisServer::start();
    let stores = [
        ("embedded", String::new()),
        ("redis", format!("[redis]\nurl = \"{}\"\n", redis.url())),
    ];
    std::thread::scope(|s| {
        let runs: Vec<_> = stores
            .iter()
            .map(|(name, store)| {
                s.spawn(move || {
                    let (gw, started) = at(
                        "2026-03-29 21:59:40",
                        store,
                        &quota("day", "Europe/Berlin", "", 2),
                    );
                    let (took, r) = renews(&gw, started, 2, 23 * 3600);
                    println!("29 March (23 hours), {name}: renewed {took:?} after the refusal");
                    assert_eq!(window(&r), 86_400, "30 March has 24 ({name})");
                })
            })
            .collect();
        for run in runs {
            if let Err(e) = run.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
}

#[test]
fn a_month_billed_on_the_31st_renews_on_the_30th_of_a_30_day_month() {
    // 23:59:40 UTC on 29 April 2026, AHEAD s before midnight: the period began on 31
    // March, and April has no 31st.
    let (gw, started) = at(
        "2026-04-29 23:59:40",
        "",
        &quota("month", "UTC", "anchor_day = 31", 1),
    );
    // 31 March to 30 April: 30 days.
    let (took, r) = renews(&gw, started, 1, 30 * 86_400);
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

const QUOTAS: &str = "[[rules]]\nname = \"daily\"\npath = \"/daily\"\nkey = \"header:X-Api-Key\"\nlimit = 3\nperiod = \"day\"\noverrides = { \"vip\" = 5 }\n\
     [[rules]]\nname = \"monthly\"\npath = \"/monthly\"\nkey = \"header:X-Api-Key\"\nlimit = 100\nperiod = \"month\"\ntimezone = \"Asia/Kathmandu\"\nanchor_day = 15\n\
     [[rules]]\nname = \"weekly\"\npath = \"/weekly\"\nkey = \"header:X-Api-Key\"\nlimit = 10\nperiod = \"week\"\ntimezone = \"America/New_York\"\n";

#[test]
fn a_quota_in_redis_is_one_string_expiring_at_the_periods_end() {
    let redis = RedisServer::start();
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!(
            "[redis]\nurl = \"{}\"\n[privacy]\nclear_keys = true\n[limits]\ndefault_limit = 1000\n{QUOTAS}",
            redis.url()
        ),
    );
    for _ in 0..2 {
        let r = get(&gw.proxy, "/daily", &[("X-Api-Key", "alice")]).unwrap();
        assert_eq!(r.status, 200);
    }
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ratelimit:daily/*")
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let kind: String = redis::cmd("TYPE").arg(&keys[0]).query(&mut c).unwrap();
    assert_eq!(kind, "string");
    // `c:<units>:<end>`: the units counted, and the period's end (a UTC day: the next
    // midnight, ms since the epoch), when the key expires.
    let value: String = redis::cmd("GET").arg(&keys[0]).query(&mut c).unwrap();
    let now = common::epoch_ms();
    let midnight = now - now % 86_400_000 + 86_400_000;
    let end: u64 = value
        .strip_prefix("c:2:")
        .unwrap_or_else(|| panic!("{value}"))
        .parse()
        .unwrap();
    assert!(
        end.abs_diff(midnight) < 5_000,
        "{value}: midnight is {midnight}"
    );
    let pttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut c).unwrap();
    let to_midnight = (midnight - now) as i64;
    assert!(
        (to_midnight - 5_000..=to_midnight + 1_000).contains(&pttl),
        "PTTL {pttl} ms, midnight in {to_midnight} ms"
    );
}

#[test]
fn overrides_change_a_quotas_limit_and_the_limits_show_its_period() {
    let gw = Gateway::start(
        "[proxy.direct_response]\nbody = \"ok\"",
        &format!("[limits]\ndefault_limit = 1000\n{QUOTAS}"),
    );
    let limit = |key: &str| {
        get(&gw.proxy, "/daily", &[("X-Api-Key", key)])
            .unwrap()
            .header("X-RateLimit-Limit")
            .map(str::to_string)
    };
    assert_eq!(limit("alice").as_deref(), Some("3"));
    assert_eq!(limit("vip").as_deref(), Some("5"), "the file's override");
    let r = Conn::open(&gw.admin)
        .unwrap()
        .send("PUT", "/api/overrides/daily/alice", &[], r#"{"limit": 8}"#)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(limit("alice").as_deref(), Some("8"), "a runtime override");
    // The count kept: alice has used 2 of 8 (this request the third).
    let r = get(&gw.proxy, "/daily", &[("X-Api-Key", "alice")]).unwrap();
    assert_eq!(r.header("X-RateLimit-Remaining"), Some("5"));

    let limits: serde_json::Value =
        serde_json::from_str(&get(&gw.admin, "/api/limits", &[]).unwrap().body).unwrap();
    let rule = |name: &str| {
        let r = limits["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {limits}"));
        json!([r["period"], r["timezone"], r["anchor_day"]])
    };
    assert_eq!(rule("daily"), json!(["day", "UTC", null]));
    assert_eq!(rule("monthly"), json!(["month", "Asia/Kathmandu", 15]));
    assert_eq!(rule("weekly"), json!(["week", "America/New_York", null]));
}

/// `ratelimiter -t` on a config file: (success, what it printed). `no_system_zones`: with
/// `TZDIR` naming an empty directory, where the time-zone library looks first, so no zone
/// can come from the system's database (`/usr/share/zoneinfo`).
fn check(config: &str, no_system_zones: bool) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("calendar-more-{}", std::process::id()));
    let empty = dir.join("zoneinfo");
    std::fs::create_dir_all(&empty).unwrap();
    let path = dir.join(format!("{no_system_zones}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    command.arg("-t").arg("-c").arg(&path);
    if no_system_zones {
        command.env("TZDIR", &empty);
    }
    let out = command.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_time_zones_are_built_in_and_delay_is_refused() {
    let zones = [
        "Europe/Berlin",
        "Asia/Kathmandu",
        "America/Argentina/Buenos_Aires",
        "Pacific/Chatham",
        "Australia/Lord_Howe",
    ];
    let config: String = zones
        .iter()
        .enumerate()
        .map(|(i, zone)| {
            format!(
                "[[rules]]\nname = \"q{i}\"\nkey = \"header:X-Api-Key\"\nlimit = 5\nperiod = \"day\"\ntimezone = \"{zone}\"\n"
            )
        })
        .collect();
    let (ok, out) = check(&config, true);
    assert!(ok, "with no system time-zone database: {out}");
    // And an unknown zone is still refused there: the zones were looked up.
    let (ok, out) = check(
        "[[rules]]\nname = \"q\"\nlimit = 5\nperiod = \"day\"\ntimezone = \"Mars/Olympus\"\n",
        true,
    );
    assert!(!ok, "{out}");
    assert!(out.contains("found \"Mars/Olympus\""), "{out}");

    let (ok, out) = check(
        "[[rules]]\nname = \"q\"\nlimit = 5\nperiod = \"day\"\ndelay = 2\n",
        false,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("[[rules]] #1 delay: a calendar quota is not paced; remove delay or period"),
        "{out}"
    );
}
