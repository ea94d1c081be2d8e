//! The typed error of `longrope-train`: every variant names the file, the field or the step.

use std::path::PathBuf;

/// Result alias of the training crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// What can go wrong configuring, running, checkpointing or exporting a fine-tune.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A fine-tune config that does not parse or whose field is out of range.
    #[error("{origin}: {field}: {message}")]
    Config {
        /// The config file (or `[[finetune]] NAME` of an experiment).
        origin: String,
        /// The field (`optim.lr`, `data.seq_len` ...).
        field: String,
        /// What is wrong.
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
    /// A checkpoint or output directory that cannot be used (corrupt, from another config, ...).
    #[error("{path}: {message}")]
    Checkpoint {
        /// The checkpoint or output directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss or the gradients became NaN or infinite.
    #[error("step {step}: {what} is not finite ({value}); lower optim.lr or enable optim.clip_grad_norm")]
    NotFinite {
        /// The optimizer step.
        step: usize,
        /// `loss` or `gradient norm`.
        what: String,
        /// The value.
        value: f64,
    },
    /// An error of the data crate (corpus, windows).
    #[error(transparent)]
    Data(#[from] longrope_data::DataError),
    /// An error of the core (model, tables, plugins).
    #[error(transparent)]
    Core(#[from] longrope_core::Error),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl TrainError {
    /// Shorthand for [`TrainError::Config`].
    pub fn config(origin: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Self {
        TrainError::Config { origin: origin.into(), field: field.into(), message: message.into() }
    }

    /// Shorthand for [`TrainError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}

impl From<TrainError> for longrope_core::Error {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Core(c) => c,
            TrainError::Io { path, source } => longrope_core::Error::Io { path, source },
            other => longrope_core::Error::Plugin(Box::new(other)),
        }
    }
}
