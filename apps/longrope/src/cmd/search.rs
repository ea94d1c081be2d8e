//! `longrope search --config configs/search/NAME.toml`: search per-dimension RoPE rescale factors
//! (LongRoPE's evolution, or the random and grid baselines at the same budget), checkpointed after every
//! generation and resumable with `--resume`. Flags override the common fields of the file. Outputs (in
//! `--out`): `best_factors.csv`, `rope_scaling.json`, `best_scaling.toml`, `best.json`, `history.jsonl`,
//! `best_curve.csv`, `cost.json`, `checkpoint.json` (see `docs/search.md`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use longrope_search::driver::{Driver, DriverOptions, Outcome};
use longrope_core::eval::EvaluatorConfig;
use longrope_core::files::{prepare_out_dir, OutputKind};
use longrope_core::model::LanguageModel;
use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use longrope_data::corpus::CorpusSet;
use longrope_search::model_fitness::{fitness_evaluator_config, EvaluatorFitness};
use longrope_search::{Evaluation, Fitness, ParallelFitness, SearchFile, SpaceKind, SyntheticFitness};

use super::model::load_model;

/// Arguments of `longrope search`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The search config (TOML; see configs/search/).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Output directory; default `runs/search/<config name>-<strategy>`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the search checkpointed in the output directory (same config and flags).
    #[arg(long)]
    resume: bool,
    /// Run another strategy with the same evaluation budget (`random`, `grid`).
    #[arg(long, value_name = "NAME")]
    strategy: Option<String>,
    /// RNG seed of the strategy.
    #[arg(long)]
    seed: Option<u64>,
    /// Target length L' the fitness is measured at.
    #[arg(long, value_name = "TOKENS")]
    target_length: Option<usize>,
    /// Parallel fitness workers (CUDA devices or CPU threads).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Search space: `dim_mono` or `dim_piece_mono`.
    #[arg(long, value_name = "KIND")]
    space: Option<String>,
    /// `reference` (microsoft/LongRoPE's code: its YaRN seed, 1 + s, its operators) or `paper` (PI/NTK/YaRN seeds,
    /// 1.25 s).
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Largest factor (default 1 + s in reference mode, 1.25 s in paper mode).
    #[arg(long, value_name = "X")]
    max_factor: Option<f64>,
    /// Also search the retained start tokens n_hat.
    #[arg(long)]
    search_n_hat: bool,
    /// Evaluator used as fitness (`ppl`, `needle-ppl` ...).
    #[arg(long, value_name = "NAME")]
    evaluator: Option<String>,
    /// Documents evaluated per candidate.
    #[arg(long, value_name = "N")]
    documents: Option<usize>,
    /// Do not draw a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Fitness: `model` (the evaluator on the model) or `synthetic` (a test function, no model).
    #[arg(long, hide = true, default_value = "model")]
    fitness: String,
    /// Stop cleanly once this many generations are checkpointed (testing resume).
    #[arg(long, hide = true, value_name = "K")]
    stop_after_generations: Option<usize>,
    /// Sleep this long in every synthetic evaluation (testing kill -9 during a search).
    #[arg(long, hide = true, value_name = "MS", default_value_t = 0)]
    synthetic_delay_ms: u64,
}

/// A synthetic fitness that can be slowed down, so a test can kill the process mid-search.
struct SlowSynthetic {
    inner: SyntheticFitness,
    delay: std::time::Duration,
}

impl longrope_search::Fitness for SlowSynthetic {
    fn evaluate(&mut self, batch: &[longrope_core::search::Candidate]) -> longrope_search::Result<Vec<longrope_search::Evaluation>> {
        std::thread::sleep(self.delay * batch.len() as u32);
        self.inner.evaluate(batch)
    }
}

/// Load the file and apply the flags.
fn load(args: &Args) -> Result<SearchFile> {
    let mut file = SearchFile::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    if let Some(s) = args.seed {
        file.seed = s;
    }
    if let Some(t) = args.target_length {
        file.target_length = t;
    }
    if let Some(w) = args.workers {
        file.workers = w;
    }
    if let Some(kind) = &args.space {
        file.space.kind = match kind.as_str() {
            "dim_mono" => SpaceKind::DimMono,
            "dim_piece_mono" => SpaceKind::DimPieceMono,
            other => bail!("--space {other}: expected `dim_mono` or `dim_piece_mono`"),
        };
    }
    if let Some(mode) = &args.mode {
        file.space.mode = serde_json::from_value(serde_json::Value::from(mode.as_str()))
            .with_context(|| format!("--mode {mode}: expected `reference` or `paper`"))?;
    }
    if args.max_factor.is_some() {
        file.space.max_factor = args.max_factor;
    }
    if args.search_n_hat {
        file.space.search_n_hat = true;
    }
    if let Some(e) = &args.evaluator {
        file.fitness.evaluator = e.clone();
    }
    if let Some(d) = args.documents {
        file.fitness.documents = d;
    }
    if let Some(name) = &args.strategy {
        file.switch_strategy(name)?;
    }
    file.validate(&format!("{} (with flags)", args.config.display()))?;
    Ok(file)
}

/// Run `longrope search`.
pub fn run(args: Args) -> Result<()> {
    let file = load(&args)?;
    let strategy_name = serde_json::to_value(&file.strategy)?
        .get("strategy")
        .and_then(|s| s.as_str())
        .unwrap_or("search")
        .to_string();
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.config.file_stem().and_then(|s| s.to_str()).unwrap_or("search");
        PathBuf::from("runs/search").join(format!("{stem}-{strategy_name}"))
    });
    // Before any model is loaded: a writable directory that holds no other command's outputs.
    prepare_out_dir(&out, OutputKind::Search).with_context(|| format!("--out {}", out.display()))?;
    let shape = match args.fitness.as_str() {
        "synthetic" => file.shape().with_context(|| {
            format!("{}: the synthetic fitness needs a [shape] table (head_dim, rope_base, ...)", args.config.display())
        })?,
        "model" => return run_model(&args, file, out, strategy_name),
        other => bail!("--fitness {other}: expected `model` or `synthetic`"),
    };
    let (strategy, ctx) = file
        .build(&shape, &file.registry_seeds(None))
        .with_context(|| format!("building the `{strategy_name}` search from {}", args.config.display()))?;
    let mut meta = file.meta(&shape);
    meta["fitness_kind"] = serde_json::Value::from(args.fitness.clone());
    let delay = std::time::Duration::from_millis(args.synthetic_delay_ms);
    let mut fitness = ParallelFitness::new(file.workers, |_| {
        Ok(SlowSynthetic { inner: SyntheticFitness::new(&shape), delay })
    })?;
    eprintln!(
        "search `{strategy_name}`: {} space, d/2 = {}, s = {}, lambda in [1, {}], budget {} evaluations, {} seed(s), out {}",
        match ctx.space.kind {
            SpaceKind::DimMono => "dim_mono",
            SpaceKind::DimPieceMono => "dim_piece_mono",
        },
        ctx.space.half_dim,
        ctx.space.scale,
        ctx.space.max_factor,
        file.strategy.budget(),
        ctx.seeds.len(),
        out.display()
    );
    let seeds = ctx.seed_candidates()?;
    drive(&args, strategy, &mut fitness, shape, meta, seeds, &out)
}

/// One fitness worker that owns its model (on its own device) and its documents.
struct ModelWorker {
    model: Box<dyn LanguageModel>,
    evaluator: Box<dyn EvaluatorConfig>,
    docs: CorpusSet,
    shape: RopeShape,
}

impl Fitness for ModelWorker {
    fn evaluate(&mut self, batch: &[Candidate]) -> longrope_search::Result<Vec<Evaluation>> {
        // Building an evaluator from its config is cheap; EvaluatorFitness owns the one it uses.
        let evaluator = self.evaluator.build()?;
        EvaluatorFitness::new(self.model.as_ref(), evaluator, &self.docs, self.shape.clone()).evaluate(batch)
    }
}

/// The fitness corpus: every `[fitness] corpus` path (text, JSONL, directories, token stores), tokenized with
/// the model's tokenizer, in order.
fn fitness_docs(file: &SearchFile, tokenizer: &tokenizers::Tokenizer, origin: &std::path::Path) -> Result<CorpusSet> {
    if file.fitness.corpus.is_empty() {
        bail!("{}: [fitness] corpus is empty: name the documents the fitness is measured on", origin.display());
    }
    CorpusSet::open(&file.fitness.corpus, tokenizer).context("[fitness] corpus")
}

/// The search with the model-backed fitness: each worker loads the model once (worker `w` on `cuda:w` when
/// the device is CUDA) and scores candidates with the `[fitness]` evaluator at the target length.
fn run_model(args: &Args, file: SearchFile, out: PathBuf, strategy_name: String) -> Result<()> {
    let section = file
        .model
        .clone()
        .with_context(|| format!("{}: the model fitness needs a [model] table with `path`", args.config.display()))?;
    let dtype = section.dtype.clone().unwrap_or_else(|| "f32".into());
    let device = section.device.clone().unwrap_or_else(|| "cpu".into());
    let device_of = |w: usize| -> String {
        match device.as_str() {
            "auto" if { longrope_core::device::ensure_cuda_loaded(); tch::Cuda::is_available() } => format!("cuda:{w}"),
            "auto" => "cpu".into(),
            "cuda" if file.workers > 1 => format!("cuda:{w}"),
            other => other.to_string(),
        }
    };
    let mut shape = None;
    let mut arch = None;
    let mut fitness = ParallelFitness::new(file.workers, |w| {
        let model = load_model(&section.path, &device_of(w), &dtype, None)
            .map_err(|e| longrope_search::SearchError::Fitness(longrope_core::error::chain_message(e.as_ref())))?;
        let docs = fitness_docs(&file, model.tokenizer(), &args.config)
            .map_err(|e| longrope_search::SearchError::Fitness(longrope_core::error::chain_message(e.as_ref())))?;
        let evaluator = fitness_evaluator_config(&file.fitness, file.target_length)?;
        evaluator.build()?;
        let s = model.summary().rope_shape(file.target_length);
        shape = Some(s.clone());
        arch = Some(model.summary().arch.clone());
        Ok(ModelWorker { model, evaluator, docs, shape: s })
    })?;
    let shape = shape.context("no fitness worker")?;
    let (strategy, ctx) = file
        .build(&shape, &file.registry_seeds(arch.as_deref()))
        .with_context(|| format!("building the `{strategy_name}` search from {}", args.config.display()))?;
    let mut meta = file.meta(&shape);
    meta["fitness_kind"] = serde_json::Value::from("model");
    // What the model and the corpus contain: a resume after either changed is refused (the checkpoint's
    // evaluations measured other inputs). The same identity as the experiment runner's.
    meta["inputs"] = longrope_experiment::identity::inputs(&section.path, &dtype, &device, Some(&file.fitness.corpus))
        .context("fingerprinting the model and the [fitness] corpus")?;
    eprintln!(
        "search `{strategy_name}` on {}: d/2 = {}, s = {}, lambda in [1, {}], budget {} evaluations of {} at {} tokens, out {}",
        section.path.display(),
        ctx.space.half_dim,
        ctx.space.scale,
        ctx.space.max_factor,
        file.strategy.budget(),
        file.fitness.evaluator,
        file.target_length,
        out.display()
    );
    let seeds = ctx.seed_candidates()?;
    drive(args, strategy, &mut fitness, shape, meta, seeds, &out)
}

/// Run the driver with the command's options and report how it ended.
fn drive(
    args: &Args,
    strategy: Box<dyn longrope_core::SearchStrategy>,
    fitness: &mut dyn Fitness,
    shape: RopeShape,
    meta: serde_json::Value,
    seeds: Vec<(String, Candidate)>,
    out: &std::path::Path,
) -> Result<()> {
    let opts = DriverOptions {
        out_dir: out.to_path_buf(),
        resume: args.resume,
        stop_after_generations: args.stop_after_generations,
        progress: !args.no_progress,
    };
    let outcome = Driver::new(strategy, fitness, shape, meta, opts)
        .with_seeds(seeds)
        .run()
        .with_context(|| format!("search into {}", out.display()))?;
    report(outcome, out);
    Ok(())
}

/// Print how a search ended and where its outputs are.
fn report(outcome: Outcome, out: &std::path::Path) {
    match outcome {
        Outcome::Stopped { generation } => {
            println!("stopped after generation {generation}; continue with --resume --out {}", out.display());
        }
        Outcome::Finished(s) => {
            println!("best fitness {} (evaluation {}, generation {})", s.best.fitness, s.best.index, s.best.generation);
            println!(
                "cost: {} evaluations, {} tokens, {:.2} s wall ({} duplicates skipped, {} resumes)",
                s.cost.evaluations, s.cost.tokens, s.cost.wall_seconds, s.cost.duplicates_skipped, s.cost.resumes
            );
            println!(
                "this run: {} evaluated, {} recovered from history.jsonl",
                s.evaluated_now, s.recovered
            );
            let (measured, unmeasured): (Vec<_>, Vec<_>) = s.seeds.iter().partition(|seed| seed.fitness.is_some());
            for seed in measured {
                let f = seed.fitness.unwrap_or(f64::NAN);
                println!(
                    "seed {}: fitness {f} (history index {}); best - seed = {:+.6} ({:+.3}%)",
                    seed.name,
                    seed.index.unwrap_or_default(),
                    s.best.fitness - f,
                    100.0 * (s.best.fitness - f) / f
                );
            }
            if !unmeasured.is_empty() {
                let names: Vec<&str> = unmeasured.iter().map(|seed| seed.name.as_str()).collect();
                println!("seeds not evaluated by this search: {}", names.join(", "));
            }
            println!("results in {}: best_factors.csv, rope_scaling.json, best_scaling.toml, history.jsonl, best_curve.csv, cost.json, seeds.json", out.display());
        }
    }
}
