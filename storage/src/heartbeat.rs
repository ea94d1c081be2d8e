//! A worker's heartbeat thread: while the worker evaluates, its claimed trials are stamped with the database
//! clock every `interval` through a connection of their own ([`Storage::heartbeats`]), so a long evaluation
//! is not mistaken for a dead worker, and a killed worker's trials go stale after the study's grace period.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Heartbeat, Trial};

/// The heartbeat thread of one worker (a no-op for storages without other processes).
pub struct HeartbeatThread {
    held: Arc<Mutex<Vec<(i64, u64)>>>,
    interval: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl HeartbeatThread {
    /// Start beating every `interval_seconds` (at least 0.1 s) as `worker` through `heartbeat`; `None`: do
    /// nothing.
    pub fn start(heartbeat: Option<Box<dyn Heartbeat>>, worker: String, interval_seconds: f64) -> Self {
        let held: Arc<Mutex<Vec<(i64, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicUsize::new(0));
        let interval = Arc::new(Mutex::new(Duration::from_secs_f64(interval_seconds.max(0.1))));
        let handle = heartbeat.map(|mut hb| {
            let (held, stop, lost, interval) = (held.clone(), stop.clone(), lost.clone(), interval.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let every = interval.lock().map(|i| *i).unwrap_or(Duration::from_secs(1));
                    if last.elapsed() < every {
                        continue;
                    }
                    last = Instant::now();
                    let trials: Vec<(i64, u64)> = held.lock().map(|h| h.clone()).unwrap_or_default();
                    for (study, number) in trials {
                        match hb.beat(study, number, &worker) {
                            Ok(true) => {}
                            Ok(false) => {
                                lost.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("trial {number} of study {study} is no longer held by {worker} (re-queued after missed heartbeats)");
                            }
                            Err(e) => tracing::warn!("heartbeat of trial {number}: {e}"),
                        }
                    }
                }
            })
        });
        HeartbeatThread { held, interval, stop, lost, handle }
    }

    /// Beat every `seconds` (at least 0.1 s) from now on (a study with a shorter grace period).
    pub fn set_interval(&self, seconds: f64) {
        if let Ok(mut i) = self.interval.lock() {
            *i = Duration::from_secs_f64(seconds.max(0.1));
        }
    }

    /// Beat for these trials from now on.
    pub fn hold(&self, trials: &[Trial]) {
        if let Ok(mut h) = self.held.lock() {
            *h = trials.iter().map(|t| (t.study, t.number)).collect();
        }
    }

    /// Stop beating for any trial.
    pub fn release(&self) {
        if let Ok(mut h) = self.held.lock() {
            h.clear();
        }
    }

    /// Heartbeats that found their trial taken away so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::Relaxed)
    }

    /// Stop the thread and wait for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for HeartbeatThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}
