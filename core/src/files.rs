//! Files: the one place longrope-rs replaces outputs, prepares output directories and reads user files.
//!
//! - [`write_atomic`], [`write_atomic_stream`], [`write_atomic_path`]: replace a file so that a reader, a
//!   crash, a `kill -9` or a full disk leaves either the old content or the new one, never a part of it. The
//!   new content goes to a temporary file beside the target ([`tmp_path`]: `NAME.tmp.EXT`), is synced, then
//!   renamed over the target, and the directory is synced. On any failure the temporary file is removed, so a
//!   full disk leaves no `*.tmp*` behind; only a process killed between the two steps can leave one, and the
//!   next write of the same file replaces it.
//! - [`prepare_out_dir`]: create an output directory, refuse one that holds another kind of output (an
//!   experiment's, a search's, a token store, `ppl`/`passkey`/`eval` results), and probe that it is writable,
//!   before anything is computed.
//! - [`read_text`], [`read_bytes`]: read a file the user named: regular files only (a directory, `/dev/zero`
//!   or a FIFO is refused instead of read without bound), at most a given size.
//!
//! Content fingerprints of inputs (SHA-256, cached) are in [`crate::digest`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Largest configuration file read (experiment, search, scaling, evaluator TOML; JSON manifests): 64 MiB.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The temporary file [`write_atomic`] writes before renaming: `NAME.tmp.EXT` beside `path` (`NAME.tmp`
/// without an extension). The extension is kept last so writers that pick a format from it (PNG) still can.
pub fn tmp_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.tmp.{}", ext.to_string_lossy()),
        None => format!("{stem}.tmp"),
    };
    path.with_file_name(name)
}

/// Sync a directory so that a rename inside it is durable (best effort: platforms or filesystems that cannot
/// open or sync a directory skip it).
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Sync the directory holding `path`.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
}

/// Write `bytes` to `path` atomically (see the module documentation). Errors name `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_stream(path, |f| f.write_all(bytes))
}

/// Write `path` atomically with a writer that streams into the (buffered) temporary file. Errors name `path`.
pub fn write_atomic_stream(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    match result {
        Ok(()) => {
            sync_parent(path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

/// Write `path` atomically with a writer that needs a path (an image encoder): `write` gets the temporary path
/// ([`tmp_path`], same extension); on success it is synced and renamed over `path`, on failure removed.
pub fn write_atomic_path<E: From<Error>>(path: &Path, write: impl FnOnce(&Path) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
    let tmp = tmp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let commit = (|| -> std::io::Result<()> {
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = commit {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e).into());
    }
    sync_parent(path);
    Ok(())
}

/// What an output directory holds, told apart by the files each kind writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// `longrope ppl|passkey|eval`: `results.json`, `results.csv`.
    Evaluation,
    /// `longrope run`: `experiment.json` (the manifest), `cells/`, results and report.
    Experiment,
    /// `longrope search`: `checkpoint.json`, `history.jsonl` and the result files.
    Search,
    /// `longrope tokenize`: `index.json`, `tokens.bin`.
    TokenStore,
    /// `longrope finetune`: `finetune.json`, `train_log.jsonl`, checkpoints, the exported model.
    Finetune,
}

impl OutputKind {
    /// What the kind is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            OutputKind::Evaluation => "the results of `longrope ppl/passkey/eval` (results.json)",
            OutputKind::Experiment => "an experiment run (experiment.json)",
            OutputKind::Search => "a search (checkpoint.json)",
            OutputKind::TokenStore => "a token store (index.json, tokens.bin)",
            OutputKind::Finetune => "a fine-tuning run (finetune.json)",
        }
    }

    /// The kind of output `dir` already holds, if any (an empty or absent directory holds none).
    pub fn of_dir(dir: &Path) -> Option<OutputKind> {
        let has = |f: &str| dir.join(f).exists();
        if has("experiment.json") {
            Some(OutputKind::Experiment)
        } else if has("finetune.json") || has("train_log.jsonl") {
            Some(OutputKind::Finetune)
        } else if has("checkpoint.json") || has("history.jsonl") {
            Some(OutputKind::Search)
        } else if has("index.json") || has("tokens.bin") {
            Some(OutputKind::TokenStore)
        } else if has("results.json") || has("results.csv") {
            Some(OutputKind::Evaluation)
        } else {
            None
        }
    }
}

/// Make `dir` ready to receive `kind` outputs, before anything is computed: refuse a path that is a file, or a
/// directory holding another kind of output (writing there would overwrite or mix it); create it; and prove it
/// is writable by writing and removing a probe file (a read-only or `/proc` path fails here, not after hours
/// of compute). Errors name `dir`.
pub fn prepare_out_dir(dir: &Path, kind: OutputKind) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::config(dir.display().to_string(), "exists and is not a directory: choose another output directory"));
    }
    if let Some(other) = OutputKind::of_dir(dir).filter(|&k| k != kind) {
        return Err(Error::config(
            dir.display().to_string(),
            format!("holds {}; writing {} there would overwrite or mix them: choose another output directory", other.describe(), kind.describe()),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let probe = dir.join(".longrope-write-probe");
    write_atomic(&probe, b"probe").map_err(|e| match e {
        Error::Io { source, .. } => Error::config(dir.display().to_string(), format!("is not writable: {source}")),
        other => other,
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Read the file `path` names as bytes: a regular file of at most `max_bytes` (a directory, a device such as
/// `/dev/zero`, a FIFO or a larger file is an error naming the path).
pub fn read_bytes(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file (a device, FIFO or socket)" };
        return Err(Error::config(path.display().to_string(), format!("is {what}; expected a file")));
    }
    if meta.len() > max_bytes {
        return Err(Error::config(
            path.display().to_string(),
            format!("is {} bytes, more than the {max_bytes} bytes a file of this kind may have", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // The file may grow while it is read: never read more than the limit.
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::config(path.display().to_string(), format!("grew beyond {max_bytes} bytes while being read")));
    }
    Ok(bytes)
}

/// [`read_bytes`] as UTF-8 text (invalid UTF-8 is an error naming the path and the byte offset).
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String> {
    String::from_utf8(read_bytes(path, max_bytes)?).map_err(|e| {
        Error::config(path.display().to_string(), format!("is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_path_keeps_the_extension_last() {
        assert_eq!(tmp_path(Path::new("a/results.json")), PathBuf::from("a/results.tmp.json"));
        assert_eq!(tmp_path(Path::new("plots/x.png")), PathBuf::from("plots/x.tmp.png"));
        assert_eq!(tmp_path(Path::new("LICENSE")), PathBuf::from("LICENSE.tmp"));
    }

    #[test]
    fn write_atomic_replaces_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        // The rename fails (the target is a non-empty directory): the temporary file is removed, the error names
        // the target.
        let d = dir.path().join("d.json");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keep"), "k").unwrap();
        let err = write_atomic(&d, b"x").unwrap_err().to_string();
        assert!(err.starts_with(&d.display().to_string()), "{err}");
        // A writer that fails half-way: nothing is left, the old content stays.
        let err = write_atomic_stream(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("disk full"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        // The path form.
        let png = dir.path().join("p.png");
        let r: Result<()> = write_atomic_path(&png, |tmp| {
            assert!(tmp.to_string_lossy().ends_with("p.tmp.png"));
            std::fs::write(tmp, "img").map_err(|e| Error::io(tmp, e))
        });
        r.unwrap();
        assert_eq!(std::fs::read_to_string(&png).unwrap(), "img");
        let r: Result<()> = write_atomic_path(&png, |tmp| {
            std::fs::write(tmp, "half").unwrap();
            Err(Error::invalid("plot", "backend failed"))
        });
        assert!(r.is_err());
        assert!(!dir.path().join("p.tmp.png").exists());
        assert_eq!(std::fs::read_to_string(&png).unwrap(), "img");
    }

    #[test]
    fn out_dirs_of_another_kind_and_unwritable_ones_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let exp = dir.path().join("exp");
        prepare_out_dir(&exp, OutputKind::Experiment).unwrap();
        std::fs::write(exp.join("experiment.json"), "{}").unwrap();
        prepare_out_dir(&exp, OutputKind::Experiment).unwrap();
        let err = prepare_out_dir(&exp, OutputKind::Evaluation).unwrap_err().to_string();
        assert!(err.contains("exp") && err.contains("an experiment run"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(prepare_out_dir(&file, OutputKind::Search).unwrap_err().to_string().contains("not a directory"));
        let err = prepare_out_dir(Path::new("/proc/longrope-out"), OutputKind::Evaluation).unwrap_err().to_string();
        assert!(err.contains("/proc/longrope-out"), "{err}");
        assert!(std::fs::read_dir(&exp).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("probe")));
    }

    #[test]
    fn only_regular_files_are_read_and_only_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "x = 1").unwrap();
        assert_eq!(read_text(&p, 100).unwrap(), "x = 1");
        assert!(read_text(&p, 3).unwrap_err().to_string().contains("more than the 3 bytes"));
        assert!(read_text(dir.path(), 100).unwrap_err().to_string().contains("is a directory"));
        if Path::new("/dev/zero").exists() {
            let err = read_text(Path::new("/dev/zero"), u64::MAX).unwrap_err().to_string();
            assert!(err.starts_with("/dev/zero: is not a regular file"), "{err}");
        }
        std::fs::write(&p, [0x66, 0xff]).unwrap();
        assert!(read_text(&p, 100).unwrap_err().to_string().contains("not UTF-8"));
    }
}
