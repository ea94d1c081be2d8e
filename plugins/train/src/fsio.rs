//! Atomic file writes for training outputs, through the project's one helper (`longrope_core::files`): write
//! beside the target, fsync, rename, fsync the directory. A crash or a full disk leaves either the old file or
//! the new one, never half of one, and no temporary file.

use std::path::Path;

use crate::error::Result;

/// Write `bytes` to `path` atomically (`longrope_core::files::write_atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(longrope_core::files::write_atomic(path, bytes)?)
}

/// fsync a directory so a rename inside it is durable (best effort: not every filesystem allows it).
pub fn sync_dir(dir: &Path) {
    longrope_core::files::sync_dir(dir)
}
