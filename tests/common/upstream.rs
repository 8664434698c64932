//! A real HTTP/1.1 upstream on a free port: answers every request with 200 and a body that
//! names it, keeps connections alive, and counts what it served.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Upstream {
    pub addr: String,
    served: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = Arc::new(AtomicUsize::new(0));
        let (name, count) = (addr.clone(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (name, count) = (name.clone(), count.clone());
                std::thread::spawn(move || serve(stream, &name, &count));
            }
        });
        Upstream { addr, served }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn serve(stream: TcpStream, name: &str, served: &AtomicUsize) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut content_length = 0;
        let mut forwarded = String::new();
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
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    "x-forwarded-for" => forwarded = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // `/sleep/<ms>` answers after a delay: a request that stays in flight.
        if let Some(ms) = path.strip_prefix("/sleep/").and_then(|m| m.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        served.fetch_add(1, Ordering::SeqCst);
        let reply = format!("upstream {name} {path}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: {name}\r\nX-Seen-Forwarded-For: {forwarded}\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
