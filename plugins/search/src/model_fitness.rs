//! Model-backed fitness: a [`Fitness`] that measures each candidate with an evaluator (perplexity by default)
//! on a loaded model at the search's target length, as LongRoPE's search does (arXiv 2402.13753, Sec. 3.2:
//! the fitness of a set of rescale factors is the perplexity of the first `L'` tokens of a few long documents).
//!
//! Each candidate becomes its `longrope` scaling config directly ([`candidate_config`], the config the search
//! writes as `best_scaling.toml`), bound to the model's [`RopeShape`] at the target in a [`RopeSchedule`], and
//! scored by the evaluator. Only `longrope-core`
//! traits are used: the caller loads the model (any [`LanguageModel`]) and the documents (any
//! [`TokenSource`]), so `longrope search` and the experiment runner share this code.
//!
//! ```ignore
//! let evaluator = fitness_evaluator_config(&file.fitness, file.target_length)?.build()?;
//! let shape = model.summary().rope_shape(file.target_length);
//! let mut fitness = EvaluatorFitness::new(model.as_ref(), evaluator, &docs, shape);
//! let outcome = Driver::new(strategy, &mut fitness, shape, file.meta(&shape), opts).run()?;
//! ```

use std::time::Instant;

use longrope_core::eval::{parse_evaluator_toml, Evaluator, EvaluatorConfig, ItemLosses, TokenSource};
use longrope_core::model::LanguageModel;
use longrope_core::scaling::{RopeSchedule, ScalingConfig};
use longrope_core::search::Candidate;
use longrope_core::RopeShape;

use crate::config::FitnessSection;
use crate::error::{Result, SearchError};
use crate::fitness::{race_items, Evaluation, Fitness, Race, RaceOutcome, Raced, Racing};
use crate::outputs::candidate_config;

/// The evaluator config a `[fitness]` table at target length `target` means: `ppl` = one truncated window of the
/// first `L'` tokens of each of the first `documents` documents with at least `dataset_min_tokens` tokens (default
/// `target`), LongRoPE's search fitness (`examples/*/search.sh`: `--truncate --samples 5 --dataset-min-tokens`);
/// `needle-ppl` = `documents` samples; any other evaluator with its defaults. Unknown evaluators are an error
/// listing the known ones.
pub fn fitness_evaluator_config(section: &FitnessSection, target: usize) -> Result<Box<dyn EvaluatorConfig>> {
    let name = section.evaluator.as_str();
    let text = match name {
        "ppl" => format!(
            "evaluator = \"ppl\"\ntruncate = true\nsamples = {}\ndataset_min_tokens = {}\n",
            section.documents,
            section.dataset_min_tokens.unwrap_or(target)
        ),
        "needle-ppl" => format!("evaluator = \"needle-ppl\"\nsamples = {}\n", section.documents),
        other => format!("evaluator = {other:?}\n"),
    };
    Ok(parse_evaluator_toml(&text, "[fitness]")?)
}

/// A fitness that scores candidates with an [`Evaluator`] on a model at `shape.max_position_embeddings` tokens.
///
/// The fitness is the evaluator's value when lower is better (perplexity), and its negation otherwise
/// (accuracy), so the driver always minimises. Deterministic as long as the model and evaluator are.
pub struct EvaluatorFitness<'a> {
    model: &'a dyn LanguageModel,
    evaluator: Box<dyn Evaluator>,
    data: &'a dyn TokenSource,
    shape: RopeShape,
    length: usize,
    racing: Racing,
}

impl<'a> EvaluatorFitness<'a> {
    /// Score on `model` with `evaluator` over `data`, at the target of `shape` (the model's shape with
    /// `max_position_embeddings` = the search's `target_length`, e.g. `summary.rope_shape(target)`).
    pub fn new(
        model: &'a dyn LanguageModel,
        evaluator: Box<dyn Evaluator>,
        data: &'a dyn TokenSource,
        shape: RopeShape,
    ) -> Self {
        let length = shape.max_position_embeddings;
        EvaluatorFitness { model, evaluator, data, shape, length, racing: Racing::Off }
    }

    /// Race candidates over the evaluator's documents (`[fitness] racing`); an error when `racing` is on and the
    /// evaluator does not score document by document.
    pub fn with_racing(mut self, racing: Racing) -> Result<Self> {
        if !racing.is_off() && self.evaluator.staged().is_none() {
            return Err(SearchError::invalid(
                "fitness.racing",
                format!("the `{}` evaluator does not score document by document; racing needs `ppl`", self.evaluator.name()),
            ));
        }
        self.racing = racing;
        Ok(self)
    }

    /// The fitness a `[fitness]` table describes at the target of `shape`: its evaluator
    /// ([`fitness_evaluator_config`]) and its racing.
    pub fn from_section(
        model: &'a dyn LanguageModel,
        data: &'a dyn TokenSource,
        section: &FitnessSection,
        shape: RopeShape,
    ) -> Result<Self> {
        let evaluator = fitness_evaluator_config(section, shape.max_position_embeddings)?.build()?;
        EvaluatorFitness::new(model, evaluator, data, shape).with_racing(section.racing)
    }

    /// Evaluate at `length` tokens instead of the target (e.g. a shorter proxy length).
    pub fn with_length(mut self, length: usize) -> Self {
        self.length = length;
        self
    }

    /// The schedule a candidate stands for: its `longrope` config bound to the shape.
    pub fn schedule(&self, candidate: &Candidate) -> Result<RopeSchedule> {
        let config = candidate_config(candidate, &self.shape);
        config.validate()?;
        Ok(RopeSchedule::new(&config, self.shape.clone())?)
    }

    /// Measure one candidate.
    pub fn evaluate_one(&self, candidate: &Candidate) -> Result<Evaluation> {
        let start = Instant::now();
        let schedule = self.schedule(candidate)?;
        let score = self
            .evaluator
            .evaluate(self.model, &schedule, self.length, self.data)
            .map_err(|e| SearchError::Fitness(format!("{} at {} tokens: {e}", self.evaluator.name(), self.length)))?;
        let fitness = if score.lower_is_better { score.value } else { -score.value };
        Ok(Evaluation::new(fitness, score.tokens as u64, start.elapsed().as_secs_f64()))
    }

    /// Measure one candidate document by document, stopping once its fitness provably (given `race.floors`)
    /// exceeds `race.threshold`. A candidate that finishes gets exactly [`evaluate_one`](Self::evaluate_one)'s
    /// fitness (the evaluator's [`Staged`] contract), plus each document's loss sum.
    pub fn evaluate_raced_one(&self, candidate: &Candidate, race: &Race) -> Result<Evaluation> {
        let Some(staged) = self.evaluator.staged() else {
            return self.evaluate_one(candidate);
        };
        let start = Instant::now();
        let context = |e: longrope_core::Error| {
            SearchError::Fitness(format!("{} at {} tokens: {e}", self.evaluator.name(), self.length))
        };
        let schedule = self.schedule(candidate)?;
        let items = staged.items(self.model, self.length, self.data).map_err(context)?;
        let outcome = race_items(
            items.len(),
            race,
            |scored, floors| staged.bound(&items, scored, floors),
            |j| staged.score_item(self.model, &schedule, self.length, self.data, j).map_err(context),
        )?;
        let scored = match outcome {
            RaceOutcome::Finished(scored) => scored,
            RaceOutcome::Stopped { scored, bound } => {
                return Ok(Evaluation {
                    fitness: bound,
                    tokens: scored.iter().map(|s| s.tokens as u64).sum(),
                    seconds: start.elapsed().as_secs_f64(),
                    items: scored.iter().map(ItemLosses::sum).collect(),
                    raced: Some(Raced { scored: scored.len(), of: items.len(), threshold: race.threshold }),
                })
            }
        };
        let sums = scored.iter().map(ItemLosses::sum).collect();
        let score = staged.combine(self.model, self.length, self.data, scored).map_err(context)?;
        Ok(Evaluation {
            fitness: score.value,
            tokens: score.tokens as u64,
            seconds: start.elapsed().as_secs_f64(),
            items: sums,
            raced: None,
        })
    }
}

impl Fitness for EvaluatorFitness<'_> {
    fn evaluate(&mut self, batch: &[Candidate]) -> Result<Vec<Evaluation>> {
        batch.iter().map(|c| self.evaluate_one(c)).collect()
    }

    fn racing(&self) -> Racing {
        self.racing
    }

    fn evaluate_raced(&mut self, batch: &[Candidate], race: &Race) -> Result<Vec<Evaluation>> {
        if self.racing.is_off() {
            return self.evaluate(batch);
        }
        batch.iter().map(|c| self.evaluate_raced_one(c, race)).collect()
    }
}
