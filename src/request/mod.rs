//! The request as the gateway judges it, apart from any pingora type but the header it reads
//! (contract §3, §10, §12): the request the upstream sees is the request the rules judged.
//!
//! - [`admit`]: what is refused before anything else, and the normal form of what is not;
//! - [`path`]: the normal form of a path;
//! - [`host`]: host patterns (`api.example.com`, `*.example.com`) as rules and
//!   `proxy.allowed_hosts` write them;
//! - [`view`]: [`RequestView`], what rules and keys read of an admitted request.
//!
//! [`admit`] is a pure function of the request header and the [`Policy`]. It refuses, as nginx
//! and HAProxy do, what has no single meaning:
//!
//! | refused | status |
//! |---|---|
//! | an HTTP/1.1 request without `Host` | 400 |
//! | a transfer coding other than `chunked` | 501 |
//! | a method token that is not upper case (`post`, `Get`) | 400 |
//! | a target that is not a path (`GET host:80`, `GET *`) | 400 |
//! | a path with an escaped slash (by default), a malformed escape or `%00` ([`path`]) | 400 |
//! | two `Content-Length` values, even equal ones | 400 |
//! | two values of a header a key is read from (`X-Api-Key`) | 400 |
//! | a host not in `proxy.allowed_hosts`, when it is set | 421 |
//!
//! What it accepts comes with its normal path ([`path::normalize`]): rules match it, and it
//! replaces the target the upstream gets whenever it differs from what was sent (an
//! absolute-form target goes as origin-form, the `Host` holding its authority).

pub mod admit;
pub mod host;
pub mod path;
pub mod view;

pub use admit::{admit, Admitted, Policy, Refusal};
pub use host::HostMatch;
pub use path::{EscapedSlashes, NormalPath, PathError, PathParameters, PathPolicy};
pub use view::RequestView;
