//! What a search writes: the best factors (LongRoPE CSV and the HF `rope_scaling` block), the best candidate
//! as a `longrope` scaling TOML, the history of every evaluation (JSON lines), the best-fitness curve and the
//! cost account. See `docs/search.md` for the files and their formats.

use std::path::PathBuf;

use longrope_core::files::write_atomic;

use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use longrope_scaling::longrope::LongRopeConfig;
use longrope_scaling::FactorTable;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fitness::{serde_fitness, Raced};

/// One evaluation, as recorded in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Evaluation number, from 0, in the order they were made.
    pub index: usize,
    /// The generation (strategy batch) it belonged to, from 0.
    pub generation: usize,
    /// What was evaluated.
    pub candidate: Candidate,
    /// Its fitness (lower is better; non-finite written `null`).
    #[serde(with = "serde_fitness")]
    pub fitness: f64,
    /// Tokens processed.
    pub tokens: u64,
    /// Wall time of the evaluation in seconds.
    pub seconds: f64,
    /// Wall time of the whole search when this evaluation was recorded (summed over resumed runs), so a
    /// resume after a kill can count the time spent after the last checkpoint. Absent in older histories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_seconds: Option<f64>,
    /// With racing: the loss sum of each document scored, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<f64>,
    /// Set when racing stopped this candidate early: `fitness` is then only a lower bound of its fitness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raced: Option<Raced>,
}

/// One point of the best-fitness curve: the best fitness after a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The generation just finished.
    pub generation: usize,
    /// Evaluations made so far.
    pub evaluations: usize,
    /// Best fitness so far.
    #[serde(with = "serde_fitness")]
    pub best_fitness: f64,
}

/// What the search cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostAccount {
    /// Evaluations made (each candidate at most once).
    pub evaluations: usize,
    /// Proposals answered from the history instead of being evaluated again.
    pub duplicates_skipped: usize,
    /// Generations finished.
    pub generations: usize,
    /// Tokens processed by all evaluations.
    pub tokens: u64,
    /// Sum of the evaluations' own wall times (across workers) in seconds.
    pub evaluation_seconds: f64,
    /// Wall time of the search, summed over the runs of a resumed search, in seconds.
    pub wall_seconds: f64,
    /// Number of times the search was resumed.
    pub resumes: usize,
    /// Evaluations that racing stopped early (counted in `evaluations`; `[fitness] racing`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub raced: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A seed of the initial population and its fitness, when some evaluation of this search measured exactly
/// its candidate (an evolution evaluates its seeds in generation 0; random and grid usually do not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed's method (`pi`, `ntk`, `yarn`, a TOML path ...).
    pub name: String,
    /// The seed as a candidate of the search space (snapped to the grid).
    pub candidate: Candidate,
    /// Its fitness, if evaluated (`null` otherwise, and for a non-finite fitness).
    pub fitness: Option<f64>,
    /// The evaluation that measured it (its `index` in `history.jsonl`).
    pub index: Option<usize>,
}

/// The seeds' results: each seed candidate looked up in the history by [`crate::driver::candidate_key`].
pub fn seed_results(seeds: &[(String, Candidate)], history: &[Record]) -> Vec<SeedResult> {
    seeds
        .iter()
        .map(|(name, c)| {
            let key = crate::driver::candidate_key(c);
            let rec = history.iter().find(|r| crate::driver::candidate_key(&r.candidate) == key);
            SeedResult {
                name: name.clone(),
                candidate: c.clone(),
                // A raced seed's fitness is only a lower bound: not reported.
                fitness: rec.filter(|r| r.raced.is_none()).map(|r| r.fitness).filter(|f| f.is_finite()),
                index: rec.map(|r| r.index),
            }
        })
        .collect()
}

/// The fittest of `seeds` that were evaluated: `(name, fitness)`.
pub fn fittest_seed<'a>(seeds: impl IntoIterator<Item = &'a SeedResult>) -> Option<(&'a str, f64)> {
    seeds.into_iter().filter_map(|s| s.fitness.map(|f| (s.name.as_str(), f))).min_by(|a, b| a.1.total_cmp(&b.1))
}

/// The output files of a search directory.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPaths {
    /// The directory.
    pub dir: PathBuf,
}

impl OutputPaths {
    /// Output files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        OutputPaths { dir: dir.into() }
    }
    /// `checkpoint.json`: the resumable state, replaced atomically after every generation.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.json")
    }
    /// `history.jsonl`: every evaluation, one JSON [`Record`] a line, appended as they finish.
    pub fn history(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }
    /// `best_factors.csv`: the best factors, one value a line (the LongRoPE CSV).
    pub fn best_factors(&self) -> PathBuf {
        self.dir.join("best_factors.csv")
    }
    /// `rope_scaling.json`: the HF `rope_scaling` block of the best candidate.
    pub fn rope_scaling(&self) -> PathBuf {
        self.dir.join("rope_scaling.json")
    }
    /// `best_scaling.toml`: the best candidate as a `longrope` scaling config (`--scaling FILE`).
    pub fn best_scaling(&self) -> PathBuf {
        self.dir.join("best_scaling.toml")
    }
    /// `best.json`: the best record.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.json")
    }
    /// `best_curve.csv`: `generation,evaluations,best_fitness`.
    pub fn curve(&self) -> PathBuf {
        self.dir.join("best_curve.csv")
    }
    /// `cost.json`: the [`CostAccount`].
    pub fn cost(&self) -> PathBuf {
        self.dir.join("cost.json")
    }
    /// `seeds.json`: the seeds as candidates and their fitness where evaluated ([`SeedResult`]).
    pub fn seeds(&self) -> PathBuf {
        self.dir.join("seeds.json")
    }
}

/// The candidate as the `longrope` scaling config it stands for, built directly: `factors` (`d/2` values, or
/// one row per layer when the candidate holds `layers x d/2`), `factor = s`, `n_hat`, and `attention_factor`
/// when the candidate sets one. What the fitness evaluates and what [`candidate_to_toml`] writes.
pub fn candidate_config(c: &Candidate, shape: &RopeShape) -> LongRopeConfig {
    let half = shape.head_dim / 2;
    let factors = if c.factors.len() != half && half > 0 && c.factors.len() % half == 0 {
        FactorTable::PerLayer(c.factors.chunks(half).map(<[f64]>::to_vec).collect())
    } else {
        FactorTable::Shared(c.factors.clone())
    };
    LongRopeConfig {
        factors: Some(factors),
        factor: Some(shape.scale()),
        n_hat: c.n_hat,
        attention_factor: c.attn_factor,
        ..LongRopeConfig::default()
    }
}

#[derive(Serialize)]
struct LongropeToml<'a> {
    method: &'a str,
    factor: f64,
    factors: &'a [f64],
    n_hat: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    attention_factor: Option<f64>,
}

/// The candidate as a `longrope` scaling config (TOML text): `method = "longrope"`, `factor = s`,
/// `factors = [...]` (`d/2` values), `n_hat`, and `attention_factor` when the candidate sets one.
/// Parse it with `longrope_core::scaling::parse_scaling_toml`.
pub fn candidate_to_toml(c: &Candidate, shape: &RopeShape) -> String {
    let doc = LongropeToml {
        method: "longrope",
        factor: shape.scale(),
        factors: &c.factors,
        n_hat: c.n_hat,
        attention_factor: c.attn_factor,
    };
    let mut text = toml::to_string(&doc).expect("plain numbers serialize to TOML");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// LongRoPE's attention factor as HF computes it when `attention_factor` is absent:
/// `sqrt(1 + ln s / ln L)` for `s > 1`, else 1.
pub fn hf_default_attention_factor(shape: &RopeShape) -> f64 {
    let s = shape.scale();
    if s <= 1.0 {
        1.0
    } else {
        (1.0 + s.ln() / (shape.original_max_position_embeddings as f64).ln()).sqrt()
    }
}

/// The HF `rope_scaling` block: `long_factor` = the candidate's factors, `short_factor` = ones (the model is
/// unchanged up to `L`), `attention_factor` = the candidate's, or HF's default when it has none. HF drops
/// `n_hat` (no start-token retention).
pub fn rope_scaling_json(c: &Candidate, shape: &RopeShape) -> serde_json::Value {
    serde_json::json!({
        "type": "longrope",
        "rope_type": "longrope",
        "short_factor": vec![1.0; c.factors.len()],
        "long_factor": c.factors,
        "original_max_position_embeddings": shape.original_max_position_embeddings,
        "attention_factor": c.attn_factor.unwrap_or_else(|| hf_default_attention_factor(shape)),
    })
}

/// The LongRoPE CSV: one factor a line.
pub fn factors_csv(factors: &[f64]) -> String {
    factors.iter().map(|x| format!("{x:?}\n")).collect()
}

/// The best record (lowest fitness, the earliest on ties).
pub fn best_record(history: &[Record]) -> Option<&Record> {
    history.iter().fold(None, |best: Option<&Record>, r| match best {
        Some(b) if b.fitness.total_cmp(&r.fitness).is_le() => Some(b),
        _ => Some(r),
    })
}

/// Write the result files (everything except the checkpoint and the history, which the driver keeps).
/// `seeds.json` is written when `seeds` is not empty.
pub fn write_results(
    paths: &OutputPaths,
    shape: &RopeShape,
    history: &[Record],
    curve: &[CurvePoint],
    cost: &CostAccount,
    seeds: &[(String, Candidate)],
) -> Result<()> {
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n";
    if let Some(best) = best_record(history) {
        write_atomic(&paths.best_factors(), factors_csv(&best.candidate.factors).as_bytes())?;
        write_atomic(&paths.rope_scaling(), json(&rope_scaling_json(&best.candidate, shape)).as_bytes())?;
        write_atomic(&paths.best_scaling(), candidate_to_toml(&best.candidate, shape).as_bytes())?;
        let best_json = serde_json::to_value(best).expect("records serialize");
        write_atomic(&paths.best(), json(&best_json).as_bytes())?;
    }
    let mut csv = String::from("generation,evaluations,best_fitness\n");
    for p in curve {
        csv.push_str(&format!("{},{},{}\n", p.generation, p.evaluations, p.best_fitness));
    }
    write_atomic(&paths.curve(), csv.as_bytes())?;
    write_atomic(&paths.cost(), json(&serde_json::to_value(cost).expect("cost serializes")).as_bytes())?;
    if !seeds.is_empty() {
        let v = serde_json::to_value(seed_results(seeds, history)).expect("seed results serialize");
        write_atomic(&paths.seeds(), json(&v).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> RopeShape {
        RopeShape {
            head_dim: 8,
            rope_base: 10_000.0,
            original_max_position_embeddings: 4096,
            max_position_embeddings: 16384,
            num_layers: 2,
        }
    }

    fn cand() -> Candidate {
        Candidate { factors: vec![1.0, 1.37, 2.5, 5.0], n_hat: 4, attn_factor: None }
    }

    #[test]
    fn toml_has_the_longrope_fields() {
        let text = candidate_to_toml(&cand(), &shape());
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["method"].as_str(), Some("longrope"));
        assert_eq!(v["factor"].as_float(), Some(4.0));
        let f: Vec<f64> = v["factors"].as_array().unwrap().iter().map(|x| x.as_float().unwrap()).collect();
        assert_eq!(f, cand().factors);
        assert_eq!(v["n_hat"].as_integer(), Some(4));
        assert!(v.get("attention_factor").is_none());
        let with_m = Candidate { attn_factor: Some(1.07), ..cand() };
        let v: toml::Value = toml::from_str(&candidate_to_toml(&with_m, &shape())).unwrap();
        assert_eq!(v["attention_factor"].as_float(), Some(1.07));
    }

    #[test]
    fn rope_scaling_block_matches_hf_longrope() {
        let v = rope_scaling_json(&cand(), &shape());
        assert_eq!(v["type"], "longrope");
        assert_eq!(v["rope_type"], "longrope");
        assert_eq!(v["short_factor"], serde_json::json!([1.0, 1.0, 1.0, 1.0]));
        assert_eq!(v["long_factor"], serde_json::json!([1.0, 1.37, 2.5, 5.0]));
        assert_eq!(v["original_max_position_embeddings"], 4096);
        // The field survey's anchor: L = 4096, s = 4 -> 1.0801.
        let m = v["attention_factor"].as_f64().unwrap();
        assert!((m - 1.0801).abs() < 5e-5, "{m}");
        assert_eq!(factors_csv(&[1.0, 1.37]), "1.0\n1.37\n");
    }

    #[test]
    fn best_record_takes_the_first_of_equals_and_ranks_infinity_last() {
        let rec = |i: usize, f: f64| Record {
            index: i,
            generation: 0,
            candidate: cand(),
            fitness: f,
            tokens: 0,
            seconds: 0.0,
            wall_seconds: None,
            items: Vec::new(),
            raced: None,
        };
        let h = vec![rec(0, f64::INFINITY), rec(1, 3.0), rec(2, 2.0), rec(3, 2.0)];
        assert_eq!(best_record(&h).unwrap().index, 2);
        assert!(best_record(&[]).is_none());
    }
}
