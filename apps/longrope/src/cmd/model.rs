//! `longrope model info PATH [--json]`: the architecture summary of a checkpoint (GGUF file or HF directory),
//! and the model-loading helpers the other subcommands share (`--device`, `--dtype`, `--scaling`, `--target`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use longrope_core::device::{parse_device, parse_dtype};
use longrope_core::model::{LanguageModel, LoadOptions, ModelSummary};
use longrope_core::scaling::{run_scaling, LayerTables, RopeSchedule, ScalingRequest, ScalingSource};

/// Arguments of `longrope model`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ModelCommand {
    /// Print the architecture summary: arch, layers, heads, kv heads, head_dim, vocab, rope base, trained
    /// context, weight storage types.
    Info(InfoArgs),
}

/// Arguments of `longrope model info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// A `.gguf` file or an HF model directory (config.json + safetensors + tokenizer.json).
    path: PathBuf,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Run `longrope model ...`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        ModelCommand::Info(a) => info(a),
    }
}

fn info(args: InfoArgs) -> Result<()> {
    let model = load_model(&args.path, "cpu", "f32", None)?;
    let s = model.summary();
    if args.json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("model            {}", args.path.display());
    println!("arch             {} ({})", s.arch, s.format);
    println!("layers           {}", s.num_layers);
    println!("hidden size      {}", s.hidden_size);
    println!("heads            {} (kv heads {})", s.num_heads, s.num_kv_heads);
    println!("head_dim         {}", s.head_dim);
    println!("vocab            {}", s.vocab_size);
    println!("rope base        {}", s.rope_base);
    println!("trained context  {}", s.max_position_embeddings);
    if s.original_context() != s.max_position_embeddings {
        println!("RoPE original L  {} (the sliding window: LongRoPE's rule)", s.original_context());
    }
    if let Some(w) = s.sliding_window {
        println!("sliding window   {w}");
    }
    println!("tied embeddings  {}", s.tied_embeddings);
    if let Some(cs) = &s.checkpoint_scaling {
        println!("rope scaling     {} (`{}` in {})", cs.method, cs.kind, cs.source);
        println!("  contexts       L = {}, L' = {}", cs.original_max_position_embeddings, cs.max_position_embeddings);
        println!("  as our config  {}", cs.config);
        println!("  applied        by default; --scaling NAME|FILE replaces it, --scaling none runs the unscaled RoPE");
    }
    println!("weights          {}", s.weight_dtype);
    Ok(())
}

/// Load a model with `--device` / `--dtype` strings; `sliding_window` overrides Mistral's window.
pub fn load_model(
    path: &Path,
    device: &str,
    dtype: &str,
    sliding_window: Option<Option<usize>>,
) -> Result<Box<dyn LanguageModel>> {
    let options = LoadOptions { device: parse_device(device)?, dtype: parse_dtype(dtype)?, sliding_window };
    longrope_models::load(path, &options).with_context(|| format!("loading model {}", path.display()))
}

/// The RoPE schedule of a run (`longrope_core::scaling::run_scaling`): `--scaling CONFIG` for a target context
/// `target` (default: the model's trained context `L`); without `--scaling`, the checkpoint's own method (HF
/// `rope_scaling` / `rope_parameters`, GGUF `rope.scaling.*`) bound to the contexts it declares, else `none`.
/// `--scaling checkpoint` asks for the checkpoint's own method explicitly. When an explicit method replaces the
/// checkpoint's own, or the checkpoint's own is used, a line on stderr says so.
pub fn schedule(s: &ModelSummary, scaling: Option<&str>, target: Option<usize>) -> Result<RopeSchedule> {
    let spec = scaling.unwrap_or("(default)");
    let request = ScalingRequest::from_spec(scaling).with_context(|| format!("--scaling {spec}"))?;
    let run = run_scaling(s, request, target.unwrap_or(s.original_context())).with_context(|| format!("--scaling {spec}"))?;
    if let Some(note) = &run.note {
        eprintln!("note: --scaling {spec} {note}");
    } else if run.source == ScalingSource::Checkpoint {
        if let Some(cs) = &s.checkpoint_scaling {
            eprintln!("note: using the checkpoint's own RoPE scaling {}", cs.describe());
        }
    }
    Ok(run.schedule)
}

/// The model's own RoPE tables for every layer (no scaling).
pub fn original_tables(model: &dyn LanguageModel) -> LayerTables {
    let s = model.summary();
    let t = Arc::new(longrope_core::RopeTables::original(&s.rope_shape(s.original_context())));
    LayerTables { layers: vec![t; s.num_layers] }
}
