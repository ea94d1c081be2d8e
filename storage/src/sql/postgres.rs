//! The PostgreSQL connection: the synchronous `postgres` client without TLS (a cluster's private network, or
//! an SSH tunnel), a 10 s connect timeout, `application_name = longrope`. Placeholders `?` become `$1, $2 ...`.

use std::time::Duration;

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{Conn, Dialect, Row, Val};
use crate::error::{Result, StorageError};

/// How long a connection attempt waits for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to a PostgreSQL database.
pub struct Postgres {
    client: postgres::Client,
    location: String,
}

impl Postgres {
    /// Connect to `url` (shown as `location` in messages).
    pub fn connect(url: &str, location: &str) -> Result<Postgres> {
        let connect = |message: String| StorageError::Connect { location: location.to_string(), message };
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| StorageError::Url {
            url: location.to_string(),
            message: e.to_string(),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("longrope");
        }
        let client = config.connect(postgres::NoTls).map_err(|e| {
            // The driver's top-level message ("error connecting to server") hides the cause behind `source`.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            connect(message)
        })?;
        Ok(Postgres { client, location: location.to_string() })
    }

    fn err(&self, sql: &str, e: postgres::Error) -> StorageError {
        let first = sql.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
        let detail = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
        StorageError::database(&self.location, format!("{detail} (in `{first} ...`)"))
    }
}

/// `?` placeholders as `$1, $2 ...` (the SQL of this crate has no `?` inside literals).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// A `NULL` of whatever type the server infers for its parameter (`Option<String>` would only bind to text).
#[derive(Debug)]
struct AnyNull;

impl ToSql for AnyNull {
    fn to_sql(
        &self,
        _ty: &Type,
        _out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn bind(params: &[Val]) -> Vec<Box<dyn ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync> {
            match v {
                Val::Null => Box::new(AnyNull),
                Val::Int(i) => Box::new(*i),
                Val::Real(x) => Box::new(*x),
                Val::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

impl Conn for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn begin_write(&mut self) -> Result<()> {
        self.client.batch_execute("BEGIN").map_err(|e| self.err("BEGIN", e))
    }

    fn commit(&mut self) -> Result<()> {
        self.client.batch_execute("COMMIT").map_err(|e| self.err("COMMIT", e))
    }

    fn rollback(&mut self) {
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(|e| self.err(sql, e))
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        let values = bind(params);
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|b| b.as_ref()).collect();
        let text = numbered(sql);
        self.client.execute(text.as_str(), &refs).map_err(|e| self.err(sql, e))
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        let values = bind(params);
        let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|b| b.as_ref()).collect();
        let text = numbered(sql);
        let rows = self.client.query(text.as_str(), &refs).map_err(|e| self.err(sql, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, col) in r.columns().iter().enumerate() {
                let ty = col.type_();
                let get = |e: postgres::Error| self.err(sql, e);
                row.push(if *ty == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map_err(get)?.map(Val::Int).unwrap_or(Val::Null)
                } else if *ty == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i).map_err(get)?.map(|x| Val::Int(x as i64)).unwrap_or(Val::Null)
                } else if *ty == Type::FLOAT8 {
                    r.try_get::<_, Option<f64>>(i).map_err(get)?.map(Val::Real).unwrap_or(Val::Null)
                } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
                    r.try_get::<_, Option<String>>(i).map_err(get)?.map(Val::Text).unwrap_or(Val::Null)
                } else if *ty == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i).map_err(get)?.map(|b| Val::Int(b as i64)).unwrap_or(Val::Null)
                } else {
                    return Err(StorageError::database(&self.location, format!("column {} has unexpected type {ty}", col.name())));
                });
            }
            out.push(row);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(super::numbered("a = ? AND b IN (?, ?)"), "a = $1 AND b IN ($2, $3)");
    }
}
