//! Storage URLs: `sqlite:PATH` (also `sqlite://PATH`, `sqlite:///ABSOLUTE`) and
//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?OPTIONS]` (also `postgresql://`). Anything else is refused with
//! the forms that are accepted; passwords never appear in messages ([`redact`]).

use std::path::PathBuf;

use crate::error::{Result, StorageError};

/// The accepted forms, for error messages.
pub const FORMS: &str = "expected `sqlite:PATH` (one machine) or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (several machines)";

/// A parsed storage URL.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageUrl {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres {
        /// The URL as given (with its password), for the driver.
        url: String,
        /// The URL for messages (password replaced by `***`).
        shown: String,
    },
}

impl StorageUrl {
    /// Parse a URL; errors name it (redacted) and list the accepted forms.
    pub fn parse(url: &str) -> Result<StorageUrl> {
        let bad = |message: String| StorageError::Url { url: redact(url), message };
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(bad(format!("no scheme: {FORMS}")));
        };
        match scheme {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(bad("no database file after `sqlite:`".into()));
                }
                if path == ":memory:" {
                    return Err(bad("an in-memory database cannot be shared between processes: name a file".into()));
                }
                Ok(StorageUrl::Sqlite(PathBuf::from(path)))
            }
            "postgres" | "postgresql" => {
                let Some(after) = rest.strip_prefix("//") else {
                    return Err(bad(format!("expected `{scheme}://HOST...`")));
                };
                let authority = after.split(['/', '?']).next().unwrap_or("");
                let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
                if host.is_empty() {
                    return Err(bad("no host: expected `postgres://USER@HOST[:PORT]/DATABASE`".into()));
                }
                if let Some((_, port)) = host.rsplit_once(':') {
                    if port.parse::<u16>().is_err() {
                        return Err(bad(format!("port `{port}` is not a number in 1..=65535")));
                    }
                }
                let db = after[authority.len()..].strip_prefix('/').unwrap_or("").split('?').next().unwrap_or("");
                if db.is_empty() {
                    return Err(bad("no database name: expected `postgres://USER@HOST[:PORT]/DATABASE`".into()));
                }
                Ok(StorageUrl::Postgres { url: url.to_string(), shown: redact(url) })
            }
            other => Err(bad(format!("unknown scheme `{other}`: {FORMS}"))),
        }
    }
}

/// The URL with its password (`user:PASSWORD@`) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!(StorageUrl::parse("sqlite:runs/s.db").unwrap(), StorageUrl::Sqlite("runs/s.db".into()));
        assert_eq!(StorageUrl::parse("sqlite:///tmp/s.db").unwrap(), StorageUrl::Sqlite("/tmp/s.db".into()));
        assert_eq!(StorageUrl::parse("sqlite://s.db").unwrap(), StorageUrl::Sqlite("s.db".into()));
        let StorageUrl::Postgres { shown, .. } = StorageUrl::parse("postgres://me:secret@db.lan:5433/studies").unwrap() else {
            panic!()
        };
        assert_eq!(shown, "postgres://me:***@db.lan:5433/studies");
        assert!(StorageUrl::parse("postgresql://me@localhost/x?connect_timeout=5").is_ok());
    }

    #[test]
    fn refuses_other_forms_with_the_accepted_ones() {
        for (url, needle) in [
            ("mysql://me@h/db", "unknown scheme `mysql`"),
            ("runs/study.db", "no scheme"),
            ("sqlite:", "no database file"),
            ("sqlite::memory:", "in-memory"),
            ("postgres://me@h:port/db", "port `port`"),
            ("postgres://me@h:5432", "no database name"),
            ("postgres:me@h/db", "expected `postgres://HOST"),
            ("postgres://:pw@/db", "no host"),
        ] {
            let e = StorageUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
        let e = StorageUrl::parse("mysql://me:hunter2@h/db").unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("sqlite:PATH"), "{e}");
    }
}
