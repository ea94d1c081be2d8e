//! `longrope-eval`: Evaluators (perplexity, passkey, needle perplexity) and corpus tokenization.

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
