//! Training checkpoints: everything a resumed run needs to continue the same loss curve.
//!
//! `OUT/checkpoints/step-NNNNNN/` holds `trainable.safetensors` (the trainable weights: f32 masters, or
//! adapters plus whatever else LoRA trains), `optimizer.safetensors` (AdamW's `exp_avg` / `exp_avg_sq` per
//! weight) and `state.json` ([`TrainState`]: step, data position, tokens, optimizer step, log length, wall
//! time, the config hash). A checkpoint is written into `.step-NNNNNN.tmp/`, each file fsynced, then renamed:
//! a kill leaves the previous checkpoint intact and at worst a `.tmp` directory, which the next start removes.
//! The data order, PoSE positions and dropout are functions of the seed and the step (see
//! `longrope_data::windows`), so the state needs no RNG snapshot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Result, TrainError};
use crate::{fsio, st};

/// Version of the checkpoint layout.
pub const FORMAT: u32 = 1;

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    /// Micro-batches consumed (the data position).
    pub micro_batches: u64,
    /// Tokens trained on so far.
    pub tokens_seen: u64,
    /// AdamW's step counter.
    pub optimizer_step: u64,
    /// Wall time of the run so far, in seconds (interrupted attempts count up to their last checkpoint).
    pub wall_seconds: f64,
    /// Hash of everything that determines the loss curve (config, model, data).
    pub config_hash: String,
}

fn step_dir(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:06}"))
}

/// Remove half-written checkpoints (`.step-*.tmp`) left by a kill.
pub fn clean_partial(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(".step-") && name.ends_with(".tmp") {
            std::fs::remove_dir_all(e.path()).map_err(|err| TrainError::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// The complete checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join("state.json").is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Write a checkpoint for `state.step` atomically and keep only the newest `keep`.
pub fn save(
    dir: &Path,
    state: &TrainState,
    trainable: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let final_dir = step_dir(dir, state.step);
    let tmp = dir.join(format!(".step-{:06}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let written = (|| {
        st::write(&tmp.join("trainable.safetensors"), trainable)?;
        st::write(&tmp.join("optimizer.safetensors"), optimizer)?;
        let json = serde_json::to_string_pretty(state).expect("state serializes");
        fsio::write_atomic(&tmp.join("state.json"), json.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
        fsio::sync_dir(dir);
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let all = list(dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
    }
    Ok(final_dir)
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    /// Its directory.
    pub path: PathBuf,
    /// Its state.
    pub state: TrainState,
    /// Trainable weights by name.
    pub trainable: HashMap<String, Tensor>,
    /// Optimizer moments by `NAME.exp_avg` / `NAME.exp_avg_sq`.
    pub optimizer: HashMap<String, Tensor>,
}

/// Load the checkpoint in `path`.
pub fn load(path: &Path) -> Result<Loaded> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint { path: state_path.clone(), message: format!("does not parse: {e}") })?;
    if state.format != FORMAT {
        return Err(TrainError::Checkpoint { path: state_path, message: format!("checkpoint format {} (this build reads {FORMAT})", state.format) });
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        trainable: st::read(&path.join("trainable.safetensors"))?,
        optimizer: st::read(&path.join("optimizer.safetensors"))?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState { format: FORMAT, step, micro_batches: 2 * step as u64, tokens_seen: 0, optimizer_step: step as u64, wall_seconds: 1.5, config_hash: "h".into() }
    }

    #[test]
    fn saves_atomically_keeps_the_newest_and_round_trips_bits() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::from_slice(&[1.0f32, f32::MIN_POSITIVE, -0.1]);
        for step in [1, 2, 3] {
            save(dir.path(), &state(step), &[("w".into(), &w * step as f64)], &[("w.exp_avg".into(), w.copy())], 2).unwrap();
        }
        let steps: Vec<usize> = list(dir.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![2, 3]);
        let l = load(&list(dir.path())[1].1).unwrap();
        assert_eq!(l.state, state(3));
        assert!(l.trainable["w"].equal(&(&w * 3.0)));
        assert!(l.optimizer["w.exp_avg"].equal(&w));
        // A half-written checkpoint is ignored by `list` and removed by `clean_partial`.
        std::fs::create_dir_all(dir.path().join(".step-000004.tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("step-000005")).unwrap();
        assert_eq!(list(dir.path()).len(), 2);
        clean_partial(dir.path()).unwrap();
        assert!(!dir.path().join(".step-000004.tmp").exists());
        std::fs::write(dir.path().join("step-000003/state.json"), "{").unwrap();
        let err = load(&dir.path().join("step-000003")).unwrap_err().to_string();
        assert!(err.contains("state.json") && err.contains("does not parse"), "{err}");
    }
}
