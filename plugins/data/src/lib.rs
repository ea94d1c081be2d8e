//! `longrope-data`: the text a model reads, shared by evaluation and training.
//!
//! - [`corpus`]: text files, directories, JSONL (`text` field) or token stores, tokenized with the model's
//!   tokenizer ([`corpus::Corpus`], [`corpus::CorpusSet`]), and the deterministic selection of evaluation
//!   documents ([`corpus::select_docs`], LongRoPE's `evaluation/perplexity.py` rule);
//! - [`store`]: memory-mapped token stores tied to the tokenizer that made them;
//! - [`windows`]: training windows: documents packed with BOS/EOS, a held-out split, a seeded order that is a
//!   function of the window index (exact resume), PoSE positions, LongRoPE2 mixed context windows;
//! - [`error`]: [`DataError`], every variant naming its file.
//!
//! See `docs/evaluation.md` (corpora, stores) and `docs/training.md` (windows).

pub mod corpus;
pub mod error;
pub mod store;
pub mod windows;

pub use error::{DataError, Result};
