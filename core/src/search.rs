//! Search strategies: propose candidate scaling configurations, observe their fitness, never evaluate.
//!
//! LongRoPE (arXiv 2402.13753, Sec. 3.2, Alg. 1) searches per-dimension rescale factors with an evolutionary
//! algorithm; baselines (random, grid) must spend the same evaluation budget. Every strategy talks to the
//! search driver through this one interface: the driver evaluates, deduplicates and checkpoints.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One point of a search space: per-dimension factors plus optional retained start tokens and attention factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Rescale factors `lambda_i` (`d/2` values, or `layers x d/2` flattened row-major).
    pub factors: Vec<f64>,
    /// Retained start tokens `n_hat` (0 = none).
    #[serde(default)]
    pub n_hat: usize,
    /// Attention factor override (`None` = the method's policy).
    #[serde(default)]
    pub attn_factor: Option<f64>,
}

/// A candidate with its measured fitness (lower is better, e.g. perplexity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// The candidate.
    pub candidate: Candidate,
    /// Its fitness; lower is better.
    pub fitness: f64,
}

/// A search strategy: asks the driver to evaluate batches of candidates and learns from the results.
pub trait SearchStrategy: Send {
    /// The plugin name.
    fn name(&self) -> &str;
    /// The next batch of candidates to evaluate; an empty batch means the strategy is done.
    fn propose(&mut self) -> Result<Vec<Candidate>>;
    /// The fitness of the last proposed batch, in order.
    fn observe(&mut self, scored: &[Scored]) -> Result<()>;
    /// The total number of evaluations this strategy will ask for (its budget).
    fn budget(&self) -> usize;

    /// For racing: a candidate can change what this strategy does only if its fitness ranks among the `k` best
    /// of every candidate evaluated so far (evolution: its parents; random and grid: `1`, the best), so the driver
    /// may stop evaluating one that provably ranks below. `None` (the default): every fitness matters, no racing.
    fn selection_size(&self) -> Option<usize> {
        None
    }

    /// The strategy's whole state (population, counters, RNG state) as JSON, for checkpoints.
    /// Called between an [`observe`](Self::observe) and the next [`propose`](Self::propose). The default
    /// refuses: a strategy that returns `Err` here cannot be checkpointed or resumed.
    fn save_state(&self) -> Result<serde_json::Value> {
        Err(Error::invalid(format!("search strategy `{}`", self.name()), "does not support checkpoints"))
    }

    /// Restore a state written by [`save_state`](Self::save_state) on a strategy built from the same config;
    /// the strategy then proposes exactly what the saved one would have proposed next.
    fn load_state(&mut self, state: serde_json::Value) -> Result<()> {
        let _ = state;
        Err(Error::invalid(format!("search strategy `{}`", self.name()), "does not support checkpoints"))
    }
}
