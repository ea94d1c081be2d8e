//! Llama (Touvron et al. 2023; HF `modeling_llama.py`) and the decoder it shares with its family: config,
//! loading from HF safetensors or GGUF, and the model top to bottom: [`RmsNorm`], rotary [`Attention`] with GQA
//! and a KV cache, the SwiGLU [`Mlp`], the decoder [`Block`], and [`Llama`] (candle-transformers' one-file
//! layout). Every type has its `load` (weights into the model's `VarStore` under their HF names, tch's
//! `nn::Path`) and its `forward`.
//!
//! How a family member differs is an [`ArchSpec`] (one per architecture file): biases on q/k/v (Qwen2,
//! `modeling_qwen2.py`), fused `qkv_proj` / `gate_up_proj` (Phi-3, `modeling_phi3.py`), which layers slide, the
//! GGUF layout llama.cpp writes for it, and which RoPE factor tensors llama.cpp reads for it. Partial rotary
//! heads (HF `partial_rotary_factor`, GGUF `rope.dimension_count` < head size) rotate their first
//! `rotary_dim` dimensions only, as HF's `apply_rotary_pos_emb`.
//!
//! The model takes per-layer RoPE tables from the caller (`LayerTables`) and never knows which scaling
//! method made them. Attention uses libtorch's `scaled_dot_product_attention` (causal; on CPU its flash kernel,
//! also for the backward); an optional sliding window (Mistral) is applied as a band mask built per block of
//! queries, so memory stays `O(block * window)` at long context. The NLL path runs the trunk once and the LM
//! head + log-softmax over chunks of positions, never materialising `[seq, vocab]` logits.
//!
//! Evaluation and training share these blocks: the model never switches gradient tracking itself. As a
//! [`Decoder`] it exposes the embedding, each block, the final norm, the head, its `VarStore` and its
//! projections ([`Linear`], which can carry a LoRA adapter), so a trainer can recompute one layer at a time.
//!
//! GGUF files store Q and K projection rows permuted the llama.cpp way (`convert_hf_to_gguf.py`'s
//! `permute`: per head, the two rotary halves interleaved); [`unpermute_qk`] undoes it so HF's
//! `rotate_half` RoPE applies unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use longrope_core::device::upcast_kind;
use longrope_core::model::{CheckpointScaling, Decoder, KvCache, LoadOptions, ModelSummary, NllSum, Rotary};
use longrope_core::nn::Linear;
use longrope_core::scaling::LayerTables;
use longrope_core::{LanguageModel, ModelArch, RopeTables};
use tch::{nn, Device, Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};
use crate::hf::{self, HfConfig};
use crate::{rope, tokenizer};

/// Positions scored per LM-head chunk in [`Llama::nll`] (bounds the `[chunk, vocab]` logits).
pub const NLL_CHUNK: usize = 1024;
/// Queries per block when attention needs an explicit mask (sliding window, or a cache continuation).
pub const ATTN_BLOCK: usize = 1024;

/// Which layers use the sliding window an HF `config.json` declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingRule {
    /// Never (Llama: its config has no window; only [`LoadOptions::sliding_window`] sets one).
    Never,
    /// Every layer, when `sliding_window` is set (Mistral, Phi-3).
    Always,
    /// Only with `use_sliding_window: true`, on the layers `layer_types` marks `sliding_attention`, else from
    /// `max_window_layers` on (Qwen2's `Qwen2Config.__post_init__`).
    WhenUsed,
}

/// Which per-dimension RoPE factor tensors llama.cpp's loader reads for an architecture (`load_arch_tensors`
/// in `src/models/*.cpp`); any other factor tensor in the file makes llama.cpp refuse it, and us too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufFactors {
    /// None (Qwen2).
    Nothing,
    /// `rope_freqs.weight`, or `rope_factors_long/short.weight` when `rope.scaling.type` is `longrope` (Llama).
    FreqsOrLongShort,
    /// `rope_factors_long/short.weight` (Phi-3).
    LongShort,
}

/// How one architecture of the Llama family is laid out (see the module doc).
#[derive(Debug)]
pub struct ArchSpec {
    /// The plugin name (`llama`, `qwen2` ...).
    pub name: &'static str,
    /// The HF class written in an exported `config.json` (`LlamaForCausalLM`).
    pub hf_class: &'static str,
    /// Biases on the q/k/v projections.
    pub qkv_bias: bool,
    /// One fused `qkv_proj` (rows: q, then k, then v) instead of `q_proj`/`k_proj`/`v_proj`.
    pub fused_qkv: bool,
    /// One fused `gate_up_proj` (rows: gate, then up) instead of `gate_proj`/`up_proj`.
    pub fused_gate_up: bool,
    /// Which layers slide.
    pub sliding: SlidingRule,
    /// Whether GGUF's `{arch}.attention.sliding_window` is applied (llama.cpp disables it for Phi-3).
    pub gguf_sliding_window: bool,
    /// llama.cpp stores the Q/K rows of this architecture permuted (`convert_hf_to_gguf.py`'s `permute`, for
    /// its `LLAMA_ROPE_TYPE_NORM` architectures); NEOX-rope architectures (Qwen2, Phi-3) are stored as HF's.
    pub gguf_permuted_qk: bool,
    /// The RoPE factor tensors llama.cpp reads for it.
    pub gguf_factors: GgufFactors,
    /// HF rope types this architecture's config class renames (Phi-3 reads `su` and `yarn` as `longrope`).
    pub hf_rope_aliases: &'static [(&'static str, &'static str)],
    /// The `original_max_position_embeddings` the config class assumes when the file has none (Phi-3: 4096).
    pub hf_original_default: Option<usize>,
}

/// The validated runtime configuration of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Key/value heads (divides `num_heads`).
    pub num_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// The rotating dimensions of a head (`head_dim` unless partial rotary).
    pub rotary_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Trained context.
    pub max_position_embeddings: usize,
    /// Whether the LM head is the token embedding.
    pub tie_word_embeddings: bool,
    /// Sliding attention window (keys `j` with `i - j < window` are visible to query `i`), if any.
    pub sliding_window: Option<usize>,
    /// Which layers use the window (`None`: all of them).
    pub sliding_layers: Option<Vec<bool>>,
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    pub eos_token_id: Option<u32>,
    /// The checkpoint's own RoPE scaling, if any (see [`ModelSummary::checkpoint_scaling`]).
    pub checkpoint_scaling: Option<CheckpointScaling>,
}

impl LlamaConfig {
    /// Validate an HF `config.json` mirror (`path` names the file in errors) for architecture `spec`, and read
    /// the checkpoint's own RoPE scaling (an unknown type is an error naming the file).
    pub fn from_hf(c: &HfConfig, path: &Path, spec: &ArchSpec) -> Result<Self> {
        let err = |field: &str, msg: String| ModelError::config(path, field, msg);
        if c.hidden_act != "silu" {
            return Err(err("hidden_act", format!("`{}` is not supported (only silu)", c.hidden_act)));
        }
        if c.attention_bias && !spec.qkv_bias {
            return Err(err("attention_bias", "biases are not supported".into()));
        }
        if c.mlp_bias {
            return Err(err("mlp_bias", "biases are not supported".into()));
        }
        let hidden_size = HfConfig::size(path, "hidden_size", c.hidden_size)?;
        let num_heads = HfConfig::size(path, "num_attention_heads", c.num_attention_heads)?;
        let num_layers = HfConfig::size(path, "num_hidden_layers", c.num_hidden_layers)?;
        let head_dim = c.head_dim.unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0));
        let rotary_dim = match c.partial_rotary() {
            None => head_dim,
            Some(f) if f > 0.0 && f <= 1.0 => (head_dim as f64 * f) as usize,
            Some(f) => return Err(err("partial_rotary_factor", format!("{f} is outside (0, 1]"))),
        };
        let mut doc = c.doc.clone();
        if let (Some(default), Some(obj)) = (spec.hf_original_default, doc.as_object_mut()) {
            obj.entry("original_max_position_embeddings").or_insert(default.into());
        }
        let checkpoint_scaling = longrope_core::scaling::hf::read_hf_config(&doc, &path.display().to_string(), spec.hf_rope_aliases)
            .map_err(|e| ModelError::corrupt(path, e.to_string()))?;
        let declared = HfConfig::size(path, "max_position_embeddings", c.max_position_embeddings)?;
        let (sliding_window, sliding_layers) = hf_sliding(c, spec.sliding, num_layers, path)?;
        let cfg = LlamaConfig {
            vocab_size: HfConfig::size(path, "vocab_size", c.vocab_size)?,
            hidden_size,
            intermediate_size: HfConfig::size(path, "intermediate_size", c.intermediate_size)?,
            num_layers,
            num_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rotary_dim,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_base(),
            max_position_embeddings: checkpoint_scaling.as_ref().map(|cs| cs.original_max_position_embeddings).unwrap_or(declared),
            tie_word_embeddings: c.tie_word_embeddings,
            sliding_window,
            sliding_layers,
            bos_token_id: hf::token_id(&c.bos_token_id),
            eos_token_id: hf::token_id(&c.eos_token_id),
            checkpoint_scaling,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read the configuration from GGUF metadata (`{arch}.block_count` ...) for architecture `spec`, with the
    /// checkpoint's RoPE scaling as llama.cpp applies it ([`crate::gguf_rope`]).
    pub fn from_gguf(g: &GgufFile, spec: &ArchSpec) -> Result<Self> {
        let arch = g.get_str("general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| g.get_u64(&key(k)).map(|v| v as usize);
        let opt_u = |k: &str| g.get(&key(k)).and_then(Value::as_u64).map(|v| v as usize);
        let f = |k: &str| -> Result<Option<f64>> {
            match g.get(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| ModelError::config(&g.path, key(k), "expected a number")),
            }
        };
        let hidden = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let kv = opt_u("attention.head_count_kv").unwrap_or(heads);
        let head_dim = opt_u("attention.key_length").unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        let rotary_dim = opt_u("rope.dimension_count").unwrap_or(head_dim);
        let vocab = match opt_u("vocab_size") {
            Some(v) => v,
            None => g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|a| a.len()).unwrap_or(0),
        };
        let num_layers = u("block_count")?;
        let context = u("context_length")?;
        let rope_theta = f("rope.freq_base")?.unwrap_or(10000.0);
        let checkpoint_scaling = crate::gguf_rope::read(g, spec, context, rotary_dim)?;
        let window = opt_u("attention.sliding_window").filter(|w| *w > 0 && spec.gguf_sliding_window && spec.sliding != SlidingRule::Never);
        let cfg = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            num_layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rotary_dim,
            rms_norm_eps: f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope_theta,
            max_position_embeddings: checkpoint_scaling.as_ref().map(|cs| cs.original_max_position_embeddings).unwrap_or(context),
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            sliding_window: window,
            sliding_layers: None,
            bos_token_id: g.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).map(|v| v as u32),
            eos_token_id: g.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64).map(|v| v as u32),
            checkpoint_scaling,
        };
        cfg.validate(&g.path)?;
        Ok(cfg)
    }

    /// The [`ModelSummary`] of a checkpoint with this config (`format`: `gguf` or `safetensors`; `weight_dtype`:
    /// the storage types of its weights), as [`LanguageModel::summary`] reports it once loaded.
    pub fn summary(&self, spec: &ArchSpec, format: &str, weight_dtype: String) -> ModelSummary {
        ModelSummary {
            arch: spec.name.to_string(),
            format: format.to_string(),
            num_layers: self.num_layers,
            hidden_size: self.hidden_size,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            vocab_size: self.vocab_size,
            rope_base: self.rope_theta,
            max_position_embeddings: self.max_position_embeddings,
            sliding_window: self.sliding_window,
            tied_embeddings: self.tie_word_embeddings,
            weight_dtype,
            bos_token_id: self.bos_token_id,
            eos_token_id: self.eos_token_id,
            checkpoint_scaling: self.checkpoint_scaling.clone(),
            rotary_dim: (self.rotary_dim != self.head_dim).then_some(self.rotary_dim),
        }
    }

    /// Check sizes: positive and within `longrope_core::limits` (or generous bounds of their own), heads divide,
    /// even head_dim, sane epsilon and base. Nothing is allocated from a config before it passes.
    pub fn validate(&self, path: &Path) -> Result<()> {
        use longrope_core::limits::{MAX_CONTEXT, MAX_HEAD_DIM, MAX_LAYERS, MAX_ROPE_BASE};
        let err = |field: &str, msg: String| Err(ModelError::config(path, field, msg));
        for (field, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 18),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, 1 << 12),
            ("num_key_value_heads", self.num_kv_heads, 1 << 12),
            ("max_position_embeddings", self.max_position_embeddings, MAX_CONTEXT),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
        ] {
            if v == 0 || v > max {
                return err(field, format!("{v} is outside [1, {max}]"));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return err("num_key_value_heads", format!("{} does not divide num_attention_heads {}", self.num_kv_heads, self.num_heads));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return err("head_dim", format!("must be even and positive, got {}", self.head_dim));
        }
        if self.rotary_dim == 0 || self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return err("rotary dimensions (partial_rotary_factor, rope.dimension_count)", format!("{} must be even, positive and at most head_dim {}", self.rotary_dim, self.head_dim));
        }
        if let Some(layers) = &self.sliding_layers {
            if layers.len() != self.num_layers {
                return err("layer_types", format!("{} entries for {} layers", layers.len(), self.num_layers));
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0 && self.rope_theta <= MAX_ROPE_BASE) {
            return err("rope_theta", format!("{} is outside (1, {MAX_ROPE_BASE:e}]", longrope_core::limits::show(self.rope_theta)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return err("rms_norm_eps", format!("must be positive, got {}", self.rms_norm_eps));
        }
        if self.sliding_window == Some(0) {
            return err("sliding_window", "must be positive".into());
        }
        Ok(())
    }
}

/// The layout of an architecture of this crate by plugin name.
pub fn arch_spec(name: &str) -> Option<&'static ArchSpec> {
    [&LLAMA, &crate::mistral::MISTRAL, &crate::qwen2::QWEN2, &crate::phi3::PHI3].into_iter().find(|s| s.name == name)
}

/// The storage types of a GGUF file's weights (the tensors `spec` maps to HF names), most frequent first:
/// `Q4_1, Q8_0, F32`.
fn gguf_weight_types(g: &GgufFile, spec: &ArchSpec) -> String {
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in g.tensors.iter().filter(|t| hf_name(&t.name, spec).is_some()) {
        *types.entry(t.ggml_type.name()).or_default() += 1;
    }
    let mut types: Vec<(String, usize)> = types.into_iter().collect();
    types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    types.into_iter().map(|(t, _)| t).collect::<Vec<_>>().join(", ")
}

/// The summary of an open GGUF file (architecture from `general.architecture`), read from its metadata alone:
/// no weight is dequantised, so this is cheap for any model size.
pub fn gguf_summary(g: &GgufFile) -> Result<ModelSummary> {
    let arch = g.get_str("general.architecture")?;
    let spec = arch_spec(arch).ok_or_else(|| ModelError::config(&g.path, "general.architecture", format!("`{arch}` has no known GGUF layout")))?;
    let config = LlamaConfig::from_gguf(g, spec)?;
    Ok(config.summary(spec, "gguf", gguf_weight_types(g, spec)))
}

/// The sliding window of an HF config under `rule`: the window and, when not every layer uses it, which do.
fn hf_sliding(c: &HfConfig, rule: SlidingRule, num_layers: usize, path: &Path) -> Result<(Option<usize>, Option<Vec<bool>>)> {
    match rule {
        SlidingRule::Never => Ok((None, None)),
        SlidingRule::Always => Ok((c.sliding_window, None)),
        SlidingRule::WhenUsed => {
            let Some(window) = c.sliding_window.filter(|_| c.use_sliding_window == Some(true)) else { return Ok((None, None)) };
            let layers: Vec<bool> = match &c.layer_types {
                Some(types) => types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(ModelError::config(path, "layer_types", format!("`{other}` is not full_attention or sliding_attention"))),
                    })
                    .collect::<Result<_>>()?,
                None => (0..num_layers).map(|i| i >= c.max_window_layers.unwrap_or(28)).collect(),
            };
            if !layers.iter().any(|&l| l) {
                return Ok((None, None));
            }
            Ok((Some(window), Some(layers)))
        }
    }
}

/// Undo llama.cpp's Q/K row permutation: rows `[n_head, 2, head_dim/2]` were stored as
/// `[n_head, head_dim/2, 2]`; `w` is `[n_head * head_dim, in]`.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Tensor {
    let size = w.size();
    let (out, rest) = (size[0], &size[1..]);
    let hd = out / n_head as i64;
    let mut shape = vec![n_head as i64, hd / 2, 2];
    shape.extend_from_slice(rest);
    w.reshape(shape.as_slice()).transpose(1, 2).reshape(size.as_slice())
}

/// The HF name of a llama.cpp GGUF tensor name for architecture `spec` (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`; Phi-3's fused `attn_qkv` -> `qkv_proj` and `ffn_up` ->
/// `gate_up_proj`). `None` for tensors that are not weights (the RoPE factor tensors, read by [`crate::gguf_rope`]).
pub fn hf_name(gguf_name: &str, spec: &ArchSpec) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if spec.fused_gate_up => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// A checkpoint read from disk: config, CPU tensors by HF name, tokenizer, and what the weights were stored as.
pub struct Checkpoint {
    /// The architecture.
    pub spec: &'static ArchSpec,
    /// The file or directory.
    pub path: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// Runtime config.
    pub config: LlamaConfig,
    /// Tensors by HF name (CPU; f32 after GGUF dequantisation, stored dtype for safetensors).
    pub tensors: HashMap<String, Tensor>,
    /// Storage types of the weights (`Q4_1, Q8_0, F32`).
    pub weight_dtype: String,
    /// Tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
}

impl Checkpoint {
    /// Read an HF directory of architecture `spec`.
    pub fn from_hf_dir(dir: &Path, spec: &'static ArchSpec) -> Result<Self> {
        let hf = HfConfig::read(dir)?;
        let config = LlamaConfig::from_hf(&hf, &dir.join("config.json"), spec)?;
        let (tensors, weight_dtype) = hf::read_safetensors(&hf::weight_files(dir)?)?;
        let tokenizer = tokenizer::from_file(&dir.join("tokenizer.json"))?;
        Ok(Checkpoint { spec, path: dir.to_path_buf(), format: "safetensors", config, tensors, weight_dtype, tokenizer })
    }

    /// Read a GGUF file of architecture `spec`: dequantise every weight, rename to HF names, undo the Q/K
    /// permutation where llama.cpp applies one, fuse separate q/k/v for a fused architecture.
    pub fn from_gguf(path: &Path, spec: &'static ArchSpec) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&g, spec)?;
        let tokenizer = tokenizer::from_gguf(&g)?;
        let mut tensors = HashMap::new();
        for t in &g.tensors {
            let Some(name) = hf_name(&t.name, spec) else { continue };
            let values = g.dequantize(t)?;
            let mut w = Tensor::f_from_slice(&values)?.f_reshape(t.shape.as_slice())?;
            if spec.gguf_permuted_qk && name.contains("q_proj.") {
                w = unpermute_qk(&w, config.num_heads);
            } else if spec.gguf_permuted_qk && name.contains("k_proj.") {
                w = unpermute_qk(&w, config.num_kv_heads);
            }
            tensors.insert(name, w);
        }
        if spec.fused_qkv {
            fuse_qkv(&mut tensors, config.num_layers);
        }
        let weight_dtype = gguf_weight_types(&g, spec);
        Ok(Checkpoint { spec, path: path.to_path_buf(), format: "gguf", config, tensors, weight_dtype, tokenizer })
    }

    /// Read a checkpoint of architecture `spec`, choosing the format from the path.
    pub fn read(path: &Path, spec: &'static ArchSpec) -> Result<Self> {
        match crate::Format::of(path)? {
            crate::Format::Gguf => Self::from_gguf(path, spec),
            crate::Format::HfDir(dir) => Self::from_hf_dir(&dir, spec),
        }
    }

    fn take(&mut self, name: &str, expected: &[i64], options: &LoadOptions) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), name: name.to_string() })?;
        if t.size() != expected {
            return Err(ModelError::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: t.size(),
            });
        }
        Ok(t.f_to_device(options.device)?.f_to_kind(options.dtype)?)
    }
}

/// A GGUF file of a fused-qkv architecture may store q/k/v separately (llama.cpp's `create_tensor_qkv`
/// accepts both): concatenate them (and their biases) into the `qkv_proj` rows HF's layout has.
fn fuse_qkv(tensors: &mut HashMap<String, Tensor>, num_layers: usize) {
    for l in 0..num_layers {
        for kind in ["weight", "bias"] {
            let name = |p: &str| format!("model.layers.{l}.self_attn.{p}.{kind}");
            let parts: Vec<Option<Tensor>> = ["q_proj", "k_proj", "v_proj"].iter().map(|p| tensors.remove(&name(p))).collect();
            if parts.iter().all(Option::is_some) {
                let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
                tensors.insert(name("qkv_proj"), Tensor::cat(&parts, 0));
            } else {
                for (p, t) in ["q_proj", "k_proj", "v_proj"].iter().zip(parts) {
                    if let Some(t) = t {
                        tensors.insert(name(p), t);
                    }
                }
            }
        }
    }
}

/// Adds checkpoint tensors to a `VarStore` under their HF names, checking shapes and converting to the
/// device and compute dtype. Weights are added frozen (no gradient); a trainer marks what it trains.
struct Loader<'a> {
    ck: &'a mut Checkpoint,
    options: &'a LoadOptions,
}

impl Loader<'_> {
    /// The tensor `p.name` (e.g. `model.layers.0.self_attn.q_proj` + `weight`), registered in the store.
    fn take(&mut self, p: &nn::Path, name: &str, expected: &[i64]) -> Result<Tensor> {
        let t = self.ck.take(&p.path(name), expected, self.options)?;
        Ok(p.add(name, t, false))
    }

    fn linear(&mut self, p: &nn::Path, out: i64, inp: i64) -> Result<Linear> {
        Ok(Linear::new(self.take(p, "weight", &[out, inp])?, None))
    }

    fn linear_bias(&mut self, p: &nn::Path, out: i64, inp: i64) -> Result<Linear> {
        Ok(Linear::new(self.take(p, "weight", &[out, inp])?, Some(self.take(p, "bias", &[out])?)))
    }
}

/// HF's `LlamaRMSNorm`: normalise in f32, cast back to the input's dtype, then scale by the weight.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(p: &nn::Path, ld: &mut Loader, size: i64, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: ld.take(p, "weight", &[size])?, eps })
    }

    /// `weight * (x / sqrt(mean(x²) + eps))`, the statistics in f32.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        (xf * (var + self.eps).rsqrt()).to_kind(x.kind()) * &self.weight
    }
}

/// The query/key/value projections: separate (Llama; with biases for Qwen2) or one fused `qkv_proj` whose
/// rows are the queries, then the keys, then the values (Phi-3).
#[derive(Debug)]
pub enum QkvProj {
    /// `q_proj`, `k_proj`, `v_proj`.
    Separate {
        /// Queries.
        q_proj: Linear,
        /// Keys.
        k_proj: Linear,
        /// Values.
        v_proj: Linear,
    },
    /// `qkv_proj`.
    Fused(Linear),
}

/// Rotary self-attention with grouped KV heads (GQA), an optional sliding window and an optional KV cache.
#[derive(Debug)]
pub struct Attention {
    qkv: QkvProj,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    rotary_dim: i64,
    sliding_window: Option<i64>,
}

impl Attention {
    fn load(p: &nn::Path, ld: &mut Loader, c: &LlamaConfig, layer: usize) -> Result<Self> {
        let h = c.hidden_size as i64;
        let spec = ld.ck.spec;
        let (q_out, kv_out) = ((c.num_heads * c.head_dim) as i64, (c.num_kv_heads * c.head_dim) as i64);
        let mut proj = |name: &str, out: i64| {
            if spec.qkv_bias {
                ld.linear_bias(&(p / name), out, h)
            } else {
                ld.linear(&(p / name), out, h)
            }
        };
        let qkv = if spec.fused_qkv {
            QkvProj::Fused(proj("qkv_proj", q_out + 2 * kv_out)?)
        } else {
            QkvProj::Separate { q_proj: proj("q_proj", q_out)?, k_proj: proj("k_proj", kv_out)?, v_proj: proj("v_proj", kv_out)? }
        };
        let slides = c.sliding_layers.as_ref().is_none_or(|layers| layers.get(layer).copied().unwrap_or(false));
        Ok(Attention {
            qkv,
            o_proj: ld.linear(&(p / "o_proj"), h, q_out)?,
            num_heads: c.num_heads as i64,
            num_kv_heads: c.num_kv_heads as i64,
            head_dim: c.head_dim as i64,
            rotary_dim: c.rotary_dim as i64,
            sliding_window: c.sliding_window.filter(|_| slides).map(|w| w as i64),
        })
    }

    /// `x * cos + rotate_half(x) * sin` on the first `rotary_dim` dimensions of each head, the rest passed
    /// through (HF's `apply_rotary_pos_emb`, partial when `rotary_dim < head_dim`).
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        if self.rotary_dim == self.head_dim {
            return x * cos + rotate_half(x) * sin;
        }
        let (r, pass) = (x.narrow(3, 0, self.rotary_dim), x.narrow(3, self.rotary_dim, self.head_dim - self.rotary_dim));
        Tensor::cat(&[&r * cos + rotate_half(&r) * sin, pass], 3)
    }

    /// Attention output `[b, s, hidden]` for `x` `[b, s, hidden]` at positions `past ..` (cos/sin broadcast to
    /// `[b, heads, s, head_dim]`). With a cache slot, the keys/values continue the cached ones and are stored.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        past: i64,
    ) -> Tensor {
        let size = x.size();
        let (b, s) = (size[0], size[1]);
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => (q_proj.forward(x), k_proj.forward(x), v_proj.forward(x)),
            QkvProj::Fused(qkv) => {
                let y = qkv.forward(x);
                (y.narrow(2, 0, nh * hd), y.narrow(2, nh * hd, nkv * hd), y.narrow(2, (nh + nkv) * hd, nkv * hd))
            }
        };
        // A bf16 model on CPU rotates and attends in f32 (`longrope_core::device::upcast_kind`): cast once, here;
        // the projections stay in bf16 and the output is cast back before `o_proj`, so such a model's KV cache
        // and cos/sin tables are f32.
        let attend_kind = upcast_kind(x.kind(), x.device());
        let heads = |t: Tensor, n: i64| t.reshape([b, s, n, hd]).transpose(1, 2).to_kind(attend_kind);
        let (q, k, mut v) = (heads(q, nh), heads(k, nkv), heads(v, nkv));
        let q = self.rotate(&q, cos, sin);
        let mut k = self.rotate(&k, cos, sin);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let attn = self.attend(&q, &k, &v, past).to_kind(x.kind());
        self.o_proj.forward(&attn.transpose(1, 2).reshape([b, s, nh * hd]))
    }

    /// Causal (optionally sliding-window) attention of queries at positions `past ..` over all keys, in the
    /// inputs' dtype.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, past: i64) -> Tensor {
        let rep = self.num_heads / self.num_kv_heads;
        let s = q.size()[2];
        let window = self.sliding_window;
        if window.is_none() && s == 1 && rep > 1 {
            // A decoding step: one query per head, every cached key visible. The `rep` query heads that share
            // a KV head (head h reads KV head h / rep, as in HF's `repeat_kv`) become `rep` queries of that KV
            // head, so the cache is read once instead of being copied `rep` times at every step.
            let qs = q.size();
            let grouped = q.reshape([qs[0], qs[1] / rep, rep, qs[3]]);
            let out = Tensor::scaled_dot_product_attention(&grouped, k, v, None::<Tensor>, 0.0, false, None, false);
            return out.reshape([qs[0], qs[1], 1, qs[3]]);
        }
        if window.is_none() && past == 0 {
            // Causal over the whole sequence: libtorch's flash kernel (CPU and CUDA) reads the shared KV heads
            // itself (`enable_gqa`), so K and V are not copied `rep` times.
            return Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, true, None, rep > 1);
        }
        let (k, v) = (repeat_kv(k, rep), repeat_kv(v, rep));
        if window.is_none() && s == 1 {
            return Tensor::scaled_dot_product_attention(q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        }
        let device = q.device();
        let mut outs = Vec::new();
        let mut q0 = 0;
        while q0 < s {
            let q1 = (q0 + ATTN_BLOCK as i64).min(s);
            let (first, last) = (past + q0, past + q1 - 1);
            let lo = window.map(|w| (first + 1 - w).max(0)).unwrap_or(0);
            let hi = last + 1;
            let i = Tensor::arange_start(first, last + 1, (Kind::Int64, device)).unsqueeze(1);
            let j = Tensor::arange_start(lo, hi, (Kind::Int64, device)).unsqueeze(0);
            let mut mask = j.le_tensor(&i);
            if let Some(w) = window {
                mask = mask.logical_and(&(&i - &j).lt(w));
            }
            let out = Tensor::scaled_dot_product_attention(
                &q.narrow(2, q0, q1 - q0),
                &k.narrow(2, lo, hi - lo),
                &v.narrow(2, lo, hi - lo),
                Some(mask),
                0.0,
                false,
                None,
                false,
            );
            outs.push(out);
            q0 = q1;
        }
        if outs.len() == 1 {
            outs.pop().expect("one block")
        } else {
            Tensor::cat(&outs, 2)
        }
    }
}

/// The gate and up projections of the MLP: separate, or one fused `gate_up_proj` whose rows are the gate's,
/// then the up projection's (Phi-3's `up_states.chunk(2, dim=-1)`).
#[derive(Debug)]
pub enum GateUpProj {
    /// `gate_proj`, `up_proj`.
    Separate {
        /// The gate.
        gate_proj: Linear,
        /// The up projection.
        up_proj: Linear,
    },
    /// `gate_up_proj`.
    Fused(Linear),
}

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    gate_up: GateUpProj,
    down_proj: Linear,
}

impl Mlp {
    fn load(p: &nn::Path, ld: &mut Loader, c: &LlamaConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size as i64, c.intermediate_size as i64);
        let gate_up = if ld.ck.spec.fused_gate_up {
            GateUpProj::Fused(ld.linear(&(p / "gate_up_proj"), 2 * i, h)?)
        } else {
            GateUpProj::Separate { gate_proj: ld.linear(&(p / "gate_proj"), i, h)?, up_proj: ld.linear(&(p / "up_proj"), i, h)? }
        };
        Ok(Mlp { gate_up, down_proj: ld.linear(&(p / "down_proj"), h, i)? })
    }

    /// The MLP output for `x` `[..., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (gate, up) = match &self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => (gate_proj.forward(x), up_proj.forward(x)),
            GateUpProj::Fused(gate_up) => {
                let y = gate_up.forward(x);
                let i = y.size()[y.dim() - 1] / 2;
                (y.narrow(-1, 0, i), y.narrow(-1, i, i))
            }
        };
        self.down_proj.forward(&(gate.silu() * up))
    }
}

/// One decoder layer: pre-norm attention and pre-norm MLP, each with its residual.
#[derive(Debug)]
pub struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(p: &nn::Path, ld: &mut Loader, c: &LlamaConfig, layer: usize) -> Result<Self> {
        let h = c.hidden_size as i64;
        Ok(Block {
            input_layernorm: RmsNorm::load(&(p / "input_layernorm"), ld, h, c.rms_norm_eps)?,
            self_attn: Attention::load(&(p / "self_attn"), ld, c, layer)?,
            post_attention_layernorm: RmsNorm::load(&(p / "post_attention_layernorm"), ld, h, c.rms_norm_eps)?,
            mlp: Mlp::load(&(p / "mlp"), ld, c)?,
        })
    }

    /// The layer's output for `x` `[b, s, hidden]` (see [`Attention::forward`] for the other arguments).
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        past: i64,
    ) -> Tensor {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), cos, sin, cache, past);
        let out = self.mlp.forward(&self.post_attention_layernorm.forward(&h));
        h + out
    }

    /// The block's projections by their HF module names relative to the block (`self_attn.q_proj`, or
    /// `self_attn.qkv_proj` and `mlp.gate_up_proj` for a fused architecture).
    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        let mut out = Vec::with_capacity(7);
        match &mut a.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => {
                out.extend([("self_attn.q_proj", q_proj), ("self_attn.k_proj", k_proj), ("self_attn.v_proj", v_proj)])
            }
            QkvProj::Fused(qkv) => out.push(("self_attn.qkv_proj", qkv)),
        }
        out.push(("self_attn.o_proj", &mut a.o_proj));
        match &mut m.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => out.extend([("mlp.gate_proj", gate_proj), ("mlp.up_proj", up_proj)]),
            GateUpProj::Fused(gate_up) => out.push(("mlp.gate_up_proj", gate_up)),
        }
        out.push(("mlp.down_proj", &mut m.down_proj));
        out
    }
}

/// A Llama-family causal LM on libtorch (Llama, Mistral, Qwen2, Phi-3: see [`ArchSpec`]). Its weights live in
/// a `VarStore` under their HF names; the blocks hold handles to them.
pub struct Llama {
    config: LlamaConfig,
    spec: &'static ArchSpec,
    summary: ModelSummary,
    tokenizer: tokenizers::Tokenizer,
    vs: nn::VarStore,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    device: Device,
    dtype: Kind,
}

impl Llama {
    /// Load an architecture whose checkpoint declares its own sliding window (Mistral, Qwen2, Phi-3): read the
    /// checkpoint under `spec`, let [`LoadOptions::sliding_window`] override the window, validate, build.
    pub fn load_windowed(
        path: &Path,
        spec: &'static ArchSpec,
        options: &LoadOptions,
    ) -> longrope_core::Result<Box<dyn LanguageModel>> {
        let mut ck = Checkpoint::read(path, spec)?;
        if let Some(window) = options.sliding_window {
            ck.config.sliding_window = window;
        }
        ck.config.validate(&ck.path)?;
        Ok(Box::new(Llama::from_checkpoint(ck, options)?))
    }

    /// Build the model from a checkpoint: move weights to the device and dtype, check every shape, register
    /// them in the model's `VarStore`.
    pub fn from_checkpoint(mut ck: Checkpoint, options: &LoadOptions) -> Result<Self> {
        match options.dtype {
            Kind::Float | Kind::BFloat16 | Kind::Half => {}
            other => return Err(ModelError::invalid("dtype", format!("{other:?}: expected f32, bf16 or f16"))),
        }
        let c = ck.config.clone();
        let (h, v) = (c.hidden_size as i64, c.vocab_size as i64);
        let vs = nn::VarStore::new(options.device);
        let root = vs.root();
        let model = &root / "model";
        let format = ck.format;
        let spec = ck.spec;
        let weight_dtype = ck.weight_dtype.clone();
        let mut ld = Loader { ck: &mut ck, options };
        let embed_tokens = ld.take(&(&model / "embed_tokens"), "weight", &[v, h])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            layers.push(Block::load(&(&model / "layers" / l), &mut ld, &c, l)?);
        }
        let norm = RmsNorm::load(&(&model / "norm"), &mut ld, h, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(ld.take(&(&root / "lm_head"), "weight", &[v, h])?) };
        let summary = c.summary(spec, format, weight_dtype);
        Ok(Llama {
            config: c,
            spec,
            summary,
            tokenizer: ck.tokenizer,
            vs,
            embed_tokens,
            layers,
            norm,
            lm_head,
            device: options.device,
            dtype: options.dtype,
        })
    }

    /// The runtime config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    fn check_tables(&self, tables: &LayerTables) -> Result<()> {
        if tables.layers.len() != self.config.num_layers {
            return Err(ModelError::invalid(
                "rope tables",
                format!("{} layers of tables for a model of {} layers", tables.layers.len(), self.config.num_layers),
            ));
        }
        let half = self.config.rotary_dim / 2;
        for (l, t) in tables.layers.iter().enumerate() {
            let bad = t.inv_freq.len() != half || t.retained.as_ref().is_some_and(|r| r.inv_freq.len() != half);
            if bad {
                return Err(ModelError::invalid(
                    "rope tables",
                    format!("layer {l}: expected {half} inverse frequencies (rotary dimensions {})", self.config.rotary_dim),
                ));
            }
        }
        Ok(())
    }

    /// Token ids as an i64 tensor on the model's device, checked: `[batch, seq]`, non-empty, within the vocabulary.
    fn checked_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let size = tokens.size();
        if size.len() != 2 || size[1] == 0 || size[0] == 0 {
            return Err(ModelError::invalid("tokens", format!("expected a non-empty [batch, seq] tensor, got {size:?}")));
        }
        let tokens = tokens.f_to_kind(Kind::Int64)?.f_to_device(self.device)?;
        let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
        if lo < 0 || hi >= self.config.vocab_size as i64 {
            return Err(ModelError::invalid("tokens", format!("ids must be in 0..{}, got {lo}..={hi}", self.config.vocab_size)));
        }
        Ok(tokens)
    }

    /// Per-layer cos/sin `[b or 1, 1, s, rotary_dim]` for `positions` (`[s]` or `[b, s]`).
    fn rotary_at(&self, tables: &LayerTables, positions: &Tensor) -> Result<Rotary> {
        self.check_tables(tables)?;
        let pos = positions.f_to_kind(Kind::Int64)?.f_to_device(self.device)?;
        let pos = match pos.dim() {
            1 => pos.unsqueeze(0),
            2 => pos,
            d => return Err(ModelError::invalid("positions", format!("expected [seq] or [batch, seq], got {d} dimensions"))),
        };
        let (pb, ps) = (pos.size()[0], pos.size()[1]);
        let hd = self.config.rotary_dim as i64;
        let mut made: Vec<(Arc<RopeTables>, Tensor, Tensor)> = Vec::new();
        let (mut cos, mut sin) = (Vec::with_capacity(tables.layers.len()), Vec::with_capacity(tables.layers.len()));
        for t in &tables.layers {
            let idx = match made.iter().position(|(c, _, _)| Arc::ptr_eq(c, t) || **c == **t) {
                Some(i) => i,
                None => {
                    let (c, s) = rope::cos_sin_at(t, &pos, upcast_kind(self.dtype, self.device));
                    made.push((t.clone(), c.view([pb, 1, ps, hd]), s.view([pb, 1, ps, hd])));
                    made.len() - 1
                }
            };
            cos.push(made[idx].1.shallow_clone());
            sin.push(made[idx].2.shallow_clone());
        }
        Ok(Rotary { cos, sin })
    }

    /// The decoder trunk: final-normed hidden states `[batch, seq, hidden]` for `tokens` `[batch, seq]` at
    /// positions `cache.len ..` (0 without a cache). With a cache, the tokens continue the cached sequence and
    /// the cache is extended; a cache built under other tables is refused.
    pub fn hidden_states(&self, tokens: &Tensor, tables: &LayerTables, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.check_tables(tables)?;
        let tokens = self.checked_tokens(tokens)?;
        let s = tokens.size()[1];
        let past = match cache.as_deref_mut() {
            Some(c) => {
                if c.len > 0 && c.tables.as_ref() != Some(tables) {
                    return Err(ModelError::invalid(
                        "kv cache",
                        "the cache was built with other rope tables; rebuild it (re-prefill) when tables change",
                    ));
                }
                if c.layers.len() != self.config.num_layers {
                    c.layers = (0..self.config.num_layers).map(|_| None).collect();
                    c.len = 0;
                }
                c.len
            }
            None => 0,
        };
        let positions = Tensor::arange_start(past as i64, past as i64 + s, (Kind::Int64, self.device));
        let rotary = self.rotary_at(tables, &positions)?;
        let mut x = Tensor::embedding(&self.embed_tokens, &tokens, -1, false, false);
        for (l, blk) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = blk.forward(&x, &rotary.cos[l], &rotary.sin[l], slot, past as i64);
        }
        if let Some(c) = cache {
            c.len = past + s as usize;
            c.tables = Some(tables.clone());
        }
        Ok(self.norm.forward(&x))
    }

    /// NLL with the LM head applied over chunks of `chunk` positions (run it under `no_grad` for evaluation).
    pub fn nll_chunked(&self, tokens: &[i64], tables: &LayerTables, score_from: usize, chunk: usize) -> Result<NllSum> {
        let n = tokens.len();
        let first = score_from.max(1);
        if first >= n {
            return Ok(NllSum::default());
        }
        let ids = Tensor::from_slice(tokens).unsqueeze(0);
        let hidden = self.hidden_states(&ids, tables, None)?.squeeze_dim(0);
        let h = hidden.narrow(0, (first - 1) as i64, (n - first) as i64);
        let targets = Tensor::from_slice(&tokens[first..]).to_device(self.device);
        let sum = longrope_core::model::chunked_nll_sum(&h, self.head(), &targets, chunk).to_kind(Kind::Double);
        Ok(NllSum { sum: sum.double_value(&[]), count: n - first })
    }
}

/// HF's `rotate_half`: `cat(-x2, x1)` over the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3)
}

/// HF's `repeat_kv`: `[b, kv, t, d]` -> `[b, kv * rep, t, d]`, each KV head repeated `rep` times in place.
fn repeat_kv(x: &Tensor, rep: i64) -> Tensor {
    if rep == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2).expand([s[0], s[1], rep, s[2], s[3]], false).reshape([s[0], s[1] * rep, s[2], s[3]])
}

impl LanguageModel for Llama {
    fn summary(&self) -> &ModelSummary {
        &self.summary
    }
    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
    fn device(&self) -> Device {
        self.device
    }
    fn dtype(&self) -> Kind {
        self.dtype
    }
    fn forward(&self, tokens: &Tensor, tables: &LayerTables, cache: Option<&mut KvCache>) -> longrope_core::Result<Tensor> {
        let h = self.hidden_states(tokens, tables, cache)?;
        Ok(h.linear(self.head(), None::<Tensor>).to_kind(Kind::Float))
    }
    fn forward_last(&self, tokens: &Tensor, tables: &LayerTables, cache: Option<&mut KvCache>) -> longrope_core::Result<Tensor> {
        let h = self.hidden_states(tokens, tables, cache)?.select(1, -1);
        Ok(h.linear(self.head(), None::<Tensor>).to_kind(Kind::Float))
    }
    fn nll(&self, tokens: &[i64], tables: &LayerTables, score_from: usize) -> longrope_core::Result<NllSum> {
        Ok(self.nll_chunked(tokens, tables, score_from, NLL_CHUNK)?)
    }
    fn decoder(&self) -> Option<&dyn Decoder> {
        Some(self)
    }
    fn decoder_mut(&mut self) -> Option<&mut dyn Decoder> {
        Some(self)
    }
}

impl Decoder for Llama {
    fn rotary(&self, tables: &LayerTables, positions: &Tensor) -> longrope_core::Result<Rotary> {
        Ok(self.rotary_at(tables, positions)?)
    }
    fn embed(&self, tokens: &Tensor) -> longrope_core::Result<Tensor> {
        let tokens = self.checked_tokens(tokens)?;
        Ok(Tensor::embedding(&self.embed_tokens, &tokens, -1, false, false))
    }
    fn block(&self, layer: usize, x: &Tensor, rotary: &Rotary) -> longrope_core::Result<Tensor> {
        let blk = self.layers.get(layer).ok_or_else(|| {
            ModelError::invalid("layer", format!("{layer} is out of range (the model has {} layers)", self.layers.len()))
        })?;
        let (cos, sin) = (&rotary.cos[layer], &rotary.sin[layer]);
        Ok(blk.forward(x, cos, sin, None, 0))
    }
    fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }
    fn lm_head(&self) -> &Tensor {
        self.head()
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(7 * self.layers.len());
        for (l, blk) in self.layers.iter_mut().enumerate() {
            for (name, lin) in blk.linears_mut() {
                out.push((format!("model.layers.{l}.{name}"), lin));
            }
        }
        out
    }
    fn hf_config(&self) -> serde_json::Value {
        let c = &self.config;
        let mut doc = serde_json::json!({
            "architectures": [self.spec.hf_class],
            "model_type": self.spec.name,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
        });
        if !self.spec.qkv_bias {
            doc["attention_bias"] = false.into();
            doc["mlp_bias"] = false.into();
        }
        if c.rotary_dim != c.head_dim {
            doc["partial_rotary_factor"] = (c.rotary_dim as f64 / c.head_dim as f64).into();
        }
        match self.spec.sliding {
            SlidingRule::Never => {}
            SlidingRule::Always => doc["sliding_window"] = serde_json::json!(c.sliding_window),
            SlidingRule::WhenUsed => {
                doc["use_sliding_window"] = c.sliding_window.is_some().into();
                doc["sliding_window"] = serde_json::json!(c.sliding_window);
                let types: Vec<&str> = (0..c.num_layers)
                    .map(|l| match &c.sliding_layers {
                        Some(v) if v[l] => "sliding_attention",
                        _ => "full_attention",
                    })
                    .collect();
                doc["layer_types"] = serde_json::json!(types);
            }
        }
        doc
    }
}

/// Llama's layout: separate projections without biases; llama.cpp permutes its Q/K rows in GGUF.
pub static LLAMA: ArchSpec = ArchSpec {
    name: LlamaArch::NAME,
    hf_class: "LlamaForCausalLM",
    qkv_bias: false,
    fused_qkv: false,
    fused_gate_up: false,
    sliding: SlidingRule::Never,
    gguf_sliding_window: true,
    gguf_permuted_qk: true,
    gguf_factors: GgufFactors::FreqsOrLongShort,
    hf_rope_aliases: &[],
    hf_original_default: None,
};

/// The `llama` architecture plugin.
pub struct LlamaArch;

impl ModelArch for LlamaArch {
    fn load(&self, path: &Path, options: &LoadOptions) -> longrope_core::Result<Box<dyn LanguageModel>> {
        let mut ck = Checkpoint::read(path, &LLAMA)?;
        // Llama has no sliding window of its own; only an explicit override sets one.
        ck.config.sliding_window = options.sliding_window.flatten();
        Ok(Box::new(Llama::from_checkpoint(ck, options)?))
    }
}

longrope_core::plugin! {
    kind: Arch,
    name: "llama",
    summary: "Llama (HF safetensors or GGUF): RMSNorm, GQA, SwiGLU, rotary attention",
    arch: LlamaArch,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` (convert_hf_to_gguf.py): `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`.
    fn permute(w: &Tensor, n_head: i64) -> Tensor {
        let s = w.size();
        w.reshape([n_head, 2, s[0] / n_head / 2, s[1]]).transpose(1, 2).reshape(s.as_slice())
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let w = Tensor::arange(3 * 8 * 5, (Kind::Float, Device::Cpu)).reshape([24, 5]);
        let back = unpermute_qk(&permute(&w, 3), 3);
        assert!(back.equal(&w));
        // Row 1 of head 0 in GGUF order is HF row 4 (second half of the head's rotary pairs).
        let p = permute(&w, 3);
        assert!(p.get(1).equal(&w.get(4)));
    }

    #[test]
    fn maps_gguf_names_to_hf() {
        assert_eq!(hf_name("blk.12.attn_k.weight", &LLAMA).as_deref(), Some("model.layers.12.self_attn.k_proj.weight"));
        assert_eq!(hf_name("blk.1.attn_q.bias", &LLAMA).as_deref(), Some("model.layers.1.self_attn.q_proj.bias"));
        assert_eq!(hf_name("blk.0.ffn_up.weight", &LLAMA).as_deref(), Some("model.layers.0.mlp.up_proj.weight"));
        assert_eq!(hf_name("blk.0.ffn_up.weight", &crate::phi3::PHI3).as_deref(), Some("model.layers.0.mlp.gate_up_proj.weight"));
        assert_eq!(hf_name("blk.0.attn_qkv.weight", &crate::phi3::PHI3).as_deref(), Some("model.layers.0.self_attn.qkv_proj.weight"));
        assert_eq!(hf_name("token_embd.weight", &LLAMA).as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("blk.x.attn_k.weight", &LLAMA), None);
        assert_eq!(hf_name("rope_freqs.weight", &LLAMA), None);
    }
}
