//! `longrope export gguf --model M.gguf --scaling CONFIG [--target L'] --out M-extended.gguf`: a copy of a GGUF
//! model (tensors byte-identical) carrying a scaling method the way llama.cpp reads it
//! (`longrope_models::gguf_export`). Only the file's metadata is read; no weight is dequantised.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use longrope_models::gguf::GgufFile;

use super::model::schedule;

/// Arguments of `longrope export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ExportCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ExportCommand {
    /// A GGUF copy with the method as llama.cpp reads it: per-dimension factors as `rope_freqs.weight` (or
    /// `rope_factors_short/long.weight` for LongRoPE's two lists), the attention factor and the original/target
    /// contexts as `{arch}.rope.scaling.*` / `{arch}.context_length` metadata.
    Gguf(GgufArgs),
}

/// Arguments of `longrope export gguf`.
#[derive(Debug, clap::Args)]
pub struct GgufArgs {
    /// The source GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// The method: a plugin name or a TOML file (a search's `best_scaling.toml`, a fine-tune's
    /// `longrope_scaling.toml`); replaces the file's own scaling if it has one.
    #[arg(long, value_name = "CONFIG")]
    scaling: String,
    /// Target context `L'` (written as `context_length`). Default: `factor * L` when the TOML sets `factor`.
    #[arg(long, value_name = "L2")]
    target: Option<usize>,
    /// The GGUF file to write (a new path; written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Print what was written as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Run `longrope export ...`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        ExportCommand::Gguf(a) => gguf(a),
    }
}

/// The `factor` (scale `s`) a scaling TOML file sets at its top level, if any: every built-in method reads its
/// scale from that field.
fn toml_factor(spec: &str) -> Result<Option<f64>> {
    let path = std::path::Path::new(spec);
    if !path.is_file() {
        return Ok(None);
    }
    let text = longrope_core::files::read_text(path, longrope_core::files::MAX_CONFIG_BYTES)?;
    let doc: toml::Value = toml::from_str(&text).with_context(|| format!("--scaling {spec}"))?;
    match doc.get("factor") {
        None => Ok(None),
        Some(v) => match v.as_float().or(v.as_integer().map(|i| i as f64)) {
            Some(f) if f >= 1.0 && f.is_finite() => Ok(Some(f)),
            _ => bail!("--scaling {spec}: field `factor`: expected a number >= 1, got {v}"),
        },
    }
}

fn gguf(args: GgufArgs) -> Result<()> {
    let g = GgufFile::open(&args.model).with_context(|| format!("--model {}", args.model.display()))?;
    let summary = longrope_models::llama::gguf_summary(&g).with_context(|| format!("--model {}", args.model.display()))?;
    drop(g);
    let original = summary.original_context();
    let target = match (args.target, toml_factor(&args.scaling)?) {
        (Some(t), _) => t,
        (None, Some(f)) => (f * original as f64).round() as usize,
        (None, None) => bail!(
            "--target is needed: `{}` takes its scale s = L'/L from the target context (or give a TOML file that sets `factor`)",
            args.scaling
        ),
    };
    anyhow::ensure!(target >= original, "--target {target} is below the model's trained context L = {original}");
    let schedule = schedule(&summary, Some(&args.scaling), Some(target))?;
    let written = longrope_models::gguf_export::export_gguf(&args.model, &schedule, &args.out)
        .with_context(|| format!("exporting {} to {}", args.model.display(), args.out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&written)?);
        return Ok(());
    }
    println!("wrote            {} ({} bytes)", args.out.display(), written.bytes);
    println!("method           {} (L = {}, L' = {})", schedule.method.name(), written.original_context_length, written.context_length);
    println!("layout           {}", written.layout);
    if !written.tensors.is_empty() {
        println!("factor tensors   {}", written.tensors.join(", "));
    }
    println!("metadata         {}", written.keys.join(", "));
    println!("attn_factor      {}", written.attn_factor);
    println!("run with         llama-perplexity -m {} -c {} (llama.cpp picks short/long factors by -c)", args.out.display(), written.context_length);
    Ok(())
}
