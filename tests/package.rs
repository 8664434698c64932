//! The Debian package (contract §16): `scripts/package.sh` builds it from this tree (with the
//! test build of the binary); it is inspected (fields, files and their modes, conffiles,
//! checksums, maintainer scripts), its unit passes `systemd-analyze verify` with nothing to
//! say and scores as hardened by `systemd-analyze security`, and `dpkg -i` installs it into an
//! empty root of its own (dpkg's `--root`: the machine running the tests is left alone). There
//! the config is edited as an operator would, and the unit's own command lines run: the check,
//! the service as an unprivileged user with the unit's environment file, a reload and a stop.
//! An edited conffile survives a reinstall; a purge removes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::http::get;
use common::upstream::Upstream;
use common::{free_port, wait_for};

const UNIT: &str = "usr/lib/systemd/system/ratelimiter.service";
const CONFIG: &str = "etc/ratelimiter/ratelimiter.toml";
const ENVIRONMENT: &str = "etc/default/ratelimiter";
/// The user the service runs as in the test, standing in for the unit's DynamicUser.
const NOBODY: u32 = 65534;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Builds the package from the test build of the binary, in a directory of the test's own
/// (a release package in target/debian/ is left alone); its path.
fn build() -> PathBuf {
    let out = run(Command::new("scripts/package.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BINARY", env!("CARGO_BIN_EXE_ratelimiter"))
        .env("OUT", scratch("deb-build")));
    let deb = PathBuf::from(text(&out).trim());
    assert!(deb.exists(), "{deb:?}");
    deb
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("ratelimiter-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `key=` lines of the unit, in order, each split into words.
fn unit_lines(unit: &str, key: &str) -> Vec<Vec<String>> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    let mut found = unit_lines(unit, key);
    assert_eq!(found.len(), 1, "one {key}= in the unit");
    found.remove(0).join(" ")
}

/// An absolute path of the unit's, inside the installed root.
fn rooted(root: &Path, arg: &str) -> String {
    match arg.starts_with("/usr/") || arg.starts_with("/etc/") {
        true => root.join(&arg[1..]).to_string_lossy().into_owned(),
        false => arg.to_string(),
    }
}

/// One of the unit's command lines, run as its service would: inside the installed root, as
/// an unprivileged user (when the tests run as root), with the unit's environment file.
fn unit_command(root: &Path, line: &[String], env: &[(String, String)]) -> Command {
    let args: Vec<String> = line.iter().map(|a| rooted(root, a)).collect();
    let mut cmd = match is_root() {
        true => {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                &NOBODY.to_string(),
                "--regid",
                &NOBODY.to_string(),
            ])
            .arg("--clear-groups")
            .args(&args);
            c
        }
        false => {
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]);
            c
        }
    };
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().cloned())
        .current_dir("/");
    cmd
}

/// `KEY=value` lines of an environment file, as systemd reads them (no quoting used here).
fn environment(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--log=/dev/null", "--force-script-chrootless"])
        // The empty root has no libc6 package registered; the binary runs on the host's.
        .arg("--force-depends");
    if !is_root() {
        cmd.arg("--force-not-root");
    }
    cmd
}

#[test]
fn the_package_installs_and_its_unit_runs_the_gateway() {
    let deb = build();

    // --- Inspected: its fields, files, conffiles, checksums and scripts. ---
    let field = |f: &str| text(&run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f)));
    assert_eq!(field("Package").trim(), "ratelimiter");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(field("Version").trim(), version);
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>="), "{depends}");
    // /bin/kill, which ExecReload runs, is procps's: a minimal Debian lacks it otherwise.
    assert!(depends.contains("procps"), "{depends}");
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for (mode, path) in [
        ("-rwxr-xr-x root/root", "./usr/bin/ratelimiter"),
        ("-rw-r--r-- root/root", "./etc/ratelimiter/ratelimiter.toml"),
        ("-rw------- root/root", "./etc/default/ratelimiter"),
        ("-rw-r--r-- root/root", "./etc/logrotate.d/ratelimiter"),
        (
            "-rw-r--r-- root/root",
            "./usr/lib/systemd/system/ratelimiter.service",
        ),
        (
            "-rw-r--r-- root/root",
            "./usr/share/doc/ratelimiter/copyright",
        ),
        (
            "-rw-r--r-- root/root",
            "./usr/share/doc/ratelimiter/README.md.gz",
        ),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(path)),
            "{mode} {path} in\n{listing}"
        );
    }
    let control = scratch("deb-control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/default/ratelimiter\n/etc/logrotate.d/ratelimiter\n/etc/ratelimiter/ratelimiter.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    let files = scratch("deb-files");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&files));
    run(Command::new("md5sum")
        .args(["--quiet", "-c"])
        .arg(control.join("md5sums"))
        .current_dir(&files));

    // --- The unit: verified with nothing to report, and hardened. ---
    // systemd-analyze looks up the unit, its commands and the units it names under --root:
    // the package's files beside the host's own units.
    std::fs::create_dir_all(files.join("usr/lib/systemd")).unwrap();
    run(Command::new("cp")
        .args(["-a", "/lib/systemd/system"])
        .arg(files.join("usr/lib/systemd/")));
    std::fs::create_dir_all(files.join("bin")).unwrap();
    std::fs::copy("/bin/kill", files.join("bin/kill")).unwrap();
    let verify = |unit: &str| {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", files.display()))
            .arg(unit)
            .output()
            .expect("systemd-analyze (the systemd package; scripts/deps.sh installs it)")
    };
    let verified = verify("ratelimiter.service");
    assert!(
        verified.status.success() && verified.stderr.is_empty() && verified.stdout.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // The same check fails on a unit with a mistake, so it can fail.
    let unit_text = std::fs::read_to_string(files.join(UNIT)).unwrap();
    std::fs::write(
        files.join("usr/lib/systemd/system/broken.service"),
        unit_text.replace("ProtectSystem=strict", "ProtectSytem=strict"),
    )
    .unwrap();
    let broken = verify("broken.service");
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("Unknown key 'ProtectSytem'"),
        "{broken:?}"
    );
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", files.display()))
        .arg("ratelimiter.service"));
    let report = text(&security);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("ratelimiter.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in\n{report}"));
    println!("systemd-analyze security: exposure {exposure} (0 = locked down, 10 = exposed)");
    assert!(exposure <= 2.0, "the unit is not hardened: {report}");
    let reload = unit_lines(&unit_text, "ExecReload");
    assert_eq!(
        reload.last().unwrap(),
        &["/bin/kill", "-HUP", "$MAINPID"],
        "ExecReload sends HUP"
    );

    // --- dpkg -i into an empty root of its own. ---
    let root = scratch("deb-root");
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    run(dpkg(&root).arg("-i").arg(&deb));
    let status = text(&run(dpkg(&root).args(["-s", "ratelimiter"])));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains(" /etc/ratelimiter/ratelimiter.toml "),
        "{status}"
    );

    // The operator's edits: where it listens and forwards, the log's place, and a token in
    // the environment file that the config names.
    let upstream = Upstream::start();
    let (proxy, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let logs = root.join("var/log/ratelimiter");
    std::fs::create_dir_all(&logs).unwrap();
    if is_root() {
        // As the unit's LogsDirectory= makes it: the service's own.
        std::os::unix::fs::chown(&logs, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let shipped = std::fs::read_to_string(root.join(CONFIG)).unwrap();
    let edited = shipped
        .replace("\"0.0.0.0:8080\"", &format!("\"{proxy}\""))
        .replace("\"127.0.0.1:9090\"", &format!("\"{admin}\""))
        .replace("[\"127.0.0.1:8000\"]", &format!("[\"{}\"]", upstream.addr))
        .replace("/var/log/ratelimiter/", &format!("{}/", logs.display()))
        .replace(
            "# token = \"${RATELIMITER_ADMIN_TOKEN}\"",
            "token = \"${RATELIMITER_ADMIN_TOKEN}\"",
        );
    for edit in [&proxy, &admin, &upstream.addr, "\ntoken = "] {
        assert!(
            edited.contains(edit),
            "the edit {edit:?} found its line:\n{edited}"
        );
    }
    std::fs::write(root.join(CONFIG), &edited).unwrap();
    let env_file = root.join(ENVIRONMENT);
    let mut env_text = std::fs::read_to_string(&env_file).unwrap();
    env_text.push_str("RATELIMITER_ADMIN_TOKEN=from-the-environment-file\n");
    std::fs::write(&env_file, env_text).unwrap();

    // --- The unit's command lines. ---
    let env = environment(&env_file);
    let pre = unit_lines(&unit_text, "ExecStartPre");
    assert_eq!(pre.len(), 1);
    // A broken config fails the check, naming its place, so the unit would not start.
    std::fs::write(root.join(CONFIG), format!("{edited}bogus = 1\n")).unwrap();
    let refused = unit_command(&root, &pre[0], &env).output().unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{why}");
    assert!(
        why.contains("ratelimiter.toml:") && why.contains("unknown key `bogus`"),
        "{why}"
    );
    std::fs::write(root.join(CONFIG), &edited).unwrap();
    run(&mut unit_command(&root, &pre[0], &env));
    let start = unit_lines(&unit_text, "ExecStart");
    let log_path = root.join("service.log");
    let mut service: Child = unit_command(&root, &start[0], &env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("the service to be ready", Duration::from_secs(10), || {
        get(&admin, "/health/ready", &[])
            .ok()
            .filter(|r| r.status == 200)
    });
    let r = get(&proxy, "/hello", &[]).unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", log());
    assert_eq!(r.header("X-RateLimit-Limit"), Some("100"));
    assert_eq!(upstream.served(), 1);
    // The token came from the environment file: a change needs it.
    let reset = |token: &str| {
        common::http::Conn::open(&admin)
            .unwrap()
            .send(
                "POST",
                "/api/counters/ip:127.0.0.1/reset",
                &[("Authorization", &format!("Bearer {token}"))],
                "",
            )
            .unwrap()
            .status
    };
    assert_eq!(reset("wrong"), 401);
    assert_eq!(reset("from-the-environment-file"), 200);
    // The access log, written as the service's user in its log directory.
    let access = logs.join("access.log");
    wait_for("the access log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&access)
            .ok()
            .filter(|t| t.contains("/hello"))
    });
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&access).unwrap().uid(), NOBODY);
    }

    // systemctl reload: the check, then HUP to the main process.
    let main_pid = service.id().to_string();
    for line in &reload {
        let line: Vec<String> = line
            .iter()
            .map(|a| a.replace("$MAINPID", &main_pid))
            .collect();
        run(&mut unit_command(&root, &line, &env));
    }
    wait_for("the reload", Duration::from_secs(5), || {
        let text = get(&admin, "/metrics", &[]).ok()?.body;
        text.lines()
            .any(|l| {
                l.starts_with("ratelimiter_config_reloads_total{result=\"success\"")
                    && l.ends_with(" 1")
            })
            .then_some(())
    });

    // systemctl stop: KillSignal, and the process is gone well within TimeoutStopSec.
    let signal = unit_value(&unit_text, "KillSignal");
    let timeout: u64 = unit_value(&unit_text, "TimeoutStopSec").parse().unwrap();
    // The shipped drain ends before systemd would kill the process.
    let grace: u64 = shipped
        .lines()
        .find_map(|l| l.strip_prefix("grace_period_seconds = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("grace_period_seconds in the shipped config");
    assert!(
        grace < timeout,
        "grace {grace} s, TimeoutStopSec {timeout} s"
    );
    let stopped = Instant::now();
    run(Command::new("kill")
        .arg(format!("-{}", signal.trim_start_matches("SIG")))
        .arg(&main_pid));
    let code = wait_for("the stop", Duration::from_secs(timeout), || {
        service.try_wait().unwrap()
    });
    assert_eq!(code.code(), Some(0), "{}", log());
    println!(
        "service stopped {:.2} s after {signal} (TimeoutStopSec={timeout})",
        stopped.elapsed().as_secs_f64()
    );

    // --- Conffiles: an edit survives a reinstall; a purge removes them. ---
    run(dpkg(&root).arg("-i").arg(&deb));
    assert_eq!(std::fs::read_to_string(root.join(CONFIG)).unwrap(), edited);
    run(dpkg(&root).args(["--purge", "ratelimiter"]));
    assert!(!root.join(CONFIG).exists());
    assert!(!root.join("usr/bin/ratelimiter").exists());
    let _ = std::fs::remove_dir_all(&root);
}
