//! Evaluators: measurements of a model under a scaling method at a context length (perplexity, passkey ...).
//!
//! They are the numbers the field reports (LongRoPE, arXiv 2402.13753, Tables 1-5) and the fitness a search
//! optimises. Config pattern as for scaling: an [`EvaluatorConfig`] mirrors the TOML (`evaluator = "ppl"`
//! selects the `typetag` variant) and builds the runtime [`Evaluator`].

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::model::LanguageModel;
use crate::registry::{self, PluginKind};
use crate::scaling::RopeSchedule;
use crate::{Error, Result};

/// The outcome of one evaluation at one length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Evaluator name (`ppl`, `passkey`, `needle-ppl`).
    pub evaluator: String,
    /// Metric name (`ppl`, `accuracy`, `needle_nll` ...).
    pub metric: String,
    /// Context length evaluated.
    pub length: usize,
    /// Aggregate value.
    pub value: f64,
    /// Whether lower values are better (true for perplexity).
    pub lower_is_better: bool,
    /// Per-item values (per document, per sample), labelled.
    pub per_item: Vec<ItemScore>,
    /// Evaluator-specific breakdown (e.g. passkey accuracy per depth).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// Tokens processed by forwards (prefill + decode), for the cost account.
    pub tokens: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// One item's value: a document's perplexity, a passkey sample's correctness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    /// Item label (document name, `sample-3` ...).
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// Token documents an evaluator reads (already tokenized with the model's tokenizer).
pub trait TokenSource: Sync {
    /// Number of documents.
    fn num_docs(&self) -> usize;
    /// Name of document `i` (file name, JSONL line ...).
    fn doc_name(&self, i: usize) -> String;
    /// Number of tokens in document `i`.
    fn doc_len(&self, i: usize) -> usize;
    /// Token ids of document `i`.
    fn doc(&self, i: usize) -> Result<Vec<u32>>;
}

/// An evaluator's configuration as written by a user; `typetag` selects the implementation by `evaluator`.
#[typetag::serde(tag = "evaluator")]
pub trait EvaluatorConfig: Debug + Send + Sync {
    /// Validate and return the runtime evaluator.
    fn build(&self) -> Result<Box<dyn Evaluator>>;
}

/// An evaluator: measures a model, with the tables of a schedule, at one context length.
pub trait Evaluator: Send + Sync {
    /// Plugin name.
    fn name(&self) -> &str;
    /// Evaluate at `length` tokens. `data` is the corpus (evaluators that synthesise prompts may ignore it).
    fn evaluate(
        &self,
        model: &dyn LanguageModel,
        schedule: &RopeSchedule,
        length: usize,
        data: &dyn TokenSource,
    ) -> Result<Score>;

    /// The same evaluation item by item ([`Staged`]), for a search that races candidates; `None` (the default)
    /// when the value does not split into independent items.
    fn staged(&self) -> Option<&dyn Staged> {
        None
    }
}

/// One item of an evaluation (a document) as [`Staged::items`] plans it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageItem {
    /// Its label (the document's name), as in [`Score::per_item`].
    pub name: String,
    /// How many losses scoring it yields (the ppl evaluator: its windows).
    pub losses: usize,
}

/// What scoring one item gave: its losses, in order, each `>= 0` (a window's mean NLL).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemLosses {
    /// The losses.
    pub losses: Vec<f64>,
    /// Tokens processed by its forwards.
    pub tokens: usize,
}

impl ItemLosses {
    /// The sum of the losses: what a floor of [`Staged::bound`] bounds.
    pub fn sum(&self) -> f64 {
        self.losses.iter().sum()
    }
}

/// The lower bound of `exp(mean of n losses)` when the scored losses sum to `scored_sum` and each of `unscored`
/// further items' loss sums is at least its floor (`floors[j]`, 0 when missing or negative: losses are `>= 0`).
/// The [`Staged::bound`] of a perplexity-like value.
pub fn exp_mean_bound(n: usize, scored_sum: f64, unscored: usize, floors: &[f64]) -> f64 {
    let rest: f64 = (0..unscored).map(|j| floors.get(j).copied().unwrap_or(0.0).max(0.0)).sum();
    ((scored_sum + rest) / n as f64).exp()
}

/// An evaluation whose value is built from independent items (documents), scored one at a time so that a search
/// can stop a candidate as soon as it cannot matter (racing, Maron & Moore 1994, on the documents of a
/// multi-document fitness; `docs/search.md`).
///
/// The contract: [`Evaluator::evaluate`] equals [`combine`](Self::combine) of every item's
/// [`score_item`](Self::score_item) in order (bit for bit), the value is lower-is-better and does not decrease
/// when any loss increases, and [`bound`](Self::bound) is a lower bound of it given some items' losses and a
/// lower bound of each other item's loss sum.
pub trait Staged: Send + Sync {
    /// The items [`Evaluator::evaluate`] scores at `length`, in order.
    fn items(&self, model: &dyn LanguageModel, length: usize, data: &dyn TokenSource) -> Result<Vec<StageItem>>;
    /// Score item `item` (an index into [`items`](Self::items)).
    fn score_item(
        &self,
        model: &dyn LanguageModel,
        schedule: &RopeSchedule,
        length: usize,
        data: &dyn TokenSource,
        item: usize,
    ) -> Result<ItemLosses>;
    /// The [`Score`] of the whole evaluation from every item's losses, in order.
    fn combine(
        &self,
        model: &dyn LanguageModel,
        length: usize,
        data: &dyn TokenSource,
        scored: Vec<ItemLosses>,
    ) -> Result<Score>;
    /// A lower bound of the value when the first `scored.len()` items gave `scored` and each later item `j`'s
    /// loss sum is at least `floors[j - scored.len()]` (0 when `floors` is shorter: losses are `>= 0`).
    fn bound(&self, items: &[StageItem], scored: &[ItemLosses], floors: &[f64]) -> f64;
}

/// Parse an evaluator config from TOML text; `origin` names the source in errors.
pub fn parse_evaluator_toml(text: &str, origin: &str) -> Result<Box<dyn EvaluatorConfig>> {
    let value: toml::Value = toml::from_str(text).map_err(|e| Error::config(origin, e.to_string()))?;
    let name = value
        .get("evaluator")
        .and_then(|m| m.as_str())
        .ok_or_else(|| Error::config(origin, "missing string field `evaluator` (the evaluator plugin's name)"))?;
    registry::require(PluginKind::Evaluator, name)?;
    toml::from_str::<Box<dyn EvaluatorConfig>>(text).map_err(|e| Error::config(origin, e.to_string()))
}
