//! Every config rule has a bad fixture in `tests/fixtures/bad/`; each must be rejected with
//! exactly these messages (line:column: text), all at once. `ratelimiter -t` must accept every
//! shipped file in `conf/` and reject every fixture.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use ratelimiter::config::{Config, OnError, RedisTopology};

/// Fixture name → the errors after `<path>:`.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "bad_admin_listen",
        &[
            r#"2:10: [admin] listen: expected an IP address and port like "127.0.0.1:8080", found "127.0.0.1:99999""#,
        ],
    ),
    (
        "bad_bool",
        &[r#"2:11: [limits] enabled: expected true or false, found string "yes""#],
    ),
    (
        "bad_cidr",
        &[
            r#"2:34: [limits] trusted_proxies: expected a CIDR like "10.0.0.0/8" or an IP address, found "10.0.0.0/33""#,
        ],
    ),
    (
        "bad_header_name",
        &[
            r#"2:7: [limits] key: expected "ip", "ip/<1..=128>", "header:<Header-Name>", "query:<name>", "cookie:<name>" or "jwt:<claim>", found "header:X Api Key""#,
        ],
    ),
    (
        "bad_key_source",
        &[
            r#"2:7: [limits] key: expected "ip", "ip/<1..=128>", "header:<Header-Name>", "query:<name>", "cookie:<name>" or "jwt:<claim>", found "cookie""#,
        ],
    ),
    (
        "bad_listen",
        &[
            r#"2:10: [proxy] listen: expected an IP address and port like "127.0.0.1:8080", found "localhost""#,
        ],
    ),
    (
        "bad_node_address",
        &[r#"2:11: [node] address: expected "host:port", found "no-port""#],
    ),
    (
        "bad_node_id",
        &[
            r#"2:6: [node] id: expected 1 to 128 visible ASCII characters (no spaces), found "node 1""#,
        ],
    ),
    (
        "bad_on_error",
        &[r#"2:12: [redis] on_error: expected "allow" or "deny", found "retry""#],
    ),
    (
        "bad_redis_url",
        &[
            r#"2:7: [redis] url: expected a redis:// or rediss:// URL, found "http://127.0.0.1:6379""#,
        ],
    ),
    (
        "bad_status",
        &[
            r#"2:10: [proxy.direct_response] status: expected an HTTP status 100..=599, found integer 700"#,
        ],
    ),
    (
        "bad_threads",
        &[
            r#"2:11: [server] threads: expected an integer 0..=1024 (0: one per core), found integer -2"#,
        ],
    ),
    (
        "bad_upstream",
        &[
            r#"2:32: [proxy] upstreams: expected "host:port", "http://host[:port]", "https://host[:port]" or "h2://host:port" (port 1..=65535), found "no-port-here""#,
        ],
    ),
    (
        "empty_token",
        &[
            r#"2:9: [admin] token: expected a non-empty string without spaces or control characters"#,
        ],
    ),
    (
        "empty_upstreams",
        &[r#"2:13: [proxy] upstreams: expected at least one "host:port" or "https://host:port""#],
    ),
    (
        "heartbeat_not_below_ttl",
        &[r#"3:21: [node] heartbeat_seconds: expected less than ttl_seconds (10), found 10"#],
    ),
    (
        "many_errors",
        &[
            r#"2:10: [proxy] listen: expected an IP address and port like "127.0.0.1:8080", found "nowhere""#,
            r#"5:17: [limits] default_limit: expected an integer 1..=4294967295, found integer 0"#,
            r#"6:7: [limits] key: expected "ip", "ip/<1..=128>", "header:<Header-Name>", "query:<name>", "cookie:<name>" or "jwt:<claim>", found "cookie""#,
            r#"7:1: unknown key `bogus` in [limits]; expected one of: enabled, default_limit, default_window_ms, key, missing, trusted_proxies, preflight"#,
        ],
    ),
    (
        "negative_labels",
        &[r#"2:18: [metrics] max_key_labels: expected an integer 0..=1000000, found integer -1"#],
    ),
    (
        "section_not_table",
        &[r#"1:9: `proxy` must be a table ([proxy]), found string"#],
    ),
    (
        "syntax",
        &[
            r#"2:17: invalid TOML: extra `=`, expected nothing"#,
            r#"2:19: invalid TOML: unexpected key or value, expected newline, `#`"#,
        ],
    ),
    (
        "unknown_key",
        &[
            r#"3:1: unknown key `listne` in [proxy]; expected one of: listen, tls_listen, tls_cert_file, tls_key_file, upstreams, upstream_tls_ca_file, connect_timeout_ms, read_timeout_ms, write_timeout_ms, keepalive_timeout_seconds, retries, health_check, direct_response, escaped_slashes, path_parameters, allowed_hosts, max_header_bytes, header_timeout_ms, max_connections, max_body_bytes, h2c, buffering"#,
        ],
    ),
    (
        "response_headers",
        &[
            r#"2:13: [response] headers: "Connection" is a hop-by-hop or framing field, which the gateway sets for each connection itself; expected any other field"#,
            r#"2:37: [response] headers: expected a header name (a token like "Access-Control-Allow-Origin"), found "X Bad""#,
            r#"2:52: [response] headers: "Retry-After" is set by the gateway on its own answers; expected any other field"#,
            r#"2:73: [response] headers: "Content-Length" is a hop-by-hop or framing field, which the gateway sets for each connection itself; expected any other field"#,
        ],
    ),
    (
        "response_header_values",
        &[
            r#"2:12: [response] headers: "X-Bell": expected a value of visible ASCII characters, spaces and tabs, not starting or ending with a space, found "a\u{7}b""#,
            r#"3:14: [response] headers: "X-Accent": expected a value of visible ASCII characters, spaces and tabs, not starting or ending with a space, found "café""#,
            r#"4:14: [response] headers: "X-Padded": expected a value of visible ASCII characters, spaces and tabs, not starting or ending with a space, found " padded""#,
            r#"6:1: [response] headers: "x-twice" is named twice (names ignore case); expected each field once"#,
            r#"7:14: [response] headers: "X-Number": expected a string, found integer 5"#,
        ],
    ),
    (
        "unknown_section",
        &[
            r#"1:2: unknown section [proxies]; expected one of: server, proxy, admin, node, redis, limits, jwt, privacy, headers, response, metrics, log, rules, routes"#,
        ],
    ),
    (
        "upstream_not_string",
        &[r#"2:32: [proxy] upstreams: expected a string element, found integer 3001"#],
    ),
    (
        "wrong_type",
        &[
            r#"2:17: [limits] default_limit: expected an integer 1..=4294967295, found string "100""#,
        ],
    ),
    (
        "zero_limit",
        &[r#"2:17: [limits] default_limit: expected an integer 1..=4294967295, found integer 0"#],
    ),
    (
        "zero_timeout",
        &[r#"2:14: [redis] timeout_ms: expected an integer 1..=60000, found integer 0"#],
    ),
    (
        "zero_window",
        &[
            r#"2:21: [limits] default_window_ms: expected an integer 1..=31536000000, found integer 0"#,
        ],
    ),
    (
        "bad_header_style",
        &[
            r#"2:9: [headers] style: expected "x-ratelimit", "ietf", "both" or "none", found "draft-10""#,
        ],
    ),
    (
        "global_default_key",
        &[
            r#"2:7: [limits] key: expected "ip", "ip/<1..=128>", "header:<Header-Name>", "query:<name>", "cookie:<name>" or "jwt:<claim>", found "global""#,
        ],
    ),
    (
        "rule_bad_host",
        &[
            r#"3:8: [[rules]] #1 host: expected a host name like "api.example.com" or "*.example.com", without a port, found "api.example.com:443""#,
        ],
    ),
    (
        "rule_bad_key",
        &[
            r#"3:7: [[rules]] #1 key: expected "ip", "ip/<1..=128>", "header:<Header-Name>", "query:<name>", "cookie:<name>", "jwt:<claim>" or "global", found "token:session""#,
            r#"8:8: [[rules]] #2 key: "jwt:org" needs a [jwt] table (jwks_file or secret_file) to verify tokens"#,
            r#"8:19: [[rules]] #2 key: "global" cannot be part of a composite key"#,
            r#"13:7: [[rules]] #3 key: expected "ip", "ip/<1..=128>", "header:<Header-Name>", "query:<name>", "cookie:<name>", "jwt:<claim>" or "global", found "ip/129""#,
            r#"18:7: [[rules]] #4 key: header:x-org is listed twice"#,
            r#"23:7: [[rules]] #5 key: query: expected a name of 1 to 128 visible ASCII characters without ( ) [ ] |, found "a|b""#,
            r#"24:11: [[rules]] #5 missing: expected "ip" or "skip", found "never""#,
            r#"29:7: [[rules]] #6 key: expected a string or an array of strings, found integer 7"#,
        ],
    ),
    (
        "rule_bad_method",
        &[
            r#"3:20: [[rules]] #1 methods: expected an upper-case HTTP method like "GET", found "get""#,
        ],
    ),
    (
        "rule_bad_name",
        &[
            r#"2:8: [[rules]] #1 name: expected 1 to 64 characters of a-z, 0-9, _ and -, found "Login!""#,
        ],
    ),
    (
        "rule_bad_path",
        &[r#"3:8: [[rules]] #1 path: expected a path starting with "/", found "login""#],
    ),
    (
        "rule_bad_regex",
        &[r#"3:14: [[rules]] #1 path_regex: invalid regex "^/users/(\\d+": error: unclosed group"#],
    ),
    (
        "rule_duplicate_name",
        &[r#"6:8: [[rules]] #2 name: "login" is already the name of rule #1"#],
    ),
    (
        "rule_missing_limit",
        &[r#"1:1: [[rules]] #1: limit is required (or unlimited = true)"#],
    ),
    (
        "rule_missing_name",
        &[r#"1:1: [[rules]] #1: name is required"#],
    ),
    (
        "rule_override_not_ip",
        &[
            r#"5:15: [[rules]] #1 overrides: "premium-1" is not an IP address, and this rule is keyed by ip"#,
        ],
    ),
    (
        "rule_override_on_global",
        &[
            r#"5:13: [[rules]] #1 overrides: a rule keyed by "global" has one counter; overrides need key = "ip" or "header:<Header-Name>""#,
        ],
    ),
    (
        "rule_override_zero",
        &[
            r#"5:24: [[rules]] #1 overrides: "free": expected an integer 1..=4294967295, found integer 0"#,
        ],
    ),
    (
        "rule_reserved_name",
        &[r#"2:8: [[rules]] #1 name: "default" is the rule [limits] defines; choose another name"#],
    ),
    (
        "rule_shadow_skip_default",
        &[
            r#"5:16: [[rules]] #1 skip_default: a shadow rule never changes what is enforced; remove skip_default or shadow"#,
        ],
    ),
    (
        "rule_two_paths",
        &[
            r#"4:15: [[rules]] #1 path_prefix: at most one of path, path_prefix and path_regex; path is set too"#,
        ],
    ),
    (
        "rule_unknown_algorithm",
        &[
            r#"4:13: [[rules]] #1 algorithm: expected "sliding_log", "gcra" or "sliding_window", found "leaky_bucket""#,
        ],
    ),
    (
        "rule_bad_sync",
        &[
            r#"3:8: [[rules]] #1 sync: expected "exact" or "lease", found "eventual""#,
            r#"9:14: [[rules]] #2 lease_size: applies only with sync = "lease""#,
            r#"15:12: [[rules]] #3 lease_ms: expected an integer 1..=60000, found integer 0"#,
        ],
    ),
    (
        "rule_costs",
        &[
            r#"7:8: [[rules]] #1 cost: 11: it is over the limit (10), so no request would ever fit"#,
            r#"12:8: [[rules]] #2 cost: 20: it is over max_cost (10)"#,
            r#"18:8: [[rules]] #3 cost: expected an integer 1..=4294967295 or "header:<Name>", found "header:""#,
            r#"19:10: [[rules]] #3 settle: expected "header:<Name>" or "json:<dotted.path>" (like "json:usage.total_tokens"), found "xml:usage""#,
            r#"20:24: [[rules]] #3 count_status: expected a status like "401" or a class like "4xx", found "600""#,
            r#"20:31: [[rules]] #3 count_status: expected a status like "401" or a class like "4xx", found "40""#,
            r#"25:8: [[rules]] #4 cost: an unlimited rule counts nothing; remove cost or unlimited"#,
            r#"31:10: [[rules]] #5 settle: settling needs sync = "exact" (a lease's slots are spent on the node, before any response)"#,
            r#"36:16: [[rules]] #6 count_status: name at least one status, or remove it (every response counts)"#,
            r#"37:12: [[rules]] #6 max_cost: expected an integer 1..=4294967295, found integer 0"#,
        ],
    ),
    (
        "admin_tokens",
        &[
            r#"3:12: [admin] tokens: expected a name of 1 to 64 characters of a-z, 0-9, _ and -, found "Ops Team""#,
            r#"3:31: [admin] tokens: "admin" is the name of admin.token; choose another"#,
            r#"3:55: [admin] tokens: "billing": expected a non-empty string without spaces or control characters"#,
            r#"3:81: [admin] tokens: "copy": the same token as another name (each name needs its own, or the audit log could not tell who made a change)"#,
            r#"3:92: [admin] tokens: "n": expected a string, found integer 5"#,
            r#"3:102: [admin] tokens: "root": the same token as another name (each name needs its own, or the audit log could not tell who made a change)"#,
        ],
    ),
    (
        "rule_ban",
        &[
            r#"5:7: [[rules]] #1 ban: an unlimited rule refuses nothing; remove ban"#,
            r#"11:7: [[rules]] #2 ban: a shadow rule never refuses, so it never bans; remove ban"#,
            r#"16:7: [[rules]] #3 ban within_ms is required (an integer 1..=31536000000)"#,
            r#"16:7: [[rules]] #3 ban for_ms is required (an integer 1..=31536000000)"#,
            r#"16:17: [[rules]] #3 ban after: expected an integer 1..=1000000, found integer 0"#,
            r#"16:20: unknown key `within` in [[rules]] #3 ban; expected one of: after, within_ms, for_ms"#,
            r#"21:7: [[rules]] #4 ban: expected a table, found integer 10"#,
        ],
    ),
    (
        "rule_calendar",
        &[
            r#"4:10: [[rules]] #1 period: expected "day", "week" or "month", found "fortnight""#,
            r#"10:12: [[rules]] #2 timezone: expected an IANA time zone like "Europe/Berlin" or "UTC", found "Mars/Olympus_Mons""#,
            r#"11:14: [[rules]] #2 anchor_day: applies only with period = "month""#,
            r#"17:13: [[rules]] #3 window_ms: a calendar quota's window is its period; remove window_ms or period"#,
            r#"18:13: [[rules]] #3 algorithm: a calendar quota counts every unit of its period, renewed at the boundary; remove algorithm or period"#,
            r#"19:14: [[rules]] #3 anchor_day: expected an integer 1..=31 (the month's billing day), found integer 32"#,
            r#"25:8: [[rules]] #4 sync: a calendar quota is exact (a lease would outlive the period's end); remove sync or period"#,
            r#"30:12: [[rules]] #5 timezone: applies only to a calendar quota (period = "day", "week" or "month")"#,
        ],
    ),
    (
        "routes",
        &[
            r#"1:1: [[routes]] #1: upstreams is required (the route's own pool)"#,
            r#"6:8: [[routes]] #2 name: "api" is already the name of route #1"#,
            r#"7:15: [[routes]] #2 path_prefix: expected a path starting with "/", found "api""#,
            r#"8:14: [[routes]] #2 upstreams: expected "host:port", "http://host[:port]", "https://host[:port]" or "h2://host:port" (port 1..=65535), found "ftp://x""#,
            r#"9:19: [[routes]] #2 read_timeout_ms: expected an integer 1..=3600000 (ms), found integer 0"#,
            r#"10:13: [[routes]] #2 buffering: expected true or false, found string "no""#,
            r#"13:8: [[routes]] #3 name: expected 1 to 64 characters of a-z, 0-9, _ and -, found "Bad Name""#,
            r#"14:13: [[routes]] #3 upstreams: expected at least one "host:port" or "https://host:port""#,
        ],
    ),
    (
        "headers_body",
        &[r#"2:8: [headers] body: expected "json" or "problem+json", found "xml""#],
    ),
    (
        "rule_concurrency",
        &[
            r#"4:9: [[rules]] #1 limit: a concurrency rule limits requests in flight, not requests per window; remove limit or concurrency"#,
            r#"5:13: [[rules]] #1 window_ms: a concurrency rule limits requests in flight, not requests per window; remove window_ms or concurrency"#,
            r#"6:8: [[rules]] #1 cost: a request holds one slot, whatever it costs; remove cost or concurrency"#,
            r#"11:8: [[rules]] #2 sync: slots are exact (one is held until its response ends, which no lease can foresee); remove sync or concurrency"#,
            r#"16:9: [[rules]] #3 queue: applies only to a concurrency rule (concurrency = N)"#,
            r#"17:15: [[rules]] #3 slot_ttl_ms: applies only to a concurrency rule (concurrency = N)"#,
            r#"22:9: [[rules]] #4 delay: applies only with algorithm = "gcra" (whose requests are spaced at the rate)"#,
            r#"26:15: [[rules]] #5 concurrency: expected an integer 1..=1000000, found integer 0"#,
            r#"27:9: [[rules]] #5 queue max_wait_ms is required (an integer 1..=600000)"#,
            r#"27:28: unknown key `wait_ms` in [[rules]] #5 queue; expected one of: max_waiting, max_wait_ms"#,
            r#"28:15: [[rules]] #5 slot_ttl_ms: expected an integer 500..=3600000, found integer 10"#,
            r#"35:9: [[rules]] #6 delay: needs sync = "exact" (a delayed request's place is reserved in the shared counter)"#,
            r#"35:26: [[rules]] #6 delay max_delay_ms: expected an integer 1..=60000, found integer 0"#,
        ],
    ),
    (
        "rule_unknown_key",
        &[
            r#"4:1: unknown key `burst` in [[rules]] #1; expected one of: name, methods, path, path_prefix, path_regex, path_ignore_case, host, key, missing, limit, window_ms, algorithm, shadow, skip_default, unlimited, overrides, sync, lease_size, lease_ms, cost, max_cost, settle, count_status, concurrency, slot_ttl_ms, queue, delay, ban, period, timezone, anchor_day"#,
        ],
    ),
    (
        "rule_zero_limit",
        &[r#"3:9: [[rules]] #1 limit: expected an integer 1..=4294967295, found integer 0"#],
    ),
    (
        "rule_zero_window",
        &[r#"3:13: [[rules]] #1 window_ms: expected an integer 1..=31536000000, found integer 0"#],
    ),
    (
        "rules_many_errors",
        &[
            r#"5:8: [[rules]] #1 name: expected 1 to 64 characters of a-z, 0-9, _ and -, found "Login!""#,
            r#"9:8: [[rules]] #2 name: "default" is the rule [limits] defines; choose another name"#,
            r#"15:15: [[rules]] #3 path_prefix: at most one of path, path_prefix and path_regex; path is set too"#,
            r#"16:9: [[rules]] #3 limit: expected an integer 1..=4294967295, found integer 0"#,
            r#"19:8: [[rules]] #4 name: "search" is already the name of rule #3"#,
            r#"20:14: [[rules]] #4 path_regex: invalid regex "^/api/(v[0-9+": error: unclosed character class"#,
            r#"21:13: [[rules]] #4 algorithm: expected "sliding_log", "gcra" or "sliding_window", found "leaky""#,
            r#"24:1: [[rules]] #5: name is required"#,
            r#"24:1: [[rules]] #5: limit is required (or unlimited = true)"#,
            r#"25:12: [[rules]] #5 methods: expected an upper-case HTTP method like "GET", found "get""#,
            r#"26:8: [[rules]] #5 host: expected a host name like "api.example.com" or "*.example.com", without a port, found "api.example.com:80""#,
            r#"27:7: [[rules]] #5 key: expected "ip", "ip/<1..=128>", "header:<Header-Name>", "query:<name>", "cookie:<name>", "jwt:<claim>" or "global", found "cookie""#,
            r#"33:15: [[rules]] #6 overrides: "premium-1" is not an IP address, and this rule is keyed by ip"#,
            r#"33:47: [[rules]] #6 overrides: "10.0.0.7": expected an integer 1..=4294967295, found integer 0"#,
            r#"39:13: [[rules]] #7 overrides: a rule keyed by "global" has one counter; overrides need key = "ip" or "header:<Header-Name>""#,
            r#"45:16: [[rules]] #8 skip_default: a shadow rule never changes what is enforced; remove skip_default or shadow"#,
            r#"46:1: unknown key `limt` in [[rules]] #8; expected one of: name, methods, path, path_prefix, path_regex, path_ignore_case, host, key, missing, limit, window_ms, algorithm, shadow, skip_default, unlimited, overrides, sync, lease_size, lease_ms, cost, max_cost, settle, count_status, concurrency, slot_ttl_ms, queue, delay, ban, period, timezone, anchor_day"#,
        ],
    ),
    (
        "rules_not_array",
        &[r#"1:1: `rules` must be an array of tables ([[rules]]), found table"#],
    ),
    (
        "health_check_bad",
        &[
            r#"2:15: [proxy.health_check] interval_ms: expected an integer 100..=3600000 (ms), found integer 10"#,
            r#"3:8: [proxy.health_check] path: expected a path starting with "/" (visible ASCII), found "health""#,
            r#"4:14: [proxy.health_check] timeout_ms: expected an integer 1..=60000 (ms), found integer 0"#,
        ],
    ),
    (
        "log_bad",
        &[
            r#"2:10: [log] access: expected "off", "stderr" or a file path, found """#,
            r#"3:10: [log] format: expected "text" or "json", found "xml""#,
            r#"4:9: [log] level: expected "error", "warn", "info", "debug" or "trace", found "verbose""#,
        ],
    ),
    (
        "interpolation_bad",
        &[
            r#"2:9: [admin] token: ${RL_FIXTURE_UNSET_TOKEN} is not set in the environment; expected it set, or a default as in ${RL_FIXTURE_UNSET_TOKEN:-default}"#,
            r#"5:7: [redis] url: ${RL_FIXTURE_UNSET_HOST} is not set in the environment; expected it set, or a default as in ${RL_FIXTURE_UNSET_HOST:-default}"#,
            r#"5:7: [redis] url: ${RL_FIXTURE_UNSET_DB} is not set in the environment; expected it set, or a default as in ${RL_FIXTURE_UNSET_DB:-default}"#,
            r#"8:8: [[rules]] #1 name: expected ${NAME} or ${NAME:-default} (NAME: letters, digits and _, not starting with a digit; $${ for a literal ${), found "${1bad}""#,
            r#"12:10: [log] access: expected ${NAME} or ${NAME:-default} (NAME: letters, digits and _, not starting with a digit; $${ for a literal ${), found "${RL_FIXTURE_UNSET_DIR""#,
        ],
    ),
    (
        "admin_read_without_token",
        &[
            r#"2:8: [admin] read: "token" needs a token to check; expected token or tokens set in [admin] too, or read = "open""#,
            r#"3:17: [admin] metrics_token: expected a non-empty string without spaces or control characters"#,
        ],
    ),
    (
        "proxy_bad_numbers",
        &[
            r#"2:22: [proxy] connect_timeout_ms: expected an integer 1..=3600000 (ms), found integer 0"#,
            r#"3:19: [proxy] read_timeout_ms: expected an integer 1..=3600000 (ms), found integer 3600001"#,
            r#"4:29: [proxy] keepalive_timeout_seconds: expected an integer 0..=3600 (seconds; 0: no keep-alive), found integer -1"#,
            r#"5:11: [proxy] retries: expected an integer 0..=10, found integer 11"#,
        ],
    ),
    (
        "proxy_bad_request_bounds",
        &[
            r#"2:19: [proxy] escaped_slashes: expected "reject", "decode" or "keep", found "allow""#,
            r#"3:37: [proxy] allowed_hosts: expected a host name like "api.example.com" or "*.example.com", without a port, found "api.example.com:443""#,
            r#"4:20: [proxy] max_header_bytes: expected an integer 1024..=1048575 (bytes), found integer 1048576"#,
            r#"5:21: [proxy] header_timeout_ms: expected an integer 100..=3600000 (ms), found integer 0"#,
            r#"6:19: [proxy] max_connections: expected an integer 1..=1000000, found integer 0"#,
            r#"7:19: [proxy] path_parameters: expected "keep" or "reject", found "strip""#,
        ],
    ),
    (
        "rule_path_ignore_case_without_path",
        &[
            r#"4:20: [[rules]] #1 path_ignore_case: applies to a path condition; set path, path_prefix or path_regex"#,
        ],
    ),
    (
        "jwt_bad",
        &[
            r#"3:15: [jwt] secret_file: give jwks_file or secret_file, not both"#,
            r#"4:24: [jwt] algorithms: expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA (never none), found "none""#,
            r#"5:18: [jwt] leeway_seconds: expected an integer 0..=3600, found integer 7200"#,
        ],
    ),
    (
        "jwt_unreadable",
        &[
            r#"2:13: [jwt] jwks_file: cannot read /nonexistent/jwks.json: No such file or directory (os error 2)"#,
        ],
    ),
    (
        "rule_override_composite",
        &[
            r#"5:15: [[rules]] #1 overrides: "acme": expected 2 values joined by "|", one per part of the key (or the client IP)"#,
            r#"5:28: [[rules]] #1 overrides: "acme|nonsense": "nonsense" is not an IP address, and that part is keyed by ip"#,
            r#"5:90: [[rules]] #1 overrides: "a b": expected 1 to 256 visible ASCII characters (a key value as requests send it)"#,
            r#"11:15: [[rules]] #2 overrides: expected an IPv4 address or an IPv6 network /48 (this rule keys IPv6 clients by their /48), found "2001:db8::/64""#,
            r#"11:75: [[rules]] #2 overrides: expected an IPv4 address or an IPv6 network /48 (this rule keys IPv6 clients by their /48), found "2001:db8::7""#,
        ],
    ),
    (
        "proxy_bad_upstream_forms",
        &[
            r#"2:14: [proxy] upstreams: expected "host:port", "http://host[:port]", "https://host[:port]" or "h2://host:port" (port 1..=65535), found "ftp://files.example.com:21""#,
            r#"2:44: [proxy] upstreams: an upstream is a server, without a path: found "https://api.example.com/v1""#,
        ],
    ),
    (
        "proxy_ca_without_https",
        &[r#"3:24: [proxy] upstream_tls_ca_file: only for https:// upstreams, and none is listed"#],
    ),
    (
        "proxy_cert_without_tls_listen",
        &[
            r#"2:17: [proxy] tls_cert_file: only with tls_listen"#,
            r#"3:16: [proxy] tls_key_file: only with tls_listen"#,
        ],
    ),
    (
        "proxy_tls_bad_files",
        &[
            r#"3:17: [proxy] tls_cert_file: "tests/fixtures/tls/localhost.key" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"#,
            r#"4:16: [proxy] tls_key_file: cannot read "/nonexistent/key.pem": No such file or directory (os error 2)"#,
        ],
    ),
    (
        "proxy_tls_without_cert",
        &[
            r#"2:14: [proxy] tls_listen: needs tls_cert_file and tls_key_file; tls_cert_file is missing"#,
            r#"2:14: [proxy] tls_listen: needs tls_cert_file and tls_key_file; tls_key_file is missing"#,
        ],
    ),
    (
        "redis_cert_without_key",
        &[
            r#"3:17: [redis] tls_cert_file: cannot read "/nonexistent/client.pem": No such file or directory (os error 2)"#,
            r#"3:17: [redis] tls_cert_file: a client certificate needs both tls_cert_file and tls_key_file; tls_key_file is missing"#,
        ],
    ),
    (
        "redis_empty_cluster",
        &[r#"2:11: [redis] cluster: expected at least one redis:// or rediss:// URL"#],
    ),
    (
        "redis_master_without_sentinels",
        &[r#"3:19: [redis] sentinel_master: only with sentinels"#],
    ),
    (
        "redis_mixed_schemes",
        &[
            r#"2:11: [redis] cluster: mixes redis:// and rediss:// URLs; use one scheme for every node"#,
        ],
    ),
    (
        "redis_sentinels_without_master",
        &[
            r#"2:13: [redis] sentinels: sentinel_master is required with sentinels (the name the sentinels monitor)"#,
        ],
    ),
    (
        "redis_tls_not_pem",
        &[
            r#"3:15: [redis] tls_ca_file: "Cargo.toml" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"#,
        ],
    ),
    (
        "redis_tls_unreadable",
        &[
            r#"3:15: [redis] tls_ca_file: cannot read "/nonexistent/redis-ca.pem": No such file or directory (os error 2)"#,
        ],
    ),
    (
        "redis_tls_without_rediss",
        &[r#"3:16: [redis] tls_insecure: TLS settings need rediss:// URLs"#],
    ),
    (
        "redis_two_topologies",
        &[r#"3:11: [redis] cluster: exactly one of url, cluster and sentinels; url is set too"#],
    ),
];

fn fixture(name: &str) -> String {
    format!("tests/fixtures/bad/{name}.toml")
}

#[test]
fn every_bad_fixture_is_rejected_with_located_messages() {
    for (name, expected) in EXPECTED {
        let path = fixture(name);
        let errors = Config::parse(&path, &std::fs::read_to_string(&path).unwrap(), &|_| None)
            .expect_err(name)
            .to_string();
        let want: Vec<String> = expected.iter().map(|e| format!("{path}:{e}")).collect();
        assert_eq!(errors.lines().collect::<Vec<_>>(), want, "fixture {name}");
    }
}

#[test]
fn every_fixture_file_has_an_expectation() {
    let listed: Vec<&str> = EXPECTED.iter().map(|(n, _)| *n).collect();
    for entry in std::fs::read_dir("tests/fixtures/bad").unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        let name = file.trim_end_matches(".toml");
        assert!(
            listed.contains(&name),
            "{file} has no expected errors in this test"
        );
    }
}

#[test]
fn empty_file_is_the_contract_defaults() {
    let c = Config::parse("empty.toml", "", &|_| None).unwrap();
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.proxy.upstreams[0].addrs[0].to_string(), "127.0.0.1:3000");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert!(c.admin.token.is_none());
    assert_eq!(c.node.address, "127.0.0.1:8080");
    assert_eq!(c.node.ttl.as_secs(), 30);
    assert_eq!(c.node.heartbeat.as_secs(), 10);
    assert!(c.redis.is_none(), "no [redis]: the embedded store");
    assert!(c.limits.enabled);
    assert_eq!(c.limits.default.limit.get(), 100);
    assert_eq!(c.limits.default.window_ms.get(), 60_000);
    assert!(c.limits.trusted_proxies.is_empty());
    assert_eq!(c.metrics.max_key_labels, 1000);
    // [server], and the edge keys of [proxy] and [log] (contract §10).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.server.threads, cores, "0: one per core");
    assert!(c.server.work_stealing);
    assert_eq!(c.server.grace_period.as_secs(), 5);
    let p = &c.proxy;
    assert!(p.tls.is_none() && p.upstream_tls_ca_file.is_none());
    assert!(!p.upstreams[0].tls);
    assert_eq!(p.timeouts.connect.as_millis(), 2_000);
    assert_eq!(p.timeouts.read.as_millis(), 60_000);
    assert_eq!(p.timeouts.write.as_millis(), 60_000);
    assert_eq!(p.keepalive_timeout.as_secs(), 75);
    assert_eq!(p.retries, 1);
    assert!(p.health_check.is_none() && p.direct_response.is_none());
    assert_eq!(c.log.access, ratelimiter::config::AccessLog::Off);
    assert_eq!(c.log.format, ratelimiter::config::LogFormat::Text);
    // Contract §17: nothing added to the gateway's answers.
    assert!(c.response.headers.is_empty() && !c.response.expose_own_fields);
}

#[test]
fn response_headers_keep_their_order_and_expose_the_gateway_s_fields_to_an_origin() {
    let c = Config::parse(
        "t.toml",
        "[response]\nheaders = { \"Access-Control-Allow-Origin\" = \"*\", \"Vary\" = \"Origin\" }\n",
        &|_| None,
    )
    .unwrap();
    let names: Vec<&str> = c.response.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["Access-Control-Allow-Origin", "Vary"]);
    assert!(c.response.expose_own_fields);
    // An operator's own list of exposed fields is theirs: nothing is added to it.
    let own = Config::parse(
        "t.toml",
        "[response.headers]\n\"Access-Control-Allow-Origin\" = \"*\"\n\"Access-Control-Expose-Headers\" = \"Retry-After\"\n",
        &|_| None,
    )
    .unwrap();
    assert!(!own.response.expose_own_fields);
}

#[test]
fn table_defaults_of_health_check_and_direct_response() {
    let c = Config::parse(
        "t.toml",
        "[proxy.health_check]\n[proxy.direct_response]\n",
        &|_| None,
    )
    .unwrap();
    let h = c.proxy.health_check.unwrap();
    assert_eq!(h.interval.as_millis(), 1_000);
    assert_eq!(h.timeout.as_millis(), 1_000);
    assert!(h.path.is_none(), "a TCP connect check");
    let d = c.proxy.direct_response.unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.content_type, "text/plain; charset=utf-8");
    assert_eq!(d.body, "");
}

#[test]
fn the_upstream_ca_serves_a_route_s_https_upstreams_too() {
    let text = "[proxy]\nupstreams = [\"127.0.0.1:3000\"]\nupstream_tls_ca_file = \"tests/fixtures/tls/localhost.pem\"\n\n[[routes]]\nname = \"billing\"\npath_prefix = \"/billing/\"\nupstreams = [\"https://localhost:8443\"]\n";
    let c = Config::parse("ca.toml", text, &|_| None).unwrap();
    assert!(c.proxy.upstream_tls_ca_file.is_some());
    assert!(c.routes[0].upstreams[0].tls);
}

#[test]
fn redis_table_defaults() {
    let c = Config::parse("r.toml", "[redis]\n", &|_| None).unwrap();
    let r = c.redis.unwrap();
    assert_eq!(
        r.topology,
        RedisTopology::Standalone(r.topology.urls()[0].clone())
    );
    assert_eq!(r.topology.urls()[0].expose(), "redis://127.0.0.1:6379");
    assert_eq!(r.timeout.as_millis(), 50);
    assert_eq!(r.on_error, OnError::Allow);
}

fn with_env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn environment_overrides_the_file() {
    let env = with_env(&[
        ("RATELIMITER_REDIS_URL", "redis://:pw@10.1.1.1:6380/2"),
        ("RATELIMITER_NODE_ID", "edge-7"),
        ("RATELIMITER_NODE_HOST", "gw7.internal"),
        ("RATELIMITER_NODE_PORT", "18080"),
        ("RATELIMITER_DEFAULT_LIMIT", "7"),
        ("RATELIMITER_DEFAULT_WINDOW_MS", "1500"),
        ("RATELIMITER_NODE_TTL_SECONDS", "9"),
        ("RATELIMITER_NODE_HEARTBEAT_SECONDS", "3"),
    ]);
    let src = "[node]\nid = \"file-id\"\n[limits]\ndefault_limit = 100\n";
    let c = Config::parse("f.toml", src, &env).unwrap();
    let r = c
        .redis
        .expect("RATELIMITER_REDIS_URL selects the Redis store");
    assert_eq!(r.topology.urls()[0].expose(), "redis://:pw@10.1.1.1:6380/2");
    assert_eq!(
        r.topology.urls()[0].to_string(),
        "redis://:***@10.1.1.1:6380/2",
        "never print the password"
    );
    assert_eq!(c.node.id, "edge-7");
    assert_eq!(c.node.address, "gw7.internal:18080");
    assert_eq!(c.limits.default.limit.get(), 7);
    assert_eq!(c.limits.default.window_ms.get(), 1500);
    assert_eq!(c.node.ttl.as_secs(), 9);
    assert_eq!(c.node.heartbeat.as_secs(), 3);
}

#[test]
fn bad_environment_values_name_the_variable() {
    let env = with_env(&[
        ("RATELIMITER_DEFAULT_LIMIT", "0"),
        ("RATELIMITER_NODE_PORT", "http"),
        ("RATELIMITER_REDIS_URL", "localhost:6379"),
    ]);
    let errors = Config::parse("f.toml", "", &env).unwrap_err().to_string();
    assert_eq!(
        errors.lines().collect::<Vec<_>>(),
        [
            r#"environment RATELIMITER_NODE_PORT: expected a port 0..=65535, found "http""#,
            r#"environment RATELIMITER_REDIS_URL: expected a redis:// or rediss:// URL, found "localhost:6379""#,
            r#"environment RATELIMITER_DEFAULT_LIMIT: expected an integer 1..=4294967295, found "0""#,
        ]
    );
}

#[test]
fn passwords_are_redacted_in_errors_and_summaries() {
    let src = "[redis]\nurl = \"redis://user:hunter2@127.0.0.1:6379/0\"\n";
    let c = Config::parse("f.toml", src, &|_| None).unwrap();
    assert!(!c.summary().contains("hunter2"), "{}", c.summary());
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn strings_take_the_environment_and_overrides_still_win() {
    let env = with_env(&[
        ("ADMIN_TOKEN", "s3cret"),
        ("REDIS_HOST", "10.0.0.9"),
        ("EMPTY", ""),
        ("NODE", "from-the-file"),
        ("RATELIMITER_NODE_ID", "from-the-override"),
    ]);
    let src = r#"
[admin]
token = "${ADMIN_TOKEN}"
read = "${ADMIN_READ:-token}"
[node]
id = "${NODE}"
[redis]
url = "redis://${REDIS_HOST}:${REDIS_PORT:-6380}/0"
on_error = '${ON_ERROR:-deny}'
[limits]
key = ["ip", "header:${KEY_HEADER:-X-Api-Key}"]
[[rules]]
name = "${RULE:-login}"
path = "/login/$${literal}/$1"
limit = 5
[log]
access = "${EMPTY:-stderr}"
level = "${LOG_LEVEL:-debug}"
"#;
    let c = Config::parse("f.toml", src, &env).unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
    assert_eq!(c.admin.read, ratelimiter::config::AdminRead::Token);
    assert_eq!(c.node.id, "from-the-override", "RATELIMITER_* still wins");
    let r = c.redis.unwrap();
    assert_eq!(r.topology.urls()[0].expose(), "redis://10.0.0.9:6380/0");
    assert_eq!(r.on_error, OnError::Deny);
    assert_eq!(c.limits.key.to_string(), r#"["ip", "header:x-api-key"]"#);
    assert_eq!(c.rules[0].name, "login");
    let path = c.rules[0].matcher.path.as_ref().unwrap().describe();
    assert_eq!(
        path,
        ("path", "/login/${literal}/$1"),
        "$${{ is a literal ${{"
    );
    assert_eq!(c.log.access, ratelimiter::config::AccessLog::Stderr);
    assert_eq!(c.log_level, log::LevelFilter::Debug);
    // Without the override, the file's value; RATELIMITER_REDIS_URL replaces an interpolated URL.
    let env = with_env(&[
        ("NODE", "from-the-file"),
        ("RATELIMITER_REDIS_URL", "redis://10.1.1.1:6379"),
    ]);
    let c = Config::parse(
        "f.toml",
        "[node]\nid = \"${NODE}\"\n[redis]\nurl = \"redis://${UNSET_HOST:-localhost}\"\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.node.id, "from-the-file");
    assert_eq!(
        c.redis.unwrap().topology.urls()[0].expose(),
        "redis://10.1.1.1:6379"
    );
}

#[test]
fn an_unset_variable_is_one_error_at_its_string_with_the_others() {
    // The string left as written is not also reported as a bad value; the other errors of the
    // file are.
    let src = "[proxy]\nlisten = \"${LISTEN}\"\n[limits]\ndefault_limit = 0\n";
    let errors = Config::parse("f.toml", src, &|_| None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        errors.lines().collect::<Vec<_>>(),
        [
            "f.toml:2:10: [proxy] listen: ${LISTEN} is not set in the environment; expected it set, or a default as in ${LISTEN:-default}",
            "f.toml:4:17: [limits] default_limit: expected an integer 1..=4294967295, found integer 0",
        ]
    );
}

#[test]
fn log_level_default_and_choice() {
    let c = Config::parse("t.toml", "", &|_| None).unwrap();
    assert_eq!(c.log_level, log::LevelFilter::Info);
    let c = Config::parse("t.toml", "[log]\nlevel = \"warn\"\n", &|_| None).unwrap();
    assert_eq!(c.log_level, log::LevelFilter::Warn);
}

#[test]
fn admin_access_defaults_and_choice() {
    let c = Config::parse("t.toml", "", &|_| None).unwrap();
    assert_eq!(c.admin.read, ratelimiter::config::AdminRead::Open);
    assert!(c.admin.metrics_token.is_none());
    let c = Config::parse(
        "t.toml",
        "[admin]\ntoken = \"a\"\nread = \"token\"\nmetrics_token = \"m\"\n",
        &|_| None,
    )
    .unwrap();
    assert_eq!(c.admin.read, ratelimiter::config::AdminRead::Token);
    assert_eq!(c.admin.metrics_token.as_deref(), Some("m"));
}

fn run_check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
        .args(["-t", "-c"])
        .arg(path)
        .env_remove("RATELIMITER_REDIS_URL")
        .output()
        .unwrap()
}

#[test]
fn check_mode_accepts_every_shipped_config() {
    let mut seen = 0;
    for entry in std::fs::read_dir("conf").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = run_check(&path);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.lines().count(), 1, "one-line summary: {stdout}");
            seen += 1;
        }
    }
    assert!(seen > 0, "conf/ holds no config");
}

#[test]
fn check_mode_rejects_every_bad_fixture_with_all_errors_on_stderr() {
    for (name, expected) in EXPECTED {
        let path = fixture(name);
        let out = run_check(Path::new(&path));
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for e in *expected {
            assert!(stderr.contains(&format!("{path}:{e}")), "{name}: {stderr}");
        }
    }
}

#[test]
fn check_mode_loads_the_https_certificate_and_its_key() {
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let dir = std::env::temp_dir().join(format!("ratelimiter-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (key, ok) in [("localhost.key", true), ("other.key", false)] {
        let path = dir.join(format!("{key}.toml"));
        std::fs::write(
            &path,
            format!("[proxy]\ntls_listen = \"127.0.0.1:8443\"\ntls_cert_file = \"{tls}/localhost.pem\"\ntls_key_file = \"{tls}/{key}\"\n"),
        )
        .unwrap();
        let out = run_check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{key}: {stderr}");
        if !ok {
            assert!(
                stderr.contains("other.key does not fit the certificate"),
                "{stderr}"
            );
        }
    }
    // A CA file with the PEM marker but no certificate inside: found by -t too.
    let ca = dir.join("bad-ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let path = dir.join("ca.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nupstreams = [\"https://127.0.0.1:8443\"]\nupstream_tls_ca_file = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let out = run_check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bad-ca.pem"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_and_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_ratelimiter");
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    // The commit follows (tests/observability.rs checks it against git).
    let printed = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("ratelimiter {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(printed.starts_with(&prefix), "{printed}");
    let out = Command::new(bin).arg("--nonsense").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin)
        .args(["-t", "-c", "no/such/file.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.toml: cannot read"));
}

/// `ratelimiter -t -c path` with `set` in its environment and `unset` removed from it.
fn run_check_env(path: &Path, set: &[(&str, &str)], unset: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    cmd.args(["-t", "-c"])
        .arg(path)
        .env_remove("RATELIMITER_REDIS_URL");
    for var in unset {
        cmd.env_remove(var);
    }
    cmd.envs(set.iter().copied());
    cmd.output().unwrap()
}

/// A scratch directory of this test process, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ratelimiter-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, file: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn check_mode_takes_variables_from_its_environment() {
    let dir = Scratch::new("interpolation");
    let path = dir.write(
        "env.toml",
        "[admin]\ntoken = \"${RL_TEST_ADMIN_TOKEN}\"\n[redis]\non_error = \"${RL_TEST_ON_ERROR:-deny}\"\n",
    );
    let unset = ["RL_TEST_ADMIN_TOKEN", "RL_TEST_ON_ERROR"];
    let out = run_check_env(&path, &[], &unset);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "{}:2:9: [admin] token: ${{RL_TEST_ADMIN_TOKEN}} is not set in the environment; expected it set, or a default as in ${{RL_TEST_ADMIN_TOKEN:-default}}",
            path.display()
        )
    );
    let out = run_check_env(&path, &[("RL_TEST_ADMIN_TOKEN", "s3cret")], &unset);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The value is checked as if written in the file.
    let out = run_check_env(
        &path,
        &[
            ("RL_TEST_ADMIN_TOKEN", "s3cret"),
            ("RL_TEST_ON_ERROR", "sometimes"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains(r#":4:12: [redis] on_error: expected "allow" or "deny", found "sometimes""#),
        "{stderr}"
    );
}

#[test]
fn check_mode_opens_every_file_the_config_names() {
    let dir = Scratch::new("check-files");
    let d = dir.0.display().to_string();
    let check = |name: &str, text: &str| {
        let out = run_check(&dir.write(name, text));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // An access log in a directory that does not exist, or that is a directory.
    let (code, stderr) = check(
        "missing.toml",
        &format!("[log]\naccess = \"{d}/no-such-dir/access.log\"\n"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "missing.toml: [log] access: cannot open the access log {d}/no-such-dir/access.log: No such file or directory"
        )),
        "{stderr}"
    );
    let (code, stderr) = check("isdir.toml", &format!("[log]\naccess = \"{d}\"\n"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "[log] access: cannot open the access log {d}: Is a directory"
        )),
        "{stderr}"
    );

    // A directory the process may not write to (root may write anywhere: not checked as root).
    let locked = dir.0.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::File::create(locked.join("probe")).is_err() {
        let (code, stderr) = check(
            "locked.toml",
            &format!("[log]\naccess = \"{}/access.log\"\n", locked.display()),
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("Permission denied"), "{stderr}");
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A log that exists is appended to, never truncated; one that does not is not left behind.
    let existing = dir.write("existing.log", "kept\n");
    let (code, stderr) = check(
        "existing.toml",
        &format!("[log]\naccess = \"{}\"\n", existing.display()),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "kept\n");
    let (code, stderr) = check(
        "fresh.toml",
        &format!("[log]\naccess = \"{d}/fresh.log\"\n"),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !dir.0.join("fresh.log").exists(),
        "-t leaves no file behind"
    );

    // Every file that would fail, all at once, each with its key: the access log, a key that
    // does not fit its certificate, an upstream CA and a Redis CA whose certificates do not
    // parse (files the config loader reads, as it finds them, but the start could not use).
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let bad_ca = dir.write(
        "bad-ca.pem",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let (code, stderr) = check(
        "all.toml",
        &format!(
            "[proxy]\ntls_listen = \"127.0.0.1:8443\"\ntls_cert_file = \"{tls}/localhost.pem\"\ntls_key_file = \"{tls}/other.key\"\nupstreams = [\"https://127.0.0.1:8443\"]\nupstream_tls_ca_file = \"{ca}\"\n[redis]\nurl = \"rediss://127.0.0.1:6380\"\ntls_ca_file = \"{ca}\"\n[log]\naccess = \"{d}/no-such-dir/access.log\"\n",
            ca = bad_ca.display()
        ),
    );
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    for (line, key) in lines.iter().zip([
        "[log] access: ",
        "[proxy] tls_cert_file, tls_key_file: ",
        "[proxy] upstream_tls_ca_file: ",
        "[redis] tls_ca_file: ",
    ]) {
        assert!(
            line.contains(&format!("all.toml: {key}")),
            "{key}: {stderr}"
        );
    }
    assert!(
        lines[1].contains("other.key does not fit the certificate"),
        "{stderr}"
    );
    assert!(lines[2].contains("bad-ca.pem"), "{stderr}");
}
