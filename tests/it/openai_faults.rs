//! OpenAI misbehaving below the JSON, against a real worker process: a response body far larger
//! than any image (1 GiB announced, or streamed without a length) is refused at
//! `openai.max_response_bytes` without being held in memory, and the job fails `image_invalid`,
//! refunded, with the worker going on.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{TestEnv, count, openai_ok};

const GIB: usize = 1024 * 1024 * 1024;

/// How the stand-in answers a generation.
#[derive(Clone, Copy)]
enum Huge {
    /// `Content-Length: 1 GiB`, then the body.
    Announced,
    /// Chunked, no length, 1 GiB of base64 inside the JSON.
    Streamed,
}

/// A raw HTTP server: `GET /v1/models/…` answers normally (the lifecycle check), every
/// generation gets a 1 GiB body sent as long as the client reads.
async fn huge_body_server(how: Huge) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, how));
        }
    });
    format!("http://{address}/v1")
}

async fn serve(mut stream: TcpStream, how: Huge) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    // Headers, then as much body as Content-Length says.
    let (head_end, length) = loop {
        let Ok(n) = stream.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buffer[..n]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..at]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (at + 4, length);
        }
    };
    while request.len() < head_end + length {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    if request.starts_with(b"GET ") {
        let body = json!({"id": "m", "object": "model", "shutdown_date": null}).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        return;
    }
    let chunk = vec![b'A'; 1024 * 1024];
    match how {
        Huge::Announced => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {GIB}\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..1024 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        Huge::Streamed => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let start = br#"{"data":[{"b64_json":""#;
            let mut frame = format!("{:x}\r\n", start.len()).into_bytes();
            frame.extend_from_slice(start);
            frame.extend_from_slice(b"\r\n");
            if stream.write_all(head.as_bytes()).await.is_err()
                || stream.write_all(&frame).await.is_err()
            {
                return;
            }
            for _ in 0..1024 {
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(&chunk);
                frame.extend_from_slice(b"\r\n");
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn a_huge_body_is_refused_without_being_kept(how: Huge) {
    let mut env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let base = huge_body_server(how).await;
    let worker = env
        .spawn_worker_with(|s| {
            s.openai.base_url = base.clone();
            s.openai.max_attempts = 2;
        })
        .await;
    let idle_kib = worker.peak_rss_kib();
    let result = env.run(&env.job("u", json!({"hair": "huge"}))).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["code"], "image_invalid", "{result}");
    assert_eq!(result["error"]["retryable"], false, "{result}");
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_response_bytes"), "{message}");
    assert_eq!(result["credits_remaining"], 100, "refunded");
    let peak_kib = worker.peak_rss_kib();
    // The cap is 64 MiB; a body read whole would have taken the process past 1 GiB.
    assert!(
        peak_kib < idle_kib + 200 * 1024,
        "peak RSS grew from {idle_kib} KiB to {peak_kib} KiB"
    );
    let refunds = "SELECT count(*) FROM memoji_credit_ledger WHERE refunded_at IS NOT NULL";
    assert_eq!(count(&env.db, refunds).await, 1);
    // The worker goes on: the next job is answered (it meets the same server, and fails alike).
    let next = tokio::time::timeout(
        Duration::from_secs(60),
        env.run(&env.job("u", json!({"hair": "next"}))),
    )
    .await
    .expect("the worker answers the next job");
    assert_eq!(next["error"]["code"], "image_invalid");
    drop(worker);
    env.cleanup().await;
}

#[tokio::test]
async fn a_response_announcing_1_gib_is_refused_at_once() {
    a_huge_body_is_refused_without_being_kept(Huge::Announced).await;
}

#[tokio::test]
async fn a_1_gib_response_without_a_length_is_cut_at_the_cap() {
    a_huge_body_is_refused_without_being_kept(Huge::Streamed).await;
}
