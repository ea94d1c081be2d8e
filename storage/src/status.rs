//! Where a study stands, for `longrope study status|list`: trials by state, the running ones with their
//! workers and heartbeat ages (by the database clock), retried trials, work per worker, the best value so far.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::{Storage, Study, TrialState};

/// A running trial and who holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningTrial {
    /// Its number.
    pub number: u64,
    /// Its generation.
    pub generation: u64,
    /// The worker holding it.
    pub worker: Option<String>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age: Option<f64>,
    /// Earlier attempts.
    pub attempts: u32,
}

/// A failed trial and its error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedTrial {
    /// Its number.
    pub number: u64,
    /// Attempts used.
    pub attempts: u32,
    /// The error.
    pub error: Option<String>,
}

/// A study's progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyStatus {
    /// The study's name.
    pub name: String,
    /// `search` or `experiment`.
    pub kind: &'static str,
    /// `running`, `finished` or `failed`.
    pub state: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// The highest generation proposed (searches).
    pub generation: Option<u64>,
    /// Trials waiting.
    pub waiting: usize,
    /// Trials running.
    pub running: usize,
    /// Trials complete.
    pub complete: usize,
    /// Trials failed for good.
    pub failed: usize,
    /// Trials that needed more than one attempt (an error, or a worker that stopped heart-beating).
    pub retried: usize,
    /// The running trials.
    pub running_trials: Vec<RunningTrial>,
    /// The failed trials.
    pub failed_trials: Vec<FailedTrial>,
    /// Complete trials per worker.
    pub by_worker: BTreeMap<String, usize>,
    /// The lowest value so far (a search's best fitness) and its trial.
    pub best: Option<(u64, f64)>,
    /// Seconds since the study was created (until it finished), by the database clock.
    pub wall_seconds: f64,
}

/// The status of `study`.
pub fn status(storage: &mut dyn Storage, study: &Study) -> Result<StudyStatus> {
    let trials = storage.trials(study.id, None)?;
    let count = |s: TrialState| trials.iter().filter(|t| t.state == s).count();
    let mut by_worker = BTreeMap::new();
    for t in trials.iter().filter(|t| t.state == TrialState::Complete) {
        *by_worker.entry(t.worker.clone().unwrap_or_else(|| "(recovered)".into())).or_insert(0) += 1;
    }
    let best = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| t.value.map(|v| (t.number, v)))
        .fold(None, |best: Option<(u64, f64)>, (n, v)| match best {
            Some((_, b)) if b <= v => best,
            _ => Some((n, v)),
        });
    Ok(StudyStatus {
        name: study.name.clone(),
        kind: study.kind.as_str(),
        state: study.state.as_str(),
        error: study.error.clone(),
        generation: storage.last_generation(study.id)?,
        waiting: count(TrialState::Waiting),
        running: count(TrialState::Running),
        complete: count(TrialState::Complete),
        failed: count(TrialState::Failed),
        retried: trials.iter().filter(|t| t.attempts > 0).count(),
        running_trials: trials
            .iter()
            .filter(|t| t.state == TrialState::Running)
            .map(|t| RunningTrial {
                number: t.number,
                generation: t.generation,
                worker: t.worker.clone(),
                heartbeat_age: t.heartbeat_age,
                attempts: t.attempts,
            })
            .collect(),
        failed_trials: trials
            .iter()
            .filter(|t| t.state == TrialState::Failed)
            .map(|t| FailedTrial { number: t.number, attempts: t.attempts, error: t.error.clone() })
            .collect(),
        by_worker,
        best: if study.kind == crate::StudyKind::Search { best } else { None },
        wall_seconds: storage.wall_seconds(study.id)?,
    })
}
