//! Reading search directories back and comparing them: evolution vs random vs grid (or any strategies,
//! spaces, seeds) under the same fitness, as `longrope compare DIR...` prints it.
//!
//! A run is read from its `checkpoint.json` (the consistent state after its last finished generation: the
//! config it ran, the strategy, the history and the cost) and `seeds.json` (the seeds' fitness, when it
//! evaluated them). Runs compare fairly only when they share the fitness: model, evaluator, documents,
//! target length and RoPE shape. [`compare_markdown`] says so when they do not, instead of refusing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, SearchError};
use crate::outputs::{fittest_seed, CostAccount, OutputPaths, Record, SeedResult};

/// A search directory as read back.
#[derive(Debug, Clone)]
pub struct SearchRun {
    /// The directory.
    pub dir: PathBuf,
    /// The strategy's name.
    pub strategy: String,
    /// The search config it ran (the checkpoint's `meta`).
    pub meta: serde_json::Value,
    /// Every evaluation up to the last checkpoint.
    pub history: Vec<Record>,
    /// Generations finished.
    pub generations: usize,
    /// The cost account at the last checkpoint.
    pub cost: CostAccount,
    /// The seeds and their fitness where this run evaluated them (empty for runs written before
    /// `seeds.json` existed, or without seeds).
    pub seeds: Vec<SeedResult>,
}

/// The part of a checkpoint that [`SearchRun::load`] needs (the strategy state is skipped).
#[derive(Deserialize)]
struct CheckpointView {
    meta: serde_json::Value,
    strategy: String,
    generation: usize,
    history: Vec<Record>,
    cost: CostAccount,
}

impl SearchRun {
    /// Whether `dir` looks like a search directory (it holds a `checkpoint.json`).
    pub fn is_search_dir(dir: &Path) -> bool {
        dir.is_dir() && OutputPaths::new(dir).checkpoint().is_file()
    }

    /// Read a search directory. Errors name the file and what is wrong with it.
    pub fn load(dir: &Path) -> Result<SearchRun> {
        let paths = OutputPaths::new(dir);
        let cp_path = paths.checkpoint();
        let text = std::fs::read(&cp_path).map_err(|e| SearchError::io(&cp_path, e))?;
        let cp: CheckpointView = serde_json::from_slice(&text)
            .map_err(|e| SearchError::checkpoint(&cp_path, format!("corrupt: {e}")))?;
        let seeds_path = paths.seeds();
        let seeds = if seeds_path.is_file() {
            let text = std::fs::read(&seeds_path).map_err(|e| SearchError::io(&seeds_path, e))?;
            serde_json::from_slice(&text).map_err(|e| {
                SearchError::invalid(seeds_path.display().to_string(), format!("corrupt: {e}"))
            })?
        } else {
            Vec::new()
        };
        Ok(SearchRun {
            dir: dir.to_path_buf(),
            strategy: cp.strategy,
            meta: cp.meta,
            history: cp.history,
            generations: cp.generation,
            cost: cp.cost,
            seeds,
        })
    }

    /// The best evaluation (lowest fitness, the earliest on ties).
    pub fn best(&self) -> Option<&Record> {
        crate::outputs::best_record(&self.history)
    }

    /// The best fitness after each evaluation: `(evaluations, best so far)`, one point per evaluation.
    pub fn running_best(&self) -> Vec<(usize, f64)> {
        let mut best = f64::INFINITY;
        self.history
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.fitness < best {
                    best = r.fitness;
                }
                (i + 1, best)
            })
            .collect()
    }

    /// What must agree for two runs to be compared: model, fitness (evaluator, corpus, documents), target
    /// length, the resolved RoPE shape and the fitness kind. Strategy, space and seed may differ.
    pub fn fitness_identity(&self) -> serde_json::Value {
        let keys = [
            "model",
            "fitness",
            "fitness_kind",
            "target_length",
            "resolved_shape",
        ];
        let mut id = serde_json::Map::new();
        for k in keys {
            if let Some(mut v) = self.meta.get(k).cloned() {
                if k == "model" {
                    // Where a model runs and in which dtype changes speed, not which factors are better; the
                    // dtype is listed in the table instead.
                    if let Some(o) = v.as_object_mut() {
                        o.remove("device");
                        o.remove("dtype");
                    }
                }
                id.insert(k.to_string(), v);
            }
        }
        serde_json::Value::Object(id)
    }

    /// Whether the run used the synthetic test function instead of a model.
    pub fn is_synthetic(&self) -> bool {
        self.meta["fitness_kind"].as_str() == Some("synthetic")
    }

    /// A short description of the search space (`dim_mono`, `+ n_hat`, `+ m`).
    pub fn space_label(&self) -> String {
        let space = &self.meta["space"];
        let mut label = space["kind"].as_str().unwrap_or("?").to_string();
        if space["search_n_hat"].as_bool() == Some(true) {
            label.push_str(" + n_hat");
        }
        if !space["attention_factor"].is_null() {
            label.push_str(" + m");
        }
        label
    }
}

/// The best seed over all runs: `(name, fitness)`; a seed counts when some run evaluated exactly its
/// candidate. Only runs sharing the first run's fitness identity contribute.
pub fn best_seed(runs: &[SearchRun]) -> Option<(String, f64)> {
    let id = runs.first()?.fitness_identity();
    fittest_seed(runs.iter().filter(|r| r.fitness_identity() == id).flat_map(|r| r.seeds.iter()))
        .map(|(name, f)| (name.to_string(), f))
}

/// A path as written in a config, lexically simplified for display (`configs/search/../../x` -> `x`).
fn clean_path(p: &str) -> String {
    let absolute = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn fmt_seconds(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.2} h", s / 3600.0)
    } else if s >= 120.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The comparison as Markdown: what the runs share, one row per run (strategy, space, RNG seed, dtype,
/// evaluations, best fitness, its difference to the best seed, after how many evaluations it was found,
/// tokens, wall time), and the seeds' fitness with their `index` in `history.jsonl`. Runs whose fitness differs from the first run's are flagged, not dropped.
pub fn compare_markdown(runs: &[SearchRun]) -> String {
    let mut md = String::new();
    let Some(first) = runs.first() else {
        return md;
    };
    let id = first.fitness_identity();
    let _ = writeln!(md, "## Search comparison\n");
    let m = &first.meta;
    let shape = match m["resolved_shape"].as_object() {
        Some(s) => format!(
            " (head_dim {}, base {}, {} -> {} tokens)",
            s["head_dim"],
            s["rope_base"],
            s["original_max_position_embeddings"],
            s["max_position_embeddings"]
        ),
        None => String::new(),
    };
    if first.is_synthetic() {
        let _ = writeln!(
            md,
            "Fitness: the synthetic test function (no model){shape}.\n"
        );
    } else {
        let _ = writeln!(
            md,
            "Fitness: `{}` at {} tokens on {} document(s) of {}, model `{}`{shape}.\n",
            m["fitness"]["evaluator"].as_str().unwrap_or("?"),
            m["target_length"],
            m["fitness"]["documents"],
            m["fitness"]["corpus"]
                .as_array()
                .map(|c| c
                    .iter()
                    .filter_map(|p| p.as_str())
                    .map(|p| format!("`{}`", clean_path(p)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "the configured corpus".into()),
            clean_path(m["model"]["path"].as_str().unwrap_or("?")),
        );
    }
    let comparable: Vec<bool> = runs.iter().map(|r| r.fitness_identity() == id).collect();
    let differing: Vec<&SearchRun> = runs.iter().zip(&comparable).filter(|(_, &c)| !c).map(|(r, _)| r).collect();
    if !differing.is_empty() {
        let _ = writeln!(
            md,
            "**Not comparable:** {} measured a different fitness (model, evaluator, corpus, documents, target length or \
             RoPE shape) than `{}`; they are marked with `*`.\n",
            differing.iter().map(|r| format!("`{}`", r.dir.display())).collect::<Vec<_>>().join(", "),
            first.dir.display()
        );
    }
    let seed = best_seed(runs);
    let seed_col = match &seed {
        Some((name, f)) => format!("vs best seed ({name} {f:.4})"),
        None => "vs best seed".to_string(),
    };
    let _ = writeln!(
        md,
        "| run | strategy | space | seed | dtype | evaluations | best fitness | {seed_col} | best after | tokens | wall |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for (i, r) in runs.iter().enumerate() {
        let mark = if comparable[i] { "" } else { " *" };
        let best = r.best();
        let (best_s, delta, at) = match best {
            Some(b) => (
                format!("{:.4}", b.fitness),
                match &seed {
                    Some((_, f)) if mark.is_empty() && b.fitness.is_finite() => {
                        format!(
                            "{:+.4} ({:+.2}%)",
                            b.fitness - f,
                            100.0 * (b.fitness - f) / f
                        )
                    }
                    _ => String::new(),
                },
                format!("{} of {}", b.index + 1, r.history.len()),
            ),
            None => ("-".into(), String::new(), "-".into()),
        };
        let _ = writeln!(
            md,
            "| `{}`{mark} | {} | {} | {} | {} | {} | {best_s} | {delta} | {at} | {} | {} |",
            r.dir.display(),
            r.strategy,
            r.space_label(),
            r.meta["seed"],
            if r.is_synthetic() {
                "-"
            } else {
                r.meta["model"]["dtype"].as_str().unwrap_or("-")
            },
            r.cost.evaluations,
            r.cost.tokens,
            fmt_seconds(r.cost.wall_seconds)
        );
    }
    let _ = writeln!(md);
    let seeds: Vec<(&SearchRun, &SeedResult)> = runs
        .iter()
        .flat_map(|r| {
            r.seeds
                .iter()
                .filter(|s| s.fitness.is_some())
                .map(move |s| (r, s))
        })
        .collect();
    if !seeds.is_empty() {
        let _ = writeln!(
            md,
            "Seeds (as snapped to the search grid), where a run evaluated them:\n"
        );
        let _ = writeln!(
            md,
            "| seed | fitness | run | history index |\n|---|---:|---|---:|"
        );
        for (r, s) in seeds {
            let _ = writeln!(
                md,
                "| {} | {:.4} | `{}` | {} |",
                s.name,
                s.fitness.unwrap_or(f64::NAN),
                r.dir.display(),
                s.index.map(|i| i.to_string()).unwrap_or_default()
            );
        }
        let _ = writeln!(md);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn paths_are_simplified_for_display() {
        assert_eq!(clean_path("configs/search/../../.cache/a.gguf"), ".cache/a.gguf");
        assert_eq!(clean_path("./x/./y"), "x/y");
        assert_eq!(clean_path("../x"), "../x");
        assert_eq!(clean_path("../../x/../y"), "../../y");
        assert_eq!(clean_path("/abs/dir/../f"), "/abs/f");
        assert_eq!(clean_path("/../f"), "/f");
        assert_eq!(clean_path("a/.."), ".");
    }
}
