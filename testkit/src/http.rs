//! A minimal HTTP peer for tests of our HTTP clients (fencer, waker, Lambda token): it reads
//! one request (headers and a `content-length` body) per connection and answers with a fixed
//! status and JSON body, returning the raw request text.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request from `sock` and answers `status` with `body`; returns the request.
pub async fn answer_one(sock: &mut TcpStream, status: u16, body: &str) -> String {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock.read(&mut buf).await.unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                break;
            }
        }
        if n == 0 {
            break;
        }
    }
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    String::from_utf8_lossy(&got).to_string()
}

/// A one-shot server on 127.0.0.1: its base URL, and the request it received.
pub async fn serve_once(status: u16, body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        answer_one(&mut sock, status, body).await
    });
    (url, task)
}
