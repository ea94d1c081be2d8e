//! The typed error of `longrope-models`: every variant names the file (or tensor, or field) and the problem.

use std::path::PathBuf;

/// Result alias of the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The path is neither a `.gguf` file nor an HF model directory.
    #[error("{path}: not a model (expected a `.gguf` file or an HF directory with config.json)")]
    NotAModel {
        /// The path given.
        path: PathBuf,
    },
    /// A file that ends before what its header announces.
    #[error("{path}: truncated file: {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What could not be read (e.g. `tensor blk.3.attn_q.weight needs bytes 100..200 of 150`).
        what: String,
    },
    /// A file whose content is not what its format requires (bad magic, bad value type, bad length ...).
    #[error("{path}: corrupt or unsupported file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A GGUF tensor storage type this crate cannot dequantise.
    #[error("{path}: tensor `{tensor}` has storage type {ggml_type}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")]
    UnsupportedTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The GGML type (name or number).
        ggml_type: String,
    },
    /// A weight the architecture needs is absent from the checkpoint.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The file or directory.
        path: PathBuf,
        /// The tensor name (HF naming).
        name: String,
    },
    /// An HF directory without weight files.
    #[error("{path}: no weights: expected model.safetensors, or model.safetensors.index.json and the shards it lists")]
    MissingWeights {
        /// The directory.
        path: PathBuf,
    },
    /// A weight whose shape is not the one the config implies.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file or directory.
        path: PathBuf,
        /// The tensor name (HF naming).
        name: String,
        /// The shape the config implies.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A config field (config.json key or GGUF metadata key) that is missing or invalid.
    #[error("{path}: {field}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The field (`num_attention_heads`, `llama.attention.head_count` ...).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An architecture no registered plugin handles.
    #[error("{path}: unknown architecture `{arch}`; known architectures: {known}")]
    UnknownArchitecture {
        /// The file or directory.
        path: PathBuf,
        /// The architecture named by the checkpoint.
        arch: String,
        /// The registered architectures.
        known: String,
    },
    /// A tokenizer that cannot be built or loaded.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A bad argument to a model call (wrong token shape, tables that do not fit ...).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was checked.
        what: String,
        /// Why it is invalid.
        message: String,
    },
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    /// Shorthand for [`ModelError::Config`].
    pub fn config(path: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Config { path: path.into(), field: field.into(), message: message.into() }
    }

    /// Shorthand for [`ModelError::Corrupt`].
    pub fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Corrupt { path: path.into(), message: message.into() }
    }

    /// Shorthand for [`ModelError::Invalid`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        ModelError::Invalid { what: what.into(), message: message.into() }
    }
}

impl From<ModelError> for longrope_core::Error {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Torch(t) => longrope_core::Error::Torch(t),
            other => longrope_core::Error::Plugin(Box::new(other)),
        }
    }
}
