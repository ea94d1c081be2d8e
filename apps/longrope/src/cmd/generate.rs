//! `longrope generate --model PATH --prompt TEXT --max-new-tokens N [--scaling CONFIG] [--json]`: greedy
//! decoding with a KV cache (`longrope_core::generate::greedy_generate`).

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use longrope_core::generate::greedy_generate;

use super::model::{load_model, schedule};

/// Arguments of `longrope generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `.gguf` file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text (tokenized without special tokens unless the tokenizer adds BOS itself).
    #[arg(long)]
    prompt: String,
    /// How many tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// RoPE scaling: a plugin name or a TOML file, replacing the checkpoint's own method if it has one; `checkpoint`
    /// for the checkpoint's own (its `rope_scaling`); default: the checkpoint's own, else `none` (the model's RoPE).
    #[arg(long)]
    scaling: Option<String>,
    /// Target context `L'` the scaling extends to (default: the model's trained context).
    #[arg(long)]
    target: Option<usize>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Keep generating after the EOS token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object with `new_ids` (generated token ids) and `text` (their decoded text).
    #[arg(long)]
    json: bool,
}

/// Run `longrope generate`.
pub fn run(args: Args) -> Result<()> {
    use longrope_core::limits;
    limits::int_in("--max-new-tokens", args.max_new_tokens, 0, limits::MAX_CONTEXT, "tokens to generate")?;
    if let Some(t) = args.target {
        limits::context("--target", t, 1)?;
    }
    let model = load_model(&args.model, &args.device, &args.dtype, None)?;
    let schedule = schedule(model.summary(), args.scaling.as_deref(), args.target)?;
    let enc = model.tokenizer().encode(args.prompt.as_str(), true).map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
    let prompt_ids: Vec<u32> = enc.get_ids().to_vec();
    let new_ids = greedy_generate(model.as_ref(), &prompt_ids, args.max_new_tokens, &schedule, !args.ignore_eos)?;
    let text = model.tokenizer().decode(&new_ids, false).map_err(|e| anyhow!("decoding: {e}"))?;
    if args.json {
        let doc = serde_json::json!({
            "model": args.model.display().to_string(),
            "prompt": args.prompt,
            "prompt_ids": prompt_ids,
            "new_ids": new_ids,
            "text": text,
            "scaling": schedule.method.name(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}{}", args.prompt, text);
    }
    Ok(())
}
