//! A real HTTP/1.1 upstream that speaks the OpenAI chat-completions API on a free port, for
//! the cost tests: `POST /v1/chat/completions` answers a completion whose `usage` counts the
//! tokens it used (the prompt's words, plus `max_tokens` of completion), as JSON or, with
//! `"stream": true`, as a `text/event-stream` of chunks whose last event carries the usage
//! (as OpenAI's `stream_options.include_usage` does), then `data: [DONE]`. The usage is also
//! sent in an `X-Usage` response header. A request with `X-Test-Usage: malformed` gets a
//! usage that is not a number.
//!
//! `POST /login` answers 200 when the body holds `password=right`, else 401. The upstream
//! counts what it served per path, so a test can tell what never reached it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

pub struct Llm {
    pub addr: String,
    served: Arc<Mutex<HashMap<String, usize>>>,
}

impl Llm {
    pub fn start() -> Llm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = Arc::new(Mutex::new(HashMap::new()));
        let counts = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counts = counts.clone();
                std::thread::spawn(move || serve(stream, &counts));
            }
        });
        Llm { addr, served }
    }

    /// Requests served on `path`.
    pub fn served(&self, path: &str) -> usize {
        self.served.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// The tokens a request uses: its messages' words, and `max_tokens` (16 when not given).
pub fn tokens_of(request: &Value) -> (u64, u64) {
    let prompt = request["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.split_whitespace().count() as u64)
                .sum()
        })
        .unwrap_or(0);
    (prompt, request["max_tokens"].as_u64().unwrap_or(16))
}

fn serve(stream: TcpStream, served: &Mutex<HashMap<String, usize>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut length = 0;
        let mut malformed = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((h, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "x-test-usage" => malformed = value.trim() == "malformed",
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        *served.lock().unwrap().entry(path.clone()).or_default() += 1;
        let out = match path.as_str() {
            "/v1/chat/completions" => completion(&body, malformed),
            "/login" => {
                let right = String::from_utf8_lossy(&body).contains("password=right");
                let (status, text) = if right {
                    ("200 OK", "welcome")
                } else {
                    ("401 Unauthorized", "wrong password")
                };
                plain(status, "text/plain", &[], text)
            }
            _ => plain("404 Not Found", "text/plain", &[], "no such path"),
        };
        if reader.get_mut().write_all(&out).is_err() {
            return;
        }
    }
}

fn plain(status: &str, content_type: &str, headers: &[(&str, String)], body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

fn completion(body: &[u8], malformed: bool) -> Vec<u8> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return plain(
            "400 Bad Request",
            "application/json",
            &[],
            r#"{"error":{"message":"invalid JSON"}}"#,
        );
    };
    let (prompt, completion) = tokens_of(&request);
    let total = prompt + completion;
    let usage = if malformed {
        json!({"prompt_tokens": "some", "completion_tokens": "more", "total_tokens": "lots"})
    } else {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total})
    };
    let model = request["model"]
        .as_str()
        .unwrap_or("test-model")
        .to_string();
    let words: Vec<String> = (0..completion).map(|i| format!("w{i}")).collect();
    let usage_header = [("X-Usage", total.to_string())];
    if request["stream"].as_bool() != Some(true) {
        let answer = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.join(" ")},
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        return plain(
            "200 OK",
            "application/json",
            &usage_header,
            &answer.to_string(),
        );
    }
    // A chunked event stream: one chunk per word, then the usage, then [DONE].
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n".to_vec();
    out.extend_from_slice(format!("X-Usage: {total}\r\n\r\n").as_bytes());
    let mut event = |data: String| {
        let text = format!("data: {data}\n\n");
        out.extend_from_slice(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes());
    };
    for w in &words {
        event(
            json!({
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}],
            })
            .to_string(),
        );
    }
    event(
        json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": usage,
        })
        .to_string(),
    );
    event("[DONE]".to_string());
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
