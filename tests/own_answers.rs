//! The answers the gateway makes itself (contract §17), on the wire: the `[response] headers`
//! on a 429, a refusal and pingora's own 431 (and again after a reload), so a browser's page
//! can read a refusal.

mod common;

use std::time::Duration;

use common::http::{get, Conn};
use common::procs::Gateway;
use common::upstream::Upstream;
use common::wait_for;

fn upstreams(u: &[&str]) -> String {
    let list: Vec<String> = u.iter().map(|u| format!("\"{u}\"")).collect();
    format!("upstreams = [{}]", list.join(", "))
}

/// A request whose header section is over 1024 bytes: pingora answers it 431 itself.
fn too_large_header(addr: &str) -> common::http::Response {
    let mut conn = Conn::open(addr).unwrap();
    let filler = "a".repeat(2048);
    conn.send_raw(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n").as_bytes())
        .unwrap();
    conn.read(false).unwrap()
}

#[test]
fn gateway_answers_carry_the_response_headers_so_a_page_can_read_a_429() {
    let up = Upstream::start();
    let body = |origin: &str| {
        format!(
            "[limits]\ndefault_limit = 1\ndefault_window_ms = 60000\n\n[response]\nheaders = {{ \"Access-Control-Allow-Origin\" = \"{origin}\", \"X-Served-By\" = \"edge-1\" }}\n"
        )
    };
    let proxy_extra = format!("{}\nmax_header_bytes = 1024", upstreams(&[&up.addr]));
    let gw = Gateway::start(&proxy_extra, &body("*"));

    // The upstream's own answer is the upstream's: nothing is added to it.
    let ok = get(&gw.proxy, "/", &[("Origin", "https://app.example")]).unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("Access-Control-Allow-Origin"), None, "{ok:?}");
    assert_eq!(ok.header("X-Served-By"), None);

    let blocked = get(&gw.proxy, "/", &[("Origin", "https://app.example")]).unwrap();
    assert_eq!(blocked.status, 429, "{blocked:?}");
    assert_eq!(blocked.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(blocked.header("X-Served-By"), Some("edge-1"));
    assert!(blocked.header("Retry-After").is_some());
    // None of these fields is CORS-safelisted: a page reads them only when they are exposed.
    assert_eq!(
        blocked.header("Access-Control-Expose-Headers"),
        Some("Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"),
        "{blocked:?}"
    );

    // A refusal of src/request (a lower-case method).
    let mut conn = Conn::open(&gw.proxy).unwrap();
    let refused = conn.send("get", "/", &[], "").unwrap();
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(refused.header("X-Served-By"), Some("edge-1"));

    // pingora's own answer to a request header over max_header_bytes, before any phase ran.
    let huge = too_large_header(&gw.proxy);
    assert_eq!(huge.status, 431, "{huge:?}");
    assert_eq!(
        huge.header("Access-Control-Allow-Origin"),
        Some("*"),
        "{huge:?}"
    );
    assert_eq!(huge.header("X-Served-By"), Some("edge-1"));
    assert_eq!(huge.header("Access-Control-Expose-Headers"), None);

    // A reload changes them on every kind of answer, pingora's included.
    gw.reload_with(&proxy_extra, &body("https://app.example"));
    wait_for("the reloaded headers", Duration::from_secs(10), || {
        let r = get(&gw.proxy, "/", &[]).ok()?;
        (r.header("Access-Control-Allow-Origin") == Some("https://app.example")).then_some(())
    });
    let huge = too_large_header(&gw.proxy);
    assert_eq!(
        huge.header("Access-Control-Allow-Origin"),
        Some("https://app.example"),
        "{huge:?}"
    );
    assert_eq!(up.served(), 1);
}
