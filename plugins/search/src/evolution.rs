//! LongRoPE's evolutionary search of per-dimension rescale factors (arXiv 2402.13753, Sec. 3.2, Alg. 1;
//! reference `microsoft/LongRoPE@c9e56aa` `evolution/algorithms/genetic_base.py`).
//!
//! Generation 0 is the initial population of `population_size` candidates: the seeds (in `reference` mode the
//! reference's one YaRN seed, in `paper` mode PI, NTK and YaRN, as the paper says) and mutations around them,
//! taken from the seeds in turn (with one seed: all of it, as `genetic_base.py:235-242` does). Each following
//! generation (`iterations` of them) keeps the `parents_size` fittest of the population as parents and adds
//! `mutation_numbers` mutations of uniformly drawn parents and `crossover_size` crossovers of two distinct
//! parents (a crossover that finds no new child falls back to mutating its first parent, as the reference
//! does). No candidate is proposed twice. Every hyperparameter is multiplied by `evo_scale` and truncated, as
//! in the reference. The budget is `population_size + iterations * (mutation_numbers + crossover_size)`:
//! 64 + 40 * 32 = 1344 evaluations with the reference defaults.

use longrope_core::search::{Candidate, Scored};
use longrope_core::{SearchStrategy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{SearchConfig, SearchContext};
use crate::error::{Result, SearchError};
use crate::space::{Genome, SearchSpace, Seen};


/// How many mutation passes (or random draws) to try before declaring the space exhausted.
const MAX_TRIES: usize = 10_000;

fn d_evo_scale() -> f64 {
    1.0
}
fn d_population() -> usize {
    64
}
fn d_iterations() -> usize {
    40
}
fn d_mutations() -> usize {
    16
}
fn d_crossovers() -> usize {
    16
}
fn d_parents() -> usize {
    32
}
fn d_max_crossover_try() -> usize {
    20
}
fn d_mutation_probability() -> f64 {
    0.3
}

/// `[strategy] strategy = "evolution"`: the reference hyperparameters are the defaults
/// (`evolution/default_hyper_params/dim_mono.json` and `dim_piece_mono.json` at microsoft/LongRoPE@c9e56aa, the
/// same numbers; the grid step is `space.step`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvolutionConfig {
    /// Multiplier of every count below (reference `evo_scale`, default 1.0).
    #[serde(default = "d_evo_scale")]
    pub evo_scale: f64,
    /// Size of the initial population (default 64).
    #[serde(default = "d_population")]
    pub population_size: usize,
    /// Number of generations after the initial one (reference `max_time_budget`, default 40).
    #[serde(default = "d_iterations", alias = "max_time_budget")]
    pub iterations: usize,
    /// Mutations per generation (default 16).
    #[serde(default = "d_mutations")]
    pub mutation_numbers: usize,
    /// Crossovers per generation (default 16).
    #[serde(default = "d_crossovers")]
    pub crossover_size: usize,
    /// Parents kept per generation (default 32).
    #[serde(default = "d_parents")]
    pub parents_size: usize,
    /// Passes over the genes a crossover tries before giving up (default 20).
    #[serde(default = "d_max_crossover_try")]
    pub max_crossover_try: usize,
    /// Probability that a gene mutates, or takes part in a crossover (default 0.3).
    #[serde(default = "d_mutation_probability")]
    pub mutation_probability: f64,
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        EvolutionConfig {
            evo_scale: d_evo_scale(),
            population_size: d_population(),
            iterations: d_iterations(),
            mutation_numbers: d_mutations(),
            crossover_size: d_crossovers(),
            parents_size: d_parents(),
            max_crossover_try: d_max_crossover_try(),
            mutation_probability: d_mutation_probability(),
        }
    }
}

/// The counts after `evo_scale` (truncated like the reference's `int(evo_scale * x)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvolutionSizes {
    /// Initial population.
    pub population: usize,
    /// Generations after the initial one.
    pub iterations: usize,
    /// Mutations per generation.
    pub mutations: usize,
    /// Crossovers per generation.
    pub crossovers: usize,
    /// Parents per generation.
    pub parents: usize,
    /// Crossover passes.
    pub max_crossover_try: usize,
}

impl EvolutionConfig {
    /// The scaled counts.
    pub fn sizes(&self) -> EvolutionSizes {
        let s = |x: usize| (self.evo_scale * x as f64) as usize;
        EvolutionSizes {
            population: s(self.population_size),
            iterations: s(self.iterations),
            mutations: s(self.mutation_numbers),
            crossovers: s(self.crossover_size),
            parents: s(self.parents_size),
            max_crossover_try: s(self.max_crossover_try),
        }
    }

    fn validate(&self) -> Result<EvolutionSizes> {
        let z = self.sizes();
        if !(self.evo_scale.is_finite() && self.evo_scale > 0.0) {
            return Err(SearchError::invalid("evolution.evo_scale", format!("must be positive, got {}", self.evo_scale)));
        }
        if z.population == 0 {
            return Err(SearchError::invalid("evolution.population_size", "is 0 after evo_scale"));
        }
        if z.parents == 0 || z.parents > z.population {
            return Err(SearchError::invalid(
                "evolution.parents_size",
                format!("must be in 1..=population_size ({}), got {}", z.population, z.parents),
            ));
        }
        if !(0.0..=1.0).contains(&self.mutation_probability) || self.mutation_probability == 0.0 {
            return Err(SearchError::invalid(
                "evolution.mutation_probability",
                format!("must be in (0, 1], got {}", self.mutation_probability),
            ));
        }
        Ok(z)
    }
}

longrope_core::plugin! {
    kind: Search,
    name: "evolution",
    summary: "LongRoPE evolution search of per-dimension factors (dim_mono, dim_piece_mono)",
    impl SearchConfig for EvolutionConfig {
        fn budget(&self) -> usize {
            let z = self.sizes();
            z.population + z.iterations * (z.mutations + z.crossovers)
        }

        fn build(&self, ctx: &SearchContext) -> Result<Box<dyn SearchStrategy>> {
            let sizes = self.validate()?;
            let mut seeds = Vec::new();
            for s in &ctx.seeds {
                seeds.push(ctx.space.genome_from_factors(&s.factors, Some(s.attn_factor)).map_err(|e| {
                    SearchError::invalid(format!("seed `{}`", s.name), e.to_string())
                })?);
            }
            Ok(Box::new(Evolution {
                space: ctx.space.clone(),
                sizes,
                p: self.mutation_probability,
                seeds,
                budget: self.budget(),
                st: EvolutionState {
                    rng: ChaCha8Rng::seed_from_u64(ctx.seed),
                    generation: 0,
                    population: Vec::new(),
                    pending: Vec::new(),
                    seen: Seen::new(),
                },
            }))
        }
    }
}

/// A genome with its fitness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Individual {
    /// The point.
    pub genome: Genome,
    /// Its fitness (lower is better; a failed evaluation is +inf, written `null`).
    #[serde(with = "crate::fitness::serde_fitness")]
    pub fitness: f64,
}

/// Everything that changes during a run: what a checkpoint saves.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EvolutionState {
    rng: ChaCha8Rng,
    /// The next generation to propose (0 = the initial population).
    generation: usize,
    /// The current population (after `propose` of generation >= 1: the parents, then the children).
    population: Vec<Individual>,
    /// Proposed and not yet observed.
    pending: Vec<Genome>,
    /// Every genome proposed so far.
    seen: Seen,
}

/// The runtime evolution strategy.
#[derive(Debug)]
pub struct Evolution {
    space: SearchSpace,
    sizes: EvolutionSizes,
    p: f64,
    seeds: Vec<Genome>,
    budget: usize,
    st: EvolutionState,
}

impl Evolution {
    /// A new genome: a mutation of `parent`, else (space nearly exhausted around it) a random draw.
    fn mutate_new(&mut self, parent: &Genome) -> Result<Genome> {
        let st = &mut self.st;
        let seen = &st.seen;
        let space = &self.space;
        if let Some(g) = space.mutate(parent, self.p, MAX_TRIES, &mut st.rng, |g| !seen.contains(&space.key(g))) {
            st.seen.insert(space.key(&g));
            return Ok(g);
        }
        self.random_new()
    }

    fn random_new(&mut self) -> Result<Genome> {
        for _ in 0..MAX_TRIES {
            let g = self.space.random(&mut self.st.rng);
            if self.st.seen.insert(self.space.key(&g)) {
                return Ok(g);
            }
        }
        Err(SearchError::SpaceExhausted(format!("no new candidate in {MAX_TRIES} random draws")))
    }

    fn initial(&mut self) -> Result<Vec<Genome>> {
        let mut out = Vec::new();
        for g in self.seeds.clone() {
            if out.len() < self.sizes.population && self.st.seen.insert(self.space.key(&g)) {
                out.push(g);
            }
        }
        let base = out.clone();
        let mut j = 0;
        while out.len() < self.sizes.population {
            let g = if base.is_empty() {
                self.random_new()?
            } else {
                let parent = &base[j % base.len()];
                j += 1;
                self.mutate_new(parent)?
            };
            out.push(g);
        }
        Ok(out)
    }

    fn next_generation(&mut self) -> Result<Vec<Genome>> {
        // Stable sort: ties keep their order, so runs are reproducible.
        self.st.population.sort_by(|a, b| a.fitness.total_cmp(&b.fitness));
        self.st.population.truncate(self.sizes.parents);
        let parents: Vec<Genome> = self.st.population.iter().map(|i| i.genome.clone()).collect();
        let n = parents.len();
        let mut out = Vec::new();
        for _ in 0..self.sizes.mutations {
            let idx = self.st.rng.random_range(0..n);
            out.push(self.mutate_new(&parents[idx])?);
        }
        for _ in 0..self.sizes.crossovers {
            if n < 2 {
                out.push(self.mutate_new(&parents[0])?);
                continue;
            }
            let i1 = self.st.rng.random_range(0..n);
            let mut i2 = self.st.rng.random_range(0..n - 1);
            if i2 >= i1 {
                i2 += 1;
            }
            let (i1, i2) = (i1.min(i2), i1.max(i2));
            let st = &mut self.st;
            let seen = &st.seen;
            let space = &self.space;
            let child = space.crossover(
                &parents[i1],
                &parents[i2],
                self.p,
                self.sizes.max_crossover_try,
                &mut st.rng,
                |g| !seen.contains(&space.key(g)),
            );
            match child {
                Some(g) => {
                    st.seen.insert(space.key(&g));
                    out.push(g);
                }
                None => out.push(self.mutate_new(&parents[i1])?),
            }
        }
        Ok(out)
    }
}

impl SearchStrategy for Evolution {
    fn name(&self) -> &str {
        EvolutionConfig::NAME
    }

    fn propose(&mut self) -> longrope_core::Result<Vec<Candidate>> {
        if self.st.pending.is_empty() {
            self.st.pending = if self.st.generation == 0 {
                self.initial()?
            } else if self.st.generation <= self.sizes.iterations {
                self.next_generation()?
            } else {
                Vec::new()
            };
        }
        Ok(self.st.pending.iter().map(|g| self.space.candidate(g)).collect())
    }

    fn observe(&mut self, scored: &[Scored]) -> longrope_core::Result<()> {
        if scored.len() != self.st.pending.len() {
            return Err(SearchError::invalid(
                "evolution.observe",
                format!("{} results for {} proposed candidates", scored.len(), self.st.pending.len()),
            )
            .into());
        }
        for (g, s) in std::mem::take(&mut self.st.pending).into_iter().zip(scored) {
            let fitness = if s.fitness.is_nan() { f64::INFINITY } else { s.fitness };
            self.st.population.push(Individual { genome: g, fitness });
        }
        self.st.generation += 1;
        Ok(())
    }

    fn budget(&self) -> usize {
        self.budget
    }

    /// The next population keeps the `parents` fittest of the parents and children, i.e. of every candidate so
    /// far: one outside them changes nothing.
    fn selection_size(&self) -> Option<usize> {
        Some(self.sizes.parents)
    }

    fn save_state(&self) -> longrope_core::Result<serde_json::Value> {
        serde_json::to_value(&self.st).map_err(|e| SearchError::invalid("evolution state", e.to_string()).into())
    }

    fn load_state(&mut self, state: serde_json::Value) -> longrope_core::Result<()> {
        self.st = serde_json::from_value(state).map_err(|e| SearchError::invalid("evolution state", e.to_string()))?;
        Ok(())
    }
}
