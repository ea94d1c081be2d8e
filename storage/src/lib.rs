//! `longrope-storage`: where searches and experiments keep their state, behind one trait, [`Storage`].
//!
//! A **study** is one unit of coordinated work: a search (its config, the strategy's proposals generation by
//! generation, one trial per candidate evaluated, a checkpoint of the strategy after every generation) or an
//! experiment's cells (one trial per cell). A **trial** moves `waiting -> running -> complete` (or `failed`):
//! a worker *claims* a waiting trial, *heart-beats* while it evaluates, and *completes* it with its result.
//! Any number of processes may share a study; the storage decides who gets which trial.
//!
//! Three implementations:
//! - [`file::FileStorage`]: today's files (a search directory: `checkpoint.json`, `history.jsonl`; an
//!   experiment directory: `experiment.json`, `cells/KEY.json`). One process at a time; what `--out DIR`
//!   means.
//! - [`sql::SqlStorage`] on SQLite (`sqlite:PATH`): embedded, several processes on one machine. WAL journal,
//!   every write in a `BEGIN IMMEDIATE` transaction (one writer at a time, waiting for the lock instead of
//!   failing with "database is locked").
//! - [`sql::SqlStorage`] on PostgreSQL (`postgres://USER@HOST:PORT/DB`): workers on any number of machines.
//!   A claim is one `UPDATE ... WHERE (study, number) = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING ...`.
//!
//! Heartbeats and stale-trial detection use the database's clock (`julianday('now')` / `clock_timestamp()`),
//! never the workers', so machines with skewed clocks agree. A running trial whose heartbeat is older than
//! the study's grace period is re-queued (or failed once it has used its attempts); a trial that fails twice
//! with the same error is failed with that error. The schema is versioned ([`SCHEMA_VERSION`]) and created on
//! first use. See `docs/distributed.md`.

pub mod diff;
pub mod error;
pub mod file;
pub mod heartbeat;
pub mod sql;
pub mod status;
pub mod testing;
pub mod url;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use error::{Result, StorageError};
pub use file::FileStorage;
pub use heartbeat::HeartbeatThread;
pub use url::StorageUrl;

/// Version of the database schema this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// What a study holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudyKind {
    /// A search: generations of proposals, one trial per evaluated candidate, checkpoints.
    Search,
    /// An experiment's cells: one trial per cell, keyed by the cell's content identity.
    Experiment,
}

impl StudyKind {
    /// The name stored in the database (`search`, `experiment`).
    pub fn as_str(self) -> &'static str {
        match self {
            StudyKind::Search => "search",
            StudyKind::Experiment => "experiment",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<StudyKind> {
        match s {
            "search" => Some(StudyKind::Search),
            "experiment" => Some(StudyKind::Experiment),
            _ => None,
        }
    }
}

/// Where a study stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudyState {
    /// Work remains (or may be added).
    Running,
    /// Done: the strategy proposed nothing more, or the experiment's cells are all complete.
    Finished,
    /// Stopped by a trial that failed for good (its error is the study's).
    Failed,
}

impl StudyState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StudyState::Running => "running",
            StudyState::Finished => "finished",
            StudyState::Failed => "failed",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<StudyState> {
        match s {
            "running" => Some(StudyState::Running),
            "finished" => Some(StudyState::Finished),
            "failed" => Some(StudyState::Failed),
            _ => None,
        }
    }
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    /// Waiting for a worker.
    Waiting,
    /// Claimed by a worker that heart-beats while it evaluates.
    Running,
    /// Evaluated; the result is stored.
    Complete,
    /// Failed for good: twice with the same error, or out of attempts.
    Failed,
}

impl TrialState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Waiting => "waiting",
            TrialState::Running => "running",
            TrialState::Complete => "complete",
            TrialState::Failed => "failed",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<TrialState> {
        match s {
            "waiting" => Some(TrialState::Waiting),
            "running" => Some(TrialState::Running),
            "complete" => Some(TrialState::Complete),
            "failed" => Some(TrialState::Failed),
            _ => None,
        }
    }
}

/// How trials of a study are retried; fixed when the study is created, so every worker applies the same rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StudySettings {
    /// A running trial whose last heartbeat is older than this (seconds, by the database clock) is taken from
    /// its worker and re-queued. Workers beat every `grace_seconds / 4`.
    pub grace_seconds: f64,
    /// Attempts a trial gets (claims that ended in an error or a lost worker) before it is failed for good.
    pub max_attempts: u32,
}

impl Default for StudySettings {
    fn default() -> Self {
        StudySettings { grace_seconds: 60.0, max_attempts: 3 }
    }
}

/// What a caller asks a study to be.
#[derive(Debug, Clone, PartialEq)]
pub struct StudySpec {
    /// The study's name, unique in its storage (for [`FileStorage`]: a directory under its root, `""` = the
    /// root itself).
    pub name: String,
    /// What it holds.
    pub kind: StudyKind,
    /// What it runs (the search config, the experiment file): a study with another config is refused.
    pub config: Value,
    /// The content identity of its inputs (model and corpus digests; `null` when none): a study measured on
    /// other inputs is refused.
    pub identity: Value,
    /// Values derived from `config` and `identity` that workers need but need not compare (the seeds of a
    /// search's initial population). Stored when the study is created.
    pub derived: Value,
    /// Retry rules.
    pub settings: StudySettings,
}

/// How [`Storage::open_study`] treats a study that exists, or does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// A new study: one that already holds work is refused (a search directory with evaluations).
    Create,
    /// An existing study, with the same config and identity; a missing one is an error.
    Resume,
    /// Create the study, or join it when it exists with the same config and identity.
    Join,
    /// Create the study, or take over an existing one of the same kind, replacing its config (its trials
    /// stay, so unchanged experiment cells are reused).
    Adopt,
}

/// A study as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    /// Its id in the storage.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// What it holds.
    pub kind: StudyKind,
    /// Its config.
    pub config: Value,
    /// The identity of its inputs.
    pub identity: Value,
    /// Derived values ([`StudySpec::derived`]).
    pub derived: Value,
    /// Where it stands.
    pub state: StudyState,
    /// Why it failed.
    pub error: Option<String>,
    /// Retry rules.
    pub settings: StudySettings,
    /// When it was created (seconds since the Unix epoch, database clock).
    pub created_at: f64,
    /// When it finished or failed.
    pub finished_at: Option<f64>,
}

/// A trial to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrial {
    /// Its number in the study (a search's evaluation index: deterministic, so every process numbers alike).
    pub number: u64,
    /// The generation that proposed it (0 for experiment cells).
    pub generation: u64,
    /// Its key, unique in the study (a candidate's deduplication key, a cell's content hash).
    pub key: String,
    /// What to evaluate (a search candidate, a cell's task).
    pub payload: Value,
}

/// A trial as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// The study's id.
    pub study: i64,
    /// Its number in the study.
    pub number: u64,
    /// The generation that proposed it.
    pub generation: u64,
    /// Its key.
    pub key: String,
    /// What to evaluate.
    pub payload: Value,
    /// Where it stands.
    pub state: TrialState,
    /// The worker holding it (running) or that completed it.
    pub worker: Option<String>,
    /// Claims that ended without a result (errors, lost workers).
    pub attempts: u32,
    /// Seconds since its last heartbeat, by the database clock (running trials).
    pub heartbeat_age: Option<f64>,
    /// When its last claim started.
    pub started_at: Option<f64>,
    /// When it completed or failed.
    pub finished_at: Option<f64>,
    /// Its evaluation's own wall time, as the worker measured it.
    pub seconds: Option<f64>,
    /// Its scalar value (a fitness, a cell's score), when finite.
    pub value: Option<f64>,
    /// Its result.
    pub result: Option<Value>,
    /// The last error (of a failed attempt, or why it failed for good).
    pub error: Option<String>,
}

/// Which trials a claim may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Only this study's.
    Study(i64),
    /// Any running study's, this one's first (a worker keeps to the model it has loaded).
    Any {
        /// The study to prefer.
        prefer: Option<i64>,
    },
}

/// What [`Storage::insert_generation`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// This call stored the generation and its trials; `recovered` of them were already complete (a search
    /// directory's journal held their results beyond its checkpoint).
    New {
        /// Trials stored complete.
        recovered: usize,
    },
    /// Another process stored it first; its proposal, to check against ours.
    Existing(Value),
}

/// How a failed attempt ended ([`Storage::fail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Re-queued for another attempt.
    Requeued,
    /// Failed for good (same error twice, or out of attempts).
    Final,
    /// The trial was no longer this worker's (re-queued after missed heartbeats).
    Lost,
}

/// Where searches and experiments keep their state. One implementation per backend; see the crate docs.
///
/// Writes are idempotent where several processes may race (a generation is stored once, a checkpoint once,
/// a cell once), so every process can run the same deterministic code and the first one wins.
pub trait Storage: Send {
    /// The storage in messages: a directory, `sqlite:PATH`, or a PostgreSQL URL without its password.
    fn location(&self) -> String;

    /// Open (create, resume, join or adopt) a study; refuses one whose kind, config or identity differs,
    /// naming the fields that differ.
    fn open_study(&mut self, spec: &StudySpec, mode: OpenMode) -> Result<Study>;

    /// A study by name.
    fn study(&mut self, name: &str) -> Result<Option<Study>>;

    /// Every study, oldest first.
    fn studies(&mut self) -> Result<Vec<Study>>;

    /// Mark a study finished (`error` = `None`) or failed (with its error). Idempotent; a finished study
    /// stays finished.
    fn finish_study(&mut self, study: i64, error: Option<&str>) -> Result<()>;

    /// Store generation `generation` of a search: its whole proposal and the trials it adds, once. A second
    /// call (another process) stores nothing and returns the stored proposal.
    fn insert_generation(&mut self, study: i64, generation: u64, proposal: &Value, trials: &[NewTrial]) -> Result<Inserted>;

    /// The highest generation stored, if any.
    fn last_generation(&mut self, study: i64) -> Result<Option<u64>>;

    /// The proposal of a stored generation.
    fn proposal(&mut self, study: i64, generation: u64) -> Result<Option<Value>>;

    /// Add trials by key (experiment cells), numbered after the study's last; keys already present are kept
    /// as they are (a finished cell is reused). Returns how many were added.
    fn add_trials(&mut self, study: i64, trials: &[(String, Value)]) -> Result<usize>;

    /// Claim a waiting trial for `worker` (first re-queueing trials whose worker stopped heart-beating). Only
    /// running studies' trials are claimed, lowest number first.
    fn claim(&mut self, worker: &str, which: Claim) -> Result<Option<Trial>>;

    /// Record `worker`'s result for a trial it holds; `false` when the trial was no longer its (re-queued after
    /// missed heartbeats, so the result is dropped and the trial evaluated by its new holder).
    fn complete(&mut self, study: i64, number: u64, worker: &str, result: &Value, value: Option<f64>, seconds: f64) -> Result<bool>;

    /// Give back a trial `worker` holds without counting an attempt (the worker cannot evaluate it here: other
    /// inputs on this machine); `false` when it was no longer its.
    fn release(&mut self, study: i64, number: u64, worker: &str) -> Result<bool>;

    /// Record a failed attempt: re-queued, or failed for good when the error repeats the previous attempt's or
    /// the attempts are used up.
    fn fail(&mut self, study: i64, number: u64, worker: &str, error: &str) -> Result<Failure>;

    /// The trials of a study (of one generation, or all), by number.
    fn trials(&mut self, study: i64, generation: Option<u64>) -> Result<Vec<Trial>>;

    /// Store the checkpoint taken after `generation` generations (the strategy's state, ready to propose
    /// generation `generation`), once; `false` when it was stored already.
    fn save_checkpoint(&mut self, study: i64, generation: u64, state: &Value) -> Result<bool>;

    /// A checkpoint: the one after `generation` generations, or the latest; with its generation.
    fn checkpoint(&mut self, study: i64, generation: Option<u64>) -> Result<Option<(u64, Value)>>;

    /// Wall time of the study so far in seconds: since its creation by the database clock (a directory: the
    /// time recorded by earlier runs plus this one's).
    fn wall_seconds(&mut self, study: i64) -> Result<f64>;

    /// A handle for a heartbeat thread (its own connection), or `None` when nothing else can take a trial
    /// (files: one process).
    fn heartbeats(&self) -> Result<Option<Box<dyn Heartbeat>>>;
}

/// Keeps claimed trials alive from a thread of their own.
pub trait Heartbeat: Send {
    /// Stamp the trial's heartbeat with the database clock; `false` when `worker` no longer holds it.
    fn beat(&mut self, study: i64, number: u64, worker: &str) -> Result<bool>;
}

/// Open a storage from a URL: `sqlite:PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`. Connects (and
/// creates the schema on first use), so a bad URL, an unreachable server or a database of a newer schema is
/// one clear error here.
pub fn open(url: &str) -> Result<Box<dyn Storage>> {
    match StorageUrl::parse(url)? {
        StorageUrl::Sqlite(path) => Ok(Box::new(sql::SqlStorage::sqlite(&path)?)),
        StorageUrl::Postgres { url, shown } => Ok(Box::new(sql::SqlStorage::postgres(&url, &shown)?)),
    }
}

/// A name for this process as a worker: `HOST:PID` (unique among live processes of a cluster).
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}
