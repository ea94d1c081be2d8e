//! The training loop: a validated [`Finetune`] and a loaded model become a [`Trainer`], which runs optimizer
//! steps (micro-batches with gradient accumulation, clipping, AdamW on f32 master weights, the schedule),
//! appends one JSON line per step to `OUT/train_log.jsonl`, checkpoints every `train.checkpoint_every` steps,
//! resumes exactly, and exports the HF directory `OUT/model` at the end.
//!
//! Mixed precision: with `model.dtype = "bf16"` the model computes in bf16 (norms, RoPE tables, softmax and the
//! loss in f32; on CPU also RoPE, attention and the LM-head logits: `longrope_core::device::upcast_kind`) while the trainer keeps f32 master weights and f32 optimizer state, copying the masters into
//! the bf16 weights after each step. The same mechanism runs on CPU and CUDA (tch's `autocast` only offers
//! f16 on CUDA, which would need loss scaling). With `f32` the weights are their own masters.
//!
//! Determinism: the window order, PoSE positions, LoRA initialisation and dropout are functions of
//! `data.seed` and the step, and the checkpoint holds the exact f32 weights and moments, so on CPU in f32 a
//! run stopped at a checkpoint and resumed gives the same loss curve bit for bit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use longrope_core::model::{Decoder, LanguageModel};
use longrope_core::scaling::{load_scaling_config, parse_scaling_toml, LayerTables, RopeSchedule, ScalingConfig};
use longrope_core::{RopeShape, RopeTables};
use longrope_data::corpus::CorpusSet;
use longrope_data::windows::{MicroBatch, Mixed, PackedCorpus, PackedDoc, Pose, WindowPlan};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::config::{FinetuneFile, ScalingSpec};
use crate::error::{Result, TrainError};
use crate::grad::{self, BackwardOptions, Inputs};
use crate::optim::{self, AdamW};
use crate::{export, fsio, lora};

/// A fine-tune file read, paths resolved, every field validated, the scaling config parsed.
#[derive(Debug)]
pub struct Finetune {
    /// The file, with absolute paths.
    pub file: FinetuneFile,
    /// Where it came from (a path, or `EXPERIMENT [[finetune]] NAME`), for errors.
    pub origin: String,
    /// The scaling method trained under.
    pub scaling: Box<dyn ScalingConfig>,
}

impl Finetune {
    /// Read, resolve and validate `configs/finetune/NAME.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let file = FinetuneFile::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, &path.display().to_string(), base)
    }

    /// Resolve `file`'s paths against `base`, validate it, parse its scaling.
    pub fn from_file(mut file: FinetuneFile, origin: &str, base: &Path) -> Result<Self> {
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        file.resolve_paths(&base);
        file.validate(origin)?;
        let scaling = match &file.scaling {
            ScalingSpec::Name(spec) => load_scaling_config(spec),
            ScalingSpec::Table(t) => {
                let text = toml::to_string(t).map_err(|e| TrainError::config(origin, "scaling", e.to_string()))?;
                parse_scaling_toml(&text, &format!("{origin} [scaling]")).map(|mut c| {
                    c.resolve_relative_paths(&base);
                    c
                })
            }
        }
        .map_err(|e| TrainError::config(origin, "scaling", e.to_string()))?;
        Ok(Finetune { file, origin: origin.to_string(), scaling })
    }

    /// The compute dtype the model must be loaded in.
    pub fn compute_dtype(&self) -> Kind {
        if self.file.model.dtype == "bf16" {
            Kind::BFloat16
        } else {
            Kind::Float
        }
    }

    /// The scaling config as a TOML document (what `OUT/model/longrope_scaling.toml` holds).
    pub fn scaling_toml(&self) -> String {
        toml::to_string(&self.scaling).unwrap_or_else(|e| format!("# the scaling config does not serialize: {e}\n"))
    }
}

/// How a run is driven.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// Output directory (checkpoints, log, manifest, exported model).
    pub out_dir: PathBuf,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// Stop cleanly after this many steps of this invocation (tests; splitting a run into jobs).
    pub stop_after_steps: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// The content identity of the base model (digests of its files, as the experiment runner and
    /// `longrope search` compute it), so a resume on a model overwritten in place is refused. `None` falls
    /// back to the model file's path, size and modification time.
    pub model_identity: Option<serde_json::Value>,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Optimizer step (1-based).
    pub step: usize,
    /// Mean next-token NLL of the step's tokens (nats).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens in the step.
    pub tokens: usize,
    /// Tokens trained on so far.
    pub tokens_seen: u64,
    /// Wall time of the step (s).
    pub seconds: f64,
    /// Throughput of the step.
    pub tokens_per_s: f64,
    /// Tokens of the step trained as short windows with the original RoPE (mixed context windows).
    pub short_tokens: usize,
}

/// `OUT/finetune.json`: what was trained, on what, under which method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The resolved fine-tune file.
    pub config: serde_json::Value,
    /// Hash of everything that determines the loss curve.
    pub config_hash: String,
    /// The model.
    pub model: longrope_core::model::ModelSummary,
    /// The RoPE shape trained for.
    pub shape: RopeShape,
    /// The scaling method and its resolved parameters.
    pub scaling: String,
    /// Its parameters.
    pub scaling_params: serde_json::Value,
    /// The training documents (name, tokens, SHA-256 of their ids).
    pub train_docs: Vec<PackedDoc>,
    /// Held-out documents found in the data and left out.
    pub held_out: Vec<String>,
    /// Windows per epoch.
    pub windows_per_epoch: usize,
    /// Trainable weights: count of tensors and of values.
    pub trainable_tensors: usize,
    /// Number of trainable values.
    pub trainable_values: i64,
    /// Tokens one optimizer step trains on.
    pub tokens_per_step: usize,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every step is done (and the model exported when enabled).
    Finished(Summary),
    /// Stopped by [`RunOptions::stop_after_steps`] after this step (a checkpoint was written).
    Stopped {
        /// Steps completed in all.
        step: usize,
    },
}

/// A finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Optimizer steps.
    pub steps: usize,
    /// Tokens trained on.
    pub tokens: u64,
    /// Wall time of the whole run, interrupted attempts included up to their last checkpoint (s).
    pub wall_seconds: f64,
    /// Mean loss of the first and last steps.
    pub first_loss: f64,
    /// Mean loss of the last step.
    pub last_loss: f64,
    /// Peak resident memory of this process (MiB), when readable.
    pub peak_rss_mib: Option<f64>,
    /// The exported HF directory.
    pub export_dir: Option<PathBuf>,
}

/// A trainable weight: the model's tensor and, in mixed precision, its f32 master.
struct Param {
    name: String,
    compute: Tensor,
    master: Option<Tensor>,
    decay: bool,
}

impl Param {
    fn master(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.compute)
    }
}

/// A model bound to a fine-tune: data, tables, trainable weights, optimizer, position in the run.
pub struct Trainer<'m> {
    spec: &'m Finetune,
    model: &'m mut dyn LanguageModel,
    schedule: RopeSchedule,
    plan: WindowPlan,
    long_tables: LayerTables,
    short_tables: LayerTables,
    params: Vec<Param>,
    optim: AdamW,
    state: TrainState,
    manifest: Manifest,
    log_path: PathBuf,
    ckpt_dir: PathBuf,
    opts: RunOptions,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<'m> Trainer<'m> {
    /// Bind `model` (loaded in [`Finetune::compute_dtype`]) to `spec`: check the scaling against the model
    /// (and that it can be exported), read and pack the data, attach LoRA, choose the trainable weights, set
    /// up the optimizer, and prepare `opts.out_dir` (refusing one that holds another run unless resuming).
    /// Nothing is trained yet.
    pub fn new(spec: &'m Finetune, model: &'m mut dyn LanguageModel, opts: RunOptions) -> Result<Self> {
        let f = &spec.file;
        let origin = spec.origin.as_str();
        if model.dtype() != spec.compute_dtype() {
            return Err(TrainError::config(origin, "model.dtype", format!("the model was loaded as {:?}, the config says {}", model.dtype(), f.model.dtype)));
        }
        let summary = model.summary().clone();
        let arch = summary.arch.clone();
        let dec = model.decoder_mut().ok_or_else(|| {
            TrainError::config(origin, "model.path", format!("architecture `{arch}` has no trainable form"))
        })?;
        let shape = summary.rope_shape(f.target);
        let schedule = RopeSchedule::new(spec.scaling.as_ref(), shape.clone()).map_err(|e| TrainError::config(origin, "scaling", e.to_string()))?;
        if f.export.enabled {
            export::rope_scaling_block(schedule.method.as_ref(), &shape).map_err(|e| {
                TrainError::config(origin, "scaling", format!("{e} (set [export] enabled = false to train it without an HF export)"))
            })?;
        }

        // Data.
        let corpus = CorpusSet::open(&f.data.train, dec.tokenizer())?;
        let bos = if f.data.bos { summary.bos_token_id } else { None };
        let eos = if f.data.eos { summary.eos_token_id } else { None };
        let packed = PackedCorpus::build(&corpus, &f.data.held_out, bos, eos, &format!("{origin}: data.train"))?;
        let pose_target = f.pose_target();
        let pose = f.data.pose.as_ref().map(|p| Pose { target: pose_target.unwrap_or(f.target), chunks: p.chunks });
        let mixed = f.data.mixed.as_ref().map(|m| Mixed { short_len: m.short_len, short_ratio: m.short_ratio });
        let plan = WindowPlan::new(packed, f.data.seq_len, f.data.batch_size, f.data.seed, pose, mixed, &format!("{origin}: data"))?;
        let long_tables = schedule.tables(pose_target.unwrap_or(f.data.seq_len))?;
        let original = std::sync::Arc::new(RopeTables::original(&shape));
        let short_tables = LayerTables { layers: vec![original; shape.num_layers] };

        // Trainable weights.
        if let Some(l) = &f.lora {
            lora::attach(dec, l, f.data.seed, origin)?;
        }
        let mut vars: Vec<(String, Tensor)> = dec.var_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let trains = |name: &str| match &f.lora {
            None => true,
            Some(l) => {
                lora::is_adapter(name)
                    || (l.train_embeddings && name == "model.embed_tokens.weight")
                    || (l.train_norms && name.ends_with("norm.weight"))
            }
        };
        let mut params = Vec::new();
        for (name, t) in vars {
            let on = trains(&name);
            let t = t.set_requires_grad(on);
            if on {
                let master = (t.kind() != Kind::Float).then(|| t.detach().to_kind(Kind::Float));
                params.push(Param { decay: t.dim() >= 2, name, compute: t, master });
            }
        }
        let masters: Vec<&Tensor> = params.iter().map(Param::master).collect();
        let optim = AdamW::new(&f.optim, &masters);

        // Identity of the run: the config (less what does not change the curve), the model, the data.
        let mut hashed = serde_json::to_value(f).expect("configs serialize");
        if let Some(t) = hashed.get_mut("train").and_then(|t| t.as_object_mut()) {
            t.remove("checkpoint_every");
            t.remove("keep_checkpoints");
        }
        hashed.as_object_mut().map(|o| o.remove("export"));
        let model_meta = std::fs::metadata(&f.model.path).ok();
        let model_identity = opts.model_identity.clone().unwrap_or_else(|| {
            serde_json::json!({"path": f.model.path, "bytes": model_meta.as_ref().map(|m| m.len()),
                "modified": model_meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs())})
        });
        let identity = serde_json::json!({
            "config": hashed,
            "scaling": serde_json::to_value(&spec.scaling).unwrap_or_default(),
            "model": model_identity,
            "data": plan.corpus().docs(),
        });
        let config_hash = hex(&Sha256::digest(identity.to_string().as_bytes()));
        let tokens_per_step = f.data.seq_len * f.data.batch_size * f.optim.grad_accum;
        let manifest = Manifest {
            config: serde_json::to_value(f).expect("configs serialize"),
            config_hash: config_hash.clone(),
            model: summary,
            shape,
            scaling: schedule.method.name().to_string(),
            scaling_params: schedule.method.params(),
            train_docs: plan.corpus().docs().to_vec(),
            held_out: plan.corpus().excluded().to_vec(),
            windows_per_epoch: plan.num_windows(),
            trainable_tensors: params.len(),
            trainable_values: params.iter().map(|p| p.compute.numel() as i64).sum(),
            tokens_per_step,
        };

        // Output directory.
        let out = &opts.out_dir;
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let ckpt_dir = out.join("checkpoints");
        checkpoint::clean_partial(&ckpt_dir)?;
        let existing = checkpoint::list(&ckpt_dir);
        if !existing.is_empty() && !opts.resume {
            return Err(TrainError::Checkpoint {
                path: out.clone(),
                message: format!("holds a fine-tune (checkpoint at step {}): pass --resume to continue it, or choose another --out", existing.last().map(|c| c.0).unwrap_or(0)),
            });
        }
        let state = TrainState {
            format: checkpoint::FORMAT,
            step: 0,
            micro_batches: 0,
            tokens_seen: 0,
            optimizer_step: 0,
            wall_seconds: 0.0,
            config_hash,
        };
        let log_path = out.join("train_log.jsonl");
        let mut trainer = Trainer { spec, model, schedule, plan, long_tables, short_tables, params, optim, state, manifest, log_path, ckpt_dir, opts };
        if let Some((_, latest)) = existing.last() {
            trainer.restore(latest)?;
        } else {
            fsio::write_atomic(&trainer.log_path, b"")?;
        }
        let json = serde_json::to_string_pretty(&trainer.manifest).expect("manifest serializes");
        fsio::write_atomic(&trainer.opts.out_dir.join("finetune.json"), json.as_bytes())?;
        Ok(trainer)
    }

    /// What is being trained.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.model.tokenizer()
    }

    /// The state of the run (step, data position ...).
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    fn decoder(&self) -> &dyn Decoder {
        self.model.decoder().expect("checked in new")
    }

    /// Load the checkpoint in `path` into the weights, the optimizer and the state; cut the log after it.
    fn restore(&mut self, path: &Path) -> Result<()> {
        let ck = checkpoint::load(path)?;
        if ck.state.config_hash != self.state.config_hash {
            return Err(TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: "was written by a run with another config, model or data; resuming would mix two runs (choose another --out)".into(),
            });
        }
        let _guard = tch::no_grad_guard();
        for (i, p) in self.params.iter_mut().enumerate() {
            let missing = |what: &str| TrainError::Checkpoint { path: path.to_path_buf(), message: format!("has no {what} for `{}`", p.name) };
            let w = ck.trainable.get(&p.name).ok_or_else(|| missing("weight"))?;
            let m = ck.optimizer.get(&format!("{}.exp_avg", p.name)).ok_or_else(|| missing("exp_avg"))?;
            let v = ck.optimizer.get(&format!("{}.exp_avg_sq", p.name)).ok_or_else(|| missing("exp_avg_sq"))?;
            if w.size() != p.compute.size() {
                return Err(missing("weight of the right shape"));
            }
            let device = p.compute.device();
            match &mut p.master {
                Some(master) => {
                    master.copy_(&w.to_device(device));
                    p.compute.copy_(&master.to_kind(p.compute.kind()));
                }
                None => p.compute.copy_(&w.to_device(device)),
            }
            self.optim.exp_avg[i].copy_(&m.to_device(device));
            self.optim.exp_avg_sq[i].copy_(&v.to_device(device));
        }
        self.optim.step = ck.state.optimizer_step;
        // Keep the log lines of the steps the checkpoint covers (a kill may have left later or partial lines).
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| serde_json::from_str::<LogRecord>(l).is_ok_and(|r| r.step <= ck.state.step))
            .collect();
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        fsio::write_atomic(&self.log_path, body.as_bytes())?;
        self.state = ck.state;
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<PathBuf> {
        let trainable: Vec<(String, Tensor)> = self.params.iter().map(|p| (p.name.clone(), p.master().shallow_clone())).collect();
        let mut moments = Vec::with_capacity(2 * self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            moments.push((format!("{}.exp_avg", p.name), self.optim.exp_avg[i].shallow_clone()));
            moments.push((format!("{}.exp_avg_sq", p.name), self.optim.exp_avg_sq[i].shallow_clone()));
        }
        checkpoint::save(&self.ckpt_dir, &self.state, &trainable, &moments, self.spec.file.train.keep_checkpoints)
    }

    fn inputs(&self, mb: &MicroBatch) -> Result<Inputs> {
        let device = self.model.device();
        let shape = [mb.rows as i64, mb.len as i64];
        Ok(Inputs {
            tokens: Tensor::f_from_slice(&mb.tokens)?.f_view(shape)?.f_to_device(device)?,
            positions: Tensor::f_from_slice(&mb.positions)?.f_view(shape)?.f_to_device(device)?,
            tables: if mb.short { self.short_tables.clone() } else { self.long_tables.clone() },
        })
    }

    /// One optimizer step; returns its log record.
    fn step(&mut self) -> Result<LogRecord> {
        let spec = self.spec;
        let f = &spec.file;
        let t0 = Instant::now();
        let step = self.state.step;
        tch::manual_seed((f.data.seed as i64).wrapping_mul(1_000_003).wrapping_add(step as i64));
        for p in &mut self.params {
            p.compute.zero_grad();
        }
        let batches: Vec<MicroBatch> = (0..f.optim.grad_accum as u64).map(|i| self.plan.micro_batch(self.state.micro_batches + i)).collect();
        let targets: usize = batches.iter().map(MicroBatch::targets).sum();
        let tokens: usize = batches.iter().map(|b| b.rows * b.len).sum();
        let options = BackwardOptions { recompute: f.train.recompute, head_chunk: f.train.head_chunk };
        let mut nll = 0.0;
        for mb in &batches {
            let inputs = self.inputs(mb)?;
            nll += grad::accumulate(self.decoder(), &inputs, 1.0 / targets as f64, options)?;
        }
        let loss = nll / targets as f64;
        if !loss.is_finite() {
            return Err(TrainError::NotFinite { step: step + 1, what: "loss".into(), value: loss });
        }
        let mut grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| {
                let g = p.compute.grad();
                if g.defined() { g.to_kind(Kind::Float) } else { Tensor::zeros_like(p.master()) }
            })
            .collect();
        let grad_norm = match f.optim.clip_grad_norm {
            Some(max) => optim::clip_grad_norm(&mut grads, max),
            None => optim::global_norm(&grads),
        };
        if !grad_norm.is_finite() {
            return Err(TrainError::NotFinite { step: step + 1, what: "gradient norm".into(), value: grad_norm });
        }
        let lr = optim::learning_rate(&f.optim, step, f.train.steps);
        let decay: Vec<bool> = self.params.iter().map(|p| p.decay).collect();
        let mut masters: Vec<Tensor> = self.params.iter().map(|p| p.master().shallow_clone()).collect();
        self.optim.update(&mut masters, &grads, &decay, lr);
        {
            let _guard = tch::no_grad_guard();
            for p in &mut self.params {
                if let Some(m) = &p.master {
                    p.compute.copy_(&m.to_kind(p.compute.kind()));
                }
            }
        }
        self.state.step += 1;
        self.state.micro_batches += batches.len() as u64;
        self.state.tokens_seen += tokens as u64;
        self.state.optimizer_step = self.optim.step;
        let seconds = t0.elapsed().as_secs_f64();
        Ok(LogRecord {
            step: self.state.step,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_seen: self.state.tokens_seen,
            seconds,
            tokens_per_s: tokens as f64 / seconds,
            short_tokens: batches.iter().filter(|b| b.short).map(|b| b.rows * b.len).sum(),
        })
    }

    /// Train to `train.steps` (or until `stop_after_steps`), checkpointing as configured, then export.
    /// `log` receives one line per event (start, checkpoint, export); per-step progress goes to the bar.
    pub fn run(mut self, log: &mut dyn FnMut(String)) -> Result<Outcome> {
        let spec = self.spec;
        let f = &spec.file;
        let total = f.train.steps;
        let started = Instant::now();
        let wall_before = self.state.wall_seconds;
        let m = &self.manifest;
        log(format!(
            "fine-tune: {} under `{}` (L = {}, L' = {}), {} trainable tensors ({} values{}), {} tokens/step, {} windows of {} tokens per epoch{}",
            m.model.arch,
            m.scaling,
            m.shape.original_max_position_embeddings,
            m.shape.max_position_embeddings,
            m.trainable_tensors,
            m.trainable_values,
            if f.lora.is_some() { ", LoRA" } else { "" },
            m.tokens_per_step,
            m.windows_per_epoch,
            f.data.seq_len,
            if self.state.step > 0 { format!("; resuming at step {}", self.state.step) } else { String::new() },
        ));
        let bar = self.opts.progress.then(|| {
            let pb = indicatif::ProgressBar::new(total as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            pb.set_prefix("finetune");
            pb.set_position(self.state.step as u64);
            pb
        });
        let mut log_file = std::fs::OpenOptions::new().append(true).create(true).open(&self.log_path).map_err(|e| TrainError::io(&self.log_path, e))?;
        let mut done_here = 0;
        let mut first_loss = f64::NAN;
        let mut last_loss = f64::NAN;
        if let Ok(text) = std::fs::read_to_string(&self.log_path) {
            let recs: Vec<LogRecord> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            first_loss = recs.first().map(|r| r.loss).unwrap_or(f64::NAN);
            last_loss = recs.last().map(|r| r.loss).unwrap_or(f64::NAN);
        }
        lora::set_training(self.model.decoder_mut().expect("checked in new"), true);
        while self.state.step < total {
            if self.opts.stop_after_steps.is_some_and(|k| done_here >= k) {
                break;
            }
            let rec = self.step()?;
            if first_loss.is_nan() {
                first_loss = rec.loss;
            }
            last_loss = rec.loss;
            let line = serde_json::to_string(&rec).expect("records serialize");
            writeln!(log_file, "{line}").and_then(|_| log_file.flush()).map_err(|e| TrainError::io(&self.log_path, e))?;
            if let Some(pb) = &bar {
                pb.set_position(rec.step as u64);
                pb.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", rec.loss, rec.lr, rec.tokens_per_s));
            }
            done_here += 1;
            self.state.wall_seconds = wall_before + started.elapsed().as_secs_f64();
            let every = f.train.checkpoint_every;
            let stopping = self.opts.stop_after_steps.is_some_and(|k| done_here >= k);
            if self.state.step == total || (every > 0 && self.state.step % every == 0) || stopping {
                let path = self.save_checkpoint()?;
                if let Some(pb) = &bar {
                    pb.println(format!("checkpoint {}", path.display()));
                } else {
                    log(format!("step {}: loss {:.4}; checkpoint {}", self.state.step, rec.loss, path.display()));
                }
            }
        }
        if let Some(pb) = bar {
            pb.finish_and_clear();
        }
        lora::set_training(self.model.decoder_mut().expect("checked in new"), false);
        if self.state.step < total {
            log(format!("stopped after step {} of {total}; run again with --resume to continue", self.state.step));
            return Ok(Outcome::Stopped { step: self.state.step });
        }
        let export_dir = if f.export.enabled {
            let out = self.opts.out_dir.join("model");
            let masters: Vec<(String, Tensor)> =
                self.params.iter().filter(|p| p.master.is_some()).map(|p| (p.name.clone(), p.master().shallow_clone())).collect();
            let dtype = match f.export.dtype.as_str() {
                "bf16" => Kind::BFloat16,
                "f16" => Kind::Half,
                _ => Kind::Float,
            };
            let toml = self.spec.scaling_toml();
            let (method, shape) = (self.schedule.method.clone(), self.schedule.shape.clone());
            let dec = self.model.decoder_mut().expect("checked in new");
            let dir = export::export_hf(dec, &masters, method.as_ref(), &shape, &toml, dtype, &out)?;
            log(format!("exported the fine-tuned model to {} (load it with --scaling {}/longrope_scaling.toml)", dir.display(), dir.display()));
            Some(dir)
        } else {
            None
        };
        Ok(Outcome::Finished(Summary {
            steps: self.state.step,
            tokens: self.state.tokens_seen,
            wall_seconds: self.state.wall_seconds,
            first_loss,
            last_loss,
            peak_rss_mib: longrope_core::device::peak_rss_mib(),
            export_dir,
        }))
    }
}

/// Read `OUT/train_log.jsonl` (lines that do not parse are skipped: a kill can leave half a line).
pub fn read_log(path: &Path) -> Result<Vec<LogRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
