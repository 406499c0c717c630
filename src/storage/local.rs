//! The local directory backend: files under `local_dir`, written atomically (temporary file, fsync,
//! rename), so a reader never sees half an image and a crash never leaves one behind under its
//! final name.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{CHECK_PREFIX, ImageStore, StorageError, StoragePath, Stored, join_url};

/// Images in a local directory (`storage.kind = "local"`), served by the admin API's `/images`
/// route.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    public_base_url: String,
}

impl LocalStore {
    /// A store under `root`, whose URLs start with `public_base_url`.
    pub fn new(root: PathBuf, public_base_url: String) -> LocalStore {
        LocalStore {
            root,
            public_base_url,
        }
    }

    fn file(&self, path: &StoragePath) -> PathBuf {
        self.root.join(path.as_str())
    }
}

/// Creates `file` in `dir`, making `dir` first — and again if it vanished in between (another
/// check's delete removing an empty `_memoji-check/`).
async fn create_in(dir: &Path, file: &Path) -> std::io::Result<tokio::fs::File> {
    let mut tries = 0;
    loop {
        tokio::fs::create_dir_all(dir).await?;
        match tokio::fs::File::create(file).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

fn backend(what: &str, error: std::io::Error) -> StorageError {
    StorageError::Backend(format!("{what}: {error}"))
}

#[async_trait]
impl ImageStore for LocalStore {
    async fn put(&self, path: &StoragePath, png: Bytes) -> Result<Stored, StorageError> {
        let file = self.file(path);
        let dir = file
            .parent()
            .ok_or_else(|| StorageError::Backend("path has no directory".into()))?;
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            path.as_str().replace('/', "-"),
            uuid::Uuid::new_v4()
        ));
        let written = async {
            let mut out = create_in(dir, &temp).await?;
            out.write_all(&png).await?;
            out.sync_all().await?;
            tokio::fs::rename(&temp, &file).await
        }
        .await;
        if let Err(error) = written {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(backend("writing the image", error));
        }
        Ok(Stored {
            path: path.clone(),
            url: self.url(path),
            bytes: png.len() as u64,
        })
    }

    async fn get(&self, path: &StoragePath) -> Result<Option<Bytes>, StorageError> {
        match tokio::fs::read(self.file(path)).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend("reading the image", e)),
        }
    }

    async fn delete(&self, path: &StoragePath) -> Result<u64, StorageError> {
        let file = self.file(path);
        let size = match tokio::fs::metadata(&file).await {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(backend("reading the image's size", e)),
        };
        let freed = match tokio::fs::remove_file(&file).await {
            Ok(()) => size,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(backend("deleting the image", e)),
        };
        if path.as_str().starts_with(CHECK_PREFIX) {
            // `storage check` made this directory; it goes with its last probe (a check still
            // running keeps it: only an empty directory is removed).
            let _ = tokio::fs::remove_dir(self.root.join(CHECK_PREFIX)).await;
        }
        Ok(freed)
    }

    fn url(&self, path: &StoragePath) -> String {
        join_url(&self.public_base_url, path)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::job::CacheKey;

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_owned(), "http://host/images/".to_owned());
        let key = CacheKey::parse(&"ab".repeat(32)).unwrap();
        let path = StoragePath::for_key(&key, Utc::now());
        let stored = store
            .put(&path, Bytes::from_static(b"png bytes"))
            .await
            .unwrap();
        assert_eq!(stored.url, format!("http://host/images/{path}"));
        assert_eq!(stored.bytes, 9);
        assert_eq!(
            store.get(&path).await.unwrap().as_deref(),
            Some(&b"png bytes"[..])
        );
        // No temporary files are left beside the image.
        let siblings = std::fs::read_dir(dir.path().join(path.as_str()).parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(siblings, 1);
        assert_eq!(store.delete(&path).await.unwrap(), 9);
        assert_eq!(store.get(&path).await.unwrap(), None);
        assert_eq!(store.delete(&path).await.unwrap(), 0);
    }
}
