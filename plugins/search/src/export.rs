//! A search study exported to a search directory in today's format (`docs/search.md`): `checkpoint.json`
//! (the latest checkpoint with the study's `meta` and the history before it), `history.jsonl` (every complete
//! trial's record, by number), the result files (`best_factors.csv`, `rope_scaling.json`,
//! `best_scaling.toml`, `best.json`, `best_curve.csv`, `cost.json`, `seeds.json`) and `study.json` (where it
//! came from). `longrope compare` and reports read it unchanged, and `longrope search --out DIR --resume`
//! continues it with files.

use std::path::Path;

use longrope_core::files::{prepare_out_dir, write_atomic, OutputKind};
use longrope_storage::file::checkpoint_document;
use longrope_storage::{Storage, StudyKind};

use crate::config::SearchFile;
use crate::error::{Result, SearchError};
use crate::outputs::{best_record, write_results, OutputPaths, Record};
use crate::study::{records, StudyCheckpoint};

/// What [`export_study`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// Generations finished at the exported checkpoint.
    pub generations: usize,
    /// Records written to `history.jsonl`.
    pub evaluations: usize,
    /// The best record, if any.
    pub best: Option<Record>,
}

/// Export the search study `name` of `storage` into `dir` (created; a directory of another kind is refused).
pub fn export_study(storage: &mut dyn Storage, name: &str, dir: &Path) -> Result<Exported> {
    let location = format!("study `{name}` in {}", storage.location());
    let study = storage
        .study(name)?
        .ok_or_else(|| SearchError::invalid(&location, "does not exist (`longrope study list` shows the studies)"))?;
    if study.kind != StudyKind::Search {
        return Err(SearchError::invalid(&location, format!("is a {} study, not a search", study.kind.as_str())));
    }
    let (file, shape, _, seeds) = SearchFile::from_study(&study.config, &study.derived)?;
    let (_, ctx) = file.build_with_seeds(&shape, seeds)?;
    let seed_candidates = ctx.seed_candidates()?;
    let (g, state) = storage
        .checkpoint(study.id, None)?
        .ok_or_else(|| SearchError::checkpoint(&location, "has no checkpoint yet"))?;
    let cp: StudyCheckpoint =
        serde_json::from_value(state.clone()).map_err(|e| SearchError::checkpoint(&location, format!("corrupt: {e}")))?;
    let trials = storage.trials(study.id, None)?;
    let history = records(&trials)?;
    prepare_out_dir(dir, OutputKind::Search)?;
    let paths = OutputPaths::new(dir);
    let before: Vec<serde_json::Value> = history
        .iter()
        .filter(|r| (r.generation as u64) < g)
        .map(|r| serde_json::to_value(r).expect("records serialize"))
        .collect();
    let doc = checkpoint_document(&state, &study.config, &study.identity, before);
    write_atomic(&paths.checkpoint(), &serde_json::to_vec(&doc).expect("JSON values serialize"))?;
    let mut journal = String::new();
    for r in &history {
        journal.push_str(&serde_json::to_string(r).expect("records serialize"));
        journal.push('\n');
    }
    write_atomic(&paths.history(), journal.as_bytes())?;
    write_results(&paths, &shape, &history, &cp.curve, &cp.cost, &seed_candidates)?;
    let origin = serde_json::json!({
        "storage": storage.location(),
        "study": study.name,
        "state": study.state.as_str(),
        "error": study.error,
        "generations": g,
    });
    write_atomic(&dir.join("study.json"), (serde_json::to_string_pretty(&origin).expect("JSON") + "\n").as_bytes())?;
    Ok(Exported { generations: g as usize, evaluations: history.len(), best: best_record(&history).cloned() })
}
