//! A real HTTP/1.1 upstream on a free port: answers every request with 200 and a body that
//! names it, keeps connections alive, and counts what it served. It reports what it received
//! in `X-Seen-*` response headers, and a few paths behave on purpose:
//! `/sleep/<ms>` answers late, `/drip/<ms>` sends ten bytes with a Content-Length, one every
//! tenth of `<ms>`, `/stream/<ms>` sends its header and a first chunk at once and
//! the rest after `<ms>` (both count as held while they run, with the most held at once
//! kept), `/chunked` answers with chunked framing, `/keepalive` sends
//! `Keep-Alive` and `Connection: keep-alive`, `/healthz` answers 503 while it is sick, and
//! `/upgrade` switches protocols (101 to `websocket`, then every byte sent back), as a WebSocket
//! upstream would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Upstream {
    pub addr: String,
    served: Arc<AtomicUsize>,
    sick: Arc<AtomicBool>,
    /// Requests of `/sleep/<ms>` and `/stream/<ms>` received and not yet answered.
    sleeping: Arc<AtomicUsize>,
    /// The most of them held at once.
    peak: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = Arc::new(AtomicUsize::new(0));
        let sick = Arc::new(AtomicBool::new(false));
        let sleeping = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (name, count, ill) = (addr.clone(), served.clone(), sick.clone());
        let held = Held {
            now: sleeping.clone(),
            peak: peak.clone(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (name, count, ill, held) =
                    (name.clone(), count.clone(), ill.clone(), held.clone());
                std::thread::spawn(move || serve(stream, &name, &count, &ill, &held));
            }
        });
        Upstream {
            addr,
            served,
            sick,
            sleeping,
            peak,
        }
    }

    /// The most requests of `/sleep/<ms>` and `/stream/<ms>` held at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Starts counting the most held at once afresh.
    pub fn reset_peak(&self) {
        self.peak.store(self.sleeping(), Ordering::SeqCst);
    }

    /// Requests of `/sleep/<ms>` in the upstream's hands now.
    pub fn sleeping(&self) -> usize {
        self.sleeping.load(Ordering::SeqCst)
    }

    /// While sick, `/healthz` answers 503 (everything else still 200).
    pub fn set_sick(&self, sick: bool) {
        self.sick.store(sick, Ordering::SeqCst);
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// Requests held now, and the most at once.
#[derive(Clone)]
struct Held {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Held {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, name: &str, served: &AtomicUsize, sick: &AtomicBool, held: &Held) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut content_length = 0;
        let mut forwarded = String::new();
        let (mut real_ip, mut proto) = (String::new(), String::new());
        let (mut request_id, mut traceparent) = (String::new(), String::new());
        let mut expects_continue = false;
        let mut names: Vec<String> = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                match k.as_str() {
                    "content-length" => content_length = v.parse().unwrap_or(0),
                    "x-forwarded-for" => forwarded = v,
                    "x-real-ip" => real_ip = v,
                    "x-forwarded-proto" => proto = v,
                    "x-request-id" => request_id = v,
                    "traceparent" => traceparent = v,
                    "expect" => expects_continue = v.eq_ignore_ascii_case("100-continue"),
                    _ => {}
                }
                names.push(k);
            }
        }
        // A client that waits for leave to send its body gets it, as servers do.
        if expects_continue
            && reader
                .get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .is_err()
        {
            return;
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // `/sleep/<ms>` answers after a delay: a request that stays in flight.
        let ms = |prefix: &str| {
            path.strip_prefix(prefix)
                .map(|m| m.split('?').next().unwrap_or(m))
                .and_then(|m| m.parse().ok())
        };
        if let Some(ms) = ms("/sleep/") {
            held.enter();
            std::thread::sleep(std::time::Duration::from_millis(ms));
            held.leave();
        }
        // `/drip/<ms>`: ten bytes with a Content-Length, one every tenth of `<ms>`.
        if let Some(ms) = ms("/drip/") {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n";
            if reader.get_mut().write_all(head.as_bytes()).is_err() {
                return;
            }
            for b in b"0123456789" {
                std::thread::sleep(std::time::Duration::from_millis(ms / 10));
                if reader.get_mut().write_all(&[*b]).is_err() {
                    return;
                }
            }
            served.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        // `/stream/<ms>`: a response that runs for `<ms>` after its first bytes.
        if let Some(ms) = ms("/stream/") {
            held.enter();
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n";
            let sent = reader.get_mut().write_all(head.as_bytes()).is_ok();
            if sent {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            let tail = reader.get_mut().write_all(b"5\r\nlast\n\r\n0\r\n\r\n");
            held.leave();
            served.fetch_add(1, Ordering::SeqCst);
            if !sent || tail.is_err() {
                return;
            }
            continue;
        }
        served.fetch_add(1, Ordering::SeqCst);
        let reply = format!("upstream {name} {path}");
        let seen = format!(
            "X-Upstream: {name}\r\nX-Seen-Forwarded-For: {forwarded}\r\nX-Seen-Real-IP: {real_ip}\r\nX-Seen-Proto: {proto}\r\nX-Seen-Request-Id: {request_id}\r\nX-Seen-Traceparent: {traceparent}\r\nX-Seen-Headers: {}\r\n",
            names.join(",")
        );
        if path == "/upgrade" {
            let switch = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{seen}\r\n"
            );
            if reader.get_mut().write_all(switch.as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if reader.get_mut().write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let response = match path.as_str() {
            "/chunked" => {
                let (a, b) = reply.split_at(reply.len() / 2);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{seen}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
            }
            "/keepalive" => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{seen}Connection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            ),
            "/healthz" if sick.load(Ordering::SeqCst) => {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick".to_string()
            }
            _ => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{seen}Content-Length: {}\r\n\r\n{reply}",
                reply.len()
            ),
        };
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
