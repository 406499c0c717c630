//! The admin API from a test: JSON requests, the cleanup endpoint, and a second in-process worker
//! (an `App`) with an admin API of its own.

use std::time::Duration;

use memoji_worker::app::App;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::env::{TestEnv, free_port};

impl TestEnv {
    /// `GET {base}{path}` as JSON, with its status.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.http_base()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET {base}{path}` as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.http_base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of an unlabelled counter on the worker's `/metrics`, 0 when not there yet.
    pub async fn counter(&self, name: &str) -> f64 {
        let text = self.get_text("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// `POST {base}/api/cache/cleanup`, with the bearer token if given.
    pub async fn post_cleanup(
        &self,
        base: &str,
        dry_run: bool,
        token: Option<&str>,
    ) -> (u16, Value) {
        post_cleanup(&self.http, base, dry_run, token).await
    }

    /// Another worker process (an `App`) on the same database and queues, with its own admin API.
    pub async fn second_app(&self) -> SecondApp {
        let mut settings = self.settings.clone();
        let port = free_port();
        settings.http.bind = format!("127.0.0.1:{port}").parse().unwrap();
        let app = App::build(settings).await.expect("the second app builds");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        SecondApp {
            base: format!("http://127.0.0.1:{port}"),
            shutdown,
            handle,
        }
    }
}

pub async fn post_cleanup(
    http: &reqwest::Client,
    base: &str,
    dry_run: bool,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = http.post(format!("{base}/api/cache/cleanup?dry_run={dry_run}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A second worker process of a test.
pub struct SecondApp {
    pub base: String,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl SecondApp {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}
