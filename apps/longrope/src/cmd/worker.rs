//! `longrope worker --storage URL`: evaluate the trials of the searches and experiments kept in a database,
//! on this machine, until the work is done (one model load per model; `--device cuda:N` to pin a GPU). Glue
//! over `longrope_experiment::worker`; see `docs/distributed.md`.

use std::time::Duration;

use anyhow::{Context, Result};
use longrope_experiment::worker::{run_worker, WorkerOptions};

/// Arguments of `longrope worker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database: `sqlite:PATH` (one machine) or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`.
    #[arg(long, value_name = "URL")]
    storage: String,
    /// Work only on this study (default: every running study).
    #[arg(long, value_name = "NAME")]
    study: Option<String>,
    /// Run every model on this device (`cpu`, `cuda`, `cuda:N`), whatever the study's config says.
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Exit after this many seconds without a trial to evaluate (default: wait while a study is running).
    #[arg(long, value_name = "S")]
    idle_timeout: Option<f64>,
    /// Exit after evaluating this many trials.
    #[arg(long, value_name = "N")]
    max_trials: Option<usize>,
    /// The worker's name in the database (default `HOST:PID`).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Milliseconds between polls when there is nothing to claim.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    poll_ms: u64,
    /// Wait this long after claiming each trial (testing a worker killed mid-trial).
    #[arg(long, hide = true, value_name = "MS", default_value_t = 0)]
    trial_delay_ms: u64,
}

/// Run `longrope worker`.
pub fn run(args: Args) -> Result<()> {
    let mut storage = longrope_storage::open(&args.storage).context("--storage")?;
    let mut opts = WorkerOptions::new();
    if let Some(n) = &args.name {
        opts.name = n.clone();
    }
    if let Some(d) = &args.device {
        longrope_core::device::parse_device(d).with_context(|| format!("--device {d}"))?;
    }
    opts.device = args.device.clone();
    opts.study = args.study.clone();
    if let Some(s) = args.idle_timeout {
        anyhow::ensure!(s.is_finite() && s >= 0.0, "--idle-timeout {s}: must be a number of seconds >= 0");
        opts.idle_timeout = Some(Duration::from_secs_f64(s));
    }
    opts.max_trials = args.max_trials;
    opts.poll = Duration::from_millis(args.poll_ms.max(10));
    opts.trial_delay = Duration::from_millis(args.trial_delay_ms);
    let summary = run_worker(storage.as_mut(), &opts, &mut |line| println!("{line}"))
        .with_context(|| format!("worker {} on {}", opts.name, storage_location(&args.storage)))?;
    if summary.lost > 0 || summary.failed > 0 {
        println!("{} results dropped (missed heartbeats), {} failed attempts", summary.lost, summary.failed);
    }
    Ok(())
}

fn storage_location(url: &str) -> String {
    longrope_storage::url::redact(url)
}
