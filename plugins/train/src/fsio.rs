//! Atomic file writes: write beside the target, fsync, rename, fsync the directory. A crash leaves either the
//! old file or the new one, never half of one (temporary files are removed on error).

use std::io::Write;
use std::path::Path;

use crate::error::{Result, TrainError};

/// fsync `tmp`, rename it to `path`, fsync `path`'s directory. On error `tmp` is removed.
pub fn sync_and_rename(tmp: &Path, path: &Path) -> Result<()> {
    let done = std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(tmp, path))
        .map_err(|e| TrainError::io(path, e));
    if done.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    done?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes)).map_err(|e| TrainError::io(&tmp, e));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_and_rename(&tmp, path)
}

/// fsync a directory so a rename inside it is durable (best effort: not every filesystem allows it).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
