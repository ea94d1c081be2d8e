//! The experiment runner: searches first, then every cell (model x method x evaluator x length x seed), each
//! model loaded once. Cells are trials of one study in a `longrope_storage::Storage` ([`crate::cells`]), keyed by
//! the SHA-256 of the cell's resolved config and of its inputs' *content* ([`crate::identity`]), so a re-run or
//! `--resume` skips a finished cell, and weights or texts changed in place are computed again:
//! - with files (`--out DIR`, the default) each finished cell is `OUT/cells/KEY.json`, written atomically
//!   (`longrope_core::files`): a kill or a full disk loses at most the cell in progress;
//! - with a database (`--storage URL`) the cells are a study that `longrope worker` processes on any machine
//!   share with the runner; the report is built from the database.
//!
//! Search steps run through `longrope_search::Driver` with the model-backed `EvaluatorFitness` and checkpoint
//! per generation (in the same storage: workers evaluate their candidates too); a finished search is cached in
//! `OUT/searches/NAME-HASH/experiment_summary.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use longrope_core::eval::{Score, TokenSource};
use longrope_core::files::{prepare_out_dir, write_atomic, OutputKind};
use longrope_core::model::{LoadOptions, ModelSummary};
use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use longrope_data::corpus::CorpusSet;
use longrope_search::driver::{DriverOptions, Outcome, StudyTarget};
use longrope_storage::{Claim, FileStorage, OpenMode, Storage, StudyKind, StudySettings, StudySpec, TrialState};
use longrope_search::outputs::{CostAccount, CurvePoint, SeedResult};
use longrope_search::{candidate_to_toml, Driver, EvaluatorFitness};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cells::{compute_cell, CellTask, Models};
use crate::config::{parse_scaling_table, referenced_files, Experiment, FinetuneSpec, MethodSource, MethodSpec, ModelEntry, SearchSpec};
use crate::error::{ExperimentError, Result};
use crate::report::{self, Machine, Results};

/// Version of the cell identity; bump it when the meaning of a cached cell changes (2: inputs identified by
/// their content, [`crate::identity`]).
pub const CELL_FORMAT: u32 = 2;

/// How a run is driven.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Output directory.
    pub out_dir: PathBuf,
    /// Reuse an output directory written by a different version of the experiment file (its unchanged cells
    /// are skipped). The same experiment always reuses its cells.
    pub resume: bool,
    /// Stop cleanly after computing this many new cells (tests; splitting a long run into jobs).
    pub stop_after_cells: Option<usize>,
    /// A database shared with workers (`sqlite:PATH`, `postgres://...`) instead of the files in `out_dir`.
    pub storage: Option<String>,
    /// The study's name in the database (default: the experiment's name).
    pub study: Option<String>,
}

impl RunOptions {
    /// A run into `out_dir` with files.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        RunOptions { out_dir: out_dir.into(), resume: false, stop_after_cells: None, storage: None, study: None }
    }

    /// Open the storage this run keeps its cells and searches in.
    pub fn open_storage(&self) -> Result<Box<dyn Storage>> {
        match &self.storage {
            Some(url) => Ok(longrope_storage::open(url)?),
            None => Ok(Box::new(FileStorage::new(&self.out_dir))),
        }
    }

    /// The name of a study of this run: the experiment's cells (`sub` = `None`) or one of its searches.
    fn study_name(&self, exp: &Experiment, sub: Option<&str>) -> String {
        match (&self.storage, sub) {
            (None, None) => String::new(),
            (None, Some(rel)) => rel.to_string(),
            (Some(_), None) => self.study.clone().unwrap_or_else(|| exp.file.name.clone()),
            (Some(_), Some(rel)) => format!("{}/{rel}", self.study.clone().unwrap_or_else(|| exp.file.name.clone())),
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// Every cell is done; the report is written.
    Finished(Box<Results>),
    /// Stopped by [`RunOptions::stop_after_cells`] after computing this many cells.
    Stopped {
        /// Cells computed by this invocation.
        computed: usize,
    },
}

/// One finished cell, as cached in `cells/KEY.json` and listed in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// The cell's cache key.
    pub key: String,
    /// Model name.
    pub model: String,
    /// Method name (`base[field=value]` for ablation variants).
    pub method: String,
    /// The `[[method]]` it derives from.
    pub method_base: String,
    /// Ablation settings (field, value).
    pub ablation: Vec<(String, String)>,
    /// `[[eval]]` entry name.
    pub eval: String,
    /// Evaluator plugin.
    pub evaluator: String,
    /// Context length evaluated.
    pub length: usize,
    /// Seed (when the entry has seeds).
    pub seed: Option<u64>,
    /// Target context `L'` of the scaling.
    pub target: usize,
    /// The model's trained context `L`.
    pub trained_context: usize,
    /// Scaling plugin name.
    pub scaling: String,
    /// Its resolved parameters.
    pub scaling_params: serde_json::Value,
    /// The evaluator's score.
    pub score: Score,
}

/// A finished search step, as cached and listed in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Search name.
    pub name: String,
    /// The `[[search]]` it derives from.
    pub base: String,
    /// Model name.
    pub model: String,
    /// Strategy plugin.
    pub strategy: String,
    /// Fitness evaluator.
    pub evaluator: String,
    /// Target length `L'`.
    pub target_length: usize,
    /// The RoPE shape searched.
    pub shape: RopeShape,
    /// The best candidate.
    pub best: Candidate,
    /// Its fitness.
    #[serde(with = "longrope_search::fitness::serde_fitness")]
    pub best_fitness: f64,
    /// Best fitness after each generation.
    pub curve: Vec<CurvePoint>,
    /// The cost account.
    pub cost: CostAccount,
    /// The seeds of the initial population and their fitness where the search evaluated them (absent in
    /// results written before this field existed).
    #[serde(default)]
    pub seeds: Vec<SeedResult>,
    /// Identity hash (search config + model).
    pub hash: String,
    /// Its output directory, relative to the run's.
    pub dir: String,
}

/// SHA-256 of a JSON value's canonical text (object keys sorted by `serde_json`'s map).
pub fn hash_json(v: &serde_json::Value) -> String {
    let text = serde_json::to_string(v).expect("JSON values serialize");
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file name from a free-form name (ablation variants have brackets and `=`).
pub fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

/// The identity of a model entry's inputs ([`crate::identity::inputs`]) with or without the corpus.
fn inputs_identity(m: &ModelEntry, data: Option<&[PathBuf]>) -> Result<serde_json::Value> {
    crate::identity::inputs(&m.path, &m.dtype, &m.device, data)
}

/// Run an experiment into `opts.out_dir`; `log` receives one progress line per step.
pub fn run(exp: &Experiment, opts: &RunOptions, log: &mut dyn FnMut(String)) -> Result<RunOutcome> {
    let started = Instant::now();
    let out = &opts.out_dir;
    // Refuses a directory of another kind (ppl results, a search, a token store) and an unwritable one before
    // anything is computed.
    prepare_out_dir(out, OutputKind::Experiment)?;
    for d in [out.join("searches"), out.join("models")] {
        std::fs::create_dir_all(&d).map_err(|e| ExperimentError::io(&d, e))?;
    }
    // The study's config ties its cells (and, with files, the directory) to one experiment file.
    let file_json = serde_json::to_value(&exp.file).expect("experiment files serialize");
    let config_hash = hash_json(&file_json);
    let config = serde_json::json!({"name": exp.file.name, "config_hash": config_hash, "config": file_json});
    let spec = StudySpec {
        name: opts.study_name(exp, None),
        kind: StudyKind::Experiment,
        config: config.clone(),
        identity: serde_json::Value::Null,
        derived: serde_json::Value::Null,
        settings: StudySettings::default(),
    };
    let mut storage = opts.open_storage()?;
    let study = storage.open_study(&spec, if opts.resume { OpenMode::Adopt } else { OpenMode::Join })?;
    if opts.storage.is_some() {
        log(format!("experiment `{}`: cells in study `{}` of {}", exp.file.name, study.name, storage.location()));
        let mut manifest = config.clone();
        manifest["storage"] = serde_json::Value::from(storage.location());
        manifest["study"] = serde_json::Value::from(study.name.clone());
        write_atomic(&out.join("experiment.json"), serde_json::to_string_pretty(&manifest).expect("json").as_bytes())?;
    }
    let worker = longrope_storage::worker_name();
    let beats = longrope_storage::HeartbeatThread::start(storage.heartbeats()?, worker.clone(), study.settings.grace_seconds / 4.0);
    let mut models = Models::new();

    // Fine-tuned models are evaluated like models, on the base model's dtype and device, after it.
    let slots: Vec<(&ModelEntry, Option<&FinetuneSpec>)> = exp
        .models
        .iter()
        .flat_map(|m| std::iter::once((m, None)).chain(exp.finetunes.iter().filter(|f| f.model == m.name).map(move |f| (m, Some(f)))))
        .collect();
    let slot_name = |(m, f): &(&ModelEntry, Option<&FinetuneSpec>)| f.map(|f| f.name.clone()).unwrap_or_else(|| m.name.clone());
    let total_cells: usize = slots
        .iter()
        .map(|slot| {
            let name = slot_name(slot);
            exp.evals
                .iter()
                .filter(|e| exp.eval_runs_on(e, &name))
                .map(|e| exp.methods_for(e, &name).len() * e.lengths.len() * e.seeds.len())
                .sum::<usize>()
        })
        .sum();
    let mut done = 0usize;
    let mut computed = 0usize;
    let mut searches: Vec<SearchResult> = Vec::new();
    let mut finetunes: Vec<FinetuneResult> = Vec::new();
    let mut summaries: BTreeMap<String, ModelSummary> = BTreeMap::new();
    let mut cells: Vec<CellResult> = Vec::new();
    let mut model_infos: Vec<report::ModelInfo> = Vec::new();

    for slot in &slots {
        let (base, finetune) = *slot;
        let owned;
        let m: &ModelEntry = match finetune {
            None => base,
            Some(f) => {
                let r = run_finetune(exp, f, base, out, &searches, log)?;
                owned = ModelEntry { name: f.name.clone(), path: out.join(&r.dir).join("model"), dtype: base.dtype.clone(), device: base.device.clone() };
                finetunes.push(r);
                &owned
            }
        };
        model_infos.push(report::ModelInfo { name: m.name.clone(), path: m.path.display().to_string(), dtype: m.dtype.clone(), device: m.device.clone(), summary: None });
        // What the model and the corpus contain, fingerprinted once per model (digests are cached).
        log(format!("fingerprinting the inputs of {} ({})", m.name, m.path.display()));
        let with_data = inputs_identity(m, Some(&exp.corpus))?;
        let without_data = inputs_identity(m, None)?;
        let summary_path = out.join("models").join(format!("{}.json", file_stem(&m.name)));
        // Searches on this model.
        for s in exp.searches.iter().filter(|s| s.model == m.name) {
            let r = run_search(exp, s, m, opts, &mut models, log)?;
            searches.push(r);
        }
        // Plan the cells: one trial each, keyed by its content identity.
        let mut planned: Vec<(String, CellTask)> = Vec::new();
        for e in exp.evals.iter().filter(|e| exp.eval_runs_on(e, &m.name)) {
            for method in exp.methods_for(e, &m.name) {
                let (scaling_table, base_dir, from_target, scaling_id) = method_scaling(exp, method, &searches)?;
                let target = method.target.or(from_target).or(exp.file.target);
                for &length in &e.lengths {
                    for &seed in &e.seeds {
                        let inputs = if e.evaluator == "passkey" { &without_data } else { &with_data };
                        let identity = serde_json::json!({
                            "format": CELL_FORMAT,
                            "inputs": inputs,
                            "finetune": finetunes.iter().find(|f| f.name == m.name).map(|f| f.hash.clone()),
                            "scaling": scaling_id,
                            "target": target,
                            "target_rule": if target.is_none() { serde_json::json!({"longest": exp.longest_length(&m.name)}) } else { serde_json::Value::Null },
                            "evaluator": serde_json::to_value(e.table_for(seed)).unwrap_or_default(),
                            "length": length,
                        });
                        done += 1;
                        let label = format!(
                            "[{done:>3}/{total_cells}] {} {} {}@{}{}",
                            m.name,
                            method.name,
                            e.name,
                            length,
                            seed.map(|s| format!(" seed={s}")).unwrap_or_default()
                        );
                        planned.push((
                            hash_json(&identity),
                            CellTask {
                                label,
                                experiment: exp.path.clone(),
                                plugins: exp.plugins.clone(),
                                model: m.clone(),
                                corpus: exp.corpus.clone(),
                                inputs: inputs.clone(),
                                method: method.name.clone(),
                                method_base: method.base.clone(),
                                ablation: method.ablation.clone(),
                                eval: e.name.clone(),
                                evaluator: e.evaluator.clone(),
                                eval_table: e.table_for(seed),
                                length,
                                seed,
                                scaling_table: scaling_table.clone(),
                                base_dir: base_dir.clone(),
                                target,
                                longest: exp.longest_length(&m.name),
                            },
                        ));
                    }
                }
            }
        }
        let payloads: Vec<(String, serde_json::Value)> =
            planned.iter().map(|(k, t)| (k.clone(), serde_json::to_value(t).expect("cell tasks serialize"))).collect();
        storage.add_trials(study.id, &payloads)?;
        // Cached cells are reported in order; the others are computed here or by workers elsewhere.
        let by_key = |trials: Vec<longrope_storage::Trial>| -> BTreeMap<String, longrope_storage::Trial> {
            trials.into_iter().map(|t| (t.key.clone(), t)).collect()
        };
        let mut state = by_key(storage.trials(study.id, None)?);
        let mut pending = std::collections::BTreeSet::new();
        for (key, task) in &planned {
            match state.get(key).and_then(|t| t.result.clone().filter(|_| t.state == TrialState::Complete)) {
                Some(r) if serde_json::from_value::<CellResult>(r.clone()).is_ok() => {
                    let cell: CellResult = serde_json::from_value(r).expect("checked");
                    log(format!("{}: {} = {:.4} (cached)", task.label, cell.score.metric, cell.score.value));
                }
                _ => {
                    pending.insert(key.clone());
                }
            }
        }
        while !pending.is_empty() {
            if let Some(k) = opts.stop_after_cells {
                if computed >= k {
                    log(format!("stopped after {computed} new cells (--stop-after-cells); run again to continue"));
                    return Ok(RunOutcome::Stopped { computed });
                }
            }
            if let Some(t) = storage.claim(&worker, Claim::Study(study.id))? {
                let task: CellTask = serde_json::from_value(t.payload.clone())
                    .map_err(|e| ExperimentError::config(&exp.path, format!("cell {}: its task does not parse: {e}", t.key)))?;
                beats.hold(std::slice::from_ref(&t));
                let result = compute_cell(&task, &mut models, log);
                beats.release();
                match result {
                    Ok(mut cell) => {
                        cell.key = t.key.clone();
                        log(format!("{}: {} = {:.4} ({} tokens, {:.1} s)", task.label, cell.score.metric, cell.score.value, cell.score.tokens, cell.score.seconds));
                        let value = serde_json::to_value(&cell).expect("cells serialize");
                        storage.complete(study.id, t.number, &worker, &value, Some(cell.score.value), cell.score.seconds)?;
                        computed += 1;
                        pending.remove(&t.key);
                    }
                    Err(e) => {
                        let message = longrope_core::error::chain_message(&e);
                        storage.fail(study.id, t.number, &worker, &message)?;
                        if opts.storage.is_none() {
                            // One process: stop at the first error, as before the storage layer.
                            return Err(ExperimentError::Core(longrope_core::Error::invalid(
                                task.label.clone(),
                                format!("{message} (finished cells are cached in {})", out.join("cells").display()),
                            )));
                        }
                        log(format!("{}: failed: {message}", task.label));
                    }
                }
                continue;
            }
            // Nothing to claim: the rest is running elsewhere (or failed).
            state = by_key(storage.trials(study.id, None)?);
            for key in pending.clone() {
                match state.get(&key).map(|t| t.state) {
                    Some(TrialState::Complete) => {
                        let t = &state[&key];
                        if let Some((_, task)) = planned.iter().find(|(k, _)| *k == key) {
                            log(format!("{}: computed by {}", task.label, t.worker.clone().unwrap_or_else(|| "another worker".into())));
                        }
                        pending.remove(&key);
                    }
                    Some(TrialState::Failed) => {
                        let t = &state[&key];
                        let label = planned.iter().find(|(k, _)| *k == key).map(|(_, t)| t.label.clone()).unwrap_or(key.clone());
                        return Err(ExperimentError::Core(longrope_core::Error::invalid(
                            format!("cell {label}"),
                            format!("failed for good: {}", t.error.clone().unwrap_or_default()),
                        )));
                    }
                    _ => {}
                }
            }
            if !pending.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        }
        // The slot's cells, in plan order, as stored.
        state = by_key(storage.trials(study.id, None)?);
        for (key, task) in &planned {
            let result = state.get(key).and_then(|t| t.result.clone()).ok_or_else(|| {
                ExperimentError::config(&exp.path, format!("cell {}: no result stored", task.label))
            })?;
            let cell: CellResult = serde_json::from_value(result)
                .map_err(|e| ExperimentError::config(&exp.path, format!("cell {}: stored result does not parse: {e}", task.label)))?;
            cells.push(CellResult { key: key.clone(), model: m.name.clone(), method: task.method.clone(), eval: task.eval.clone(), ..cell });
        }
        if models.summary_of(&m.path, &m.dtype, &m.device).is_none() && !summary_path.exists() {
            // Every cell was computed elsewhere (by workers): load the model for its summary, as a run that
            // computed a cell would have.
            models.model(&m.path, &m.dtype, &m.device, log)?;
        }
        if let Some(s) = models.summary_of(&m.path, &m.dtype, &m.device) {
            write_atomic(&summary_path, serde_json::to_string_pretty(&s).expect("json").as_bytes())?;
        }
        if let Ok(text) = std::fs::read_to_string(&summary_path) {
            if let Ok(s) = serde_json::from_str::<ModelSummary>(&text) {
                summaries.insert(m.name.clone(), s);
            }
        }
    }
    beats.stop();
    for mi in &mut model_infos {
        mi.summary = summaries.get(&mi.name).cloned();
    }
    let results = Results {
        experiment: exp.file.name.clone(),
        description: exp.file.description.clone(),
        config_hash,
        models: model_infos,
        cells,
        searches,
        finetunes,
        machine: Machine::detect(),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    // With a database the results are kept in the study too (`longrope study export` writes them back): each
    // finished run stores them as the next checkpoint.
    if opts.storage.is_some() {
        let next = storage.checkpoint(study.id, None)?.map(|(g, _)| g + 1).unwrap_or(0);
        storage.save_checkpoint(study.id, next, &serde_json::to_value(&results).expect("results serialize"))?;
    }
    storage.finish_study(study.id, None)?;
    report::write_all(out, &results, log)?;
    Ok(RunOutcome::Finished(Box::new(results)))
}

/// A method's scaling table, the directory its relative paths are resolved from, the target of a searched
/// method, and the identity of its config (for the cell cache).
fn method_scaling(
    exp: &Experiment,
    method: &MethodSpec,
    searches: &[SearchResult],
) -> Result<(toml::Table, PathBuf, Option<usize>, serde_json::Value)> {
    match &method.source {
        MethodSource::Scaling { table, base_dir } => {
            let config = parse_scaling_table(table, base_dir, &method.name)?;
            let mut files = serde_json::Map::new();
            for (field, p) in referenced_files(table, base_dir) {
                files.insert(field, serde_json::Value::String(longrope_core::digest::digest(&p)?));
            }
            let id = serde_json::json!({"config": serde_json::to_value(&config).unwrap_or_default(), "files": files});
            Ok((table.clone(), base_dir.clone(), None, id))
        }
        MethodSource::FromSearch(name) => {
            let r = searches.iter().find(|r| &r.name == name).ok_or_else(|| {
                ExperimentError::config(&exp.path, format!("method `{}`: search `{name}` has not run (it runs on another model)", method.name))
            })?;
            let text = candidate_to_toml(&r.best, &r.shape);
            let table: toml::Table = toml::from_str(&text).expect("candidate TOML parses");
            let id = serde_json::json!({"from_search": r.hash, "config": text});
            Ok((table, exp.path.parent().unwrap_or(Path::new("")).to_path_buf(), Some(r.target_length), id))
        }
    }
}

/// A finished fine-tune step, as cached and listed in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneResult {
    /// The fine-tuned model's name.
    pub name: String,
    /// The base model.
    pub model: String,
    /// The method trained under.
    pub method: String,
    /// Target context `L'`.
    pub target: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Tokens trained on.
    pub tokens: u64,
    /// Wall time of the training (all attempts up to their last checkpoint), seconds.
    pub wall_seconds: f64,
    /// Peak RSS of the process that finished it (MiB).
    pub peak_rss_mib: Option<f64>,
    /// Trainable values.
    pub trainable_values: i64,
    /// Whether LoRA adapters were trained.
    pub lora: bool,
    /// The training documents.
    pub train_docs: Vec<String>,
    /// `(tokens seen, loss)` after each step.
    pub loss_curve: Vec<(u64, f64)>,
    /// Identity hash (recipe + method + base model + data).
    pub hash: String,
    /// Its output directory (checkpoints, log, `model/`), relative to the run's.
    pub dir: String,
}

/// Train (or load the cached result of) one fine-tune step; an unfinished one resumes from its checkpoint.
fn run_finetune(
    exp: &Experiment,
    f: &FinetuneSpec,
    base: &ModelEntry,
    out: &Path,
    searches: &[SearchResult],
    log: &mut dyn FnMut(String),
) -> Result<FinetuneResult> {
    let method = exp.methods.iter().find(|m| m.name == f.method && m.ablation.is_empty()).expect("validated");
    let (scaling, _, from_target, scaling_id) = method_scaling(exp, method, searches)?;
    let target = method.target.or(from_target).or(exp.file.target).ok_or_else(|| ExperimentError::config(&exp.path, format!("[[finetune]] `{}`: no target", f.name)))?;
    let spec = f.build(scaling, target)?;
    let hash = hash_json(&serde_json::json!({
        "recipe": serde_json::to_value(&spec.file).unwrap_or_default(),
        "scaling": scaling_id,
        "inputs": inputs_identity(base, Some(&spec.file.data.train))?,
    }));
    let rel = format!("finetunes/{}-{}", file_stem(&f.name), &hash[..12]);
    let dir = out.join(&rel);
    let result_path = dir.join("experiment_finetune.json");
    if let Ok(text) = std::fs::read_to_string(&result_path) {
        if let Ok(r) = serde_json::from_str::<FinetuneResult>(&text) {
            if dir.join("model/config.json").exists() {
                log(format!("finetune {}: {} steps, loss {:.4} -> {:.4} (cached)", f.name, r.steps, r.loss_curve.first().map(|p| p.1).unwrap_or(f64::NAN), r.loss_curve.last().map(|p| p.1).unwrap_or(f64::NAN)));
                return Ok(r);
            }
        }
    }
    let m = &spec.file.model;
    let options = LoadOptions { device: longrope_core::device::parse_device(&m.device)?, dtype: longrope_core::device::parse_dtype(&m.dtype)?, sliding_window: None };
    log(format!("finetune {}: loading {} ({}) to train under `{}`", f.name, base.name, m.path.display(), f.method));
    let mut model = longrope_models::load(&m.path, &options)?;
    let resume = !longrope_train::checkpoint::list(&dir.join("checkpoints")).is_empty();
    let opts = longrope_train::RunOptions {
        out_dir: dir.clone(),
        resume,
        stop_after_steps: None,
        progress: true,
        model_identity: Some(crate::identity::model_content(&m.path)?),
    };
    let trainer = longrope_train::Trainer::new(&spec, model.as_mut(), opts)?;
    // Evaluation never reads a document the model was trained on.
    if !exp.corpus.is_empty() {
        let trained: std::collections::BTreeMap<&str, &str> = trainer.manifest().train_docs.iter().map(|d| (d.sha256.as_str(), d.name.as_str())).collect();
        let eval_docs = CorpusSet::open(&exp.corpus, trainer.tokenizer())?;
        for i in 0..eval_docs.num_docs() {
            let sha = longrope_data::windows::tokens_sha256(&eval_docs.doc(i)?);
            if let Some(name) = trained.get(sha.as_str()) {
                return Err(ExperimentError::config(
                    &exp.path,
                    format!("[[finetune]] `{}`: evaluation document `{}` is in the training data (as `{name}`): list it in the recipe's data.held_out", f.name, eval_docs.doc_name(i)),
                ));
            }
        }
    }
    let manifest = trainer.manifest().clone();
    let outcome = trainer.run(log)?;
    let longrope_train::Outcome::Finished(summary) = outcome else {
        return Err(ExperimentError::config(&exp.path, format!("finetune `{}` stopped before finishing", f.name)));
    };
    let records = longrope_train::trainer::read_log(&dir.join("train_log.jsonl"))?;
    let r = FinetuneResult {
        name: f.name.clone(),
        model: base.name.clone(),
        method: f.method.clone(),
        target,
        steps: summary.steps,
        tokens: summary.tokens,
        wall_seconds: summary.wall_seconds,
        peak_rss_mib: summary.peak_rss_mib,
        trainable_values: manifest.trainable_values,
        lora: spec.file.lora.is_some(),
        train_docs: manifest.train_docs.iter().map(|d| d.name.clone()).collect(),
        loss_curve: records.iter().map(|r| (r.tokens_seen, r.loss)).collect(),
        hash,
        dir: rel,
    };
    log(format!("finetune {}: {} steps, {} tokens, {:.1} min, loss {:.4} -> {:.4}", f.name, r.steps, r.tokens, r.wall_seconds / 60.0, summary.first_loss, summary.last_loss));
    write_atomic(&result_path, serde_json::to_string_pretty(&r).expect("json").as_bytes())?;
    Ok(r)
}

/// Run (or load the cached result of) one search step: a search study in the run's storage (with a
/// database, workers evaluate its candidates too), exported to `OUT/searches/NAME-HASH`.
fn run_search(
    exp: &Experiment,
    s: &SearchSpec,
    m: &ModelEntry,
    opts: &RunOptions,
    models: &mut Models,
    log: &mut dyn FnMut(String),
) -> Result<SearchResult> {
    let out = &opts.out_dir;
    let mut file_json = serde_json::to_value(&s.file).unwrap_or_default();
    if let Some(o) = file_json.as_object_mut() {
        o.remove("workers");
        o.remove("model");
        o.remove("shape");
    }
    let corpus = if s.file.fitness.corpus.is_empty() { exp.corpus.clone() } else { s.file.fitness.corpus.clone() };
    // The same identity `longrope search` puts in its checkpoints: the search runs again when the model or
    // the fitness corpus changed, in another directory.
    let inputs = inputs_identity(m, Some(&corpus))?;
    let hash = hash_json(&serde_json::json!({"search": file_json, "inputs": inputs}));
    let rel = format!("searches/{}-{}", file_stem(&s.name), &hash[..12]);
    let dir = out.join(&rel);
    let summary_path = dir.join("experiment_summary.json");
    if let Ok(text) = std::fs::read_to_string(&summary_path) {
        if let Ok(r) = serde_json::from_str::<SearchResult>(&text) {
            log(format!("search {}: best fitness {:.4} after {} evaluations (cached)", s.name, r.best_fitness, r.cost.evaluations));
            return Ok(r);
        }
    }
    let model = models.model(&m.path, &m.dtype, &m.device, log)?;
    let summary = model.summary().clone();
    let (model, source) = models.with_corpus(&corpus)?;
    let shape = summary.rope_shape(s.file.target_length);
    let (strategy, ctx) = s.file.build(&shape, &s.file.registry_seeds(Some(&summary.arch)))?;
    let seeds = ctx.seed_candidates()?;
    let strategy_name = strategy.name().to_string();
    let mut fitness = EvaluatorFitness::from_section(model, source as &dyn TokenSource, &s.file.fitness, shape.clone())?;
    let resume = opts.storage.is_none() && dir.join("checkpoint.json").exists();
    log(format!(
        "search {}: {} on {} at {} tokens, budget {} evaluations{}",
        s.name,
        strategy_name,
        m.name,
        s.file.target_length,
        s.file.strategy.budget(),
        if resume { " (resuming)" } else { "" }
    ));
    let driver_opts = DriverOptions { resume, progress: true, ..DriverOptions::new(dir.clone()) };
    let mut meta = if opts.storage.is_some() {
        // Workers elsewhere load the model and the corpus the study names.
        let mut file = s.file.clone_with_model(m.path.clone(), m.dtype.clone(), m.device.clone(), corpus.clone())?;
        file.workers = 1;
        file.meta(&shape)
    } else {
        s.file.meta(&shape)
    };
    meta["inputs"] = inputs;
    let mut driver = Driver::new(strategy, &mut fitness, shape.clone(), meta, driver_opts).with_seeds(seeds);
    if opts.storage.is_some() {
        let target = StudyTarget { storage: opts.open_storage()?, name: opts.study_name(exp, Some(&rel)), settings: StudySettings::default() };
        driver = driver.with_storage(target, longrope_search::SearchFile::study_derived(&ctx));
    }
    let outcome = driver.run()?;
    let Outcome::Finished(summary) = outcome else {
        return Err(ExperimentError::config(&exp.path, format!("search `{}` stopped before finishing", s.name)));
    };
    let r = SearchResult {
        name: s.name.clone(),
        base: s.base.clone(),
        model: m.name.clone(),
        strategy: strategy_name,
        evaluator: s.file.fitness.evaluator.clone(),
        target_length: s.file.target_length,
        shape,
        best: summary.best.candidate.clone(),
        best_fitness: summary.best.fitness,
        curve: summary.curve,
        cost: summary.cost,
        seeds: summary.seeds,
        hash,
        dir: rel,
    };
    log(format!("search {}: best fitness {:.4} after {} evaluations", s.name, r.best_fitness, r.cost.evaluations));
    write_atomic(&summary_path, serde_json::to_string_pretty(&r).expect("json").as_bytes())?;
    Ok(r)
}
