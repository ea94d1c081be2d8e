//! HF checkpoint directories: `config.json` (a mirror struct with HF's defaults, validated into
//! [`crate::llama::LlamaConfig`]), weights from a single `model.safetensors` or shards listed in
//! `model.safetensors.index.json` (f32, f16 or bf16), and `tokenizer.json`.
//!
//! The mirror follows `transformers`' `LlamaConfig` / `MistralConfig` defaults; `rope_theta` is read from the
//! top level (transformers 4) or from `rope_parameters` (transformers 5).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_inter() -> usize {
    11008
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-6
}
fn d_max_pos() -> usize {
    2048
}
fn d_act() -> String {
    "silu".into()
}

/// `config.json` as written by HF transformers (Llama / Mistral family), with HF's defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// `llama`, `mistral` ...
    #[serde(default)]
    pub model_type: Option<String>,
    /// `["LlamaForCausalLM"]` ...
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Hidden size.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// MLP inner size.
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    /// Number of layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// KV heads (defaults to `num_attention_heads`).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head dimension (defaults to `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers 4 layout).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE parameters (transformers 5 layout: `{"rope_theta": .., "rope_type": "default"}`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Built-in RoPE scaling of the checkpoint (transformers 4 layout).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Trained context (the extended one in a scaled checkpoint).
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    /// The original context of a scaled checkpoint (top-level field, as HF and the exporter write it).
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Whether `lm_head` shares the embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Mistral's sliding attention window.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// BOS id (a number, or a list whose first entry is used).
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// EOS id (a number, or a list whose first entry is used).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// MLP activation (only `silu` is supported).
    #[serde(default = "d_act")]
    pub hidden_act: String,
    /// Bias in the attention projections (not supported).
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias in the MLP (not supported).
    #[serde(default)]
    pub mlp_bias: bool,
}

impl HfConfig {
    /// Read `DIR/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io { path: path.clone(), source: e })?;
        serde_json::from_str(&text).map_err(|e| ModelError::config(&path, "config.json", e.to_string()))
    }

    /// The architecture plugin name: `model_type`, else derived from `architectures[0]` (`MistralForCausalLM`
    /// -> `mistral`).
    pub fn arch_name(&self) -> Option<String> {
        self.model_type.clone().or_else(|| {
            self.architectures.first().map(|a| a.trim_end_matches("ForCausalLM").to_ascii_lowercase())
        })
    }

    /// The RoPE base: `rope_theta`, else `rope_parameters.rope_theta`, else 10000.
    pub fn rope_base(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64()))
            .unwrap_or(10000.0)
    }

    /// The checkpoint's own RoPE scaling block (`rope_scaling`, else `rope_parameters`), if its type
    /// (`rope_type` or `type`) is other than `default`.
    pub fn builtin_rope_scaling(&self) -> Option<serde_json::Value> {
        let kind = |v: &serde_json::Value| v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).map(str::to_string);
        [self.rope_scaling.as_ref(), self.rope_parameters.as_ref()]
            .into_iter()
            .flatten()
            .find(|v| kind(v).is_some_and(|t| t != "default"))
            .cloned()
    }

    /// The context the model was trained on, `L`: `original_max_position_embeddings` (top level, else in the
    /// scaling block) when the checkpoint is a scaled one, else `max_position_embeddings`.
    pub fn trained_context(&self) -> usize {
        let from_block = self.builtin_rope_scaling().and_then(|b| b.get("original_max_position_embeddings").and_then(|v| v.as_u64()));
        self.original_max_position_embeddings
            .or(from_block.map(|v| v as usize))
            .filter(|_| self.builtin_rope_scaling().is_some())
            .unwrap_or(self.max_position_embeddings)
    }
}

/// A token id field that may be a number or a list of numbers.
pub fn token_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|n| n.as_u64()).map(|n| n as u32),
        _ => None,
    }
}

/// The weight files of an HF directory: the shards named in `model.safetensors.index.json`, or
/// `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io { path: index.clone(), source: e })?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::config(&index, "index", e.to_string()))?;
        let map = doc
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::config(&index, "weight_map", "missing or not an object"))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::MissingTensor { path: dir.to_path_buf(), name: "model.safetensors (or its index)".into() })
}

/// All tensors of the safetensors files (on CPU, in their stored dtype) and the set of stored dtypes.
pub fn read_safetensors(files: &[PathBuf]) -> Result<(HashMap<String, Tensor>, String)> {
    let mut out = HashMap::new();
    let mut dtypes = BTreeMap::new();
    for path in files {
        let file = File::open(path).map_err(|e| ModelError::Io { path: path.clone(), source: e })?;
        // SAFETY: read-only map of a checkpoint; tensors are copied out before the map is dropped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io { path: path.clone(), source: e })?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer
            | safetensors::SafeTensorError::HeaderTooSmall => {
                ModelError::Truncated { path: path.clone(), what: e.to_string() }
            }
            other => ModelError::corrupt(path, other.to_string()),
        })?;
        for (name, view) in st.tensors() {
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::F16 => Kind::Half,
                Dtype::BF16 => Kind::BFloat16,
                other => {
                    return Err(ModelError::UnsupportedTensorType {
                        path: path.clone(),
                        tensor: name,
                        ggml_type: format!("{other:?} (safetensors)"),
                    })
                }
            };
            *dtypes.entry(format!("{:?}", view.dtype())).or_insert(0usize) += 1;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            out.insert(name, t);
        }
    }
    Ok((out, dtypes.into_keys().collect::<Vec<_>>().join(", ")))
}
