//! The Supabase Storage backend, through its REST API — the API the JavaScript system used, so
//! existing buckets and public URLs carry over unchanged.
//!
//! Endpoints (Supabase Storage's object API, under `<url>/storage/v1`, where Supabase's gateway
//! serves it); the behaviour described is that of the open-source server, `supabase/storage`
//! v1.26.5 and v1.70.6 (docs/storage.md):
//! - upload: `POST /object/{bucket}/{path}` with `x-upsert: true`, so a regeneration
//!   (`force_refresh`, a retried upload) replaces the object instead of failing as a duplicate;
//! - read: `GET /object/authenticated/{bucket}/{path}`; the public URL is
//!   `GET /object/public/{bucket}/{path}`;
//! - delete: `DELETE /object/{bucket}` with `{"prefixes": [path]}`, which answers with the rows it
//!   removed (and their sizes) — and with `[]` alike when the object was already gone, when the
//!   key may not delete it (row-level security) and when the bucket does not exist; an answer
//!   without the object is therefore checked with `GET /object/info/authenticated/…`;
//! - `storage check` also reads `GET /bucket/{bucket}`: does it exist, is it public.
//!
//! Errors come as HTTP 400 with the status meant in the body (`answer.rs`): a missing object
//! (`NoSuchKey`) is "absent"; a refused key (401/403), a missing bucket (`NoSuchBucket`) or an
//! unknown route (a wrong URL) is [`StorageError::Refused`], which no retry changes; the rest
//! (a 5xx, a gateway's 503, a timeout) is [`StorageError::Backend`], worth retrying.
//!
//! Every request carries the service role key as `Authorization: Bearer`, which is all the
//! storage server reads, and again as `apikey`, which Supabase's hosted gateway requires. The key
//! is a [`SecretString`] and never leaves a header.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::RequestBuilder;
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

mod answer;

use super::{BucketInfo, ImageStore, SetupError, StorageError, StoragePath, Stored, join_url};
use crate::config::{StorageSecrets, StorageSettings};
use answer::Failure;

pub(crate) struct SupabaseStore {
    http: reqwest::Client,
    /// `<url>/storage/v1`
    api: String,
    bucket: String,
    key: SecretString,
    public_base_url: String,
    cache_control: HeaderValue,
}

impl fmt::Debug for SupabaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseStore")
            .field("api", &self.api)
            .field("bucket", &self.bucket)
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

impl SupabaseStore {
    pub(crate) fn new(
        settings: &StorageSettings,
        secrets: &StorageSecrets,
    ) -> Result<SupabaseStore, SetupError> {
        let supabase = &settings.supabase;
        let base = supabase.url.trim_end_matches('/');
        match url::Url::parse(base) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            _ => {
                return Err(SetupError::new(format!(
                    "storage.supabase.url {base:?} is not an http(s) URL; set it (or SUPABASE_URL) \
                     to the project URL, e.g. https://abcd.supabase.co"
                )));
            }
        }
        // The worker adds `/storage/v1`; given twice, every request would hit an unknown route.
        if base.ends_with("/storage/v1") {
            return Err(SetupError::new(format!(
                "storage.supabase.url {base:?} ends in /storage/v1: set it (or SUPABASE_URL) to \
                 the project URL without it, e.g. https://abcd.supabase.co — the worker adds \
                 /storage/v1 itself"
            )));
        }
        if supabase.bucket.is_empty() || supabase.bucket.contains('/') {
            return Err(SetupError::new(
                "storage.supabase.bucket must be a bucket name",
            ));
        }
        let Some(key) = secrets.supabase_service_key.clone() else {
            return Err(SetupError::new(format!(
                "the supabase backend needs the service role key: set {} (or {})",
                StorageSecrets::SUPABASE_SERVICE_KEY[0],
                StorageSecrets::SUPABASE_SERVICE_KEY[1],
            )));
        };
        // Checked here so a bad key fails at start, not as an upload error.
        header_value(&format!("Bearer {}", key.expose_secret())).map_err(|_| {
            SetupError::new("the supabase service role key has characters a header cannot carry")
        })?;
        let cache_control = header_value(&settings.cache_control)
            .map_err(|_| SetupError::new("storage.cache_control is not a valid header value"))?;
        let timeout = settings.request_timeout();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| SetupError::new(format!("building the HTTP client: {e}")))?;
        let api = format!("{base}/storage/v1");
        let public_base_url = if settings.public_base_url.is_empty() {
            format!("{api}/object/public/{}", supabase.bucket)
        } else {
            settings.public_base_url.clone()
        };
        Ok(SupabaseStore {
            http,
            api,
            bucket: supabase.bucket.clone(),
            key,
            public_base_url,
            cache_control,
        })
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        let key = self.key.expose_secret();
        // Both were checked in `new`; an unusable value cannot appear later.
        if let (Ok(mut bearer), Ok(mut apikey)) =
            (header_value(&format!("Bearer {key}")), header_value(key))
        {
            bearer.set_sensitive(true);
            apikey.set_sensitive(true);
            headers.insert(AUTHORIZATION, bearer);
            headers.insert("apikey", apikey);
        }
        request.headers(headers)
    }

    fn object_url(&self, path: &StoragePath) -> String {
        format!("{}/object/{}/{path}", self.api, self.bucket)
    }
}

fn header_value(text: &str) -> Result<HeaderValue, reqwest::header::InvalidHeaderValue> {
    HeaderValue::from_str(text)
}

fn unreachable(what: &str, error: reqwest::Error) -> StorageError {
    // reqwest's message names the URL (no secret in it) and the cause: refused, timed out, …
    StorageError::Backend(format!("supabase {what}: {error}"))
}

/// One entry of the bulk delete's answer: a row it removed.
#[derive(Debug, Deserialize)]
struct Removed {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<RemovedMetadata>,
}

#[derive(Debug, Deserialize)]
struct RemovedMetadata {
    #[serde(default)]
    size: Option<u64>,
}

/// `GET /bucket/{id}`'s answer, the fields used.
#[derive(Debug, Deserialize)]
struct Bucket {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    public: bool,
}

impl SupabaseStore {
    /// Whether the object exists, asked through its info route — which, in a public bucket,
    /// sees past row-level security. In a private bucket a key that may not see an object is
    /// told it is not there, so there a refused delete can pass for a done one.
    async fn exists(&self, path: &StoragePath) -> Result<bool, StorageError> {
        let url = format!(
            "{}/object/info/authenticated/{}/{path}",
            self.api, self.bucket
        );
        let response = self
            .authorized(self.http.get(url))
            .send()
            .await
            .map_err(|e| unreachable("looking up an object", e))?;
        if response.status().is_success() {
            return Ok(true);
        }
        let failure = Failure::read(response).await;
        if failure.is_no_such_key() {
            return Ok(false);
        }
        Err(failure.into_error("looking up an object", &self.bucket))
    }
}

#[async_trait]
impl ImageStore for SupabaseStore {
    async fn put(&self, path: &StoragePath, png: Bytes) -> Result<Stored, StorageError> {
        let bytes = png.len() as u64;
        let request = self
            .http
            .post(self.object_url(path))
            .header(CONTENT_TYPE, "image/png")
            .header(CACHE_CONTROL, self.cache_control.clone())
            .header("x-upsert", "true")
            .body(png);
        let response = self
            .authorized(request)
            .send()
            .await
            .map_err(|e| unreachable("upload", e))?;
        if !response.status().is_success() {
            return Err(Failure::read(response)
                .await
                .into_error("upload", &self.bucket));
        }
        Ok(Stored {
            path: path.clone(),
            url: self.url(path),
            bytes,
        })
    }

    async fn get(&self, path: &StoragePath) -> Result<Option<Bytes>, StorageError> {
        let url = format!("{}/object/authenticated/{}/{path}", self.api, self.bucket);
        let response = self
            .authorized(self.http.get(url))
            .send()
            .await
            .map_err(|e| unreachable("download", e))?;
        if response.status().is_success() {
            return response
                .bytes()
                .await
                .map(Some)
                .map_err(|e| unreachable("download", e));
        }
        let failure = Failure::read(response).await;
        if failure.is_no_such_key() {
            return Ok(None);
        }
        Err(failure.into_error("download", &self.bucket))
    }

    /// The bulk delete answers with the rows it removed — and with `[]` alike when the object
    /// was already gone, when the key may not delete it (row-level security), and when the
    /// bucket does not exist. So an answer without the object is checked: only an object that is
    /// really not there counts as deleted.
    async fn delete(&self, path: &StoragePath) -> Result<u64, StorageError> {
        let url = format!("{}/object/{}", self.api, self.bucket);
        let request = self
            .http
            .delete(url)
            .json(&json!({ "prefixes": [path.as_str()] }));
        let response = self
            .authorized(request)
            .send()
            .await
            .map_err(|e| unreachable("delete", e))?;
        if !response.status().is_success() {
            let failure = Failure::read(response).await;
            if failure.is_no_such_key() {
                return Ok(0);
            }
            return Err(failure.into_error("delete", &self.bucket));
        }
        let removed: Vec<Removed> = response
            .json()
            .await
            .map_err(|e| unreachable("delete", e))?;
        let ours: Vec<&Removed> = removed
            .iter()
            .filter(|r| r.name.as_deref().is_none_or(|name| name == path.as_str()))
            .collect();
        if !ours.is_empty() {
            return Ok(ours.iter().filter_map(|r| r.metadata.as_ref()?.size).sum());
        }
        if self.exists(path).await? {
            return Err(StorageError::Refused(format!(
                "supabase delete: the server deleted nothing and {path} is still in bucket {:?}: \
                 the key may not delete it (row-level security); use the project's \
                 service_role key (SUPABASE_SERVICE_ROLE_KEY)",
                self.bucket
            )));
        }
        Ok(0)
    }

    fn url(&self, path: &StoragePath) -> String {
        join_url(&self.public_base_url, path)
    }

    async fn bucket(&self) -> Result<Option<BucketInfo>, StorageError> {
        let url = format!("{}/bucket/{}", self.api, self.bucket);
        let response = self
            .authorized(self.http.get(url))
            .send()
            .await
            .map_err(|e| unreachable("reading the bucket", e))?;
        if !response.status().is_success() {
            return Err(Failure::read(response)
                .await
                .into_error("reading the bucket", &self.bucket));
        }
        let bucket: Bucket = response
            .json()
            .await
            .map_err(|e| unreachable("reading the bucket", e))?;
        Ok(Some(BucketInfo {
            name: bucket.name.unwrap_or_else(|| self.bucket.clone()),
            public: bucket.public,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings(url: &str) -> StorageSettings {
        let mut storage = Settings::defaults().unwrap().storage;
        storage.supabase.url = url.to_owned();
        storage
    }

    fn secrets(key: &str) -> StorageSecrets {
        StorageSecrets {
            supabase_service_key: Some(SecretString::from(key)),
            ..StorageSecrets::default()
        }
    }

    #[test]
    fn public_urls_are_supabases_unless_configured() {
        let key = crate::job::CacheKey::parse(&"cd".repeat(32)).unwrap();
        let path = StoragePath::for_key(&key, chrono::Utc::now());
        let store =
            SupabaseStore::new(&settings("https://abcd.supabase.co/"), &secrets("k")).unwrap();
        assert_eq!(
            store.url(&path),
            format!("https://abcd.supabase.co/storage/v1/object/public/memoji-images/{path}")
        );
        let mut cdn = settings("https://abcd.supabase.co");
        cdn.public_base_url = "https://img.example.com".to_owned();
        let store = SupabaseStore::new(&cdn, &secrets("k")).unwrap();
        assert_eq!(store.url(&path), format!("https://img.example.com/{path}"));
    }

    #[test]
    fn refuses_a_missing_url_or_key_and_never_prints_the_key() {
        let no_url = SupabaseStore::new(&settings(""), &secrets("k")).unwrap_err();
        assert!(no_url.to_string().contains("SUPABASE_URL"), "{no_url}");
        let no_key = SupabaseStore::new(
            &settings("https://abcd.supabase.co"),
            &StorageSecrets::default(),
        )
        .unwrap_err();
        assert!(
            no_key.to_string().contains("SUPABASE_SERVICE_ROLE_KEY"),
            "{no_key}"
        );
        let store = SupabaseStore::new(
            &settings("https://abcd.supabase.co"),
            &secrets("service-role-secret"),
        )
        .unwrap();
        let printed = format!("{store:?}");
        assert!(!printed.contains("service-role-secret"), "{printed}");
    }

    #[test]
    fn refuses_a_url_that_already_ends_in_storage_v1() {
        for url in [
            "https://abcd.supabase.co/storage/v1",
            "https://abcd.supabase.co/storage/v1/",
        ] {
            let error = SupabaseStore::new(&settings(url), &secrets("k")).unwrap_err();
            let error = error.to_string();
            assert!(error.contains("ends in /storage/v1"), "{error}");
            assert!(error.contains("https://abcd.supabase.co"), "{error}");
        }
        // A gateway under a path of its own is fine.
        SupabaseStore::new(&settings("https://example.com/supabase"), &secrets("k")).unwrap();
    }
}
