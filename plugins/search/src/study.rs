//! A search as a study in a [`Storage`]: the deterministic protocol that lets any number of processes run one
//! search, and gives the same history as one process alone.
//!
//! - **Checkpoint `g`** is the strategy's state after observing generations `< g` (checkpoint 0: the fresh
//!   strategy), stored once per generation with the curve and the cost so far.
//! - **Generation `g`** is proposed from checkpoint `g` (the strategy's RNG state there is a function of the
//!   seed and of the results of generations `< g` only) and stored once ([`Storage::insert_generation`]); a
//!   process that loses the race compares its proposal with the stored one and stops on a difference (a
//!   non-deterministic strategy, or another build).
//! - Its candidates are deduplicated against every earlier trial and against each other; each new one becomes
//!   a trial numbered in proposal order (`number` = the evaluation's `index` in the history), so the numbering
//!   does not depend on who evaluates what or when.
//! - When every trial of `g` is complete, checkpoint `g + 1` = the strategy of checkpoint `g` after
//!   `observe(fitness of the whole batch, in proposal order)`. Any process may do this step; all compute the
//!   same state and the first one stores it.
//! - A trial that failed for good fails the study with its error; a strategy that proposes nothing finishes it.
//!
//! [`SearchStudy::advance`] performs whichever of these steps is due; workers evaluate trials with
//! [`evaluate_trials`]. The single-process [`crate::Driver`] is this loop with one worker.

use std::collections::{HashMap, HashSet};

use longrope_core::search::{Candidate, Scored};
use longrope_core::SearchStrategy;
use longrope_storage::{Claim, Failure, Inserted, NewTrial, Storage, Study, StudyState, Trial, TrialState};
use serde::{Deserialize, Serialize};

use crate::error::{from_core, Result, SearchError};
use crate::fitness::{Fitness, Race, Racing};
use crate::outputs::{best_record, CostAccount, CurvePoint, Record};

/// Version of the checkpoint format.
pub const CHECKPOINT_VERSION: u32 = 1;

/// A checkpoint as the storage keeps it (a search directory's `checkpoint.json` adds `meta` and `history`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyCheckpoint {
    /// [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// The strategy's name.
    pub strategy: String,
    /// Generations finished.
    pub generation: usize,
    /// The strategy's state ([`SearchStrategy::save_state`]).
    pub strategy_state: serde_json::Value,
    /// Best fitness after each generation.
    pub curve: Vec<CurvePoint>,
    /// Cost so far.
    pub cost: CostAccount,
}

/// What [`SearchStudy::advance`] did or found.
#[derive(Debug, Clone, PartialEq)]
pub enum Advance {
    /// Generation `generation` has trials waiting or running.
    Pending {
        /// The generation.
        generation: u64,
        /// Its trials still waiting.
        waiting: usize,
        /// Its trials running (here or elsewhere).
        running: usize,
    },
    /// Generation `generation - 1` was observed and checkpoint `generation` stored.
    Checkpointed {
        /// Generations finished.
        generation: u64,
    },
    /// The next generation is not proposed because `stop_after` generations are checkpointed.
    Stopped {
        /// Generations finished.
        generation: u64,
    },
    /// The strategy proposed nothing more: the study is finished.
    Finished,
}

/// Where the in-memory strategy stands.
#[derive(Debug, Clone, PartialEq)]
enum Live {
    /// Ready to propose this generation (its checkpoint's state).
    Ready(u64),
    /// Has proposed this generation (this batch) and waits for its results.
    Proposed(u64, Vec<Candidate>),
    /// Unknown: load a checkpoint before using it.
    Stale,
}

/// The deduplication key of a candidate: factors (to 1e-9), `n_hat`, attention factor.
pub fn candidate_key(c: &Candidate) -> String {
    let mut key = String::with_capacity(c.factors.len() * 12);
    for x in &c.factors {
        key.push_str(&format!("{x:.9},"));
    }
    key.push_str(&format!("n{}", c.n_hat));
    if let Some(m) = c.attn_factor {
        key.push_str(&format!(",m{m:.9}"));
    }
    key
}

/// A trial's candidate.
pub fn trial_candidate(t: &Trial) -> Result<Candidate> {
    serde_json::from_value(t.payload.clone())
        .map_err(|e| SearchError::invalid(format!("trial {}", t.number), format!("payload is not a candidate: {e}")))
}

/// A complete trial's record.
pub fn trial_record(t: &Trial) -> Result<Record> {
    let result = t.result.clone().ok_or_else(|| SearchError::invalid(format!("trial {}", t.number), "has no result"))?;
    serde_json::from_value(result)
        .map_err(|e| SearchError::invalid(format!("trial {}", t.number), format!("result is not an evaluation record: {e}")))
}

/// The records of every complete trial, by number.
pub fn records(trials: &[Trial]) -> Result<Vec<Record>> {
    trials.iter().filter(|t| t.state == TrialState::Complete).map(trial_record).collect()
}

/// One search study in a storage, with the strategy that proposes its generations.
pub struct SearchStudy<'s> {
    storage: &'s mut dyn Storage,
    study: Study,
    strategy: Box<dyn SearchStrategy>,
    live: Live,
    resumed: bool,
    recovered: usize,
}

impl<'s> SearchStudy<'s> {
    /// The study `study` (opened by the caller) driven by `strategy`, built from the study's config. Stores
    /// checkpoint 0 (the fresh strategy) when the study has none.
    pub fn new(storage: &'s mut dyn Storage, study: Study, strategy: Box<dyn SearchStrategy>) -> Result<Self> {
        let mut s = SearchStudy { storage, study, strategy, live: Live::Ready(0), resumed: false, recovered: 0 };
        match s.storage.checkpoint(s.study.id, None)? {
            None => {
                let cp = StudyCheckpoint {
                    version: CHECKPOINT_VERSION,
                    strategy: s.strategy.name().to_string(),
                    generation: 0,
                    strategy_state: s.strategy.save_state().map_err(from_core)?,
                    curve: Vec::new(),
                    cost: CostAccount::default(),
                };
                s.storage.save_checkpoint(s.study.id, 0, &serde_json::to_value(&cp).expect("checkpoints serialize"))?;
            }
            Some(_) => s.live = Live::Stale,
        }
        Ok(s)
    }

    /// Count the next checkpoint as a resume (`cost.resumes`).
    pub fn count_resume(&mut self) {
        self.resumed = true;
    }

    /// The study.
    pub fn study(&self) -> &Study {
        &self.study
    }

    /// The storage.
    pub fn storage(&mut self) -> &mut dyn Storage {
        self.storage
    }

    /// The strategy's name.
    pub fn strategy_name(&self) -> &str {
        self.strategy.name()
    }

    /// How many of the best candidates matter to the strategy ([`SearchStrategy::selection_size`]): what a race
    /// compares against.
    pub fn selection_size(&self) -> Option<usize> {
        self.strategy.selection_size()
    }

    /// Trials found complete when their generation was stored (recovered from a search directory's journal).
    pub fn recovered(&self) -> usize {
        self.recovered
    }

    fn where_(&self) -> String {
        if self.study.name.is_empty() {
            self.storage.location()
        } else {
            format!("study `{}` in {}", self.study.name, self.storage.location())
        }
    }

    /// A checkpoint as stored, checked.
    fn load_checkpoint(&mut self, generation: Option<u64>) -> Result<(u64, StudyCheckpoint)> {
        let where_ = self.where_();
        let (g, v) = self.storage.checkpoint(self.study.id, generation)?.ok_or_else(|| {
            SearchError::checkpoint(&where_, format!("no checkpoint after {} generations", generation.unwrap_or(0)))
        })?;
        let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
        if version != CHECKPOINT_VERSION as u64 {
            return Err(SearchError::checkpoint(&where_, format!("format version {version} (this build reads {CHECKPOINT_VERSION})")));
        }
        let cp: StudyCheckpoint =
            serde_json::from_value(v).map_err(|e| SearchError::checkpoint(&where_, format!("corrupt: {e}")))?;
        if cp.strategy != self.strategy.name() {
            return Err(SearchError::checkpoint(&where_, format!("was written by strategy `{}`", cp.strategy)));
        }
        Ok((g, cp))
    }

    /// Put the strategy in the state of checkpoint `g`.
    fn ready(&mut self, g: u64) -> Result<()> {
        if self.live != Live::Ready(g) {
            let (_, cp) = self.load_checkpoint(Some(g))?;
            self.strategy.load_state(cp.strategy_state).map_err(from_core)?;
            self.live = Live::Ready(g);
        }
        Ok(())
    }

    /// The batch of generation `g` (proposed by the live strategy, or again from checkpoint `g`).
    fn proposed(&mut self, g: u64) -> Result<Vec<Candidate>> {
        if let Live::Proposed(h, batch) = &self.live {
            if *h == g {
                return Ok(batch.clone());
            }
        }
        self.ready(g)?;
        let batch = self.strategy.propose().map_err(from_core)?;
        self.live = Live::Proposed(g, batch.clone());
        Ok(batch)
    }

    /// Do whatever step is due: propose the next generation, observe a complete one, or report the pending one.
    /// `stop_after`: do not propose generation `k` or later.
    pub fn advance(&mut self, stop_after: Option<usize>) -> Result<Advance> {
        let id = self.study.id;
        if let Some(s) = self.storage.study(&self.study.name)?.filter(|s| s.id == id) {
            self.study.state = s.state;
            self.study.error = s.error;
        }
        match self.study.state {
            StudyState::Finished => return Ok(Advance::Finished),
            StudyState::Failed => {
                return Err(SearchError::Fitness(format!(
                    "{} failed: {}",
                    self.where_(),
                    self.study.error.clone().unwrap_or_default()
                )))
            }
            StudyState::Running => {}
        }
        let (ready, _) = self.storage.checkpoint(id, None)?.ok_or_else(|| SearchError::checkpoint(self.where_(), "no checkpoint"))?;
        let last = self.storage.last_generation(id)?;
        if last.is_none_or(|l| l < ready) {
            if stop_after.is_some_and(|k| ready >= k as u64) {
                return Ok(Advance::Stopped { generation: ready });
            }
            return self.propose(ready);
        }
        let g = last.expect("checked above");
        if g > ready {
            return Err(SearchError::checkpoint(self.where_(), format!("generation {g} is stored but checkpoint {g} is not")));
        }
        let trials = self.storage.trials(id, Some(g))?;
        if let Some(t) = trials.iter().find(|t| t.state == TrialState::Failed) {
            let error = format!("trial {} (generation {g}) failed: {}", t.number, t.error.clone().unwrap_or_default());
            self.storage.finish_study(id, Some(&error))?;
            return Err(SearchError::Fitness(format!("{}: {error}", self.where_())));
        }
        let waiting = trials.iter().filter(|t| t.state == TrialState::Waiting).count();
        let running = trials.iter().filter(|t| t.state == TrialState::Running).count();
        if waiting + running > 0 {
            return Ok(Advance::Pending { generation: g, waiting, running });
        }
        self.observe(g)
    }

    /// Propose generation `g` from checkpoint `g` and store it (once).
    fn propose(&mut self, g: u64) -> Result<Advance> {
        let id = self.study.id;
        let batch = self.proposed(g)?;
        if batch.is_empty() {
            self.storage.finish_study(id, None)?;
            self.study.state = StudyState::Finished;
            return Ok(Advance::Finished);
        }
        let earlier = self.storage.trials(id, None)?;
        let mut seen: HashSet<String> = HashSet::new();
        for t in earlier.iter().filter(|t| t.generation < g) {
            seen.insert(candidate_key(&trial_candidate(t)?));
        }
        let mut number = earlier.iter().filter(|t| t.generation < g).count() as u64;
        let mut new = Vec::new();
        for c in &batch {
            if seen.insert(candidate_key(c)) {
                new.push(NewTrial {
                    number,
                    generation: g,
                    key: candidate_key(c),
                    payload: serde_json::to_value(c).expect("candidates serialize"),
                });
                number += 1;
            }
        }
        let proposal = serde_json::json!({ "candidates": batch });
        match self.storage.insert_generation(id, g, &proposal, &new)? {
            Inserted::New { recovered } => self.recovered += recovered,
            Inserted::Existing(stored) if stored != proposal => {
                return Err(SearchError::checkpoint(
                    self.where_(),
                    format!(
                        "generation {g} was stored by another process with other candidates than this process proposes \
                         from the same checkpoint: the strategy is not deterministic, or the processes run different builds"
                    ),
                ))
            }
            Inserted::Existing(_) => {}
        }
        self.advance_after_insert(g)
    }

    fn advance_after_insert(&mut self, g: u64) -> Result<Advance> {
        let trials = self.storage.trials(self.study.id, Some(g))?;
        let waiting = trials.iter().filter(|t| t.state == TrialState::Waiting).count();
        let running = trials.iter().filter(|t| t.state == TrialState::Running).count();
        if waiting + running > 0 {
            Ok(Advance::Pending { generation: g, waiting, running })
        } else {
            // Every candidate was evaluated before (or recovered): observe at once.
            self.observe(g)
        }
    }

    /// Observe complete generation `g` and store checkpoint `g + 1` (once).
    fn observe(&mut self, g: u64) -> Result<Advance> {
        let id = self.study.id;
        if self.storage.checkpoint(id, Some(g + 1))?.is_some() {
            // Another process observed it.
            self.live = Live::Stale;
            return Ok(Advance::Checkpointed { generation: g + 1 });
        }
        let batch = self.proposed(g)?;
        let all = self.storage.trials(id, None)?;
        let history = records(&all)?;
        let by_key: HashMap<String, f64> = history.iter().map(|r| (candidate_key(&r.candidate), r.fitness)).collect();
        let scored = batch
            .iter()
            .map(|c| {
                let fitness = by_key.get(&candidate_key(c)).copied().ok_or_else(|| {
                    SearchError::checkpoint(self.where_(), format!("generation {g}: a candidate has no complete trial"))
                })?;
                Ok(Scored { candidate: c.clone(), fitness })
            })
            .collect::<Result<Vec<_>>>()?;
        let (_, prev) = self.load_checkpoint(Some(g))?;
        self.strategy.observe(&scored).map_err(from_core)?;
        self.live = Live::Ready(g + 1);
        let this: Vec<&Record> = history.iter().filter(|r| r.generation as u64 == g).collect();
        let mut cost = prev.cost;
        cost.evaluations += this.len();
        cost.raced += this.iter().filter(|r| r.raced.is_some()).count();
        cost.duplicates_skipped += batch.len() - this.len();
        cost.generations = g as usize + 1;
        cost.tokens += this.iter().map(|r| r.tokens).sum::<u64>();
        cost.evaluation_seconds += this.iter().map(|r| r.seconds).sum::<f64>();
        cost.wall_seconds = self.storage.wall_seconds(id)?;
        if std::mem::take(&mut self.resumed) {
            cost.resumes += 1;
        }
        let relevant: Vec<Record> = history.iter().filter(|r| r.generation as u64 <= g).cloned().collect();
        let mut curve = prev.curve;
        curve.push(CurvePoint {
            generation: g as usize,
            evaluations: relevant.len(),
            best_fitness: best_record(&relevant).map(|r| r.fitness).unwrap_or(f64::INFINITY),
        });
        let cp = StudyCheckpoint {
            version: CHECKPOINT_VERSION,
            strategy: self.strategy.name().to_string(),
            generation: g as usize + 1,
            strategy_state: self.strategy.save_state().map_err(from_core)?,
            curve,
            cost,
        };
        self.storage.save_checkpoint(id, g + 1, &serde_json::to_value(&cp).expect("checkpoints serialize"))?;
        Ok(Advance::Checkpointed { generation: g + 1 })
    }

    /// The latest checkpoint (curve and cost) and the records of every complete trial, by number.
    pub fn state(&mut self) -> Result<(StudyCheckpoint, Vec<Record>)> {
        let (_, cp) = self.load_checkpoint(None)?;
        let trials = self.storage.trials(self.study.id, None)?;
        Ok((cp, records(&trials)?))
    }
}

/// How a batch of claimed trials ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluated {
    /// Trials completed by this call.
    pub completed: usize,
    /// Trials whose result was dropped: another worker holds them now (missed heartbeats).
    pub lost: usize,
    /// Trials re-queued after an error.
    pub requeued: usize,
    /// Trials failed for good (twice the same error, or out of attempts), with the error.
    pub failed: Option<String>,
    /// The fitness's error when it failed (every trial of the batch re-queued or failed with it).
    pub error: Option<String>,
}

/// The race a batch runs under when `fitness` races and the strategy keeps the `keep` best candidates
/// ([`SearchStudy::selection_size`]): the threshold is the `keep`-th best fitness of the study's finished
/// (complete, not raced) trials, `+inf` while fewer have finished; [`Racing::Observed`] floors each document at
/// the lowest loss sum a finished trial had on it, [`Racing::Paired`] at the loss sum of the trial at the
/// threshold. `None` when there is no race.
pub fn race_for(storage: &mut dyn Storage, study: i64, racing: Racing, keep: Option<usize>) -> Result<Option<Race>> {
    let Some(keep) = keep.filter(|_| !racing.is_off()) else {
        return Ok(None);
    };
    let finished: Vec<Record> = records(&storage.trials(study, None)?)?.into_iter().filter(|r| r.raced.is_none()).collect();
    let mut values: Vec<f64> = finished.iter().map(|r| if r.fitness.is_nan() { f64::INFINITY } else { r.fitness }).collect();
    values.sort_by(f64::total_cmp);
    let threshold = values.get(keep.max(1) - 1).copied().unwrap_or(f64::INFINITY);
    let floors = match racing {
        Racing::Observed => {
            let n = finished.iter().map(|r| r.items.len()).max().unwrap_or(0);
            (0..n)
                .map(|j| {
                    finished
                        .iter()
                        .filter(|r| r.items.len() == n)
                        .map(|r| r.items[j])
                        .filter(|x| x.is_finite())
                        .fold(f64::INFINITY, f64::min)
                })
                .map(|x| if x.is_finite() { x } else { 0.0 })
                .collect()
        }
        Racing::Paired => finished
            .iter()
            .find(|r| r.fitness == threshold && r.items.iter().all(|x| x.is_finite()))
            .map(|r| r.items.clone())
            .unwrap_or_default(),
        Racing::Off | Racing::Exact => Vec::new(),
    };
    Ok(Some(Race { threshold, floors }))
}

/// Evaluate trials of one search study that `worker` has claimed, and record each result (or the error, for
/// every trial of the batch when the fitness fails). Records carry the trial's number as `index`. `keep`: the
/// strategy's [`SearchStudy::selection_size`], for a fitness that races ([`race_for`]).
pub fn evaluate_trials(
    storage: &mut dyn Storage,
    study: i64,
    trials: &[Trial],
    fitness: &mut dyn Fitness,
    worker: &str,
    keep: Option<usize>,
) -> Result<Evaluated> {
    let mut out = Evaluated::default();
    if trials.is_empty() {
        return Ok(out);
    }
    let candidates = trials.iter().map(trial_candidate).collect::<Result<Vec<_>>>()?;
    let evals = match race_for(storage, study, fitness.racing(), keep)? {
        Some(race) => fitness.evaluate_raced(&candidates, &race),
        None => fitness.evaluate(&candidates),
    };
    let evals = evals.and_then(|e| {
        if e.len() == candidates.len() {
            Ok(e)
        } else {
            Err(SearchError::Fitness(format!("{} evaluations for {} candidates", e.len(), candidates.len())))
        }
    });
    match evals {
        Ok(evals) => {
            for ((t, c), e) in trials.iter().zip(candidates).zip(evals) {
                let rec = Record {
                    index: t.number as usize,
                    generation: t.generation as usize,
                    candidate: c,
                    fitness: e.fitness,
                    tokens: e.tokens,
                    seconds: e.seconds,
                    wall_seconds: Some(storage.wall_seconds(study)?),
                    items: e.items,
                    raced: e.raced,
                };
                let value = serde_json::to_value(&rec).expect("records serialize");
                if storage.complete(study, t.number, worker, &value, Some(rec.fitness), rec.seconds)? {
                    out.completed += 1;
                } else {
                    out.lost += 1;
                }
            }
        }
        Err(e) => {
            let message = longrope_core::error::chain_message(&e);
            out.error = Some(message.clone());
            for t in trials {
                match storage.fail(study, t.number, worker, &message)? {
                    Failure::Requeued => out.requeued += 1,
                    Failure::Lost => out.lost += 1,
                    Failure::Final => {
                        out.failed = Some(format!("trial {} (generation {}): {message}", t.number, t.generation));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Claim up to `n` waiting trials of `study` for `worker`.
pub fn claim_trials(storage: &mut dyn Storage, study: i64, worker: &str, n: usize) -> Result<Vec<Trial>> {
    let mut out = Vec::new();
    while out.len() < n.max(1) {
        match storage.claim(worker, Claim::Study(study))? {
            Some(t) => out.push(t),
            None => break,
        }
    }
    Ok(out)
}
