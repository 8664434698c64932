//! Real processes: `redis-server` and the `ratelimiter` binary, each on free ports, killed
//! when dropped.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with an empty dataset and script cache.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test script installs it)");
        self.child = Some(child);
        let url = self.url();
        wait_for(
            "redis-server to answer PING",
            Duration::from_secs(10),
            || {
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut conn = client.get_connection().ok()?;
                redis::cmd("PING").query::<String>(&mut conn).ok()
            },
        );
    }

    /// Stops the process with SIGSTOP (as `topologies::Server::freeze` does), as a hung
    /// machine would look: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([format!("-{sig}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {pid}");
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The config the harness writes: two threads, a short grace period, the given ports, then
/// `proxy_extra` inside `[proxy]` and `body` after `[admin]`.
pub fn config_text(proxy: &str, admin: &str, proxy_extra: &str, body: &str) -> String {
    format!(
        "[server]\nthreads = 2\ngrace_period_seconds = 1\n\n[proxy]\nlisten = \"{proxy}\"\n{proxy_extra}\n\n[admin]\nlisten = \"{admin}\"\n\n{body}\n"
    )
}

/// A running gateway with its own config file and log.
pub struct Gateway {
    pub proxy: String,
    pub admin: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    /// `count` of the counter with this key (asked by `?key=`, every byte percent-encoded),
    /// 0 when it holds nothing.
    pub fn count(&self, counter_key: &str) -> u64 {
        let encoded: String = counter_key.bytes().map(|b| format!("%{b:02X}")).collect();
        let r =
            super::http::get(&self.admin, &format!("/api/counters?key={encoded}"), &[]).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        body["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == counter_key)
            .map_or(0, |c| c["count"].as_u64().unwrap())
    }

    /// Starts the binary with `body` appended to a `[proxy]`/`[admin]` header on free ports.
    /// `proxy_extra` goes into the `[proxy]` table (e.g. `upstreams = [...]`).
    pub fn start(proxy_extra: &str, body: &str) -> Gateway {
        Gateway::start_with_env(proxy_extra, body, &[])
    }

    pub fn start_with_env(proxy_extra: &str, body: &str, env: &[(&str, &str)]) -> Gateway {
        let proxy = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let config = config_text(&proxy, &admin, proxy_extra, body);
        Gateway::spawn(proxy, admin, config, env)
    }

    /// Writes a new config file for this gateway (same ports) and sends SIGHUP.
    pub fn reload_with(&self, proxy_extra: &str, body: &str) {
        self.reload_with_text(&config_text(&self.proxy, &self.admin, proxy_extra, body));
    }

    /// Writes `text` as this gateway's config file and sends SIGHUP.
    pub fn reload_with_text(&self, text: &str) {
        let tmp = self.config_path.with_extension("toml.new");
        fs::write(&tmp, text).unwrap();
        // A rename, so the gateway never reads a half-written file.
        fs::rename(&tmp, &self.config_path).unwrap();
        self.signal("HUP");
    }

    fn spawn(proxy: String, admin: String, config: String, env: &[(&str, &str)]) -> Gateway {
        let mut gw = Gateway::launch(proxy, admin, config, env);
        gw.wait_ready();
        gw
    }

    /// Starts the binary on the config `text` (which listens on `proxy` and `admin`) and
    /// waits until both ports accept.
    pub fn start_text(proxy: &str, admin: &str, text: &str) -> Gateway {
        Gateway::spawn(proxy.into(), admin.into(), text.into(), &[])
    }

    /// As [`Gateway::start_text`], with environment variables.
    pub fn start_text_with_env(
        proxy: &str,
        admin: &str,
        text: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        Gateway::spawn(proxy.into(), admin.into(), text.into(), env)
    }

    /// Starts the binary without waiting for anything (for a start that should fail).
    pub fn launch(proxy: String, admin: String, config: String, env: &[(&str, &str)]) -> Gateway {
        let dir = std::env::temp_dir().join("ratelimiter-tests");
        fs::create_dir_all(&dir).unwrap();
        let stem = format!(
            "gw-{}-{}",
            std::process::id(),
            proxy.replace([':', '.'], "_")
        );
        let config_path = dir.join(format!("{stem}.toml"));
        let log_path = dir.join(format!("{stem}.log"));
        fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
        cmd.arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("RATELIMITER_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Gateway {
            proxy,
            admin,
            config_path,
            log_path,
            child: Some(child),
        }
    }

    /// Starts a second process on this one's config file with `-u`, which takes the
    /// listening sockets over; returns without waiting (the ports are open throughout).
    pub fn upgrade(&self) -> Gateway {
        let log_path = self.log_path.with_extension("upgraded.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
            .arg("-u")
            .arg("-c")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .env_remove("RATELIMITER_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        Gateway {
            proxy: self.proxy.clone(),
            admin: self.admin.clone(),
            config_path: self.config_path.clone(),
            log_path,
            child: Some(child),
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// A shipped config file (`conf/...`), run as written but on free ports instead of its
    /// 127.0.0.1:8080 and 127.0.0.1:9090.
    pub fn start_shipped(path: &str) -> Gateway {
        let proxy = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let text = fs::read_to_string(path)
            .unwrap()
            .replace("127.0.0.1:8080", &proxy)
            .replace("127.0.0.1:9090", &admin);
        Gateway::spawn(proxy, admin, text, &[])
    }

    /// A gateway whose `[admin]` table sets a bearer token.
    pub fn start_with_admin_token(token: &str) -> Gateway {
        let proxy = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        Gateway::spawn(
            proxy.clone(),
            admin.clone(),
            format!("[server]\ngrace_period_seconds = 1\n[proxy]\nlisten = \"{proxy}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{token}\"\n"),
            &[],
        )
    }

    /// A gateway whose admin port listens on `admin` (any address, e.g. `0.0.0.0:port`).
    pub fn start_with_admin_listen(admin: &str) -> Gateway {
        let proxy = format!("127.0.0.1:{}", free_port());
        Gateway::spawn(
            proxy.clone(),
            admin.to_string(),
            format!("[server]\ngrace_period_seconds = 1\n[proxy]\nlisten = \"{proxy}\"\n[admin]\nlisten = \"{admin}\"\n"),
            &[],
        )
    }

    /// Waits until both the proxy and the admin port accept (they are separate services and
    /// open in no fixed order).
    fn wait_ready(&mut self) {
        let addrs = [self.proxy.clone(), self.admin.clone()];
        let log = self.log_path.clone();
        let child = self.child.as_mut().unwrap();
        wait_for("the gateway's ports", Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "gateway exited with {status}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let open = |a: &String| std::net::TcpStream::connect(a).is_ok();
            addrs.iter().all(open).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) and returns at once.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let status = wait_for("the gateway to exit", limit, || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status.code()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.config_path);
        if !std::thread::panicking() {
            let _ = fs::remove_file(&self.log_path);
        }
    }
}
