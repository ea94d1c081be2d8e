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

fn d_eps() -> f64 {
    1e-6
}
fn d_act() -> String {
    "silu".into()
}

/// `config.json` as written by HF transformers (Llama / Mistral family), with HF's defaults for the optional
/// fields. The sizes (`vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
/// `num_attention_heads`, `max_position_embeddings`) have no default here: transformers writes them, and a file
/// without one is refused naming it ([`HfConfig::size`]) rather than read as Llama-7B's.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// `llama`, `mistral` ...
    #[serde(default)]
    pub model_type: Option<String>,
    /// `["LlamaForCausalLM"]` ...
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Vocabulary size.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// Hidden size.
    #[serde(default)]
    pub hidden_size: Option<usize>,
    /// MLP inner size.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Number of layers.
    #[serde(default)]
    pub num_hidden_layers: Option<usize>,
    /// Attention heads.
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
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
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
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
        let text = read_json_text(&path)?;
        serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&path, format!("not a valid config.json: {e}")))
    }

    /// A required size field of `config.json` (`path`), or an error naming it.
    pub fn size(path: &Path, field: &str, value: Option<usize>) -> Result<usize> {
        value.ok_or_else(|| {
            ModelError::config(path, field, "missing; the model's sizes must be given (no default is assumed)")
        })
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
    /// scaling block) when the checkpoint is a scaled one, else `max_position_embeddings` (`None` when the file
    /// gives neither: no default is assumed).
    pub fn trained_context(&self) -> Option<usize> {
        let from_block = self.builtin_rope_scaling().and_then(|b| b.get("original_max_position_embeddings").and_then(|v| v.as_u64()));
        self.original_max_position_embeddings
            .or(from_block.map(|v| v as usize))
            .filter(|_| self.builtin_rope_scaling().is_some())
            .or(self.max_position_embeddings)
    }
}

/// Read a JSON file of a checkpoint (regular file, bounded size); errors name the file once.
fn read_json_text(path: &Path) -> Result<String> {
    longrope_core::files::read_text(path, longrope_core::files::MAX_CONFIG_BYTES).map_err(|e| match e {
        longrope_core::Error::Io { path, source } => ModelError::Io { path, source },
        longrope_core::Error::Config { message, .. } => ModelError::corrupt(path, message),
        other => ModelError::corrupt(path, other.to_string()),
    })
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
        let text = read_json_text(&index)?;
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
    Err(ModelError::MissingWeights { path: dir.to_path_buf() })
}

/// All tensors of the safetensors files (on CPU, in their stored dtype) and the set of stored dtypes.
pub fn read_safetensors(files: &[PathBuf]) -> Result<(HashMap<String, Tensor>, String)> {
    let mut out = HashMap::new();
    let mut dtypes = BTreeMap::new();
    for path in files {
        let file = File::open(path).map_err(|e| ModelError::Io { path: path.clone(), source: e })?;
        // SAFETY: read-only map of a checkpoint; tensors are copied out before the map is dropped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io { path: path.clone(), source: e })?;
        // The first 8 bytes give the header's length: a file shorter than it is cut, not corrupt.
        let header_len = mmap.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let cut_header = header_len.is_some_and(|n| n.saturating_add(8) > mmap.len() as u64);
        let st = SafeTensors::deserialize(&mmap).map_err(|e| match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer
            | safetensors::SafeTensorError::HeaderTooSmall => {
                ModelError::Truncated { path: path.clone(), what: e.to_string() }
            }
            _ if cut_header => ModelError::Truncated {
                path: path.clone(),
                what: format!("the header needs {} bytes, the file has {}", header_len.unwrap_or(0) + 8, mmap.len()),
            },
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
