//! `longrope`: the command line of longrope-rs. Glue only: every behaviour lives in the library crates.
//!
//! This is the one crate that links every plugin crate; [`link_plugins`] references each so that their
//! `inventory` registrations are not dropped by the linker.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Extend the context window of LLMs by rescaling RoPE: compare, search and evaluate scaling methods.
#[derive(Debug, Parser)]
#[command(name = "longrope", version, about, long_about = None)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace); also read from RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    /// Load a dynamic plugin library (repeatable) before running the command; see docs/plugins.md.
    #[arg(long = "plugin", global = true, value_name = "PATH")]
    plugins: Vec<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the libtorch version, threads, and whether CUDA is usable.
    Env(cmd::env::Args),
    /// List every registered plugin (scaling, search, arch, evaluator) with a one-line summary.
    Plugins(cmd::plugins::Args),
    /// Inspect a model checkpoint (`model info PATH`): architecture, sizes, rope base, weight types.
    Model(cmd::model::Args),
    /// Greedy generation with a KV cache, optionally under a RoPE scaling method.
    Generate(cmd::generate::Args),
    /// Benchmarks: `bench forward` measures tokens/s and peak RSS of the scoring forward.
    Bench(cmd::bench::Args),
    /// Tokenize text files, directories or JSONL into a memory-mapped token store.
    Tokenize(cmd::tokenize::Args),
    /// Long-context perplexity (LongRoPE's sliding-window definition) at several lengths.
    Ppl(cmd::evaluate::Args),
    /// Passkey retrieval accuracy at several lengths (and depths).
    Passkey(cmd::evaluate::Args),
    /// Several evaluators x lengths in one model load (`--evaluators ppl,passkey,needle-ppl`).
    Eval(cmd::evaluate::Args),
    /// Inspect a RoPE scaling method's tables for one context (inv_freq, attn_factor, start tokens) and export
    /// them as an HF `rope_scaling` block or a LongRoPE factor CSV.
    Rope(cmd::rope::Args),
    /// Search per-dimension RoPE factors (LongRoPE evolution; random and grid at the same budget), resumable.
    Search(cmd::search::Args),
    /// Run an experiment file (models x methods x evaluators x lengths, searches, ablations): cached cells,
    /// results.json/csv, a Markdown report and plots.
    Run(cmd::run::Args),
    /// Merge the results of several experiment runs into one table per evaluator.
    Compare(cmd::compare::Args),
    /// Fine-tune a model under a scaling method (full or LoRA, PoSE, mixed windows), resumable, exported as an
    /// HF directory.
    Finetune(cmd::finetune::Args),
    /// Write a model with a scaling method for the tools people deploy with: `export gguf` (llama.cpp, ollama).
    Export(cmd::export::Args),
    /// Evaluate the trials of searches and experiments kept in a database (`--storage URL`), on any machine,
    /// until the work is done.
    Worker(cmd::worker::Args),
    /// Studies in a database: `list`, `status` (progress, running trials and their workers, best so far),
    /// `export` (to the directory format `compare` and reports read).
    Study(cmd::study::Args),
}

/// Reference every plugin crate so the linker keeps their registrations.
pub fn link_plugins() {
    longrope_scaling::link();
    longrope_models::link();
    longrope_eval::link();
    longrope_search::link();
}

fn main() -> ExitCode {
    link_plugins();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Err(e) = cmd::plugins::load(&cli.plugins) {
        eprintln!("error: {}", longrope_core::error::chain_message(e.as_ref()));
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Env(a) => cmd::env::run(a),
        Command::Plugins(a) => cmd::plugins::run(a),
        Command::Model(a) => cmd::model::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Ppl(a) => cmd::evaluate::run(cmd::evaluate::Which::Ppl, a),
        Command::Passkey(a) => cmd::evaluate::run(cmd::evaluate::Which::Passkey, a),
        Command::Eval(a) => cmd::evaluate::run(cmd::evaluate::Which::Eval, a),
        Command::Rope(a) => cmd::rope::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Search(a) => cmd::search::run(a),
        Command::Finetune(a) => cmd::finetune::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Worker(a) => cmd::worker::run(a),
        Command::Study(a) => cmd::study::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", longrope_core::error::chain_message(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
