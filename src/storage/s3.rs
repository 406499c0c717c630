//! The S3-compatible backend: AWS S3, MinIO, Cloudflare R2, Supabase's S3 endpoint — anything that
//! speaks the S3 protocol with SigV4 signatures.
//!
//! The protocol (signing, XML errors, retries of throttled or failed requests) is `object_store`'s,
//! the crate pict-rs and the Arrow ecosystem moved to; this file only maps settings onto it and its
//! errors onto [`StorageError`]. Two decisions are ours:
//! - credentials are static keys from the environment, never the AWS provider chain: the chain would
//!   ask instance-metadata endpoints on the network when keys are missing, and a missing key should
//!   stop the process at start with a clear message, not after the first miss;
//! - `object_store` retries a request at most twice, quickly: the worker retries a failed upload
//!   itself (`worker::lead`), so an outage fails a job in seconds, not minutes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutOptions,
    PutPayload, RetryConfig,
};
use secrecy::ExposeSecret;

use super::s3_http::ReqwestConnector;
use super::{ImageStore, SetupError, StorageError, StoragePath, Stored, join_url};
use crate::config::{S3Settings, StorageSecrets, StorageSettings};

/// `object_store`'s own attempts per request, beyond the first.
const REQUEST_RETRIES: usize = 2;

pub(crate) struct S3Store {
    store: Arc<dyn ObjectStore>,
    /// Where the bucket's objects live, e.g. `http://127.0.0.1:9000/memoji-images`.
    bucket_url: String,
    public_base_url: String,
    cache_control: String,
}

/// Only what locates the store: `object_store`'s client debug output carries the access key id.
impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket_url", &self.bucket_url)
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    pub(crate) fn new(
        settings: &StorageSettings,
        secrets: &StorageSecrets,
    ) -> Result<S3Store, SetupError> {
        let s3 = &settings.s3;
        if s3.bucket.is_empty() {
            return Err(SetupError::new("storage.s3.bucket is empty"));
        }
        let (Some(key_id), Some(secret)) =
            (&secrets.s3_access_key_id, &secrets.s3_secret_access_key)
        else {
            return Err(SetupError::new(format!(
                "the s3 backend needs credentials: set {} and {} (or {} and {})",
                StorageSecrets::S3_ACCESS_KEY_ID[0],
                StorageSecrets::S3_SECRET_ACCESS_KEY[0],
                StorageSecrets::S3_ACCESS_KEY_ID[1],
                StorageSecrets::S3_SECRET_ACCESS_KEY[1],
            )));
        };
        let bucket_url = bucket_url(s3)?;
        let timeout = settings.request_timeout();
        let connect_timeout = timeout.min(Duration::from_secs(5));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&s3.bucket)
            .with_region(&s3.region)
            .with_access_key_id(key_id.expose_secret())
            .with_secret_access_key(secret.expose_secret())
            // Client options first: they carry allow_http, which they would reset.
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(timeout)
                    .with_connect_timeout(connect_timeout),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: REQUEST_RETRIES,
                retry_timeout: timeout,
            })
            .with_allow_http(bucket_url.starts_with("http://"))
            .with_http_connector(ReqwestConnector::new(timeout, connect_timeout));
        // object_store takes a bucket-less endpoint for path style, and the bucket's own URL
        // for virtual-hosted style.
        builder = if s3.path_style {
            builder.with_endpoint(endpoint_or_aws(s3).trim_end_matches('/'))
        } else {
            builder
                .with_endpoint(&bucket_url)
                .with_virtual_hosted_style_request(true)
        };
        if let Some(token) = &secrets.s3_session_token {
            builder = builder.with_token(token.expose_secret());
        }
        let store = builder
            .build()
            .map_err(|e| SetupError::new(format!("the s3 backend: {e}")))?;
        let public_base_url = if settings.public_base_url.is_empty() {
            bucket_url.clone()
        } else {
            settings.public_base_url.clone()
        };
        Ok(S3Store {
            store: Arc::new(store),
            bucket_url,
            public_base_url,
            cache_control: settings.cache_control.clone(),
        })
    }

    fn location(path: &StoragePath) -> Result<Path, StorageError> {
        // `StoragePath`s hold only `[0-9a-z_-]` segments, which object_store takes as they are.
        Path::parse(path.as_str()).map_err(|e| StorageError::Backend(format!("object key: {e}")))
    }
}

fn endpoint_or_aws(s3: &S3Settings) -> String {
    if s3.endpoint.is_empty() {
        format!("https://s3.{}.amazonaws.com", s3.region)
    } else {
        s3.endpoint.clone()
    }
}

/// The URL of the bucket's root, in the configured addressing style.
fn bucket_url(s3: &S3Settings) -> Result<String, SetupError> {
    let endpoint = endpoint_or_aws(s3);
    let parsed = url::Url::parse(&endpoint)
        .map_err(|e| SetupError::new(format!("storage.s3.endpoint {endpoint:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(SetupError::new(format!(
            "storage.s3.endpoint {endpoint:?}: not an http(s) URL"
        )));
    }
    if s3.path_style {
        return Ok(format!("{}/{}", endpoint.trim_end_matches('/'), s3.bucket));
    }
    let host = parsed.host_str().unwrap_or_default();
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = parsed.path().trim_end_matches('/');
    Ok(format!(
        "{}://{}.{host}{port}{path}",
        parsed.scheme(),
        s3.bucket
    ))
}

/// A refused key or a missing bucket is [`StorageError::Refused`] (no retry changes it); the
/// rest may work later.
fn backend(what: &str, error: object_store::Error) -> StorageError {
    let refused = no_such_bucket(&error)
        || matches!(
            error,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        );
    let text = format!("s3 {what}: {error}");
    if refused {
        StorageError::Refused(text)
    } else {
        StorageError::Backend(text)
    }
}

/// S3 answers a missing bucket with 404 and `<Code>NoSuchBucket</Code>`, which `object_store`
/// reports as `NotFound`, like a missing object: only the body (kept in the error's text) tells
/// them apart. (A HEAD has no body, so after a HEAD's 404 only a second request can tell.)
fn no_such_bucket(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotFound { .. })
        && error.to_string().contains("<Code>NoSuchBucket</Code>")
}

#[async_trait]
impl ImageStore for S3Store {
    async fn put(&self, path: &StoragePath, png: Bytes) -> Result<Stored, StorageError> {
        let location = Self::location(path)?;
        let bytes = png.len() as u64;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "image/png".into());
        attributes.insert(Attribute::CacheControl, self.cache_control.clone().into());
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        // A single PUT: S3 answers 200 only once the object is durable.
        self.store
            .put_opts(&location, PutPayload::from_bytes(png), options)
            .await
            .map_err(|e| backend("upload", e))?;
        Ok(Stored {
            path: path.clone(),
            url: self.url(path),
            bytes,
        })
    }

    async fn get(&self, path: &StoragePath) -> Result<Option<Bytes>, StorageError> {
        let location = Self::location(path)?;
        match self.store.get(&location).await {
            Ok(found) => found
                .bytes()
                .await
                .map(Some)
                .map_err(|e| backend("download", e)),
            Err(e @ object_store::Error::NotFound { .. }) if !no_such_bucket(&e) => Ok(None),
            Err(e) => Err(backend("download", e)),
        }
    }

    async fn delete(&self, path: &StoragePath) -> Result<u64, StorageError> {
        let location = Self::location(path)?;
        // S3's DELETE says nothing about what it removed; HEAD first for the bytes freed. A
        // HEAD's 404 cannot tell a missing object from a missing bucket, so the DELETE is sent
        // all the same: it answers 204 for a missing object, and NoSuchBucket for the other.
        let size = match self.store.head(&location).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => 0,
            Err(e) => return Err(backend("looking up the object", e)),
        };
        match self.store.delete(&location).await {
            Ok(()) => Ok(size),
            Err(e @ object_store::Error::NotFound { .. }) if !no_such_bucket(&e) => Ok(0),
            Err(e) => Err(backend("delete", e)),
        }
    }

    fn url(&self, path: &StoragePath) -> String {
        join_url(&self.public_base_url, path)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::config::Settings;

    fn settings(endpoint: &str, path_style: bool) -> StorageSettings {
        let mut storage = Settings::defaults().unwrap().storage;
        storage.s3 = S3Settings {
            endpoint: endpoint.to_owned(),
            region: "eu-west-1".to_owned(),
            bucket: "pics".to_owned(),
            path_style,
        };
        storage
    }

    fn secrets() -> StorageSecrets {
        StorageSecrets {
            s3_access_key_id: Some(SecretString::from("AKIDEXAMPLE")),
            s3_secret_access_key: Some(SecretString::from("wJalrXUtnFEMI-very-secret")),
            s3_session_token: Some(SecretString::from("session-token-secret")),
            supabase_service_key: None,
        }
    }

    #[test]
    fn bucket_urls_follow_the_addressing_style() {
        let cases = [
            ("http://127.0.0.1:9000", true, "http://127.0.0.1:9000/pics"),
            ("http://127.0.0.1:9000/", true, "http://127.0.0.1:9000/pics"),
            (
                "https://abc.supabase.co/storage/v1/s3",
                true,
                "https://abc.supabase.co/storage/v1/s3/pics",
            ),
            (
                "https://acct.r2.cloudflarestorage.com",
                false,
                "https://pics.acct.r2.cloudflarestorage.com",
            ),
            ("", false, "https://pics.s3.eu-west-1.amazonaws.com"),
            ("", true, "https://s3.eu-west-1.amazonaws.com/pics"),
        ];
        for (endpoint, path_style, expected) in cases {
            let s3 = settings(endpoint, path_style).s3;
            assert_eq!(
                bucket_url(&s3).unwrap(),
                expected,
                "{endpoint} {path_style}"
            );
        }
        assert!(bucket_url(&settings("ftp://x", true).s3).is_err());
        assert!(bucket_url(&settings("not a url", true).s3).is_err());
    }

    #[test]
    fn image_urls_default_to_the_bucket_and_follow_public_base_url() {
        let key = crate::job::CacheKey::parse(&"ab".repeat(32)).unwrap();
        let path = StoragePath::for_key(&key, chrono::Utc::now());
        let store = S3Store::new(&settings("http://127.0.0.1:9000", true), &secrets()).unwrap();
        assert_eq!(
            store.url(&path),
            format!("http://127.0.0.1:9000/pics/{path}")
        );
        let mut with_cdn = settings("http://127.0.0.1:9000", true);
        with_cdn.public_base_url = "https://cdn.example.com/avatars/".to_owned();
        let store = S3Store::new(&with_cdn, &secrets()).unwrap();
        assert_eq!(
            store.url(&path),
            format!("https://cdn.example.com/avatars/{path}")
        );
    }

    #[test]
    fn missing_credentials_are_named_and_secrets_never_printed() {
        let error = S3Store::new(
            &settings("http://127.0.0.1:9000", true),
            &StorageSecrets::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("MEMOJI_S3_ACCESS_KEY_ID") && error.contains("AWS_SECRET_ACCESS_KEY"),
            "{error}"
        );
        let store = S3Store::new(&settings("http://127.0.0.1:9000", true), &secrets()).unwrap();
        let printed = format!("{store:?}");
        assert!(
            !printed.contains("AKIDEXAMPLE")
                && !printed.contains("very-secret")
                && !printed.contains("session-token"),
            "{printed}"
        );
    }
}
