//! Bearer tokens verified against `[jwt]` (contract §12), for `jwt:<claim>` key parts. The
//! cryptography is the `jsonwebtoken` crate's (ring underneath, already the TLS provider).
//!
//! A token counts only when its signature verifies with a configured key (a JWKS file, or an
//! HS256 secret file), its algorithm is one of `algorithms` (`none` is never one), `exp` and
//! `nbf` are numbers that hold when present (with `leeway_seconds`), and `iss` and `aud` are
//! present and match when configured.
//! Anything else (no token, a forged or expired one, a key id the JWKS does not have) makes
//! the part missing, so the request is keyed by its client IP unless the rule skips it. A
//! token is verified at most once per request, whatever the number of its rules.

use std::collections::HashMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// A token's claims.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFile {
    /// A JSON Web Key Set (`{"keys":[...]}`): RSA, EC and Ed25519 public keys.
    Jwks(std::path::PathBuf),
    /// A shared secret for HS256 (the file's bytes, a trailing newline dropped).
    Secret(std::path::PathBuf),
}

/// `[jwt]`, as validated (the files not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    pub keys: KeyFile,
    pub algorithms: Vec<Algorithm>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_seconds: u64,
}

/// The algorithms `[jwt] algorithms` may name.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "PS256" => Some(Algorithm::PS256),
        "PS384" => Some(Algorithm::PS384),
        "PS512" => Some(Algorithm::PS512),
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// One verification key, with the key id it is published under.
struct Key {
    id: Option<String>,
    key: DecodingKey,
}

/// Verifies bearer tokens; built from `[jwt]` with its files read.
pub struct Verifier {
    keys: Vec<Key>,
    /// One validation per accepted algorithm: jsonwebtoken refuses a key whose family is not
    /// that of every algorithm a validation names.
    validations: HashMap<Algorithm, Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("algorithms", &self.validations.keys())
            .finish()
    }
}

impl Verifier {
    /// Reads the key file; the error says what is wrong with it.
    pub fn load(config: &JwtConfig) -> Result<Verifier, String> {
        let keys = match &config.keys {
            KeyFile::Secret(path) => {
                let mut secret = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.len() < 32 {
                    return Err(format!(
                        "{}: an HS256 secret needs at least 32 bytes, found {}",
                        path.display(),
                        secret.len()
                    ));
                }
                vec![Key {
                    id: None,
                    key: DecodingKey::from_secret(&secret),
                }]
            }
            KeyFile::Jwks(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
                let mut keys = Vec::with_capacity(set.keys.len());
                for jwk in &set.keys {
                    let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                        format!("{}: a key that cannot be used: {e}", path.display())
                    })?;
                    keys.push(Key {
                        id: jwk.common.key_id.clone(),
                        key,
                    });
                }
                if keys.is_empty() {
                    return Err(format!("{}: the JWKS has no key", path.display()));
                }
                keys
            }
        };
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway_seconds;
            v.validate_nbf = true;
            // `exp` is checked when a token has one; tokens without one are the issuer's choice.
            // A configured `iss` or `aud` must be in the token: the crate checks it only when
            // the claim is there.
            v.required_spec_claims.clear();
            match &config.issuer {
                Some(iss) => {
                    v.set_issuer(&[iss]);
                    v.required_spec_claims.insert("iss".into());
                }
                None => v.iss = None,
            }
            match &config.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    v.required_spec_claims.insert("aud".into());
                }
                None => v.validate_aud = false,
            }
            v
        };
        Ok(Verifier {
            keys,
            validations: config
                .algorithms
                .iter()
                .map(|&alg| (alg, validation(alg)))
                .collect(),
        })
    }

    /// The claims of a valid bearer token in this `Authorization` value; `None` otherwise.
    pub fn verify(&self, authorization: &[u8]) -> Option<Claims> {
        let token = authorization
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| std::str::from_utf8(&authorization[7..]).ok())?
            .trim();
        // `none`, or an algorithm not configured, fails here.
        let header = jsonwebtoken::decode_header(token).ok()?;
        let validation = self.validations.get(&header.alg)?;
        // A token naming a key is tried with that key alone, or, when no key has that id, with
        // the keys that have none (a secret); a token naming none, with every key.
        let named = |k: &&Key| k.id.is_some() && k.id == header.kid;
        let by_id = header.kid.is_some() && self.keys.iter().any(|k| named(&k));
        let candidates = self.keys.iter().filter(|k| match (&header.kid, by_id) {
            (None, _) => true,
            (Some(_), true) => named(k),
            (Some(_), false) => k.id.is_none(),
        });
        for key in candidates {
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                // The crate passes an `exp` or `nbf` that is not a number (`"exp":"soon"`)
                // as absent; such a token is malformed (RFC 7519 §4.1.4).
                let timed = ["exp", "nbf"]
                    .iter()
                    .all(|c| data.claims.get(*c).is_none_or(|v| v.is_number()));
                return timed.then_some(data.claims);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(bytes: &[u8]) -> tempfile_path::Path {
        tempfile_path::Path::with(bytes)
    }

    /// A file in the temp directory, removed on drop.
    mod tempfile_path {
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn with(bytes: &[u8]) -> Path {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "ratelimiter-jwt-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, bytes).unwrap();
                Path(p)
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn config(keys: KeyFile) -> JwtConfig {
        JwtConfig {
            keys,
            algorithms: vec![Algorithm::HS256],
            issuer: Some("https://auth.example.com".into()),
            audience: Some("api".into()),
            leeway_seconds: 0,
        }
    }

    fn sign(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn hs256_tokens_verify_only_when_every_condition_holds() {
        let secret = [7u8; 32];
        let file = secret_file(&[&secret[..], b"\n"].concat());
        let v = Verifier::load(&config(KeyFile::Secret(file.0.clone()))).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let good = serde_json::json!({"sub":"alice","iss":"https://auth.example.com","aud":"api","exp":now + 60});
        let bearer = |t: String| format!("Bearer {t}").into_bytes();
        let claims = v.verify(&bearer(sign(&secret, good.clone()))).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert!(v
            .verify(format!("bearer {}", sign(&secret, good.clone())).as_bytes())
            .is_some());
        // Another secret, another issuer, audience, an expired token, the wrong scheme.
        assert!(v.verify(&bearer(sign(&[8u8; 32], good.clone()))).is_none());
        let mut other = good.clone();
        other["iss"] = "https://evil.example.com".into();
        assert!(v.verify(&bearer(sign(&secret, other))).is_none());
        let mut other = good.clone();
        other["aud"] = "web".into();
        assert!(v.verify(&bearer(sign(&secret, other))).is_none());
        let mut other = good.clone();
        other["exp"] = (now - 120).into();
        assert!(v.verify(&bearer(sign(&secret, other))).is_none());
        // Without the configured issuer or audience; with a time that is not a number.
        for (claim, value) in [
            ("iss", None),
            ("aud", None),
            ("exp", Some("soon")),
            ("nbf", Some("later")),
        ] {
            let mut other = good.clone();
            match value {
                None => drop(other.as_object_mut().unwrap().remove(claim)),
                Some(v) => other[claim] = v.into(),
            }
            assert!(v.verify(&bearer(sign(&secret, other))).is_none(), "{claim}");
        }
        assert!(v
            .verify(format!("Basic {}", sign(&secret, good)).as_bytes())
            .is_none());
        // `alg: none`, unsigned.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none"}"#),
            b64.encode(br#"{"sub":"alice","iss":"https://auth.example.com","aud":"api"}"#)
        );
        assert!(v.verify(&bearer(none)).is_none());
    }

    #[test]
    fn short_secrets_and_bad_jwks_files_are_refused() {
        let short = secret_file(b"tooshort");
        let e = Verifier::load(&config(KeyFile::Secret(short.0.clone()))).unwrap_err();
        assert!(e.contains("at least 32 bytes"), "{e}");
        let bad = secret_file(b"{\"keys\": 1}");
        let e = Verifier::load(&config(KeyFile::Jwks(bad.0.clone()))).unwrap_err();
        assert!(e.contains("not a JWKS"), "{e}");
        let empty = secret_file(b"{\"keys\": []}");
        let e = Verifier::load(&config(KeyFile::Jwks(empty.0.clone()))).unwrap_err();
        assert!(e.contains("no key"), "{e}");
    }
}
