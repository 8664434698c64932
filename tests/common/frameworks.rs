//! Real web frameworks as upstreams: the Flask and Express applications in
//! `tests/frameworks/`, run by the interpreters `scripts/deps.sh` installs (Flask in the
//! virtualenv under `target/tools`, Express under `target/tools/node`). Each route is the
//! framework's own, and each counts the runs of its views, so a test sees what the framework
//! ran for a request rather than an echo of the path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http, wait_for};

pub struct Framework {
    pub addr: String,
    child: Child,
}

fn tools() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools")
}

fn app(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/frameworks")
        .join(file)
}

impl Framework {
    /// The Flask application, on werkzeug's threaded HTTP/1.1 server.
    pub fn flask() -> Framework {
        let python = tools().join("bin/python");
        Framework::start(
            Command::new(&python).arg(app("flask_app.py")),
            "Flask (scripts/deps.sh installs it into target/tools)",
        )
    }

    /// The Express 4 application, on node.
    pub fn express() -> Framework {
        let mut node = Command::new("node");
        node.arg(app("express_app.js"))
            .env("NODE_PATH", tools().join("node/node_modules"));
        Framework::start(
            &mut node,
            "Express (scripts/deps.sh installs node and it into target/tools/node)",
        )
    }

    fn start(cmd: &mut Command, what: &str) -> Framework {
        let port = free_port();
        let child = cmd
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let addr = format!("127.0.0.1:{port}");
        let mut fw = Framework { addr, child };
        let addr = fw.addr.clone();
        let child = &mut fw.child;
        wait_for(what, Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited with {status}");
            }
            http::get(&addr, "/_runs", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
        fw
    }

    /// How many times each view ran, asked of the framework directly.
    pub fn runs(&self) -> HashMap<String, u64> {
        let r = http::get(&self.addr, "/_runs", &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    /// How many times one view ran.
    pub fn ran(&self, view: &str) -> u64 {
        self.runs().get(view).copied().unwrap_or(0)
    }

    pub fn reset(&self) {
        let r = http::post(&self.addr, "/_reset", &[], "").unwrap();
        assert_eq!(r.status, 200);
    }
}

impl Drop for Framework {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
