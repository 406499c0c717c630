//! The admin server under hostile clients, against a real `memoji-worker run` process (the Docker
//! image binds 0.0.0.0): half-open connections are cut off after the header-read timeout and never
//! block other requests for longer than that; connections past the cap wait instead of costing
//! the process anything; an image is streamed, so slow readers cost kilobytes each, not its size.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{TestEnv, free_port, worker_environment};

/// A `memoji-worker run` process with admin limits of the test's choosing.
struct Worker {
    child: tokio::process::Child,
    addr: SocketAddr,
    log_path: PathBuf,
}

impl Worker {
    async fn start(env: &TestEnv, limits: &[(&str, &str)]) -> Worker {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log_path = env.storage_dir().join(format!("worker-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
        command
            .arg("run")
            .env_clear()
            .envs(worker_environment(&env.settings))
            .env("MEMOJI__HTTP__BIND", addr.to_string())
            .envs(limits.iter().map(|(k, v)| (*k, *v)))
            .env("RUST_LOG", "memoji_worker=debug,info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let worker = Worker {
            child: command.spawn().expect("the worker binary starts"),
            addr,
            log_path,
        };
        let client = fresh_client();
        for _ in 0..300 {
            if let Ok(response) = client.get(worker.url("/readyz")).send().await
                && response.status().is_success()
            {
                return worker;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the worker never became ready: {}", worker.log());
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("the worker is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A client that keeps no idle connection, so it never holds one of the server's slots.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A connection that sends the start of a request head and never finishes it.
async fn half_open(addr: SocketAddr) -> (TcpStream, Instant) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: memoji\r\nX-Slow: ")
        .await
        .unwrap();
    (stream, Instant::now())
}

/// Reads until the server closes the connection; how long after `since` that was.
async fn closed_after(mut stream: TcpStream, since: Instant) -> Duration {
    let mut sink = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read_to_end)
        .await
        .expect("the server closes a half-open connection");
    since.elapsed()
}

#[tokio::test]
async fn a_slowloris_is_cut_off_after_the_header_timeout_and_never_blocks_other_requests_for_longer()
 {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let worker = Worker::start(
        &env,
        &[
            ("MEMOJI__HTTP__HEADER_READ_TIMEOUT_SECS", "3"),
            ("MEMOJI__HTTP__MAX_CONNECTIONS", "20"),
        ],
    )
    .await;
    let client = fresh_client();

    // Fewer half-open connections than the cap: a normal request is answered at once.
    let mut slow = Vec::new();
    for _ in 0..12 {
        slow.push(half_open(worker.addr).await);
    }
    let asked = Instant::now();
    let response = client.get(worker.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a normal request waited {:?} behind half-open connections",
        asked.elapsed()
    );
    // Each half-open connection is closed once the header timeout has run out, not before.
    for (stream, opened) in slow {
        let after = closed_after(stream, opened).await;
        assert!(
            after >= Duration::from_millis(2500) && after < Duration::from_secs(10),
            "a half-open connection was closed after {after:?} (timeout 3 s)"
        );
    }

    // As many half-open connections as the cap: a normal request waits in the backlog, and is
    // answered as soon as the timeout frees the slots — the flood delays it by at most the
    // header timeout, it never shuts the server out.
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(half_open(worker.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let response = client.get(worker.url("/healthz")).send().await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "at the cap, a request waited {waited:?} (expected about the 3 s header timeout)"
    );
    for (stream, opened) in slow {
        closed_after(stream, opened).await;
    }
    // The process is still whole: ready, and every job-side connection alive.
    let ready = client.get(worker.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", worker.log());
    worker.stop().await;
    env.cleanup().await;
}

/// A connection with a small receive buffer that asks for `path` and reads only `limit` bytes.
async fn slow_reader(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: memoji\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream
}

/// Up to `limit` bytes that arrive within `wait`.
async fn read_some(stream: &mut TcpStream, limit: usize, wait: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buffer = vec![0u8; 8192];
    let _ = tokio::time::timeout(wait, async {
        while got.len() < limit {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    got
}

#[tokio::test]
async fn slow_readers_of_a_large_image_get_it_streamed_and_never_exceed_the_connection_cap() {
    const IMAGE_BYTES: usize = 5 * 1024 * 1024;
    const CAP: usize = 30;
    const READERS: usize = 40;
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let hash = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let path = format!("/images/2026/11/{hash}.png");
    // Bytes that do not compress, as a PNG's do not.
    let image: Vec<u8> = (0..IMAGE_BYTES)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = env.storage_dir().join(&path["/images/".len()..]);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &image).unwrap();
    let cap = CAP.to_string();
    let worker = Worker::start(
        &env,
        &[
            ("MEMOJI__HTTP__MAX_CONNECTIONS", cap.as_str()),
            ("MEMOJI__HTTP__HEADER_READ_TIMEOUT_SECS", "30"),
            // The readers stall on purpose; they must not be cut off during the test.
            ("MEMOJI__HTTP__SEND_STALL_TIMEOUT_SECS", "120"),
        ],
    )
    .await;

    // A whole read: the bytes and the headers the contract promises.
    let client = fresh_client();
    let response = client.get(worker.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "image/png");
    assert_eq!(
        header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header("content-length"), IMAGE_BYTES.to_string());
    assert!(
        response.bytes().await.unwrap() == image,
        "the image served whole"
    );
    // Only the exact path shape is served.
    for bad in [
        format!("/images/2026/13/{hash}.png"),
        format!("/images/2026/11/{hash}.jpg"),
        "/images/2026/11/..%2f..%2fetc.png".to_owned(),
    ] {
        let status = client.get(worker.url(&bad)).send().await.unwrap().status();
        assert_eq!(status, 404, "{bad}");
    }

    let before = worker.rss_kib();
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(slow_reader(worker.addr, &path).await);
    }
    // Each reader takes the first 64 KiB and then stops reading. Those within the cap get their
    // response; the rest wait in the listen backlog and get nothing yet.
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for mut stream in readers {
        let got = read_some(&mut stream, 64 * 1024, Duration::from_millis(1000)).await;
        if got.is_empty() {
            waiting.push(stream);
        } else {
            let head = String::from_utf8_lossy(&got[..got.len().min(512)]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(
                head.contains(&format!("content-length: {IMAGE_BYTES}")),
                "{head}"
            );
            served.push(stream);
        }
    }
    assert_eq!(served.len(), CAP, "connections served at once");
    assert_eq!(waiting.len(), READERS - CAP);
    // Give the server time to push all it can to the stalled readers, then weigh it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = worker.rss_kib();
    let grown_kib = during.saturating_sub(before);
    eprintln!(
        "RSS of the worker: {before} KiB before, {during} KiB with {CAP} stalled readers of a \
         {IMAGE_BYTES}-byte image (+{grown_kib} KiB, {} KiB per reader)",
        grown_kib / CAP as u64
    );
    // Read whole, each reader would hold the image: CAP × 5 MiB = 150 MiB. Streamed, each holds
    // a few buffers of 16 KiB.
    let whole_kib = (CAP * IMAGE_BYTES / 1024) as u64;
    assert!(
        grown_kib < whole_kib / 5,
        "RSS grew by {grown_kib} KiB with {CAP} slow readers (a whole copy each would be {whole_kib} KiB)"
    );

    // Once the stalled readers go, the waiting ones are served.
    drop(served);
    for mut stream in waiting {
        let got = read_some(&mut stream, 1024, Duration::from_secs(10)).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
            "a waiting reader was served once slots freed"
        );
    }
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn readers_that_stop_reading_are_cut_off_after_the_send_stall_timeout() {
    const CAP: usize = 10;
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let hash = "c".repeat(64);
    let file = env.storage_dir().join(format!("2026/11/{hash}.png"));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, vec![9u8; 5 * 1024 * 1024]).unwrap();
    let cap = CAP.to_string();
    let worker = Worker::start(
        &env,
        &[
            ("MEMOJI__HTTP__MAX_CONNECTIONS", cap.as_str()),
            ("MEMOJI__HTTP__HEADER_READ_TIMEOUT_SECS", "30"),
            ("MEMOJI__HTTP__SEND_STALL_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    // Every slot taken by a reader that reads the start of the image, then nothing.
    let mut stalled = Vec::new();
    for _ in 0..CAP {
        let mut stream = slow_reader(worker.addr, &format!("/images/2026/11/{hash}.png")).await;
        let got = read_some(&mut stream, 16 * 1024, Duration::from_secs(3)).await;
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        stalled.push(stream);
    }
    // A probe waits for a slot, and gets one once the stall timeout has cut the readers off:
    // stalled readers cannot keep /readyz from answering.
    let asked = Instant::now();
    let response = fresh_client()
        .get(worker.url("/readyz"))
        .send()
        .await
        .unwrap();
    let waited = asked.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(10),
        "with every slot held by a stalled reader, /readyz waited {waited:?} (stall timeout 2 s)"
    );
    drop(stalled);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn with_a_remote_backend_the_images_route_serves_the_stored_object_whole() {
    let s3 = crate::storage_s3::S3Server::get(crate::storage_s3::Server::Moto).await;
    let id = format!("s3{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let bucket = s3.bucket(&id).await;
    let mut env = TestEnv::start_with(vec![crate::helpers::openai_ok()], |settings| {
        s3.configure(settings, &bucket)
    })
    .await;
    let miss = env.run(&env.job("u", serde_json::json!({}))).await;
    assert_eq!(miss["status"], "succeeded", "{miss}");
    let path = miss["storage_path"].as_str().unwrap();
    let response = fresh_client()
        .get(format!("{}/images/{path}", env.http_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let expected = crate::helpers::png_bytes();
    assert_eq!(
        response.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        expected.as_slice()
    );
    env.cleanup().await;
    s3.remove(&bucket).await;
}

#[tokio::test]
async fn a_handler_that_cannot_answer_in_time_gets_a_408_but_the_cleanup_may_take_longer() {
    let env = TestEnv::start_with(vec![], |s| s.http.request_timeout_secs = 1).await;
    let client = fresh_client();
    // The statistics' table locked by someone else: the handler cannot answer.
    let mut blocker = env.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE memoji_stats_lifetime IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let asked = Instant::now();
    let response = client
        .get(format!("{}/api/cache/stats", env.http_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    blocker.rollback().await.unwrap();
    let response = client
        .get(format!("{}/api/cache/stats", env.http_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The cleanup, held up longer than the request timeout, still answers with its report.
    let mut blocker = env.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE memoji_cache IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        blocker.rollback().await.unwrap();
    });
    let asked = Instant::now();
    let (status, report) = crate::helpers::post_cleanup(
        &client,
        &env.http_base(),
        true,
        Some(crate::helpers::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["dry_run"], true);
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    release.await.unwrap();
    env.cleanup().await;
}
