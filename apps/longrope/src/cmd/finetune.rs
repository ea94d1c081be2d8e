//! `longrope finetune --config configs/finetune/NAME.toml [--out DIR] [--resume]`: fine-tune a model under a
//! scaling method (full or LoRA; PoSE and mixed context windows as options), checkpointing as configured,
//! resumable after a kill, exported at the end as an HF directory (`OUT/model`). Writes `OUT/finetune.json`
//! (what was trained on what), `OUT/train_log.jsonl` (one line per step), `OUT/summary.json` and a loss plot
//! (`OUT/loss.png`, `.svg`). See `docs/training.md`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use longrope_core::device::{parse_device, parse_dtype};
use longrope_core::model::LoadOptions;
use longrope_train::trainer::{read_log, Finetune, Outcome, RunOptions, Trainer};

/// Arguments of `longrope finetune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The fine-tune config (TOML; see configs/finetune/).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Output directory; default `runs/finetune/<config name>`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue from the newest checkpoint in the output directory (same config, model and data).
    #[arg(long)]
    resume: bool,
    /// Stop cleanly after this many steps (a checkpoint is written); `--resume` continues.
    #[arg(long, value_name = "N")]
    stop_after_steps: Option<usize>,
    /// Validate the config, the model, the data and the method, print the plan, and exit without training.
    #[arg(long)]
    check: bool,
    /// Do not draw a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Print the summary as one JSON document on stdout.
    #[arg(long)]
    json: bool,
}

/// Run `longrope finetune`.
pub fn run(args: Args) -> Result<()> {
    let spec = Finetune::load(&args.config)?;
    let stem = args.config.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "finetune".into());
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/finetune").join(stem));
    if !args.check {
        // Before the model is loaded: writable, and not another command's output directory.
        longrope_core::files::prepare_out_dir(&out, longrope_core::files::OutputKind::Finetune)
            .with_context(|| format!("--out {}", out.display()))?;
    }
    let m = &spec.file.model;
    let options = LoadOptions { device: parse_device(&m.device)?, dtype: parse_dtype(&m.dtype)?, sliding_window: None };
    let mut model = longrope_models::load(&m.path, &options).with_context(|| format!("loading model {}", m.path.display()))?;
    let identity = longrope_experiment::identity::model_content(&m.path).with_context(|| format!("hashing {}", m.path.display()))?;
    let opts = RunOptions {
        out_dir: out.clone(),
        resume: args.resume,
        stop_after_steps: args.stop_after_steps,
        progress: !args.no_progress && !args.json,
        model_identity: Some(identity),
    };
    if args.check {
        let dir = tempfile_dir(&out)?;
        let trainer = Trainer::new(&spec, model.as_mut(), RunOptions { out_dir: dir.clone(), resume: false, ..opts })?;
        let manifest = serde_json::to_string_pretty(trainer.manifest())?;
        drop(trainer);
        let _ = std::fs::remove_dir_all(&dir);
        println!("{manifest}");
        eprintln!("{}: valid (nothing trained)", args.config.display());
        return Ok(());
    }
    let trainer = Trainer::new(&spec, model.as_mut(), opts).with_context(|| format!("setting up {}", args.config.display()))?;
    let outcome = trainer.run(&mut |line| eprintln!("{line}"))?;
    let records = read_log(&out.join("train_log.jsonl"))?;
    let series = vec![(spec.scaling_toml().lines().next().unwrap_or("loss").to_string(), records.iter().map(|r| (r.tokens_seen as f64, r.loss)).collect())];
    if let Err(e) = longrope_experiment::plots::loss_curve(&out.join("loss"), &format!("fine-tune loss: {}", args.config.display()), &series) {
        eprintln!("warning: loss plot not written: {e}");
    }
    match outcome {
        Outcome::Stopped { step } => {
            eprintln!("stopped at step {step}; continue with: longrope finetune --config {} --out {} --resume", args.config.display(), out.display());
        }
        Outcome::Finished(summary) => {
            let json = serde_json::to_string_pretty(&summary)?;
            longrope_core::files::write_atomic(&out.join("summary.json"), json.as_bytes())?;
            if args.json {
                println!("{json}");
            } else {
                println!(
                    "{} steps, {} tokens, {:.1} s ({:.0} tokens/s); loss {:.4} -> {:.4}; peak RSS {} MiB{}",
                    summary.steps,
                    summary.tokens,
                    summary.wall_seconds,
                    summary.tokens as f64 / summary.wall_seconds.max(1e-9),
                    summary.first_loss,
                    summary.last_loss,
                    summary.peak_rss_mib.map(|v| format!("{v:.0}")).unwrap_or_else(|| "?".into()),
                    summary.export_dir.map(|d| format!("; model in {}", d.display())).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// A scratch directory beside `out` for `--check` (the real output directory is left untouched).
fn tempfile_dir(out: &std::path::Path) -> Result<PathBuf> {
    let dir = out.with_extension(format!("check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
