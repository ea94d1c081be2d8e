//! The typed error of `longrope-experiment`: bad experiment files, plugin/search/evaluation failures, I/O.

use std::path::PathBuf;

/// Result alias of the experiment crate.
pub type Result<T, E = ExperimentError> = std::result::Result<T, E>;

/// Everything that can go wrong while validating, running or reporting an experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// An experiment file that does not parse or does not validate (unknown field, missing file ...).
    #[error("{path}: {message}")]
    Config {
        /// The experiment file.
        path: PathBuf,
        /// What is wrong, naming the table and field.
        message: String,
    },
    /// An error of the core (unknown plugin, scaling or evaluator failure, libtorch).
    #[error(transparent)]
    Core(#[from] longrope_core::Error),
    /// An error of a search step.
    #[error(transparent)]
    Search(#[from] longrope_search::SearchError),
    /// An error of the storage holding cells and searches (files, SQLite, PostgreSQL).
    #[error(transparent)]
    Storage(#[from] longrope_storage::StorageError),
    /// An error of the evaluation crate (corpus reading, tokenization).
    #[error(transparent)]
    Data(#[from] longrope_data::DataError),
    /// An error of a fine-tune step.
    #[error(transparent)]
    Train(#[from] longrope_train::TrainError),
    /// An output directory holding another experiment's results.
    #[error("{path}: {message}")]
    OutDir {
        /// The output directory.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A results file that cannot be read (`longrope compare`, cached cells).
    #[error("{path}: {message}")]
    Results {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A plot that could not be drawn.
    #[error("plot {path}: {message}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The drawing backend's message.
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
}

impl ExperimentError {
    /// Shorthand for [`ExperimentError::Config`].
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ExperimentError::Config { path: path.into(), message: message.into() }
    }

    /// Shorthand for [`ExperimentError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExperimentError::Io { path: path.into(), source }
    }
}
