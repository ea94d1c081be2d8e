//! Content fingerprints of input files: the SHA-256 of a file's bytes, streamed, and cached so that hashing a
//! multi-gigabyte checkpoint is paid once.
//!
//! Results and caches that depend on a model or a corpus are keyed by what the files contain, not by their
//! paths or sizes (a checkpoint overwritten in place keeps both). Hashing streams the file in 1 MiB blocks.
//! [`digest`] remembers a file's hash within the process and, across runs, in a small JSON cache keyed by the
//! canonical path and a metadata stamp (size, modification time, status-change time, inode, device). Writing
//! a file changes its status-change time (`ctime`), which no ordinary call can set back, so an in-place
//! rewrite is always re-hashed, even with the old size and modification time restored.
//!
//! The cache file is `$LONGROPE_DIGEST_CACHE`, else `$XDG_CACHE_HOME/longrope/digests.json`, else
//! `$HOME/.cache/longrope/digests.json`; `LONGROPE_DIGEST_CACHE=off` disables it (every run hashes). A
//! missing, unreadable or corrupt cache only costs a re-hash; it is rewritten atomically.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Cache format version.
const CACHE_VERSION: u32 = 1;
/// Most entries kept in the cache file (the oldest are dropped beyond it).
const CACHE_ENTRIES: usize = 4096;

/// What identifies a file's current content without reading it; any write changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Size in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status-change time (Unix `ctime`), nanoseconds since the epoch; 0 where the platform has none.
    pub ctime_ns: i128,
    /// Inode number (0 where the platform has none).
    pub ino: u64,
    /// Device number (0 where the platform has none).
    pub dev: u64,
}

impl Stamp {
    /// The stamp of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Stamp {
                len: meta.len(),
                mtime_ns,
                ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
                ino: meta.ino(),
                dev: meta.dev(),
            }
        }
        #[cfg(not(unix))]
        {
            Stamp { len: meta.len(), mtime_ns, ctime_ns: 0, ino: 0, dev: 0 }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    sha256: String,
    /// Order of insertion, to drop the oldest entries.
    seq: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

struct Cache {
    loaded: bool,
    file: CacheFile,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { loaded: false, file: CacheFile { version: CACHE_VERSION, entries: BTreeMap::new() } });

/// The cache file in use, or `None` when disabled or no location is known.
pub fn cache_path() -> Option<PathBuf> {
    match std::env::var_os("LONGROPE_DIGEST_CACHE") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("longrope").join("digests.json")),
    }
}

/// The SHA-256 (lower-case hex) of everything `reader` yields, read in 1 MiB blocks.
pub fn sha256_reader(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a regular file's content, streamed, without any cache. Errors name the file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    sha256_reader(file).map_err(|e| Error::io(path, e))
}

/// The SHA-256 of a regular file's content, from the cache when the file's [`Stamp`] is the one recorded with
/// it, else hashed (and recorded). A path that is not a regular file is an error naming it.
pub fn digest(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::config(path.display().to_string(), "is not a regular file; cannot fingerprint its content"));
    }
    let key = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?.display().to_string();
    let stamp = Stamp::of(&meta);
    {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        load(&mut cache);
        if let Some(e) = cache.file.entries.get(&key).filter(|e| e.stamp == stamp) {
            return Ok(e.sha256.clone());
        }
    }
    let sha256 = sha256_file(path)?;
    // A file written while it was hashed gets a new stamp: record nothing then (the next call re-hashes).
    let after = std::fs::metadata(path).map(|m| Stamp::of(&m)).ok();
    if after.as_ref() == Some(&stamp) {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let seq = cache.file.entries.values().map(|e| e.seq + 1).max().unwrap_or(0);
        cache.file.entries.insert(key, Entry { stamp, sha256: sha256.clone(), seq });
        if cache.file.entries.len() > CACHE_ENTRIES {
            let mut by_age: Vec<(u64, String)> = cache.file.entries.iter().map(|(k, e)| (e.seq, k.clone())).collect();
            by_age.sort();
            let drop = cache.file.entries.len() - CACHE_ENTRIES;
            for (_, k) in by_age.into_iter().take(drop) {
                cache.file.entries.remove(&k);
            }
        }
        save(&cache);
    }
    Ok(sha256)
}

fn load(cache: &mut Cache) {
    if cache.loaded {
        return;
    }
    cache.loaded = true;
    let Some(path) = cache_path() else { return };
    let Ok(bytes) = crate::files::read_bytes(&path, crate::files::MAX_CONFIG_BYTES) else { return };
    if let Ok(file) = serde_json::from_slice::<CacheFile>(&bytes) {
        if file.version == CACHE_VERSION {
            cache.file = file;
        }
    }
}

fn save(cache: &Cache) {
    let Some(path) = cache_path() else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Another process may have added entries since we loaded: keep theirs too (ours win on conflicts).
    let mut merged = CacheFile { version: CACHE_VERSION, entries: BTreeMap::new() };
    if let Ok(bytes) = crate::files::read_bytes(&path, crate::files::MAX_CONFIG_BYTES) {
        if let Ok(other) = serde_json::from_slice::<CacheFile>(&bytes) {
            if other.version == CACHE_VERSION {
                merged.entries = other.entries;
            }
        }
    }
    merged.entries.extend(cache.file.entries.iter().map(|(k, e)| (k.clone(), e.clone())));
    if let Ok(text) = serde_json::to_vec(&merged) {
        // A cache that cannot be written only costs a re-hash next time.
        let _ = crate::files::write_atomic(&path, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_follows_content_even_with_size_and_mtime_restored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.bin");
        std::fs::write(&p, b"aaaa").unwrap();
        let a = digest(&p).unwrap();
        assert_eq!(a, sha256_file(&p).unwrap());
        assert_eq!(a, "61be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ecee7f27b9af0b4");
        assert_eq!(digest(&p).unwrap(), a, "cached");
        // Overwrite in place, same size, and put the old modification time back.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.write_all(b"bbbb").unwrap();
            f.set_modified(mtime).unwrap();
        }
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4);
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        let b = digest(&p).unwrap();
        assert_ne!(a, b, "an in-place rewrite must change the digest");
        assert_eq!(b, sha256_file(&p).unwrap());
        assert!(digest(dir.path()).unwrap_err().to_string().contains("not a regular file"));
    }
}
