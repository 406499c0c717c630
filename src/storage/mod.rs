//! Object storage for generated images (CONTRACT.md §5).
//!
//! Paths are `YYYY/MM/<hash>.png`, built only from a [`CacheKey`] the worker computed, never from
//! text in a job. Stored objects are immutable (served with a year-long `immutable` lifetime): an
//! image that replaces another (`force_refresh`), and a variant (`cache.variants`), gets a path of its own, `YYYY/MM/<hash>-<n>.png`. Every image is checked ([`check_png`]) before any backend sees it. Backends sit
//! behind [`ImageStore`], chosen by `storage.kind`:
//! - `local` writes to a directory that the admin API serves at `/images/…`;
//! - `s3` speaks the S3 protocol (AWS S3, MinIO, R2, Supabase's S3 endpoint);
//! - `supabase` uses Supabase Storage's REST API, as the JavaScript system did.
//!
//! Whatever the backend, an upload has returned before the cache row naming it is written
//! (`worker::lead`), and [`check::run`] proves a configuration end to end.

pub mod check;
mod local;
mod s3;
mod s3_http;
mod supabase;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Datelike, TimeZone, Utc};

pub use local::LocalStore;
pub(crate) use s3::S3Store;
pub(crate) use supabase::SupabaseStore;

use crate::config::{StorageKind, StorageSecrets, StorageSettings};
use crate::job::CacheKey;

/// Largest image stored.
pub(crate) const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// `image_url`'s prefix for the local backend when `storage.public_base_url` is empty.
pub(crate) const LOCAL_PUBLIC_BASE_URL: &str = "http://127.0.0.1:8080/images";
/// The first segment of every check object; no cache path starts with anything but a year.
const CHECK_PREFIX: &str = "_memoji-check";

/// Where an image lives inside a store: `YYYY/MM/<hash>.png`, or `YYYY/MM/<hash>-<n>.png` for
/// the key's other images — those that replaced its first, and its variants (CONTRACT.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoragePath(String);

impl StoragePath {
    /// The path for a key's first image, generated at `at` (UTC).
    pub fn for_key(key: &CacheKey, at: DateTime<Utc>) -> StoragePath {
        StoragePath::revision(key, at, 0)
    }

    /// The path for the key's `n`th replacement image (0: the first image).
    pub(crate) fn revision(key: &CacheKey, at: DateTime<Utc>, n: u32) -> StoragePath {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("-{n}")
        };
        StoragePath(format!(
            "{:04}/{:02}/{key}{suffix}.png",
            at.year(),
            at.month()
        ))
    }

    /// The path for an image that replaces the one at `current` (the key's entry's path, if it
    /// has one): the next revision number, so no served object is ever written again.
    pub(crate) fn replacing(
        key: &CacheKey,
        at: DateTime<Utc>,
        current: Option<&str>,
    ) -> StoragePath {
        let n = current
            .and_then(StoragePath::parse)
            .map_or(0, |path| path.revision_number());
        StoragePath::revision(key, at, n.saturating_add(1))
    }

    /// The path of a `bypass` job's image, `YYYY/MM/<hash>-j<job id as 32 hex digits>.png`:
    /// never a cache entry's (those end in a number), one per job, so it is immutable too.
    pub fn for_bypass(key: &CacheKey, at: DateTime<Utc>, job: crate::job::JobId) -> StoragePath {
        StoragePath(format!(
            "{:04}/{:02}/{key}-j{}.png",
            at.year(),
            at.month(),
            job.0.simple()
        ))
    }

    /// This path, or the first after it in its key's and month's `<hash>-<n>.png` numbering that
    /// `taken` does not refuse: where an image of a key that may have several (a replacement, a
    /// variant) goes without meeting another one's object.
    pub fn first_free(&self, taken: impl Fn(&StoragePath) -> bool) -> StoragePath {
        let mut path = self.clone();
        let mut n = self.revision_number();
        // `YYYY/MM/<hash>`: what every number of this path's key and month shares.
        let stem = self
            .0
            .strip_suffix(".png")
            .map(|stem| stem.split_once('-').map_or(stem, |(hash, _)| hash))
            .unwrap_or(&self.0)
            .to_owned();
        while taken(&path) && n < u32::MAX {
            n += 1;
            path = StoragePath(format!("{stem}-{n}.png"));
        }
        path
    }

    /// 0 for a key's first image, `n` for `<hash>-<n>.png`.
    pub(crate) fn revision_number(&self) -> u32 {
        self.0
            .strip_suffix(".png")
            .and_then(|stem| stem.rsplit_once('/'))
            .and_then(|(_, file)| file.split_once('-'))
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    }

    /// The `YYYY/MM/<hash>.png` tail of an image URL, for cache rows imported without a storage
    /// path.
    pub(crate) fn in_url(url: &str) -> Option<StoragePath> {
        let parts: Vec<&str> = url.rsplitn(4, '/').collect();
        let tail = format!("{}/{}/{}", parts.get(2)?, parts.get(1)?, parts.first()?);
        StoragePath::parse(&tail)
    }

    /// Accepts only the exact shapes `for_key` and `revision` produce, so a parsed path can never
    /// leave its store.
    pub fn parse(text: &str) -> Option<StoragePath> {
        let mut parts = text.split('/');
        let (year, month, file) = (parts.next()?, parts.next()?, parts.next()?);
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let month_ok = digits(month, 2) && (1..=12).contains(&month.parse::<u32>().ok()?);
        let stem = file.strip_suffix(".png")?;
        let (hash, n) = match stem.split_once('-') {
            None => (stem, 0),
            Some((hash, job)) if job.starts_with('j') => {
                let job = &job[1..];
                let hex =
                    job.len() == 32 && job.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                let key = CacheKey::parse(hash)?;
                let id = uuid::Uuid::parse_str(job).ok().filter(|_| hex)?;
                let year = year.parse::<i32>().ok().filter(|_| digits(year, 4))?;
                let at = Utc
                    .with_ymd_and_hms(year, month.parse().ok()?, 1, 0, 0, 0)
                    .single()?;
                return (parts.next().is_none() && month_ok)
                    .then(|| StoragePath::for_bypass(&key, at, crate::job::JobId(id)));
            }
            Some((hash, n)) => {
                let canonical = !n.is_empty()
                    && n.len() <= 9
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && !n.starts_with('0');
                (
                    hash,
                    if canonical {
                        n.parse().ok()?
                    } else {
                        return None;
                    },
                )
            }
        };
        let key = CacheKey::parse(hash)?;
        let year = year.parse::<i32>().ok().filter(|_| digits(year, 4))?;
        let month: u32 = month.parse().ok()?;
        let at = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()?;
        (parts.next().is_none() && month_ok).then(|| StoragePath::revision(&key, at, n))
    }

    /// A fresh path for `storage check`'s probe object: `_memoji-check/<uuid>.png`. Its first
    /// segment is not a year, so it can never equal a cache path, and [`StoragePath::parse`]
    /// refuses it, so it is never served or cleaned up as an image.
    pub(crate) fn check_object() -> StoragePath {
        StoragePath(format!(
            "{CHECK_PREFIX}/{}.png",
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// The path as text: `<YYYY>/<MM>/<hash>.png`, relative to the store's root.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a storage operation failed, and whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The image itself is unfit to store; retrying will not help.
    #[error("image rejected: {0}")]
    Invalid(String),
    /// The backend failed; it may work later.
    #[error("storage backend: {0}")]
    Backend(String),
    /// The backend refused in a way no retry changes (credentials, permissions, a missing bucket,
    /// a wrong URL): only a configuration change helps.
    #[error("storage backend refused: {0}")]
    Refused(String),
}

/// A stored image: where it is, the URL that serves it, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Where it is in the store.
    pub(crate) path: StoragePath,
    /// The public URL that serves it (`image_url`).
    pub url: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A place images are kept.
#[async_trait]
pub trait ImageStore: Send + Sync + fmt::Debug {
    /// Stores `png` at `path`; returns once it is durable. The worker never puts other bytes at a
    /// path an entry has served (new images get new paths), so a put only ever creates an object
    /// or rewrites one nobody has seen.
    async fn put(&self, path: &StoragePath, png: Bytes) -> Result<Stored, StorageError>;
    /// Reads an image back, `None` when absent.
    async fn get(&self, path: &StoragePath) -> Result<Option<Bytes>, StorageError>;
    /// Removes an image; absent is fine. Returns the bytes freed where known.
    async fn delete(&self, path: &StoragePath) -> Result<u64, StorageError>;
    /// The public URL of a path.
    fn url(&self, path: &StoragePath) -> String;
    /// The bucket as the backend describes it, for `storage check`; `None` where it cannot tell.
    async fn bucket(&self) -> Result<Option<BucketInfo>, StorageError> {
        Ok(None)
    }
}

/// What a backend says about its bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// The bucket's name.
    pub(crate) name: String,
    /// Readable by anyone: the backend's own public URLs open.
    pub(crate) public: bool,
}

/// A configuration that cannot make a backend: a missing credential, a malformed URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

impl SetupError {
    pub(crate) fn new(message: impl Into<String>) -> SetupError {
        SetupError(message.into())
    }
}

/// Builds the configured backend. Touches no network: a store that is down at start delays
/// uploads (which fail their jobs with `storage_failed`), it does not stop the worker; use
/// `memoji-worker storage check` to try one.
pub fn from_settings(
    settings: &StorageSettings,
    secrets: &StorageSecrets,
) -> Result<Arc<dyn ImageStore>, SetupError> {
    Ok(match settings.kind {
        StorageKind::Local => {
            let base = if settings.public_base_url.is_empty() {
                LOCAL_PUBLIC_BASE_URL.to_owned()
            } else {
                settings.public_base_url.clone()
            };
            Arc::new(LocalStore::new(settings.local_dir.clone(), base))
        }
        StorageKind::S3 => Arc::new(S3Store::new(settings, secrets)?),
        StorageKind::Supabase => Arc::new(SupabaseStore::new(settings, secrets)?),
    })
}

/// Refuses anything that is not a PNG of at most [`MAX_IMAGE_BYTES`] with a readable header.
pub fn check_png(bytes: &[u8]) -> Result<(u32, u32), StorageError> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(StorageError::Invalid(format!(
            "image is {} bytes; at most {MAX_IMAGE_BYTES} are stored",
            bytes.len()
        )));
    }
    if !bytes.starts_with(&PNG_SIGNATURE) {
        return Err(StorageError::Invalid(
            "not a PNG (bad signature)".to_owned(),
        ));
    }
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder
        .read_info()
        .map_err(|e| StorageError::Invalid(format!("unreadable PNG: {e}")))?;
    let info = reader.info();
    Ok((info.width, info.height))
}

/// `base/path`, with exactly one slash between.
pub(crate) fn join_url(base: &str, path: &StoragePath) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";

    #[test]
    fn paths_are_year_month_hash() {
        let key = CacheKey::parse(KEY).unwrap();
        let at = DateTime::parse_from_rfc3339("2026-03-31T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let path = StoragePath::for_key(&key, at);
        assert_eq!(path.as_str(), format!("2026/03/{KEY}.png"));
        assert_eq!(StoragePath::parse(path.as_str()), Some(path));
    }

    #[test]
    fn finds_the_storage_path_in_an_imported_url() {
        let url = format!(
            "https://x.supabase.co/storage/v1/object/public/memoji-images/2025/07/{KEY}.png"
        );
        let path = StoragePath::in_url(&url).map(|p| p.to_string());
        assert_eq!(path, Some(format!("2025/07/{KEY}.png")));
        assert_eq!(
            StoragePath::in_url("https://cdn.example.com/avatar.png"),
            None
        );
    }

    #[test]
    fn a_replacement_gets_the_next_revision_path() {
        let key = CacheKey::parse(KEY).unwrap();
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let first = format!("2026/11/{KEY}.png");
        let second = StoragePath::replacing(&key, at, Some(&first));
        assert_eq!(second.as_str(), format!("2026/12/{KEY}-1.png"));
        assert_eq!(second.revision_number(), 1);
        assert_eq!(StoragePath::parse(second.as_str()), Some(second.clone()));
        let third = StoragePath::replacing(&key, at, Some(second.as_str()));
        assert_eq!(third.as_str(), format!("2026/12/{KEY}-2.png"));
        // An entry imported without a path still never gets its image overwritten.
        assert_eq!(
            StoragePath::replacing(&key, at, None).as_str(),
            format!("2026/12/{KEY}-1.png")
        );
    }

    #[test]
    fn a_bypass_image_has_a_path_no_cache_entry_has() {
        let key = CacheKey::parse(&"ab".repeat(32)).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let job = crate::job::JobId(uuid::Uuid::from_u128(
            0x0b6f6f0e_3f5e_4c55_9d36_0f2b8e4a7f10,
        ));
        let path = StoragePath::for_bypass(&key, at, job);
        assert_eq!(
            path.as_str(),
            format!("2026/12/{key}-j0b6f6f0e3f5e4c559d360f2b8e4a7f10.png")
        );
        assert_eq!(StoragePath::parse(path.as_str()), Some(path.clone()));
        assert_ne!(path, StoragePath::for_key(&key, at));
        for broken in [
            format!("2026/12/{key}-j0b6f6f0e3f5e4c559d360f2b8e4a7f1.png"),
            format!("2026/12/{key}-j0B6F6F0E3F5E4C559D360F2B8E4A7F10.png"),
            format!("2026/12/{key}-j0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10.png"),
            format!("2026/13/{key}-j0b6f6f0e3f5e4c559d360f2b8e4a7f10.png"),
        ] {
            assert_eq!(StoragePath::parse(&broken), None, "{broken}");
        }
    }

    #[test]
    fn the_first_free_path_skips_the_taken_ones() {
        let key = CacheKey::parse(KEY).unwrap();
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let second = StoragePath::revision(&key, at, 2);
        assert_eq!(second.first_free(|_| false), second);
        let taken = [
            format!("2026/12/{KEY}-2.png"),
            format!("2026/12/{KEY}-3.png"),
            format!("2026/11/{KEY}-4.png"),
        ];
        let free = second.first_free(|path| taken.iter().any(|t| t == path.as_str()));
        assert_eq!(free.as_str(), format!("2026/12/{KEY}-4.png"));
        assert_eq!(StoragePath::parse(free.as_str()), Some(free.clone()));
        let first = StoragePath::for_key(&key, at);
        let next = first.first_free(|path| path == &first);
        assert_eq!(next.as_str(), format!("2026/12/{KEY}-1.png"));
    }

    #[test]
    fn parse_refuses_anything_else() {
        for bad in [
            format!("2026/13/{KEY}.png"),
            format!("2026/3/{KEY}.png"),
            format!("../03/{KEY}.png"),
            format!("2026/03/{KEY}.jpg"),
            format!("2026/03/{KEY}-0.png"),
            format!("2026/03/{KEY}-01.png"),
            format!("2026/03/{KEY}-.png"),
            format!("2026/03/{KEY}-1-2.png"),
            format!("2026/03/{KEY}--1.png"),
            format!("2026/03/{KEY}.png/x"),
            "2026/03/..%2f..%2fetc.png".to_owned(),
        ] {
            assert_eq!(StoragePath::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn check_objects_never_look_like_cache_paths() {
        let a = StoragePath::check_object();
        let b = StoragePath::check_object();
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("_memoji-check/") && a.as_str().ends_with(".png"));
        assert_eq!(StoragePath::parse(a.as_str()), None);
    }

    #[test]
    fn the_configured_kind_is_built() {
        let mut settings = crate::config::Settings::defaults().unwrap().storage;
        let secrets = StorageSecrets::default();
        let key = CacheKey::parse(KEY).unwrap();
        let path = StoragePath::for_key(&key, Utc::now());
        let local = from_settings(&settings, &secrets).unwrap();
        assert_eq!(
            local.url(&path),
            format!("http://127.0.0.1:8080/images/{path}")
        );
        settings.kind = StorageKind::S3;
        let error = from_settings(&settings, &secrets).unwrap_err();
        assert!(error.to_string().contains("AWS_ACCESS_KEY_ID"), "{error}");
        settings.kind = StorageKind::Supabase;
        settings.supabase.url = "http://127.0.0.1:1".to_owned();
        let error = from_settings(&settings, &secrets).unwrap_err();
        assert!(error.to_string().contains("SERVICE_ROLE_KEY"), "{error}");
    }

    #[test]
    fn png_check_rejects_what_is_not_a_png() {
        assert!(matches!(
            check_png(b"GIF89a....."),
            Err(StorageError::Invalid(_))
        ));
        let mut truncated = PNG_SIGNATURE.to_vec();
        truncated.extend_from_slice(b"\0\0\0\rIHDR");
        assert!(matches!(
            check_png(&truncated),
            Err(StorageError::Invalid(_))
        ));
        let mut huge = PNG_SIGNATURE.to_vec();
        huge.resize(MAX_IMAGE_BYTES + 1, 0);
        let err = check_png(&huge).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
    }
}
