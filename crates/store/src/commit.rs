//! The commit protocol: data files first, then a manifest, written last with a
//! create-only put.
//!
//! A [`PendingCommit`] is a commit in progress: [`PendingCommit::begin`] checks
//! what is already committed at its manifest path, [`PendingCommit::write`]
//! puts data files and records their size and checksum, and
//! [`PendingCommit::commit`] writes the manifest with a create-only put. If
//! another worker committed first, the outcome is [`CommitOutcome::LostRace`],
//! not a corruption: its own data files held the same bytes (stages are
//! deterministic), and the manifest that won lists them.
//!
//! A [`CommittedSet`] is the read side: it opens a manifest and serves only the
//! files it lists, verifying size and SHA-256 on every read. A stage killed
//! before its manifest leaves nothing a reader trusts.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::{sha256_hex, RunStore};

/// File name of a manifest inside a stage (or shard) directory.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// Version of the manifest format written by this code.
pub const MANIFEST_FORMAT: u32 = 1;

/// Which part of a sharded stage a worker runs: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

impl ShardSpec {
    /// The whole stage as one shard.
    pub const WHOLE: ShardSpec = ShardSpec { index: 0, count: 1 };

    /// A validated shard spec.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!("shard index {index} is out of range for {count} shards (indices start at 0)"));
        }
        Ok(ShardSpec { index, count })
    }

    /// Parse `I/N`, for example `0/4`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard '{s}' must look like I/N, for example 0/4"))?;
        let i: u32 = i.trim().parse().map_err(|_| format!("shard index '{i}' is not a number"))?;
        let n: u32 = n.trim().parse().map_err(|_| format!("shard count '{n}' is not a number"))?;
        Self::new(i, n)
    }

    /// Directory name of this shard's outputs, for example `shard-001-of-004`.
    pub fn dir_name(&self) -> String {
        format!("shard-{:03}-of-{:03}", self.index, self.count)
    }

    /// Whether this shard owns item `i` (round-robin over item indices).
    pub fn owns(&self, i: usize) -> bool {
        i % self.count as usize == self.index as usize
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One data file of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the run root.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// An input a commit was computed from: a manifest and the digest of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    pub manifest: String,
    pub sha256: String,
}

/// What a manifest records. Serialised as pretty JSON; deterministic (no
/// timestamps), so identical work gives identical manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub stage: String,
    pub iter: Option<u64>,
    pub shard: Option<ShardSpec>,
    pub fingerprint: String,
    pub inputs: Vec<InputRef>,
    pub files: Vec<FileEntry>,
    pub producer: String,
}

impl Manifest {
    fn parse(path: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| StoreError::CorruptManifest {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(StoreError::CorruptManifest {
                path: path.to_string(),
                reason: format!("format {} is not supported (this build reads {MANIFEST_FORMAT})", m.format),
            });
        }
        Ok(m)
    }

    /// Read the manifest at `path`, or `None` when there is none.
    pub fn read(store: &RunStore, path: &str) -> Result<Option<(Manifest, String)>, StoreError> {
        match store.get_opt(path)? {
            None => Ok(None),
            Some(bytes) => Ok(Some((Self::parse(path, &bytes)?, sha256_hex(&bytes)))),
        }
    }
}

/// What is at a commit's manifest path before it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestState {
    /// Nothing committed yet: the work must be done.
    Absent,
    /// Committed with the same fingerprint: the work is done, skip it.
    Committed(Manifest),
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// This worker's manifest is the committed one.
    Committed { manifest: String, sha256: String },
    /// Another worker committed the same work (same fingerprint) first.
    LostRace { manifest: String },
}

/// A commit in progress; see the module docs for its lifecycle.
#[must_use = "a pending commit does nothing until commit() is called"]
pub struct PendingCommit {
    store: RunStore,
    manifest_path: String,
    stage: String,
    iter: Option<u64>,
    shard: Option<ShardSpec>,
    fingerprint: String,
    inputs: Vec<InputRef>,
    files: Vec<FileEntry>,
    /// Replacing a committed manifest (`--force`): the data files are held
    /// here until [`PendingCommit::commit`], so the old commit stays whole
    /// and trusted while the new one is computed.
    replacing: Option<Vec<(String, Bytes)>>,
}

impl PendingCommit {
    /// Start a commit whose manifest will be `<dir>/_manifest.json`.
    pub fn begin(
        store: &RunStore,
        dir: &str,
        stage: &str,
        iter: Option<u64>,
        shard: Option<ShardSpec>,
        fingerprint: &str,
    ) -> Self {
        PendingCommit {
            store: store.clone(),
            manifest_path: format!("{dir}/{MANIFEST_FILE}"),
            stage: stage.to_string(),
            iter,
            shard,
            fingerprint: fingerprint.to_string(),
            inputs: Vec::new(),
            files: Vec::new(),
            replacing: None,
        }
    }

    /// The manifest path this commit will write.
    pub fn manifest_path(&self) -> &str {
        &self.manifest_path
    }

    /// What is committed at this manifest path already.
    ///
    /// A manifest with another fingerprint is [`StoreError::FingerprintMismatch`]
    /// unless `force`. With `force`, a committed manifest is replaced, but
    /// only by [`PendingCommit::commit`]: until then this commit's files are
    /// held in memory and the committed one stays untouched, so a rerun that
    /// fails loses nothing.
    pub fn check(&mut self, force: bool) -> Result<ManifestState, StoreError> {
        match Manifest::read(&self.store, &self.manifest_path)? {
            None => Ok(ManifestState::Absent),
            Some((m, _)) if m.fingerprint == self.fingerprint && !force => Ok(ManifestState::Committed(m)),
            Some((m, _)) => {
                if force {
                    tracing::warn!(manifest = %self.manifest_path, "--force: the committed manifest will be replaced once this run completes");
                    self.replacing = Some(Vec::new());
                    Ok(ManifestState::Absent)
                } else {
                    Err(StoreError::FingerprintMismatch {
                        path: self.manifest_path.clone(),
                        committed: m.fingerprint,
                        expected: self.fingerprint.clone(),
                    })
                }
            }
        }
    }

    /// Record that this commit was computed from `input`.
    pub fn add_input(&mut self, input: &CommittedSet) {
        self.inputs.push(InputRef {
            manifest: input.manifest_path.clone(),
            sha256: input.digest.clone(),
        });
    }

    /// Put a data file (path relative to the run root) and record it.
    pub fn write(&mut self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        let entry = FileEntry {
            path: path.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        match &mut self.replacing {
            Some(held) => {
                held.retain(|(p, _)| p != path);
                held.push((path.to_string(), bytes));
            }
            None => self.store.put(path, bytes)?,
        }
        self.files.retain(|f| f.path != path);
        self.files.push(entry);
        Ok(())
    }

    /// Write the manifest with a create-only put. When replacing a committed
    /// manifest (`check(true)` found one), the old manifest is deleted and
    /// the held files are written first: a crash in between leaves the stage
    /// uncommitted (a rerun computes it), never a manifest that lists files
    /// it does not hold.
    pub fn commit(mut self) -> Result<CommitOutcome, StoreError> {
        if let Some(held) = self.replacing.take() {
            self.store.delete(&self.manifest_path)?;
            for (path, bytes) in held {
                self.store.put(&path, bytes)?;
            }
        }
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            stage: self.stage,
            iter: self.iter,
            shard: self.shard,
            fingerprint: self.fingerprint.clone(),
            inputs: self.inputs,
            files: self.files,
            producer: format!("worldcompass {}", env!("CARGO_PKG_VERSION")),
        };
        let mut bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        bytes.push(b'\n');
        let sha256 = sha256_hex(&bytes);
        if self.store.put_if_absent(&self.manifest_path, Bytes::from(bytes))? {
            return Ok(CommitOutcome::Committed {
                manifest: self.manifest_path,
                sha256,
            });
        }
        // Someone else committed first: same work, or a conflict?
        match Manifest::read(&self.store, &self.manifest_path)? {
            Some((winner, _)) if winner.fingerprint == self.fingerprint => Ok(CommitOutcome::LostRace {
                manifest: self.manifest_path,
            }),
            Some((winner, _)) => Err(StoreError::FingerprintMismatch {
                path: self.manifest_path,
                committed: winner.fingerprint,
                expected: self.fingerprint,
            }),
            None => Err(StoreError::CorruptManifest {
                path: self.manifest_path,
                reason: "the store refused a create-only put but holds no manifest".into(),
            }),
        }
    }
}

/// A committed manifest and the files it lists: the only thing readers trust.
#[derive(Debug, Clone)]
pub struct CommittedSet {
    store: RunStore,
    pub manifest_path: String,
    pub manifest: Manifest,
    /// SHA-256 of the manifest's bytes (what dependants record as input).
    pub digest: String,
}

impl CommittedSet {
    /// Open the manifest at `manifest_path`; a missing one is
    /// [`StoreError::MissingManifest`].
    pub fn open(store: &RunStore, manifest_path: &str) -> Result<Self, StoreError> {
        match Manifest::read(store, manifest_path)? {
            None => Err(StoreError::MissingManifest {
                path: manifest_path.to_string(),
            }),
            Some((manifest, digest)) => Ok(CommittedSet {
                store: store.clone(),
                manifest_path: manifest_path.to_string(),
                manifest,
                digest,
            }),
        }
    }

    /// Open the manifest in `dir`, or `None` when the directory has none.
    pub fn open_dir(store: &RunStore, dir: &str) -> Result<Option<Self>, StoreError> {
        match Self::open(store, &format!("{dir}/{MANIFEST_FILE}")) {
            Ok(c) => Ok(Some(c)),
            Err(StoreError::MissingManifest { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The listed files' paths.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.manifest.files.iter().map(|f| f.path.as_str())
    }

    /// Read a listed file, verifying its size and checksum.
    pub fn read(&self, path: &str) -> Result<Bytes, StoreError> {
        let entry = self
            .manifest
            .files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| StoreError::NotInManifest {
                path: path.to_string(),
                manifest: self.manifest_path.clone(),
            })?;
        let bytes = self.store.get(path)?;
        if bytes.len() as u64 != entry.bytes {
            return Err(StoreError::SizeMismatch {
                path: path.to_string(),
                expected: entry.bytes,
                found: bytes.len() as u64,
            });
        }
        let found = sha256_hex(&bytes);
        if found != entry.sha256 {
            return Err(StoreError::ChecksumMismatch {
                path: path.to_string(),
                expected: entry.sha256.clone(),
                found,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RunStore {
        RunStore::open("memory://commit-tests").unwrap()
    }

    #[test]
    fn shard_spec_parses_and_validates() {
        assert_eq!(ShardSpec::parse("1/4").unwrap(), ShardSpec { index: 1, count: 4 });
        assert!(ShardSpec::parse("4/4").unwrap_err().contains("out of range"));
        assert!(ShardSpec::parse("0/0").unwrap_err().contains("at least 1"));
        assert!(ShardSpec::parse("x/2").unwrap_err().contains("not a number"));
        assert!(ShardSpec::parse("3").unwrap_err().contains("I/N"));
        let s = ShardSpec::new(1, 3).unwrap();
        assert_eq!((0..7).filter(|&i| s.owns(i)).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(s.dir_name(), "shard-001-of-003");
    }

    #[test]
    fn commit_then_read_back_verified() {
        let s = store();
        let mut c = PendingCommit::begin(&s, "it/0/x", "x", Some(0), None, "fp1");
        assert_eq!(c.check(false).unwrap(), ManifestState::Absent);
        c.write("it/0/x/a.bin", Bytes::from_static(b"abc")).unwrap();
        assert!(matches!(c.commit().unwrap(), CommitOutcome::Committed { .. }));
        let set = CommittedSet::open(&s, "it/0/x/_manifest.json").unwrap();
        assert_eq!(&set.read("it/0/x/a.bin").unwrap()[..], b"abc");
        // Unlisted file: refused, even if present.
        s.put("it/0/x/b.bin", Bytes::from_static(b"zz")).unwrap();
        assert!(matches!(set.read("it/0/x/b.bin"), Err(StoreError::NotInManifest { .. })));
        // Corrupted after commit: checksum mismatch, same size.
        s.put("it/0/x/a.bin", Bytes::from_static(b"abd")).unwrap();
        assert!(matches!(set.read("it/0/x/a.bin"), Err(StoreError::ChecksumMismatch { .. })));
        // Truncated after commit: size mismatch.
        s.put("it/0/x/a.bin", Bytes::from_static(b"ab")).unwrap();
        assert!(matches!(set.read("it/0/x/a.bin"), Err(StoreError::SizeMismatch { .. })));
    }

    #[test]
    fn second_commit_with_same_fingerprint_is_skipped_and_other_fingerprint_refused() {
        let s = store();
        let c = PendingCommit::begin(&s, "d", "x", None, None, "fp1");
        c.commit().unwrap();
        let mut again = PendingCommit::begin(&s, "d", "x", None, None, "fp1");
        assert!(matches!(again.check(false).unwrap(), ManifestState::Committed(_)));
        let mut other = PendingCommit::begin(&s, "d", "x", None, None, "fp2");
        let err = other.check(false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(other.check(true).unwrap(), ManifestState::Absent);
        assert!(matches!(other.commit().unwrap(), CommitOutcome::Committed { .. }));
        let m = CommittedSet::open(&s, "d/_manifest.json").unwrap();
        assert_eq!(m.manifest.fingerprint, "fp2");
    }

    /// Regression test for "`--force` deletes committed work before the
    /// rerun succeeds" (issue 28, 2): the old manifest was deleted by
    /// `check(true)` and files were overwritten as the rerun wrote them.
    #[test]
    fn a_forced_rerun_leaves_the_old_commit_whole_until_it_commits() {
        let s = store();
        let mut old = PendingCommit::begin(&s, "d", "x", None, None, "fp1");
        old.write("d/a.bin", Bytes::from_static(b"old")).unwrap();
        old.commit().unwrap();
        let mut new = PendingCommit::begin(&s, "d", "x", None, None, "fp2");
        assert_eq!(new.check(true).unwrap(), ManifestState::Absent);
        new.write("d/a.bin", Bytes::from_static(b"new!")).unwrap();
        // Computed but not committed (a failed or killed rerun stops here):
        // the old commit is whole and still the trusted one.
        let set = CommittedSet::open(&s, "d/_manifest.json").unwrap();
        assert_eq!((set.manifest.fingerprint.as_str(), &set.read("d/a.bin").unwrap()[..]), ("fp1", &b"old"[..]));
        drop(new);
        let set = CommittedSet::open(&s, "d/_manifest.json").unwrap();
        assert_eq!(&set.read("d/a.bin").unwrap()[..], b"old");
        // A rerun that completes replaces it.
        let mut new = PendingCommit::begin(&s, "d", "x", None, None, "fp2");
        new.check(true).unwrap();
        new.write("d/a.bin", Bytes::from_static(b"new!")).unwrap();
        assert!(matches!(new.commit().unwrap(), CommitOutcome::Committed { .. }));
        let set = CommittedSet::open(&s, "d/_manifest.json").unwrap();
        assert_eq!((set.manifest.fingerprint.as_str(), &set.read("d/a.bin").unwrap()[..]), ("fp2", &b"new!"[..]));
    }

    #[test]
    fn racing_commits_one_wins_other_reports_lost_race() {
        let s = store();
        let mut a = PendingCommit::begin(&s, "r", "x", None, None, "fp");
        let mut b = PendingCommit::begin(&s, "r", "x", None, None, "fp");
        assert_eq!(a.check(false).unwrap(), ManifestState::Absent);
        assert_eq!(b.check(false).unwrap(), ManifestState::Absent);
        assert!(matches!(a.commit().unwrap(), CommitOutcome::Committed { .. }));
        assert!(matches!(b.commit().unwrap(), CommitOutcome::LostRace { .. }));
        let c = PendingCommit::begin(&s, "r", "x", None, None, "other");
        assert!(matches!(c.commit(), Err(StoreError::FingerprintMismatch { .. })));
    }

    #[test]
    fn corrupt_manifest_is_a_clear_error() {
        let s = store();
        s.put("m/_manifest.json", Bytes::from_static(b"{not json")).unwrap();
        let err = CommittedSet::open(&s, "m/_manifest.json").unwrap_err();
        assert!(matches!(err, StoreError::CorruptManifest { .. }));
        assert!(err.to_string().contains("m/_manifest.json"));
        let missing = CommittedSet::open(&s, "nothing/_manifest.json").unwrap_err();
        assert!(missing.to_string().contains("nothing/_manifest.json"));
    }
}
