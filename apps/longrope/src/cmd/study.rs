//! `longrope study list|status|export --storage URL`: the studies kept in a database. `list` prints one line
//! per study; `status` the progress of one (trials by state, the running ones with their workers and
//! heartbeat ages by the database clock, retried and failed trials, work per worker, the best value so far);
//! `export` writes a study in today's directory format, so `longrope compare` and reports read it unchanged
//! (a search: `longrope_search::export`; an experiment: the results its last run stored, as `results.json`,
//! `results.csv`, `report.md` and plots). Glue over `longrope_storage::status`; see `docs/distributed.md`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use longrope_storage::{Storage, Study, StudyKind};

/// Arguments of `longrope study`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    action: Action,
}

/// The `study` subcommands.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// One line per study: name, kind, state, trials complete / total, best value.
    List {
        /// The database: `sqlite:PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`.
        #[arg(long, value_name = "URL")]
        storage: String,
    },
    /// A study's progress: trials by state, running trials and their workers, failures, best so far.
    Status {
        /// The database.
        #[arg(long, value_name = "URL")]
        storage: String,
        /// The study.
        #[arg(long, value_name = "NAME")]
        study: String,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a study in the directory format `longrope compare` and reports read.
    Export {
        /// The database.
        #[arg(long, value_name = "URL")]
        storage: String,
        /// The study.
        #[arg(long, value_name = "NAME")]
        study: String,
        /// The directory to write (created; one holding another command's outputs is refused).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn find(storage: &mut dyn Storage, name: &str) -> Result<Study> {
    match storage.study(name)? {
        Some(s) => Ok(s),
        None => bail!("study `{name}` in {}: does not exist (`longrope study list` shows the studies)", storage.location()),
    }
}

/// Run `longrope study`.
pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::List { storage } => {
            let mut storage = longrope_storage::open(&storage).context("--storage")?;
            let studies = storage.studies()?;
            if studies.is_empty() {
                println!("no studies in {}", storage.location());
            }
            for s in &studies {
                let st = longrope_storage::status::status(storage.as_mut(), s)?;
                let total = st.waiting + st.running + st.complete + st.failed;
                let best = st.best.map(|(n, v)| format!(", best {v} (trial {n})")).unwrap_or_default();
                println!("{}  {}  {}  {}/{} trials complete{best}", s.name, st.kind, st.state, st.complete, total);
            }
        }
        Action::Status { storage, study, json } => {
            let mut storage = longrope_storage::open(&storage).context("--storage")?;
            let s = find(storage.as_mut(), &study)?;
            let st = longrope_storage::status::status(storage.as_mut(), &s)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            println!("study `{}` in {}: {} {}", st.name, storage.location(), st.kind, st.state);
            if let Some(e) = &st.error {
                println!("  error: {e}");
            }
            if let Some(g) = st.generation {
                println!("  generation {g} proposed");
            }
            println!(
                "  trials: {} waiting, {} running, {} complete, {} failed ({} needed more than one attempt)",
                st.waiting, st.running, st.complete, st.failed, st.retried
            );
            for t in &st.running_trials {
                println!(
                    "  running: trial {} (generation {}) on {}, last heartbeat {} ago, {} earlier attempt(s)",
                    t.number,
                    t.generation,
                    t.worker.as_deref().unwrap_or("?"),
                    t.heartbeat_age.map(|a| format!("{a:.1} s")).unwrap_or_else(|| "?".into()),
                    t.attempts
                );
            }
            for t in &st.failed_trials {
                println!("  failed: trial {} after {} attempt(s): {}", t.number, t.attempts, t.error.as_deref().unwrap_or("?"));
            }
            for (w, n) in &st.by_worker {
                println!("  {w}: {n} trial(s) complete");
            }
            if let Some((n, v)) = st.best {
                println!("  best so far: {v} (trial {n})");
            }
            println!("  wall time {:.1} s", st.wall_seconds);
        }
        Action::Export { storage, study, out } => {
            let mut storage = longrope_storage::open(&storage).context("--storage")?;
            let s = find(storage.as_mut(), &study)?;
            match s.kind {
                StudyKind::Search => {
                    let e = longrope_search::export::export_study(storage.as_mut(), &study, &out)
                        .with_context(|| format!("exporting study `{study}` to {}", out.display()))?;
                    println!(
                        "study `{study}`: {} generations, {} evaluations exported to {}{}",
                        e.generations,
                        e.evaluations,
                        out.display(),
                        e.best.map(|b| format!("; best fitness {} (evaluation {})", b.fitness, b.index)).unwrap_or_default()
                    );
                }
                StudyKind::Experiment => {
                    let Some((_, state)) = storage.checkpoint(s.id, None)? else {
                        bail!(
                            "study `{study}` in {}: no run of the experiment has finished yet, so there are no results to \
                             export (run `longrope run EXP.toml --storage URL` once its cells are done)",
                            storage.location()
                        );
                    };
                    let results: longrope_experiment::report::Results =
                        serde_json::from_value(state).with_context(|| format!("study `{study}`: stored results"))?;
                    longrope_core::files::prepare_out_dir(&out, longrope_core::files::OutputKind::Experiment)
                        .with_context(|| format!("--out {}", out.display()))?;
                    longrope_experiment::report::write_all(&out, &results, &mut |line| println!("{line}"))?;
                    println!("study `{study}`: {} cells exported to {}", results.cells.len(), out.display());
                }
            }
        }
    }
    Ok(())
}
