//! `longrope worker --storage URL`: a process that evaluates the trials of any running study in a shared
//! database, on any machine, for as long as there is work: a search's candidates (its model and fitness
//! corpus, loaded once) and an experiment's cells ([`crate::cells`]).
//!
//! The loop: list the running studies (or the one named with `--study`); accept each once (a search whose
//! model or corpus here differs in content from the study's identity is refused, and so is an experiment
//! whose cells name other inputs); claim a trial, the study of the last one first (one model load for a
//! whole search); heart-beat while evaluating; complete it or record the error. When nothing can be claimed,
//! advance the search studies (propose their next generation once the current one is complete: any worker
//! can, so a study finishes even after the process that created it stopped), then wait. The worker exits when
//! every study is finished or failed, when `--idle-timeout` passes without work, or after `--max-trials`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use longrope_core::RopeShape;
use longrope_search::study::{evaluate_trials, Advance, SearchStudy};
use longrope_search::{EvaluatorFitness, SearchFile, Seed, SyntheticFitness};
use longrope_storage::{Claim, HeartbeatThread, Storage, Study, StudyKind, StudyState, Trial};

use crate::cells::{compute_cell, CellTask, Models};
use crate::error::{ExperimentError, Result};

/// How a worker runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// Its name in the database (`HOST:PID` by default).
    pub name: String,
    /// Run every model on this device (`cuda:1`), whatever the study's config says.
    pub device: Option<String>,
    /// Work only on this study.
    pub study: Option<String>,
    /// Exit after this long without a trial to evaluate.
    pub idle_timeout: Option<Duration>,
    /// Exit after evaluating this many trials.
    pub max_trials: Option<usize>,
    /// How long to wait between polls when there is nothing to claim.
    pub poll: Duration,
    /// Wait this long after claiming each trial before evaluating it (tests: a worker killed mid-trial).
    pub trial_delay: Duration,
}

impl WorkerOptions {
    /// A worker named `HOST:PID`, all studies, until the work is done.
    pub fn new() -> Self {
        WorkerOptions {
            name: longrope_storage::worker_name(),
            device: None,
            study: None,
            idle_timeout: None,
            max_trials: None,
            poll: Duration::from_millis(500),
            trial_delay: Duration::ZERO,
        }
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions::new()
    }
}

/// What a worker did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerSummary {
    /// Trials completed by this worker.
    pub completed: usize,
    /// Trials whose results were dropped (taken away after missed heartbeats).
    pub lost: usize,
    /// Failed attempts (re-queued or failed for good).
    pub failed: usize,
    /// Why it stopped.
    pub reason: String,
}

/// A search study as this worker runs it.
struct SearchCtx {
    file: SearchFile,
    shape: RopeShape,
    kind: String,
    seeds: Vec<Seed>,
    /// How many of the best candidates the strategy keeps, for the race's threshold (`None` without racing).
    keep: Option<usize>,
}

/// What the worker decided about a study.
enum Accepted {
    Search(Box<SearchCtx>),
    Experiment,
    Refused,
}

fn accept_search(study: &Study, models: &mut Models) -> Result<SearchCtx> {
    let (file, shape, kind, seeds) = SearchFile::from_study(&study.config, &study.derived)?;
    if kind == "model" {
        let m = file.model.clone().ok_or_else(|| ExperimentError::config(&study.name, "the study's config has no [model]"))?;
        let entry = crate::config::ModelEntry {
            name: study.name.clone(),
            path: m.path.clone(),
            dtype: m.dtype.clone().unwrap_or_else(|| "f32".into()),
            device: m.device.clone().unwrap_or_else(|| "cpu".into()),
        };
        models.verify(&entry, Some(&file.fitness.corpus), &study.identity)?;
    } else if kind != "synthetic" {
        return Err(ExperimentError::config(&study.name, format!("unknown fitness kind `{kind}`")));
    }
    let keep = if file.fitness.racing.is_off() { None } else { file.build_with_seeds(&shape, seeds.clone())?.0.selection_size() };
    Ok(SearchCtx { file, shape, kind, seeds, keep })
}

/// Propose a search study's next generation if its current one is complete.
fn advance_search(storage: &mut dyn Storage, study: &Study, ctx: &SearchCtx) -> Result<Advance> {
    let (strategy, _) = ctx.file.build_with_seeds(&ctx.shape, ctx.seeds.clone())?;
    let mut engine = SearchStudy::new(storage, study.clone(), strategy)?;
    Ok(engine.advance(None)?)
}

/// Evaluate one claimed search trial with the study's fitness on this worker's model.
fn evaluate_search(
    storage: &mut dyn Storage,
    t: &Trial,
    ctx: &SearchCtx,
    models: &mut Models,
    name: &str,
    log: &mut dyn FnMut(String),
) -> Result<longrope_search::study::Evaluated> {
    if ctx.kind == "synthetic" {
        let mut fitness = SyntheticFitness::new(&ctx.shape).with_documents(ctx.file.fitness.documents, ctx.file.fitness.racing);
        return Ok(evaluate_trials(storage, t.study, std::slice::from_ref(t), &mut fitness, name, ctx.keep)?);
    }
    let m = ctx.file.model.clone().ok_or_else(|| ExperimentError::config("study", "no [model]"))?;
    let dtype = m.dtype.clone().unwrap_or_else(|| "f32".into());
    let device = m.device.clone().unwrap_or_else(|| "cpu".into());
    let device = if device == "auto" { "auto".to_string() } else { device };
    models.model(&m.path, &dtype, &device, log)?;
    let corpus: Vec<PathBuf> = ctx.file.fitness.corpus.clone();
    let (model, docs) = models.with_corpus(&corpus)?;
    let mut fitness = EvaluatorFitness::from_section(model, docs, &ctx.file.fitness, ctx.shape.clone())?;
    Ok(evaluate_trials(storage, t.study, std::slice::from_ref(t), &mut fitness, name, ctx.keep)?)
}

/// Run a worker until the work is done (see the module documentation). `log` gets one line per trial.
pub fn run_worker(storage: &mut dyn Storage, opts: &WorkerOptions, log: &mut dyn FnMut(String)) -> Result<WorkerSummary> {
    let mut summary = WorkerSummary::default();
    let mut models = Models::on_device(opts.device.clone());
    let beats = HeartbeatThread::start(storage.heartbeats()?, opts.name.clone(), 1.0);
    let mut accepted: HashMap<i64, Accepted> = HashMap::new();
    let mut prefer: Option<i64> = None;
    let mut idle_since = Instant::now();
    log(format!("worker {} on {}", opts.name, storage.location()));
    loop {
        if opts.max_trials.is_some_and(|n| summary.completed >= n) {
            summary.reason = format!("{} trials done (--max-trials)", summary.completed);
            break;
        }
        let studies: Vec<Study> =
            storage.studies()?.into_iter().filter(|s| opts.study.as_ref().is_none_or(|n| *n == s.name)).collect();
        let mut running: Vec<Study> = studies.iter().filter(|s| s.state == StudyState::Running).cloned().collect();
        if running.is_empty() && !studies.is_empty() {
            summary.reason = "no study is running".into();
            break;
        }
        for s in &running {
            if accepted.contains_key(&s.id) {
                continue;
            }
            let decision = match s.kind {
                StudyKind::Experiment => Accepted::Experiment,
                StudyKind::Search => match accept_search(s, &mut models) {
                    Ok(ctx) => Accepted::Search(Box::new(ctx)),
                    Err(e) => {
                        log(format!("refusing study `{}`: {}", s.name, longrope_core::error::chain_message(&e)));
                        Accepted::Refused
                    }
                },
            };
            accepted.insert(s.id, decision);
        }
        running.retain(|s| !matches!(accepted.get(&s.id), Some(Accepted::Refused)));
        running.sort_by_key(|s| Some(s.id) != prefer);
        let mut claimed = None;
        for s in &running {
            if let Some(t) = storage.claim(&opts.name, Claim::Study(s.id))? {
                claimed = Some((s.clone(), t));
                break;
            }
        }
        let Some((study, t)) = claimed else {
            // Nothing to claim: propose the next generation of searches whose current one is complete.
            let mut progressed = false;
            for s in &running {
                if let Some(Accepted::Search(ctx)) = accepted.get(&s.id) {
                    match advance_search(storage, s, ctx) {
                        Ok(Advance::Pending { waiting, .. }) => progressed |= waiting > 0,
                        Ok(Advance::Checkpointed { .. }) | Ok(Advance::Finished) => progressed = true,
                        Ok(Advance::Stopped { .. }) => {}
                        Err(e) => log(format!("study `{}`: {}", s.name, longrope_core::error::chain_message(&e))),
                    }
                }
            }
            if progressed {
                continue;
            }
            if opts.idle_timeout.is_some_and(|t| idle_since.elapsed() >= t) {
                summary.reason = format!("idle for {:.0} s (--idle-timeout)", idle_since.elapsed().as_secs_f64());
                break;
            }
            std::thread::sleep(opts.poll);
            continue;
        };
        prefer = Some(study.id);
        beats.set_interval(study.settings.grace_seconds / 4.0);
        beats.hold(std::slice::from_ref(&t));
        if !opts.trial_delay.is_zero() {
            std::thread::sleep(opts.trial_delay);
        }
        let started = Instant::now();
        let outcome = match accepted.get(&study.id) {
            Some(Accepted::Search(ctx)) => {
                evaluate_search(storage, &t, ctx, &mut models, &opts.name, log).map(|e| (e.completed, e.lost, e.requeued + e.failed.iter().count()))
            }
            _ => evaluate_cell(storage, &study, &t, &mut models, &opts.name, &mut accepted, log),
        };
        beats.release();
        match outcome {
            Ok((completed, lost, failed)) => {
                summary.completed += completed;
                summary.lost += lost;
                summary.failed += failed;
                if completed > 0 {
                    let value = storage
                        .trials(study.id, Some(t.generation))?
                        .into_iter()
                        .find(|x| x.number == t.number)
                        .and_then(|x| x.value);
                    log(format!(
                        "trial {} of `{}`: {} in {:.2} s",
                        t.number,
                        study.name,
                        value.map(|v| format!("{v}")).unwrap_or_else(|| "done".into()),
                        started.elapsed().as_secs_f64()
                    ));
                } else if lost > 0 {
                    log(format!("trial {} of `{}`: taken away after missed heartbeats; result dropped", t.number, study.name));
                }
            }
            Err(e) => {
                // An error of the storage or the worker itself (not of the evaluation): give the trial back.
                let _ = storage.release(study.id, t.number, &opts.name);
                return Err(e);
            }
        }
        idle_since = Instant::now();
    }
    beats.stop();
    log(format!("worker {}: {} trials, stopping: {}", opts.name, summary.completed, summary.reason));
    Ok(summary)
}

/// Compute one claimed cell; `(completed, lost, failed)`.
fn evaluate_cell(
    storage: &mut dyn Storage,
    study: &Study,
    t: &Trial,
    models: &mut Models,
    name: &str,
    accepted: &mut HashMap<i64, Accepted>,
    log: &mut dyn FnMut(String),
) -> Result<(usize, usize, usize)> {
    let task: CellTask = serde_json::from_value(t.payload.clone())
        .map_err(|e| ExperimentError::config(&study.name, format!("cell {}: its task does not parse: {e}", t.key)))?;
    let reads_corpus = !task.corpus.is_empty() && task.inputs.get("data").is_some_and(|d| !d.is_null());
    if let Err(e) = models.verify(&task.model, reads_corpus.then_some(task.corpus.as_slice()), &task.inputs) {
        log(format!("refusing study `{}`: {}", study.name, longrope_core::error::chain_message(&e)));
        storage.release(study.id, t.number, name)?;
        accepted.insert(study.id, Accepted::Refused);
        return Ok((0, 0, 0));
    }
    match compute_cell(&task, models, log) {
        Ok(mut cell) => {
            cell.key = t.key.clone();
            let value = serde_json::to_value(&cell).expect("cells serialize");
            let ok = storage.complete(study.id, t.number, name, &value, Some(cell.score.value), cell.score.seconds)?;
            if ok {
                log(format!("{}: {} = {:.4}", task.label, cell.score.metric, cell.score.value));
            }
            Ok((ok as usize, (!ok) as usize, 0))
        }
        Err(e) => {
            let message = longrope_core::error::chain_message(&e);
            log(format!("{}: failed: {message}", task.label));
            storage.fail(study.id, t.number, name, &message)?;
            Ok((0, 0, 1))
        }
    }
}
