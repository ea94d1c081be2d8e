//! `longrope bench forward --model PATH --lengths 1024,4096 --dtypes f32,bf16`: tokens/s of the scoring
//! forward (trunk + chunked LM head + log-softmax, i.e. `LanguageModel::nll`) and peak RSS per run.
//! `longrope bench decode --model PATH --lengths 1024,4096 --steps 16`: what generation and passkey spend,
//! the prefill of a prompt into the KV cache (tokens/s) and then one-token decoding steps (ms per token).
//!
//! Peak RSS is `VmHWM` of `/proc/self/status`, reset before each run by writing `5` to
//! `/proc/self/clear_refs` (Linux), so each number is that run's peak (weights included).
//! `scripts/bench_hf.py` measures HF transformers the same way.
//!
//! `longrope bench compare`: ours, HF transformers and llama.cpp side by side (`bench_compare.rs`);
//! `longrope bench profile`: where the forward's time goes (`bench_profile.rs`).
//!
//! `longrope bench train --config FT.toml --steps 6 --dtypes f32,bf16`: the same fine-tune steps (same data,
//! same initial weights) in each compute dtype: tokens/s (mean over the steps after the first), peak RSS, and
//! each dtype's loss curve against f32's (largest relative difference per step), which is how the project
//! chooses f32 or bf16 compute on a CPU (keep the loss within 1% of f32).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use longrope_core::device::{dtype_name, peak_rss_mib, reset_peak_rss};
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
    /// Run the same fine-tune steps in several compute dtypes: tokens/s, peak RSS, loss curves against f32.
    Train(TrainArgs),
    /// Ours vs HF transformers vs llama.cpp in one interleaved run: tokens/s, peak RSS, ratios, GFLOP/s against
    /// a matmul ceiling measured on the spot.
    Compare(super::bench_compare::CompareArgs),
    /// Where the forward's time goes: each layer component timed on the model's shapes, against a real forward.
    Profile(super::bench_profile::ProfileArgs),
}

/// Arguments of `longrope bench train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// A fine-tune config (configs/finetune/*.toml); its steps, checkpoints and export are overridden.
    #[arg(long)]
    config: PathBuf,
    /// Optimizer steps per dtype.
    #[arg(long, default_value_t = 6)]
    steps: usize,
    /// Compute dtypes, comma-separated (f32 first: the others are compared with it).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    dtypes: Vec<String>,
    /// Print one JSON array of runs.
    #[arg(long)]
    json: bool,
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
        BenchCommand::Train(a) => train(a),
        BenchCommand::Compare(a) => super::bench_compare::compare(a),
        BenchCommand::Profile(a) => super::bench_profile::profile(a),
    }
}

fn train(args: TrainArgs) -> Result<()> {
    use longrope_train::trainer::{read_log, Finetune, RunOptions, Trainer};
    if args.steps < 2 || args.dtypes.is_empty() {
        bail!("--steps must be at least 2 (the first step is not timed) and --dtypes non-empty");
    }
    let scratch = std::env::temp_dir().join(format!("longrope-bench-train-{}", std::process::id()));
    let mut runs = Vec::new();
    let mut reference: Option<Vec<f64>> = None;
    for dtype in &args.dtypes {
        let mut spec = Finetune::load(&args.config)?;
        spec.file.model.dtype = dtype.clone();
        spec.file.train.steps = args.steps;
        spec.file.optim.warmup_steps = spec.file.optim.warmup_steps.min(args.steps);
        spec.file.train.checkpoint_every = 0;
        spec.file.export.enabled = false;
        spec.file.validate(&spec.origin)?;
        let m = &spec.file.model;
        let mut model = load_model(&m.path, &m.device, dtype, None)?;
        let out = scratch.join(dtype);
        let _ = std::fs::remove_dir_all(&out);
        reset_peak_rss();
        let opts = RunOptions { out_dir: out.clone(), resume: false, stop_after_steps: None, progress: !args.json, model_identity: None };
        Trainer::new(&spec, model.as_mut(), opts)?.run(&mut |_| {})?;
        let peak = peak_rss_mib();
        let log = read_log(&out.join("train_log.jsonl"))?;
        let timed = &log[1..];
        let tok_s = timed.iter().map(|r| r.tokens as f64).sum::<f64>() / timed.iter().map(|r| r.seconds).sum::<f64>();
        let losses: Vec<f64> = log.iter().map(|r| r.loss).collect();
        let vs_first = reference.as_ref().map(|r| {
            r.iter().zip(&losses).map(|(a, b)| ((b - a) / a).abs()).fold(0.0f64, f64::max)
        });
        reference.get_or_insert_with(|| losses.clone());
        let run = serde_json::json!({
            "dtype": dtype,
            "steps": log.len(),
            "tokens_per_step": log[0].tokens,
            "tokens_per_s": tok_s,
            "peak_rss_mib": peak,
            "losses": losses,
            "max_rel_loss_diff_vs_first": vs_first,
        });
        if !args.json {
            println!(
                "{dtype:>5}  {} steps x {} tokens  {tok_s:>7.1} tok/s  peak RSS {:>7.0} MiB  loss {}{}",
                log.len(),
                log[0].tokens,
                peak.unwrap_or(f64::NAN),
                losses.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>().join(" "),
                vs_first.map(|d| format!("  max |loss - {}| / loss = {:.3}%", args.dtypes[0], 100.0 * d)).unwrap_or_default()
            );
        }
        runs.push(run);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    }
    Ok(())
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
    let _no_grad = tch::no_grad_guard();
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
