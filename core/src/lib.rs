//! `longrope-core`: the model-agnostic heart of longrope-rs.
//!
//! It defines the data path of the project (see `docs/architecture.md`):
//! - [`rope`]: [`RopeShape`], [`RopeContext`] and [`RopeTables`], the plain data a scaling method produces
//!   and a model consumes (inverse frequencies, attention factor, retained start tokens);
//! - [`scaling`]: the [`ScalingConfig`] / [`PositionScaling`] traits and the `--scaling` loader;
//! - [`model`]: the [`ModelArch`] / [`LanguageModel`] traits and the trainable [`model::Decoder`] view;
//!   [`nn`]: a linear projection that can carry a LoRA adapter; [`generate`]: greedy decoding with a KV cache;
//! - [`eval`]: the [`Evaluator`] trait; [`search`]: the [`SearchStrategy`] trait;
//! - [`registry`]: the static (`inventory`) and dynamic plugin registry;
//! - [`device`]: libtorch environment (version, threads, CUDA), device and dtype parsing;
//! - [`files`]: atomic writes, output directories, bounded reads of user files; [`digest`]: content
//!   fingerprints of inputs (SHA-256, cached); [`limits`]: bounds on numeric inputs;
//! - [`error`]: the crate's typed [`Error`].

pub mod device;
pub mod digest;
pub mod error;
pub mod eval;
pub mod files;
pub mod generate;
pub mod limits;
pub mod model;
pub mod nn;
pub mod registry;
pub mod rope;
pub mod scaling;
pub mod search;

pub use error::{Error, Result};
pub use eval::Evaluator;
pub use model::{LanguageModel, ModelArch};
pub use registry::{PluginInfo, PluginKind};
pub use rope::{RetainedStart, RopeContext, RopeShape, RopeTables};
pub use scaling::{PositionScaling, ScalingConfig};
pub use search::SearchStrategy;

/// Re-exported so plugin crates register with the same `inventory` and `typetag` versions as the core.
pub use inventory;
pub use typetag;
