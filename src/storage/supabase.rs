//! The Supabase Storage backend, through its REST API — the API the JavaScript system used, so
//! existing buckets and public URLs carry over unchanged.
//!
//! Endpoints (Supabase Storage's documented object API, under `<url>/storage/v1`):
//! - upload: `POST /object/{bucket}/{path}` with `x-upsert: true`, so a regeneration
//!   (`force_refresh`, a retried upload) replaces the object instead of failing as a duplicate;
//! - read: `GET /object/authenticated/{bucket}/{path}`; the public URL is
//!   `GET /object/public/{bucket}/{path}`;
//! - delete: `DELETE /object/{bucket}` with `{"prefixes": [path]}`, which answers with the objects
//!   it removed (and their sizes), and with nothing when the object was already gone.
//!
//! Every request carries the service role key twice, as Supabase's gateway wants: as
//! `Authorization: Bearer` and as `apikey`. The key is a [`SecretString`] and never leaves a header.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{ImageStore, SetupError, StorageError, StoragePath, Stored, join_url};
use crate::config::{StorageSecrets, StorageSettings};

pub struct SupabaseStore {
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
    pub fn new(
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

/// Supabase's error body: `{"statusCode": "404", "error": "not_found", "message": "Object not found"}`
/// (`statusCode` is a string, and older servers answer a missing object with HTTP 400 and it).
#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(rename = "statusCode", default)]
    status_code: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl ApiError {
    async fn read(response: Response) -> (StatusCode, ApiError) {
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    fn is_not_found(&self, status: StatusCode) -> bool {
        let code = self.status_code.as_ref().map(|c| match c {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        status == StatusCode::NOT_FOUND
            || code.as_deref() == Some("404")
            || self.error.as_deref() == Some("not_found")
    }

    fn into_error(self, what: &str, status: StatusCode) -> StorageError {
        let detail = [self.error, self.message]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        let detail: String = detail.chars().take(300).collect();
        StorageError::Backend(format!("supabase {what}: HTTP {status} {detail}"))
    }
}

fn unreachable(what: &str, error: reqwest::Error) -> StorageError {
    // reqwest's message names the URL (no secret in it) and the cause: refused, timed out, …
    StorageError::Backend(format!("supabase {what}: {error}"))
}

#[derive(Debug, Deserialize)]
struct Removed {
    #[serde(default)]
    metadata: Option<RemovedMetadata>,
}

#[derive(Debug, Deserialize)]
struct RemovedMetadata {
    #[serde(default)]
    size: Option<u64>,
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
            let (status, error) = ApiError::read(response).await;
            return Err(error.into_error("upload", status));
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
        let (status, error) = ApiError::read(response).await;
        if error.is_not_found(status) {
            return Ok(None);
        }
        Err(error.into_error("download", status))
    }

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
            let (status, error) = ApiError::read(response).await;
            if error.is_not_found(status) {
                return Ok(0);
            }
            return Err(error.into_error("delete", status));
        }
        let removed: Vec<Removed> = response
            .json()
            .await
            .map_err(|e| unreachable("delete", e))?;
        Ok(removed
            .iter()
            .filter_map(|r| r.metadata.as_ref()?.size)
            .sum())
    }

    fn url(&self, path: &StoragePath) -> String {
        join_url(&self.public_base_url, path)
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
    fn recognises_supabases_ways_of_saying_not_found() {
        let parse = |body: &str| serde_json::from_str::<ApiError>(body).unwrap();
        let old = parse(r#"{"statusCode":"404","error":"not_found","message":"Object not found"}"#);
        assert!(old.is_not_found(StatusCode::BAD_REQUEST));
        assert!(ApiError::default().is_not_found(StatusCode::NOT_FOUND));
        let denied = parse(r#"{"statusCode":"403","error":"Unauthorized","message":"jwt"}"#);
        assert!(!denied.is_not_found(StatusCode::BAD_REQUEST));
        let message = denied
            .into_error("upload", StatusCode::BAD_REQUEST)
            .to_string();
        assert_eq!(
            message,
            "storage backend: supabase upload: HTTP 400 Bad Request Unauthorized: jwt"
        );
    }
}
