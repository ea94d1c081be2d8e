//! The SQLite connection: the bundled SQLite (no system library), WAL journal, `synchronous = FULL`, a 60 s
//! busy timeout, and every write transaction opened with `BEGIN IMMEDIATE` so that it takes the one write
//! lock up front (waiting for it) instead of failing with "database is locked" when a read upgrades.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;

use super::{Conn, Dialect, Row, Val};
use crate::error::{Result, StorageError};

/// How long a write waits for the lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// One connection to an SQLite file.
pub struct Sqlite {
    conn: rusqlite::Connection,
    location: String,
}

impl Sqlite {
    /// Open (creating the file) `path`; its directory must exist.
    pub fn open(path: &Path, location: &str) -> Result<Sqlite> {
        let connect = |message: String| StorageError::Connect { location: location.to_string(), message };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(connect(format!("directory {} does not exist", dir.display())));
            }
        }
        if path.is_dir() {
            return Err(connect(format!("{} is a directory, not a database file", path.display())));
        }
        let conn = rusqlite::Connection::open(path).map_err(|e| connect(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| connect(e.to_string()))?;
        let db = |e: rusqlite::Error| StorageError::database(location, format!("{e} (is it an SQLite database?)"));
        // WAL is persistent in the file; readers do not block the writer and the writer does not block readers.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::database(location, format!("cannot switch to WAL journal (got `{mode}`)")));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(db)?;
        Ok(Sqlite { conn, location: location.to_string() })
    }

    fn err(&self, sql: &str, e: rusqlite::Error) -> StorageError {
        let first = sql.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
        StorageError::database(&self.location, format!("{e} (in `{first} ...`)"))
    }
}

fn bind(params: &[Val]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|v| match v {
            Val::Null => rusqlite::types::Value::Null,
            Val::Int(i) => rusqlite::types::Value::Integer(*i),
            Val::Real(x) => rusqlite::types::Value::Real(*x),
            Val::Text(s) => rusqlite::types::Value::Text(s.clone()),
        })
        .collect()
}

impl Conn for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn begin_write(&mut self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.err("BEGIN IMMEDIATE", e))
    }

    fn commit(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(|e| self.err("COMMIT", e))
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| self.err(sql, e))
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        let values = bind(params);
        self.conn
            .execute(sql, rusqlite::params_from_iter(values.iter()))
            .map(|n| n as u64)
            .map_err(|e| self.err(sql, e))
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        let values = bind(params);
        let run = || -> rusqlite::Result<Vec<Row>> {
            let mut stmt = self.conn.prepare(sql)?;
            let n = stmt.column_count();
            let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut row = Vec::with_capacity(n);
                for i in 0..n {
                    row.push(match r.get_ref(i)? {
                        ValueRef::Null => Val::Null,
                        ValueRef::Integer(i) => Val::Int(i),
                        ValueRef::Real(x) => Val::Real(x),
                        ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Val::Text(String::from_utf8_lossy(b).into_owned()),
                    });
                }
                out.push(row);
            }
            Ok(out)
        };
        run().map_err(|e| self.err(sql, e))
    }
}
