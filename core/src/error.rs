//! The typed error of `longrope-core`, shared by the plugin crates for the cases the core defines.

use std::path::PathBuf;

use crate::registry::PluginKind;

/// Result alias of the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core: unknown plugins, bad configs, invalid values, I/O, libtorch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plugin name that no registered plugin of that kind has.
    #[error("unknown {kind} plugin `{name}`; known {kind} plugins: {known}")]
    UnknownPlugin {
        /// The kind that was looked up.
        kind: PluginKind,
        /// The name asked for.
        name: String,
        /// The registered names, sorted and comma-separated.
        known: String,
    },
    /// A configuration file (or inline config) that does not parse or does not validate.
    #[error("{origin}: {message}")]
    Config {
        /// The file path, or a description such as `--scaling yarn`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A value outside what a method or model accepts (e.g. `factor` < 1, wrong number of factors).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was being checked (`yarn.factor`, `longrope.long_factor` ...).
        what: String,
        /// Why it is invalid.
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
    /// A method whose tables cannot be expressed as an HF `longrope` block.
    #[error("cannot export `{method}` as an HF `rope_scaling` longrope block: {reason}")]
    NotExportable {
        /// The method.
        method: String,
        /// Why not.
        reason: String,
    },
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A plugin crate's own typed error (e.g. `longrope_models::ModelError`), kept whole so callers can
    /// downcast it; its message is shown unchanged.
    #[error(transparent)]
    Plugin(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), message: message.into() }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { origin: origin.into(), message: message.into() }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// An error and its causes on one line, `message: cause: cause ...`, as the CLI prints them, without repeating
/// a cause that the message before it already ends with.
///
/// Every error type of longrope-rs shows its cause in its own message (`path: No such file or directory`), so
/// that `to_string()` alone is complete, and most also return it from `source()` (thiserror does so for a field
/// named `source` and for `#[from]`). Printing the whole chain naively (anyhow's `{:#}`) therefore says every
/// I/O error twice; this is the one place the chain is rendered for people.
pub fn chain_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_message_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = Error::io("/nonexistent", io);
        assert_eq!(chain_message(&e), "/nonexistent: No such file or directory (os error 2)");
        let e = Error::config("a.toml", "bad");
        assert_eq!(chain_message(&e), "a.toml: bad");
    }
}
