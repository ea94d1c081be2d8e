//! `longrope-scaling`: every RoPE context-extension method of the field as a plugin, one file each, exact to
//! its reference formula (HF transformers' `ROPE_INIT_FUNCTIONS` where HF has the method).
//!
//! | plugin | file | reference |
//! |---|---|---|
//! | `none` | [`none`] | RoPE, HF `default` |
//! | `pi` | [`pi`] | Position Interpolation, HF `linear` |
//! | `ntk` | [`ntk`] | NTK-aware base change |
//! | `dynamic-ntk` | [`dynamic_ntk`] | HF `dynamic` |
//! | `yarn` | [`yarn`] | YaRN, HF `yarn` |
//! | `dynamic-yarn` | [`dynamic_yarn`] | jquesnelle/yarn dynamic YaRN |
//! | `llama3` | [`llama3`] | Llama 3.1, HF `llama3` |
//! | `longrope` | [`longrope`] | LongRoPE (microsoft/LongRoPE), HF `longrope` |
//!
//! [`factors`] reads/writes LongRoPE's factor CSV and exports HF `rope_scaling` blocks. Each method is a serde
//! config (`#[serde(deny_unknown_fields)]`) declared once with `longrope_core::plugin!` (its name is the
//! registry's and `typetag`'s), whose `build` validates it against a [`longrope_core::RopeShape`] and returns the
//! runtime [`longrope_core::PositionScaling`]. A method HF has a `rope_type` for declares it with its reader of
//! such blocks (`pi`: `linear`, `dynamic-ntk`: `dynamic`, `yarn`, `llama3`, `longrope`: `longrope`/`su`), which
//! is how a checkpoint's own `rope_scaling` becomes one of these methods. The list of methods is the registry's
//! (`longrope plugins`). See `docs/scaling.md`.

mod checks;
pub mod dynamic_ntk;
pub mod dynamic_yarn;
pub mod error;
pub mod factors;
pub mod llama3;
pub mod longrope;
pub mod none;
pub mod ntk;
pub mod pi;
pub mod yarn;

pub use error::ScalingError;
pub use factors::FactorTable;

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
