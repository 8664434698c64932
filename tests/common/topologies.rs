//! Real Redis topologies for the tests: TLS servers with certificates made by `openssl`
//! here, a Redis Cluster of masters and replicas made with `redis-cli --cluster create`, and
//! a Sentinel set (a master, a replica, three sentinels). Every process is killed on drop;
//! every wait polls.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for};

/// A scratch directory for one topology, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join("ratelimiter-tests").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and a
/// second CA that signed nothing here.
pub struct Certs {
    pub dir: Scratch,
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = Scratch::new("certs");
        let p = |f: &str| dir.path(f);
        let openssl = |args: &[&str]| run(Command::new("openssl").args(args));
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=ratelimiter test {ca}"),
                "-keyout",
                &p(&format!("{ca}.key")),
                "-out",
                &p(&format!("{ca}.pem")),
            ]);
        }
        // Extensions make both X.509 v3, which rustls requires.
        fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let certs = Certs { dir };
        certs.issue("server", "127.0.0.1", "ca", "server.ext");
        certs.issue("client", "ratelimiter gateway", "ca", "client.ext");
        certs
    }

    /// A key and certificate `name.key`, `name.pem` for `cn`, signed by the CA `ca` with the
    /// extensions in the file `ext` (`server.ext`: for 127.0.0.1 and localhost).
    pub fn issue(&self, name: &str, cn: &str, ca: &str, ext: &str) {
        let p = |f: &str| self.dir.path(f);
        let openssl = |args: &[&str]| run(Command::new("openssl").args(args));
        let (key, csr, out) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
        );
        let subject = format!("/CN={cn}");
        openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out",
            &csr,
        ]);
        let (ca_pem, ca_key, ext) = (p(&format!("{ca}.pem")), p(&format!("{ca}.key")), p(ext));
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &out,
            "-extfile",
            &ext,
        ]);
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.path(name)
    }
}

/// `redis-server` (or another program) with any arguments, killed on drop.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    program: String,
    args: Vec<String>,
    cwd: Option<std::path::PathBuf>,
    /// Stopped with SIGSTOP: its connections stay open and nothing answers.
    frozen: bool,
}

impl Server {
    pub fn spawn(port: u16, args: Vec<String>) -> Server {
        let mut s = Server {
            port,
            child: None,
            program: "redis-server".into(),
            args,
            cwd: None,
            frozen: false,
        };
        s.start();
        s
    }

    /// `program` with `args`, run in `dir` (its port is the caller's business).
    pub fn spawn_in(program: &str, args: Vec<String>, dir: &std::path::Path) -> Server {
        let mut s = Server {
            port: 0,
            child: None,
            program: program.into(),
            args,
            cwd: Some(dir.to_path_buf()),
            frozen: false,
        };
        s.start();
        s
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdout(Stdio::null());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{} must be installed (the test script installs it): {e}",
                self.program
            )
        });
        self.child = Some(child);
    }

    /// Running and not frozen.
    pub fn answers(&self) -> bool {
        self.child.is_some() && !self.frozen
    }

    /// Stops the process with SIGSTOP, as a hung machine or a network partition would look:
    /// connections stay open and nothing answers.
    pub fn freeze(&mut self) {
        let pid = self.child.as_ref().expect("a running server").id();
        run(Command::new("kill").args(["-STOP", &pid.to_string()]));
        self.frozen = true;
    }

    /// Kills the process, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A server's arguments: no persistence, and whatever a replica writes on a full sync kept in
/// `dir` under a name of its own.
fn base_args(port: u16, dir: &Scratch) -> Vec<String> {
    [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--loglevel",
        "warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--port".to_string(),
        port.to_string(),
        "--dir".to_string(),
        dir.0.display().to_string(),
        "--dbfilename".to_string(),
        format!("dump-{port}.rdb"),
    ])
    .collect()
}

/// `redis-cli` against one port, returning its output.
pub fn cli(port: u16, extra: &[&str], args: &[&str]) -> String {
    run(Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .args(args))
}

/// The ACL rule the README gives for the gateway's user `gw` (password `gw-secret`): only
/// the commands, key patterns and channel the gateway needs, in every topology.
pub const GATEWAY_ACL: &[&str] = &[
    "on",
    ">gw-secret",
    "resetkeys",
    "~ratelimit:*",
    "~ratelimiter:nodes:*",
    "~ratelimiter:overrides",
    "~ratelimiter:overrides:version",
    "~ratelimiter:audit",
    "~ratelimiter:bans",
    "~ratelimiter:bans:version",
    "resetchannels",
    "&ratelimiter:resets",
    "-@all",
    "+evalsha",
    "+eval",
    "+script|load",
    "+scan",
    "+del",
    "+hset",
    "+hgetall",
    "+expire",
    "+publish",
    "+subscribe",
    "+ping",
    "+multi",
    "+exec",
    "+cluster|nodes",
    "+cluster|info",
    "+cluster|slots",
    "+role",
    "+zremrangebyscore",
    "+zcard",
    "+zcount",
    "+zrange",
    "+zrangebyscore",
    "+zrevrangebyscore",
    "+zscore",
    "+zincrby",
    "+zadd",
    "+zrem",
    "+pexpire",
    "+pttl",
    "+get",
    "+set",
    "+hmget",
    "+hincrby",
    "+time",
    "+hget",
    "+hdel",
    "+incr",
    "+lpush",
    "+ltrim",
    "+lrange",
];

/// Creates the gateway's ACL user on one server.
pub fn add_gateway_user(port: u16) {
    let mut args = vec!["ACL", "SETUSER", "gw"];
    args.extend(GATEWAY_ACL);
    assert_eq!(cli(port, &[], &args).trim(), "OK");
}

/// What the ACL refused on one server (`ACL LOG`), empty when nothing was.
pub fn acl_refusals(port: u16) -> String {
    cli(port, &[], &["ACL", "LOG"])
}

/// A TLS-only redis-server.
pub struct TlsServer {
    pub server: Server,
    /// `redis-cli` flags to reach it.
    pub cli_flags: Vec<String>,
}

impl TlsServer {
    /// `clients_need_certs`: mutual TLS (`tls-auth-clients yes`).
    pub fn start(certs: &Certs, clients_need_certs: bool) -> TlsServer {
        let port = free_port();
        let mut args = base_args(0, &certs.dir);
        args.extend(
            [
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &certs.file("server.pem"),
                "--tls-key-file",
                &certs.file("server.key"),
                "--tls-ca-cert-file",
                &certs.file("ca.pem"),
                "--tls-auth-clients",
                if clients_need_certs { "yes" } else { "no" },
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let cli_flags: Vec<String> = [
            "--tls",
            "--cacert",
            &certs.file("ca.pem"),
            "--cert",
            &certs.file("client.pem"),
            "--key",
            &certs.file("client.key"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = Server::spawn(port, args);
        let flags: Vec<&str> = cli_flags.iter().map(String::as_str).collect();
        wait_for("the TLS redis-server", Duration::from_secs(10), || {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(&flags)
                .arg("PING")
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("PONG")
                .then_some(())
        });
        TlsServer { server, cli_flags }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.server.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let flags: Vec<&str> = self.cli_flags.iter().map(String::as_str).collect();
        cli(self.server.port, &flags, args)
    }
}

/// A Redis Cluster of `masters` masters, each with one replica, failing over in about a
/// second (`cluster-node-timeout 1000`).
pub struct Cluster {
    pub nodes: Vec<Server>,
    _dir: Scratch,
}

impl Cluster {
    pub fn start(masters: usize) -> Cluster {
        let dir = Scratch::new("cluster");
        let nodes: Vec<Server> = (0..masters * 2)
            .map(|_| {
                let port = free_port();
                // The bus port too comes from the suite's free ports (by default it is
                // port + 10000, which another test may hold).
                let bus = free_port().to_string();
                let mut args = base_args(port, &dir);
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        &dir.path(&format!("nodes-{port}.conf")),
                        "--cluster-node-timeout",
                        "1000",
                        // A replica may be promoted however long it was cut off.
                        "--cluster-replica-validity-factor",
                        "0",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                Server::spawn(port, args)
            })
            .collect();
        for n in &nodes {
            wait_for("a cluster node", Duration::from_secs(10), || {
                Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "PING"])
                    .output()
                    .ok()
                    .filter(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        run(Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"]));
        let cluster = Cluster { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// Until every running node sees the cluster as ok, with every master's replica known.
    pub fn wait_ok(&self) {
        wait_for("the cluster to be ok", Duration::from_secs(30), || {
            let ok = self.nodes.iter().filter(|n| n.answers()).all(|n| {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            });
            ok.then_some(())
        });
    }

    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// The ports of the masters serving slots, as a running node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let live = self.nodes.iter().find(|n| n.answers()).unwrap();
        let text = cli(live.port, &[], &["CLUSTER", "NODES"]);
        text.lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .filter_map(|l| {
                l.split(' ')
                    .nth(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// The port of the master serving a key.
    pub fn master_of(&self, key: &str) -> u16 {
        let live = self.nodes.iter().find(|n| n.answers()).unwrap();
        let slot: u16 = cli(live.port, &[], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let text = cli(live.port, &[], &["CLUSTER", "NODES"]);
        for line in text
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
        {
            let fields: Vec<&str> = line.split(' ').collect();
            for range in fields.iter().skip(8) {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    if (a..=b).contains(&slot) {
                        return fields[1]
                            .split('@')
                            .next()
                            .unwrap()
                            .rsplit(':')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap();
                    }
                }
            }
        }
        panic!("no master serves slot {slot}")
    }

    /// A command on the master of its key (`-c` follows redirects).
    pub fn cmd(&self, args: &[&str]) -> String {
        let live = self.nodes.iter().find(|n| n.answers()).unwrap();
        cli(live.port, &["-c"], args)
    }

    pub fn node(&mut self, port: u16) -> &mut Server {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}

/// One master, one replica and three sentinels watching them as `mymaster`, failing over in
/// about a second.
pub struct Sentinels {
    pub master: Server,
    pub replica: Server,
    pub sentinels: Vec<Server>,
    _dir: Scratch,
}

impl Sentinels {
    pub fn start() -> Sentinels {
        let dir = Scratch::new("sentinel");
        let mport = free_port();
        let master = Server::spawn(mport, base_args(mport, &dir));
        let rport = free_port();
        let mut rargs = base_args(rport, &dir);
        rargs.extend([
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            mport.to_string(),
        ]);
        let replica = Server::spawn(rport, rargs);
        wait_for("the replica to sync", Duration::from_secs(20), || {
            Command::new("redis-cli")
                .args(["-p", &rport.to_string(), "INFO", "replication"])
                .output()
                .ok()
                .filter(|o| String::from_utf8_lossy(&o.stdout).contains("master_link_status:up"))
        });
        let sentinels: Vec<Server> = (0..3)
            .map(|_| {
                let port = free_port();
                let conf = dir.path(&format!("sentinel-{port}.conf"));
                fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {mport} 2\n\
                         sentinel down-after-milliseconds mymaster 1000\n\
                         sentinel failover-timeout mymaster 3000\n\
                         sentinel parallel-syncs mymaster 1\n"
                    ),
                )
                .unwrap();
                Server::spawn(port, vec![conf, "--sentinel".into()])
            })
            .collect();
        // Until every sentinel knows the replica and the other two sentinels.
        for s in &sentinels {
            wait_for(
                "the sentinels to know each other",
                Duration::from_secs(30),
                || {
                    let out = |args: &[&str]| {
                        Command::new("redis-cli")
                            .args(["-p", &s.port.to_string()])
                            .args(args)
                            .output()
                            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                            .unwrap_or_default()
                    };
                    let master = out(&["SENTINEL", "MASTER", "mymaster"]);
                    let field = |name: &str| {
                        let lines: Vec<&str> = master.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                    };
                    (field("num-slaves") == Some(1) && field("num-other-sentinels") == Some(2))
                        .then_some(())
                },
            );
        }
        Sentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// The master's port as the first sentinel names it now.
    pub fn current_master(&self) -> u16 {
        let out = cli(
            self.sentinels[0].port,
            &[],
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        );
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}
