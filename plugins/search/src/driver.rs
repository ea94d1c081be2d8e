//! The search driver: ask the strategy for a batch, deduplicate it against everything already evaluated,
//! evaluate the rest through a [`Fitness`], record every evaluation, tell the strategy, checkpoint. Repeat
//! until the strategy proposes nothing.
//!
//! Durability (see `docs/search.md`):
//! - `history.jsonl` gets each evaluation as soon as its fitness batch (one candidate per worker) returns;
//! - `checkpoint.json` is replaced atomically (`longrope_core::files::write_atomic`) after every generation,
//!   and once before the first: it holds the run's identity (`meta`: the search config and, from the callers,
//!   the content identity of the model and the corpus), the strategy's state (population, RNG state ...), the
//!   history, the curve and the cost account;
//! - `resume` reloads the checkpoint, refuses it when `meta` differs (naming what differs: a changed corpus
//!   or model is never mixed into the history) and takes the evaluations that `history.jsonl` holds beyond it
//!   (the part of a generation finished before a kill) as already done;
//! - a fresh run refuses a directory holding a checkpoint with evaluations, but replaces one with none (a
//!   search that failed before its first evaluation has nothing to lose). Strategies are deterministic given their
//!   state and fitness is deterministic, so a resumed run proposes exactly the candidates the uninterrupted
//!   run would have, re-evaluates none that were recorded, and ends with the same result.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use longrope_core::search::{Candidate, Scored};
use longrope_core::{RopeShape, SearchStrategy};
use serde::{Deserialize, Serialize};

use crate::error::{from_core, Result, SearchError};
use crate::fitness::Fitness;
use crate::outputs::{best_record, seed_results, write_results, CostAccount, CurvePoint, OutputPaths, Record, SeedResult};
use longrope_core::files::{prepare_out_dir, write_atomic, OutputKind};

/// Version of the checkpoint format.
pub const CHECKPOINT_VERSION: u32 = 1;

/// How a run is driven.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverOptions {
    /// Output directory (checkpoint, history, results).
    pub out_dir: std::path::PathBuf,
    /// Continue from the checkpoint in `out_dir` instead of starting afresh.
    pub resume: bool,
    /// Stop (as if killed, but cleanly) once this many generations are checkpointed, counting those before a
    /// resume. For tests and for splitting a long search into jobs.
    pub stop_after_generations: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl DriverOptions {
    /// Fresh run into `out_dir`, no progress bar.
    pub fn new(out_dir: impl Into<std::path::PathBuf>) -> Self {
        DriverOptions { out_dir: out_dir.into(), resume: false, stop_after_generations: None, progress: false }
    }
}

/// What a checkpoint holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// The run's identity (the search config as JSON): a resume with another config is refused.
    pub meta: serde_json::Value,
    /// The strategy's name.
    pub strategy: String,
    /// Generations finished.
    pub generation: usize,
    /// The strategy's state ([`SearchStrategy::save_state`]).
    pub strategy_state: serde_json::Value,
    /// Every evaluation so far.
    pub history: Vec<Record>,
    /// Best fitness after each generation.
    pub curve: Vec<CurvePoint>,
    /// Cost so far.
    pub cost: CostAccount,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The strategy has spent its budget; results are written.
    Finished(Summary),
    /// Stopped by [`DriverOptions::stop_after_generations`] after this many generations.
    Stopped {
        /// Generations finished and checkpointed.
        generation: usize,
    },
}

/// The result of a finished search.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The best evaluation.
    pub best: Record,
    /// Every evaluation.
    pub history: Vec<Record>,
    /// Best fitness after each generation.
    pub curve: Vec<CurvePoint>,
    /// The cost account.
    pub cost: CostAccount,
    /// Evaluations made by this process (not counting those done before a resume).
    pub evaluated_now: usize,
    /// Evaluations recovered on resume from `history.jsonl` beyond the checkpoint (not re-run).
    pub recovered: usize,
    /// The named seeds ([`Driver::with_seeds`]) and their fitness where evaluated.
    pub seeds: Vec<SeedResult>,
}

/// The deduplication key of a candidate: factors (to 1e-9), `n_hat`, attention factor.
pub fn candidate_key(c: &Candidate) -> String {
    let mut key = String::with_capacity(c.factors.len() * 12);
    for x in &c.factors {
        key.push_str(&format!("{x:.9},"));
    }
    key.push_str(&format!("n{}", c.n_hat));
    if let Some(m) = c.attn_factor {
        key.push_str(&format!(",m{m:.9}"));
    }
    key
}

/// The driver of one search run.
pub struct Driver<'a> {
    strategy: Box<dyn SearchStrategy>,
    fitness: &'a mut dyn Fitness,
    shape: RopeShape,
    meta: serde_json::Value,
    opts: DriverOptions,
    paths: OutputPaths,
    history: Vec<Record>,
    cache: HashMap<String, usize>,
    salvaged: HashMap<String, Record>,
    generation: usize,
    curve: Vec<CurvePoint>,
    cost: CostAccount,
    evaluated_now: usize,
    recovered: usize,
    seeds: Vec<(String, Candidate)>,
    wall_before: f64,
    started: Instant,
}

impl<'a> Driver<'a> {
    /// A driver for `strategy`, measuring with `fitness`. `shape` is used for the exported results; `meta`
    /// identifies the run (the search config) and is checked on resume.
    pub fn new(
        strategy: Box<dyn SearchStrategy>,
        fitness: &'a mut dyn Fitness,
        shape: RopeShape,
        meta: serde_json::Value,
        opts: DriverOptions,
    ) -> Self {
        let paths = OutputPaths::new(&opts.out_dir);
        Driver {
            strategy,
            fitness,
            shape,
            meta,
            opts,
            paths,
            history: Vec::new(),
            cache: HashMap::new(),
            salvaged: HashMap::new(),
            generation: 0,
            curve: Vec::new(),
            cost: CostAccount::default(),
            evaluated_now: 0,
            recovered: 0,
            seeds: Vec::new(),
            wall_before: 0.0,
            started: Instant::now(),
        }
    }

    /// Wall time of the search so far: this run's, plus what earlier runs recorded before a resume.
    fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    /// Name the seeds of the initial population ([`crate::SearchContext::seed_candidates`]) so that the
    /// results report their fitness (`seeds.json`, [`Summary::seeds`]) next to the search's best.
    pub fn with_seeds(mut self, seeds: Vec<(String, Candidate)>) -> Self {
        self.seeds = seeds;
        self
    }

    /// Run (or resume) the search until the strategy is done or the stop point is reached.
    pub fn run(mut self) -> Result<Outcome> {
        self.started = Instant::now();
        self.wall_before = if self.opts.resume { self.load()? } else { self.start_fresh()? };
        let budget = self.strategy.budget() as u64;
        let bar = if self.opts.progress { ProgressBar::new(budget) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} evals {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(format!("search {}", self.strategy.name()));
        bar.set_position(self.history.len() as u64);
        let mut journal = std::fs::OpenOptions::new()
            .append(true)
            .open(self.paths.history())
            .map_err(|e| SearchError::io(self.paths.history(), e))?;
        loop {
            if let Some(k) = self.opts.stop_after_generations {
                if self.generation >= k {
                    bar.abandon_with_message(format!("stopped after generation {}", self.generation));
                    return Ok(Outcome::Stopped { generation: self.generation });
                }
            }
            let batch = self.strategy.propose().map_err(from_core)?;
            if batch.is_empty() {
                break;
            }
            bar.set_message(format!("generation {} ({} candidates)", self.generation, batch.len()));
            let scored = self.evaluate_batch(&batch, &mut journal, &bar)?;
            self.strategy.observe(&scored).map_err(from_core)?;
            self.generation += 1;
            self.cost.generations = self.generation;
            let best = best_record(&self.history).map(|r| r.fitness).unwrap_or(f64::INFINITY);
            self.curve.push(CurvePoint { generation: self.generation - 1, evaluations: self.history.len(), best_fitness: best });
            self.cost.wall_seconds = self.wall();
            self.save()?;
            write_results(&self.paths, &self.shape, &self.history, &self.curve, &self.cost, &self.seeds)?;
            bar.println(format!(
                "generation {:>3}: {:>5} evaluations, best fitness {best:.6}",
                self.generation - 1,
                self.history.len()
            ));
        }
        bar.finish_and_clear();
        self.cost.wall_seconds = self.wall();
        self.save()?;
        write_results(&self.paths, &self.shape, &self.history, &self.curve, &self.cost, &self.seeds)?;
        let best = best_record(&self.history)
            .cloned()
            .ok_or_else(|| SearchError::invalid("search", "the strategy proposed no candidate"))?;
        Ok(Outcome::Finished(Summary {
            best,
            seeds: seed_results(&self.seeds, &self.history),
            history: self.history,
            curve: self.curve,
            cost: self.cost,
            evaluated_now: self.evaluated_now,
            recovered: self.recovered,
        }))
    }

    /// Fitness of every candidate of a batch: from the history, from the salvaged tail of the journal, or
    /// evaluated (in chunks of the fitness's parallelism, each chunk journaled before the next starts).
    fn evaluate_batch(&mut self, batch: &[Candidate], journal: &mut std::fs::File, bar: &ProgressBar) -> Result<Vec<Scored>> {
        let mut fitness: Vec<Option<f64>> = vec![None; batch.len()];
        let mut same_as: Vec<Option<usize>> = vec![None; batch.len()];
        let mut first_in_batch: HashMap<String, usize> = HashMap::new();
        let mut to_eval = Vec::new();
        for (i, c) in batch.iter().enumerate() {
            let key = candidate_key(c);
            if let Some(&j) = first_in_batch.get(&key) {
                same_as[i] = Some(j);
                self.cost.duplicates_skipped += 1;
            } else if let Some(&h) = self.cache.get(&key) {
                fitness[i] = Some(self.history[h].fitness);
                self.cost.duplicates_skipped += 1;
            } else if let Some(mut rec) = self.salvaged.remove(&key) {
                rec.index = self.history.len();
                rec.generation = self.generation;
                fitness[i] = Some(rec.fitness);
                self.account(&rec);
                self.recovered += 1;
                self.cache.insert(key.clone(), self.history.len());
                self.history.push(rec);
                first_in_batch.insert(key, i);
                bar.inc(1);
            } else {
                first_in_batch.insert(key, i);
                to_eval.push(i);
            }
        }
        for chunk in to_eval.chunks(self.fitness.parallelism().max(1)) {
            let cands: Vec<Candidate> = chunk.iter().map(|&i| batch[i].clone()).collect();
            let evals = self.fitness.evaluate(&cands)?;
            if evals.len() != cands.len() {
                return Err(SearchError::Fitness(format!("{} evaluations for {} candidates", evals.len(), cands.len())));
            }
            let mut lines = String::new();
            for (&i, e) in chunk.iter().zip(evals) {
                let rec = Record {
                    index: self.history.len(),
                    generation: self.generation,
                    candidate: batch[i].clone(),
                    fitness: e.fitness,
                    tokens: e.tokens,
                    seconds: e.seconds,
                    wall_seconds: Some(self.wall()),
                };
                fitness[i] = Some(rec.fitness);
                lines.push_str(&serde_json::to_string(&rec).expect("records serialize"));
                lines.push('\n');
                self.account(&rec);
                self.evaluated_now += 1;
                self.cache.insert(candidate_key(&rec.candidate), self.history.len());
                self.history.push(rec);
            }
            journal.write_all(lines.as_bytes()).map_err(|e| SearchError::io(self.paths.history(), e))?;
            journal.sync_data().map_err(|e| SearchError::io(self.paths.history(), e))?;
            bar.inc(chunk.len() as u64);
        }
        for i in 0..batch.len() {
            if let Some(j) = same_as[i] {
                fitness[i] = fitness[j];
            }
        }
        Ok(batch
            .iter()
            .zip(fitness)
            .map(|(c, f)| Scored { candidate: c.clone(), fitness: f.expect("every candidate has a fitness") })
            .collect())
    }

    fn account(&mut self, rec: &Record) {
        self.cost.evaluations += 1;
        self.cost.tokens += rec.tokens;
        self.cost.evaluation_seconds += rec.seconds;
    }

    fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(Checkpoint {
            version: CHECKPOINT_VERSION,
            meta: self.meta.clone(),
            strategy: self.strategy.name().to_string(),
            generation: self.generation,
            strategy_state: self.strategy.save_state().map_err(from_core)?,
            history: self.history.clone(),
            curve: self.curve.clone(),
            cost: self.cost.clone(),
        })
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_vec(&self.checkpoint()?).expect("checkpoints serialize");
        Ok(write_atomic(&self.paths.checkpoint(), &text)?)
    }

    /// A new run: refuse an existing checkpoint that holds evaluations (one with none, left by a search that
    /// failed before its first evaluation, is replaced), prepare the directory, write an empty history,
    /// checkpoint.
    fn start_fresh(&mut self) -> Result<f64> {
        let cp = self.paths.checkpoint();
        if cp.exists() && !self.nothing_to_resume() {
            return Err(SearchError::checkpoint(
                &cp,
                "already exists: pass --resume to continue that search, or choose another output directory",
            ));
        }
        prepare_out_dir(&self.paths.dir, OutputKind::Search)?;
        write_atomic(&self.paths.history(), b"")?;
        self.save()?;
        Ok(0.0)
    }

    /// Whether the directory's checkpoint and journal hold no evaluation (so a fresh start loses nothing).
    fn nothing_to_resume(&self) -> bool {
        let journal_empty = match std::fs::read(self.paths.history()) {
            Ok(bytes) => bytes.iter().all(|b| b.is_ascii_whitespace()),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        let checkpoint_empty = std::fs::read(self.paths.checkpoint())
            .ok()
            .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
            .is_some_and(|cp| cp.history.is_empty() && cp.generation == 0);
        journal_empty && checkpoint_empty
    }

    /// Resume: load the checkpoint, restore the strategy, salvage the journal's tail. Returns the wall time
    /// spent before: the checkpoint's, or the last journaled evaluation's when the journal goes beyond it.
    fn load(&mut self) -> Result<f64> {
        let cp_path = self.paths.checkpoint();
        let text = std::fs::read(&cp_path).map_err(|e| {
            SearchError::checkpoint(&cp_path, format!("cannot read it ({e}); run without --resume to start a new search"))
        })?;
        let cp: Checkpoint = serde_json::from_slice(&text)
            .map_err(|e| SearchError::checkpoint(&cp_path, format!("corrupt: {e}")))?;
        if cp.version != CHECKPOINT_VERSION {
            return Err(SearchError::checkpoint(
                &cp_path,
                format!("format version {} (this build reads {CHECKPOINT_VERSION})", cp.version),
            ));
        }
        if cp.meta != self.meta {
            let mut diffs = Vec::new();
            json_diff("", &cp.meta, &self.meta, &mut diffs);
            let inputs = diffs.iter().any(|d| d.starts_with("inputs"));
            let shown: Vec<&str> = diffs.iter().take(6).map(String::as_str).collect();
            let more = if diffs.len() > shown.len() { format!(" and {} more", diffs.len() - shown.len()) } else { String::new() };
            let what = if inputs {
                "the model or the corpus changed since it was written (their content differs), so its evaluations \
                 measured other inputs; start a new search in another directory"
            } else {
                "was written by a different search config (strategy, space, seed, shape or fitness differ)"
            };
            return Err(SearchError::checkpoint(&cp_path, format!("{what}; differs at: {}{more}", shown.join(", "))));
        }
        if cp.strategy != self.strategy.name() {
            return Err(SearchError::checkpoint(&cp_path, format!("was written by strategy `{}`", cp.strategy)));
        }
        self.strategy.load_state(cp.strategy_state).map_err(from_core)?;
        self.generation = cp.generation;
        self.history = cp.history;
        self.curve = cp.curve;
        self.cost = cp.cost;
        self.cost.resumes += 1;
        self.cache = self.history.iter().enumerate().map(|(i, r)| (candidate_key(&r.candidate), i)).collect();
        // The journal's lines beyond the checkpoint (a torn last line is dropped).
        let mut tail = Vec::new();
        if let Ok(f) = std::fs::File::open(self.paths.history()) {
            let lines: Vec<String> = std::io::BufReader::new(f).lines().map_while(|l| l.ok()).collect();
            for line in lines.iter().skip(self.history.len()) {
                match serde_json::from_str::<Record>(line) {
                    Ok(rec) => tail.push(rec),
                    Err(_) => break,
                }
            }
        }
        let mut text = String::new();
        for rec in self.history.iter().chain(&tail) {
            text.push_str(&serde_json::to_string(rec).expect("records serialize"));
            text.push('\n');
        }
        write_atomic(&self.paths.history(), text.as_bytes())?;
        // The killed run also spent time after its checkpoint: at least until its last journaled evaluation.
        let wall = tail.iter().filter_map(|r| r.wall_seconds).fold(self.cost.wall_seconds, f64::max);
        self.salvaged = tail.into_iter().map(|r| (candidate_key(&r.candidate), r)).collect();
        Ok(wall)
    }
}

/// The paths (`a.b[2].c`) at which two JSON values differ, depth first.
fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => json_diff(&join(k), u, v, out),
                    _ => out.push(join(k)),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}[{i}]"), u, v, out);
            }
        }
        _ if a != b => out.push(if path.is_empty() { "(root)".into() } else { path.to_string() }),
        _ => {}
    }
}
