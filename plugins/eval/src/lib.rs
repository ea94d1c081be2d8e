//! `longrope-eval`: the measurements the field reports and the search optimises.
//!
//! - [`ppl`]: sliding-window perplexity as LongRoPE's `evaluation/perplexity.py` defines it;
//! - [`passkey`]: passkey retrieval with LongRoPE's prompt, length in tokens, accuracy by length and depth;
//! - [`needle`]: LongRoPE2's needle perplexity (answer tokens only, real-text filler);
//! - [`data`] and [`store`]: corpus reading (text, directories, JSONL), tokenization, memory-mapped token
//!   stores tied to their tokenizer, deterministic document selection.
//!
//! Every evaluator is a plugin (`register_plugin!` + a `typetag` config named after it).

pub mod data;
pub mod error;
pub mod needle;
pub mod passkey;
pub mod ppl;
mod progress;
pub mod store;
#[cfg(test)]
mod testing;

pub use error::EvalError;

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
