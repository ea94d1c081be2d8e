//! `longrope run EXPERIMENT.toml [--out DIR] [--resume]`: validate an experiment file, run its searches and
//! cells (each model loaded once, finished cells cached and skipped on a re-run), and write `results.json`,
//! `results.csv`, `report.md` and plots. Glue over `longrope_experiment`; see `docs/experiments.md`.

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
    let opts = RunOptions { out_dir: out.clone(), resume: args.resume, stop_after_cells: args.stop_after_cells };
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
