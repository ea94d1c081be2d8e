//! The typed error of `longrope-search`: bad search configs, checkpoint problems, exhausted spaces, storage, I/O.

use std::path::PathBuf;

/// Result alias of the search crate.
pub type Result<T, E = SearchError> = std::result::Result<T, E>;

/// Everything that can go wrong while configuring, running, checkpointing or resuming a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// An error of the core (unknown plugin, invalid shape, scaling method errors ...).
    #[error(transparent)]
    Core(#[from] longrope_core::Error),
    /// A search config file (or inline config) that does not parse or does not validate.
    #[error("{origin}: {message}")]
    Config {
        /// The file path, or a description such as `--strategy random`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value outside what the search space accepts (e.g. `space.max_factor` < 1).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The field being checked (`space.step`, `evolution.parents_size` ...).
        what: String,
        /// Why it is invalid.
        message: String,
    },
    /// The strategy could not find a candidate that was not evaluated before.
    #[error("search space exhausted: {0}")]
    SpaceExhausted(String),
    /// A checkpoint that cannot be used to resume (missing, corrupt, written by another config ...).
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The fitness function failed (a model or evaluator error, a worker that panicked ...).
    #[error("fitness: {0}")]
    Fitness(String),
    /// An error of the storage holding the search (files, SQLite, PostgreSQL).
    #[error(transparent)]
    Storage(#[from] longrope_storage::StorageError),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl SearchError {
    /// Shorthand for [`SearchError::Invalid`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        SearchError::Invalid { what: what.into(), message: message.into() }
    }

    /// Shorthand for [`SearchError::Config`].
    pub fn config(origin: impl Into<String>, message: impl Into<String>) -> Self {
        SearchError::Config { origin: origin.into(), message: message.into() }
    }

    /// Shorthand for [`SearchError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SearchError::Io { path: path.into(), source }
    }

    /// Shorthand for [`SearchError::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        SearchError::Checkpoint { path: path.into(), message: message.into() }
    }
}

/// Strategies implement the core's [`longrope_core::SearchStrategy`], whose methods return the core's error:
/// search errors raised inside them travel as [`longrope_core::Error::Plugin`] and come back whole.
impl From<SearchError> for longrope_core::Error {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Core(inner) => inner,
            other => longrope_core::Error::Plugin(Box::new(other)),
        }
    }
}

/// Unwrap a core error that carries a [`SearchError`] (see the `From` impl above) back into it.
pub(crate) fn from_core(e: longrope_core::Error) -> SearchError {
    match e {
        longrope_core::Error::Plugin(boxed) => match boxed.downcast::<SearchError>() {
            Ok(search) => *search,
            Err(other) => SearchError::Core(longrope_core::Error::Plugin(other)),
        },
        other => SearchError::Core(other),
    }
}
