//! Models: the [`ModelArch`] plugin trait (loads a checkpoint), the [`LanguageModel`] it returns, and the
//! [`Decoder`] view a trainer drives one block at a time.
//!
//! A model takes per-layer RoPE tables from the caller ([`LayerTables`]) and never knows which scaling method
//! made them. The NLL path never materialises `[seq, vocab]` logits: implementations score positions in chunks.
//! Models never switch gradient tracking themselves: evaluation, generation and search run them under
//! `tch::no_grad`, training with gradients, on the same blocks.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::nn::Linear;
use crate::rope::RopeShape;
pub use crate::scaling::checkpoint::CheckpointScaling;
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
    /// The RoPE scaling the checkpoint carries (HF `rope_scaling` / `rope_parameters` of a type other than
    /// `default`, or GGUF `{arch}.rope.scaling.*` metadata and factor tensors), read into one of our methods;
    /// `None` for a plain checkpoint. Runs apply it unless a scaling is given explicitly
    /// ([`crate::scaling::checkpoint::run_scaling`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_scaling: Option<CheckpointScaling>,
    /// The dimensions of a head that rotate, when only the first ones do (HF `partial_rotary_factor`, GGUF
    /// `{arch}.rope.dimension_count`); `None`: the whole head. RoPE tables have `rope_dim() / 2` frequencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<usize>,
}

/// Where the original context `L` of an extension comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginalContext {
    /// LongRoPE's rule (`evolution/search.py:121-124`, `rope/__init__.py:91-97`, microsoft/LongRoPE@c9e56aa): the
    /// sliding attention window when the model has one (Mistral-7B-v0.1: 4096, although its
    /// `max_position_embeddings` is 32768), else `max_position_embeddings`. A checkpoint that carries its own
    /// `rope_scaling` (an exported fine-tune) keeps the original context it declares.
    #[default]
    Reference,
    /// HF's: `max_position_embeddings` (the original one of a scaled checkpoint), whatever the sliding window.
    MaxPositionEmbeddings,
}

impl ModelSummary {
    /// The rotary dimensions of a head: [`ModelSummary::rotary_dim`], else `head_dim`. This is the `head_dim` of
    /// every [`RopeShape`] of the model.
    pub fn rope_dim(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    /// The original context `L` by LongRoPE's rule ([`OriginalContext::Reference`]).
    pub fn original_context(&self) -> usize {
        self.original_context_by(OriginalContext::Reference)
    }

    /// The original context `L` by `rule`.
    pub fn original_context_by(&self, rule: OriginalContext) -> usize {
        match rule {
            OriginalContext::Reference if self.checkpoint_scaling.is_none() => self.sliding_window.unwrap_or(self.max_position_embeddings),
            OriginalContext::Reference => self.max_position_embeddings,
            OriginalContext::MaxPositionEmbeddings => self.max_position_embeddings,
        }
    }

    /// The RoPE shape for extending this model to `target` tokens, from `L` = [`ModelSummary::original_context`].
    pub fn rope_shape(&self, target: usize) -> RopeShape {
        self.rope_shape_by(target, OriginalContext::Reference)
    }

    /// The RoPE shape for extending this model to `target` tokens, with `L` by `rule`.
    pub fn rope_shape_by(&self, target: usize, rule: OriginalContext) -> RopeShape {
        RopeShape {
            head_dim: self.rope_dim(),
            rope_base: self.rope_base,
            original_max_position_embeddings: self.original_context_by(rule),
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
    /// The trainable view of this model, if its architecture has one.
    fn decoder(&self) -> Option<&dyn Decoder> {
        None
    }
    /// The trainable view of this model, mutably (to attach adapters), if its architecture has one.
    fn decoder_mut(&mut self) -> Option<&mut dyn Decoder> {
        None
    }
}

/// Rotary cos/sin of one forward for every layer, in the dtype RoPE runs in ([`crate::device::upcast_kind`] of
/// the model's: f32 for bf16 on CPU), each `[batch or 1, 1, seq, head_dim]`
/// (layers whose tables are equal share tensors). Made by [`Decoder::rotary`] from tables and positions.
#[derive(Debug)]
pub struct Rotary {
    /// `cos(position · inv_freq) · attn_factor` per layer, halves repeated (HF's `cat(freqs, freqs)`).
    pub cos: Vec<Tensor>,
    /// `sin(position · inv_freq) · attn_factor` per layer.
    pub sin: Vec<Tensor>,
}

/// A decoder-only causal LM as a trainer drives it: embedding, one block at a time, final norm, LM head, the
/// weights by their HF names in a `VarStore`, the projections that can carry adapters, and the checkpoint's
/// HF config. Every method builds an autograd graph when its weights require gradients and the caller has not
/// disabled tracking; evaluation's forward uses the same blocks.
pub trait Decoder: LanguageModel {
    /// cos/sin for `positions` (`[seq]` or `[batch, seq]`, i64) under per-layer `tables`. Positions need not be
    /// contiguous (PoSE); positions below a table's `retained.n_hat` use the retained tables.
    fn rotary(&self, tables: &LayerTables, positions: &Tensor) -> Result<Rotary>;
    /// Token embeddings `[batch, seq, hidden]` of `tokens` `[batch, seq]` (checked against the vocabulary).
    fn embed(&self, tokens: &Tensor) -> Result<Tensor>;
    /// Decoder block `layer` (attention + MLP with their residuals) on `x` `[batch, seq, hidden]`, causal.
    fn block(&self, layer: usize, x: &Tensor, rotary: &Rotary) -> Result<Tensor>;
    /// The final normalisation of the trunk.
    fn final_norm(&self, x: &Tensor) -> Tensor;
    /// The LM head weight `[vocab, hidden]` (the embedding when tied).
    fn lm_head(&self) -> &Tensor;
    /// Every weight by its HF name (`model.layers.0.self_attn.q_proj.weight` ...), adapters included.
    fn var_store(&self) -> &tch::nn::VarStore;
    /// The projections that can carry a LoRA adapter, by HF module name (`model.layers.0.self_attn.q_proj`).
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)>;
    /// An HF `config.json` describing this model (architecture, sizes, RoPE base, trained context, token ids),
    /// without any `rope_scaling`: the exporter adds the method's block.
    fn hf_config(&self) -> serde_json::Value;

    /// Final-normed hidden states `[batch, seq, hidden]`: embedding, every block, final norm.
    fn hidden(&self, tokens: &Tensor, tables: &LayerTables, positions: &Tensor) -> Result<Tensor> {
        let rotary = self.rotary(tables, positions)?;
        let mut x = self.embed(tokens)?;
        for layer in 0..self.summary().num_layers {
            x = self.block(layer, &x, &rotary)?;
        }
        Ok(self.final_norm(&x))
    }
}

/// Summed next-token cross-entropy (nats, a scalar f64 tensor with its graph) of `hidden` `[n, hidden]`
/// predicting `targets` `[n]` (i64) through `head` `[vocab, hidden]`, computed over chunks of `chunk` positions
/// so no more than `[chunk, vocab]` logits exist at once in the forward (`logsumexp - target logit` in f32: HF's
/// loss without writing the log-softmax; the per-token values are summed in f64 so long sequences lose no
/// precision). The logits are computed in [`crate::device::upcast_kind`] of `hidden`'s dtype: f32 for a bf16
/// model on CPU, whose head weight is cast once per call (a transient f32 copy of `[vocab, hidden]`).
pub fn chunked_nll_sum(hidden: &Tensor, head: &Tensor, targets: &Tensor, chunk: usize) -> Tensor {
    let n = hidden.size()[0];
    let chunk = chunk.max(1) as i64;
    let kind = crate::device::upcast_kind(hidden.kind(), hidden.device());
    let head = head.to_kind(kind);
    let mut total: Option<Tensor> = None;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let logits = hidden.narrow(0, start, len).to_kind(kind).linear(&head, None::<Tensor>).to_kind(Kind::Float);
        // -log softmax(x)[t] = logsumexp(x) - x[t]: one pass over the logits, no [len, vocab] output written.
        let target_logits = logits.gather(1, &targets.narrow(0, start, len).unsqueeze(1), false).squeeze_dim(1);
        let nll = logits.logsumexp([-1i64].as_slice(), false) - target_logits;
        let part = nll.sum(Kind::Double);
        total = Some(match total {
            None => part,
            Some(t) => t + part,
        });
        start += len;
    }
    total.unwrap_or_else(|| Tensor::zeros([], (Kind::Double, hidden.device())))
}

/// An architecture plugin: recognises and loads checkpoints of one model family. Declared with
/// [`crate::plugin!`] (`kind: Arch`), which registers it under its name.
pub trait ModelArch: Send + Sync {
    /// Load a checkpoint (HF directory or GGUF file) whose architecture this plugin handles.
    fn load(&self, path: &Path, options: &LoadOptions) -> Result<Box<dyn LanguageModel>>;
}

/// The architecture registered under `name`, or an error listing the known architectures.
pub fn arch(name: &str) -> Result<&'static dyn ModelArch> {
    match crate::registry::static_info(crate::PluginKind::Arch, name).map(|p| p.provides) {
        Some(crate::registry::Provides::Arch(arch)) => Ok(arch),
        _ => Err(crate::Error::UnknownPlugin {
            kind: crate::PluginKind::Arch,
            name: name.to_string(),
            known: crate::registry::known_names(crate::PluginKind::Arch),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: log-softmax over the full logits, gathered at the targets, summed in f64.
    fn reference(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> f64 {
        let logp = hidden.linear(head, None::<Tensor>).to_kind(Kind::Double).log_softmax(-1, Kind::Double);
        -logp.gather(1, &targets.unsqueeze(1), false).sum(Kind::Double).double_value(&[])
    }

    #[test]
    fn chunked_nll_equals_a_full_log_softmax_for_any_chunk() {
        tch::manual_seed(0);
        let (hidden, head) = (Tensor::randn([37, 16], (Kind::Float, Device::Cpu)), Tensor::randn([50, 16], (Kind::Float, Device::Cpu)));
        let targets = Tensor::randint(50, [37], (Kind::Int64, Device::Cpu));
        let want = reference(&hidden, &head, &targets);
        for chunk in [1, 5, 36, 37, 1000] {
            let got = chunked_nll_sum(&hidden, &head, &targets, chunk).double_value(&[]);
            assert!((got - want).abs() < 1e-4 * want.abs(), "chunk {chunk}: {got} vs {want}");
        }
    }

    #[test]
    fn a_bf16_head_on_cpu_computes_its_logits_in_f32() {
        tch::manual_seed(1);
        let hidden = (Tensor::randn([64, 32], (Kind::Float, Device::Cpu)) * 3.0).to_kind(Kind::BFloat16);
        let head = Tensor::randn([300, 32], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let targets = Tensor::randint(300, [64], (Kind::Int64, Device::Cpu));
        let from_bf16 = chunked_nll_sum(&hidden, &head, &targets, 16).double_value(&[]);
        // The same bf16 values, upcast by the caller: identical operations in f32.
        let (hidden32, head32) = (hidden.to_kind(Kind::Float), head.to_kind(Kind::Float));
        assert_eq!(from_bf16, chunked_nll_sum(&hidden32, &head32, &targets, 16).double_value(&[]));
        // One pass over all rows, the logits in f32 or rounded to bf16 (what a bf16 matmul returns): only the
        // rounding differs between the two, and it changes the loss.
        let nll = |logits: Tensor| {
            let logits = logits.to_kind(Kind::Float);
            let target = logits.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
            (logits.logsumexp([-1i64].as_slice(), false) - target).sum(Kind::Double).double_value(&[])
        };
        let exact = nll(hidden32.linear(&head32, None::<Tensor>));
        let rounded = nll(hidden.linear(&head, None::<Tensor>));
        let (ours, theirs) = ((from_bf16 - exact).abs(), (rounded - exact).abs());
        assert!(ours < 1e-6 * exact.abs(), "{from_bf16} vs {exact}");
        assert!(theirs > 10.0 * ours.max(1e-9 * exact.abs()), "bf16 logits: off by {theirs}, f32 logits by {ours}");
    }

    #[test]
    fn gradients_flow_back_to_bf16_hidden_states() {
        tch::manual_seed(2);
        let hidden = Tensor::randn([20, 16], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16).set_requires_grad(true);
        let head = Tensor::randn([40, 16], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let targets = Tensor::randint(40, [20], (Kind::Int64, Device::Cpu));
        chunked_nll_sum(&hidden, &head, &targets, 8).backward();
        let grad = hidden.grad();
        assert_eq!(grad.kind(), Kind::BFloat16);
        assert!(grad.to_kind(Kind::Float).isfinite().all().int64_value(&[]) == 1);
        assert!(grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
