//! The database backends: one implementation of [`Storage`] over a small connection trait ([`Conn`]) that
//! SQLite ([`sqlite`]) and PostgreSQL ([`postgres`]) provide, so both run the same SQL.
//!
//! Tables (prefixed `longrope_`, so they can share a database with others):
//! - `longrope_schema(version)`: [`SCHEMA_VERSION`]; a database of a newer schema is refused.
//! - `longrope_studies`: name (unique), kind, config, identity, derived values, state, error, grace period,
//!   attempts, created/finished times.
//! - `longrope_generations(study_id, generation)`: a search's proposals, inserted once per generation.
//! - `longrope_trials(study_id, number)`, unique `(study_id, key)`: payload, state, worker, attempts,
//!   heartbeat, start/finish times, the evaluation's seconds, value, result, error.
//! - `longrope_checkpoints(study_id, generation)`: the strategy's state after each generation.
//!
//! Times are seconds since the Unix epoch from the database clock. JSON is stored as text (`serde_json`'s
//! canonical form, floats round-tripping exactly). Every write is one transaction: `BEGIN IMMEDIATE` on
//! SQLite; on PostgreSQL `BEGIN` with the study's row locked (`SELECT ... FOR UPDATE`) where trials are
//! numbered, and claims through `FOR UPDATE SKIP LOCKED`, so concurrent workers never take the same trial.

pub mod postgres;
pub mod sqlite;

use std::path::Path;

use serde_json::Value;

use crate::diff::{json_diff, summary};
use crate::error::{Result, StorageError};
use crate::{
    Claim, Failure, Heartbeat, Inserted, NewTrial, OpenMode, Storage, Study, StudyKind, StudySettings, StudySpec,
    StudyState, Trial, TrialState, SCHEMA_VERSION,
};

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// SQL `NULL` (parameters: text columns only).
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Real(f64),
    /// Text.
    Text(String),
}

impl Val {
    fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Real(x) => Some(*x as i64),
            _ => None,
        }
    }
    fn real(&self) -> Option<f64> {
        match self {
            Val::Real(x) => Some(*x),
            Val::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    fn text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A result row.
pub type Row = Vec<Val>;

/// Which SQL dialect a connection speaks (only DDL, the clock and row locks differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.35 or later (bundled).
    Sqlite,
    /// PostgreSQL 12 or later.
    Postgres,
}

impl Dialect {
    /// The database clock in seconds since the Unix epoch.
    fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "((julianday('now') - 2440587.5) * 86400.0)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
        }
    }

    /// The row lock of a claim's inner `SELECT` (SQLite's write transaction already excludes other writers).
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE OF t SKIP LOCKED",
        }
    }

    fn serial(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
        }
    }
}

/// A database connection as the storage needs it. `?` placeholders; `exec` returns the rows affected.
pub trait Conn: Send {
    /// The dialect.
    fn dialect(&self) -> Dialect;
    /// Start a write transaction (SQLite: `BEGIN IMMEDIATE`).
    fn begin_write(&mut self) -> Result<()>;
    /// Commit it.
    fn commit(&mut self) -> Result<()>;
    /// Roll it back (errors ignored: the connection is reported broken by the next statement).
    fn rollback(&mut self);
    /// Run statements without parameters (DDL).
    fn batch(&mut self, sql: &str) -> Result<()>;
    /// Run one statement.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64>;
    /// Run one query.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>>;
}

/// How to reconnect (for heartbeat threads).
#[derive(Debug, Clone)]
enum Target {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

/// [`Storage`] on a database.
pub struct SqlStorage {
    conn: Box<dyn Conn>,
    location: String,
    target: Target,
}

const STUDY_COLUMNS: &str =
    "id, name, kind, config, identity, derived, state, error, grace_seconds, max_attempts, created_at, finished_at";

fn trial_columns(d: Dialect) -> String {
    format!(
        "study_id, number, generation, key, payload, state, worker, attempts, {} - heartbeat_at, started_at, \
         finished_at, seconds, value, result, error",
        d.now()
    )
}

impl SqlStorage {
    /// Open (creating it and its schema) the SQLite database at `path`.
    pub fn sqlite(path: &Path) -> Result<SqlStorage> {
        let location = format!("sqlite:{}", path.display());
        let conn = sqlite::Sqlite::open(path, &location)?;
        SqlStorage::init(Box::new(conn), location, Target::Sqlite(path.to_path_buf()))
    }

    /// Connect to PostgreSQL at `url` (`shown`: the URL without its password) and create the schema on first use.
    pub fn postgres(url: &str, shown: &str) -> Result<SqlStorage> {
        let conn = postgres::Postgres::connect(url, shown)?;
        SqlStorage::init(Box::new(conn), shown.to_string(), Target::Postgres(url.to_string()))
    }

    fn init(conn: Box<dyn Conn>, location: String, target: Target) -> Result<SqlStorage> {
        let mut s = SqlStorage { conn, location, target };
        s.create_schema()?;
        Ok(s)
    }

    fn d(&self) -> Dialect {
        self.conn.dialect()
    }

    /// Run `f` in a write transaction; rolled back on error.
    fn write<T>(&mut self, f: impl FnOnce(&mut SqlStorage) -> Result<T>) -> Result<T> {
        self.conn.begin_write()?;
        match f(self) {
            Ok(v) => {
                self.conn.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.conn.rollback();
                Err(e)
            }
        }
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        self.conn.exec(sql, params)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        self.conn.query(sql, params)
    }

    fn create_schema(&mut self) -> Result<()> {
        let d = self.d();
        let serial = d.serial();
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS longrope_schema (version BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS longrope_studies (
                 id {serial},
                 name TEXT NOT NULL UNIQUE,
                 kind TEXT NOT NULL,
                 config TEXT NOT NULL,
                 identity TEXT NOT NULL,
                 derived TEXT NOT NULL,
                 state TEXT NOT NULL,
                 error TEXT,
                 grace_seconds DOUBLE PRECISION NOT NULL,
                 max_attempts BIGINT NOT NULL,
                 created_at DOUBLE PRECISION NOT NULL,
                 finished_at DOUBLE PRECISION);
             CREATE TABLE IF NOT EXISTS longrope_generations (
                 study_id BIGINT NOT NULL REFERENCES longrope_studies(id),
                 generation BIGINT NOT NULL,
                 proposal TEXT NOT NULL,
                 created_at DOUBLE PRECISION NOT NULL,
                 PRIMARY KEY (study_id, generation));
             CREATE TABLE IF NOT EXISTS longrope_trials (
                 study_id BIGINT NOT NULL REFERENCES longrope_studies(id),
                 number BIGINT NOT NULL,
                 generation BIGINT NOT NULL,
                 key TEXT NOT NULL,
                 payload TEXT NOT NULL,
                 state TEXT NOT NULL,
                 worker TEXT,
                 attempts BIGINT NOT NULL,
                 heartbeat_at DOUBLE PRECISION,
                 started_at DOUBLE PRECISION,
                 finished_at DOUBLE PRECISION,
                 seconds DOUBLE PRECISION,
                 value DOUBLE PRECISION,
                 result TEXT,
                 error TEXT,
                 PRIMARY KEY (study_id, number),
                 UNIQUE (study_id, key));
             CREATE INDEX IF NOT EXISTS longrope_trials_by_state ON longrope_trials (state, study_id, number);
             CREATE TABLE IF NOT EXISTS longrope_checkpoints (
                 study_id BIGINT NOT NULL REFERENCES longrope_studies(id),
                 generation BIGINT NOT NULL,
                 state TEXT NOT NULL,
                 created_at DOUBLE PRECISION NOT NULL,
                 PRIMARY KEY (study_id, generation));"
        );
        self.write(|s| {
            if d == Dialect::Postgres {
                // Concurrent first uses would race on CREATE TABLE IF NOT EXISTS: serialize them.
                s.exec("SELECT pg_advisory_xact_lock(7245019113)", &[])?;
            }
            s.conn.batch(&ddl)?;
            let rows = s.query("SELECT version FROM longrope_schema", &[])?;
            match rows.first().and_then(|r| r[0].int()) {
                None => {
                    s.exec("INSERT INTO longrope_schema (version) VALUES (?)", &[Val::Int(SCHEMA_VERSION)])?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StorageError::database(
                        &s.location,
                        format!("its schema is version {v}, newer than this build's {SCHEMA_VERSION}: upgrade longrope"),
                    ))
                }
                Some(_) => {}
            }
            Ok(())
        })
    }

    fn parse_json(&self, what: &str, v: &Val) -> Result<Value> {
        let text = v.text().unwrap_or("null");
        serde_json::from_str(text).map_err(|e| StorageError::database(&self.location, format!("corrupt {what}: {e}")))
    }

    fn study_from(&self, r: &Row) -> Result<Study> {
        let bad = |what: &str| StorageError::database(&self.location, format!("corrupt study row ({what})"));
        Ok(Study {
            id: r[0].int().ok_or_else(|| bad("id"))?,
            name: r[1].text().ok_or_else(|| bad("name"))?.to_string(),
            kind: r[2].text().and_then(StudyKind::parse).ok_or_else(|| bad("kind"))?,
            config: self.parse_json("study config", &r[3])?,
            identity: self.parse_json("study identity", &r[4])?,
            derived: self.parse_json("study derived values", &r[5])?,
            state: r[6].text().and_then(StudyState::parse).ok_or_else(|| bad("state"))?,
            error: r[7].text().map(str::to_string),
            settings: StudySettings {
                grace_seconds: r[8].real().ok_or_else(|| bad("grace_seconds"))?,
                max_attempts: r[9].int().ok_or_else(|| bad("max_attempts"))? as u32,
            },
            created_at: r[10].real().ok_or_else(|| bad("created_at"))?,
            finished_at: r[11].real(),
        })
    }

    fn trial_from(&self, r: &Row) -> Result<Trial> {
        let bad = |what: &str| StorageError::database(&self.location, format!("corrupt trial row ({what})"));
        Ok(Trial {
            study: r[0].int().ok_or_else(|| bad("study_id"))?,
            number: r[1].int().ok_or_else(|| bad("number"))? as u64,
            generation: r[2].int().ok_or_else(|| bad("generation"))? as u64,
            key: r[3].text().ok_or_else(|| bad("key"))?.to_string(),
            payload: self.parse_json("trial payload", &r[4])?,
            state: r[5].text().and_then(TrialState::parse).ok_or_else(|| bad("state"))?,
            worker: r[6].text().map(str::to_string),
            attempts: r[7].int().ok_or_else(|| bad("attempts"))? as u32,
            heartbeat_age: r[8].real(),
            started_at: r[9].real(),
            finished_at: r[10].real(),
            seconds: r[11].real(),
            value: r[12].real(),
            result: match &r[13] {
                Val::Null => None,
                v => Some(self.parse_json("trial result", v)?),
            },
            error: r[14].text().map(str::to_string),
        })
    }

    fn find_study(&mut self, name: &str) -> Result<Option<Study>> {
        let rows = self.query(&format!("SELECT {STUDY_COLUMNS} FROM longrope_studies WHERE name = ?"), &[Val::Text(name.into())])?;
        rows.first().map(|r| self.study_from(r)).transpose()
    }

    fn study_location(&self, name: &str) -> String {
        format!("study `{name}` in {}", self.location)
    }

    /// Lock the study's row until the transaction ends (PostgreSQL; SQLite's write lock covers it).
    fn lock_study(&mut self, study: i64) -> Result<()> {
        if self.d() == Dialect::Postgres {
            self.query("SELECT id FROM longrope_studies WHERE id = ? FOR UPDATE", &[Val::Int(study)])?;
        }
        Ok(())
    }

    /// Re-queue (or fail, out of attempts) running trials whose heartbeat is older than their study's grace.
    /// On PostgreSQL the stale rows are locked with `SKIP LOCKED` (rows another claimer is re-queueing are
    /// left to it), so two claimers never wait on each other's rows in opposite orders (no deadlock).
    fn release_stale(&mut self) -> Result<u64> {
        let d = self.d();
        let now = d.now();
        let max_attempts = "(SELECT max_attempts FROM longrope_studies s WHERE s.id = longrope_trials.study_id)";
        let sql = format!(
            "UPDATE longrope_trials SET
                 state = CASE WHEN attempts + 1 >= {max_attempts} THEN 'failed' ELSE 'waiting' END,
                 error = 'worker ' || COALESCE(worker, '?') || ' stopped heart-beating (attempt ' || CAST(attempts + 1 AS TEXT) || ')',
                 finished_at = CASE WHEN attempts + 1 >= {max_attempts} THEN {now} ELSE NULL END,
                 worker = NULL,
                 heartbeat_at = NULL,
                 attempts = attempts + 1
             WHERE state = 'running' AND (study_id, number) IN (
                 SELECT t.study_id, t.number FROM longrope_trials t JOIN longrope_studies s ON s.id = t.study_id
                 WHERE t.state = 'running' AND t.heartbeat_at < {now} - s.grace_seconds {lock})",
            lock = d.skip_locked(),
        );
        self.exec(&sql, &[])
    }
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).expect("JSON values serialize")
}

/// A finite value for the `value` column (NaN and infinities are `NULL`).
fn finite(v: Option<f64>) -> Val {
    match v {
        Some(x) if x.is_finite() => Val::Real(x),
        _ => Val::Null,
    }
}

/// Check a stored study against a spec: same kind, config and identity (naming what differs).
pub(crate) fn check_study(location: &str, stored: &Study, spec: &StudySpec, mode: OpenMode) -> Result<()> {
    if stored.kind != spec.kind {
        return Err(StorageError::study(
            location,
            format!("is a {} study, not a {} one: choose another --study name", stored.kind.as_str(), spec.kind.as_str()),
        ));
    }
    if mode == OpenMode::Adopt {
        return Ok(());
    }
    if stored.identity != spec.identity {
        let diffs = json_diff(&stored.identity, &spec.identity);
        return Err(StorageError::study(
            location,
            format!(
                "was measured on other inputs (the model or the corpus content differs, at: {}), so its results \
                 cannot be mixed with these: choose another --study name",
                summary(&diffs)
            ),
        ));
    }
    if stored.config != spec.config {
        let diffs = json_diff(&stored.config, &spec.config);
        return Err(StorageError::study(
            location,
            format!(
                "exists with a different config (differs at: {}): run it with the config it was created with, or \
                 choose another --study name",
                summary(&diffs)
            ),
        ));
    }
    Ok(())
}

impl Storage for SqlStorage {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn open_study(&mut self, spec: &StudySpec, mode: OpenMode) -> Result<Study> {
        let now = self.d().now();
        let location = self.study_location(&spec.name);
        if spec.name.trim().is_empty() {
            return Err(StorageError::study(&self.location, "a study needs a name (--study NAME)"));
        }
        self.write(|s| {
            let existing = s.find_study(&spec.name)?;
            match (&existing, mode) {
                (None, OpenMode::Resume) => {
                    return Err(StorageError::study(&location, "does not exist (`longrope study list` shows the studies)"))
                }
                (Some(st), OpenMode::Create) => {
                    return Err(StorageError::study(
                        &location,
                        format!("already exists ({}): join it, or choose another --study name", st.state.as_str()),
                    ))
                }
                _ => {}
            }
            if existing.is_none() {
                s.exec(
                    &format!(
                        "INSERT INTO longrope_studies (name, kind, config, identity, derived, state, grace_seconds, max_attempts, created_at)
                         VALUES (?, ?, ?, ?, ?, 'running', ?, ?, {now}) ON CONFLICT (name) DO NOTHING"
                    ),
                    &[
                        Val::Text(spec.name.clone()),
                        Val::Text(spec.kind.as_str().into()),
                        Val::Text(json_text(&spec.config)),
                        Val::Text(json_text(&spec.identity)),
                        Val::Text(json_text(&spec.derived)),
                        Val::Real(spec.settings.grace_seconds),
                        Val::Int(spec.settings.max_attempts as i64),
                    ],
                )?;
            }
            let stored = s
                .find_study(&spec.name)?
                .ok_or_else(|| StorageError::database(&s.location, format!("study `{}` vanished after its insert", spec.name)))?;
            check_study(&location, &stored, spec, mode)?;
            if mode == OpenMode::Adopt && (stored.config != spec.config || stored.identity != spec.identity) {
                s.exec(
                    "UPDATE longrope_studies SET config = ?, identity = ?, derived = ?, state = 'running', error = NULL WHERE id = ?",
                    &[
                        Val::Text(json_text(&spec.config)),
                        Val::Text(json_text(&spec.identity)),
                        Val::Text(json_text(&spec.derived)),
                        Val::Int(stored.id),
                    ],
                )?;
                return s.find_study(&spec.name)?.ok_or_else(|| StorageError::database(&s.location, "study vanished"));
            }
            Ok(stored)
        })
    }

    fn study(&mut self, name: &str) -> Result<Option<Study>> {
        self.find_study(name)
    }

    fn studies(&mut self) -> Result<Vec<Study>> {
        let rows = self.query(&format!("SELECT {STUDY_COLUMNS} FROM longrope_studies ORDER BY id"), &[])?;
        rows.iter().map(|r| self.study_from(r)).collect()
    }

    fn finish_study(&mut self, study: i64, error: Option<&str>) -> Result<()> {
        let now = self.d().now();
        let state = if error.is_some() { StudyState::Failed } else { StudyState::Finished };
        self.write(|s| {
            s.exec(
                &format!("UPDATE longrope_studies SET state = ?, error = ?, finished_at = {now} WHERE id = ? AND state = 'running'"),
                &[Val::Text(state.as_str().into()), error.map(|e| Val::Text(e.into())).unwrap_or(Val::Null), Val::Int(study)],
            )?;
            Ok(())
        })
    }

    fn insert_generation(&mut self, study: i64, generation: u64, proposal: &Value, trials: &[NewTrial]) -> Result<Inserted> {
        let now = self.d().now();
        self.write(|s| {
            s.lock_study(study)?;
            let n = s.exec(
                &format!(
                    "INSERT INTO longrope_generations (study_id, generation, proposal, created_at) VALUES (?, ?, ?, {now})
                     ON CONFLICT (study_id, generation) DO NOTHING"
                ),
                &[Val::Int(study), Val::Int(generation as i64), Val::Text(json_text(proposal))],
            )?;
            if n == 0 {
                let rows = s.query(
                    "SELECT proposal FROM longrope_generations WHERE study_id = ? AND generation = ?",
                    &[Val::Int(study), Val::Int(generation as i64)],
                )?;
                let stored = rows.first().map(|r| s.parse_json("proposal", &r[0])).transpose()?.unwrap_or(Value::Null);
                return Ok(Inserted::Existing(stored));
            }
            for t in trials {
                s.exec(
                    "INSERT INTO longrope_trials (study_id, number, generation, key, payload, state, attempts)
                     VALUES (?, ?, ?, ?, ?, 'waiting', 0)",
                    &[
                        Val::Int(study),
                        Val::Int(t.number as i64),
                        Val::Int(t.generation as i64),
                        Val::Text(t.key.clone()),
                        Val::Text(json_text(&t.payload)),
                    ],
                )?;
            }
            Ok(Inserted::New { recovered: 0 })
        })
    }

    fn last_generation(&mut self, study: i64) -> Result<Option<u64>> {
        let rows = self.query("SELECT MAX(generation) FROM longrope_generations WHERE study_id = ?", &[Val::Int(study)])?;
        Ok(rows.first().and_then(|r| r[0].int()).map(|g| g as u64))
    }

    fn proposal(&mut self, study: i64, generation: u64) -> Result<Option<Value>> {
        let rows = self.query(
            "SELECT proposal FROM longrope_generations WHERE study_id = ? AND generation = ?",
            &[Val::Int(study), Val::Int(generation as i64)],
        )?;
        rows.first().map(|r| self.parse_json("proposal", &r[0])).transpose()
    }

    fn add_trials(&mut self, study: i64, trials: &[(String, Value)]) -> Result<usize> {
        self.write(|s| {
            s.lock_study(study)?;
            let rows = s.query("SELECT MAX(number) FROM longrope_trials WHERE study_id = ?", &[Val::Int(study)])?;
            let mut next = rows.first().and_then(|r| r[0].int()).map(|n| n + 1).unwrap_or(0);
            let mut added = 0;
            for (key, payload) in trials {
                let n = s.exec(
                    "INSERT INTO longrope_trials (study_id, number, generation, key, payload, state, attempts)
                     VALUES (?, ?, 0, ?, ?, 'waiting', 0) ON CONFLICT (study_id, key) DO NOTHING",
                    &[Val::Int(study), Val::Int(next), Val::Text(key.clone()), Val::Text(json_text(payload))],
                )?;
                if n > 0 {
                    next += 1;
                    added += 1;
                }
            }
            // A study that gets new work runs again.
            if added > 0 {
                s.exec("UPDATE longrope_studies SET state = 'running', finished_at = NULL WHERE id = ? AND state = 'finished'", &[Val::Int(study)])?;
            }
            Ok(added)
        })
    }

    fn claim(&mut self, worker: &str, which: Claim) -> Result<Option<Trial>> {
        let d = self.d();
        let now = d.now();
        let (only, prefer) = match which {
            Claim::Study(id) => (Some(id), id),
            Claim::Any { prefer } => (None, prefer.unwrap_or(-1)),
        };
        let filter = if only.is_some() { "AND t.study_id = ?" } else { "" };
        let sql = format!(
            "UPDATE longrope_trials SET state = 'running', worker = ?, heartbeat_at = {now}, started_at = {now}
             WHERE (study_id, number) = (
                 SELECT t.study_id, t.number FROM longrope_trials t JOIN longrope_studies s ON s.id = t.study_id
                 WHERE t.state = 'waiting' AND s.state = 'running' {filter}
                 ORDER BY CASE WHEN t.study_id = ? THEN 0 ELSE 1 END, t.study_id, t.number
                 LIMIT 1 {lock})
               AND state = 'waiting'
             RETURNING {cols}",
            lock = d.skip_locked(),
            cols = trial_columns(d),
        );
        let mut params = vec![Val::Text(worker.into())];
        if let Some(id) = only {
            params.push(Val::Int(id));
        }
        params.push(Val::Int(prefer));
        self.write(|s| {
            s.release_stale()?;
            let rows = s.query(&sql, &params)?;
            rows.first().map(|r| s.trial_from(r)).transpose()
        })
    }

    fn complete(&mut self, study: i64, number: u64, worker: &str, result: &Value, value: Option<f64>, seconds: f64) -> Result<bool> {
        let now = self.d().now();
        self.write(|s| {
            let n = s.exec(
                &format!(
                    "UPDATE longrope_trials SET state = 'complete', result = ?, value = ?, seconds = ?, finished_at = {now}
                     WHERE study_id = ? AND number = ? AND worker = ? AND state = 'running'"
                ),
                &[
                    Val::Text(json_text(result)),
                    finite(value),
                    Val::Real(seconds),
                    Val::Int(study),
                    Val::Int(number as i64),
                    Val::Text(worker.into()),
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn release(&mut self, study: i64, number: u64, worker: &str) -> Result<bool> {
        self.write(|s| {
            let n = s.exec(
                "UPDATE longrope_trials SET state = 'waiting', worker = NULL, heartbeat_at = NULL
                 WHERE study_id = ? AND number = ? AND worker = ? AND state = 'running'",
                &[Val::Int(study), Val::Int(number as i64), Val::Text(worker.into())],
            )?;
            Ok(n == 1)
        })
    }

    fn fail(&mut self, study: i64, number: u64, worker: &str, error: &str) -> Result<Failure> {
        let now = self.d().now();
        // The trial's row stays locked from this read to the update (PostgreSQL), and the update applies only
        // while `worker` still holds it: a claimer re-queueing it meanwhile is never overwritten.
        let lock = if self.d() == Dialect::Postgres { "FOR UPDATE OF t" } else { "" };
        self.write(|s| {
            let rows = s.query(
                &format!(
                    "SELECT t.error, t.attempts, s.max_attempts FROM longrope_trials t JOIN longrope_studies s ON s.id = t.study_id
                     WHERE t.study_id = ? AND t.number = ? AND t.worker = ? AND t.state = 'running' {lock}"
                ),
                &[Val::Int(study), Val::Int(number as i64), Val::Text(worker.into())],
            )?;
            let Some(r) = rows.first() else {
                return Ok(Failure::Lost);
            };
            let previous = r[0].text().map(str::to_string);
            let attempts = r[1].int().unwrap_or(0) + 1;
            let max = r[2].int().unwrap_or(1);
            let final_ = previous.as_deref() == Some(error) || attempts >= max;
            let state = if final_ { TrialState::Failed } else { TrialState::Waiting };
            let n = s.exec(
                &format!(
                    "UPDATE longrope_trials SET state = ?, error = ?, attempts = ?, worker = NULL, heartbeat_at = NULL,
                         finished_at = CASE WHEN ? = 'failed' THEN {now} ELSE NULL END
                     WHERE study_id = ? AND number = ? AND worker = ? AND state = 'running'"
                ),
                &[
                    Val::Text(state.as_str().into()),
                    Val::Text(error.into()),
                    Val::Int(attempts),
                    Val::Text(state.as_str().into()),
                    Val::Int(study),
                    Val::Int(number as i64),
                    Val::Text(worker.into()),
                ],
            )?;
            if n == 0 {
                return Ok(Failure::Lost);
            }
            Ok(if final_ { Failure::Final } else { Failure::Requeued })
        })
    }

    fn trials(&mut self, study: i64, generation: Option<u64>) -> Result<Vec<Trial>> {
        let cols = trial_columns(self.d());
        let rows = match generation {
            Some(g) => self.query(
                &format!("SELECT {cols} FROM longrope_trials WHERE study_id = ? AND generation = ? ORDER BY number"),
                &[Val::Int(study), Val::Int(g as i64)],
            )?,
            None => self.query(&format!("SELECT {cols} FROM longrope_trials WHERE study_id = ? ORDER BY number"), &[Val::Int(study)])?,
        };
        rows.iter().map(|r| self.trial_from(r)).collect()
    }

    fn save_checkpoint(&mut self, study: i64, generation: u64, state: &Value) -> Result<bool> {
        let now = self.d().now();
        self.write(|s| {
            let n = s.exec(
                &format!(
                    "INSERT INTO longrope_checkpoints (study_id, generation, state, created_at) VALUES (?, ?, ?, {now})
                     ON CONFLICT (study_id, generation) DO NOTHING"
                ),
                &[Val::Int(study), Val::Int(generation as i64), Val::Text(json_text(state))],
            )?;
            Ok(n == 1)
        })
    }

    fn checkpoint(&mut self, study: i64, generation: Option<u64>) -> Result<Option<(u64, Value)>> {
        let rows = match generation {
            Some(g) => self.query(
                "SELECT generation, state FROM longrope_checkpoints WHERE study_id = ? AND generation = ?",
                &[Val::Int(study), Val::Int(g as i64)],
            )?,
            None => self.query(
                "SELECT generation, state FROM longrope_checkpoints WHERE study_id = ? ORDER BY generation DESC LIMIT 1",
                &[Val::Int(study)],
            )?,
        };
        match rows.first() {
            None => Ok(None),
            Some(r) => Ok(Some((r[0].int().unwrap_or(0) as u64, self.parse_json("checkpoint", &r[1])?))),
        }
    }

    fn wall_seconds(&mut self, study: i64) -> Result<f64> {
        let now = self.d().now();
        let rows = self.query(
            &format!("SELECT COALESCE(finished_at, {now}) - created_at FROM longrope_studies WHERE id = ?"),
            &[Val::Int(study)],
        )?;
        Ok(rows.first().and_then(|r| r[0].real()).unwrap_or(0.0))
    }

    fn heartbeats(&self) -> Result<Option<Box<dyn Heartbeat>>> {
        let conn: Box<dyn Conn> = match &self.target {
            Target::Sqlite(path) => Box::new(sqlite::Sqlite::open(path, &self.location)?),
            Target::Postgres(url) => Box::new(postgres::Postgres::connect(url, &self.location)?),
        };
        Ok(Some(Box::new(SqlHeartbeat { conn })))
    }
}

/// The heartbeat connection of a worker.
struct SqlHeartbeat {
    conn: Box<dyn Conn>,
}

impl Heartbeat for SqlHeartbeat {
    fn beat(&mut self, study: i64, number: u64, worker: &str) -> Result<bool> {
        let now = self.conn.dialect().now();
        self.conn.begin_write()?;
        let n = self.conn.exec(
            &format!("UPDATE longrope_trials SET heartbeat_at = {now} WHERE study_id = ? AND number = ? AND worker = ? AND state = 'running'"),
            &[Val::Int(study), Val::Int(number as i64), Val::Text(worker.into())],
        );
        match n {
            Ok(n) => {
                self.conn.commit()?;
                Ok(n == 1)
            }
            Err(e) => {
                self.conn.rollback();
                Err(e)
            }
        }
    }
}
