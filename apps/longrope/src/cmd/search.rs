//! `longrope search --config configs/search/NAME.toml`: search per-dimension RoPE rescale factors
//! (LongRoPE's evolution, or the random and grid baselines at the same budget), checkpointed after every
//! generation and resumable with `--resume`. Flags override the common fields of the file. Outputs (in
//! `--out`): `best_factors.csv`, `rope_scaling.json`, `best_scaling.toml`, `best.json`, `history.jsonl`,
//! `best_curve.csv`, `cost.json`, `checkpoint.json` (see `docs/search.md`).
//!
//! With `--storage URL --study NAME` the search is a study in a database (SQLite or PostgreSQL) that
//! `longrope worker` processes on any machine evaluate too; `--out` then receives the exported results when
//! it finishes (see `docs/distributed.md`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use longrope_search::driver::{Driver, DriverOptions, Outcome, StudyTarget};
use longrope_storage::StudySettings;
use longrope_core::files::{prepare_out_dir, OutputKind};
use longrope_core::model::LanguageModel;
use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use longrope_data::corpus::CorpusSet;
use longrope_search::config::FitnessSection;
use longrope_search::model_fitness::EvaluatorFitness;
use longrope_search::{Evaluation, Fitness, NoFitness, ParallelFitness, Race, Racing, SearchFile, SpaceKind, SyntheticFitness};

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
    /// Keep the search in a database shared with `longrope worker` processes: `sqlite:PATH` (one machine) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (several); `--out` then receives the exported results.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// The study's name in `--storage`: created, or joined when it exists with the same config and inputs.
    #[arg(long, value_name = "NAME")]
    study: Option<String>,
    /// Seconds without a heartbeat after which a running trial is taken from its worker and re-queued (fixed
    /// when the study is created).
    #[arg(long, value_name = "S", default_value_t = 60.0)]
    grace_seconds: f64,
    /// Attempts a trial gets (errors, lost workers) before it fails for good (fixed when the study is created).
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_attempts: u32,
    /// Create (or join) the study, propose its first generation and exit: `longrope worker` processes finish
    /// it (`longrope study export` writes the results).
    #[arg(long)]
    detach: bool,
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
    fn evaluate(&mut self, batch: &[Candidate]) -> longrope_search::Result<Vec<Evaluation>> {
        std::thread::sleep(self.delay * batch.len() as u32);
        self.inner.evaluate(batch)
    }

    fn racing(&self) -> Racing {
        self.inner.racing()
    }

    fn evaluate_raced(&mut self, batch: &[Candidate], race: &Race) -> longrope_search::Result<Vec<Evaluation>> {
        let evals = self.inner.evaluate_raced(batch, race)?;
        // The delay stands for the documents actually read.
        let read: f64 = evals.iter().map(|e| e.raced.as_ref().map_or(1.0, |r| r.scored as f64 / r.of as f64)).sum();
        std::thread::sleep(self.delay.mul_f64(read));
        Ok(evals)
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
        // `--workers 0` (only with --storage): this process coordinates and evaluates nothing.
        file.workers = w.max(1);
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

/// How many fitness workers this process runs (0: it only coordinates a database study).
fn local_workers(args: &Args, file: &SearchFile) -> usize {
    if args.workers == Some(0) { 0 } else { file.workers }
}

/// Check the database flags; with `--storage`, make the model and corpus paths absolute so that workers
/// started elsewhere on a shared file system find them.
fn check_storage_flags(args: &Args, file: &mut SearchFile) -> Result<()> {
    match &args.storage {
        None => {
            if args.study.is_some() || args.detach || args.workers == Some(0) {
                bail!("--study, --detach and --workers 0 need --storage URL (a database shared with `longrope worker`)");
            }
            Ok(())
        }
        Some(_) => {
            if args.study.as_deref().is_none_or(|s| s.trim().is_empty()) {
                bail!("--storage needs --study NAME (the study to create or join)");
            }
            if args.resume {
                bail!("--resume is for --out directories: with --storage, running the same command again joins the study");
            }
            if !(args.grace_seconds.is_finite() && args.grace_seconds > 0.0) {
                bail!("--grace-seconds {}: must be positive", args.grace_seconds);
            }
            if args.max_attempts == 0 {
                bail!("--max-attempts 0: a trial needs at least one attempt");
            }
            let absolute = |p: &std::path::Path| std::fs::canonicalize(p).with_context(|| format!("{}", p.display()));
            if let Some(m) = &mut file.model {
                if args.fitness == "model" {
                    m.path = absolute(&m.path)?;
                }
            }
            if args.fitness == "model" {
                for c in &mut file.fitness.corpus {
                    *c = absolute(c)?;
                }
            }
            Ok(())
        }
    }
}

/// Run `longrope search`.
pub fn run(args: Args) -> Result<()> {
    let mut file = load(&args)?;
    check_storage_flags(&args, &mut file)?;
    let strategy_name = serde_json::to_value(&file.strategy)?
        .get("strategy")
        .and_then(|s| s.as_str())
        .unwrap_or("search")
        .to_string();
    let out = args.out.clone().unwrap_or_else(|| match &args.study {
        Some(study) => PathBuf::from("runs/search").join(longrope_experiment::runner::file_stem(study)),
        None => {
            let stem = args.config.file_stem().and_then(|s| s.to_str()).unwrap_or("search");
            PathBuf::from("runs/search").join(format!("{stem}-{strategy_name}"))
        }
    });
    // Before any model is loaded: a writable directory that holds no other command's outputs, and a storage
    // that can be reached.
    prepare_out_dir(&out, OutputKind::Search).with_context(|| format!("--out {}", out.display()))?;
    if let Some(url) = &args.storage {
        longrope_storage::open(url).context("--storage")?;
    }
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
    let mut parallel;
    let mut none = NoFitness;
    let fitness: &mut dyn Fitness = if local_workers(&args, &file) == 0 {
        &mut none
    } else {
        parallel = ParallelFitness::new(file.workers, |_| Ok(SlowSynthetic {
            inner: SyntheticFitness::new(&shape).with_documents(file.fitness.documents, file.fitness.racing),
            delay,
        }))?;
        &mut parallel
    };
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
    let derived = SearchFile::study_derived(&ctx);
    drive(&args, strategy, fitness, shape, meta, seeds, derived, &out)
}

/// One fitness worker that owns its model (on its own device) and its documents.
struct ModelWorker {
    model: Box<dyn LanguageModel>,
    fitness: FitnessSection,
    docs: CorpusSet,
    shape: RopeShape,
}

impl ModelWorker {
    /// The worker's [`EvaluatorFitness`] (building an evaluator from its config is cheap).
    fn fitness(&self) -> longrope_search::Result<EvaluatorFitness<'_>> {
        EvaluatorFitness::from_section(self.model.as_ref(), &self.docs, &self.fitness, self.shape.clone())
    }
}

impl Fitness for ModelWorker {
    fn evaluate(&mut self, batch: &[Candidate]) -> longrope_search::Result<Vec<Evaluation>> {
        self.fitness()?.evaluate(batch)
    }

    fn racing(&self) -> Racing {
        self.fitness.racing
    }

    fn evaluate_raced(&mut self, batch: &[Candidate], race: &Race) -> longrope_search::Result<Vec<Evaluation>> {
        self.fitness()?.evaluate_raced(batch, race)
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
    if local_workers(args, &file) == 0 {
        // Coordinating only: the model is read for its shape and architecture, then dropped.
        let model = load_model(&section.path, &device_of(0), &dtype, None)?;
        shape = Some(model.summary().rope_shape(file.target_length));
        arch = Some(model.summary().arch.clone());
    }
    let mut parallel = None;
    let mut none = NoFitness;
    if local_workers(args, &file) > 0 {
        parallel = Some(ParallelFitness::new(file.workers, |w| {
        let model = load_model(&section.path, &device_of(w), &dtype, None)
            .map_err(|e| longrope_search::SearchError::Fitness(longrope_core::error::chain_message(e.as_ref())))?;
        let docs = fitness_docs(&file, model.tokenizer(), &args.config)
            .map_err(|e| longrope_search::SearchError::Fitness(longrope_core::error::chain_message(e.as_ref())))?;
        let s = model.summary().rope_shape(file.target_length);
        shape = Some(s.clone());
        arch = Some(model.summary().arch.clone());
        let worker = ModelWorker { model, fitness: file.fitness.clone(), docs, shape: s };
        worker.fitness()?; // the evaluator and its racing, checked before the search starts
        Ok(worker)
    })?);
    }
    let fitness: &mut dyn Fitness = match &mut parallel {
        Some(p) => p,
        None => &mut none,
    };
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
    let derived = SearchFile::study_derived(&ctx);
    drive(args, strategy, fitness, shape, meta, seeds, derived, &out)
}

/// Run the driver with the command's options and report how it ended.
#[allow(clippy::too_many_arguments)]
fn drive(
    args: &Args,
    strategy: Box<dyn longrope_core::SearchStrategy>,
    fitness: &mut dyn Fitness,
    shape: RopeShape,
    meta: serde_json::Value,
    seeds: Vec<(String, Candidate)>,
    derived: serde_json::Value,
    out: &std::path::Path,
) -> Result<()> {
    let opts = DriverOptions {
        out_dir: out.to_path_buf(),
        resume: args.resume,
        stop_after_generations: args.stop_after_generations,
        progress: !args.no_progress,
        detach: args.detach,
    };
    let mut driver = Driver::new(strategy, fitness, shape, meta, opts).with_seeds(seeds);
    let target = match (&args.storage, &args.study) {
        (Some(url), Some(study)) => {
            let storage = longrope_storage::open(url).context("--storage")?;
            let settings = StudySettings { grace_seconds: args.grace_seconds, max_attempts: args.max_attempts };
            let location = format!("study `{study}` in {}", storage.location());
            driver = driver.with_storage(StudyTarget { storage, name: study.clone(), settings }, derived);
            Some(location)
        }
        _ => None,
    };
    let outcome = driver.run().with_context(|| match &target {
        Some(t) => t.clone(),
        None => format!("search into {}", out.display()),
    })?;
    report(outcome, out, target.as_deref());
    Ok(())
}

/// Print how a search ended and where its outputs are.
fn report(outcome: Outcome, out: &std::path::Path, study: Option<&str>) {
    match outcome {
        Outcome::Stopped { generation } => match study {
            Some(s) => println!("{s}: stopped after generation {generation}; run the command again (or `longrope worker`) to continue"),
            None => println!("stopped after generation {generation}; continue with --resume --out {}", out.display()),
        },
        Outcome::Detached { generation } => {
            println!(
                "{}: generation {generation} is waiting for workers; run `longrope worker --storage URL` on any machine, \
                 then `longrope study export`",
                study.unwrap_or("the study")
            );
        }
        Outcome::Finished(s) => {
            println!("best fitness {} (evaluation {}, generation {})", s.best.fitness, s.best.index, s.best.generation);
            println!(
                "cost: {} evaluations, {} tokens, {:.2} s wall ({} duplicates skipped, {} resumes)",
                s.cost.evaluations, s.cost.tokens, s.cost.wall_seconds, s.cost.duplicates_skipped, s.cost.resumes
            );
            if s.cost.raced > 0 {
                println!("racing: {} of {} evaluations stopped early (docs/search.md)", s.cost.raced, s.cost.evaluations);
            }
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
            if let Some(s) = study {
                println!("{s}: finished; exported to {}", out.display());
            }
            println!("results in {}: best_factors.csv, rope_scaling.json, best_scaling.toml, history.jsonl, best_curve.csv, cost.json, seeds.json", out.display());
        }
    }
}
