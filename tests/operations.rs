//! Production operations (contract §17): what each common signal does to a node under a
//! keep-alive load, the access log reopened on USR1, a zero-downtime upgrade with `-u`, and
//! what a graceful stop costs keep-alive clients, beside nginx's graceful stop in the same run.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::get;
use common::load::{KeepAliveLoad, Tally};
use common::procs::{Gateway, RedisServer};
use common::upstream::Upstream;
use common::{free_port, wait_for};

const CONNECTIONS: usize = 8;

/// A node on Redis named `id`, with a long grace period (so a prompt exit shows it did not
/// wait it out) and limits no load reaches.
fn node(redis: &RedisServer, up: &Upstream, id: &str, extra: &str) -> Gateway {
    let proxy = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    Gateway::start_text(
        &proxy,
        &admin,
        &format!(
            "[server]\nthreads = 2\ngrace_period_seconds = 30\n{extra}\n\n[proxy]\nlisten = \"{proxy}\"\nupstreams = [\"{}\"]\n\n[admin]\nlisten = \"{admin}\"\n\n[node]\nid = \"{id}\"\n\n[redis]\nurl = \"{}\"\n\n[limits]\ndefault_limit = 100000000\n",
            up.addr,
            redis.url()
        ),
    )
}

fn registered(redis: &RedisServer, id: &str) -> bool {
    instance(redis, id).is_some()
}

/// Which process keeps the node's registry entry.
fn instance(redis: &RedisServer, id: &str) -> Option<String> {
    let mut c = redis.conn();
    redis::cmd("HGET")
        .arg(format!("ratelimiter:nodes:{id}"))
        .arg("instance")
        .query::<Option<String>>(&mut c)
        .unwrap()
}

/// Runs the load until `enough` answers have come back since the last call.
fn until_answered(load_probe: &Gateway, n: usize) {
    let start = Instant::now();
    let mut seen = 0;
    while seen < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no traffic through {}",
            load_probe.proxy
        );
        if get(&load_probe.proxy, "/", &[]).is_ok_and(|r| r.status == 200) {
            seen += 1;
        }
    }
}

#[test]
fn signals_under_load_never_stop_a_node_without_a_drain() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let mut gw = node(&redis, &up, "signalled", "");
    wait_for("the node registered", Duration::from_secs(10), || {
        registered(&redis, "signalled").then_some(())
    });
    let load = KeepAliveLoad::start(&gw.proxy, CONNECTIONS, "/");
    // None of these stops the node, or costs a request.
    for sig in ["USR1", "USR2", "HUP", "PIPE", "WINCH"] {
        gw.signal(sig);
        until_answered(&gw, 20);
        assert!(!gw.exited(), "SIG{sig} ended the node: {}", gw.log());
        assert!(registered(&redis, "signalled"), "after SIG{sig}");
    }
    // TERM: drained, out of the registry, and gone well within the 30 s grace period.
    let stopped = Instant::now();
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    let took = stopped.elapsed();
    let tally = load.finish();
    // Well before the 30 s grace period (a loaded machine makes the exact time vary).
    assert!(took < Duration::from_secs(15), "exited after {took:?}");
    assert!(!registered(&redis, "signalled"));
    assert_eq!(tally.lost, 0, "{tally:?}");
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert!(tally.ok() > 100, "{tally:?}");
    assert!(tally.closed_by_server >= 1, "{tally:?}");
}

#[test]
fn quit_int_and_term_each_drain_and_leave_the_registry() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    for (sig, id) in [("QUIT", "quit"), ("INT", "int"), ("TERM", "term")] {
        let mut gw = node(&redis, &up, id, "");
        wait_for("the node registered", Duration::from_secs(10), || {
            registered(&redis, id).then_some(())
        });
        let load = KeepAliveLoad::start(&gw.proxy, CONNECTIONS, "/");
        until_answered(&gw, 20);
        gw.signal(sig);
        assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0), "SIG{sig}");
        let tally = load.finish();
        assert!(!registered(&redis, id), "SIG{sig} left a ghost node");
        assert_eq!(tally.lost, 0, "SIG{sig}: {tally:?}");
        assert_eq!(tally.failed(), 0, "SIG{sig}: {tally:?}");
    }
}

#[test]
fn sigterm_on_an_idle_node_exits_at_once() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let mut gw = node(&redis, &up, "idle", "");
    assert_eq!(get(&gw.proxy, "/", &[]).unwrap().status, 200);
    let stopped = Instant::now();
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    // The idle keep-alive linger (1 s), not the 30 s grace period.
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
}

#[test]
fn usr1_reopens_the_access_log() {
    let dir = std::env::temp_dir().join(format!("ratelimiter-usr1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let up = Upstream::start();
    let gw = Gateway::start(
        &format!("upstreams = [\"{}\"]", up.addr),
        &format!("[log]\naccess = \"{}\"", log.display()),
    );
    let lines = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    get(&gw.proxy, "/before", &[]).unwrap();
    wait_for("the first line", Duration::from_secs(5), || {
        (lines(&log) == 1).then_some(())
    });
    // Rotated away, as logrotate does; lines go to the old file until USR1.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    wait_for("a new file at the path", Duration::from_secs(5), || {
        get(&gw.proxy, "/after", &[]).unwrap();
        log.exists().then_some(())
    });
    wait_for("lines in the new file", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("/after")
            .then_some(())
    });
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("/after"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_upgrade_under_load_refuses_nothing_and_fails_nothing() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let pid_file =
        std::env::temp_dir().join(format!("ratelimiter-upgrade-{}.pid", std::process::id()));
    let mut old = node(
        &redis,
        &up,
        "upgraded",
        &format!("pid_file = \"{}\"", pid_file.display()),
    );
    let first = wait_for("the node registered", Duration::from_secs(10), || {
        instance(&redis, "upgraded")
    });
    let pid_of = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    // Registered before it serves; the pid file is written once it serves.
    wait_for("the pid file", Duration::from_secs(10), || {
        pid_of().filter(|&pid| pid == old.pid())
    });
    let load = KeepAliveLoad::start(&old.proxy, CONNECTIONS, "/");
    // Fresh connections too: each one accepted by one process or the other.
    let fresh = std::thread::spawn({
        let addr = old.proxy.clone();
        let admin = old.admin.clone();
        move || {
            let (mut ok, mut bad) = (0, Vec::new());
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(12) {
                for a in [&addr, &admin] {
                    // An admin read that asks nothing of Redis.
                    let path = if a == &admin { "/api/limits" } else { "/" };
                    match get(a, path, &[]) {
                        Ok(r) if r.status == 200 => ok += 1,
                        other => bad.push(format!("{a}: {other:?}")),
                    }
                }
            }
            (ok, bad)
        }
    });
    until_answered(&old, 50);
    let mut new = old.upgrade();
    // The old process hands over, drains and exits; the new one serves on.
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        old.log()
    );
    let (fresh_ok, fresh_bad) = fresh.join().unwrap();
    until_answered(&new, 50);
    let tally = load.finish();
    assert!(!new.exited(), "{}", new.log());
    assert_eq!(
        pid_of(),
        Some(new.pid()),
        "the pid file names the new process"
    );
    // Listed throughout, and now by the new process.
    let second = instance(&redis, "upgraded").expect("the node stays listed");
    assert_ne!(first, second, "the new process keeps the entry");
    assert!(fresh_bad.is_empty(), "{fresh_bad:?}");
    assert!(fresh_ok > 50, "{fresh_ok}");
    assert_eq!(
        (tally.lost, tally.refused, tally.failed()),
        (0, 0, 0),
        "{tally:?}"
    );
    eprintln!("upgrade under load: keep-alive {tally:?}, fresh connections {fresh_ok} answered");
    for (who, log) in [("old", old.log()), ("new", new.log())] {
        assert!(!log.contains(" ERROR "), "the {who} process: {log}");
    }
    // The new process upgrades again the same way.
    let mut newer = new.upgrade();
    assert_eq!(
        new.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        new.log()
    );
    until_answered(&newer, 10);
    assert!(!newer.exited());
    let third = instance(&redis, "upgraded").expect("listed");
    assert!(third != first && third != second);
    newer.signal("TERM");
    assert_eq!(newer.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!registered(&redis, "upgraded"));
    assert_eq!(pid_of(), None, "the pid file is removed at exit");
}

/// nginx in front of the same upstream, keep-alive on both sides, started in the foreground.
struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
    addr: String,
}

impl Nginx {
    fn start(upstream: &str) -> Nginx {
        let dir = std::env::temp_dir().join(format!("ratelimiter-nginx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;\n  upstream app {{ server {upstream}; keepalive 16; }}\n  server {{\n    listen {addr};\n    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new(nginx())
            .args(["-p", &dir.to_string_lossy(), "-c", &conf.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (scripts/deps.sh installs it)");
        wait_for("nginx", Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).ok()
        });
        Nginx { child, dir, addr }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx() -> &'static str {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nginx")
}

/// Keep-alive clients during a graceful stop: a request sent on a kept-alive connection as
/// the stop begins is answered by the gateway (with `Connection: close`); nginx, stopped with
/// its graceful QUIT in the same run, is the yardstick.
#[test]
fn a_graceful_stop_loses_no_keepalive_request() {
    const LOADED: Duration = Duration::from_millis(500);
    const CLIENTS: usize = 10;
    let up = Upstream::start();
    let rounds = 3;
    let (mut ours, mut theirs) = (Tally::default(), Tally::default());
    for _ in 0..rounds {
        let mut nginx = Nginx::start(&up.addr);
        let load = KeepAliveLoad::start(&nginx.addr, CLIENTS, "/");
        wait_for("nginx traffic", Duration::from_secs(10), || {
            get(&nginx.addr, "/", &[]).ok().filter(|r| r.status == 200)
        });
        // Both under load for the same time before the stop.
        std::thread::sleep(LOADED);
        let _ = Command::new("kill")
            .args(["-QUIT", &nginx.child.id().to_string()])
            .status();
        wait_for("nginx to exit", Duration::from_secs(30), || {
            nginx.child.try_wait().ok().flatten()
        });
        theirs.add(&load.finish());

        let redis = RedisServer::start();
        let mut gw = node(&redis, &up, "stopped", "");
        let load = KeepAliveLoad::start(&gw.proxy, CLIENTS, "/");
        until_answered(&gw, 1);
        std::thread::sleep(LOADED);
        gw.signal("TERM");
        assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
        ours.add(&load.finish());
    }
    eprintln!(
        "graceful stop, {rounds} rounds of {CLIENTS} keep-alive clients: gateway lost {} of {} requests ({} clients lost one), nginx lost {} of {} ({} clients)",
        ours.lost,
        ours.ok() + ours.lost,
        ours.clients_losing,
        theirs.lost,
        theirs.ok() + theirs.lost,
        theirs.clients_losing,
    );
    assert_eq!(ours.lost, 0, "{ours:?}");
}

/// A client that hangs up mid-request, or sends a body and vanishes, is its own affair: no
/// line at ERROR, which operators alert on.
#[test]
fn clients_that_hang_up_are_not_logged_as_errors() {
    use std::io::Write;
    let up = Upstream::start();
    let gw = Gateway::start(&format!("upstreams = [\"{}\"]", up.addr), "");
    for request in [
        &b"GET /sleep/300 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /sleep/300 HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
    ] {
        let mut c = std::net::TcpStream::connect(&gw.proxy).unwrap();
        c.write_all(request).unwrap();
        // Gone before the answer, with the request in the gateway's hands.
        std::thread::sleep(Duration::from_millis(50));
        drop(c);
    }
    // The hang-ups are done with once a later request goes through.
    wait_for(
        "the gateway to be done with them",
        Duration::from_secs(5),
        || {
            get(&gw.proxy, "/sleep/400", &[])
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    let log = gw.log();
    assert!(!log.contains(" ERROR "), "{log}");
}

/// `-d`, as a systemd unit of `Type=forking` with `PIDFile=` runs it: the command returns once
/// the node serves, the pid file names the process in the background, and `-u -d` replaces
/// it the same way, which is what `ExecReload=` does for a new binary or config.
#[test]
fn in_the_background_the_command_returns_once_serving_and_upgrades_the_same_way() {
    let up = Upstream::start();
    let dir = std::env::temp_dir().join(format!("ratelimiter-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (proxy, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let pid_file = dir.join("ratelimiter.pid");
    let conf = dir.join("ratelimiter.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\nthreads = 1\ngrace_period_seconds = 5\npid_file = \"{}\"\n\n[proxy]\nlisten = \"{proxy}\"\nupstreams = [\"{}\"]\n\n[admin]\nlisten = \"{admin}\"\n",
            pid_file.display(),
            up.addr
        ),
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let start = |args: &[&str]| {
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
            .args(args)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .status()
            .unwrap();
        (status.code(), started.elapsed())
    };
    let pid = || -> u32 {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();

    let (code, took) = start(&["-d"]);
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(took < Duration::from_secs(10));
    // Serving as soon as the command returned.
    assert_eq!(get(&proxy, "/", &[]).unwrap().status, 200);
    let first = pid();
    assert!(alive(first));

    let (code, _) = start(&["-u", "-d"]);
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let second = pid();
    assert_ne!(first, second);
    assert_eq!(get(&proxy, "/", &[]).unwrap().status, 200);
    wait_for("the first process to exit", Duration::from_secs(20), || {
        // Reaped by init once it exits; a zombie still shows in /proc with state Z.
        let state = std::fs::read_to_string(format!("/proc/{first}/stat")).unwrap_or_default();
        (state.is_empty() || state.contains(") Z ")).then_some(())
    });
    assert_eq!(get(&proxy, "/", &[]).unwrap().status, 200);

    // A second node on the same ports cannot start: the command says so and fails.
    let (code, _) = start(&["-d"]);
    assert_eq!(code, Some(1));
    assert_eq!(pid(), second, "the failed start left the pid file alone");

    let _ = Command::new("kill")
        .args(["-TERM", &second.to_string()])
        .status();
    wait_for("the node to exit", Duration::from_secs(10), || {
        (!alive(second)
            || std::fs::read_to_string(format!("/proc/{second}/stat"))
                .unwrap_or_default()
                .contains(") Z "))
        .then_some(())
    });
    assert!(!pid_file.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The default upgrade socket of a node listening on `proxy`.
fn default_upgrade_socket(proxy: &str) -> std::path::PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let name: String = proxy
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::env::temp_dir()
        .join(format!("ratelimiter-{uid}"))
        .join(format!("{name}.upgrade.sock"))
}

/// A new process that fails after taking the sockets (here: an address in its config is in
/// use) never told the old one it serves: the old one serves on, keeps its registry entry,
/// loses nothing, and takes the next upgrade. A leftover socket file and one of another user
/// at the path are not mistaken for an upgrade.
#[test]
fn an_upgrade_that_fails_leaves_the_old_process_serving() {
    use std::os::unix::net::UnixListener;
    let redis = RedisServer::start();
    let up = Upstream::start();
    // A leftover from an upgrade killed while it waited, there before the node starts.
    let proxy = format!("127.0.0.1:{}", free_port());
    let socket = default_upgrade_socket(&proxy);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&socket);
    drop(UnixListener::bind(&socket).unwrap());
    let admin = format!("127.0.0.1:{}", free_port());
    let text = |admin: &str| {
        format!(
            "[server]\nthreads = 2\ngrace_period_seconds = 30\n\n[proxy]\nlisten = \"{proxy}\"\nupstreams = [\"{}\"]\n\n[admin]\nlisten = \"{admin}\"\n\n[node]\nid = \"steady\"\n\n[redis]\nurl = \"{}\"\n\n[limits]\ndefault_limit = 100000000\n",
            up.addr,
            redis.url()
        )
    };
    let mut old = Gateway::start_text(&proxy, &admin, &text(&admin));
    let ours = wait_for("the node registered", Duration::from_secs(10), || {
        instance(&redis, "steady")
    });
    let load = KeepAliveLoad::start(&old.proxy, CONNECTIONS, "/");
    until_answered(&old, 20);

    // Another user's socket at the path: not an upgrade.
    std::fs::remove_file(&socket).unwrap();
    drop(UnixListener::bind(&socket).unwrap());
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
    until_answered(&old, 20);
    std::fs::remove_file(&socket).unwrap();

    // The new config names an admin address that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        &old.config_path,
        text(&taken.local_addr().unwrap().to_string()),
    )
    .unwrap();
    let mut failed = old.upgrade();
    assert_eq!(failed.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        failed.log().contains("cannot listen on"),
        "{}",
        failed.log()
    );
    wait_for(
        "the old process to serve on",
        Duration::from_secs(30),
        || {
            old.log()
                .contains("the upgrade failed: serving on")
                .then_some(())
        },
    );
    until_answered(&old, 50);
    assert_eq!(instance(&redis, "steady").as_ref(), Some(&ours));

    // The next upgrade goes through, under another node id: the old entry goes with the old
    // process instead of lingering for its TTL.
    std::fs::write(
        &old.config_path,
        text(&admin).replace("id = \"steady\"", "id = \"steady-2\""),
    )
    .unwrap();
    let new = old.upgrade();
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    until_answered(&new, 20);
    let tally = load.finish();
    assert_eq!(
        (tally.lost, tally.refused, tally.failed()),
        (0, 0, 0),
        "{tally:?}"
    );
    assert!(!registered(&redis, "steady"), "a ghost of the old process");
    wait_for("the new id listed", Duration::from_secs(10), || {
        registered(&redis, "steady-2").then_some(())
    });
    let log = old.log();
    assert_eq!(log.matches("handing them over").count(), 2, "{log}");
}

/// `-u` with nothing to take over gives up and says so.
#[test]
fn an_upgrade_without_a_running_process_fails() {
    let proxy = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let config = common::procs::config_text(&proxy, &admin, "", "");
    // Launched only to have a config file; killed before it takes the ports.
    let mut holder = Gateway::launch(proxy, admin, config, &[]);
    holder.signal("KILL");
    let _ = holder.wait_exit(Duration::from_secs(10));
    let mut lone = holder.upgrade();
    assert_eq!(lone.wait_exit(Duration::from_secs(30)), Some(1));
}

/// A draining node tells load balancers to go elsewhere (`/health/ready` 503) while it
/// finishes what it has, and is still live.
#[test]
fn a_draining_node_is_live_but_not_ready() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let mut gw = node(&redis, &up, "draining", "");
    assert_eq!(get(&gw.admin, "/health/ready", &[]).unwrap().status, 200);
    let slow = std::thread::spawn({
        let proxy = gw.proxy.clone();
        move || get(&proxy, "/sleep/3000", &[]).map(|r| r.status)
    });
    wait_for("the slow request upstream", Duration::from_secs(10), || {
        (up.sleeping() == 1).then_some(())
    });
    gw.signal("TERM");
    let ready = wait_for("the node unready", Duration::from_secs(5), || {
        get(&gw.admin, "/health/ready", &[])
            .ok()
            .filter(|r| r.status == 503)
    });
    assert!(ready.body.contains("\"draining\":true"), "{}", ready.body);
    assert_eq!(get(&gw.admin, "/health/live", &[]).unwrap().status, 200);
    // Until the last request is done, the admin port answers.
    while !slow.is_finished() {
        let ready = get(&gw.admin, "/health/ready", &[]).unwrap();
        assert_eq!(ready.status, 503, "{ready:?}");
    }
    assert_eq!(slow.join().unwrap().unwrap(), 200);
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}
