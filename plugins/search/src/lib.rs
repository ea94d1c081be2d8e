//! `longrope-search`: search of RoPE rescale factors. LongRoPE's evolution (arXiv 2402.13753, Sec. 3.2,
//! Alg. 1) with its `dim_mono` and `dim_piece_mono` spaces, and random and grid baselines that spend the same
//! number of evaluations, all behind the core's [`longrope_core::SearchStrategy`]; a driver that
//! deduplicates, records every evaluation, checkpoints after every generation and resumes exactly.
//!
//! - [`space`]: the candidate space shared by all strategies (bounds, monotonicity, grid, operators), in
//!   `reference` (microsoft/LongRoPE's code, default) or `paper` mode;
//! - [`reference_ops`]: the reference's mutation, replayable on recorded draws;
//! - [`evolution`], [`random`], [`grid`]: the strategies (plugins `evolution`, `random`, `grid`);
//! - [`config`]: the `SearchConfig` plugin trait and the search file;
//! - [`seeds`]: seed factors (the reference's YaRN seed, PI/NTK/YaRN) from the scaling registry;
//! - [`fitness`]: the `Fitness` trait, racing over documents, parallel workers, a synthetic fitness;
//! - [`model_fitness`]: `EvaluatorFitness`, a model + evaluator as the fitness (what real searches use);
//! - [`study`]: a search as a study in a `longrope_storage::Storage` (files, SQLite, PostgreSQL): generations
//!   proposed once, trials claimed by any number of workers, checkpoints; [`export`]: a study as a search
//!   directory;
//! - [`driver`]: one process running a study to its end; [`outputs`]: the files a search writes;
//! - [`compare`]: search directories read back and compared (`longrope compare DIR...`).
//!
//! See `docs/search.md`.

pub mod compare;
pub mod config;
pub mod driver;
pub mod error;
pub mod evolution;
pub mod export;
pub mod fitness;
pub mod grid;
pub mod model_fitness;
pub mod outputs;
pub mod random;
pub mod reference_ops;
pub mod seeds;
pub mod space;
pub mod study;

pub use compare::{compare_markdown, SearchRun};
pub use config::{SearchConfig, SearchContext, SearchFile};
pub use driver::{Driver, DriverOptions, Outcome, Summary};
pub use error::{Result, SearchError};
pub use fitness::{Evaluation, Fitness, NoFitness, ParallelFitness, Race, Raced, Racing, SyntheticFitness};
pub use model_fitness::{fitness_evaluator_config, EvaluatorFitness};
pub use outputs::{candidate_config, candidate_to_toml, SeedResult};
pub use seeds::{RegistrySeeds, Seed, SeedSource};
pub use space::{SearchMode, SearchSpace, SpaceConfig, SpaceKind};
pub use study::{Advance, SearchStudy};

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}

#[cfg(test)]
mod tests;
