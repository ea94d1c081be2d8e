//! `longrope-eval`: the measurements the field reports and the search optimises.
//!
//! - [`ppl`]: sliding-window perplexity as LongRoPE's `evaluation/perplexity.py` defines it (`reference` windows
//!   and document selection by default, our earlier `full` windows and `per_length` selection as options);
//! - [`passkey`]: passkey retrieval with LongRoPE's prompt, its length in characters as the reference sets it
//!   (default) or in tokens, accuracy by length and depth;
//! - [`pyrandom`]: Python's `random` (Mersenne Twister), so the reference's passkey prompts are reproduced;
//! - [`needle`]: LongRoPE2's needle perplexity (answer tokens only, real-text filler);
//!
//! Corpora, token stores and document selection live in `longrope-data` (shared with training).
//!
//! Every evaluator is a plugin, declared once with `longrope_core::plugin!` (registry entry and `typetag` name).

pub mod needle;
pub mod passkey;
pub mod ppl;
pub mod pyrandom;
mod progress;
#[cfg(test)]
mod testing;

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
