//! Records the commit the binary is built from, for `--version` and
//! `ratelimiter_build_info{commit}` (contract §17): `RATELIMITER_COMMIT` when set (a build from
//! a source archive, or a packager's own), else the commit `git` says HEAD is, else `unknown`.
//! Uncommitted changes are not looked for: that would rebuild the crate at every `git add`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// Hex digits only: anything else (a newline above all) could say more than a commit.
fn plain(commit: &str) -> Option<String> {
    let c = commit.trim();
    (!c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| c.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=RATELIMITER_COMMIT");
    let commit = std::env::var("RATELIMITER_COMMIT")
        .ok()
        .and_then(|c| plain(&c))
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=RATELIMITER_COMMIT={commit}");
}

fn from_git() -> Option<String> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    // Only this crate's own repository: a source archive unpacked inside another work tree
    // would otherwise be given that tree's commit.
    let top = git(&root, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    // Built again when HEAD moves: `logs/HEAD` grows at every commit and checkout, and the
    // branch's ref changes (these paths hold in a linked work tree too). A path that does not
    // exist would run this script at every build: only those that do.
    let mut watched = vec!["HEAD".to_string(), "logs/HEAD".to_string()];
    watched.extend(git(&root, &["symbolic-ref", "-q", "HEAD"]));
    for file in watched {
        if let Some(path) = git(&root, &["rev-parse", "--git-path", &file]) {
            let path = root.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let head = git(&root, &["rev-parse", "HEAD"])?;
    plain(&head[..head.len().min(12)])
}
