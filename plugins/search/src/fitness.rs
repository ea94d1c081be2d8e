//! Fitness: how the driver measures a batch of candidates (lower is better, e.g. perplexity at the target
//! length), a parallel fan-out over workers that each own a model, and a synthetic fitness for tests.
//!
//! The model-backed fitness (any evaluator on the configured documents, the model loaded once per worker) is
//! [`crate::model_fitness::EvaluatorFitness`]; it needs only the core's traits.
//!
//! **Racing** (Maron & Moore, "Hoeffding races", NIPS 1993, applied to the documents of one candidate's
//! fitness): a fitness scored document by document ([`longrope_core::eval::Staged`]) stops a candidate as soon
//! as a lower bound of its fitness exceeds [`Race::threshold`], the fitness it would need to matter to the
//! strategy (evolution: to enter the parents; [`longrope_core::SearchStrategy::selection_size`]). The bound
//! takes the documents scored so far and, for each other document, a floor: 0 in [`Racing::Exact`] (a window
//! NLL is never negative, so the bound is a proof and the run selects exactly what the unraced run selects), the
//! lowest loss any finished candidate had on it in [`Racing::Observed`] (a strong heuristic, no proof), the loss
//! of the candidate at the threshold in [`Racing::Paired`] (a prediction: stop once behind that candidate).

use std::time::Instant;

use longrope_core::eval::exp_mean_bound;
use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};

/// The measurement of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Fitness; lower is better. Non-finite values (a diverged perplexity) rank last.
    #[serde(with = "serde_fitness")]
    pub fitness: f64,
    /// Tokens processed (forward positions), for the cost account.
    pub tokens: u64,
    /// Wall time of this evaluation in seconds.
    pub seconds: f64,
    /// With racing: the loss sum of each item (document) scored, in order (the floors of later races).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<f64>,
    /// Set when the race stopped this candidate early; `fitness` is then a lower bound of its fitness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raced: Option<Raced>,
}

impl Evaluation {
    /// An evaluation that was not raced.
    pub fn new(fitness: f64, tokens: u64, seconds: f64) -> Self {
        Evaluation { fitness, tokens, seconds, items: Vec::new(), raced: None }
    }
}

/// How a fitness races candidates over its documents (the `[fitness] racing` key; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Racing {
    /// Every candidate is scored on every document (default).
    #[default]
    Off,
    /// Stop a candidate once its fitness provably (every unscored document's loss >= 0) exceeds the threshold:
    /// the candidates that finish have the unraced fitness, and the strategy selects the same ones.
    Exact,
    /// Stop it once it cannot enter even if every unscored document scored as well as the best finished
    /// candidate did on it: stops earlier, without the proof.
    Observed,
    /// Stop it as soon as it is behind the candidate at the threshold on the documents scored so far (the
    /// unscored ones floored at that candidate's losses: a prediction, not a bound). Stops the most.
    Paired,
}

impl Racing {
    /// Whether candidates are raced at all.
    pub fn is_off(&self) -> bool {
        *self == Racing::Off
    }
}

/// The state of the race a batch is evaluated under.
#[derive(Debug, Clone, PartialEq)]
pub struct Race {
    /// A candidate whose fitness is known to be above this (strictly) cannot matter: the
    /// [`selection_size`](longrope_core::SearchStrategy::selection_size)-th best fitness of the finished candidates.
    pub threshold: f64,
    /// A lower bound of each document's loss sum, in order (empty, or shorter: 0).
    pub floors: Vec<f64>,
}

/// How racing one candidate over its items ended ([`race_items`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RaceOutcome<T> {
    /// Every item was scored.
    Finished(Vec<T>),
    /// Stopped before item `scored.len()`: the bound exceeded the threshold.
    Stopped {
        /// The items scored.
        scored: Vec<T>,
        /// The lower bound of the fitness that exceeded [`Race::threshold`].
        bound: f64,
    },
}

/// Race one candidate over `n` items: before scoring item `j` (with `score(j)`), stop when
/// `bound(items scored so far, floors of items j..)` exceeds the race's threshold (strictly).
pub fn race_items<T>(
    n: usize,
    race: &Race,
    mut bound: impl FnMut(&[T], &[f64]) -> f64,
    mut score: impl FnMut(usize) -> Result<T>,
) -> Result<RaceOutcome<T>> {
    let mut scored = Vec::with_capacity(n);
    for j in 0..n {
        let b = bound(&scored, race.floors.get(j..).unwrap_or(&[]));
        if b > race.threshold {
            return Ok(RaceOutcome::Stopped { scored, bound: b });
        }
        scored.push(score(j)?);
    }
    Ok(RaceOutcome::Finished(scored))
}

/// How far a stopped candidate got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Raced {
    /// Documents scored before it was stopped.
    pub scored: usize,
    /// Documents of the full fitness.
    pub of: usize,
    /// The threshold its bound exceeded.
    pub threshold: f64,
}

/// Measures candidates. Implementations must be deterministic: the same candidate always gets the same
/// fitness (resume and deduplication rely on it).
pub trait Fitness {
    /// Evaluate a batch; one [`Evaluation`] per candidate, in order.
    fn evaluate(&mut self, batch: &[Candidate]) -> Result<Vec<Evaluation>>;

    /// How many candidates it evaluates at once (its workers); the driver sends batches of this size and
    /// records each before sending the next, so a kill loses at most one such batch.
    fn parallelism(&self) -> usize {
        1
    }

    /// How this fitness races candidates ([`Racing::Off`], the default: it does not).
    fn racing(&self) -> Racing {
        Racing::Off
    }

    /// Evaluate a batch under `race` (see the module doc); the default ignores the race.
    fn evaluate_raced(&mut self, batch: &[Candidate], race: &Race) -> Result<Vec<Evaluation>> {
        let _ = race;
        self.evaluate(batch)
    }
}

/// A fitness that fans a batch out over workers, one thread each (each worker owns its model/device).
/// Worker `w` evaluates the candidates `w, w + n, w + 2n, ...`; results come back in batch order, so the
/// outcome does not depend on the number of workers.
#[derive(Debug)]
pub struct ParallelFitness<F> {
    workers: Vec<F>,
}

impl<F: Fitness + Send> ParallelFitness<F> {
    /// `n` workers made by `factory(worker_index)` (e.g. a model on `cuda:worker_index`).
    pub fn new(n: usize, mut factory: impl FnMut(usize) -> Result<F>) -> Result<Self> {
        if n == 0 {
            return Err(SearchError::invalid("workers", "must be at least 1"));
        }
        Ok(ParallelFitness { workers: (0..n).map(&mut factory).collect::<Result<_>>()? })
    }
}

impl<F: Fitness + Send> ParallelFitness<F> {
    /// Fan `batch` out (worker `w` gets `w, w + n, ...`), each worker under `race` when there is one.
    fn fan_out(&mut self, batch: &[Candidate], race: Option<&Race>) -> Result<Vec<Evaluation>> {
        let n = self.workers.len();
        let results: Vec<Result<Vec<Evaluation>>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .workers
                .iter_mut()
                .enumerate()
                .map(|(w, f)| {
                    let items: Vec<Candidate> = batch.iter().skip(w).step_by(n).cloned().collect();
                    s.spawn(move || match (items.is_empty(), race) {
                        (true, _) => Ok(Vec::new()),
                        (false, Some(race)) => f.evaluate_raced(&items, race),
                        (false, None) => f.evaluate(&items),
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(w, h)| h.join().unwrap_or_else(|_| Err(SearchError::Fitness(format!("worker {w} panicked")))))
                .collect()
        });
        let mut per_worker = Vec::with_capacity(n);
        for (w, r) in results.into_iter().enumerate() {
            let evals = r?;
            let expected = batch.iter().skip(w).step_by(n).count();
            if evals.len() != expected {
                return Err(SearchError::Fitness(format!(
                    "worker {w} returned {} evaluations for {expected} candidates",
                    evals.len()
                )));
            }
            per_worker.push(evals.into_iter());
        }
        Ok((0..batch.len()).map(|i| per_worker[i % n].next().expect("counted above")).collect())
    }
}

impl<F: Fitness + Send> Fitness for ParallelFitness<F> {
    fn evaluate(&mut self, batch: &[Candidate]) -> Result<Vec<Evaluation>> {
        self.fan_out(batch, None)
    }

    fn parallelism(&self) -> usize {
        self.workers.len()
    }

    fn racing(&self) -> Racing {
        self.workers.first().map(|w| w.racing()).unwrap_or_default()
    }

    fn evaluate_raced(&mut self, batch: &[Candidate], race: &Race) -> Result<Vec<Evaluation>> {
        self.fan_out(batch, Some(race))
    }
}

/// A fitness with no workers: a process that only coordinates a study (`longrope search --workers 0`) while
/// `longrope worker` processes evaluate. The driver never sends it a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NoFitness;

impl Fitness for NoFitness {
    fn evaluate(&mut self, batch: &[Candidate]) -> Result<Vec<Evaluation>> {
        Err(SearchError::Fitness(format!("this process evaluates nothing (--workers 0), asked for {} candidates", batch.len())))
    }

    fn parallelism(&self) -> usize {
        0
    }
}

/// A noise-free synthetic fitness: a perplexity-like distance to a hidden monotone target.
///
/// `fitness = 10 * exp(8 * mean_i (ln lambda_i - ln lambda*_i)^2) + 0.01 * (log2(n_hat + 1) - 4)^2 +
/// (m - 1.1)^2` (the last term only when the attention factor `m` is set), with the target
/// `lambda*_i = 1 + (1.1 s - 1) (i / (d/2 - 1))^2`: not any seed's curve and not in the grid's family, so no
/// strategy starts on the optimum.
///
/// With `documents = n > 1` it stands for a multi-document fitness that can be raced: document `j` has the loss
/// `w_j ln(fitness)` with `w_j = 0.6 + 0.8 j / (n - 1)` (mean 1, so documents disagree on scale but agree on
/// order) and the value is `exp(mean_j loss_j)`, in the raced and unraced paths alike.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticFitness {
    /// The hidden target factors.
    pub target: Vec<f64>,
    /// Tokens charged per evaluation (as if one document of the target length was read).
    pub tokens_per_evaluation: u64,
    /// Documents it stands for (1: the plain formula).
    pub documents: usize,
    /// How it races over its documents.
    pub racing: Racing,
}

impl SyntheticFitness {
    /// The synthetic fitness for a shape (target length = `shape.max_position_embeddings`).
    pub fn new(shape: &RopeShape) -> Self {
        let h = shape.head_dim / 2;
        let top = 1.1 * shape.scale();
        let target = (0..h)
            .map(|i| {
                let t = if h > 1 { i as f64 / (h - 1) as f64 } else { 1.0 };
                1.0 + (top - 1.0) * t * t
            })
            .collect();
        SyntheticFitness { target, tokens_per_evaluation: shape.max_position_embeddings as u64, documents: 1, racing: Racing::Off }
    }

    /// The synthetic fitness standing for `documents` documents, raced as `racing` (a `[fitness]` table's
    /// `documents` and `racing`).
    pub fn with_documents(mut self, documents: usize, racing: Racing) -> Self {
        self.documents = documents.max(1);
        self.racing = racing;
        self
    }

    /// Document `j`'s loss for a candidate of plain fitness `value` (see the type's doc).
    fn document_loss(&self, value: f64, j: usize) -> f64 {
        let w = 0.6 + 0.8 * j as f64 / (self.documents - 1) as f64;
        w * value.ln()
    }

    /// One candidate, raced over the documents (or not, with `race` = `None`).
    fn evaluate_documents(&self, c: &Candidate, race: Option<&Race>) -> Result<Evaluation> {
        let start = Instant::now();
        let value = self.value(c)?;
        if self.documents == 1 {
            return Ok(Evaluation::new(value, self.tokens_per_evaluation, start.elapsed().as_secs_f64()));
        }
        let n = self.documents;
        let mean_exp = |losses: &[f64]| (losses.iter().sum::<f64>() / n as f64).exp();
        let unraced = Race { threshold: f64::INFINITY, floors: Vec::new() };
        let race = race.unwrap_or(&unraced);
        let outcome = race_items(
            n,
            race,
            |scored: &[f64], floors| exp_mean_bound(n, scored.iter().sum(), n - scored.len(), floors),
            |j| Ok(self.document_loss(value, j)),
        )?;
        let per_document = self.tokens_per_evaluation / n as u64;
        Ok(match outcome {
            RaceOutcome::Finished(losses) => Evaluation {
                fitness: mean_exp(&losses),
                tokens: per_document * n as u64,
                seconds: start.elapsed().as_secs_f64(),
                items: if self.racing.is_off() { Vec::new() } else { losses },
                raced: None,
            },
            RaceOutcome::Stopped { scored, bound } => Evaluation {
                fitness: bound,
                tokens: per_document * scored.len() as u64,
                seconds: start.elapsed().as_secs_f64(),
                raced: Some(Raced { scored: scored.len(), of: n, threshold: race.threshold }),
                items: scored,
            },
        })
    }

    /// The fitness of one candidate.
    pub fn value(&self, c: &Candidate) -> Result<f64> {
        if c.factors.len() != self.target.len() {
            return Err(SearchError::Fitness(format!(
                "expected {} factors, got {}",
                self.target.len(),
                c.factors.len()
            )));
        }
        let mse = c.factors.iter().zip(&self.target).map(|(x, t)| (x.ln() - t.ln()).powi(2)).sum::<f64>()
            / self.target.len() as f64;
        let n_hat_term = 0.01 * (((c.n_hat + 1) as f64).log2() - 4.0).powi(2);
        let attn_term = c.attn_factor.map(|m| (m - 1.1).powi(2)).unwrap_or(0.0);
        Ok(10.0 * (8.0 * mse).exp() + n_hat_term + attn_term)
    }
}

impl Fitness for SyntheticFitness {
    fn evaluate(&mut self, batch: &[Candidate]) -> Result<Vec<Evaluation>> {
        batch.iter().map(|c| self.evaluate_documents(c, None)).collect()
    }

    fn racing(&self) -> Racing {
        if self.documents > 1 {
            self.racing
        } else {
            Racing::Off
        }
    }

    fn evaluate_raced(&mut self, batch: &[Candidate], race: &Race) -> Result<Vec<Evaluation>> {
        batch.iter().map(|c| self.evaluate_documents(c, Some(race))).collect()
    }
}

/// Serde for fitness values: JSON has no infinity or NaN, so non-finite values are written `null` and read
/// back as `+inf` (they rank last either way).
pub mod serde_fitness {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write a finite value as a number, anything else as `null`.
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    /// Read a number, or `null` as `+inf`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> RopeShape {
        RopeShape {
            head_dim: 8,
            rope_base: 10_000.0,
            original_max_position_embeddings: 1024,
            max_position_embeddings: 2048,
            num_layers: 2,
        }
    }

    fn cand(x: f64) -> Candidate {
        Candidate { factors: vec![x; 4], n_hat: 0, attn_factor: None }
    }

    #[test]
    fn synthetic_target_and_values_follow_the_formula() {
        let f = SyntheticFitness::new(&shape());
        // 1 + (2.2 - 1) * (i/3)^2
        let expected = [1.0, 1.0 + 1.2 / 9.0, 1.0 + 1.2 * 4.0 / 9.0, 2.2];
        for (a, b) in f.target.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12);
        }
        let at_target = Candidate { factors: f.target.clone(), n_hat: 15, attn_factor: Some(1.1) };
        assert!((f.value(&at_target).unwrap() - 10.0).abs() < 1e-12);
        let pi = cand(2.0);
        let mse = f.target.iter().map(|t| (2f64.ln() - t.ln()).powi(2)).sum::<f64>() / 4.0;
        assert!((f.value(&pi).unwrap() - (10.0 * (8.0 * mse).exp() + 0.16)).abs() < 1e-12);
        assert!(f.value(&Candidate { factors: vec![1.0; 3], n_hat: 0, attn_factor: None }).is_err());
    }

    #[test]
    fn parallel_results_do_not_depend_on_worker_count() {
        let batch: Vec<Candidate> = (0..11).map(|i| cand(1.0 + i as f64 * 0.1)).collect();
        let serial: Vec<f64> =
            SyntheticFitness::new(&shape()).evaluate(&batch).unwrap().into_iter().map(|e| e.fitness).collect();
        for n in [1, 2, 3, 4, 16] {
            let mut par = ParallelFitness::new(n, |_| Ok(SyntheticFitness::new(&shape()))).unwrap();
            assert_eq!(par.parallelism(), n);
            let got: Vec<f64> = par.evaluate(&batch).unwrap().into_iter().map(|e| e.fitness).collect();
            assert_eq!(got, serial, "{n} workers");
        }
    }

    struct Panicky;
    impl Fitness for Panicky {
        fn evaluate(&mut self, _batch: &[Candidate]) -> Result<Vec<Evaluation>> {
            panic!("worker failure")
        }
    }

    #[test]
    fn a_panicking_worker_is_an_error() {
        let mut par = ParallelFitness::new(2, |_| Ok(Panicky)).unwrap();
        let err = par.evaluate(&[cand(1.0), cand(2.0)]).unwrap_err().to_string();
        assert!(err.contains("panicked"), "{err}");
    }

    #[test]
    fn non_finite_fitness_round_trips_as_null() {
        let e = Evaluation::new(f64::INFINITY, 1, 0.0);
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"fitness\":null"), "{text}");
        assert_eq!(serde_json::from_str::<Evaluation>(&text).unwrap().fitness, f64::INFINITY);
    }
}
