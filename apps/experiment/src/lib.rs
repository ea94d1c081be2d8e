//! `longrope-experiment`: config-driven head-to-head and ablation runs (`longrope run EXPERIMENT.toml`).
//!
//! One TOML file describes the whole experiment: models, corpus, scaling methods (plugin names, files, inline
//! tables, or the best factors of a search step), search steps (LongRoPE's evolution, arXiv 2402.13753,
//! Sec. 3.2, or the random/grid baselines), evaluators with their lengths and seeds, and `[[ablation]]` sweeps.
//! It expands into cells (model x method x evaluator x length x seed) that are run once and cached, and into
//! a report (tables and plots) a person can read at a glance.
//!
//! - [`config`]: the schema, validation before any compute, ablation expansion;
//! - [`runner`]: searches, cells, the cache and resume; [`identity`]: what the inputs contain (cache keys);
//! - [`cells`]: a cell as a trial (its task, one loaded model per process); [`worker`]: `longrope worker`,
//!   which evaluates the trials of any study (search candidates, cells) in a shared database;
//! - [`report`]: `results.json`, `results.csv`, `report.md`, and `compare` over several runs;
//! - [`plots`]: PNG and SVG plots with `plotters`.
//!
//! See `docs/experiments.md`.

pub mod cells;
pub mod config;
pub mod error;
pub mod identity;
pub mod plots;
pub mod report;
pub mod runner;
pub mod worker;

pub use config::{Experiment, ExperimentFile};
pub use error::{ExperimentError, Result};
pub use report::Results;
pub use runner::{run, RunOptions, RunOutcome};
