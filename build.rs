//! Records the commit the binary is built from, for `--version` and
//! `ratelimiter_build_info{commit}` (contract §17): `RATELIMITER_COMMIT` when set (a build from
//! a source archive, or a packager's own), else the commit `git` says HEAD is, else `unknown`.
//! Uncommitted changes are not looked for: that would rebuild the crate at every `git add`.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=RATELIMITER_COMMIT");
    let commit = match std::env::var("RATELIMITER_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=RATELIMITER_COMMIT={commit}");
}

fn from_git() -> Option<String> {
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Built again when HEAD moves: a new commit, or another branch checked out.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = Path::new(&dir);
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD", "packed-refs"].into_iter().map(String::from);
        // A path that does not exist would run this script at every build: only those that do.
        for file in watched.chain(branch) {
            let path = dir.join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Some(head)
}
