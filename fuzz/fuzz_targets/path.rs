//! Any request path: normalizing never panics, and an accepted path is normal and read alike
//! by the rules and by upstreams that decode before or after splitting it
//! (`ratelimiter::request::path::property`), including every bypass variant seeded in
//! `scripts/fuzz.sh` (encoded slashes and dots, backslashes, malformed escapes, NUL).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ratelimiter::request::path::property::check(data);
});
