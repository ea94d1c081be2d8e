//! The typed error of `longrope-storage`: bad URLs, unreachable servers, database errors, studies that do not
//! match, and file I/O. Every message names the storage (a path, `sqlite:PATH`, a URL without its password).

use std::path::PathBuf;

/// Result alias of the storage crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong while opening or using a storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A storage URL that does not parse or names no backend.
    #[error("storage URL `{url}`: {message}")]
    Url {
        /// The URL as given (without its password).
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The database cannot be reached or opened.
    #[error("cannot connect to {location}: {message}")]
    Connect {
        /// The storage.
        location: String,
        /// The driver's reason.
        message: String,
    },
    /// A query or transaction failed.
    #[error("{location}: {message}")]
    Database {
        /// The storage.
        location: String,
        /// What failed.
        message: String,
    },
    /// A study that cannot be used as asked: missing, of another kind, another config or other inputs.
    #[error("{location}: {message}")]
    Study {
        /// The study (`study NAME in LOCATION`, or a file).
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error of the core (atomic writes, output directories).
    #[error(transparent)]
    Core(#[from] longrope_core::Error),
}

impl StorageError {
    /// Shorthand for [`StorageError::Study`].
    pub fn study(location: impl Into<String>, message: impl Into<String>) -> Self {
        StorageError::Study { location: location.into(), message: message.into() }
    }

    /// Shorthand for [`StorageError::Database`].
    pub fn database(location: impl Into<String>, message: impl std::fmt::Display) -> Self {
        StorageError::Database { location: location.into(), message: message.to_string() }
    }

    /// Shorthand for [`StorageError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { path: path.into(), source }
    }
}
