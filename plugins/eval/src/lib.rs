//! `longrope-eval`: the measurements the field reports and the search optimises.
//!
//! - [`ppl`]: sliding-window perplexity as LongRoPE's `evaluation/perplexity.py` defines it;
//! - [`passkey`]: passkey retrieval with LongRoPE's prompt, length in tokens, accuracy by length and depth;
//! - [`needle`]: LongRoPE2's needle perplexity (answer tokens only, real-text filler);
//!
//! Corpora, token stores and document selection live in `longrope-data` (shared with training).
//!
//! Every evaluator is a plugin (`register_plugin!` + a `typetag` config named after it).

pub mod needle;
pub mod passkey;
pub mod ppl;
mod progress;
#[cfg(test)]
mod testing;

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
