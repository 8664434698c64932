//! Keys (contract §12, §17) on the wire: every source in both stores, composite keys with
//! overrides, the grammar's promise that no header can share the client IP's counter, JWT
//! claims verified with keys this test makes (forged, unsigned, expired, foreign tokens never
//! keying as the victim), and private values kept out of metrics, logs and listings.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::http::{get, post, Conn, Response};
use common::procs::{Gateway, RedisServer};
use common::topologies::Scratch;
use common::upstream::Upstream;
use common::wait_for;
use serde_json::{json, Value};

fn upstream(up: &Upstream) -> String {
    format!("upstreams = [\"{}\"]", up.addr)
}

fn body(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// Statuses of `n` requests.
fn statuses(gw: &Gateway, n: usize, path: &str, headers: &[(&str, &str)]) -> Vec<u16> {
    (0..n)
        .map(|_| get(&gw.proxy, path, headers).unwrap().status)
        .collect()
}

#[test]
fn a_header_named_ip_shares_neither_the_client_ips_counter_nor_its_override() {
    let up = Upstream::start();
    let gw = Gateway::start(
        &upstream(&up),
        "[limits]\ndefault_limit = 2\nkey = \"header:ip\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n[[rules]]\nname = \"tiers\"\nkey = \"header:ip\"\nlimit = 2\noverrides = { \"10.0.0.7\" = 100 }\n",
    );
    // A client at 192.0.2.1 sends `ip: 10.0.0.7`: counted on its own counter, and held to
    // the plain limit, not 10.0.0.7's override.
    let spoof = [("X-Forwarded-For", "192.0.2.1"), ("ip", "10.0.0.7")];
    assert_eq!(statuses(&gw, 3, "/", &spoof), [200, 200, 429]);
    // The real 10.0.0.7, without the header: keyed by its IP, its override in force, its
    // counter untouched by the other client.
    let real = [("X-Forwarded-For", "10.0.0.7")];
    let r = get(&gw.proxy, "/", &real).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("X-RateLimit-Remaining"),
        Some("1"),
        "the default rule's 2"
    );
    assert_eq!(gw.count("tiers/ip:10.0.0.7"), 1);
    assert_eq!(gw.count("tiers/header(ip):10.0.0.7"), 2);
    // Listed without a token, the header's value shows digested, the IP in clear.
    let tiers = get(&gw.admin, "/api/counters?rule=tiers", &[]).unwrap();
    let listed: Vec<Value> = body(&tiers)["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| json!([c["key"], c["limit"]]))
        .collect();
    assert_eq!(
        listed,
        [
            json!([keys_digest("tiers/header(ip):", "10.0.0.7"), 2]),
            json!(["tiers/ip:10.0.0.7", 100])
        ]
    );
}

/// The display form of a private value under a tag.
fn keys_digest(prefix: &str, value: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(value.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    format!(
        "{prefix}sha256:{}",
        &String::from_utf8_lossy(&out.stdout)[..16]
    )
}

/// A rule per source; `jwt:` tokens signed with an HS256 secret written to `secret`.
fn sources(secret: &str) -> String {
    format!(
        r#"
[jwt]
secret_file = "{secret}"

[[rules]]
name = "tok"
path_prefix = "/tok"
key = "jwt:sub"
limit = 2
{SOURCES}"#
    )
}

const HS_SECRET: [u8; 32] = [9; 32];

fn hs256(sub: &str, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": now() + 300}),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn secret_file(dir: &Scratch) -> String {
    let path = dir.path("jwt.secret");
    std::fs::write(&path, HS_SECRET).unwrap();
    path
}

const SOURCES: &str = r#"
[limits]
default_limit = 1000
trusted_proxies = ["127.0.0.1"]

[[rules]]
name = "net"
path_prefix = "/net"
key = "ip/64"
limit = 2

[[rules]]
name = "q"
path_prefix = "/q"
key = "query:api_key"
limit = 2

[[rules]]
name = "c"
path_prefix = "/c"
key = "cookie:session"
limit = 2

[[rules]]
name = "pair"
path_prefix = "/pair"
key = ["header:X-Org", "query:project"]
limit = 2
overrides = { "acme|p1" = 3 }

[[rules]]
name = "opt"
path_prefix = "/opt"
key = "header:X-Tenant"
missing = "skip"
limit = 1
"#;

fn every_source_keys_its_requests(gw: &Gateway) {
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    // ip/64: two clients of one /64 share a counter; another /64 has its own; an IPv4
    // client is keyed by its address.
    assert_eq!(statuses(gw, 1, "/net", &from("2001:db8:1:2::1")), [200]);
    assert_eq!(
        statuses(gw, 2, "/net", &from("2001:db8:1:2::2")),
        [200, 429]
    );
    assert_eq!(statuses(gw, 1, "/net", &from("2001:db8:1:3::1")), [200]);
    assert_eq!(statuses(gw, 1, "/net", &from("198.51.100.1")), [200]);
    assert_eq!(gw.count("net/ip:2001:db8:1:2::/64"), 2);
    assert_eq!(gw.count("net/ip:198.51.100.1"), 1);

    // query: the first api_key, percent-decoded; without one, the client IP.
    let q = |query: &str, ip: &'static str| statuses(gw, 1, &format!("/q?{query}"), &from(ip))[0];
    assert_eq!(q("api_key=k%2D1&api_key=other", "198.51.100.2"), 200);
    assert_eq!(q("a=1&api_key=k-1", "198.51.100.3"), 200);
    assert_eq!(q("api_key=k-1", "198.51.100.4"), 429);
    assert_eq!(q("api_key=k-2", "198.51.100.4"), 200);
    assert_eq!(q("other=1", "198.51.100.5"), 200);
    assert_eq!(gw.count("q/query(api_key):k-1"), 2);
    assert_eq!(gw.count("q/ip:198.51.100.5"), 1);

    // cookie: the first `session` over every Cookie header.
    let c = |cookie: &'static str| get(&gw.proxy, "/c", &[("Cookie", cookie)]).unwrap().status;
    assert_eq!(c("theme=dark; session=s1"), 200);
    assert_eq!(c("session=s1; session=s2"), 200);
    assert_eq!(c("session=\"s1\""), 429);
    assert_eq!(gw.count("c/cookie(session):s1"), 2);

    // A composite: one counter per combination; the override for acme|p1.
    let pair = |org: &str, project: &str| {
        get(
            &gw.proxy,
            &format!("/pair?project={project}"),
            &[("X-Org", org)],
        )
        .unwrap()
        .status
    };
    assert_eq!(
        (0..4).map(|_| pair("acme", "p1")).collect::<Vec<_>>(),
        [200, 200, 200, 429]
    );
    assert_eq!(
        (0..3).map(|_| pair("acme", "p2")).collect::<Vec<_>>(),
        [200, 200, 429]
    );
    // A value holding the separator is another combination, with no claim to acme|p1's.
    assert_eq!(
        (0..3).map(|_| pair("acme|p1", "x")).collect::<Vec<_>>(),
        [200, 200, 429]
    );
    assert_eq!(gw.count("pair/[x-org:acme|query(project):p1]"), 3);
    assert_eq!(gw.count("pair/[x-org:acme%7Cp1|query(project):x]"), 2);

    // missing = "skip": without the header, the rule does not apply.
    assert_eq!(statuses(gw, 3, "/opt", &[]), [200, 200, 200]);
    assert_eq!(statuses(gw, 2, "/opt", &[("X-Tenant", "t1")]), [200, 429]);
    let explain = post(
        &gw.admin,
        "/api/explain",
        &[],
        r#"{"path":"/pair?project=p1","ip":"127.0.0.1","headers":{"X-Org":"acme","X-Forwarded-For":"198.51.100.9"}}"#,
    )
    .unwrap();
    let checks = body(&explain)["checks"].clone();
    assert_eq!(
        checks[1]["parts"],
        json!([{"source":"header:x-org","value":"acme"},{"source":"query:project","value":"p1"}]),
        "{checks}"
    );
    assert_eq!(checks[0]["key"], "ip:198.51.100.9");

    // jwt: the claim of a verified token; another secret's token is keyed by the IP.
    let tok = |token: &str, ip: &'static str| {
        let bearer = format!("Bearer {token}");
        get(
            &gw.proxy,
            "/tok",
            &[("Authorization", &bearer), ("X-Forwarded-For", ip)],
        )
        .unwrap()
        .status
    };
    let alice = hs256("alice", &HS_SECRET);
    assert_eq!(tok(&alice, "198.51.100.10"), 200);
    assert_eq!(tok(&alice, "198.51.100.11"), 200);
    assert_eq!(tok(&alice, "198.51.100.12"), 429);
    assert_eq!(tok(&hs256("alice", &[7; 32]), "198.51.100.13"), 200);
    assert_eq!(gw.count("tok/jwt(sub):alice"), 2);
    assert_eq!(gw.count("tok/ip:198.51.100.13"), 1);
}

#[test]
fn every_source_in_the_embedded_store() {
    let dir = Scratch::new("sources");
    let up = Upstream::start();
    let gw = Gateway::start(&upstream(&up), &sources(&secret_file(&dir)));
    every_source_keys_its_requests(&gw);
}

#[test]
fn every_source_in_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let dir = Scratch::new("sources");
    let gw = Gateway::start(
        &upstream(&up),
        &format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 500\n{}",
            redis.url(),
            sources(&secret_file(&dir))
        ),
    );
    every_source_keys_its_requests(&gw);
    let mut conn = redis.conn();
    let exists: bool = redis::cmd("EXISTS")
        .arg("ratelimit:pair/[x-org:acme|query(project):p1]")
        .query(&mut conn)
        .unwrap();
    assert!(exists, "the composite's counter, in Redis under its key");
}

/// A key pair made with openssl for these tests, and its public key as a JWK.
struct KeyPair {
    pem: Vec<u8>,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn rsa_key(dir: &Scratch, kid: &str) -> KeyPair {
    let path = dir.path(&format!("{kid}.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &path,
    ]);
    let modulus = String::from_utf8(openssl(&["rsa", "-in", &path, "-noout", "-modulus"])).unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    KeyPair {
        pem: std::fs::read(&path).unwrap(),
        jwk: json!({"kty":"RSA","kid":kid,"alg":"RS256","use":"sig","n":b64(&n),"e":b64(&[1, 0, 1])}),
    }
}

fn ec_key(dir: &Scratch, kid: &str) -> KeyPair {
    let path = dir.path(&format!("{kid}.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &path,
    ]);
    let der = openssl(&["pkey", "-in", &path, "-pubout", "-outform", "DER"]);
    // The point, uncompressed, ends the DER: 0x04, X (32 bytes), Y (32 bytes).
    let point = &der[der.len() - 64..];
    KeyPair {
        pem: std::fs::read(&path).unwrap(),
        jwk: json!({"kty":"EC","kid":kid,"crv":"P-256","alg":"ES256","use":"sig","x":b64(&point[..32]),"y":b64(&point[32..])}),
    }
}

fn without(mut claims: Value, claim: &str) -> Value {
    claims.as_object_mut().unwrap().remove(claim);
    claims
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(key: &KeyPair, kid: &str, claims: Value) -> String {
    let (alg, encoding) = match key.jwk["kty"].as_str() {
        Some("RSA") => (
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(&key.pem).unwrap(),
        ),
        _ => (
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(&key.pem).unwrap(),
        ),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

#[test]
fn jwt_claims_key_only_verified_tokens() {
    let dir = Scratch::new("jwt");
    let (a, b, evil) = (rsa_key(&dir, "a"), ec_key(&dir, "b"), rsa_key(&dir, "evil"));
    let jwks = dir.path("jwks.json");
    std::fs::write(&jwks, json!({"keys":[a.jwk, b.jwk]}).to_string()).unwrap();
    let up = Upstream::start();
    let config = format!(
        "[jwt]\njwks_file = \"{jwks}\"\nalgorithms = [\"RS256\", \"ES256\"]\nissuer = \"https://auth.example.com\"\naudience = \"api\"\nleeway_seconds = 0\n\n[limits]\ndefault_limit = 1000\ntrusted_proxies = [\"127.0.0.1\"]\n\n[[rules]]\nname = \"api\"\nkey = \"jwt:sub\"\nlimit = 2\n"
    );
    let gw = Gateway::start(&upstream(&up), &config);
    let claims = |sub: &str| json!({"sub": sub, "iss": "https://auth.example.com", "aud": "api", "exp": now() + 300});
    let call = |token: &str, client: &str| {
        let bearer = format!("Bearer {token}");
        get(
            &gw.proxy,
            "/",
            &[("Authorization", &bearer), ("X-Forwarded-For", client)],
        )
        .unwrap()
        .status
    };
    // Alice's real token: her counter, full after two.
    let alice = sign(&a, "a", claims("alice"));
    assert_eq!(call(&alice, "198.51.100.1"), 200);
    assert_eq!(call(&alice, "198.51.100.2"), 200);
    assert_eq!(call(&alice, "198.51.100.3"), 429);
    // Bob's, signed with the EC key: his own counter.
    assert_eq!(call(&sign(&b, "b", claims("bob")), "198.51.100.4"), 200);
    // Tokens that claim to be alice but do not verify are keyed by the client's IP: not one
    // is refused by alice's full counter, nor counted on it.
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    let mut foreign = claims("alice");
    foreign["iss"] = json!("https://evil.example.com");
    let mut other_audience = claims("alice");
    other_audience["aud"] = json!("web");
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("alice").to_string().as_bytes())
    );
    let bad = [
        ("forged", sign(&evil, "a", claims("alice"))),
        ("forged without kid", sign(&evil, "", claims("alice"))),
        ("unsigned", unsigned),
        ("expired", sign(&a, "a", expired)),
        ("foreign issuer", sign(&a, "a", foreign)),
        ("other audience", sign(&a, "a", other_audience)),
        ("no issuer", sign(&a, "a", without(claims("alice"), "iss"))),
        (
            "no audience",
            sign(&a, "a", without(claims("alice"), "aud")),
        ),
        ("exp not a number", {
            let mut c = claims("alice");
            c["exp"] = json!("never");
            sign(&a, "a", c)
        }),
        ("not a token", "nonsense".to_string()),
    ];
    for (i, (what, token)) in bad.iter().enumerate() {
        let client = format!("198.51.100.{}", 20 + i);
        assert_eq!(call(token, &client), 200, "{what}");
        assert_eq!(gw.count(&format!("api/ip:{client}")), 1, "{what}");
    }
    assert_eq!(gw.count("api/jwt(sub):alice"), 2);
    assert_eq!(gw.count("api/jwt(sub):bob"), 1);
    // The token is read from the one Authorization header: two are refused, whichever the
    // upstream would honour.
    let two = Conn::open(&gw.proxy)
        .unwrap()
        .get(
            "/",
            &[
                ("Authorization", &format!("Bearer {alice}")),
                (
                    "Authorization",
                    &format!("Bearer {}", sign(&b, "b", claims("eve"))),
                ),
            ],
        )
        .unwrap();
    assert_eq!(two.status, 400, "{two:?}");
    let explain = post(
        &gw.admin,
        "/api/explain",
        &[],
        &json!({"ip":"127.0.0.1","headers":{"Authorization": format!("Bearer {}", bad[0].1)}})
            .to_string(),
    )
    .unwrap();
    assert_eq!(
        body(&explain)["checks"][1]["parts"],
        json!([{"source":"jwt:sub","value":null}])
    );

    // The key file is read again on reload: the rotated set verifies the new key's tokens,
    // and no longer the old ones.
    std::fs::write(&jwks, json!({"keys":[evil.jwk]}).to_string()).unwrap();
    gw.reload_with(&upstream(&up), &config);
    let carol = sign(&evil, "evil", claims("carol"));
    wait_for("the rotated keys", Duration::from_secs(10), || {
        (call(&carol, "198.51.100.40") == 200 && gw.count("api/jwt(sub):carol") > 0).then_some(())
    });
    assert_eq!(call(&sign(&a, "a", claims("dave")), "198.51.100.41"), 200);
    assert_eq!(
        gw.count("api/jwt(sub):dave"),
        0,
        "the old key no longer verifies"
    );
}

#[test]
fn private_values_stay_out_of_metrics_logs_and_listings() {
    const SECRET: &str = "s3cr3t-k3y-4242";
    let up = Upstream::start();
    let dead = format!("127.0.0.1:{}", common::free_port());
    let body_config = "[admin]\ntoken = \"admin-token\"\n\n[log]\naccess = \"stderr\"\n\n[limits]\ndefault_limit = 1\nkey = \"header:X-Api-Key\"\n\n[[rules]]\nname = \"q\"\npath_prefix = \"/q\"\nkey = \"query:api_key\"\nlimit = 1\nskip_default = true\n\n[[rules]]\nname = \"c\"\npath_prefix = \"/c\"\nkey = \"cookie:session\"\nlimit = 1\nskip_default = true\noverrides = { \"s3cr3t-k3y-4242\" = 1, \"10.0.0.1\" = 3 }\n".to_string();
    // The admin table is the harness's; a second one would be a duplicate. Its listen is put
    // into ours.
    let proxy = format!("127.0.0.1:{}", common::free_port());
    let admin = format!("127.0.0.1:{}", common::free_port());
    let text = format!(
        "[server]\nthreads = 2\ngrace_period_seconds = 1\n\n[proxy]\nlisten = \"{proxy}\"\nupstreams = [\"{}\", \"{dead}\"]\nretries = 0\n\n{}",
        up.addr,
        body_config.replace("[admin]\n", &format!("[admin]\nlisten = \"{admin}\"\n"))
    );
    let gw = Gateway::start_text_with_env(&proxy, &admin, &text, &[("RUST_LOG", "debug")]);
    let sent = [
        ("/", vec![("X-Api-Key", SECRET)]),
        ("/", vec![("X-Api-Key", SECRET)]),
        ("/q/x?api_key=s3cr3t-k3y-4242&b=1", vec![]),
        ("/q/x?api_key=s3cr3t-k3y-4242&b=1", vec![]),
        ("/c", vec![("Cookie", "session=s3cr3t-k3y-4242")]),
        ("/c", vec![("Cookie", "session=s3cr3t-k3y-4242")]),
    ];
    let mut seen = Vec::new();
    for (path, headers) in &sent {
        // Several times, so that some go to the dead upstream and fail (502), which pingora
        // logs with the request.
        for _ in 0..2 {
            let mut c = Conn::open(&gw.proxy).unwrap();
            seen.push(c.get(path, headers).unwrap().status);
        }
    }
    assert!(seen.contains(&429), "{seen:?}");
    let metrics = get(&gw.admin, "/metrics", &[]).unwrap().body;
    let counters = get(&gw.admin, "/api/counters", &[]).unwrap().body;
    let blocks = get(&gw.admin, "/api/blocks", &[]).unwrap().body;
    let limits = get(&gw.admin, "/api/limits", &[]).unwrap().body;
    wait_for("the access log lines", Duration::from_secs(5), || {
        (gw.log().matches("decision=").count() >= seen.len()).then_some(())
    });
    let log = gw.log();
    assert!(log.contains(" DEBUG "), "debug logging is on: {log}");
    for (what, text) in [
        ("/metrics", &metrics),
        ("/api/counters", &counters),
        ("/api/blocks", &blocks),
        ("/api/limits", &limits),
        ("the log", &log),
    ] {
        assert!(!text.contains(SECRET), "{what} holds the secret: {text}");
    }
    // Digested the same way everywhere: `printf s3cr3t-k3y-4242 | sha256sum | cut -c1-16`.
    let digest = keys_digest("", SECRET);
    for shown in [
        format!("x-api-key:{digest}"),
        format!("q/query(api_key):{digest}"),
        format!("c/cookie(session):{digest}"),
    ] {
        assert!(counters.contains(&shown), "{shown} in {counters}");
        assert!(metrics.contains(&shown), "{shown} in the metrics");
    }
    assert!(blocks.contains(&format!("x-api-key:{digest}")), "{blocks}");
    // An override's value is digested the same way; an address is not private.
    let overrides = &serde_json::from_str::<Value>(&limits).unwrap()["rules"][2]["overrides"];
    assert_eq!(overrides[&digest], 1, "{limits}");
    assert_eq!(overrides["10.0.0.1"], 3, "{limits}");
    // With the token, listings show values in clear; the admin endpoints take the clear value.
    let auth = [("Authorization", "Bearer admin-token")];
    let clear = get(&gw.admin, "/api/counters", &auth).unwrap().body;
    assert!(clear.contains(&format!("x-api-key:{SECRET}")), "{clear}");
    assert_eq!(gw.count(&format!("x-api-key:{SECRET}")), 1);
    let limits = body(&get(&gw.admin, "/api/limits", &auth).unwrap());
    assert_eq!(limits["rules"][2]["overrides"][SECRET], 1, "{limits}");
    let reset = post(
        &gw.admin,
        &format!("/api/counters/x-api-key:{SECRET}/reset"),
        &auth,
        "",
    )
    .unwrap();
    assert_eq!(reset.status, 200, "{reset:?}");
    assert_eq!(gw.count(&format!("x-api-key:{SECRET}")), 0);
}
