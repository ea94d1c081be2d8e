//! Llama (Touvron et al. 2023; HF `modeling_llama.py`): config, loading from HF safetensors or GGUF,
//! RMSNorm, rotary attention with GQA and a KV cache, SwiGLU MLP, decoder blocks, and the model.
//!
//! The model takes per-layer RoPE tables from the caller (`LayerTables`) and never knows which scaling
//! method made them. Attention uses libtorch's `scaled_dot_product_attention` (causal); an optional
//! sliding window (Mistral) is applied as a band mask built per block of queries, so memory stays
//! `O(block * window)` at long context. The NLL path runs the trunk once and the LM head + log-softmax over
//! chunks of positions, never materialising `[seq, vocab]` logits.
//!
//! GGUF files store Q and K projection rows permuted the llama.cpp way (`convert_hf_to_gguf.py`'s
//! `permute`: per head, the two rotary halves interleaved); [`unpermute_qk`] undoes it so HF's
//! `rotate_half` RoPE applies unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use longrope_core::model::{KvCache, LoadOptions, ModelSummary, NllSum};
use longrope_core::scaling::LayerTables;
use longrope_core::{LanguageModel, ModelArch, RopeTables};
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};
use crate::hf::{self, HfConfig};
use crate::{rope, tokenizer};

/// Positions scored per LM-head chunk in [`Llama::nll`] (bounds the `[chunk, vocab]` logits).
pub const NLL_CHUNK: usize = 1024;
/// Queries per block when attention needs an explicit mask (sliding window, or a cache continuation).
pub const ATTN_BLOCK: usize = 1024;

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
    /// BOS token id.
    pub bos_token_id: Option<u32>,
    /// EOS token id.
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Validate an HF `config.json` mirror (`path` names the file in errors).
    pub fn from_hf(c: &HfConfig, path: &Path) -> Result<Self> {
        let err = |field: &str, msg: String| ModelError::config(path, field, msg);
        if c.hidden_act != "silu" {
            return Err(err("hidden_act", format!("`{}` is not supported (only silu)", c.hidden_act)));
        }
        if c.attention_bias || c.mlp_bias {
            return Err(err("attention_bias/mlp_bias", "biases are not supported".into()));
        }
        if let Some(t) = c.builtin_rope_scaling() {
            return Err(err(
                "rope_scaling",
                format!("the checkpoint's built-in rope scaling `{t}` is not applied implicitly; load the base model and pass --scaling"),
            ));
        }
        let hidden_size = HfConfig::size(path, "hidden_size", c.hidden_size)?;
        let num_heads = HfConfig::size(path, "num_attention_heads", c.num_attention_heads)?;
        let cfg = LlamaConfig {
            vocab_size: HfConfig::size(path, "vocab_size", c.vocab_size)?,
            hidden_size,
            intermediate_size: HfConfig::size(path, "intermediate_size", c.intermediate_size)?,
            num_layers: HfConfig::size(path, "num_hidden_layers", c.num_hidden_layers)?,
            num_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(num_heads),
            head_dim: c.head_dim.unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0)),
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_base(),
            max_position_embeddings: HfConfig::size(path, "max_position_embeddings", c.max_position_embeddings)?,
            tie_word_embeddings: c.tie_word_embeddings,
            sliding_window: c.sliding_window,
            bos_token_id: hf::token_id(&c.bos_token_id),
            eos_token_id: hf::token_id(&c.eos_token_id),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Read the configuration from GGUF metadata (`{arch}.block_count` ...).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| g.get_u64(&key(k)).map(|v| v as usize);
        let f = |k: &str| -> Result<Option<f64>> {
            match g.get(&key(k)) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| ModelError::config(&g.path, key(k), "expected a number")),
            }
        };
        let hidden = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let kv = g.get(&key("attention.head_count_kv")).and_then(Value::as_u64).map(|v| v as usize).unwrap_or(heads);
        let head_dim = g
            .get(&key("rope.dimension_count"))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        let vocab = match g.get(&key("vocab_size")).and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|a| a.len()).unwrap_or(0),
        };
        let cfg = LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: f("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope_theta: f("rope.freq_base")?.unwrap_or(10000.0),
            max_position_embeddings: u("context_length")?,
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            sliding_window: g.get(&key("attention.sliding_window")).and_then(Value::as_u64).map(|v| v as usize),
            bos_token_id: g.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64).map(|v| v as u32),
            eos_token_id: g.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64).map(|v| v as u32),
        };
        cfg.validate(&g.path)?;
        Ok(cfg)
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

/// The HF name of a llama.cpp GGUF tensor name (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_name(gguf_name: &str) -> Option<String> {
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
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// A checkpoint read from disk: config, CPU tensors by HF name, tokenizer, and what the weights were stored as.
pub struct Checkpoint {
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
    /// Read an HF directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let hf = HfConfig::read(dir)?;
        let config = LlamaConfig::from_hf(&hf, &dir.join("config.json"))?;
        let (tensors, weight_dtype) = hf::read_safetensors(&hf::weight_files(dir)?)?;
        let tokenizer = tokenizer::from_file(&dir.join("tokenizer.json"))?;
        Ok(Checkpoint { path: dir.to_path_buf(), format: "safetensors", config, tensors, weight_dtype, tokenizer })
    }

    /// Read a GGUF file: dequantise every tensor, rename to HF names, undo the Q/K permutation.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&g)?;
        let tokenizer = tokenizer::from_gguf(&g)?;
        let mut tensors = HashMap::new();
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        for t in &g.tensors {
            let Some(name) = hf_name(&t.name) else { continue };
            *types.entry(t.ggml_type.name()).or_default() += 1;
            let values = g.dequantize(t)?;
            let mut w = Tensor::f_from_slice(&values)?.f_reshape(t.shape.as_slice())?;
            if name.ends_with("q_proj.weight") {
                w = unpermute_qk(&w, config.num_heads);
            } else if name.ends_with("k_proj.weight") {
                w = unpermute_qk(&w, config.num_kv_heads);
            }
            tensors.insert(name, w);
        }
        let mut types: Vec<(String, usize)> = types.into_iter().collect();
        types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let weight_dtype = types.into_iter().map(|(t, _)| t).collect::<Vec<_>>().join(", ");
        Ok(Checkpoint { path: path.to_path_buf(), format: "gguf", config, tensors, weight_dtype, tokenizer })
    }

    /// Read a checkpoint, choosing the format from the path (`.gguf` file or HF directory).
    pub fn read(path: &Path) -> Result<Self> {
        match crate::Format::of(path)? {
            crate::Format::Gguf => Self::from_gguf(path),
            crate::Format::HfDir(dir) => Self::from_hf_dir(&dir),
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

struct Block {
    input_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// A Llama-family causal LM on libtorch (also Mistral, with a sliding window).
pub struct Llama {
    config: LlamaConfig,
    summary: ModelSummary,
    tokenizer: tokenizers::Tokenizer,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    device: Device,
    dtype: Kind,
}

impl Llama {
    /// Build the model from a checkpoint: move weights to the device and dtype, check every shape.
    /// `arch` is the plugin name shown in the summary.
    pub fn from_checkpoint(mut ck: Checkpoint, arch: &str, options: &LoadOptions) -> Result<Self> {
        match options.dtype {
            Kind::Float | Kind::BFloat16 | Kind::Half => {}
            other => return Err(ModelError::invalid("dtype", format!("{other:?}: expected f32, bf16 or f16"))),
        }
        let c = ck.config.clone();
        let (h, i, v) = (c.hidden_size as i64, c.intermediate_size as i64, c.vocab_size as i64);
        let (q_out, kv_out) = ((c.num_heads * c.head_dim) as i64, (c.num_kv_heads * c.head_dim) as i64);
        let embed = ck.take("model.embed_tokens.weight", &[v, h], options)?;
        let mut blocks = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            blocks.push(Block {
                input_norm: ck.take(&p("input_layernorm.weight"), &[h], options)?,
                q: ck.take(&p("self_attn.q_proj.weight"), &[q_out, h], options)?,
                k: ck.take(&p("self_attn.k_proj.weight"), &[kv_out, h], options)?,
                v: ck.take(&p("self_attn.v_proj.weight"), &[kv_out, h], options)?,
                o: ck.take(&p("self_attn.o_proj.weight"), &[h, q_out], options)?,
                post_norm: ck.take(&p("post_attention_layernorm.weight"), &[h], options)?,
                gate: ck.take(&p("mlp.gate_proj.weight"), &[i, h], options)?,
                up: ck.take(&p("mlp.up_proj.weight"), &[i, h], options)?,
                down: ck.take(&p("mlp.down_proj.weight"), &[h, i], options)?,
            });
        }
        let norm = ck.take("model.norm.weight", &[h], options)?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(ck.take("lm_head.weight", &[v, h], options)?) };
        let summary = ModelSummary {
            arch: arch.to_string(),
            format: ck.format.to_string(),
            num_layers: c.num_layers,
            hidden_size: c.hidden_size,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            rope_base: c.rope_theta,
            max_position_embeddings: c.max_position_embeddings,
            sliding_window: c.sliding_window,
            tied_embeddings: c.tie_word_embeddings,
            weight_dtype: ck.weight_dtype.clone(),
            bos_token_id: c.bos_token_id,
            eos_token_id: c.eos_token_id,
        };
        Ok(Llama {
            config: c,
            summary,
            tokenizer: ck.tokenizer,
            embed,
            blocks,
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
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// HF's `LlamaRMSNorm`: normalise in f32, cast back, then scale by the weight.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        (xf * (var + self.config.rms_norm_eps).rsqrt()).to_kind(self.dtype) * w
    }

    fn check_tables(&self, tables: &LayerTables) -> Result<()> {
        if tables.layers.len() != self.config.num_layers {
            return Err(ModelError::invalid(
                "rope tables",
                format!("{} layers of tables for a model of {} layers", tables.layers.len(), self.config.num_layers),
            ));
        }
        let half = self.config.head_dim / 2;
        for (l, t) in tables.layers.iter().enumerate() {
            let bad = t.inv_freq.len() != half || t.retained.as_ref().is_some_and(|r| r.inv_freq.len() != half);
            if bad {
                return Err(ModelError::invalid(
                    "rope tables",
                    format!("layer {l}: expected {half} inverse frequencies (head_dim {})", self.config.head_dim),
                ));
            }
        }
        Ok(())
    }

    /// The decoder trunk: final-normed hidden states `[batch, seq, hidden]` for `tokens` `[batch, seq]`.
    pub fn hidden_states(&self, tokens: &Tensor, tables: &LayerTables, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.check_tables(tables)?;
        let size = tokens.size();
        if size.len() != 2 || size[1] == 0 {
            return Err(ModelError::invalid("tokens", format!("expected a non-empty [batch, seq] tensor, got {size:?}")));
        }
        let (b, s) = (size[0], size[1]);
        let tokens = tokens.f_to_kind(Kind::Int64)?.f_to_device(self.device)?;
        let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
        if lo < 0 || hi >= self.config.vocab_size as i64 {
            return Err(ModelError::invalid("tokens", format!("ids must be in 0..{}, got {lo}..={hi}", self.config.vocab_size)));
        }
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
        let (nh, nkv, hd) = (self.config.num_heads as i64, self.config.num_kv_heads as i64, self.config.head_dim as i64);
        let mut rope_cache: Vec<(Arc<RopeTables>, Tensor, Tensor)> = Vec::new();
        let mut x = Tensor::embedding(&self.embed, &tokens, -1, false, false);
        for (l, blk) in self.blocks.iter().enumerate() {
            let t = &tables.layers[l];
            let idx = match rope_cache.iter().position(|(c, _, _)| Arc::ptr_eq(c, t) || **c == **t) {
                Some(i) => i,
                None => {
                    let (c, sn) = rope::cos_sin(t, past, s as usize, self.device, self.dtype);
                    rope_cache.push((t.clone(), c.view([1, 1, s, hd]), sn.view([1, 1, s, hd])));
                    rope_cache.len() - 1
                }
            };
            let (_, cos, sin) = &rope_cache[idx];
            let hn = self.rms_norm(&x, &blk.input_norm);
            let q = hn.linear(&blk.q, None::<Tensor>).view([b, s, nh, hd]).transpose(1, 2);
            let k = hn.linear(&blk.k, None::<Tensor>).view([b, s, nkv, hd]).transpose(1, 2);
            let v = hn.linear(&blk.v, None::<Tensor>).view([b, s, nkv, hd]).transpose(1, 2);
            let q = &q * cos + rotate_half(&q) * sin;
            let mut k = &k * cos + rotate_half(&k) * sin;
            let mut v = v;
            if let Some(c) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &c.layers[l] {
                    k = Tensor::cat(&[pk, &k], 2);
                    v = Tensor::cat(&[pv, &v], 2);
                }
                c.layers[l] = Some((k.shallow_clone(), v.shallow_clone()));
            }
            let attn = self.attention(&q, &k, &v, past as i64);
            let o = attn.transpose(1, 2).reshape([b, s, nh * hd]).linear(&blk.o, None::<Tensor>);
            x += o;
            let hn = self.rms_norm(&x, &blk.post_norm);
            let mlp = (hn.linear(&blk.gate, None::<Tensor>).silu() * hn.linear(&blk.up, None::<Tensor>))
                .linear(&blk.down, None::<Tensor>);
            x += mlp;
        }
        if let Some(c) = cache {
            c.len = past + s as usize;
            c.tables = Some(tables.clone());
        }
        Ok(self.rms_norm(&x, &self.norm))
    }

    /// Causal (optionally sliding-window) attention of queries at positions `past ..` over all keys.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, past: i64) -> Tensor {
        let rep = (self.config.num_heads / self.config.num_kv_heads) as i64;
        let s = q.size()[2];
        let window = self.config.sliding_window.map(|w| w as i64);
        if window.is_none() && s == 1 && rep > 1 {
            // A decoding step: one query per head, every cached key visible. The `rep` query heads that share
            // a KV head (head h reads KV head h / rep, as in HF's `repeat_kv`) become `rep` queries of that KV
            // head, so the cache is read once instead of being copied `rep` times at every step.
            let qs = q.size();
            let grouped = q.reshape([qs[0], qs[1] / rep, rep, qs[3]]);
            let out = Tensor::scaled_dot_product_attention(&grouped, k, v, None::<Tensor>, 0.0, false, None, false);
            return out.reshape([qs[0], qs[1], 1, qs[3]]);
        }
        let (k, v) = (repeat_kv(k, rep), repeat_kv(v, rep));
        if window.is_none() && past == 0 {
            return Tensor::scaled_dot_product_attention(q, &k, &v, None::<Tensor>, 0.0, true, None, false);
        }
        if window.is_none() && s == 1 {
            return Tensor::scaled_dot_product_attention(q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        }
        let mut outs = Vec::new();
        let mut q0 = 0;
        while q0 < s {
            let q1 = (q0 + ATTN_BLOCK as i64).min(s);
            let (first, last) = (past + q0, past + q1 - 1);
            let lo = window.map(|w| (first + 1 - w).max(0)).unwrap_or(0);
            let hi = last + 1;
            let i = Tensor::arange_start(first, last + 1, (Kind::Int64, self.device)).unsqueeze(1);
            let j = Tensor::arange_start(lo, hi, (Kind::Int64, self.device)).unsqueeze(0);
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

    /// NLL with the LM head applied over chunks of `chunk` positions.
    pub fn nll_chunked(&self, tokens: &[i64], tables: &LayerTables, score_from: usize, chunk: usize) -> Result<NllSum> {
        let _guard = tch::no_grad_guard();
        let n = tokens.len();
        let first = score_from.max(1);
        if first >= n {
            return Ok(NllSum::default());
        }
        let ids = Tensor::from_slice(tokens).unsqueeze(0);
        let hidden = self.hidden_states(&ids, tables, None)?.squeeze_dim(0);
        let mut sum = 0.0;
        let mut start = first;
        while start < n {
            let end = (start + chunk.max(1)).min(n);
            let h = hidden.narrow(0, (start - 1) as i64, (end - start) as i64);
            let logits = h.linear(self.head(), None::<Tensor>).to_kind(Kind::Float);
            let logp = logits.log_softmax(-1, Kind::Float);
            let target = Tensor::from_slice(&tokens[start..end]).to_device(self.device).unsqueeze(1);
            sum -= logp.gather(1, &target, false).sum(Kind::Double).double_value(&[]);
            start = end;
        }
        Ok(NllSum { sum, count: n - first })
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
        let _guard = tch::no_grad_guard();
        let h = self.hidden_states(tokens, tables, cache)?;
        Ok(h.linear(self.head(), None::<Tensor>).to_kind(Kind::Float))
    }
    fn forward_last(&self, tokens: &Tensor, tables: &LayerTables, cache: Option<&mut KvCache>) -> longrope_core::Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let h = self.hidden_states(tokens, tables, cache)?.select(1, -1);
        Ok(h.linear(self.head(), None::<Tensor>).to_kind(Kind::Float))
    }
    fn nll(&self, tokens: &[i64], tables: &LayerTables, score_from: usize) -> longrope_core::Result<NllSum> {
        Ok(self.nll_chunked(tokens, tables, score_from, NLL_CHUNK)?)
    }
}

/// The `llama` architecture plugin.
pub struct LlamaArch;

impl ModelArch for LlamaArch {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn load(&self, path: &Path, options: &LoadOptions) -> longrope_core::Result<Box<dyn LanguageModel>> {
        let mut ck = Checkpoint::read(path)?;
        // Llama has no sliding window of its own; only an explicit override sets one.
        ck.config.sliding_window = options.sliding_window.flatten();
        Ok(Box::new(Llama::from_checkpoint(ck, "llama", options)?))
    }
}

longrope_core::inventory::submit!(longrope_core::model::ArchRegistration { name: "llama", arch: &LlamaArch });
longrope_core::register_plugin!(Arch, "llama", "Llama (HF safetensors or GGUF): RMSNorm, GQA, SwiGLU, rotary attention");

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
        assert_eq!(hf_name("blk.12.attn_k.weight").as_deref(), Some("model.layers.12.self_attn.k_proj.weight"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("blk.x.attn_k.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
