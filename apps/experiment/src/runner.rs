//! The experiment runner: searches first, then every cell (model x method x evaluator x length x seed), each
//! model loaded once, each finished cell cached in `OUT/cells/KEY.json` (KEY = SHA-256 of the cell's resolved
//! config and of its inputs' *content*, [`crate::identity`]), so a re-run or `--resume` skips it, and weights or
//! texts changed in place are computed again. Writes are atomic (`longrope_core::files`): a kill or a full
//! disk loses at most the cell in progress and leaves no temporary file. Search steps run through `longrope_search::Driver` with the model-backed
//! `EvaluatorFitness` and checkpoint per generation; a finished search is cached in
//! `OUT/searches/NAME-HASH/experiment_summary.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use longrope_core::eval::{parse_evaluator_toml, Score, TokenSource};
use longrope_core::files::{prepare_out_dir, write_atomic, OutputKind};
use longrope_core::model::{LanguageModel, LoadOptions, ModelSummary};
use longrope_core::scaling::RopeSchedule;
use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use longrope_data::corpus::CorpusSet;
use longrope_search::driver::{DriverOptions, Outcome};
use longrope_search::outputs::{CostAccount, CurvePoint, SeedResult};
use longrope_search::{candidate_to_toml, fitness_evaluator_config, Driver, EvaluatorFitness};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{parse_scaling_table, referenced_files, EvalSpec, Experiment, FinetuneSpec, MethodSource, MethodSpec, ModelEntry, SearchSpec};
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

/// One planned cell.
struct Planned<'e> {
    method: &'e MethodSpec,
    eval: &'e EvalSpec,
    length: usize,
    seed: Option<u64>,
    key: String,
    scaling_table: toml::Table,
    base_dir: PathBuf,
    target: Option<usize>,
}

fn load_model(m: &ModelEntry) -> Result<Box<dyn LanguageModel>> {
    let device = if m.device == "auto" {
        if tch::Cuda::is_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu }
    } else {
        longrope_core::device::parse_device(&m.device)?
    };
    let options = LoadOptions { device, dtype: longrope_core::device::parse_dtype(&m.dtype)?, sliding_window: None };
    Ok(longrope_models::load(&m.path, &options)?)
}

/// A loaded model with its corpus, created on first use.
struct Loaded {
    model: Box<dyn LanguageModel>,
    data: Option<CorpusSet>,
}

/// Run an experiment into `opts.out_dir`; `log` receives one progress line per step.
pub fn run(exp: &Experiment, opts: &RunOptions, log: &mut dyn FnMut(String)) -> Result<RunOutcome> {
    let started = Instant::now();
    let out = &opts.out_dir;
    let cells_dir = out.join("cells");
    // Refuses a directory of another kind (ppl results, a search, a token store) and an unwritable one before
    // anything is computed.
    prepare_out_dir(out, OutputKind::Experiment)?;
    for d in [cells_dir.clone(), out.join("searches"), out.join("models")] {
        std::fs::create_dir_all(&d).map_err(|e| ExperimentError::io(&d, e))?;
    }
    // The manifest ties the directory to one experiment file.
    let file_json = serde_json::to_value(&exp.file).expect("experiment files serialize");
    let config_hash = hash_json(&file_json);
    let manifest_path = out.join("experiment.json");
    if manifest_path.exists() && !opts.resume {
        let bytes = longrope_core::files::read_bytes(&manifest_path, longrope_core::files::MAX_CONFIG_BYTES)?;
        let old: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| ExperimentError::OutDir {
            path: manifest_path.clone(),
            message: format!(
                "does not parse ({e}), so which experiment wrote {} is unknown: pass --resume to reuse the cells it \
                 holds (each is keyed by its full configuration and inputs, so only matching ones are reused), or choose another --out",
                out.display()
            ),
        })?;
        if old.get("config_hash").and_then(|h| h.as_str()) != Some(config_hash.as_str()) {
            let name = old.get("name").and_then(|n| n.as_str()).map(|n| format!(" (`{n}`)")).unwrap_or_default();
            return Err(ExperimentError::OutDir {
                path: out.clone(),
                message: format!(
                    "holds results of another version of the experiment{name}: pass --resume to reuse its unchanged cells, or choose another --out"
                ),
            });
        }
    }
    let manifest = serde_json::json!({"name": exp.file.name, "config_hash": config_hash, "experiment": exp.path.display().to_string(), "config": file_json});
    write_atomic(&manifest_path, serde_json::to_string_pretty(&manifest).expect("json").as_bytes())?;

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
        let mut loaded: Option<Loaded> = None;
        // What the model and the corpus contain, fingerprinted once per model (digests are cached).
        log(format!("fingerprinting the inputs of {} ({})", m.name, m.path.display()));
        let with_data = inputs_identity(m, Some(&exp.corpus))?;
        let without_data = inputs_identity(m, None)?;
        let summary_path = out.join("models").join(format!("{}.json", file_stem(&m.name)));
        // Searches on this model.
        for s in exp.searches.iter().filter(|s| s.model == m.name) {
            let r = run_search(exp, s, m, out, &mut loaded, log)?;
            searches.push(r);
        }
        // Plan the cells.
        let mut planned = Vec::new();
        for e in exp.evals.iter().filter(|e| exp.eval_runs_on(e, &m.name)) {
            for method in exp.methods_for(e, &m.name) {
                let (scaling_table, base_dir, from_target, scaling_id) = method_scaling(exp, method, &searches)?;
                let target = method.target.or(from_target).or(exp.file.target);
                for &length in &e.lengths {
                    for &seed in &e.seeds {
                        let identity = serde_json::json!({
                            "format": CELL_FORMAT,
                            "inputs": if e.evaluator == "passkey" { &without_data } else { &with_data },
                            "finetune": finetunes.iter().find(|f| f.name == m.name).map(|f| f.hash.clone()),
                            "scaling": scaling_id,
                            "target": target,
                            "target_rule": if target.is_none() { serde_json::json!({"longest": exp.longest_length(&m.name)}) } else { serde_json::Value::Null },
                            "evaluator": serde_json::to_value(e.table_for(seed)).unwrap_or_default(),
                            "length": length,
                        });
                        planned.push(Planned {
                            method,
                            eval: e,
                            length,
                            seed,
                            key: hash_json(&identity),
                            scaling_table: scaling_table.clone(),
                            base_dir: base_dir.clone(),
                            target,
                        });
                    }
                }
            }
        }
        // Run them.
        for p in planned {
            done += 1;
            let cell_path = cells_dir.join(format!("{}.json", p.key));
            let label = format!(
                "[{done:>3}/{total_cells}] {} {} {}@{}{}",
                m.name,
                p.method.name,
                p.eval.name,
                p.length,
                p.seed.map(|s| format!(" seed={s}")).unwrap_or_default()
            );
            if let Ok(text) = std::fs::read_to_string(&cell_path) {
                if let Ok(cell) = serde_json::from_str::<CellResult>(&text) {
                    log(format!("{label}: {} = {:.4} (cached)", cell.score.metric, cell.score.value));
                    cells.push(CellResult { model: m.name.clone(), method: p.method.name.clone(), eval: p.eval.name.clone(), ..cell });
                    continue;
                }
            }
            if let Some(k) = opts.stop_after_cells {
                if computed >= k {
                    log(format!("stopped after {computed} new cells (--stop-after-cells); run again to continue"));
                    return Ok(RunOutcome::Stopped { computed });
                }
            }
            if loaded.is_none() {
                log(format!("loading model {} ({})", m.name, m.path.display()));
                let model = load_model(m)?;
                let data = if exp.corpus.is_empty() { None } else { Some(CorpusSet::open(&exp.corpus, model.tokenizer())?) };
                loaded = Some(Loaded { model, data });
            }
            let l = loaded.as_ref().expect("loaded above");
            let s = l.model.summary().clone();
            let trained = s.original_context();
            let target = p.target.unwrap_or_else(|| exp.longest_length(&m.name).max(trained));
            let config = parse_scaling_table(&p.scaling_table, &p.base_dir, &p.method.name)?;
            let schedule = RopeSchedule::new(config.as_ref(), s.rope_shape(target))
                .and_then(|sc| sc.tables(p.length).map(|_| sc))
                .map_err(|e| ExperimentError::config(&exp.path, format!("[[method]] `{}` at {} tokens: {e}", p.method.name, p.length)))?;
            let text = toml::to_string(&p.eval.table_for(p.seed)).expect("tables serialize");
            let evaluator = parse_evaluator_toml(&text, &p.eval.name)?.build()?;
            let empty = longrope_data::corpus::TokenDocs::default();
            let source: &dyn TokenSource = match &l.data {
                Some(d) => d,
                None => &empty,
            };
            let score = evaluator.evaluate(l.model.as_ref(), &schedule, p.length, source).map_err(|e| {
                ExperimentError::Core(longrope_core::Error::invalid(format!("cell {label}"), format!("{e} (finished cells are cached in {})", cells_dir.display())))
            })?;
            log(format!("{label}: {} = {:.4} ({} tokens, {:.1} s)", score.metric, score.value, score.tokens, score.seconds));
            let cell = CellResult {
                key: p.key.clone(),
                model: m.name.clone(),
                method: p.method.name.clone(),
                method_base: p.method.base.clone(),
                ablation: p.method.ablation.clone(),
                eval: p.eval.name.clone(),
                evaluator: p.eval.evaluator.clone(),
                length: p.length,
                seed: p.seed,
                target,
                trained_context: trained,
                scaling: schedule.method.name().to_string(),
                scaling_params: schedule.method.params(),
                score,
            };
            write_atomic(&cell_path, serde_json::to_string_pretty(&cell).expect("cells serialize").as_bytes())?;
            cells.push(cell);
            computed += 1;
        }
        if let Some(l) = &loaded {
            let s = l.model.summary().clone();
            write_atomic(&summary_path, serde_json::to_string_pretty(&s).expect("json").as_bytes())?;
        }
        if let Ok(text) = std::fs::read_to_string(&summary_path) {
            if let Ok(s) = serde_json::from_str::<ModelSummary>(&text) {
                summaries.insert(m.name.clone(), s);
            }
        }
    }
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

/// Run (or load the cached result of) one search step.
fn run_search(
    exp: &Experiment,
    s: &SearchSpec,
    m: &ModelEntry,
    out: &Path,
    loaded: &mut Option<Loaded>,
    log: &mut dyn FnMut(String),
) -> Result<SearchResult> {
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
    if loaded.is_none() {
        log(format!("loading model {} ({})", m.name, m.path.display()));
        let model = load_model(m)?;
        let data = if exp.corpus.is_empty() { None } else { Some(CorpusSet::open(&exp.corpus, model.tokenizer())?) };
        *loaded = Some(Loaded { model, data });
    }
    let l = loaded.as_ref().expect("loaded above");
    let own;
    let source: &dyn TokenSource = if s.file.fitness.corpus.is_empty() {
        l.data.as_ref().ok_or_else(|| ExperimentError::config(&exp.path, format!("search `{}`: no corpus", s.name)))?
    } else {
        own = CorpusSet::open(&s.file.fitness.corpus, l.model.tokenizer())?;
        &own
    };
    let shape = l.model.summary().rope_shape(s.file.target_length);
    let (strategy, ctx) = s.file.build(&shape, &s.file.registry_seeds(Some(&l.model.summary().arch)))?;
    let seeds = ctx.seed_candidates()?;
    let strategy_name = strategy.name().to_string();
    let evaluator = fitness_evaluator_config(&s.file.fitness, s.file.target_length)?.build()?;
    let mut fitness = EvaluatorFitness::new(l.model.as_ref(), evaluator, source, shape.clone());
    let resume = dir.join("checkpoint.json").exists();
    log(format!(
        "search {}: {} on {} at {} tokens, budget {} evaluations{}",
        s.name,
        strategy_name,
        m.name,
        s.file.target_length,
        s.file.strategy.budget(),
        if resume { " (resuming)" } else { "" }
    ));
    let opts = DriverOptions { out_dir: dir.clone(), resume, stop_after_generations: None, progress: true };
    let mut meta = s.file.meta(&shape);
    meta["inputs"] = inputs;
    let outcome = Driver::new(strategy, &mut fitness, shape.clone(), meta, opts).with_seeds(seeds).run()?;
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
