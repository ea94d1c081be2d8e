//! The typed error of `longrope-data`: data and token-store problems, each naming its file.

use std::path::PathBuf;

/// Errors of corpus loading, token stores and evaluation set-up.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file (text, JSONL) is malformed.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A token store is corrupt or inconsistent.
    #[error("{path}: corrupt token store: {message}")]
    CorruptStore {
        /// The store directory.
        path: PathBuf,
        /// What is inconsistent.
        message: String,
    },
    /// A token store made with another tokenizer than the model's.
    #[error(
        "{path}: token store was made with another tokenizer (store: {store}, model: {model}); re-run `longrope tokenize` with this model"
    )]
    TokenizerMismatch {
        /// The store directory.
        path: PathBuf,
        /// The store's tokenizer identity.
        store: String,
        /// The model's tokenizer identity.
        model: String,
    },
    /// Not enough documents long enough for the requested length.
    #[error("{origin}: {message}")]
    NotEnoughData {
        /// The data source.
        origin: String,
        /// What was asked and what exists.
        message: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An error from the core (model forward, tables).
    #[error(transparent)]
    Core(#[from] longrope_core::Error),
}

impl From<DataError> for longrope_core::Error {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Core(c) => c,
            DataError::Io { path, source } => longrope_core::Error::Io { path, source },
            other => {
                let (origin, message) = match &other {
                    DataError::Data { path, .. }
                    | DataError::CorruptStore { path, .. }
                    | DataError::TokenizerMismatch { path, .. } => (path.display().to_string(), other.to_string()),
                    _ => ("evaluation".to_string(), other.to_string()),
                };
                let prefix = format!("{origin}: ");
                let message = message.strip_prefix(&prefix).map(str::to_string).unwrap_or(message);
                longrope_core::Error::Config { origin, message }
            }
        }
    }
}

/// Result alias of the evaluator crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
