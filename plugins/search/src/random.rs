//! Random-search baseline: `budget` distinct candidates drawn uniformly from the search space
//! (see [`SearchSpace::random`]: sorted uniform grid values, so every draw is monotone), proposed in batches of
//! `batch_size`. It spends exactly the evaluations it is given, which makes it comparable with the evolution
//! at the same budget. It does not use the seeds.

use longrope_core::search::{Candidate, Scored};
use longrope_core::{SearchStrategy};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{SearchConfig, SearchContext};
use crate::error::{Result, SearchError};
use crate::space::{Genome, SearchSpace, Seen};


const MAX_TRIES: usize = 10_000;

fn d_batch() -> usize {
    16
}

/// `[strategy] strategy = "random"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomConfig {
    /// Number of evaluations.
    pub budget: usize,
    /// Candidates per generation (checkpoint granularity; default 16).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
}

longrope_core::plugin! {
    kind: Search,
    name: "random",
    summary: "uniform random monotone factors, the same evaluation budget as the evolution",
    impl SearchConfig for RandomConfig {
        fn budget(&self) -> usize {
            self.budget
        }

        fn build(&self, ctx: &SearchContext) -> Result<Box<dyn SearchStrategy>> {
            if self.batch_size == 0 {
                return Err(SearchError::invalid("random.batch_size", "must be at least 1"));
            }
            Ok(Box::new(RandomSearch {
                space: ctx.space.clone(),
                budget: self.budget,
                batch_size: self.batch_size,
                st: RandomState { rng: ChaCha8Rng::seed_from_u64(ctx.seed), observed: 0, pending: Vec::new(), seen: Seen::new() },
            }))
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RandomState {
    rng: ChaCha8Rng,
    observed: usize,
    pending: Vec<Genome>,
    seen: Seen,
}

/// The runtime random search.
#[derive(Debug)]
pub struct RandomSearch {
    space: SearchSpace,
    budget: usize,
    batch_size: usize,
    st: RandomState,
}

impl SearchStrategy for RandomSearch {
    fn name(&self) -> &str {
        RandomConfig::NAME
    }

    fn propose(&mut self) -> longrope_core::Result<Vec<Candidate>> {
        if self.st.pending.is_empty() {
            let n = self.batch_size.min(self.budget - self.st.observed);
            while self.st.pending.len() < n {
                let mut found = false;
                for _ in 0..MAX_TRIES {
                    let g = self.space.random(&mut self.st.rng);
                    if self.st.seen.insert(g.key()) {
                        self.st.pending.push(g);
                        found = true;
                        break;
                    }
                }
                if !found {
                    return Err(SearchError::SpaceExhausted(format!("no new candidate in {MAX_TRIES} random draws")).into());
                }
            }
        }
        Ok(self.st.pending.iter().map(|g| self.space.candidate(g)).collect())
    }

    fn observe(&mut self, scored: &[Scored]) -> longrope_core::Result<()> {
        if scored.len() != self.st.pending.len() {
            return Err(SearchError::invalid(
                "random.observe",
                format!("{} results for {} proposed candidates", scored.len(), self.st.pending.len()),
            )
            .into());
        }
        self.st.observed += self.st.pending.len();
        self.st.pending.clear();
        Ok(())
    }

    fn budget(&self) -> usize {
        self.budget
    }

    /// Only the best candidate is the result; the draws do not depend on fitness.
    fn selection_size(&self) -> Option<usize> {
        Some(1)
    }

    fn save_state(&self) -> longrope_core::Result<serde_json::Value> {
        serde_json::to_value(&self.st).map_err(|e| SearchError::invalid("random state", e.to_string()).into())
    }

    fn load_state(&mut self, state: serde_json::Value) -> longrope_core::Result<()> {
        self.st = serde_json::from_value(state).map_err(|e| SearchError::invalid("random state", e.to_string()))?;
        Ok(())
    }
}
