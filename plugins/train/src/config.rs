//! The fine-tune file (`configs/finetune/*.toml`): its serde schema (every table rejects unknown fields), the
//! defaults the papers use, and [`FinetuneFile::validate`], which checks every field before any compute.
//!
//! Defaults follow the published recipes (see `docs/training.md`): AdamW with betas (0.9, 0.95), eps 1e-8,
//! weight decay 0 (YaRN, PI, LongRoPE's training branch), linear decay after a warm-up, clipping at global norm
//! 1.0, per-layer recomputation on. LoRA defaults are YaRN's option (rank 16, alpha 64, every linear but the
//! head); LongLoRA's finding that context extension needs trainable embeddings and norms is one switch each.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

fn d_f32() -> String {
    "f32".into()
}
fn d_cpu() -> String {
    "cpu".into()
}
fn d_one() -> usize {
    1
}
fn d_true() -> bool {
    true
}
fn d_lr() -> f64 {
    2e-5
}
fn d_betas() -> [f64; 2] {
    [0.9, 0.95]
}
fn d_eps() -> f64 {
    1e-8
}
fn d_clip() -> Option<f64> {
    Some(1.0)
}
fn d_checkpoint_every() -> usize {
    50
}
fn d_keep() -> usize {
    2
}
fn d_head_chunk() -> usize {
    1024
}
fn d_chunks() -> usize {
    2
}
fn d_rank() -> usize {
    16
}
fn d_alpha() -> f64 {
    64.0
}
fn d_targets() -> Vec<String> {
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].map(String::from).to_vec()
}

/// A whole fine-tune file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneFile {
    /// `[model]`: the checkpoint trained, where, in which compute dtype.
    pub model: ModelSection,
    /// The scaling method trained under: a plugin name, a scaling TOML file (relative to this file), or an
    /// inline table `[scaling] method = "yarn" ...`.
    pub scaling: ScalingSpec,
    /// The target context `L'` the method extends to (`s = L' / L`).
    pub target: usize,
    /// `[data]`: training text, windows, PoSE, mixed context windows.
    pub data: DataSection,
    /// `[optim]`: AdamW, schedule, clipping, accumulation.
    #[serde(default)]
    pub optim: OptimSection,
    /// `[train]`: steps, recomputation, checkpoints.
    pub train: TrainSection,
    /// `[lora]`: train low-rank adapters instead of every weight.
    #[serde(default)]
    pub lora: Option<LoraSection>,
    /// `[export]`: the HF directory written at the end.
    #[serde(default)]
    pub export: ExportSection,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A `.gguf` file or an HF model directory (relative to the fine-tune file).
    pub path: PathBuf,
    /// Compute dtype: `f32` (default) or `bf16`; master weights and optimizer state are f32 either way.
    #[serde(default = "d_f32")]
    pub dtype: String,
    /// `cpu` (default), `cuda`, `cuda:N`.
    #[serde(default = "d_cpu")]
    pub device: String,
}

/// The scaling method: a name or file, or an inline table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScalingSpec {
    /// A plugin name (`pi`) or a scaling TOML file.
    Name(String),
    /// An inline scaling config (`method = "yarn"`, plus that plugin's fields).
    Table(toml::Table),
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Text files, JSONL, directories of them, or token stores (relative to the fine-tune file).
    pub train: Vec<PathBuf>,
    /// Document names never trained on (file stems such as `austen-emma`): the held-out split.
    #[serde(default)]
    pub held_out: Vec<String>,
    /// Tokens per training window.
    pub seq_len: usize,
    /// Windows per micro-batch.
    #[serde(default = "d_one")]
    pub batch_size: usize,
    /// Seed of the window order, PoSE, LoRA initialisation and dropout.
    #[serde(default)]
    pub seed: u64,
    /// BOS before each document (when the model has a BOS token).
    #[serde(default = "d_true")]
    pub bos: bool,
    /// EOS after each document (when the model has an EOS token).
    #[serde(default = "d_true")]
    pub eos: bool,
    /// `[data.pose]`: PoSE positions for the (long) windows.
    #[serde(default)]
    pub pose: Option<PoseSection>,
    /// `[data.mixed]`: LongRoPE2 mixed context windows.
    #[serde(default)]
    pub mixed: Option<MixedSection>,
}

/// `[data.pose]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoseSection {
    /// The context the positions simulate (default: `target`).
    #[serde(default)]
    pub target: Option<usize>,
    /// Chunks per window (2 in the reference).
    #[serde(default = "d_chunks")]
    pub chunks: usize,
}

/// `[data.mixed]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixedSection {
    /// Tokens per short window (divides `data.seq_len`).
    pub short_len: usize,
    /// Share of the tokens trained as short windows with the original RoPE, in `[0, 1]`.
    pub short_ratio: f64,
}

/// Learning-rate schedule after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear decay to `min_lr_ratio * lr` at the last step (HF `linear`).
    Linear,
    /// Half-cosine decay to `min_lr_ratio * lr` (HF `cosine` / `cosine_with_min_lr`).
    Cosine,
    /// Constant after the warm-up (HF `constant_with_warmup`).
    Constant,
}

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// AdamW `(beta1, beta2)`.
    #[serde(default = "d_betas")]
    pub betas: [f64; 2],
    /// AdamW epsilon.
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not to norms), as HF's Trainer does.
    #[serde(default)]
    pub weight_decay: f64,
    /// Decay after the warm-up.
    #[serde(default = "Schedule::default_linear")]
    pub schedule: Schedule,
    /// Steps of linear warm-up from 0.
    #[serde(default)]
    pub warmup_steps: usize,
    /// The floor of the decay as a fraction of `lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this value (absent: no clipping).
    #[serde(default = "d_clip")]
    pub clip_grad_norm: Option<f64>,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
}

impl Schedule {
    fn default_linear() -> Schedule {
        Schedule::Linear
    }
}

impl Default for OptimSection {
    fn default() -> Self {
        OptimSection {
            lr: d_lr(),
            betas: d_betas(),
            eps: d_eps(),
            weight_decay: 0.0,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
            clip_grad_norm: d_clip(),
            grad_accum: 1,
        }
    }
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: usize,
    /// Per-decoder-layer activation recomputation (gradient checkpointing).
    #[serde(default = "d_true")]
    pub recompute: bool,
    /// Write a checkpoint every this many steps (0: only at the end).
    #[serde(default = "d_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Checkpoints kept (the newest).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// Positions per LM-head chunk (bounds the `[chunk, vocab]` logits of the loss).
    #[serde(default = "d_head_chunk")]
    pub head_chunk: usize,
}

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Adapter rank `r`.
    #[serde(default = "d_rank")]
    pub rank: usize,
    /// `alpha`; the adapter term is scaled by `alpha / r` (PEFT).
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    #[serde(default)]
    pub dropout: f64,
    /// Projections that get adapters, by module name (`q_proj` ... `down_proj`).
    #[serde(default = "d_targets")]
    pub targets: Vec<String>,
    /// Also train the token embedding (and a tied head) fully (LongLoRA).
    #[serde(default)]
    pub train_embeddings: bool,
    /// Also train every RMSNorm weight (LongLoRA).
    #[serde(default)]
    pub train_norms: bool,
}

/// `[export]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSection {
    /// Write the HF directory `OUT/model` at the end.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Storage dtype of the exported weights: `f32` (default), `bf16`, `f16`.
    #[serde(default = "d_f32")]
    pub dtype: String,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection { enabled: true, dtype: d_f32() }
    }
}

impl FinetuneFile {
    /// Read and parse a fine-tune file; errors name the file and the field.
    pub fn read(path: &Path) -> Result<Self> {
        // A regular file of bounded size (`/dev/zero` is refused, not read without bound).
        let text = longrope_core::files::read_text(path, longrope_core::files::MAX_CONFIG_BYTES)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse fine-tune TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let field = e.span().map(|s| field_at(text, s.start)).unwrap_or_default();
            TrainError::config(origin, if field.is_empty() { "(file)".to_string() } else { field }, msg)
        })
    }

    /// Make every relative path absolute against `base` (the directory of the file).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model.path);
        self.data.train.iter_mut().for_each(fix);
        if let ScalingSpec::Name(n) = &mut self.scaling {
            let p = Path::new(n.as_str());
            if n.ends_with(".toml") && p.is_relative() {
                *n = base.join(p).display().to_string();
            }
        }
    }

    /// Check every field that can be checked without the model: ranges, combinations, existing files.
    /// `origin` names the file (or experiment step) in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |field: &str, message: String| Err(TrainError::config(origin, field, message));
        if !self.model.path.exists() {
            return bad("model.path", format!("{} does not exist", self.model.path.display()));
        }
        if !matches!(self.model.dtype.as_str(), "f32" | "bf16") {
            return bad("model.dtype", format!("`{}`: expected f32 or bf16 (compute dtype; masters stay f32)", self.model.dtype));
        }
        longrope_core::device::parse_device(&self.model.device)
            .map_err(|e| TrainError::config(origin, "model.device", e.to_string()))?;
        if self.target == 0 {
            return bad("target", "must be positive (the context L' the method extends to)".into());
        }
        let d = &self.data;
        if d.train.is_empty() {
            return bad("data.train", "list at least one text file, directory, JSONL file or token store".into());
        }
        for p in &d.train {
            if !p.exists() {
                return bad("data.train", format!("{} does not exist", p.display()));
            }
        }
        if d.seq_len < 2 {
            return bad("data.seq_len", format!("{} is too short (a window needs at least 2 tokens)", d.seq_len));
        }
        if d.seq_len > self.target && d.pose.is_none() {
            return bad("data.seq_len", format!("{} is longer than target {}", d.seq_len, self.target));
        }
        if d.batch_size == 0 {
            return bad("data.batch_size", "must be at least 1".into());
        }
        if let Some(p) = &d.pose {
            let t = p.target.unwrap_or(self.target);
            if t < d.seq_len {
                return bad("data.pose.target", format!("{t} is shorter than data.seq_len {}", d.seq_len));
            }
            if p.chunks == 0 || p.chunks > d.seq_len {
                return bad("data.pose.chunks", format!("{} must be in 1 ..= data.seq_len", p.chunks));
            }
        }
        if let Some(m) = &d.mixed {
            if m.short_len < 2 || d.seq_len % m.short_len != 0 {
                return bad("data.mixed.short_len", format!("{} must be >= 2 and divide data.seq_len {}", m.short_len, d.seq_len));
            }
            if !(0.0..=1.0).contains(&m.short_ratio) {
                return bad("data.mixed.short_ratio", format!("{} must be in [0, 1]", m.short_ratio));
            }
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0 && o.lr < 1.0) {
            return bad("optim.lr", format!("{} must be in (0, 1)", o.lr));
        }
        for (i, b) in o.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return bad(&format!("optim.betas[{i}]"), format!("{b} must be in [0, 1)"));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0 && o.eps < 1.0) {
            return bad("optim.eps", format!("{} must be in (0, 1)", o.eps));
        }
        if !(o.weight_decay.is_finite() && (0.0..1.0).contains(&o.weight_decay)) {
            return bad("optim.weight_decay", format!("{} must be in [0, 1)", o.weight_decay));
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return bad("optim.min_lr_ratio", format!("{} must be in [0, 1]", o.min_lr_ratio));
        }
        if let Some(c) = o.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad("optim.clip_grad_norm", format!("{c} must be positive (omit the field for no clipping)"));
            }
        }
        if o.grad_accum == 0 {
            return bad("optim.grad_accum", "must be at least 1".into());
        }
        let t = &self.train;
        if t.steps == 0 {
            return bad("train.steps", "must be at least 1".into());
        }
        if o.warmup_steps > t.steps {
            return bad("optim.warmup_steps", format!("{} exceeds train.steps {}", o.warmup_steps, t.steps));
        }
        if t.keep_checkpoints == 0 {
            return bad("train.keep_checkpoints", "must be at least 1 (the newest checkpoint is what --resume uses)".into());
        }
        if t.head_chunk == 0 {
            return bad("train.head_chunk", "must be at least 1".into());
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return bad("lora.rank", "must be at least 1".into());
            }
            if !(l.alpha.is_finite() && l.alpha > 0.0) {
                return bad("lora.alpha", format!("{} must be positive", l.alpha));
            }
            if !(0.0..1.0).contains(&l.dropout) {
                return bad("lora.dropout", format!("{} must be in [0, 1)", l.dropout));
            }
            if l.targets.is_empty() {
                return bad("lora.targets", "name at least one projection (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)".into());
            }
        }
        if !matches!(self.export.dtype.as_str(), "f32" | "bf16" | "f16") {
            return bad("export.dtype", format!("`{}`: expected f32, bf16 or f16", self.export.dtype));
        }
        Ok(())
    }

    /// The context PoSE positions simulate, when PoSE is on.
    pub fn pose_target(&self) -> Option<usize> {
        self.data.pose.as_ref().map(|p| p.target.unwrap_or(self.target))
    }
}

/// The dotted key path of the TOML entry on the line holding byte `at` (best effort, for error messages).
fn field_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[at..].find('\n').map(|i| at + i).unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && l.ends_with(']')).then(|| l.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_default();
    let key = if line.starts_with('[') { "" } else { line.split('=').next().unwrap_or("").trim() };
    match (table.is_empty(), key.is_empty()) {
        (_, true) if line.starts_with('[') => line.trim_matches(|c| c == '[' || c == ']').to_string(),
        (true, true) => String::new(),
        (true, false) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
target = 1024
scaling = "pi"
[model]
path = "model.gguf"
[data]
train = ["corpus"]
seq_len = 64
[train]
steps = 10
"#;

    #[test]
    fn defaults_follow_the_papers() {
        let f = FinetuneFile::parse(MINIMAL, "f.toml").unwrap();
        assert_eq!(f.optim.betas, [0.9, 0.95]);
        assert_eq!((f.optim.lr, f.optim.eps, f.optim.weight_decay), (2e-5, 1e-8, 0.0));
        assert_eq!(f.optim.clip_grad_norm, Some(1.0));
        assert_eq!(f.optim.schedule, Schedule::Linear);
        assert!(f.train.recompute && f.data.bos && f.data.eos);
        assert_eq!(f.scaling, ScalingSpec::Name("pi".into()));
        assert!(f.lora.is_none() && f.export.enabled);
        let lora = FinetuneFile::parse(&format!("{MINIMAL}[lora]\n"), "f.toml").unwrap().lora.unwrap();
        assert_eq!((lora.rank, lora.alpha, lora.targets.len()), (16, 64.0, 7));
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let err = FinetuneFile::parse(&MINIMAL.replace("steps = 10", "steps = 10\nstesp = 3"), "f.toml").unwrap_err().to_string();
        assert!(err.starts_with("f.toml: train.stesp: ") && err.contains("unknown field"), "{err}");
        let inline = MINIMAL.replace("scaling = \"pi\"\n", "") + "[scaling]\nmethod = \"yarn\"\nfactor = 4.0\n";
        let f = FinetuneFile::parse(&inline, "f.toml").unwrap();
        assert!(matches!(f.scaling, ScalingSpec::Table(ref t) if t["method"].as_str() == Some("yarn")));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.gguf"), "x").unwrap();
        std::fs::create_dir(dir.path().join("corpus")).unwrap();
        let check = |text: String| {
            let mut f = FinetuneFile::parse(&text, "f.toml").unwrap();
            f.resolve_paths(dir.path());
            f.validate("f.toml").err().map(|e| e.to_string())
        };
        assert_eq!(check(MINIMAL.to_string()), None);
        for (from, to, field) in [
            ("steps = 10", "steps = 0", "train.steps"),
            ("target = 1024", "target = 0", "target"),
            ("seq_len = 64", "seq_len = 4096", "data.seq_len"),
            ("[train]", "[optim]\nlr = 1e308\n[train]", "optim.lr"),
            ("[train]", "[optim]\nbetas = [0.9, 1.5]\n[train]", "optim.betas[1]"),
            ("[train]", "[optim]\nwarmup_steps = 11\n[train]", "optim.warmup_steps"),
            ("[train]", "[data.mixed]\nshort_len = 48\nshort_ratio = 0.5\n[train]", "data.mixed.short_len"),
            ("[train]", "[data.pose]\ntarget = 32\n[train]", "data.pose.target"),
            ("path = \"model.gguf\"", "path = \"missing.gguf\"", "model.path"),
            ("path = \"model.gguf\"", "path = \"model.gguf\"\ndtype = \"f16\"", "model.dtype"),
        ] {
            let err = check(MINIMAL.replace(from, to)).unwrap_or_else(|| panic!("{to} accepted"));
            assert!(err.starts_with(&format!("f.toml: {field}: ")), "{to}: {err}");
        }
        let err = check(format!("{MINIMAL}[lora]\nrank = 0\n")).unwrap();
        assert!(err.starts_with("f.toml: lora.rank: "), "{err}");
    }
}
