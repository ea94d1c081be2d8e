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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the libtorch version, threads, and whether CUDA is usable.
    Env(cmd::env::Args),
    /// List every registered plugin (scaling, search, arch, evaluator) with a one-line summary.
    Plugins(cmd::plugins::Args),
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
    let result = match cli.command {
        Command::Env(a) => cmd::env::run(a),
        Command::Plugins(a) => cmd::plugins::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
