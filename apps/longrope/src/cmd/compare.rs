//! `longrope compare RESULTS...`: merge the `results.json` of several experiment runs into one Markdown table
//! per evaluator (rows run / model / method, columns the union of lengths). Glue over
//! `longrope_experiment::report::compare`.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Arguments of `longrope compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `results.json` files, or run directories holding one.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Also write the Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run `longrope compare`.
pub fn run(args: Args) -> Result<()> {
    let md = longrope_experiment::report::compare(&args.results)?;
    print!("{md}");
    if let Some(p) = &args.out {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
