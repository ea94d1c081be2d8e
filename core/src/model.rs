//! Models: the [`ModelArch`] plugin trait (loads a checkpoint) and the [`LanguageModel`] it returns.
//!
//! A model takes per-layer RoPE tables from the caller ([`LayerTables`]) and never knows which scaling method
//! made them. The NLL path never materialises `[seq, vocab]` logits: implementations score positions in chunks.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::rope::RopeShape;
use crate::scaling::LayerTables;
use crate::Result;

/// The architecture summary of a loaded model (`longrope model info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Architecture plugin name (`llama`, `mistral`).
    pub arch: String,
    /// Checkpoint format (`gguf`, `safetensors`).
    pub format: String,
    /// Number of transformer layers.
    pub num_layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RoPE base (`rope_theta`).
    pub rope_base: f64,
    /// The context the model was trained on (`max_position_embeddings`, or the original one of a scaled model).
    pub max_position_embeddings: usize,
    /// Sliding attention window (Mistral), if any.
    pub sliding_window: Option<usize>,
    /// Whether the output head is tied to the token embedding.
    pub tied_embeddings: bool,
    /// Storage types of the checkpoint's weights (e.g. `Q4_1, Q8_0, F32`).
    pub weight_dtype: String,
    /// Beginning-of-sequence token id, if the model uses one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id, if any.
    pub eos_token_id: Option<u32>,
}

impl ModelSummary {
    /// The original context `L` an extension starts from, by LongRoPE's rule (`evolution/search.py:121-124`,
    /// `rope/__init__.py:91-97`, microsoft/LongRoPE@c9e56aa): the sliding attention window when the model has one
    /// (Mistral-7B-v0.1: 4096, although `max_position_embeddings` is 32768), else `max_position_embeddings`.
    pub fn original_context(&self) -> usize {
        self.sliding_window.unwrap_or(self.max_position_embeddings)
    }

    /// The RoPE shape for extending this model to `target` tokens, from `L` = [`ModelSummary::original_context`].
    pub fn rope_shape(&self, target: usize) -> RopeShape {
        RopeShape {
            head_dim: self.head_dim,
            rope_base: self.rope_base,
            original_max_position_embeddings: self.original_context(),
            max_position_embeddings: target,
            num_layers: self.num_layers,
        }
    }
}

/// How to load a model: device, compute dtype and architecture overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Where the weights live and the forward runs.
    pub device: Device,
    /// Compute dtype of the weights (f32, bf16, f16).
    pub dtype: Kind,
    /// Override of the sliding attention window (Mistral); `Some(None)` disables it. The summary reports the
    /// window in use, and [`ModelSummary::original_context`] takes `L` from it: the reference widens attention
    /// (`--attn-sliding-window`) but keeps `L` at the checkpoint's window, so give `L` explicitly (a search's
    /// `[shape]`) when widening it here.
    pub sliding_window: Option<Option<usize>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { device: Device::Cpu, dtype: Kind::Float, sliding_window: None }
    }
}

/// Per-layer key/value cache of a generation, tagged with the tables it was computed under.
#[derive(Debug, Default)]
pub struct KvCache {
    /// `(key, value)` per layer, shaped `[batch, kv_heads, cached_len, head_dim]`.
    pub layers: Vec<Option<(Tensor, Tensor)>>,
    /// Number of cached positions.
    pub len: usize,
    /// The tables the cached keys were rotated with; a change means the cache must be rebuilt.
    pub tables: Option<LayerTables>,
}

/// Sum of token negative log-likelihoods and how many tokens it covers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NllSum {
    /// Sum of `-log p(token)` in nats.
    pub sum: f64,
    /// Number of scored tokens.
    pub count: usize,
}

impl NllSum {
    /// Mean NLL per token (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// A loaded causal language model with rotary position embeddings.
pub trait LanguageModel: Send {
    /// Architecture summary.
    fn summary(&self) -> &ModelSummary;
    /// The model's tokenizer.
    fn tokenizer(&self) -> &tokenizers::Tokenizer;
    /// Device the model runs on.
    fn device(&self) -> Device;
    /// Compute dtype.
    fn dtype(&self) -> Kind;
    /// Logits `[batch, seq, vocab]` (f32) for `tokens` `[batch, seq]` (i64). With a cache, the tokens continue
    /// the cached sequence (positions start at `cache.len`) and the cache is extended.
    fn forward(&self, tokens: &Tensor, tables: &LayerTables, cache: Option<&mut KvCache>) -> Result<Tensor>;
    /// Logits `[batch, vocab]` (f32) of the last position only, otherwise as [`LanguageModel::forward`].
    /// Generation uses it so a long prefill never materialises `[seq, vocab]` logits; implementations should
    /// override the default, which slices the full logits.
    fn forward_last(&self, tokens: &Tensor, tables: &LayerTables, cache: Option<&mut KvCache>) -> Result<Tensor> {
        Ok(self.forward(tokens, tables, cache)?.select(1, -1))
    }
    /// NLL of predicting `tokens[t+1]` from `tokens[..=t]`, summed over targets at positions `score_from..len`
    /// (position `p` is scored when it is the predicted token's index and `p >= score_from`, `p >= 1`).
    /// Never materialises `[seq, vocab]` logits.
    fn nll(&self, tokens: &[i64], tables: &LayerTables, score_from: usize) -> Result<NllSum>;
}

/// An architecture plugin: recognises and loads checkpoints of one model family.
pub trait ModelArch: Send + Sync {
    /// Plugin name (`llama`, `mistral`).
    fn name(&self) -> &'static str;
    /// Load a checkpoint (HF directory or GGUF file) whose architecture this plugin handles.
    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn LanguageModel>>;
}

/// A registered architecture, submitted with `inventory::submit!` next to its [`crate::PluginInfo`].
pub struct ArchRegistration {
    /// Plugin name, equal to [`ModelArch::name`].
    pub name: &'static str,
    /// The architecture.
    pub arch: &'static dyn ModelArch,
}

inventory::collect!(ArchRegistration);

/// The architecture registered under `name`, or an error listing the known architectures.
pub fn arch(name: &str) -> Result<&'static dyn ModelArch> {
    inventory::iter::<ArchRegistration>
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.arch)
        .ok_or_else(|| crate::Error::UnknownPlugin {
            kind: crate::PluginKind::Arch,
            name: name.to_string(),
            known: crate::registry::known_names(crate::PluginKind::Arch),
        })
}
