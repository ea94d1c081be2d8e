//! `longrope ppl`, `longrope passkey`, `longrope eval`: evaluators x lengths on one loaded model.
//!
//! The scaling tables follow each evaluated length (dynamic methods and short/long switching recompute them);
//! the target context `L'` of the scaling defaults to the longest length (at least the trained context), so a
//! plugin name means "extend to the longest length asked for". Results are printed (text or one JSON document)
//! and written after every length to `OUT/results.json` and `OUT/results.csv` (atomically), so an error later
//! loses nothing. `OUT` is checked before the model is loaded (writable, not another command's output); the
//! results of an earlier run found there are kept as `results-N.json` / `results-N.csv` when this run writes
//! its first result, and a run that computes nothing writes nothing. The header records the content identity
//! of the model and the corpus (`inputs`, SHA-256 of their files).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use longrope_core::eval::{parse_evaluator_toml, EvaluatorConfig, Score};
use longrope_core::files::{prepare_out_dir, OutputKind};
use longrope_core::limits;
use longrope_data::corpus::{Corpus, TokenDocs};
use longrope_eval::passkey::PasskeyConfig;
use longrope_eval::ppl::PplConfig;
use longrope_eval::needle::NeedleConfig;

use super::model::{load_model, schedule};

/// Arguments shared by `ppl`, `passkey` and `eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `.gguf` file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// Corpus: a text file, a directory of them, JSONL (`text` field) or a token store (`longrope tokenize`).
    /// Not needed by `passkey`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// RoPE scaling: a plugin name or a TOML file, replacing the checkpoint's own method if it has one; `checkpoint`
    /// for the checkpoint's own (its `rope_scaling`); default: the checkpoint's own, else `none` (the model's RoPE).
    #[arg(long)]
    scaling: Option<String>,
    /// Target context `L'` of the scaling (default: the longest length, at least the trained context).
    #[arg(long)]
    target: Option<usize>,
    /// Context lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    lengths: Vec<usize>,
    /// Documents (ppl, needle-ppl) or samples (passkey) per length.
    #[arg(long)]
    samples: Option<usize>,
    /// Seed (passkey keys and depths; needle-ppl; document shuffling for ppl when given).
    #[arg(long)]
    seed: Option<u64>,
    /// ppl: one window of the first N tokens per document.
    #[arg(long)]
    truncate: bool,
    /// ppl: stride between windows.
    #[arg(long)]
    sliding_window: Option<usize>,
    /// ppl: the reference reads at most max_sliding_count * sliding_window tokens per document (`--windows
    /// full`: at most this many windows).
    #[arg(long)]
    max_sliding_count: Option<usize>,
    /// ppl: skip documents with fewer tokens (the reference's --dataset-min-tokens; default: keep all). One
    /// value for every length, so every length is measured on the same documents.
    #[arg(long)]
    dataset_min_tokens: Option<usize>,
    /// ppl: `reference` (default: the last window ends at the token budget or the document's end), `full`
    /// (only full windows) or `chunks` (llama.cpp's llama-perplexity: non-overlapping chunks, second half scored).
    #[arg(long, value_name = "RULE")]
    windows: Option<String>,
    /// ppl: `reference` (default: --dataset-min-tokens, the same documents at every length) or `per-length`
    /// (documents holding a full window at each length).
    #[arg(long, value_name = "RULE")]
    selection: Option<String>,
    /// passkey: `reference` (default: int(3.65 L) characters of garbage, Python's random seeded 42, 10 new tokens)
    /// or `tokens` (prompts filled to L tokens).
    #[arg(long, value_name = "MODE")]
    passkey_mode: Option<String>,
    /// passkey: new tokens per sample (default 10 in reference mode).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// passkey: depths of the key in [0, 1], comma-separated (default: random per sample).
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<f64>>,
    /// Prepend BOS (true/false; default: when the model has a BOS token).
    #[arg(long)]
    add_bos: Option<bool>,
    /// eval: evaluators by name (ppl, passkey, needle-ppl) or TOML files, comma-separated.
    #[arg(long, value_delimiter = ',')]
    evaluators: Vec<String>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Directory for results.json and results.csv (default: runs/<command>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// Which command is running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Which {
    /// `longrope ppl`.
    Ppl,
    /// `longrope passkey`.
    Passkey,
    /// `longrope eval`.
    Eval,
}

/// A config enum from its TOML spelling (`per-length` is also accepted for `per_length`); the error lists the
/// accepted values.
fn parse_choice<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::from(value.replace('-', "_"))).map_err(|e| anyhow::anyhow!("{flag} {value}: {e}"))
}

fn evaluator_config(name: &str, args: &Args) -> Result<Box<dyn EvaluatorConfig>> {
    // A built-in name is never read as a file (a file named `ppl` in the working directory is not a config).
    let builtin = matches!(name, "ppl" | "passkey" | "needle-ppl");
    if !builtin && (name.ends_with(".toml") || Path::new(name).is_file()) {
        let text = longrope_core::files::read_text(Path::new(name), longrope_core::files::MAX_CONFIG_BYTES)?;
        return Ok(parse_evaluator_toml(&text, name)?);
    }
    Ok(match name {
        "ppl" => {
            let mut c = PplConfig::default();
            c.truncate = args.truncate;
            c.sliding_window = args.sliding_window.unwrap_or(c.sliding_window);
            c.max_sliding_count = args.max_sliding_count.unwrap_or(c.max_sliding_count);
            c.samples = args.samples.unwrap_or(c.samples);
            c.shuffle_seed = args.seed;
            c.add_bos = args.add_bos;
            c.dataset_min_tokens = args.dataset_min_tokens;
            if let Some(w) = &args.windows {
                c.windows = parse_choice("--windows", w)?;
            }
            if let Some(s) = &args.selection {
                c.selection = parse_choice("--selection", s)?;
            }
            Box::new(c)
        }
        "passkey" => {
            let mut c = PasskeyConfig::default();
            c.samples = args.samples.unwrap_or(c.samples);
            c.seed = args.seed.or(c.seed);
            c.depths = args.depths.clone();
            c.add_bos = args.add_bos;
            c.max_new_tokens = args.max_new_tokens;
            if let Some(m) = &args.passkey_mode {
                c.mode = parse_choice("--passkey-mode", m)?;
            }
            Box::new(c)
        }
        "needle-ppl" => {
            let mut c = NeedleConfig::default();
            c.samples = args.samples.unwrap_or(c.samples);
            c.seed = args.seed.unwrap_or(c.seed);
            c.add_bos = args.add_bos;
            Box::new(c)
        }
        other => {
            // Goes through the registry so the error lists the known evaluators.
            longrope_core::registry::require(longrope_core::PluginKind::Evaluator, other)?;
            bail!("evaluator `{other}` takes its settings from a TOML file: pass `--evaluators FILE.toml`")
        }
    })
}

/// One score as the JSON/CSV outputs show it.
fn score_json(s: &Score) -> serde_json::Value {
    let items_key = if s.evaluator == "passkey" { "per_sample" } else { "per_document" };
    let mut v = serde_json::json!({
        "evaluator": s.evaluator,
        "length": s.length,
        "metric": s.metric,
        items_key: s.per_item.iter().map(|i| serde_json::json!({"name": i.name, s.metric.clone(): i.value})).collect::<Vec<_>>(),
        "tokens": s.tokens,
        "seconds": s.seconds,
    });
    v[s.metric.as_str()] = serde_json::json!(s.value);
    if !s.details.is_null() {
        v["details"] = s.details.clone();
    }
    v
}

/// Move an earlier run's `results.json` / `results.csv` in `out` aside to the first free `results-N.*`, so that
/// this run's results never replace them. Returns the names they were kept under.
fn keep_earlier_results(out: &Path) -> Result<Option<String>> {
    let (json, csv) = (out.join("results.json"), out.join("results.csv"));
    if !json.exists() && !csv.exists() {
        return Ok(None);
    }
    let n = (1..).find(|n| !out.join(format!("results-{n}.json")).exists() && !out.join(format!("results-{n}.csv")).exists()).unwrap_or(1);
    let mut kept = Vec::new();
    for (from, ext) in [(json, "json"), (csv, "csv")] {
        if from.exists() {
            let to = out.join(format!("results-{n}.{ext}"));
            std::fs::rename(&from, &to).with_context(|| format!("keeping the earlier {} as {}", from.display(), to.display()))?;
            kept.push(to.display().to_string());
        }
    }
    Ok(Some(kept.join(", ")))
}

/// Write `results.json` and `results.csv` of the scores so far, each atomically.
fn write_outputs(out: &Path, header: &serde_json::Value, scores: &[Score]) -> Result<()> {
    let mut doc = header.clone();
    doc["results"] = scores.iter().map(score_json).collect();
    longrope_core::files::write_atomic(&out.join("results.json"), serde_json::to_string_pretty(&doc)?.as_bytes())?;
    let mut csv = String::from("evaluator,length,metric,value,tokens,seconds\n");
    for s in scores {
        csv.push_str(&format!("{},{},{},{},{},{:.3}\n", s.evaluator, s.length, s.metric, s.value, s.tokens, s.seconds));
    }
    longrope_core::files::write_atomic(&out.join("results.csv"), csv.as_bytes())?;
    Ok(())
}

/// Run `ppl`, `passkey` or `eval`.
pub fn run(which: Which, args: Args) -> Result<()> {
    let names: Vec<String> = match which {
        Which::Ppl => vec!["ppl".into()],
        Which::Passkey => vec!["passkey".into()],
        Which::Eval if args.evaluators.is_empty() => bail!("--evaluators is required (e.g. ppl,passkey)"),
        Which::Eval => args.evaluators.clone(),
    };
    let mut evaluators = Vec::new();
    for n in &names {
        let config = evaluator_config(n, &args)?;
        evaluators.push((n.clone(), config.build().with_context(|| format!("evaluator {n}"))?));
    }
    for &l in &args.lengths {
        limits::context("--lengths", l, limits::MIN_EVAL_LENGTH)?;
    }
    limits::distinct("--lengths", &args.lengths)?;
    if let Some(t) = args.target {
        limits::context("--target", t, 1)?;
    }
    let needs_data = names.iter().any(|n| n != "passkey");
    if needs_data && args.data.is_none() {
        bail!("--data is required for {}", names.join(", "));
    }
    let command = match which {
        Which::Ppl => "ppl",
        Which::Passkey => "passkey",
        Which::Eval => "eval",
    };
    // Before any work: the output directory must be writable and not hold another command's outputs.
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(command));
    prepare_out_dir(&out, OutputKind::Evaluation).with_context(|| format!("--out {}", out.display()))?;
    let data_paths: Option<Vec<PathBuf>> = if needs_data { args.data.clone().map(|d| vec![d]) } else { None };
    let inputs = longrope_experiment::identity::inputs(&args.model, &args.dtype, &args.device, data_paths.as_deref())
        .context("fingerprinting the model and data")?;
    let model = load_model(&args.model, &args.device, &args.dtype, None)?;
    let trained = model.summary().original_context();
    let longest = args.lengths.iter().copied().max().unwrap_or(trained);
    let target = args.target.unwrap_or(longest.max(trained));
    let schedule = schedule(model.summary(), args.scaling.as_deref(), Some(target))?;
    // The tables of every length are checked now, before any compute (a dynamic plugin's fields are only
    // known to it; an out-of-range table names the --scaling file here).
    for &length in &args.lengths {
        schedule.tables(length).with_context(|| format!("--scaling {} at {length} tokens", args.scaling.as_deref().unwrap_or("none")))?;
    }
    let corpus = match &args.data {
        Some(d) => Some(Corpus::open(d, model.tokenizer()).with_context(|| format!("--data {}", d.display()))?),
        None => None,
    };
    let empty = TokenDocs::default();
    let source = corpus.as_ref().map(|c| c.source()).unwrap_or(&empty);
    let header = serde_json::json!({
        "command": command,
        "model": args.model.display().to_string(),
        "data": args.data.as_ref().map(|d| d.display().to_string()),
        "scaling": schedule.method.name(),
        "scaling_params": schedule.method.params(),
        "original_max_position_embeddings": trained,
        "target": target,
        "dtype": args.dtype,
        "device": args.device,
        "inputs": inputs,
    });
    let mut scores: Vec<Score> = Vec::new();
    // Writes happen only once there is a result: a run that fails before its first result leaves `out` as it
    // was; the first write keeps an earlier run's results aside.
    let mut first_write = true;
    let mut save = |scores: &[Score]| -> Result<()> {
        if first_write {
            first_write = false;
            if let Some(kept) = keep_earlier_results(&out)? {
                eprintln!("earlier results in {} kept as {kept}", out.display());
            }
        }
        write_outputs(&out, &header, scores)
    };
    for (name, evaluator) in &evaluators {
        for &length in &args.lengths {
            // Every result so far was written when it was computed.
            let done = scores.len();
            let score = evaluator.evaluate(model.as_ref(), &schedule, length, source).with_context(|| {
                if done == 0 {
                    format!("{name} at {length} tokens (nothing written to {})", out.display())
                } else {
                    format!("{name} at {length} tokens (the {done} results so far are in {}/results.json)", out.display())
                }
            })?;
            for w in score.details.get("warnings").and_then(|w| w.as_array()).into_iter().flatten() {
                eprintln!("warning: {name} at {length} tokens: {}", w.as_str().unwrap_or_default());
            }
            if !args.json {
                println!(
                    "{:<11} {:>7} tokens  {} = {:.4}   ({} tokens in {:.1} s)",
                    name, length, score.metric, score.value, score.tokens, score.seconds
                );
            }
            scores.push(score);
            save(&scores)?;
        }
    }
    drop(save);
    if args.json {
        let mut doc = header;
        doc["results"] = scores.iter().map(score_json).collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("results: {}/results.json, {}/results.csv", out.display(), out.display());
    }
    Ok(())
}
