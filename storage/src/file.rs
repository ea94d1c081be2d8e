//! Today's files as a [`Storage`]: one process, one directory per study (`--out DIR`), the formats that
//! `longrope compare`, reports and older builds read.
//!
//! A **search** study is a search directory (`docs/search.md`):
//! - `history.jsonl`: each trial's result (the search's evaluation record) appended and synced as soon as it
//!   completes;
//! - `checkpoint.json`: replaced atomically ([`longrope_core::files::write_atomic`]) at every checkpoint: the
//!   checkpoint's state plus `meta` (the study's config, with its identity under `inputs`) and `history`
//!   (the results of every trial of the generations before it), so it is self-contained;
//! - opening with [`OpenMode::Resume`] reloads the checkpoint, refuses it when `meta` differs (saying whether
//!   the inputs' content or the config changed, and where), and keeps the journal's lines beyond it (the part
//!   of a generation finished before a kill): a trial later inserted with the same candidate (`payload` equal
//!   to the line's `candidate`) is stored complete with that result instead of being evaluated again;
//! - opening with [`OpenMode::Create`] refuses a directory whose checkpoint or journal holds evaluations, and
//!   replaces one that holds none (a search that failed before its first evaluation has nothing to lose).
//!
//! An **experiment** study is an experiment directory: `experiment.json` holds the config (another config is
//! refused unless [`OpenMode::Adopt`]: `--resume`), and each complete trial is `cells/KEY.json`, its result;
//! a trial added with a key whose cell file exists and parses as a cell result is complete at once (the cell cache).
//!
//! Generations' proposals are kept in memory only: a resumed search proposes again from its checkpoint,
//! deterministically. Nothing here is shared between processes; use SQLite or PostgreSQL for that.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use longrope_core::files::{prepare_out_dir, write_atomic, OutputKind};
use serde_json::Value;

use crate::diff::{json_diff, summary};
use crate::error::{Result, StorageError};
use crate::{
    Claim, Failure, Heartbeat, Inserted, NewTrial, OpenMode, Storage, Study, StudyKind, StudyState, StudySpec, Trial,
    TrialState,
};

/// The checkpoint file of a search directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// The journal of a search directory.
pub const HISTORY_FILE: &str = "history.jsonl";
/// The manifest of an experiment directory.
pub const MANIFEST_FILE: &str = "experiment.json";
/// The cell cache of an experiment directory.
pub const CELLS_DIR: &str = "cells";

/// A search study's `meta`: its config with its identity under `inputs` (when it has one), as checkpoints of
/// every version so far hold it.
pub fn search_meta(config: &Value, identity: &Value) -> Value {
    let mut meta = config.clone();
    if !identity.is_null() {
        if let Some(o) = meta.as_object_mut() {
            o.insert("inputs".into(), identity.clone());
        }
    }
    meta
}

/// A search directory's `checkpoint.json`: a stored checkpoint's `state` with `meta` ([`search_meta`]) and
/// `history` (the results of the trials of the generations before it, by number).
pub fn checkpoint_document(state: &Value, config: &Value, identity: &Value, history: Vec<Value>) -> Value {
    let mut doc = state.clone();
    if let Some(o) = doc.as_object_mut() {
        o.insert("meta".into(), search_meta(config, identity));
        o.insert("history".into(), Value::Array(history));
    }
    doc
}

struct FileStudy {
    study: Study,
    dir: PathBuf,
    started: Instant,
    wall_before: f64,
    trials: BTreeMap<u64, Trial>,
    proposals: BTreeMap<u64, Value>,
    checkpoint: Option<(u64, Value)>,
    salvaged: HashMap<String, Value>,
    journal: Option<std::fs::File>,
}

/// Studies as directories under a root (the study `""` is the root itself).
pub struct FileStorage {
    root: PathBuf,
    studies: Vec<FileStudy>,
}

impl FileStorage {
    /// Studies under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStorage { root: root.into(), studies: Vec::new() }
    }

    /// The directory of a study.
    pub fn study_dir(&self, name: &str) -> PathBuf {
        if name.is_empty() {
            self.root.clone()
        } else {
            self.root.join(name)
        }
    }

    fn get(&mut self, id: i64) -> Result<&mut FileStudy> {
        let root = self.root.display().to_string();
        self.studies
            .get_mut(id as usize)
            .ok_or_else(|| StorageError::study(root, format!("no open study with id {id}")))
    }

    fn open_search(dir: &Path, spec: &StudySpec, mode: OpenMode) -> Result<FileStudy> {
        let cp_path = dir.join(CHECKPOINT_FILE);
        let resume = match mode {
            OpenMode::Resume => true,
            OpenMode::Create => false,
            OpenMode::Join | OpenMode::Adopt => cp_path.exists(),
        };
        let mut fs = FileStudy::empty(dir, spec);
        let history = dir.join(HISTORY_FILE);
        if !resume {
            if cp_path.exists() && !nothing_to_resume(dir) {
                return Err(StorageError::study(
                    cp_path.display().to_string(),
                    "already exists: pass --resume to continue that search, or choose another output directory",
                ));
            }
            prepare_out_dir(dir, OutputKind::Search)?;
            write_atomic(&history, b"")?;
        } else {
            fs.load(spec, mode)?;
        }
        fs.journal = Some(
            std::fs::OpenOptions::new().append(true).open(&history).map_err(|e| StorageError::io(&history, e))?,
        );
        Ok(fs)
    }

    fn open_experiment(dir: &Path, spec: &StudySpec, mode: OpenMode) -> Result<FileStudy> {
        let manifest = dir.join(MANIFEST_FILE);
        if manifest.exists() && mode != OpenMode::Adopt {
            let bytes = longrope_core::files::read_bytes(&manifest, longrope_core::files::MAX_CONFIG_BYTES)?;
            let mut old: Value = serde_json::from_slice(&bytes).map_err(|e| {
                StorageError::study(
                    manifest.display().to_string(),
                    format!(
                        "does not parse ({e}), so which experiment wrote {} is unknown: pass --resume to reuse the cells \
                         it holds (each is keyed by its full configuration and inputs, so only matching ones are reused), \
                         or choose another --out",
                        dir.display()
                    ),
                )
            })?;
            // Manifests before the storage layer also named the experiment file; where it lives is no part of it.
            if let Some(o) = old.as_object_mut() {
                o.remove("experiment");
            }
            if old != spec.config {
                let name = old.get("name").and_then(|n| n.as_str()).map(|n| format!(" (`{n}`)")).unwrap_or_default();
                return Err(StorageError::study(
                    dir.display().to_string(),
                    format!(
                        "holds results of another version of the experiment{name}: pass --resume to reuse its unchanged \
                         cells, or choose another --out"
                    ),
                ));
            }
        } else if mode == OpenMode::Resume && !manifest.exists() {
            return Err(StorageError::study(manifest.display().to_string(), "does not exist: nothing to resume"));
        }
        let cells = dir.join(CELLS_DIR);
        std::fs::create_dir_all(&cells).map_err(|e| StorageError::io(&cells, e))?;
        let text = serde_json::to_string_pretty(&spec.config).expect("JSON values serialize");
        write_atomic(&manifest, text.as_bytes())?;
        Ok(FileStudy::empty(dir, spec))
    }
}

fn study_of(spec: &StudySpec) -> Study {
    Study {
        id: 0,
        name: spec.name.clone(),
        kind: spec.kind,
        config: spec.config.clone(),
        identity: spec.identity.clone(),
        derived: spec.derived.clone(),
        state: StudyState::Running,
        error: None,
        settings: spec.settings,
        created_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        finished_at: None,
    }
}

/// Whether a search directory's checkpoint and journal hold no evaluation (so a fresh start loses nothing).
fn nothing_to_resume(dir: &Path) -> bool {
    let journal_empty = match std::fs::read(dir.join(HISTORY_FILE)) {
        Ok(bytes) => bytes.iter().all(|b| b.is_ascii_whitespace()),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    let checkpoint_empty = std::fs::read(dir.join(CHECKPOINT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|cp| {
            cp.get("history").and_then(|h| h.as_array()).is_some_and(|h| h.is_empty())
                && cp.get("generation").and_then(|g| g.as_u64()) == Some(0)
        });
    journal_empty && checkpoint_empty
}

/// A trial waiting for a worker (its study id is set by the caller).
fn waiting_trial(number: u64, generation: u64, key: String, payload: Value) -> Trial {
    Trial {
        study: 0,
        number,
        generation,
        key,
        payload,
        state: TrialState::Waiting,
        worker: None,
        attempts: 0,
        heartbeat_age: None,
        started_at: None,
        finished_at: None,
        seconds: None,
        value: None,
        result: None,
        error: None,
    }
}

/// A trial complete with `result` (read back from a file).
fn complete_trial(number: u64, generation: u64, key: String, payload: Value, result: Value) -> Trial {
    // A search record's fitness, or an experiment cell's score.
    let value = result.get("fitness").or_else(|| result.get("score").and_then(|s| s.get("value"))).and_then(|f| f.as_f64());
    Trial {
        state: TrialState::Complete,
        seconds: result.get("seconds").and_then(|s| s.as_f64()),
        value,
        result: Some(result),
        ..waiting_trial(number, generation, key, payload)
    }
}

impl FileStudy {
    /// A study in `dir` with no trial, proposal or checkpoint yet.
    fn empty(dir: &Path, spec: &StudySpec) -> FileStudy {
        FileStudy {
            study: study_of(spec),
            dir: dir.to_path_buf(),
            started: Instant::now(),
            wall_before: 0.0,
            trials: BTreeMap::new(),
            proposals: BTreeMap::new(),
            checkpoint: None,
            salvaged: HashMap::new(),
            journal: None,
        }
    }

    /// Resume a search directory: checkpoint, identity check, journal tail.
    fn load(&mut self, spec: &StudySpec, mode: OpenMode) -> Result<()> {
        let cp_path = self.dir.join(CHECKPOINT_FILE);
        let shown = cp_path.display().to_string();
        let text = std::fs::read(&cp_path).map_err(|e| {
            StorageError::study(&shown, format!("cannot read it ({e}); run without --resume to start a new search"))
        })?;
        let mut cp: Value =
            serde_json::from_slice(&text).map_err(|e| StorageError::study(&shown, format!("corrupt: {e}")))?;
        let Some(obj) = cp.as_object_mut() else {
            return Err(StorageError::study(&shown, "corrupt: not a JSON object"));
        };
        let meta = obj.remove("meta").unwrap_or(Value::Null);
        let expected = search_meta(&spec.config, &spec.identity);
        if meta != expected && mode != OpenMode::Adopt {
            let diffs = json_diff(&meta, &expected);
            let inputs = diffs.iter().any(|d| d.starts_with("inputs"));
            let what = if inputs {
                "the model or the corpus changed since it was written (their content differs), so its evaluations \
                 measured other inputs; start a new search in another directory"
            } else {
                "was written by a different search config (strategy, space, seed, shape or fitness differ)"
            };
            return Err(StorageError::study(&shown, format!("{what}; differs at: {}", summary(&diffs))));
        }
        let history = match obj.remove("history") {
            Some(Value::Array(h)) => h,
            _ => return Err(StorageError::study(&shown, "corrupt: no `history` array")),
        };
        let generation = obj.get("generation").and_then(|g| g.as_u64()).unwrap_or(0);
        let wall = obj.get("cost").and_then(|c| c.get("wall_seconds")).and_then(|w| w.as_f64()).unwrap_or(0.0);
        for (i, rec) in history.iter().enumerate() {
            let g = rec.get("generation").and_then(|g| g.as_u64()).unwrap_or(0);
            let payload = rec.get("candidate").cloned().unwrap_or(Value::Null);
            self.trials.insert(i as u64, complete_trial(i as u64, g, String::new(), payload, rec.clone()));
        }
        self.checkpoint = Some((generation, cp));
        // The journal's lines beyond the checkpoint (a torn last line is dropped), rewritten without the tear.
        let journal = self.dir.join(HISTORY_FILE);
        let mut tail = Vec::new();
        if let Ok(f) = std::fs::File::open(&journal) {
            let lines: Vec<String> = std::io::BufReader::new(f).lines().map_while(|l| l.ok()).collect();
            for line in lines.iter().skip(history.len()) {
                match serde_json::from_str::<Value>(line) {
                    Ok(rec) if rec.get("candidate").is_some() => tail.push(rec),
                    _ => break,
                }
            }
        }
        let mut text = String::new();
        for rec in history.iter().chain(&tail) {
            text.push_str(&serde_json::to_string(rec).expect("JSON values serialize"));
            text.push('\n');
        }
        write_atomic(&journal, text.as_bytes())?;
        // The killed run also spent time after its checkpoint: at least until its last journaled evaluation.
        self.wall_before = tail.iter().filter_map(|r| r.get("wall_seconds").and_then(|w| w.as_f64())).fold(wall, f64::max);
        self.salvaged = tail.into_iter().map(|r| (serde_json::to_string(&r["candidate"]).expect("JSON"), r)).collect();
        Ok(())
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

impl Storage for FileStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn open_study(&mut self, spec: &StudySpec, mode: OpenMode) -> Result<Study> {
        if let Some(i) = self.studies.iter().position(|s| s.study.name == spec.name) {
            let s = &self.studies[i];
            crate::sql::check_study(&s.location(), &s.study, spec, mode)?;
            return Ok(s.study.clone());
        }
        let dir = self.study_dir(&spec.name);
        let mut fs = match spec.kind {
            StudyKind::Search => FileStorage::open_search(&dir, spec, mode)?,
            StudyKind::Experiment => FileStorage::open_experiment(&dir, spec, mode)?,
        };
        fs.study.id = self.studies.len() as i64;
        let study = fs.study.clone();
        self.studies.push(fs);
        Ok(study)
    }

    fn study(&mut self, name: &str) -> Result<Option<Study>> {
        Ok(self.studies.iter().find(|s| s.study.name == name).map(|s| s.study.clone()))
    }

    fn studies(&mut self) -> Result<Vec<Study>> {
        Ok(self.studies.iter().map(|s| s.study.clone()).collect())
    }

    fn finish_study(&mut self, study: i64, error: Option<&str>) -> Result<()> {
        let s = self.get(study)?;
        if s.study.state == StudyState::Running {
            s.study.state = if error.is_some() { StudyState::Failed } else { StudyState::Finished };
            s.study.error = error.map(str::to_string);
        }
        Ok(())
    }

    fn insert_generation(&mut self, study: i64, generation: u64, proposal: &Value, trials: &[NewTrial]) -> Result<Inserted> {
        let s = self.get(study)?;
        if let Some(p) = s.proposals.get(&generation) {
            return Ok(Inserted::Existing(p.clone()));
        }
        s.proposals.insert(generation, proposal.clone());
        let mut recovered = 0;
        for t in trials {
            let salvaged = s.salvaged.remove(&serde_json::to_string(&t.payload).expect("JSON values serialize"));
            let trial = match salvaged {
                Some(rec) => {
                    recovered += 1;
                    complete_trial(t.number, t.generation, t.key.clone(), t.payload.clone(), rec)
                }
                None => waiting_trial(t.number, t.generation, t.key.clone(), t.payload.clone()),
            };
            s.trials.insert(t.number, Trial { study, ..trial });
        }
        Ok(Inserted::New { recovered })
    }

    fn last_generation(&mut self, study: i64) -> Result<Option<u64>> {
        Ok(self.get(study)?.proposals.keys().next_back().copied())
    }

    fn proposal(&mut self, study: i64, generation: u64) -> Result<Option<Value>> {
        Ok(self.get(study)?.proposals.get(&generation).cloned())
    }

    fn add_trials(&mut self, study: i64, trials: &[(String, Value)]) -> Result<usize> {
        let s = self.get(study)?;
        let mut next = s.trials.keys().next_back().map(|n| n + 1).unwrap_or(0);
        let mut added = 0;
        for (key, payload) in trials {
            if s.trials.values().any(|t| &t.key == key) {
                continue;
            }
            let cell = s.dir.join(CELLS_DIR).join(format!("{key}.json"));
            // A cell file that does not parse, or is not a cell result (no `score`: another format), is computed
            // again, as before the storage layer.
            let cached = std::fs::read_to_string(&cell)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .filter(|v| v.get("score").is_some());
            let trial = match cached {
                Some(result) => complete_trial(next, 0, key.clone(), payload.clone(), result),
                None => waiting_trial(next, 0, key.clone(), payload.clone()),
            };
            s.trials.insert(next, Trial { study, ..trial });
            next += 1;
            added += 1;
        }
        if added > 0 && s.study.state == StudyState::Finished {
            s.study.state = StudyState::Running;
        }
        Ok(added)
    }

    fn claim(&mut self, worker: &str, which: Claim) -> Result<Option<Trial>> {
        let order: Vec<usize> = match which {
            Claim::Study(id) => vec![id as usize],
            Claim::Any { prefer } => {
                let mut v: Vec<usize> = (0..self.studies.len()).collect();
                if let Some(p) = prefer {
                    v.sort_by_key(|&i| i != p as usize);
                }
                v
            }
        };
        for i in order {
            let Some(s) = self.studies.get_mut(i) else { continue };
            if s.study.state != StudyState::Running {
                continue;
            }
            if let Some(t) = s.trials.values_mut().find(|t| t.state == TrialState::Waiting) {
                t.state = TrialState::Running;
                t.worker = Some(worker.to_string());
                return Ok(Some(t.clone()));
            }
        }
        Ok(None)
    }

    fn complete(&mut self, study: i64, number: u64, worker: &str, result: &Value, value: Option<f64>, seconds: f64) -> Result<bool> {
        let s = self.get(study)?;
        let kind = s.study.kind;
        let dir = s.dir.clone();
        let Some(t) = s.trials.get_mut(&number).filter(|t| t.state == TrialState::Running && t.worker.as_deref() == Some(worker)) else {
            return Ok(false);
        };
        match kind {
            StudyKind::Search => {
                let path = dir.join(HISTORY_FILE);
                let journal = s.journal.as_mut().ok_or_else(|| StorageError::study(dir.display().to_string(), "journal not open"))?;
                let mut line = serde_json::to_string(result).expect("JSON values serialize");
                line.push('\n');
                journal.write_all(line.as_bytes()).map_err(|e| StorageError::io(&path, e))?;
                journal.sync_data().map_err(|e| StorageError::io(&path, e))?;
            }
            StudyKind::Experiment => {
                let path = dir.join(CELLS_DIR).join(format!("{}.json", t.key));
                write_atomic(&path, serde_json::to_string_pretty(result).expect("JSON values serialize").as_bytes())?;
            }
        }
        t.state = TrialState::Complete;
        t.result = Some(result.clone());
        t.value = value.filter(|v| v.is_finite());
        t.seconds = Some(seconds);
        Ok(true)
    }

    fn release(&mut self, study: i64, number: u64, worker: &str) -> Result<bool> {
        let s = self.get(study)?;
        match s.trials.get_mut(&number).filter(|t| t.state == TrialState::Running && t.worker.as_deref() == Some(worker)) {
            Some(t) => {
                t.state = TrialState::Waiting;
                t.worker = None;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn fail(&mut self, study: i64, number: u64, worker: &str, error: &str) -> Result<Failure> {
        let s = self.get(study)?;
        let max = s.study.settings.max_attempts;
        let Some(t) = s.trials.get_mut(&number).filter(|t| t.state == TrialState::Running && t.worker.as_deref() == Some(worker)) else {
            return Ok(Failure::Lost);
        };
        t.attempts += 1;
        let final_ = t.error.as_deref() == Some(error) || t.attempts >= max;
        t.error = Some(error.to_string());
        t.worker = None;
        t.state = if final_ { TrialState::Failed } else { TrialState::Waiting };
        Ok(if final_ { Failure::Final } else { Failure::Requeued })
    }

    fn trials(&mut self, study: i64, generation: Option<u64>) -> Result<Vec<Trial>> {
        let s = self.get(study)?;
        Ok(s.trials.values().filter(|t| generation.is_none_or(|g| t.generation == g)).cloned().collect())
    }

    fn save_checkpoint(&mut self, study: i64, generation: u64, state: &Value) -> Result<bool> {
        let s = self.get(study)?;
        if s.checkpoint.as_ref().is_some_and(|(g, _)| *g >= generation) {
            return Ok(false);
        }
        if s.study.kind == StudyKind::Search {
            let history: Vec<Value> = s
                .trials
                .values()
                .filter(|t| t.generation < generation && t.state == TrialState::Complete)
                .filter_map(|t| t.result.clone())
                .collect();
            let file = checkpoint_document(state, &s.study.config, &s.study.identity, history);
            let text = serde_json::to_vec(&file).expect("JSON values serialize");
            write_atomic(&s.dir.join(CHECKPOINT_FILE), &text)?;
        }
        s.checkpoint = Some((generation, state.clone()));
        Ok(true)
    }

    fn checkpoint(&mut self, study: i64, generation: Option<u64>) -> Result<Option<(u64, Value)>> {
        let s = self.get(study)?;
        Ok(s.checkpoint.clone().filter(|(g, _)| generation.is_none_or(|want| *g == want)))
    }

    fn wall_seconds(&mut self, study: i64) -> Result<f64> {
        let s = self.get(study)?;
        Ok(s.wall_before + s.started.elapsed().as_secs_f64())
    }

    fn heartbeats(&self) -> Result<Option<Box<dyn Heartbeat>>> {
        Ok(None)
    }
}
