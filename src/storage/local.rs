//! The local directory backend: files under `local_dir`, written atomically (temporary file, fsync,
//! rename), so a reader never sees half an image and a crash never leaves one behind under its
//! final name.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{ImageStore, StorageError, StoragePath, Stored, join_url};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    public_base_url: String,
}

impl LocalStore {
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
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| backend("creating the directory", e))?;
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            path.as_str().replace('/', "-"),
            uuid::Uuid::new_v4()
        ));
        let written = async {
            let mut out = tokio::fs::File::create(&temp).await?;
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
        match tokio::fs::remove_file(&file).await {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(backend("deleting the image", e)),
        }
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
