//! The supabase backend against a local stand-in for Supabase Storage that follows its documented
//! object API (upload, authenticated and public download, bulk delete) and its error shapes, and
//! refuses — and records — any request without the headers Supabase requires.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memoji_worker::config::{Settings, StorageKind};
use memoji_worker::job::CacheKey;
use memoji_worker::storage::{self, StoragePath};
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{
    TestEnv, assert_storage_outage_fails_cleanly, openai_ok, png_bytes, worker_command,
};

const SERVICE_KEY: &str = "service-role-key-for-tests";
const BUCKET: &str = "memoji-images";
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

#[derive(Debug, Clone)]
struct Object {
    bytes: Bytes,
    content_type: String,
    cache_control: String,
}

#[derive(Default)]
struct State {
    objects: Mutex<HashMap<String, Object>>,
    /// Requests Supabase would have refused, and why.
    refused: Mutex<Vec<String>>,
    uploads: AtomicU32,
    down: AtomicBool,
    /// Uploads still to answer with 503 before working again: a brief outage.
    failing_uploads: AtomicU32,
}

/// Supabase Storage, as far as the worker uses it.
struct FakeSupabase(Arc<State>);

fn supabase_error(status: u16, code: &str, error: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"statusCode": code, "error": error, "message": message}))
}

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

impl FakeSupabase {
    fn refuse(&self, why: String) -> ResponseTemplate {
        self.0.refused.lock().unwrap().push(why.clone());
        supabase_error(400, "403", "Unauthorized", &why)
    }

    /// Both headers Supabase's gateway and storage server check; the refusal when one is wrong.
    fn unauthorized(&self, request: &Request) -> Option<ResponseTemplate> {
        let bearer = format!("Bearer {SERVICE_KEY}");
        if header(request, "authorization") != Some(bearer.as_str()) {
            return Some(self.refuse(format!(
                "{} {}: bad Authorization",
                request.method,
                request.url.path()
            )));
        }
        if header(request, "apikey") != Some(SERVICE_KEY) {
            return Some(self.refuse(format!(
                "{} {}: bad apikey",
                request.method,
                request.url.path()
            )));
        }
        None
    }

    fn download(&self, key: &str) -> ResponseTemplate {
        match self.0.objects.lock().unwrap().get(key) {
            Some(object) => ResponseTemplate::new(200)
                .insert_header("content-type", object.content_type.as_str())
                .insert_header("cache-control", object.cache_control.as_str())
                .set_body_bytes(object.bytes.to_vec()),
            // Supabase Storage answers a missing object with HTTP 400 and a "404" body.
            None => supabase_error(400, "404", "not_found", "Object not found"),
        }
    }

    fn upload(&self, request: &Request, key: String) -> ResponseTemplate {
        self.0.uploads.fetch_add(1, Ordering::SeqCst);
        if let Some(refused) = self.unauthorized(request) {
            return refused;
        }
        let content_type = header(request, "content-type")
            .unwrap_or_default()
            .to_owned();
        if content_type != "image/png" {
            return self.refuse(format!("upload {key}: content-type {content_type:?}"));
        }
        let cache_control = header(request, "cache-control")
            .unwrap_or_default()
            .to_owned();
        if cache_control != CACHE_CONTROL {
            return self.refuse(format!("upload {key}: cache-control {cache_control:?}"));
        }
        let upsert = header(request, "x-upsert") == Some("true");
        let mut objects = self.0.objects.lock().unwrap();
        if objects.contains_key(&key) && !upsert {
            return supabase_error(400, "409", "Duplicate", "The resource already exists");
        }
        objects.insert(
            key.clone(),
            Object {
                bytes: Bytes::from(request.body.clone()),
                content_type,
                cache_control,
            },
        );
        ResponseTemplate::new(200)
            .set_body_json(json!({"Key": key, "Id": uuid::Uuid::new_v4().to_string()}))
    }

    fn remove(&self, request: &Request, bucket: &str) -> ResponseTemplate {
        if let Some(refused) = self.unauthorized(request) {
            return refused;
        }
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return supabase_error(400, "400", "Invalid JSON", "body must be JSON");
        };
        let Some(prefixes) = body["prefixes"].as_array() else {
            return supabase_error(400, "400", "Invalid input", "prefixes is required");
        };
        let mut objects = self.0.objects.lock().unwrap();
        let removed: Vec<Value> = prefixes
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|name| {
                let object = objects.remove(&format!("{bucket}/{name}"))?;
                Some(json!({"bucket_id": bucket, "name": name,
                            "metadata": {"size": object.bytes.len(), "mimetype": object.content_type}}))
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(removed)
    }
}

impl Respond for FakeSupabase {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if self.0.down.load(Ordering::SeqCst) {
            if request.method.as_str() == "POST" {
                self.0.uploads.fetch_add(1, Ordering::SeqCst);
            }
            return ResponseTemplate::new(503).set_body_string("upstream connect error");
        }
        if request.method.as_str() == "POST"
            && self
                .0
                .failing_uploads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.0.uploads.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(503).set_body_string("upstream connect error");
        }
        let path = request.url.path().to_owned();
        let Some(rest) = path.strip_prefix("/storage/v1/object/") else {
            return ResponseTemplate::new(404);
        };
        match (request.method.as_str(), rest.split_once('/')) {
            ("GET", Some(("public", key))) => self.download(key),
            ("GET", Some(("authenticated", key))) => self
                .unauthorized(request)
                .unwrap_or_else(|| self.download(key)),
            ("POST", Some((_, _))) => self.upload(request, rest.to_owned()),
            ("DELETE", None) => self.remove(request, rest),
            _ => supabase_error(400, "400", "Invalid request", "unknown route"),
        }
    }
}

struct Supabase {
    server: MockServer,
    state: Arc<State>,
}

impl Supabase {
    async fn start() -> Supabase {
        let server = MockServer::start().await;
        let state = Arc::new(State::default());
        Mock::given(any())
            .respond_with(FakeSupabase(state.clone()))
            .mount(&server)
            .await;
        Supabase { server, state }
    }

    fn configure(&self, settings: &mut Settings) {
        settings.storage.kind = StorageKind::Supabase;
        settings.storage.public_base_url = String::new();
        settings.storage.request_timeout_secs = 5;
        settings.storage.supabase.url = self.server.uri();
        settings.secrets.storage.supabase_service_key = Some(SecretString::from(SERVICE_KEY));
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.state.objects.lock().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    fn refused(&self) -> Vec<String> {
        self.state.refused.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn supabase_miss_uploads_with_the_documented_headers_serves_the_public_url_then_a_hit_and_a_delete()
 {
    let supabase = Supabase::start().await;
    let mut env =
        TestEnv::start_with(vec![openai_ok()], |settings| supabase.configure(settings)).await;

    let miss = env.run(&env.job("u", json!({}))).await;
    assert_eq!(miss["status"], "succeeded", "{miss}");
    let path = miss["storage_path"].as_str().unwrap().to_owned();
    let url = miss["image_url"].as_str().unwrap().to_owned();
    assert_eq!(
        url,
        format!(
            "{}/storage/v1/object/public/{BUCKET}/{path}",
            supabase.server.uri()
        )
    );
    assert_eq!(supabase.keys(), vec![format!("{BUCKET}/{path}")]);
    assert!(supabase.refused().is_empty(), "{:?}", supabase.refused());

    // The public URL serves exactly the stored PNG, with its content type and caching.
    let served = env.http.get(&url).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.headers()["cache-control"], CACHE_CONTROL);
    let served = served.bytes().await.unwrap();
    assert_eq!(served.as_ref(), png_bytes().as_slice());

    let hit = env.run(&env.job("u", json!({}))).await;
    assert_eq!(hit["cached"], true, "{hit}");
    assert_eq!(hit["image_url"], url.as_str());
    assert_eq!(supabase.state.uploads.load(Ordering::SeqCst), 1);

    // Deleting through the store, as cleanup does.
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
    assert!(supabase.keys().is_empty());
    assert!(supabase.refused().is_empty(), "{:?}", supabase.refused());
    env.cleanup().await;
}

#[tokio::test]
async fn supabase_upserts_a_replaced_image_and_a_wrong_key_is_a_backend_error() {
    let supabase = Supabase::start().await;
    let mut settings = Settings::defaults().unwrap();
    supabase.configure(&mut settings);
    let store = storage::from_settings(&settings.storage, &settings.secrets.storage).unwrap();
    let key = CacheKey::parse(&"0e".repeat(32)).unwrap();
    let path = StoragePath::for_key(&key, chrono::Utc::now());
    store
        .put(&path, Bytes::from_static(b"first"))
        .await
        .unwrap();
    store
        .put(&path, Bytes::from_static(b"second"))
        .await
        .expect("x-upsert replaces the object");
    assert_eq!(
        store.get(&path).await.unwrap().as_deref(),
        Some(&b"second"[..])
    );

    settings.secrets.storage.supabase_service_key = Some(SecretString::from("not-the-key"));
    let wrong = storage::from_settings(&settings.storage, &settings.secrets.storage).unwrap();
    let error = wrong
        .put(&path, Bytes::from_static(b"x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("storage backend: supabase upload: HTTP 400"),
        "{error}"
    );
    assert!(!error.contains("not-the-key"), "{error}");
    assert_eq!(supabase.refused().len(), 1);
}

#[tokio::test]
async fn supabase_outage_fails_the_job_as_storage_failed_after_three_uploads_and_records_no_row() {
    let supabase = Supabase::start().await;
    supabase.state.down.store(true, Ordering::SeqCst);
    let mut env =
        TestEnv::start_with(vec![openai_ok()], |settings| supabase.configure(settings)).await;
    let result = assert_storage_outage_fails_cleanly(&mut env).await;
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 503"),
        "{result}"
    );
    assert_eq!(
        supabase.state.uploads.load(Ordering::SeqCst),
        3,
        "three tries in all"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn supabase_brief_outage_is_retried_and_the_job_succeeds() {
    let supabase = Supabase::start().await;
    supabase.state.failing_uploads.store(2, Ordering::SeqCst);
    let mut env =
        TestEnv::start_with(vec![openai_ok()], |settings| supabase.configure(settings)).await;
    let result = env.run(&env.job("u", json!({}))).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["credits_charged"], 1);
    assert_eq!(supabase.state.uploads.load(Ordering::SeqCst), 3);
    assert_eq!(env.openai.calls(), 1, "the image is generated once");
    let served = env
        .http
        .get(result["image_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().await.unwrap().as_ref(),
        png_bytes().as_slice()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn storage_check_command_passes_against_supabase() {
    let supabase = Supabase::start().await;
    let vars = [
        ("MEMOJI__STORAGE__KIND", "supabase".to_owned()),
        // The usual variable names work.
        ("SUPABASE_URL", supabase.server.uri()),
        ("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY.to_owned()),
    ];
    let output = worker_command(&vars)
        .args(["storage", "check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("public  the url serves the image"),
        "{stdout}"
    );
    assert!(stdout.contains("storage check passed"), "{stdout}");
    assert!(!stdout.contains(SERVICE_KEY) && !stderr.contains(SERVICE_KEY));
    assert!(supabase.keys().is_empty(), "the check leaves nothing");
    assert!(supabase.refused().is_empty(), "{:?}", supabase.refused());

    supabase.state.down.store(true, Ordering::SeqCst);
    let output = worker_command(&vars)
        .args(["storage", "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("storage check failed on the supabase backend: writing _memoji-check/"),
        "{stderr}"
    );
    assert!(stderr.contains("HTTP 503"), "{stderr}");
}
