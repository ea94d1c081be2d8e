//! `longrope run EXPERIMENT.toml [--out DIR] [--resume]`: validate an experiment file, run its searches and
//! cells (each model loaded once, finished cells cached and skipped on a re-run), and write `results.json`,
//! `results.csv`, `report.md` and plots. Glue over `longrope_experiment`; see `docs/experiments.md`. With
//! `--storage URL` the cells are a study in a database that `longrope worker` processes share.

use std::path::PathBuf;

use anyhow::{Context, Result};
use longrope_experiment::{Experiment, RunOptions, RunOutcome};

/// Arguments of `longrope run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The experiment file (`configs/experiments/*.toml`).
    experiment: PathBuf,
    /// Output directory (default: `runs/<experiment name>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Reuse an output directory written by another version of the experiment file (unchanged cells are
    /// skipped). Re-running the same experiment always skips its finished cells.
    #[arg(long)]
    resume: bool,
    /// Only validate the experiment file and list its cells; compute nothing.
    #[arg(long)]
    check: bool,
    /// Stop cleanly after computing N new cells (for tests and for splitting a run into jobs).
    #[arg(long, hide = true)]
    stop_after_cells: Option<usize>,
    /// Keep the cells and searches in a database shared with `longrope worker` processes (`sqlite:PATH`,
    /// `postgres://USER@HOST:PORT/DB`); `--out` receives the report, built from the database.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// The experiment's study name in `--storage` (default: the experiment's `name`).
    #[arg(long, value_name = "NAME")]
    study: Option<String>,
}

/// Run `longrope run`.
pub fn run(args: Args) -> Result<()> {
    let exp = Experiment::load(&args.experiment).context("invalid experiment")?;
    if args.check {
        println!(
            "{}: valid: {} models, {} methods, {} searches, {} fine-tunes, {} evaluator entries",
            args.experiment.display(),
            exp.models.len(),
            exp.methods.len(),
            exp.searches.len(),
            exp.finetunes.len(),
            exp.evals.len()
        );
        for m in &exp.methods {
            println!("  method {}", m.name);
        }
        for f in &exp.finetunes {
            println!("  finetune {} ({} under {})", f.name, f.model, f.method);
        }
        return Ok(());
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&exp.file.name));
    if args.study.is_some() && args.storage.is_none() {
        anyhow::bail!("--study needs --storage URL (a database shared with `longrope worker`)");
    }
    let opts = RunOptions {
        resume: args.resume,
        stop_after_cells: args.stop_after_cells,
        storage: args.storage.clone(),
        study: args.study.clone(),
        ..RunOptions::new(out.clone())
    };
    let outcome = longrope_experiment::run(&exp, &opts, &mut |line| println!("{line}"))
        .with_context(|| format!("running {} into {}", args.experiment.display(), out.display()))?;
    match outcome {
        RunOutcome::Finished(r) => {
            println!(
                "done: {} cells, {} searches in {:.1} s; results: {}/results.json, {}/results.csv, report: {}/report.md",
                r.cells.len(),
                r.searches.len(),
                r.wall_seconds,
                out.display(),
                out.display(),
                out.display()
            );
        }
        RunOutcome::Stopped { computed } => println!("stopped after {computed} new cells; finished cells are cached in {}/cells", out.display()),
    }
    Ok(())
}
