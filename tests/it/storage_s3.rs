//! The s3 backend against two real S3-compatible servers, each test once per server (modules
//! `moto` and `localstack`): moto on 127.0.0.1:9310 and LocalStack's S3 (its own implementation,
//! not moto's) on 127.0.0.1:9311, both installed and started by `scripts/start-s3.sh`. Other
//! servers (MinIO, …) work too: MEMOJI_TEST_S3_ENDPOINT (instead of moto) and
//! MEMOJI_TEST_S3_LOCALSTACK_ENDPOINT (instead of LocalStack), with MEMOJI_TEST_S3_ACCESS_KEY and
//! MEMOJI_TEST_S3_SECRET_KEY.
//!
//! Each test makes a bucket of its own (readable by anyone, as a bucket serving image URLs is) and
//! empties and removes it at the end. A server that does not answer fails the test: it never skips.

use std::time::Duration;

use bytes::Bytes;
use memoji_worker::config::{Settings, StorageKind};
use memoji_worker::job::CacheKey;
use memoji_worker::storage::{self, StorageError, StoragePath};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequestBody;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{
    TestEnv, assert_storage_outage_fails_cleanly, free_port, openai_ok, png_bytes, worker_command,
};

const REGION: &str = "us-east-1";

/// Which of the two test servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Server {
    Moto,
    LocalStack,
}

impl Server {
    /// The variable that replaces it, its default address, and its name for start-s3.sh.
    fn endpoint(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Server::Moto => ("MEMOJI_TEST_S3_ENDPOINT", "http://127.0.0.1:9310", "moto"),
            Server::LocalStack => (
                "MEMOJI_TEST_S3_LOCALSTACK_ENDPOINT",
                "http://127.0.0.1:9311",
                "localstack",
            ),
        }
    }
}

pub struct S3Server {
    endpoint: String,
    key_id: String,
    secret: String,
    /// The server refuses anonymous reads of a bucket without a public-read policy (LocalStack
    /// lets anyone read anything).
    enforces_policies: bool,
    http: reqwest::Client,
}

impl S3Server {
    /// The test server, which must be answering.
    pub async fn get(which: Server) -> S3Server {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let (endpoint_var, default_endpoint, script_name) = which.endpoint();
        let server = S3Server {
            endpoint: var(endpoint_var, default_endpoint),
            key_id: var("MEMOJI_TEST_S3_ACCESS_KEY", "test"),
            secret: var("MEMOJI_TEST_S3_SECRET_KEY", "test"),
            enforces_policies: which == Server::Moto,
            http: reqwest::Client::new(),
        };
        let probe = || {
            server
                .http
                .get(format!("{}/", server.endpoint))
                .timeout(Duration::from_secs(5))
                .send()
        };
        let mut probe_result = probe().await;
        if probe_result.is_err() && std::env::var_os(endpoint_var).is_none() {
            // The default server is ours to start: the script is idempotent and serialized.
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start-s3.sh");
            let status = tokio::process::Command::new("bash")
                .args([script, script_name])
                .status()
                .await;
            assert!(
                status.is_ok_and(|s| s.success()),
                "scripts/start-s3.sh failed"
            );
            probe_result = probe().await;
        }
        if let Err(error) = probe_result {
            panic!(
                "no S3-compatible server answers at {} ({error}). Run scripts/start-s3.sh \
                 (it installs and starts {script_name} there), or point {endpoint_var} at one.",
                server.endpoint
            );
        }
        server
    }

    /// Sends a SigV4-signed request, as any S3 client would.
    async fn signed(&self, method: &str, url: &str, body: &[u8]) -> reqwest::Response {
        let credential = AwsCredential {
            key_id: self.key_id.clone(),
            secret_key: self.secret.clone(),
            token: None,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(HttpRequestBody::from(body.to_vec()))
            .unwrap();
        AwsAuthorizer::new(&credential, "s3", REGION)
            .try_authorize(&mut request, None)
            .expect("the request signs");
        let (parts, _) = request.into_parts();
        self.http
            .request(parts.method, url)
            .headers(parts.headers)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// A new bucket whose objects anyone may read.
    pub async fn bucket(&self, id: &str) -> String {
        let bucket = self.private_bucket(id).await;
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                           "Resource": format!("arn:aws:s3:::{bucket}/*")}]
        });
        let policy = self
            .signed(
                "PUT",
                &format!("{}/{bucket}?policy", self.endpoint),
                policy.to_string().as_bytes(),
            )
            .await;
        assert!(
            policy.status().is_success(),
            "public-read policy: {policy:?}"
        );
        bucket
    }

    /// A new bucket only its owner may read.
    pub async fn private_bucket(&self, id: &str) -> String {
        let bucket = format!("memoji-{id}");
        let created = self
            .signed("PUT", &format!("{}/{bucket}", self.endpoint), b"")
            .await;
        assert!(
            created.status().is_success(),
            "creating {bucket}: {created:?}"
        );
        bucket
    }

    /// The keys in a bucket.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let listing = self
            .signed(
                "GET",
                &format!("{}/{bucket}?list-type=2", self.endpoint),
                b"",
            )
            .await;
        assert!(listing.status().is_success(), "{listing:?}");
        let xml = listing.text().await.unwrap();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }

    /// Empties and removes a bucket (best effort: a failed test may leave it behind).
    pub async fn remove(&self, bucket: &str) {
        for key in self.keys(bucket).await {
            self.signed("DELETE", &format!("{}/{bucket}/{key}", self.endpoint), b"")
                .await;
        }
        self.signed("DELETE", &format!("{}/{bucket}", self.endpoint), b"")
            .await;
    }

    /// Points `settings` at `bucket` on this server, path style, with its credentials.
    pub fn configure(&self, settings: &mut Settings, bucket: &str) {
        let storage = &mut settings.storage;
        storage.kind = StorageKind::S3;
        storage.public_base_url = String::new();
        storage.request_timeout_secs = 5;
        storage.s3.endpoint = self.endpoint.clone();
        storage.s3.region = REGION.to_owned();
        storage.s3.bucket = bucket.to_owned();
        storage.s3.path_style = true;
        let secrets = &mut settings.secrets.storage;
        secrets.s3_access_key_id = Some(SecretString::from(self.key_id.clone()));
        secrets.s3_secret_access_key = Some(SecretString::from(self.secret.clone()));
    }

    fn cli_vars(&self, bucket: &str, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("MEMOJI__STORAGE__KIND", "s3".into()),
            ("MEMOJI__STORAGE__S3__ENDPOINT", endpoint.into()),
            ("MEMOJI__STORAGE__S3__BUCKET", bucket.into()),
            ("MEMOJI__STORAGE__S3__REGION", REGION.into()),
            ("MEMOJI__STORAGE__S3__PATH_STYLE", "true".into()),
            ("MEMOJI__STORAGE__REQUEST_TIMEOUT_SECS", "3".into()),
            // The prefixed names win over the usual AWS ones.
            ("MEMOJI_S3_ACCESS_KEY_ID", self.key_id.clone()),
            ("MEMOJI_S3_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ACCESS_KEY_ID", "wrong".into()),
            ("AWS_SECRET_ACCESS_KEY", "wrong".into()),
        ]
    }
}

async fn s3_miss_stores_the_png_the_bucket_url_serves_it_then_a_hit_and_a_delete(which: Server) {
    let s3 = S3Server::get(which).await;
    let id = format!("s3{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let bucket = s3.bucket(&id).await;
    let mut env = TestEnv::start_with(vec![openai_ok()], |settings| {
        s3.configure(settings, &bucket)
    })
    .await;

    let miss = env.run(&env.job("u", json!({}))).await;
    assert_eq!(miss["status"], "succeeded", "{miss}");
    assert_eq!(miss["cached"], false);
    let path = miss["storage_path"].as_str().unwrap().to_owned();
    let url = miss["image_url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{}/{bucket}/{path}", s3.endpoint));
    assert_eq!(s3.keys(&bucket).await, vec![path.clone()]);

    // The served URL gives exactly what was stored, with the upload's metadata.
    let served = env.http.get(&url).send().await.unwrap();
    assert_eq!(served.status(), 200, "{served:?}");
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(
        served.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let served = served.bytes().await.unwrap();
    assert_eq!(served.as_ref(), png_bytes().as_slice());

    // The row names that object; a hit serves the same URL without generating.
    let row: (String, String) = sqlx::query_as("SELECT image_url, storage_path FROM memoji_cache")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(row, (url.clone(), path.clone()));
    let hit = env.run(&env.job("u", json!({}))).await;
    assert_eq!(hit["cached"], true, "{hit}");
    assert_eq!(hit["image_url"], url.as_str());
    assert_eq!(env.openai.calls(), 1);

    // Deleting through the store (as cleanup does) frees the object's bytes, and only once.
    let store =
        storage::from_settings(&env.settings.storage, &env.settings.secrets.storage).unwrap();
    let path = StoragePath::parse(&path).unwrap();
    assert_eq!(
        store.get(&path).await.unwrap().as_deref(),
        Some(served.as_ref())
    );
    assert_eq!(store.delete(&path).await.unwrap(), served.len() as u64);
    assert_eq!(store.get(&path).await.unwrap(), None);
    assert_eq!(store.delete(&path).await.unwrap(), 0, "absent is fine");
    assert!(s3.keys(&bucket).await.is_empty());

    env.cleanup().await;
    s3.remove(&bucket).await;
}

async fn s3_put_replaces_an_object_and_get_of_a_missing_one_is_none(which: Server) {
    let s3 = S3Server::get(which).await;
    let id = format!("s3{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let bucket = s3.bucket(&id).await;
    let mut settings = Settings::defaults().unwrap();
    s3.configure(&mut settings, &bucket);
    let store = storage::from_settings(&settings.storage, &settings.secrets.storage).unwrap();
    let key = CacheKey::parse(&"0f".repeat(32)).unwrap();
    let path = StoragePath::for_key(&key, chrono::Utc::now());
    assert_eq!(store.get(&path).await.unwrap(), None);
    let first = store
        .put(&path, Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(first.bytes, 5);
    assert_eq!(first.url, format!("{}/{bucket}/{path}", s3.endpoint));
    store
        .put(&path, Bytes::from_static(b"second!"))
        .await
        .unwrap();
    assert_eq!(
        store.get(&path).await.unwrap().as_deref(),
        Some(&b"second!"[..])
    );
    assert_eq!(store.delete(&path).await.unwrap(), 7);
    s3.remove(&bucket).await;
}

async fn s3_outage_fails_the_job_as_storage_failed_refunds_and_records_no_row(which: Server) {
    let s3 = S3Server::get(which).await;
    // A port nothing listens on: the store is down for the whole test.
    let down = format!("http://127.0.0.1:{}", free_port());
    let mut env = TestEnv::start_with(vec![openai_ok()], |settings| {
        s3.configure(settings, "memoji-down");
        settings.storage.s3.endpoint = down.clone();
    })
    .await;
    let result = assert_storage_outage_fails_cleanly(&mut env).await;
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("s3 upload"), "{message}");
    env.cleanup().await;
}

async fn storage_check_command_passes_against_s3_and_fails_clearly_when_it_is_down(which: Server) {
    let s3 = S3Server::get(which).await;
    let id = format!("s3{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let bucket = s3.bucket(&id).await;
    let output = worker_command(&s3.cli_vars(&bucket, &s3.endpoint))
        .args(["storage", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("checking the s3 storage backend"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote   _memoji-check/"), "{stdout}");
    assert!(
        stdout.contains("public  the url serves the image"),
        "{stdout}"
    );
    assert!(stdout.contains("storage check passed"), "{stdout}");
    assert!(
        s3.keys(&bucket).await.is_empty(),
        "the check leaves nothing"
    );

    let down = format!("http://127.0.0.1:{}", free_port());
    let output = worker_command(&s3.cli_vars(&bucket, &down))
        .args(["storage", "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("storage check failed on the s3 backend: writing _memoji-check/"),
        "{stderr}"
    );

    // A bucket nobody else may read works, but its URLs would not open: a warning says so.
    // (Only where the server refuses such reads.)
    if s3.enforces_policies {
        private_bucket_warns(&s3, &id).await;
    }

    // Without credentials it says which variables to set.
    let mut vars = s3.cli_vars(&bucket, &s3.endpoint);
    vars.retain(|(name, _)| !name.contains("ACCESS_KEY"));
    let output = worker_command(&vars)
        .args(["storage", "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("MEMOJI_S3_ACCESS_KEY_ID"), "{stderr}");
    s3.remove(&bucket).await;
}

/// A missing bucket is not a missing object: the upload is refused (not retried), and a read or a
/// delete is an error, never "absent".
async fn s3_missing_bucket_is_refused_never_absent(which: Server) {
    let s3 = S3Server::get(which).await;
    let mut settings = Settings::defaults().unwrap();
    let id = format!("nb{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    s3.configure(&mut settings, &format!("memoji-{id}-never-created"));
    let store = storage::from_settings(&settings.storage, &settings.secrets.storage).unwrap();
    let key = CacheKey::parse(&"1e".repeat(32)).unwrap();
    let path = StoragePath::for_key(&key, chrono::Utc::now());
    let put = store
        .put(&path, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let get = store.get(&path).await.unwrap_err();
    let delete = store.delete(&path).await.unwrap_err();
    for error in [put, get, delete] {
        assert!(matches!(error, StorageError::Refused(_)), "{error:?}");
        assert!(error.to_string().contains("NoSuchBucket"), "{error}");
    }

    // In a bucket that exists, a missing object is absent, and deleting it is fine.
    let bucket = s3.bucket(&id).await;
    s3.configure(&mut settings, &bucket);
    let store = storage::from_settings(&settings.storage, &settings.secrets.storage).unwrap();
    assert_eq!(store.get(&path).await.unwrap(), None);
    assert_eq!(store.delete(&path).await.unwrap(), 0);
    s3.remove(&bucket).await;
}

async fn private_bucket_warns(s3: &S3Server, id: &str) {
    let private = s3.private_bucket(&format!("{id}p")).await;
    let output = worker_command(&s3.cli_vars(&private, &s3.endpoint))
        .args(["storage", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("WARNING the url does not serve the image (HTTP 403 Forbidden)"),
        "{stdout}"
    );
    s3.remove(&private).await;
}

/// Every test, against moto and against LocalStack's S3.
macro_rules! against {
    ($module:ident, $server:expr) => {
        mod $module {
            #[tokio::test]
            async fn s3_miss_stores_the_png_the_bucket_url_serves_it_then_a_hit_and_a_delete() {
                super::s3_miss_stores_the_png_the_bucket_url_serves_it_then_a_hit_and_a_delete(
                    $server,
                )
                .await;
            }

            #[tokio::test]
            async fn s3_missing_bucket_is_refused_never_absent() {
                super::s3_missing_bucket_is_refused_never_absent($server).await;
            }

            #[tokio::test]
            async fn s3_put_replaces_an_object_and_get_of_a_missing_one_is_none() {
                super::s3_put_replaces_an_object_and_get_of_a_missing_one_is_none($server).await;
            }

            #[tokio::test]
            async fn s3_outage_fails_the_job_as_storage_failed_refunds_and_records_no_row() {
                super::s3_outage_fails_the_job_as_storage_failed_refunds_and_records_no_row(
                    $server,
                )
                .await;
            }

            #[tokio::test]
            async fn storage_check_command_passes_against_s3_and_fails_clearly_when_it_is_down() {
                super::storage_check_command_passes_against_s3_and_fails_clearly_when_it_is_down(
                    $server,
                )
                .await;
            }
        }
    };
}

against!(moto, super::Server::Moto);
against!(localstack, super::Server::LocalStack);
