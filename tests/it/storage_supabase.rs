//! The supabase backend against a local stand-in for Supabase Storage. The stand-in carries the
//! behaviour of the open-source server (`supabase/storage` v1.70.6 and v1.26.5, behind a gateway
//! that serves it under `/storage/v1`) where the worker depends on it:
//! - errors come as HTTP 400 with the status meant in the body:
//!   `{"statusCode":"403","code":"AccessDenied","error":"Unauthorized",…}`, `"404"` `NoSuchKey`
//!   for a missing object, `"404"` `NoSuchBucket` for a missing bucket, `"409"` Duplicate;
//! - a route it does not have is an HTTP 404 (`"error":"Not Found"`, code `InvalidRequest`);
//! - buckets can be missing or private (the public URL of a private bucket is `NoSuchBucket`);
//! - the bulk delete answers `200 []` when nothing was deleted, whatever the reason: the object
//!   was gone, the bucket does not exist, or row-level security hid it from the key;
//! - only `Authorization: Bearer <key>` is checked (not `apikey`, not the content type).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memoji_worker::config::{Settings, StorageKind};
use memoji_worker::job::CacheKey;
use memoji_worker::storage::{self, StorageError, StoragePath};
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{
    ADMIN_TOKEN, TestEnv, assert_failed_and_refunded, assert_storage_outage_fails_cleanly, count,
    openai_ok, png_bytes, worker_command,
};

const SERVICE_KEY: &str = "service-role-key-for-tests";
/// A key that row-level security lets insert and read objects, but not delete them — what an anon
/// or user key with the usual policies gets.
const LIMITED_KEY: &str = "limited-key-for-tests";
const BUCKET: &str = "memoji-images";
const PRIVATE_BUCKET: &str = "private-images";
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

#[derive(Debug, Clone)]
struct Object {
    bytes: Bytes,
    content_type: String,
    cache_control: String,
}

struct State {
    /// `bucket/name` → object.
    objects: Mutex<HashMap<String, Object>>,
    /// Bucket id → public.
    buckets: Mutex<HashMap<String, bool>>,
    /// Requests refused for their key, and why.
    refused: Mutex<Vec<String>>,
    /// Authorized requests that came without `apikey` (the server does not care; a hosted
    /// gateway does).
    without_apikey: AtomicU32,
    /// Every request, as `METHOD /path`.
    requests: Mutex<Vec<String>>,
    uploads: AtomicU32,
    down: AtomicBool,
    /// Uploads still to answer with 503 before working again: a brief outage.
    failing_uploads: AtomicU32,
}

impl Default for State {
    fn default() -> State {
        State {
            objects: Mutex::default(),
            buckets: Mutex::new(HashMap::from([
                (BUCKET.to_owned(), true),
                (PRIVATE_BUCKET.to_owned(), false),
            ])),
            refused: Mutex::default(),
            without_apikey: AtomicU32::new(0),
            requests: Mutex::default(),
            uploads: AtomicU32::new(0),
            down: AtomicBool::new(false),
            failing_uploads: AtomicU32::new(0),
        }
    }
}

/// Who the bearer key is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Service,
    Limited,
}

/// Supabase Storage, as far as the worker uses it.
struct FakeSupabase(Arc<State>);

/// The server's error answer: HTTP 400 (as it sends nearly every error), the status in the body.
fn storage_error(status: &str, code: &str, error: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(
        json!({"statusCode": status, "code": code, "error": error, "message": message}),
    )
}

fn denied() -> ResponseTemplate {
    storage_error(
        "403",
        "AccessDenied",
        "Unauthorized",
        "signature verification failed",
    )
}

fn no_such_key() -> ResponseTemplate {
    storage_error("404", "NoSuchKey", "not_found", "Object not found")
}

fn no_such_bucket() -> ResponseTemplate {
    storage_error(
        "404",
        "NoSuchBucket",
        "Bucket not found",
        "Bucket not found",
    )
}

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

impl FakeSupabase {
    /// The key's role; `None` (and the request recorded as refused) for a JWT the server
    /// cannot verify, to be answered with [`denied`].
    fn role(&self, request: &Request) -> Option<Role> {
        let bearer = header(request, "authorization").and_then(|h| h.strip_prefix("Bearer "));
        match bearer {
            Some(SERVICE_KEY) => Some(Role::Service),
            Some(LIMITED_KEY) => Some(Role::Limited),
            _ => {
                let why = format!("{} {}", request.method, request.url.path());
                self.0.refused.lock().unwrap().push(why);
                None
            }
        }
    }

    fn bucket_public(&self, bucket: &str) -> Option<bool> {
        self.0.buckets.lock().unwrap().get(bucket).copied()
    }

    /// The object, or the server's answer for why there is none.
    fn object(&self, bucket: &str, name: &str) -> Result<Object, Box<ResponseTemplate>> {
        if self.bucket_public(bucket).is_none() {
            return Err(Box::new(no_such_bucket()));
        }
        let objects = self.0.objects.lock().unwrap();
        objects
            .get(&format!("{bucket}/{name}"))
            .cloned()
            .ok_or_else(|| Box::new(no_such_key()))
    }

    fn download(&self, bucket: &str, name: &str) -> ResponseTemplate {
        match self.object(bucket, name) {
            Ok(object) => ResponseTemplate::new(200)
                .insert_header("content-type", object.content_type.as_str())
                .insert_header("cache-control", object.cache_control.as_str())
                .set_body_bytes(object.bytes.to_vec()),
            Err(answer) => *answer,
        }
    }

    fn info(&self, bucket: &str, name: &str) -> ResponseTemplate {
        match self.object(bucket, name) {
            Ok(object) => ResponseTemplate::new(200).set_body_json(json!({
                "name": name, "bucket_id": bucket, "size": object.bytes.len(),
                "content_type": object.content_type, "cache_control": object.cache_control,
            })),
            Err(answer) => *answer,
        }
    }

    fn upload(&self, request: &Request, bucket: &str, name: &str) -> ResponseTemplate {
        self.0.uploads.fetch_add(1, Ordering::SeqCst);
        if self.role(request).is_none() {
            return denied();
        }
        if self.bucket_public(bucket).is_none() {
            return no_such_bucket();
        }
        let upsert = header(request, "x-upsert") == Some("true");
        let key = format!("{bucket}/{name}");
        let mut objects = self.0.objects.lock().unwrap();
        if objects.contains_key(&key) && !upsert {
            return storage_error(
                "409",
                "ResourceAlreadyExists",
                "Duplicate",
                "The resource already exists",
            );
        }
        let text = |name| header(request, name).unwrap_or_default().to_owned();
        let object = Object {
            bytes: Bytes::from(request.body.clone()),
            content_type: text("content-type"),
            cache_control: text("cache-control"),
        };
        objects.insert(key.clone(), object);
        ResponseTemplate::new(200)
            .set_body_json(json!({"Key": key, "Id": uuid::Uuid::new_v4().to_string()}))
    }

    fn remove(&self, request: &Request, bucket: &str) -> ResponseTemplate {
        let Some(role) = self.role(request) else {
            return denied();
        };
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return storage_error(
                "400",
                "InvalidRequest",
                "InvalidRequest",
                "body must be JSON",
            );
        };
        let Some(prefixes) = body["prefixes"].as_array() else {
            return storage_error(
                "400",
                "InvalidRequest",
                "InvalidRequest",
                "body must have required property 'prefixes'",
            );
        };
        // The server deletes the rows the key may see, in the bucket named, and answers with
        // them: a missing bucket or row-level security gives `[]`, with no error.
        if role == Role::Limited {
            return ResponseTemplate::new(200).set_body_json(json!([]));
        }
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

    fn bucket(&self, request: &Request, id: &str) -> ResponseTemplate {
        if self.role(request).is_none() {
            return denied();
        }
        match self.bucket_public(id) {
            Some(public) => ResponseTemplate::new(200)
                .set_body_json(json!({"id": id, "name": id, "public": public})),
            None => no_such_bucket(),
        }
    }

    fn authenticated(
        &self,
        request: &Request,
        answer: impl FnOnce() -> ResponseTemplate,
    ) -> ResponseTemplate {
        match self.role(request) {
            Some(_) => answer(),
            None => denied(),
        }
    }
}

/// The server's answer to a route it does not have.
fn unknown_route(request: &Request) -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({
        "statusCode": "404", "error": "Not Found", "code": "InvalidRequest",
        "message": format!("Route {}:{} not found", request.method, request.url.path()),
    }))
}

impl Respond for FakeSupabase {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let method = request.method.as_str();
        let path = request.url.path().to_owned();
        self.0
            .requests
            .lock()
            .unwrap()
            .push(format!("{method} {path}"));
        if header(request, "authorization").is_some() && header(request, "apikey").is_none() {
            self.0.without_apikey.fetch_add(1, Ordering::SeqCst);
        }
        if self.0.down.load(Ordering::SeqCst) {
            if method == "POST" {
                self.0.uploads.fetch_add(1, Ordering::SeqCst);
            }
            return ResponseTemplate::new(503).set_body_string("upstream connect error");
        }
        if method == "POST"
            && self
                .0
                .failing_uploads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            self.0.uploads.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(503).set_body_string("upstream connect error");
        }
        let Some(rest) = path.strip_prefix("/storage/v1/") else {
            return unknown_route(request);
        };
        let segments: Vec<&str> = rest.splitn(4, '/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["bucket", id]) => self.bucket(request, id),
            ("GET", ["object", "public", bucket, name]) => match self.bucket_public(bucket) {
                Some(true) => self.download(bucket, name),
                _ => no_such_bucket(),
            },
            ("GET", ["object", "authenticated", bucket, name]) => {
                self.authenticated(request, || self.download(bucket, name))
            }
            ("GET", ["object", "info", "authenticated", tail]) => match tail.split_once('/') {
                Some((bucket, name)) => self.authenticated(request, || self.info(bucket, name)),
                None => unknown_route(request),
            },
            ("POST", ["object", bucket, first, rest @ ..]) => {
                let name = [*first]
                    .iter()
                    .chain(rest)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("/");
                self.upload(request, bucket, &name)
            }
            ("DELETE", ["object", bucket]) => self.remove(request, bucket),
            _ => unknown_route(request),
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
        self.configure_with(settings, SERVICE_KEY);
    }

    fn configure_with(&self, settings: &mut Settings, key: &str) {
        settings.storage.kind = StorageKind::Supabase;
        settings.storage.public_base_url = String::new();
        settings.storage.request_timeout_secs = 5;
        settings.storage.supabase.url = self.server.uri();
        settings.secrets.storage.supabase_service_key = Some(SecretString::from(key));
    }

    fn store(&self, key: &str, tweak: impl FnOnce(&mut Settings)) -> Arc<dyn storage::ImageStore> {
        let mut settings = Settings::defaults().unwrap();
        self.configure_with(&mut settings, key);
        tweak(&mut settings);
        storage::from_settings(&settings.storage, &settings.secrets.storage).unwrap()
    }

    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.state.objects.lock().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    fn refused(&self) -> Vec<String> {
        self.state.refused.lock().unwrap().clone()
    }

    fn uploads(&self) -> u32 {
        self.state.uploads.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }
}

fn a_path(byte: &str) -> StoragePath {
    let key = CacheKey::parse(&byte.repeat(32)).unwrap();
    StoragePath::for_key(&key, chrono::Utc::now())
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

    // The public URL serves exactly the stored PNG, with the content type and caching the
    // upload gave (the server stores what it is sent; it insists on neither).
    let served = env.http.get(&url).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.headers()["cache-control"], CACHE_CONTROL);
    let served = served.bytes().await.unwrap();
    assert_eq!(served.as_ref(), png_bytes().as_slice());

    let hit = env.run(&env.job("u", json!({}))).await;
    assert_eq!(hit["cached"], true, "{hit}");
    assert_eq!(hit["image_url"], url.as_str());
    assert_eq!(supabase.uploads(), 1);

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
    // `apikey` goes with every request: the server ignores it, a hosted gateway requires it.
    assert_eq!(supabase.state.without_apikey.load(Ordering::SeqCst), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn supabase_upserts_a_replaced_image_and_a_wrong_key_is_refused_with_the_servers_fields() {
    let supabase = Supabase::start().await;
    let store = supabase.store(SERVICE_KEY, |_| {});
    let path = a_path("0e");
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

    let wrong = supabase.store("not-the-key", |_| {});
    let error = wrong
        .put(&path, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Refused(_)), "{error:?}");
    let error = error.to_string();
    assert!(
        error.starts_with(
            "storage backend refused: supabase upload: HTTP 400 Bad Request (statusCode 403, \
             error Unauthorized, code AccessDenied): signature verification failed"
        ),
        "{error}"
    );
    assert!(error.contains("service_role key"), "{error}");
    assert!(!error.contains("not-the-key"), "{error}");
    assert_eq!(supabase.refused().len(), 1);
}

#[tokio::test]
async fn supabase_refused_key_fails_the_job_at_once_not_retryable_and_refunded() {
    let supabase = Supabase::start().await;
    let mut env = TestEnv::start_with(vec![openai_ok()], |settings| {
        supabase.configure_with(settings, "not-the-key")
    })
    .await;
    // The look for an image stored earlier is refused: the job fails before paying for one.
    let result = assert_failed_and_refunded(&mut env, "storage_failed", false, 0).await;
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.contains("statusCode 403"), "{result}");
    assert!(message.contains("AccessDenied"), "{result}");
    assert!(message.contains("SUPABASE_SERVICE_ROLE_KEY"), "{result}");
    assert!(!message.contains("not-the-key"), "{result}");
    assert_eq!(supabase.uploads(), 0);
    assert_refused_upload_is_not_retried(&mut env, &supabase, "AccessDenied").await;
    env.cleanup().await;
}

/// A `force_refresh` looks for an earlier image at its new revision's path too (CONTRACT.md §5),
/// so it meets the refusal there, before it pays for a generation: the job fails, not retryable,
/// refunded, with nothing generated or uploaded. (That an upload's refusal is never retried is
/// `put_with_retries`' rule: it retries backend failures only; the classification is unit-tested
/// in `storage::supabase`.)
async fn assert_refused_upload_is_not_retried(env: &mut TestEnv, supabase: &Supabase, code: &str) {
    let mut job = env.job("refresher", json!({}));
    job["force_refresh"] = json!(true);
    let calls = env.openai.calls();
    let result = env.run(&job).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["code"], "storage_failed", "{result}");
    assert_eq!(result["error"]["retryable"], false, "{result}");
    assert_eq!(result["credits_remaining"], 100, "refunded: {result}");
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("code {code}")), "{result}");
    assert_eq!(env.openai.calls(), calls, "nothing generated");
    assert_eq!(supabase.uploads(), 0, "nothing uploaded");
    assert_eq!(count(&env.db, "SELECT count(*) FROM memoji_cache").await, 0);
}

#[tokio::test]
async fn supabase_missing_bucket_fails_the_job_at_once_not_retryable_and_refunded() {
    let supabase = Supabase::start().await;
    let mut env = TestEnv::start_with(vec![openai_ok()], |settings| {
        supabase.configure(settings);
        settings.storage.supabase.bucket = "no-such-bucket".to_owned();
    })
    .await;
    let result = assert_failed_and_refunded(&mut env, "storage_failed", false, 0).await;
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.contains("code NoSuchBucket"), "{result}");
    assert!(
        message.contains("bucket \"no-such-bucket\" does not exist"),
        "{result}"
    );
    assert_eq!(supabase.uploads(), 0, "nothing generated, nothing uploaded");
    assert_refused_upload_is_not_retried(&mut env, &supabase, "NoSuchBucket").await;
    assert!(supabase.keys().is_empty());
    env.cleanup().await;
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
    assert_eq!(supabase.uploads(), 3, "three tries in all");
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
    assert_eq!(supabase.uploads(), 3);
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

/// The cleanup through a key that may store but not delete: the server answers the delete with
/// `200 []`, and the image must be counted as kept (an orphan), not as deleted.
#[tokio::test]
async fn supabase_cleanup_counts_an_image_the_key_could_not_delete_as_kept() {
    let supabase = Supabase::start().await;
    let mut env = TestEnv::start_with(vec![openai_ok()], |settings| {
        supabase.configure_with(settings, LIMITED_KEY)
    })
    .await;
    let miss = env.run(&env.job("u", json!({}))).await;
    assert_eq!(miss["status"], "succeeded", "{miss}");
    let path = miss["storage_path"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE memoji_cache SET created_at = now() - interval '400 days'")
        .execute(&env.db)
        .await
        .unwrap();

    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["deleted"], 1, "{report}");
    assert_eq!(report["bytes_freed"], 0, "{report}");
    assert_eq!(
        report["images_kept"], 1,
        "the image stayed on the server: {report}"
    );
    assert_eq!(supabase.keys(), vec![format!("{BUCKET}/{path}")]);
    assert_eq!(count(&env.db, "SELECT count(*) FROM memoji_cache").await, 0);
    assert!(
        supabase
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /storage/v1/object/info/authenticated/")),
        "the empty answer was checked: {:?}",
        supabase.requests()
    );
    env.cleanup().await;
}

/// A delete is "already gone" only when the server says the object is not there: never for an
/// unknown route (a wrong URL) or a missing bucket, both of which a delete can meet.
#[tokio::test]
async fn supabase_delete_is_done_only_when_the_object_is_really_gone() {
    let supabase = Supabase::start().await;
    let path = a_path("1f");
    let store = supabase.store(SERVICE_KEY, |_| {});
    store.put(&path, Bytes::from_static(b"png")).await.unwrap();

    // Row-level security: `200 []`, the object still there.
    let limited = supabase.store(LIMITED_KEY, |_| {});
    let error = limited.delete(&path).await.unwrap_err();
    assert!(matches!(error, StorageError::Refused(_)), "{error:?}");
    assert!(error.to_string().contains("is still in bucket"), "{error}");
    assert_eq!(supabase.keys().len(), 1);

    // A missing bucket: the delete answers `200 []` too.
    let missing = supabase.store(SERVICE_KEY, |s| {
        s.storage.supabase.bucket = "no-such-bucket".to_owned();
    });
    let error = missing.delete(&path).await.unwrap_err();
    assert!(matches!(error, StorageError::Refused(_)), "{error:?}");
    assert!(error.to_string().contains("code NoSuchBucket"), "{error}");
    let error = missing.get(&path).await.unwrap_err();
    assert!(error.to_string().contains("code NoSuchBucket"), "{error}");

    // An unknown route: the URL points below the gateway's storage API.
    let wrong_url = supabase.store(SERVICE_KEY, |s| {
        s.storage.supabase.url = format!("{}/elsewhere", supabase.server.uri());
    });
    for error in [
        wrong_url.delete(&path).await.unwrap_err(),
        wrong_url.get(&path).await.unwrap_err(),
    ] {
        assert!(matches!(error, StorageError::Refused(_)), "{error:?}");
        let error = error.to_string();
        assert!(error.contains("HTTP 404 Not Found"), "{error}");
        assert!(
            error.contains("SUPABASE_URL must be the project URL"),
            "{error}"
        );
    }
    assert_eq!(supabase.keys().len(), 1, "nothing deleted it");

    // The service key deletes it, and then it is gone: absent is fine.
    assert_eq!(store.delete(&path).await.unwrap(), 3);
    assert_eq!(store.delete(&path).await.unwrap(), 0);
    assert!(supabase.keys().is_empty());
}

fn check_vars(supabase: &Supabase, key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MEMOJI__STORAGE__KIND", "supabase".to_owned()),
        // The usual variable names work.
        ("SUPABASE_URL", supabase.server.uri()),
        ("SUPABASE_SERVICE_ROLE_KEY", key.to_owned()),
    ]
}

fn storage_check(vars: &[(&str, String)]) -> (Option<i32>, String, String) {
    let output = worker_command(vars)
        .args(["storage", "check"])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn storage_check_command_passes_against_supabase() {
    let supabase = Supabase::start().await;
    let vars = check_vars(&supabase, SERVICE_KEY);
    let (code, stdout, stderr) = storage_check(&vars);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("bucket  {BUCKET} exists and is public")),
        "{stdout}"
    );
    assert!(
        stdout.contains("public  the url serves the image"),
        "{stdout}"
    );
    assert!(stdout.contains("storage check passed"), "{stdout}");
    assert!(!stdout.contains(SERVICE_KEY) && !stderr.contains(SERVICE_KEY));
    assert!(supabase.keys().is_empty(), "the check leaves nothing");
    assert!(supabase.refused().is_empty(), "{:?}", supabase.refused());

    supabase.state.down.store(true, Ordering::SeqCst);
    let (code, _, stderr) = storage_check(&vars);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("storage check failed on the supabase backend: reading the bucket failed"),
        "{stderr}"
    );
    assert!(stderr.contains("HTTP 503"), "{stderr}");
}

#[tokio::test]
async fn storage_check_command_fails_on_a_missing_or_private_bucket_a_key_that_cannot_delete_and_a_doubled_url()
 {
    let supabase = Supabase::start().await;

    let mut vars = check_vars(&supabase, SERVICE_KEY);
    vars.push((
        "MEMOJI__STORAGE__SUPABASE__BUCKET",
        "no-such-bucket".to_owned(),
    ));
    let (code, _, stderr) = storage_check(&vars);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("reading the bucket failed"), "{stderr}");
    assert!(stderr.contains("code NoSuchBucket"), "{stderr}");
    assert_eq!(
        supabase.uploads(),
        0,
        "nothing is written to a missing bucket"
    );

    let mut vars = check_vars(&supabase, SERVICE_KEY);
    vars.push((
        "MEMOJI__STORAGE__SUPABASE__BUCKET",
        PRIVATE_BUCKET.to_owned(),
    ));
    let (code, _, stderr) = storage_check(&vars);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("bucket {PRIVATE_BUCKET} is not public")),
        "{stderr}"
    );
    assert!(supabase.keys().is_empty(), "the probe was deleted");

    let (code, _, stderr) = storage_check(&check_vars(&supabase, LIMITED_KEY));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("deleting _memoji-check/"), "{stderr}");
    assert!(stderr.contains("the key may not delete it"), "{stderr}");
    assert_eq!(
        supabase.keys().len(),
        1,
        "the key really could not delete it"
    );

    let before = supabase.requests().len();
    let mut vars = check_vars(&supabase, SERVICE_KEY);
    vars[1].1 = format!("{}/storage/v1", supabase.server.uri());
    let (code, _, stderr) = storage_check(&vars);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ends in /storage/v1"), "{stderr}");
    assert_eq!(
        supabase.requests().len(),
        before,
        "refused before any request"
    );
}
