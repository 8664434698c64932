//! The status page at `GET /` (contract §16): one self-contained HTML file that reads the JSON
//! API from the browser and refreshes itself. It holds no data of its own, so serving it needs
//! no token; the page asks for one when a read or a change is answered 401.
//!
//! The page's one `<style>` and one `<script>` are inline, and the Content-Security-Policy
//! allows exactly those (by their SHA-256) and requests to this origin: nothing else can load
//! or run on the page, even if a key value sent by a client carried markup.

use std::sync::LazyLock;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::{AdminConfig, AdminRead};

const PAGE: &str = include_str!("status.html");

/// The page's headers, the same for every answer.
pub(super) static HEADERS: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    vec![
        ("Content-Security-Policy", policy(PAGE)),
        ("X-Content-Type-Options", "nosniff".into()),
        ("Referrer-Policy", "no-referrer".into()),
        ("X-Frame-Options", "DENY".into()),
    ]
});

/// The page, telling the script what this node asks a token for (`changes`, `reads`,
/// `metrics`), so it asks the operator first instead of sending a request the node refuses.
/// The 401 would tell as much; no token is ever in the page.
pub(super) fn page(admin: &AdminConfig) -> String {
    let mut needs = Vec::new();
    if admin.has_token() {
        needs.push("changes");
        if admin.read == AdminRead::Token {
            needs.push("reads");
        }
    }
    if admin.metrics_token.is_some() {
        needs.push("metrics");
    }
    PAGE.replacen(AUTH_SLOT, &needs.join(" "), 1)
}

const AUTH_SLOT: &str = "{{auth}}";

/// The text between `<tag>` and `</tag>`, for each occurrence.
fn inline<'p>(page: &'p str, tag: &str) -> Vec<&'p str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        found.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    found
}

fn hashes(page: &str, tag: &str) -> String {
    inline(page, tag)
        .iter()
        .map(|body| {
            let digest = Sha256::digest(body.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Only the page's own style and script, and fetches to this origin; no frames, no forms,
/// no base URL, no plugins.
fn policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes(page, "script"),
        hashes(page, "style"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_style_and_one_script_each_allowed_by_its_hash() {
        assert_eq!(inline(PAGE, "style").len(), 1);
        assert_eq!(inline(PAGE, "script").len(), 1);
        let csp = &HEADERS[0].1;
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        // Known answer: the hash of "" is the well-known empty-input digest.
        assert_eq!(
            hashes("<script></script>", "script"),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }

    #[test]
    fn the_page_says_what_needs_a_token() {
        assert_eq!(PAGE.matches(AUTH_SLOT).count(), 1);
        let mut admin = AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
            read: AdminRead::Open,
            metrics_token: None,
            tokens: Vec::new(),
        };
        assert!(page(&admin).contains(r#"name="ratelimiter-auth" content="""#));
        admin.token = Some("t".into());
        admin.read = AdminRead::Token;
        admin.metrics_token = Some("m".into());
        let served = page(&admin);
        assert!(served.contains(r#"content="changes reads metrics""#));
        assert!(!served.contains("\"t\""), "no token in the page");
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere() {
        // The only absolute URL the page holds is the SVG namespace, which is never fetched.
        let urls: Vec<&str> = PAGE
            .match_indices("://")
            .map(|(i, _)| &PAGE[PAGE[..i].rfind(['"', '\'', '(', ' ']).unwrap_or(0)..i + 30])
            .collect();
        assert!(
            urls.iter()
                .all(|u| u.contains("http://www.w3.org/2000/svg")),
            "{urls:?}"
        );
        for attr in ["src=", "@import", "url("] {
            assert!(
                !PAGE.contains(attr),
                "the page must not load anything: {attr}"
            );
        }
    }

    #[test]
    fn data_goes_into_the_page_as_text_only() {
        assert!(!PAGE.contains("innerHTML"));
        assert!(!PAGE.contains("insertAdjacentHTML"));
        assert!(!PAGE.contains("document.write"));
    }
}
