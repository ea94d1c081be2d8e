//! `longrope compare PATH...`: merge several runs into Markdown. Experiment runs (`results.json` or its
//! directory) give one table per evaluator (rows run / model / method, columns the union of lengths); search
//! directories (`longrope search --out DIR`) give the search comparison: best fitness per strategy at the same
//! budget, against the best seed, with cost and wall time, and (with `--out`) a best-fitness-vs-evaluations
//! plot beside the Markdown. Glue over `longrope_experiment::report::compare`.

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `longrope compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Experiment `results.json` files or run directories, and/or search output directories.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Also write the Markdown to this file (and, for searches, `<stem>-search-curve.png/.svg` beside it).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run `longrope compare`.
pub fn run(args: Args) -> Result<()> {
    let md = longrope_experiment::report::compare(&args.results, args.out.as_deref())?;
    print!("{md}");
    if let Some(p) = &args.out {
        longrope_core::files::write_atomic(p, md.as_bytes())?;
    }
    Ok(())
}
