//! Evaluators: measurements of a model under a scaling method at a context length (perplexity, passkey ...).
//!
//! They are the numbers the field reports (LongRoPE, arXiv 2402.13753, Tables 1-5) and the fitness a search
//! optimises. First version of the trait; the evaluator crate defines the concrete plugins.

use serde::{Deserialize, Serialize};

use crate::model::LanguageModel;
use crate::scaling::RopeSchedule;
use crate::Result;

/// The outcome of one evaluation at one length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Metric name (`ppl`, `accuracy`, `needle_nll` ...).
    pub metric: String,
    /// Aggregate value.
    pub value: f64,
    /// Whether lower values are better (true for perplexity).
    pub lower_is_better: bool,
    /// Per-item values (per document, per sample).
    pub per_item: Vec<f64>,
    /// Tokens processed (forward positions), for the cost account.
    pub tokens: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Token documents an evaluator reads (already tokenized with the model's tokenizer).
pub trait TokenSource: Sync {
    /// Number of documents.
    fn num_docs(&self) -> usize;
    /// Token ids of document `i`.
    fn doc(&self, i: usize) -> Result<Vec<u32>>;
}

/// An evaluator: measures a model, with the tables of a schedule, at one context length.
pub trait Evaluator: Send + Sync {
    /// Plugin name.
    fn name(&self) -> &str;
    /// Evaluate at `length` tokens.
    fn evaluate(
        &self,
        model: &dyn LanguageModel,
        schedule: &RopeSchedule,
        length: usize,
        data: &dyn TokenSource,
    ) -> Result<Score>;
}
