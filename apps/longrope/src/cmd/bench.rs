//! `longrope bench forward --model PATH --lengths 1024,4096 --dtypes f32,bf16`: tokens/s of the scoring
//! forward (trunk + chunked LM head + log-softmax, i.e. `LanguageModel::nll`) and peak RSS per run.
//! `longrope bench decode --model PATH --lengths 1024,4096 --steps 16`: what generation and passkey spend,
//! the prefill of a prompt into the KV cache (tokens/s) and then one-token decoding steps (ms per token).
//!
//! Peak RSS is `VmHWM` of `/proc/self/status`, reset before each run by writing `5` to
//! `/proc/self/clear_refs` (Linux), so each number is that run's peak (weights included).
//! `scripts/bench_hf.py` measures HF transformers the same way.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use longrope_core::device::dtype_name;
use longrope_core::model::{KvCache, LanguageModel};
use longrope_core::scaling::LayerTables;
use tch::Tensor;

use super::model::{load_model, original_tables};

/// Arguments of `longrope bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Time the scoring forward at several lengths and dtypes; report tokens/s and peak RSS.
    Forward(ForwardArgs),
    /// Time the prefill of a prompt into the KV cache and then one-token decoding steps (generation, passkey).
    Decode(DecodeArgs),
}

/// Arguments of `longrope bench decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// A `.gguf` file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// Prompt lengths (tokens in the cache before decoding), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
    lengths: Vec<usize>,
    /// Decoding steps timed after each prefill.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// Compute dtypes, comma-separated (f32, bf16, f16).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtypes: Vec<String>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON array of runs.
    #[arg(long)]
    json: bool,
}

/// Arguments of `longrope bench forward`.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// A `.gguf` file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// Sequence lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
    lengths: Vec<usize>,
    /// Compute dtypes, comma-separated (f32, bf16, f16).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtypes: Vec<String>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one JSON array of runs.
    #[arg(long)]
    json: bool,
}

/// Run `longrope bench ...`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        BenchCommand::Forward(a) => forward(a),
        BenchCommand::Decode(a) => decode(a),
    }
}

/// `n` deterministic pseudo-random token ids below `vocab` (throughput does not depend on the text).
fn pseudo_random_tokens(n: usize, vocab: u64) -> Vec<i64> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % vocab) as i64
        })
        .collect()
}

/// The loop both bench commands share: load the model once per dtype, make `max(lengths)` pseudo-random
/// ids, and call `one(model, tables, ids[..len])` for each length, which returns the run's JSON and its
/// text line. Prints the lines, or with `json` one JSON array of the runs.
fn per_dtype_and_length(
    model_path: &Path,
    device: &str,
    dtypes: &[String],
    lengths: &[usize],
    json: bool,
    mut one: impl FnMut(&dyn LanguageModel, &LayerTables, &[i64]) -> Result<(serde_json::Value, String)>,
) -> Result<()> {
    let mut runs = Vec::new();
    for dtype in dtypes {
        let model = load_model(model_path, device, dtype, None)?;
        let tables = original_tables(model.as_ref());
        let max = *lengths.iter().max().expect("lengths are checked to be non-empty");
        let tokens = pseudo_random_tokens(max, model.summary().vocab_size as u64);
        for &len in lengths {
            let (run, line) = one(model.as_ref(), &tables, &tokens[..len])?;
            if !json {
                println!("{line}");
            }
            runs.push(run);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    }
    Ok(())
}

fn decode(args: DecodeArgs) -> Result<()> {
    if args.lengths.is_empty() || args.lengths.contains(&0) || args.steps == 0 {
        bail!("--lengths must list positive lengths and --steps must be positive");
    }
    check_lengths(&args.lengths)?;
    longrope_core::limits::int_in("--steps", args.steps, 1, longrope_core::limits::MAX_CONTEXT, "decoding steps")?;
    per_dtype_and_length(&args.model, &args.device, &args.dtypes, &args.lengths, args.json, |model, tables, prompt| {
        let mut cache = KvCache::default();
        let t0 = Instant::now();
        let logits = model.forward_last(&Tensor::from_slice(prompt).unsqueeze(0), tables, Some(&mut cache))?;
        let mut next = logits.argmax(-1, false).int64_value(&[0]);
        let prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..args.steps {
            let logits = model.forward_last(&Tensor::from_slice(&[next]).unsqueeze(0), tables, Some(&mut cache))?;
            next = logits.argmax(-1, false).int64_value(&[0]);
        }
        let per_token = t1.elapsed().as_secs_f64() / args.steps as f64;
        let len = prompt.len();
        let dtype = dtype_name(model.dtype());
        let run = serde_json::json!({
            "dtype": dtype,
            "prompt_tokens": len,
            "prefill_seconds": prefill,
            "prefill_tokens_per_s": len as f64 / prefill,
            "decode_steps": args.steps,
            "decode_ms_per_token": 1e3 * per_token,
            "decode_tokens_per_s": 1.0 / per_token,
        });
        let line = format!(
            "{dtype:>5} {len:>7} prompt tokens  prefill {prefill:>7.2} s ({:>7.1} tok/s)  decode {:>7.1} ms/token ({:>6.1} tok/s)",
            len as f64 / prefill,
            1e3 * per_token,
            1.0 / per_token
        );
        Ok((run, line))
    })
}

/// Peak resident set size of this process in MiB (`VmHWM`), if readable.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `--lengths` within `longrope_core::limits` (a length of 1e11 would abort on allocation).
fn check_lengths(lengths: &[usize]) -> Result<()> {
    for &l in lengths {
        longrope_core::limits::context("--lengths", l, 1)?;
    }
    Ok(())
}

fn forward(args: ForwardArgs) -> Result<()> {
    if args.lengths.is_empty() || args.lengths.contains(&0) {
        bail!("--lengths must list positive lengths");
    }
    check_lengths(&args.lengths)?;
    per_dtype_and_length(&args.model, &args.device, &args.dtypes, &args.lengths, args.json, |model, tables, tokens| {
        reset_peak_rss();
        let t0 = Instant::now();
        let nll = model.nll(tokens, tables, 0)?;
        let secs = t0.elapsed().as_secs_f64();
        let (len, dtype, peak) = (tokens.len(), dtype_name(model.dtype()), peak_rss_mib());
        let run = serde_json::json!({
            "dtype": dtype,
            "tokens": len,
            "seconds": secs,
            "tokens_per_s": len as f64 / secs,
            "peak_rss_mib": peak,
            "mean_nll": nll.mean(),
        });
        let line = format!(
            "{dtype:>5} {len:>7} tokens  {secs:>8.2} s  {:>8.1} tok/s  peak RSS {:>8.0} MiB",
            len as f64 / secs,
            peak.unwrap_or(f64::NAN)
        );
        Ok((run, line))
    })
}
