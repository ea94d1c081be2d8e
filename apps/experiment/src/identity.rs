//! The identity of a run's inputs: what its model and its corpus *contain*, as SHA-256 digests of every file
//! their loaders read (`longrope_models::checkpoint_files`, `longrope_data::corpus::corpus_files`), not their
//! paths or sizes. One definition shared by the experiment's cell cache and search steps and by the checkpoints
//! of `longrope search`: a model overwritten in place, or a corpus edited at the same path, gives another
//! identity, so a cached cell is recomputed and a resumed search is refused instead of mixing two inputs.
//!
//! Digests come from `longrope_core::digest` (streamed, cached by file metadata across runs), so a multi-GB
//! checkpoint is hashed once, not on every run.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{ExperimentError, Result};

/// Current format of the identity (part of it, so a change of definition changes every key).
pub const IDENTITY_FORMAT: u32 = 2;

/// `{name: sha256}` for `files`, each named relative to `root` (the file name when outside it).
fn digests(root: &Path, files: &[PathBuf]) -> Result<Value> {
    let mut map = Map::new();
    for f in files {
        let name = f
            .strip_prefix(root)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default());
        map.insert(name, Value::String(longrope_core::digest::digest(f)?));
    }
    Ok(Value::Object(map))
}

/// The content identity of a model path (a `.gguf` file or an HF directory).
pub fn model_content(path: &Path) -> Result<Value> {
    let files = longrope_models::checkpoint_files(path).map_err(longrope_core::Error::from)?;
    let root = if path.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new("")).to_path_buf() };
    digests(&root, &files)
}

/// The content identity of corpus paths (text, JSONL, directories of them, token stores), one entry per path
/// in order (the order of the documents).
pub fn data_content(paths: &[PathBuf]) -> Result<Value> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let files = longrope_data::corpus::corpus_files(p).map_err(ExperimentError::from)?;
        let root = if p.is_dir() { p.to_path_buf() } else { p.parent().unwrap_or(Path::new("")).to_path_buf() };
        out.push(digests(&root, &files)?);
    }
    Ok(Value::Array(out))
}

/// The identity of a run's inputs: the model's content with the dtype and device it runs in, and the corpus's
/// content (`null` when no corpus is read, e.g. passkey).
pub fn inputs(model: &Path, dtype: &str, device: &str, data: Option<&[PathBuf]>) -> Result<Value> {
    Ok(json!({
        "format": IDENTITY_FORMAT,
        "model": {"content": model_content(model)?, "dtype": dtype, "device": device},
        "data": match data {
            Some(d) => data_content(d)?,
            None => Value::Null,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_follows_content_not_paths() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("one.txt"), "first text").unwrap();
        std::fs::write(a.join("skip.bin"), "not read").unwrap();
        let before = data_content(std::slice::from_ref(&a)).unwrap();
        assert_eq!(before[0].as_object().unwrap().keys().collect::<Vec<_>>(), ["one.txt"]);
        // Same size, other content.
        std::fs::write(a.join("one.txt"), "other text").unwrap();
        assert_ne!(data_content(std::slice::from_ref(&a)).unwrap(), before);
        // A copy elsewhere has the same identity.
        let b = dir.path().join("b");
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("one.txt"), "other text").unwrap();
        assert_eq!(data_content(std::slice::from_ref(&b)).unwrap(), data_content(std::slice::from_ref(&a)).unwrap());
    }
}
