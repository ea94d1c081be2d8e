//! `longrope model info PATH [--json]`: the architecture summary of a checkpoint (GGUF file or HF directory),
//! and the model-loading helpers the other subcommands share (`--device`, `--dtype`, `--scaling`, `--target`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use longrope_core::device::{parse_device, parse_dtype};
use longrope_core::model::{LanguageModel, LoadOptions};
use longrope_core::scaling::{load_scaling_config, LayerTables, RopeSchedule};

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
    if let Some(w) = s.sliding_window {
        println!("sliding window   {w}");
    }
    println!("tied embeddings  {}", s.tied_embeddings);
    if let Some(block) = &s.rope_scaling {
        println!("rope scaling     {} (checkpoint's own; pass --scaling to use it)", block);
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

/// The RoPE schedule of `--scaling CONFIG` (default `none`: the model's own RoPE) for a target context
/// `target` (default: the model's trained context). A checkpoint that carries its own `rope_scaling` (an
/// exported fine-tune, a long-context release) needs `--scaling`: it is not applied implicitly, and `none`
/// would silently evaluate the unscaled base RoPE.
pub fn schedule(model: &dyn LanguageModel, scaling: Option<&str>, target: Option<usize>) -> Result<RopeSchedule> {
    let s = model.summary();
    if let (None, Some(block)) = (scaling, &s.rope_scaling) {
        let kind = block.get("rope_type").or_else(|| block.get("type")).and_then(|t| t.as_str()).unwrap_or("?");
        anyhow::bail!(
            "the checkpoint's config.json carries its own rope_scaling (type `{kind}`), which is not applied implicitly: \
             pass --scaling with the method it was made with (e.g. the fine-tune's scaling TOML), or --scaling none for the unscaled RoPE"
        );
    }
    let shape = s.rope_shape(target.unwrap_or(s.max_position_embeddings));
    let spec = scaling.unwrap_or("none");
    let config = load_scaling_config(spec).with_context(|| format!("--scaling {spec}"))?;
    RopeSchedule::new(config.as_ref(), shape).with_context(|| format!("--scaling {spec}"))
}

/// The model's own RoPE tables for every layer (no scaling).
pub fn original_tables(model: &dyn LanguageModel) -> LayerTables {
    let s = model.summary();
    let t = Arc::new(longrope_core::RopeTables::original(&s.rope_shape(s.max_position_embeddings)));
    LayerTables { layers: vec![t; s.num_layers] }
}
