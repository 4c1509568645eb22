//! [`RunStore`]: a run URI opened through `object_store`, with a synchronous API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};

use crate::error::{RedactedSource, StoreError};

/// Hex SHA-256 of a byte string: the checksum used in manifests.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A parsed, validated run URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunUri {
    /// The URI as the user wrote it, normalised without a trailing slash.
    pub uri: String,
    scheme: Scheme,
    /// Bucket / container / account for the cloud schemes, empty otherwise.
    authority: String,
    /// Path below the authority (for `file://`, the absolute directory).
    path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    File,
    Memory,
    S3,
    Gcs,
    Azure,
}

impl RunUri {
    /// Parse and validate a run URI.
    ///
    /// Accepted: `file:///abs/dir`, `memory://name`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`. A bare absolute or
    /// relative path is taken as `file://`. Any `..` or `.` segment is refused:
    /// a run must not escape its prefix.
    pub fn parse(uri: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = uri.trim().trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(invalid("empty URI"));
        }
        // A URI that is only a scheme (`s3://`, as `s3://$UNSET` expands)
        // must not become the relative path `s3:`.
        if let Some((scheme, rest)) = uri.trim().split_once("://")
            && rest.trim_matches('/').is_empty()
        {
            return Err(invalid(&format!("'{scheme}://' names no bucket or path (an unset variable?)")));
        }
        if !trimmed.contains("://")
            && let Some((scheme, _)) = trimmed.split('/').next().and_then(|first| first.split_once(':'))
            && ["file", "memory", "s3", "s3a", "gs", "az", "abfs", "abfss", "azure"].contains(&scheme)
        {
            return Err(invalid(&format!("'{scheme}:' is a URI scheme without '//' (write {scheme}://bucket/prefix, or an absolute path for a local folder)")));
        }
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((s, rest)) => {
                let scheme = match s {
                    "file" => Scheme::File,
                    "memory" => Scheme::Memory,
                    "s3" | "s3a" => Scheme::S3,
                    "gs" => Scheme::Gcs,
                    "az" | "abfs" | "abfss" | "azure" => Scheme::Azure,
                    other => {
                        return Err(invalid(&format!(
                            "unsupported scheme '{other}' (use file://, memory://, s3://, gs:// or az://)"
                        )));
                    }
                };
                (scheme, rest.to_string())
            }
            None => {
                // A plain path: make it absolute.
                let p = std::path::Path::new(trimmed);
                let abs = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    std::env::current_dir()
                        .map_err(|e| invalid(&format!("cannot resolve relative path: {e}")))?
                        .join(p)
                };
                (Scheme::File, abs.to_string_lossy().into_owned())
            }
        };
        for segment in rest.split('/') {
            if segment == ".." || segment == "." {
                return Err(invalid("'..' and '.' segments are not allowed in a run URI"));
            }
        }
        if rest.contains('\\') || rest.chars().any(|c| c.is_control()) {
            return Err(invalid("backslashes and control characters are not allowed"));
        }
        let (authority, path) = match scheme {
            Scheme::File => {
                if !rest.starts_with('/') {
                    return Err(invalid("file:// URIs need an absolute path: file:///abs/dir"));
                }
                (String::new(), rest.clone())
            }
            Scheme::Memory => (String::new(), rest.clone()),
            _ => {
                let (auth, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
                if auth.is_empty() {
                    return Err(invalid("missing bucket name"));
                }
                (auth.to_string(), path.to_string())
            }
        };
        let uri = match scheme {
            Scheme::File => format!("file://{path}"),
            _ => trimmed.to_string(),
        };
        Ok(RunUri {
            uri,
            scheme,
            authority,
            path,
        })
    }

    fn build_store(&self) -> Result<(Arc<dyn ObjectStore>, Path), StoreError> {
        let backend_err = |e: object_store::Error| StoreError::Backend {
            op: "open",
            run: self.uri.clone(),
            path: String::new(),
            source: RedactedSource(e),
        };
        let retry = RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
        };
        // Timeouts on top of whatever the environment configured (AWS_ALLOW_HTTP
        // and friends live in the same client options, so set keys, not a whole
        // new ClientOptions).
        let client_keys = [(ClientConfigKey::Timeout, "120s"), (ClientConfigKey::ConnectTimeout, "10s")];
        let prefix = |p: &str| Path::parse(p).map_err(|e| StoreError::InvalidUri {
            uri: self.uri.clone(),
            reason: e.to_string(),
        });
        Ok(match self.scheme {
            Scheme::File => {
                std::fs::create_dir_all(&self.path).map_err(|e| StoreError::InvalidUri {
                    uri: self.uri.clone(),
                    reason: format!("cannot create directory: {e}"),
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&self.path)
                    .map_err(backend_err)?;
                (Arc::new(fs), Path::default())
            }
            Scheme::Memory => (Arc::new(object_store::memory::InMemory::new()), prefix(&self.path)?),
            Scheme::S3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&self.authority)
                    .with_retry(retry);
                for (k, v) in client_keys {
                    b = b.with_config(object_store::aws::AmazonS3ConfigKey::Client(k), v);
                }
                let s3 = b.build()
                    .map_err(backend_err)?;
                (Arc::new(s3), prefix(&self.path)?)
            }
            Scheme::Gcs => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&self.authority)
                    .with_retry(retry);
                for (k, v) in client_keys {
                    b = b.with_config(object_store::gcp::GoogleConfigKey::Client(k), v);
                }
                let gcs = b.build()
                    .map_err(backend_err)?;
                (Arc::new(gcs), prefix(&self.path)?)
            }
            Scheme::Azure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(&self.authority)
                    .with_retry(retry);
                for (k, v) in client_keys {
                    b = b.with_config(object_store::azure::AzureConfigKey::Client(k), v);
                }
                let az = b.build()
                    .map_err(backend_err)?;
                (Arc::new(az), prefix(&self.path)?)
            }
        })
    }
}

impl std::fmt::Display for RunUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Time and bytes a [`RunStore`] (and its clones) spent on storage calls
/// since it was opened: how much of a stage's wall time is I/O.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IoStats {
    pub seconds: f64,
    pub calls: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Default)]
struct IoCounters {
    nanos: AtomicU64,
    calls: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

impl IoCounters {
    fn record<T>(&self, start: Instant, read: u64, written: u64, out: T) -> T {
        self.nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.read.fetch_add(read, Ordering::Relaxed);
        self.written.fetch_add(written, Ordering::Relaxed);
        out
    }
}

/// One training run's storage: an object store and the run's root prefix.
///
/// All paths are relative to the run root, `/`-separated, without `..`.
/// The API is synchronous (stages are CPU-bound batch jobs); it drives the
/// async backend on a small private runtime. Do not call it from inside an
/// async runtime.
#[derive(Clone)]
pub struct RunStore {
    uri: RunUri,
    store: Arc<dyn ObjectStore>,
    root: Path,
    rt: Arc<tokio::runtime::Runtime>,
    io: Arc<IoCounters>,
}

impl std::fmt::Debug for RunStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStore").field("uri", &self.uri.uri).finish()
    }
}

impl RunStore {
    /// Open the run at `uri` (see [`RunUri::parse`] for the accepted forms).
    ///
    /// Cloud backends are configured the standard way, from the environment:
    /// `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ALLOW_HTTP` for S3 and S3-compatible servers;
    /// `GOOGLE_*` for GCS; `AZURE_*` for Azure.
    pub fn open(uri: &str) -> Result<Self, StoreError> {
        let uri = RunUri::parse(uri)?;
        let (store, root) = uri.build_store()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| StoreError::Runtime(e.to_string()))?;
        Ok(RunStore {
            uri,
            store,
            root,
            rt: Arc::new(rt),
            io: Arc::default(),
        })
    }

    /// Open a store that must exist already: for commands that only read
    /// (or continue) one. A `file://` folder that does not exist is
    /// [`StoreError::NoSuchStore`] and is not created (a mistyped path must
    /// not leave folders behind); cloud stores are opened as by
    /// [`RunStore::open`].
    pub fn open_existing(uri: &str) -> Result<Self, StoreError> {
        let parsed = RunUri::parse(uri)?;
        if parsed.scheme == Scheme::File && !std::path::Path::new(&parsed.path).is_dir() {
            return Err(StoreError::NoSuchStore { uri: parsed.uri });
        }
        Self::open(uri)
    }

    /// Storage time and bytes so far (shared by clones of this store).
    pub fn io_stats(&self) -> IoStats {
        IoStats {
            seconds: self.io.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            calls: self.io.calls.load(Ordering::Relaxed),
            bytes_read: self.io.read.load(Ordering::Relaxed),
            bytes_written: self.io.written.load(Ordering::Relaxed),
        }
    }

    /// The run URI.
    pub fn uri(&self) -> &str {
        &self.uri.uri
    }

    /// The full URI of a path inside the run (for messages and job manifests).
    pub fn uri_of(&self, rel: &str) -> String {
        format!("{}/{}", self.uri.uri, rel)
    }

    /// The local directory of a `file://` run, if it is one.
    pub fn local_dir(&self) -> Option<std::path::PathBuf> {
        (self.uri.scheme == Scheme::File).then(|| std::path::PathBuf::from(&self.uri.path))
    }

    fn full_path(&self, rel: &str) -> Result<Path, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidPath {
            path: rel.to_string(),
            reason: reason.to_string(),
        };
        if rel.is_empty() || rel.starts_with('/') {
            return Err(invalid("must be a non-empty relative path"));
        }
        let mut path = self.root.clone();
        for seg in rel.split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(invalid("empty, '.' and '..' segments are not allowed"));
            }
            path = path.clone().join(seg);
        }
        Ok(path)
    }

    fn backend(&self, op: &'static str, rel: &str, e: object_store::Error) -> StoreError {
        match e {
            // A missing object on read is "not found"; on write it means the
            // bucket or container itself is missing, which the backend says.
            object_store::Error::NotFound { .. } if matches!(op, "get" | "list" | "delete") => StoreError::NotFound {
                run: self.uri.uri.clone(),
                path: rel.to_string(),
            },
            other => StoreError::Backend {
                op,
                run: self.uri.uri.clone(),
                path: rel.to_string(),
                source: RedactedSource(other),
            },
        }
    }

    /// Write `bytes` at `rel`, replacing any object there (atomic per object).
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.full_path(rel)?;
        tracing::debug!(path = rel, bytes = bytes.len(), "put");
        let (start, n) = (Instant::now(), bytes.len() as u64);
        let res = self.rt.block_on(self.store.put(&path, PutPayload::from_bytes(bytes)));
        self.io.record(start, 0, n, res).map(|_| ()).map_err(|e| self.backend("put", rel, e))
    }

    /// Write `bytes` at `rel` only if nothing is there yet.
    ///
    /// Returns `Ok(true)` when this call created the object and `Ok(false)`
    /// when an object already existed (a lost race is not an error here; the
    /// commit protocol decides what it means).
    pub fn put_if_absent(&self, rel: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let path = self.full_path(rel)?;
        let (start, n) = (Instant::now(), bytes.len() as u64);
        let res = self.rt.block_on(self.store.put_opts(
            &path,
            PutPayload::from_bytes(bytes),
            PutMode::Create.into(),
        ));
        // A lost race wrote nothing.
        let res = self.io.record(start, 0, if res.is_ok() { n } else { 0 }, res);
        match res {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.backend("create-only put", rel, e)),
        }
    }

    /// Read the object at `rel`.
    pub fn get(&self, rel: &str) -> Result<Bytes, StoreError> {
        let path = self.full_path(rel)?;
        let start = Instant::now();
        let res = self.rt.block_on(async { self.store.get(&path).await?.bytes().await });
        let n = res.as_ref().map(|b| b.len() as u64).unwrap_or(0);
        self.io.record(start, n, 0, res).map_err(|e| self.backend("get", rel, e))
    }

    /// Read the object at `rel`, or `None` when it does not exist.
    pub fn get_opt(&self, rel: &str) -> Result<Option<Bytes>, StoreError> {
        match self.get(rel) {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the object at `rel` (no error when it does not exist).
    pub fn delete(&self, rel: &str) -> Result<(), StoreError> {
        let path = self.full_path(rel)?;
        let start = Instant::now();
        let res = self.rt.block_on(self.store.delete(&path));
        match self.io.record(start, 0, 0, res) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend("delete", rel, e)),
        }
    }

    /// All object paths under `prefix` (relative to the run root), sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.full_path(prefix.trim_end_matches('/'))?
        };
        let root_parts = self.root.parts().count();
        let start = Instant::now();
        let res = self.rt.block_on(self.store.list(Some(&full)).try_collect());
        let metas: Vec<object_store::ObjectMeta> = self.io.record(start, 0, 0, res).map_err(|e| self.backend("list", prefix, e))?;
        let mut out: Vec<String> = metas
            .into_iter()
            .map(|m| {
                m.location
                    .parts()
                    .skip(root_parts)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_with_dotdot_is_refused() {
        for bad in ["s3://bucket/runs/../other", "file:///tmp/a/../b", "memory://x/./y", "../up"] {
            let err = RunUri::parse(bad).unwrap_err();
            assert!(err.to_string().contains("'..' and '.'"), "{bad}: {err}");
        }
    }

    /// Regression test for "a URI that is only a scheme becomes a local
    /// path" (issue 28, 4): `init --run s3://` wrote `./s3:` and exited 0.
    #[test]
    fn a_uri_that_is_only_a_scheme_is_refused_not_taken_as_a_local_path() {
        for bad in ["s3://", "s3:///", "gs://", "az://", "memory://", "file://", " s3:// "] {
            let err = RunUri::parse(bad).unwrap_err().to_string();
            assert!(err.contains("names no bucket or path"), "{bad}: {err}");
        }
        for bad in ["s3:", "s3:/bucket/x", "gs:bucket"] {
            let err = RunUri::parse(bad).unwrap_err().to_string();
            assert!(err.contains("without '//'"), "{bad}: {err}");
        }
        assert!(RunUri::parse("runs/a:b").is_ok(), "a colon later in a relative path is a path");
    }

    /// Regression test for "read-only commands create directories for a
    /// mistyped URI" (issue 28, 4).
    #[test]
    fn opening_an_existing_store_never_creates_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("typo/run");
        let err = RunStore::open_existing(&format!("file://{}", missing.display())).unwrap_err();
        assert!(matches!(err, StoreError::NoSuchStore { .. }) && err.to_string().contains("does not exist"), "{err}");
        assert!(!tmp.path().join("typo").exists(), "nothing created");
        RunStore::open(&format!("file://{}", missing.display())).unwrap();
        assert!(missing.is_dir(), "open (for writers) creates it");
        assert!(RunStore::open_existing(&format!("file://{}", missing.display())).is_ok());
        assert!(RunStore::open_existing("memory://x").is_ok());
    }

    #[test]
    fn uri_forms_parse() {
        let u = RunUri::parse("s3://bucket/runs/exp1/").unwrap();
        assert_eq!(u.uri, "s3://bucket/runs/exp1");
        assert_eq!(u.authority, "bucket");
        assert_eq!(u.path, "runs/exp1");
        assert!(RunUri::parse("ftp://x/y").unwrap_err().to_string().contains("unsupported scheme"));
        assert!(RunUri::parse("s3:///nobucket").unwrap_err().to_string().contains("bucket"));
        assert!(RunUri::parse("file://relative/x").unwrap_err().to_string().contains("absolute"));
        let plain = RunUri::parse("/tmp/run1").unwrap();
        assert_eq!(plain.uri, "file:///tmp/run1");
    }

    #[test]
    fn artifact_paths_cannot_escape_the_run() {
        let s = RunStore::open("memory://t").unwrap();
        for bad in ["../x", "a/../b", "/abs", "a//b", ""] {
            assert!(matches!(s.put(bad, Bytes::from_static(b"x")), Err(StoreError::InvalidPath { .. })), "{bad}");
        }
    }

    #[test]
    fn io_stats_count_bytes_and_calls_across_clones() {
        let s = RunStore::open("memory://io").unwrap();
        let clone = s.clone();
        s.put("a.bin", Bytes::from_static(b"hello")).unwrap();
        assert!(clone.put_if_absent("b.bin", Bytes::from_static(b"abc")).unwrap());
        assert!(!clone.put_if_absent("b.bin", Bytes::from_static(b"lost")).unwrap());
        assert_eq!(&clone.get("a.bin").unwrap()[..], b"hello");
        assert!(s.get_opt("missing").unwrap().is_none());
        s.list("").unwrap();
        let st = s.io_stats();
        assert_eq!((st.calls, st.bytes_written, st.bytes_read), (6, 8, 5), "the lost create-only put wrote nothing");
        assert!(st.seconds > 0.0);
        assert_eq!(clone.io_stats().calls, 6);
    }

    #[test]
    fn put_get_list_delete_roundtrip_on_file_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = RunStore::open(dir.path().to_str().unwrap()).unwrap();
        s.put("a/b/c.bin", Bytes::from_static(b"hello")).unwrap();
        s.put("a/d.bin", Bytes::from_static(b"x")).unwrap();
        assert_eq!(&s.get("a/b/c.bin").unwrap()[..], b"hello");
        assert_eq!(s.list("a").unwrap(), vec!["a/b/c.bin", "a/d.bin"]);
        assert!(s.get_opt("nope").unwrap().is_none());
        assert!(s.put_if_absent("a/d.bin", Bytes::from_static(b"y")).unwrap() == false);
        assert_eq!(&s.get("a/d.bin").unwrap()[..], b"x");
        assert!(s.put_if_absent("a/e.bin", Bytes::from_static(b"y")).unwrap());
        s.delete("a/d.bin").unwrap();
        assert_eq!(s.list("a").unwrap(), vec!["a/b/c.bin", "a/e.bin"]);
        s.delete("a/d.bin").unwrap();
    }
}
