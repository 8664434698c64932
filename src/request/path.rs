//! The path a request is judged and forwarded by (contract §3, §7): one normal form, so the
//! rules and the upstream never read two different paths out of the same bytes.
//!
//! A path is forwarded in its normal form, and rules match that same form decoded:
//!
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   (`/%6Cogin` is `/login`), other escapes kept with upper-case hex (RFC 3986 §6.2.2);
//! - `.` and `..` segments are resolved, never above the root, and repeated slashes merged
//!   (`/api/../login`, `//login` are `/login`), as nginx resolves them;
//! - an escaped slash (`%2F`, `%5C`, or a raw `\`) is the one thing a path cannot be
//!   normalized by without guessing the upstream: Express routes `/items/..%2Fhealthz` to its
//!   `/items/:id` handler, nginx and others decode it to `/healthz`. [`EscapedSlashes`] says
//!   what to do: refuse (the default), decode it to a slash, or keep it as part of its segment;
//! - a malformed escape (`%zz`, a lone `%`) and an escaped NUL are refused;
//! - a `.` or `..` segment with path parameters (`/api/..;/login`) is refused: Tomcat, Jetty
//!   and Spring strip `;...` from a segment before they route it, so that is `/login` to them
//!   and a plain segment to everyone else. [`PathParameters::Reject`] refuses any `;`.
//!
//! The query is never touched.

use std::borrow::Cow;

/// What an escaped slash in a path means (`proxy.escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// The request is refused with 400 (Envoy's `REJECT_REQUEST`).
    #[default]
    Reject,
    /// A slash: decoded, then the path is normalized with it (Envoy's `UNESCAPE_AND_FORWARD`).
    Decode,
    /// Part of its segment, for upstreams that route the path as sent (Express, Rails): kept
    /// encoded when forwarded, and left encoded in the path rules match.
    Keep,
}

impl EscapedSlashes {
    pub const ALL: [(&'static str, EscapedSlashes); 3] = [
        ("reject", EscapedSlashes::Reject),
        ("decode", EscapedSlashes::Decode),
        ("keep", EscapedSlashes::Keep),
    ];

    pub fn name(self) -> &'static str {
        match self {
            EscapedSlashes::Reject => "reject",
            EscapedSlashes::Decode => "decode",
            EscapedSlashes::Keep => "keep",
        }
    }
}

/// What a `;` (path parameters, RFC 3986 §3.3) in a path means (`proxy.path_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParameters {
    /// Part of its segment, as most upstreams read it; rules match it as written. Only a dot
    /// segment with parameters is refused.
    #[default]
    Keep,
    /// Any `;` is refused with 400, for upstreams that strip parameters before routing
    /// (Tomcat, Jetty, Spring): `/login;x=1` is `/login` to them.
    Reject,
}

impl PathParameters {
    pub const ALL: [(&'static str, PathParameters); 2] = [
        ("keep", PathParameters::Keep),
        ("reject", PathParameters::Reject),
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathParameters::Keep => "keep",
            PathParameters::Reject => "reject",
        }
    }
}

/// How paths are normalized: `proxy.escaped_slashes` and `proxy.path_parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathPolicy {
    pub slashes: EscapedSlashes,
    pub parameters: PathParameters,
}

impl From<EscapedSlashes> for PathPolicy {
    fn from(slashes: EscapedSlashes) -> PathPolicy {
        PathPolicy {
            slashes,
            parameters: PathParameters::default(),
        }
    }
}

/// Why a path has no normal form the gateway will forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`, `%5C` or `\`, with [`EscapedSlashes::Reject`].
    EscapedSlash,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    Nul,
    /// `.;` or `..;` as a segment's start: a dot segment to upstreams that strip parameters.
    DotParameters,
    /// `;` with [`PathParameters::Reject`].
    Parameters,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::EscapedSlash => {
                "the path holds an escaped slash (%2F, %5C or a backslash), which upstreams read differently"
            }
            PathError::BadEscape => "the path holds a malformed percent-escape",
            PathError::Nul => "the path holds an escaped NUL byte",
            PathError::DotParameters => {
                "the path holds a dot segment with parameters (..;), which upstreams read differently"
            }
            PathError::Parameters => "the path holds path parameters (;), which are not accepted",
        }
    }
}

/// A path in normal form: what is forwarded, and what rules match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    /// The path forwarded to the upstream (without the query).
    pub forwarded: Cow<'a, [u8]>,
    /// The path rules match: `forwarded` with its escapes decoded (invalid UTF-8 replaced),
    /// escaped slashes excepted under [`EscapedSlashes::Keep`].
    pub matched: Cow<'a, str>,
}

/// The normal form of a path (the part of an origin-form target before `?`).
pub fn normalize(raw: &[u8], policy: impl Into<PathPolicy>) -> Result<NormalPath<'_>, PathError> {
    let policy = policy.into();
    let slashes = policy.slashes;
    let forwarded = forwarded_form(raw, slashes)?;
    if forwarded.contains(&b';') {
        check_parameters(&forwarded, policy.parameters)?;
    }
    let matched = match forwarded {
        Cow::Borrowed(b) => match_form(b, slashes),
        Cow::Owned(ref b) => Cow::Owned(match_form(b, slashes).into_owned()),
    };
    Ok(NormalPath { forwarded, matched })
}

/// A `;` in a normal path: refused under [`PathParameters::Reject`], and as the start of a
/// segment's parameters when the segment is a dot (`..;x`, `.;`; `%2E` is decoded by then).
fn check_parameters(forwarded: &[u8], parameters: PathParameters) -> Result<(), PathError> {
    if parameters == PathParameters::Reject {
        return Err(PathError::Parameters);
    }
    for segment in forwarded.split(|b| *b == b'/') {
        let name = segment.split(|b| *b == b';').next().unwrap_or_default();
        if segment.contains(&b';') && (name == b"." || name == b"..") {
            return Err(PathError::DotParameters);
        }
    }
    Ok(())
}

/// Whether the path is already normal and plain: starts with `/`, no escape, no backslash, no
/// empty, `.` or `..` segment. The common case, borrowed with no work beyond this scan.
fn is_plain(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 1;
    for i in 1..=raw.len() {
        let end = i == raw.len();
        if !end && raw[i] != b'/' {
            if raw[i] == b'%' || raw[i] == b'\\' {
                return false;
            }
            continue;
        }
        let segment = &raw[segment_start..i];
        // An empty segment is only allowed as the trailing slash.
        if (segment.is_empty() && !end) || segment == b"." || segment == b".." {
            return false;
        }
        segment_start = i + 1;
    }
    true
}

fn forwarded_form(raw: &[u8], slashes: EscapedSlashes) -> Result<Cow<'_, [u8]>, PathError> {
    if is_plain(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    // Pass 1: escapes. Unreserved ones decoded, slashes as the policy says, the rest kept.
    let mut once = Vec::with_capacity(raw.len() + 1);
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'\\' {
            match slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => once.push(b'/'),
                EscapedSlashes::Keep => once.push(b),
            }
            i += 1;
            continue;
        }
        if b != b'%' {
            once.push(b);
            i += 1;
            continue;
        }
        let (hi, lo) = match (raw.get(i + 1), raw.get(i + 2)) {
            (Some(&h), Some(&l)) => (hex(h), hex(l)),
            _ => (None, None),
        };
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadEscape);
        };
        let byte = hi << 4 | lo;
        match byte {
            0 => return Err(PathError::Nul),
            b'/' | b'\\' => match slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => once.push(b'/'),
                EscapedSlashes::Keep => push_escape(&mut once, byte),
            },
            _ if is_unreserved(byte) => once.push(byte),
            _ => push_escape(&mut once, byte),
        }
        i += 3;
    }
    // Pass 2: segments. Dots resolved, empty segments merged, a trailing slash kept.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for segment in once.split(|b| *b == b'/') {
        trailing = false;
        match segment {
            b"" => trailing = true,
            b"." => trailing = true,
            b".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(once.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    if out == raw {
        return Ok(Cow::Borrowed(raw));
    }
    Ok(Cow::Owned(out))
}

/// The forwarded form, decoded for matching.
fn match_form(forwarded: &[u8], slashes: EscapedSlashes) -> Cow<'_, str> {
    if !forwarded.contains(&b'%') {
        return String::from_utf8_lossy(forwarded);
    }
    let mut out = Vec::with_capacity(forwarded.len());
    let mut i = 0;
    while i < forwarded.len() {
        let b = forwarded[i];
        let decoded = (b == b'%')
            .then(|| Some(hex(*forwarded.get(i + 1)?)? << 4 | hex(*forwarded.get(i + 2)?)?))
            .flatten();
        match decoded {
            // Kept escaped slashes stay as written: a segment's `%2F` is not a separator.
            Some(b'/' | b'\\') if slashes == EscapedSlashes::Keep => {
                out.extend_from_slice(&forwarded[i..i + 3]);
                i += 3;
            }
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[
        b'%',
        HEX[usize::from(byte >> 4)],
        HEX[usize::from(byte & 0xf)],
    ]);
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The property of [`normalize`], for the unit test below and `fuzz/fuzz_targets/path.rs`:
/// whatever the bytes, an accepted path is normal (normalizing it again changes nothing; no
/// dot or empty segment but a trailing slash), and with escaped slashes refused or decoded, an
/// upstream reading it either way (split then decode, as Express; decode then split, as nginx)
/// sees the segments the rules see. Panics when it does not hold.
#[doc(hidden)]
pub mod property {
    use super::*;

    /// How an upstream that routes the path as sent reads it (Express, Rails): split at
    /// slashes, then each segment decoded.
    fn split_then_decode(forwarded: &[u8]) -> Vec<String> {
        forwarded
            .split(|b| *b == b'/')
            .skip(1)
            .map(|seg| match_form(seg, EscapedSlashes::Decode).into_owned())
            .collect()
    }

    /// How an upstream that decodes first reads it (nginx, werkzeug's PATH_INFO): decoded once,
    /// then dots and repeated slashes resolved.
    fn decode_then_split(forwarded: &[u8]) -> Vec<String> {
        let decoded = match_form(forwarded, EscapedSlashes::Decode).into_owned();
        let mut out: Vec<String> = Vec::new();
        let mut trailing = false;
        for seg in decoded.split('/').skip(1) {
            trailing = matches!(seg, "" | "." | "..");
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s.to_string()),
            }
        }
        if out.is_empty() || trailing {
            out.push(String::new());
        }
        out
    }

    /// Checks the property for one path.
    pub fn check(raw: &[u8]) {
        for slashes in [
            EscapedSlashes::Reject,
            EscapedSlashes::Decode,
            EscapedSlashes::Keep,
        ] {
            let reject = PathPolicy {
                slashes,
                parameters: PathParameters::Reject,
            };
            if let Ok(n) = normalize(raw, reject) {
                assert!(!n.forwarded.contains(&b';'), "{raw:?}");
            }
            let Ok(n) = normalize(raw, slashes) else {
                continue;
            };
            let f: &[u8] = &n.forwarded;
            // No dot segment hides behind parameters: to an upstream that strips them
            // (Tomcat), no segment is `.` or `..` either.
            for seg in f.split(|b| *b == b'/') {
                let name = seg.split(|b| *b == b';').next().unwrap_or_default();
                assert!(name != b"." && name != b"..", "{raw:?} -> {f:?}");
            }
            assert_eq!(f.first(), Some(&b'/'), "{raw:?}");
            let segments: Vec<&[u8]> = f.split(|b| *b == b'/').skip(1).collect();
            for (i, seg) in segments.iter().enumerate() {
                let last = i + 1 == segments.len();
                assert!(
                    *seg != b"." && *seg != b".." && (last || !seg.is_empty()),
                    "{raw:?} -> {f:?}"
                );
            }
            let again = normalize(f, slashes).unwrap();
            assert_eq!(again.forwarded, n.forwarded, "{raw:?}");
            assert_eq!(again.matched, n.matched, "{raw:?}");
            if slashes == EscapedSlashes::Keep {
                continue;
            }
            let rules: Vec<String> = n.matched.split('/').skip(1).map(str::to_string).collect();
            assert_eq!(split_then_decode(f), rules, "{raw:?} -> {f:?}");
            // Decoding first can only merge what an escaped `%2F` or `%5C` would split, and
            // those never reach the upstream here; a decoded `%2E` is the one difference
            // left, and it was resolved before forwarding.
            assert_eq!(decode_then_split(f), rules, "{raw:?} -> {f:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str, slashes: EscapedSlashes) -> Result<(String, String), PathError> {
        normalize(raw.as_bytes(), slashes).map(|p| {
            (
                String::from_utf8(p.forwarded.into_owned()).unwrap(),
                p.matched.into_owned(),
            )
        })
    }

    #[test]
    fn plain_paths_are_borrowed_as_they_are() {
        for p in [
            "/",
            "/login",
            "/api/v1/items/",
            "/.well-known/x",
            "/a..b/c.d",
        ] {
            let n = normalize(p.as_bytes(), EscapedSlashes::Reject).unwrap();
            assert!(matches!(n.forwarded, Cow::Borrowed(_)), "{p}");
            assert!(matches!(n.matched, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.matched, p);
        }
    }

    #[test]
    fn dots_slashes_and_unreserved_escapes_are_normalized_as_nginx_does() {
        for (raw, forwarded, matched) in [
            ("", "/", "/"),
            ("//login", "/login", "/login"),
            ("/%6Cogin", "/login", "/login"),
            ("/api/../login", "/login", "/login"),
            ("/api/./v1//users/", "/api/v1/users/", "/api/v1/users/"),
            ("/../../etc", "/etc", "/etc"),
            ("/a/b/..", "/a/", "/a/"),
            ("/a/b/.", "/a/b/", "/a/b/"),
            ("/api/%2e%2E/login", "/login", "/login"),
            ("/api/.%2e/login", "/login", "/login"),
            ("/caf%c3%a9", "/caf%C3%A9", "/café"),
            ("/bad%FF", "/bad%FF", "/bad\u{FFFD}"),
            ("/a%20b", "/a%20b", "/a b"),
            ("/q%3Fx", "/q%3Fx", "/q?x"),
            ("/%7Euser", "/~user", "/~user"),
            ("/a%252Fb", "/a%252Fb", "/a%2Fb"),
        ] {
            assert_eq!(
                norm(raw, EscapedSlashes::Reject),
                Ok((forwarded.to_string(), matched.to_string())),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn escaped_slashes_follow_the_policy() {
        let raw = "/api/items/..%2F..%2Fhealthz";
        assert_eq!(
            norm(raw, EscapedSlashes::Reject),
            Err(PathError::EscapedSlash)
        );
        assert_eq!(
            norm(raw, EscapedSlashes::Decode),
            Ok(("/healthz".into(), "/healthz".into()))
        );
        assert_eq!(
            norm(raw, EscapedSlashes::Keep),
            Ok((raw.into(), raw.into())),
            "one segment, as Express routes it"
        );
        for raw in ["/a%5cb", "/a\\b", "/a%2fb"] {
            assert_eq!(
                norm(raw, EscapedSlashes::Reject),
                Err(PathError::EscapedSlash),
                "{raw}"
            );
            assert_eq!(
                norm(raw, EscapedSlashes::Decode),
                Ok(("/a/b".into(), "/a/b".into())),
                "{raw}"
            );
        }
        assert_eq!(
            norm("/a%5cb", EscapedSlashes::Keep),
            Ok(("/a%5Cb".into(), "/a%5Cb".into()))
        );
        assert_eq!(
            norm("/x/..\\..\\healthz", EscapedSlashes::Decode),
            Ok(("/healthz".into(), "/healthz".into()))
        );
    }

    #[test]
    fn dot_segments_with_parameters_are_refused_and_parameters_when_asked() {
        for raw in [
            "/api/..;/login",
            "/api/..;x=1/login",
            "/a/.;/b",
            "/api/%2e%2E;/login",
        ] {
            assert_eq!(
                norm(raw, EscapedSlashes::Decode),
                Err(PathError::DotParameters),
                "{raw}"
            );
        }
        let keep = ["/login;jsessionid=1", "/a/b;v=2/c", "/a/..x;/b", "/a/;/b"];
        for raw in keep {
            assert_eq!(
                norm(raw, EscapedSlashes::Reject).map(|(f, _)| f),
                Ok(raw.to_string())
            );
            let reject = PathPolicy {
                slashes: EscapedSlashes::Reject,
                parameters: PathParameters::Reject,
            };
            assert_eq!(
                normalize(raw.as_bytes(), reject),
                Err(PathError::Parameters),
                "{raw}"
            );
        }
        // An escaped `;` is data to every upstream.
        assert_eq!(
            norm("/a/..%3B/b", EscapedSlashes::Reject),
            Ok(("/a/..%3B/b".into(), "/a/..;/b".into()))
        );
    }

    #[test]
    fn malformed_escapes_and_nul_are_refused() {
        for raw in ["/100%", "/a%zz", "/a%2", "/%G0"] {
            assert_eq!(
                norm(raw, EscapedSlashes::Decode),
                Err(PathError::BadEscape),
                "{raw}"
            );
        }
        assert_eq!(
            norm("/login%00.png", EscapedSlashes::Decode),
            Err(PathError::Nul)
        );
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in [
            "/a/./b/../c//d/",
            "/%41%2e%2e/x",
            "/caf%c3%a9/%7e",
            "/..%2F..%2Fx",
            "/a%5C..%5Cb",
        ] {
            for slashes in [EscapedSlashes::Decode, EscapedSlashes::Keep] {
                let once = normalize(raw.as_bytes(), slashes).unwrap();
                let twice = normalize(&once.forwarded, slashes).unwrap();
                assert_eq!(twice.forwarded, once.forwarded, "{raw} {slashes:?}");
                assert_eq!(twice.matched, once.matched, "{raw} {slashes:?}");
                assert!(matches!(twice.forwarded, Cow::Borrowed(_)), "{raw}");
            }
        }
    }

    #[test]
    fn every_upstream_reading_sees_the_segments_the_rules_see() {
        const ALPHABET: &[&[u8]] = &[
            b"/",
            b"/",
            b".",
            b".",
            b"%2F",
            b"%2f",
            b"%5C",
            b"%2E",
            b"%2e",
            b"%25",
            b"%41",
            b"%",
            b"\\",
            b"a",
            b"b",
            b"~",
            b"%C3%A9",
            b"\xc3\xa9",
            b"\xff",
            b"%00",
            b"%7E",
            b";",
            b"?",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50_000 {
            let len = (next() % 12) as usize;
            let mut raw = Vec::new();
            for _ in 0..len {
                raw.extend_from_slice(ALPHABET[(next() % ALPHABET.len() as u64) as usize]);
            }
            property::check(&raw);
        }
    }
}
