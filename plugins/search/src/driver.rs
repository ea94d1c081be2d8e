//! The search driver: one process running a search study ([`crate::study`]) to its end, evaluating trials
//! with its own [`Fitness`] while other processes may do the same (`longrope worker`).
//!
//! Where the state lives is a [`Storage`]: by default today's files in `out_dir` ([`FileStorage`]), or a
//! database shared with other processes ([`Driver::with_storage`]). Durability with files (see
//! `docs/search.md`):
//! - `history.jsonl` gets each evaluation as soon as its fitness batch (one candidate per worker) returns;
//! - `checkpoint.json` is replaced atomically after every generation, and once before the first: the run's
//!   identity (`meta`: the search config and, from the callers, the content identity of the model and the
//!   corpus), the strategy's state (population, RNG state ...), the history, the curve and the cost account;
//! - `resume` reloads the checkpoint, refuses it when `meta` differs (naming what differs: a changed corpus
//!   or model is never mixed into the history) and takes the evaluations that `history.jsonl` holds beyond it
//!   (the part of a generation finished before a kill) as already done;
//! - a fresh run refuses a directory holding a checkpoint with evaluations, but replaces one with none.
//!
//! Strategies are deterministic given their state and fitness is deterministic, so a resumed run, or a study
//! run by several processes, proposes exactly the candidates the uninterrupted single-process run would have,
//! re-evaluates none that were recorded, and ends with the same result.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use longrope_core::search::Candidate;
use longrope_core::{RopeShape, SearchStrategy};
use longrope_storage::{FileStorage, OpenMode, Storage, StudyKind, StudySettings, StudySpec};

use crate::error::{Result, SearchError};
use crate::fitness::Fitness;
use crate::outputs::{best_record, seed_results, write_results, CostAccount, CurvePoint, OutputPaths, Record, SeedResult};
use crate::study::{claim_trials, evaluate_trials, Advance, SearchStudy};

pub use crate::study::{candidate_key, CHECKPOINT_VERSION};

/// How a run is driven.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverOptions {
    /// Output directory: the search directory with files; with a database, where the study is exported when
    /// it finishes (today's format, for `longrope compare` and reports).
    pub out_dir: PathBuf,
    /// Continue from the checkpoint in `out_dir` (a database study: require that it exists).
    pub resume: bool,
    /// Stop (as if killed, but cleanly) once this many generations are checkpointed, counting those before a
    /// resume. For tests and for splitting a long search into jobs.
    pub stop_after_generations: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Return as soon as the study has a generation waiting for workers (a database study that `longrope
    /// worker` processes finish).
    pub detach: bool,
}

impl DriverOptions {
    /// Fresh run into `out_dir`, no progress bar.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        DriverOptions { out_dir: out_dir.into(), resume: false, stop_after_generations: None, progress: false, detach: false }
    }
}

/// What a search directory's `checkpoint.json` holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// Left to workers ([`DriverOptions::detach`]) with this generation waiting.
    Detached {
        /// The generation waiting for workers.
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
    /// Evaluations made by this process (not counting those done before a resume, or by other workers).
    pub evaluated_now: usize,
    /// Evaluations recovered on resume from `history.jsonl` beyond the checkpoint (not re-run).
    pub recovered: usize,
    /// The named seeds ([`Driver::with_seeds`]) and their fitness where evaluated.
    pub seeds: Vec<SeedResult>,
}

/// A database study to run instead of the files in `out_dir`.
pub struct StudyTarget {
    /// The storage.
    pub storage: Box<dyn Storage>,
    /// The study's name.
    pub name: String,
    /// Retry rules, when the study is created.
    pub settings: StudySettings,
}

/// The driver of one search run.
pub struct Driver<'a> {
    strategy: Box<dyn SearchStrategy>,
    fitness: &'a mut dyn Fitness,
    shape: RopeShape,
    meta: serde_json::Value,
    opts: DriverOptions,
    seeds: Vec<(String, Candidate)>,
    derived: serde_json::Value,
    target: Option<StudyTarget>,
    log: Option<Box<dyn FnMut(String) + 'a>>,
}

/// Split a run's `meta` into the study's config and identity (`meta.inputs`, the content of model and corpus).
pub fn split_meta(meta: &serde_json::Value) -> (serde_json::Value, serde_json::Value) {
    let mut config = meta.clone();
    let identity = config.as_object_mut().and_then(|o| o.remove("inputs")).unwrap_or(serde_json::Value::Null);
    (config, identity)
}

/// How long a process waits between polls while other workers hold the rest of a generation.
const POLL: Duration = Duration::from_millis(250);

impl<'a> Driver<'a> {
    /// A driver for `strategy`, measuring with `fitness`. `shape` is used for the exported results; `meta`
    /// identifies the run (the search config, with the inputs' identity under `inputs`) and is checked on
    /// resume.
    pub fn new(
        strategy: Box<dyn SearchStrategy>,
        fitness: &'a mut dyn Fitness,
        shape: RopeShape,
        meta: serde_json::Value,
        opts: DriverOptions,
    ) -> Self {
        Driver {
            strategy,
            fitness,
            shape,
            meta,
            opts,
            seeds: Vec::new(),
            derived: serde_json::Value::Null,
            target: None,
            log: None,
        }
    }

    /// Name the seeds of the initial population ([`crate::SearchContext::seed_candidates`]) so that the
    /// results report their fitness (`seeds.json`, [`Summary::seeds`]) next to the search's best.
    pub fn with_seeds(mut self, seeds: Vec<(String, Candidate)>) -> Self {
        self.seeds = seeds;
        self
    }

    /// Run the study `target.name` in a database (created, or joined when it exists with the same config and
    /// inputs) instead of the files in `out_dir`; `derived` holds what other workers need to rebuild the
    /// strategy ([`crate::config::SearchFile::study_derived`]).
    pub fn with_storage(mut self, target: StudyTarget, derived: serde_json::Value) -> Self {
        self.target = Some(target);
        self.derived = derived;
        self
    }

    /// Send progress lines (one per generation) to `log` instead of the progress bar.
    pub fn with_log(mut self, log: impl FnMut(String) + 'a) -> Self {
        self.log = Some(Box::new(log));
        self
    }

    /// Run (or resume, or join) the search until the strategy is done or the stop point is reached.
    pub fn run(self) -> Result<Outcome> {
        let Driver { strategy, fitness, shape, meta, opts, seeds, derived, target, mut log } = self;
        let (config, identity) = split_meta(&meta);
        let (mut storage, name, settings, files): (Box<dyn Storage>, String, StudySettings, bool) = match target {
            Some(t) => (t.storage, t.name, t.settings, false),
            None => (Box::new(FileStorage::new(&opts.out_dir)), String::new(), StudySettings::default(), true),
        };
        let spec = StudySpec { name, kind: StudyKind::Search, config, identity, derived, settings };
        let mode = match (opts.resume, files) {
            (true, _) => OpenMode::Resume,
            (false, true) => OpenMode::Create,
            (false, false) => OpenMode::Join,
        };
        let study = storage.open_study(&spec, mode)?;
        let worker = longrope_storage::worker_name();
        let beats = longrope_storage::HeartbeatThread::start(
            storage.heartbeats()?,
            worker.clone(),
            study.settings.grace_seconds / 4.0,
        );
        let budget = strategy.budget() as u64;
        let mut engine = SearchStudy::new(storage.as_mut(), study, strategy)?;
        // `cost.resumes` counts restarts of a search directory (`--resume`); joining a database study is no
        // resume (whichever process observes a generation would count it, so the account would depend on timing).
        if opts.resume && files {
            engine.count_resume();
        }
        let bar = if opts.progress && log.is_none() { ProgressBar::new(budget) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} evals {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(format!("search {}", engine.strategy_name()));
        let paths = OutputPaths::new(&opts.out_dir);
        let mut evaluated_now = 0usize;
        let mut waited = Instant::now();
        loop {
            match engine.advance(opts.stop_after_generations)? {
                Advance::Finished => break,
                Advance::Stopped { generation } => {
                    bar.abandon_with_message(format!("stopped after generation {generation}"));
                    return Ok(Outcome::Stopped { generation: generation as usize });
                }
                Advance::Checkpointed { generation } => {
                    let (cp, history) = engine.state()?;
                    if files {
                        write_results(&paths, &shape, &history, &cp.curve, &cp.cost, &seeds)?;
                    }
                    let best = best_record(&history).map(|r| r.fitness).unwrap_or(f64::INFINITY);
                    let line = format!(
                        "generation {:>3}: {:>5} evaluations, best fitness {best:.6}",
                        generation - 1,
                        history.iter().filter(|r| (r.generation as u64) < generation).count()
                    );
                    match &mut log {
                        Some(log) => log(line),
                        None => bar.println(line),
                    }
                    bar.set_position(history.len() as u64);
                }
                Advance::Pending { generation, .. } => {
                    if opts.detach {
                        bar.abandon();
                        return Ok(Outcome::Detached { generation: generation as usize });
                    }
                    let study = engine.study().id;
                    let n = fitness.parallelism();
                    let claimed = if n == 0 { Vec::new() } else { claim_trials(engine.storage(), study, &worker, n)? };
                    if claimed.is_empty() {
                        // Other workers hold the rest of this generation.
                        if waited.elapsed() > Duration::from_secs(30) {
                            bar.set_message(format!("generation {generation}: waiting for other workers"));
                            waited = Instant::now();
                        }
                        std::thread::sleep(POLL);
                        continue;
                    }
                    bar.set_message(format!("generation {generation}"));
                    beats.hold(&claimed);
                    let keep = engine.selection_size();
                    let done = evaluate_trials(engine.storage(), study, &claimed, fitness, &worker, keep);
                    beats.release();
                    let done = done?;
                    if files {
                        if let Some(e) = &done.error {
                            // One process with files: stop at the first error, as before the storage layer (what
                            // the journal holds is kept; `--resume` continues).
                            return Err(SearchError::Fitness(e.strip_prefix("fitness: ").unwrap_or(e).to_string()));
                        }
                    }
                    evaluated_now += done.completed;
                    bar.inc(done.completed as u64);
                    if done.lost > 0 {
                        tracing::warn!("{} trial(s) were re-queued while this process evaluated them (missed heartbeats): their results were dropped", done.lost);
                    }
                }
            }
        }
        bar.finish_and_clear();
        beats.stop();
        let (cp, history) = engine.state()?;
        let recovered = engine.recovered();
        let mut cost = cp.cost.clone();
        let id = engine.study().id;
        cost.wall_seconds = cost.wall_seconds.max(engine.storage().wall_seconds(id)?);
        if files {
            write_results(&paths, &shape, &history, &cp.curve, &cost, &seeds)?;
        } else {
            let name = engine.study().name.clone();
            crate::export::export_study(engine.storage(), &name, &opts.out_dir)?;
        }
        let best = best_record(&history)
            .cloned()
            .ok_or_else(|| SearchError::invalid("search", "the strategy proposed no candidate"))?;
        Ok(Outcome::Finished(Summary {
            best,
            seeds: seed_results(&seeds, &history),
            history,
            curve: cp.curve,
            cost,
            evaluated_now,
            recovered,
        }))
    }
}
