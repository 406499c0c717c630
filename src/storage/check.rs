//! `memoji-worker storage check`: proves the configured backend works end to end before a real
//! job finds out it does not — credentials, bucket, permissions to write, read and delete.
//!
//! It writes a tiny PNG at [`StoragePath::check_object`] (a path no cache key can ever take, so a
//! check can never overwrite or delete a real image), reads it back, compares, deletes it and
//! confirms it is gone. Each step is reported, so a failure says which permission is missing.
//!
//! Where the backend can describe its bucket (supabase: `GET /bucket/{id}`), that comes first: a
//! missing bucket fails the check before anything is written.
//!
//! For remote backends it also fetches the object's public URL while it exists: a bucket that is
//! not public stores fine but hands users URLs that do not open, which only a look from outside
//! shows. That finding is a warning, not a failure — a CDN in front may answer differently —
//! except when the backend itself says the bucket is private and the URL does not serve: then
//! the check fails.
//!
//! The delete is checked too (the backend's `delete` fails when the object stays; the check then
//! reads it once more), so a key that may write but not delete fails here, not in the cleanup.

use std::fmt;

use bytes::Bytes;

use super::{BucketInfo, ImageStore, StorageError, StoragePath, check_png};

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Where the probe object was written.
    pub(crate) path: StoragePath,
    /// The URL the object had while it existed.
    pub url: String,
    /// The probe object's size in bytes.
    pub bytes: u64,
    /// Bytes the backend said it freed on delete (0 when it cannot tell).
    pub(crate) freed: u64,
    /// What fetching `url` anonymously gave, when it was tried.
    pub(crate) public: Option<PublicUrl>,
    /// The bucket, where the backend describes it.
    pub(crate) bucket: Option<BucketInfo>,
}

/// The answer to an anonymous GET of the probe object's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicUrl {
    /// It served the very bytes written.
    Serves,
    /// It answered, but not with the image: the status (or "different bytes").
    Refuses(String),
    /// It did not answer at all.
    Unreachable(String),
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.bucket {
            None => {}
            Some(BucketInfo { name, public: true }) => {
                writeln!(f, "bucket  {name} exists and is public")?;
            }
            Some(BucketInfo { name, .. }) => writeln!(
                f,
                "bucket  {name} exists and is private (its url serves through \
                 storage.public_base_url)"
            )?,
        }
        writeln!(f, "wrote   {} ({} bytes)", self.path, self.bytes)?;
        writeln!(f, "url     {}", self.url)?;
        writeln!(f, "read    the same {} bytes back", self.bytes)?;
        match &self.public {
            None => {}
            Some(PublicUrl::Serves) => writeln!(f, "public  the url serves the image")?,
            Some(PublicUrl::Refuses(why) | PublicUrl::Unreachable(why)) => writeln!(
                f,
                "WARNING the url does not serve the image ({why}): image_url will not open for \
                 users; make the bucket publicly readable or set storage.public_base_url"
            )?,
        }
        write!(f, "deleted it ({} bytes freed), and it is gone", self.freed)
    }
}

/// Why a storage check failed: the step that failed, and what the backend said.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Describing the bucket failed.
    #[error("reading the bucket failed: {0}")]
    Bucket(StorageError),
    #[error(
        "bucket {bucket} is not public, and {url} does not serve the image ({why}): users could \
         not open image_url; make the bucket public, or set storage.public_base_url to a URL \
         that serves it"
    )]
    /// The bucket is private and the object's URL does not serve the image.
    Private {
        /// The bucket's name.
        bucket: String,
        /// The URL that was tried.
        url: String,
        /// What fetching it gave.
        why: String,
    },
    #[error("writing {path} failed: {error}")]
    /// Writing the probe object failed.
    Write {
        /// The probe's path.
        path: StoragePath,
        /// The backend's error.
        error: StorageError,
    },
    #[error("reading {path} back failed: {error}")]
    /// Reading the probe object back failed.
    Read {
        /// The probe's path.
        path: StoragePath,
        /// The backend's error.
        error: StorageError,
    },
    #[error("{path} was written but reading it back found nothing")]
    /// The probe object was written but reading it back found nothing.
    Missing {
        /// The probe's path.
        path: StoragePath,
    },
    #[error("{path} read back {got} bytes that differ from the {sent} written")]
    /// The probe object read back differs from what was written.
    Differs {
        /// The probe's path.
        path: StoragePath,
        /// Bytes written.
        sent: usize,
        /// Bytes read back.
        got: usize,
    },
    #[error("deleting {path} failed: {error}")]
    /// Deleting the probe object failed.
    Delete {
        /// The probe's path.
        path: StoragePath,
        /// The backend's error.
        error: StorageError,
    },
    #[error("{path} is still there after it was deleted")]
    /// The probe object is still there after it was deleted.
    Undeleted {
        /// The probe's path.
        path: StoragePath,
    },
}

/// A 1×1 PNG, unique per check so a stale read can't pass for a fresh one.
fn probe_png() -> Result<Bytes, StorageError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let stamp = uuid::Uuid::new_v4().to_string();
        encoder
            .add_text_chunk("memoji-check".to_owned(), stamp)
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        let mut writer = encoder
            .write_header()
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
        writer
            .write_image_data(&[0x5b, 0x9b, 0xd5, 0xff])
            .map_err(|e| StorageError::Invalid(e.to_string()))?;
    }
    check_png(&out)?;
    Ok(Bytes::from(out))
}

/// Fetches `url` without credentials and says whether it serves `png`.
async fn fetch_public(url: &str, png: &[u8]) -> PublicUrl {
    let http = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(error) => return PublicUrl::Unreachable(error.to_string()),
    };
    let response = match http.get(url).send().await {
        Ok(response) => response,
        Err(error) => return PublicUrl::Unreachable(error.to_string()),
    };
    let status = response.status();
    if !status.is_success() {
        return PublicUrl::Refuses(format!("HTTP {status}"));
    }
    match response.bytes().await {
        Ok(body) if body.as_ref() == png => PublicUrl::Serves,
        Ok(_) => PublicUrl::Refuses(format!("HTTP {status} with different bytes")),
        Err(error) => PublicUrl::Unreachable(error.to_string()),
    }
}

/// Writes, reads back, compares and deletes one object, and with `fetch_url` also fetches the
/// object's URL anonymously (not for `local`: the admin API serves only real image paths, and may
/// not be running). Cleans up after itself on failure where it can.
pub async fn run(store: &dyn ImageStore, fetch_url: bool) -> Result<CheckReport, CheckError> {
    let bucket = store.bucket().await.map_err(CheckError::Bucket)?;
    let path = StoragePath::check_object();
    let png = probe_png().map_err(|error| CheckError::Write {
        path: path.clone(),
        error,
    })?;
    let stored = store
        .put(&path, png.clone())
        .await
        .map_err(|error| CheckError::Write {
            path: path.clone(),
            error,
        })?;
    let verified = async {
        match store.get(&path).await {
            Err(error) => Err(CheckError::Read {
                path: path.clone(),
                error,
            }),
            Ok(None) => Err(CheckError::Missing { path: path.clone() }),
            Ok(Some(back)) if back != png => Err(CheckError::Differs {
                path: path.clone(),
                sent: png.len(),
                got: back.len(),
            }),
            Ok(Some(_)) => Ok(()),
        }
    }
    .await;
    if let Err(error) = verified {
        let _ = store.delete(&path).await;
        return Err(error);
    }
    let public = if fetch_url {
        Some(fetch_public(&stored.url, &png).await)
    } else {
        None
    };
    if let (Some(info), Some(PublicUrl::Refuses(why) | PublicUrl::Unreachable(why))) =
        (&bucket, &public)
        && !info.public
    {
        let _ = store.delete(&path).await;
        return Err(CheckError::Private {
            bucket: info.name.clone(),
            url: stored.url,
            why: why.clone(),
        });
    }
    let freed = store
        .delete(&path)
        .await
        .map_err(|error| CheckError::Delete {
            path: path.clone(),
            error,
        })?;
    match store.get(&path).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(CheckError::Undeleted { path }),
        Err(error) => return Err(CheckError::Read { path, error }),
    }
    Ok(CheckReport {
        url: stored.url,
        bytes: stored.bytes,
        path,
        freed,
        public,
        bucket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStore;

    #[tokio::test]
    async fn passes_on_a_working_store_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned(), "http://host/images".to_owned());
        let report = run(&store, false).await.unwrap();
        assert!(report.path.as_str().starts_with("_memoji-check/"));
        assert_eq!(report.freed, report.bytes);
        assert!(report.url.starts_with("http://host/images/_memoji-check/"));
        let left: Vec<_> = walk(dir.path());
        assert!(left.is_empty(), "not even an empty directory: {left:?}");
        assert!(report.to_string().contains("it is gone"));
    }

    #[tokio::test]
    async fn keeps_the_check_directory_while_another_check_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("_memoji-check/another-check.png");
        std::fs::create_dir_all(other.parent().unwrap()).unwrap();
        std::fs::write(&other, b"in flight").unwrap();
        let store = LocalStore::new(dir.path().to_owned(), "http://host/images".to_owned());
        run(&store, false).await.unwrap();
        assert_eq!(
            walk(dir.path()),
            vec![other.parent().unwrap().to_owned(), other]
        );
    }

    #[tokio::test]
    async fn says_which_step_failed() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be: the write fails.
        std::fs::write(dir.path().join("_memoji-check"), b"in the way").unwrap();
        let store = LocalStore::new(dir.path().to_owned(), "http://host/images".to_owned());
        let error = run(&store, false).await.unwrap_err().to_string();
        assert!(error.starts_with("writing _memoji-check/"), "{error}");
    }

    /// Every file and directory under `dir`.
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            found.push(entry.path());
            if entry.path().is_dir() {
                found.extend(walk(&entry.path()));
            }
        }
        found
    }
}
