//! HF checkpoint directories: `config.json` (a mirror struct with HF's defaults, validated into
//! [`crate::llama::LlamaConfig`]), weights from a single `model.safetensors` or shards listed in
//! `model.safetensors.index.json` (f32, f16 or bf16), and `tokenizer.json`.
//!
//! The mirror follows `transformers`' `LlamaConfig` / `MistralConfig` / `Qwen2Config` / `Phi3Config` defaults.
//! The rope block (the legacy `rope_scaling`, else transformers 5's `rope_parameters`), `rope_theta` and the
//! checkpoint's own scaling are read as transformers 5 reads them (`modeling_rope_utils.py`), through
//! `longrope_core::scaling::hf`.

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
    /// Built-in RoPE scaling of the checkpoint (transformers 4 layout; wins over `rope_parameters`).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// The fraction of a head that rotates (Phi-3 family; top level, or in the rope block).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Trained context (the extended one in a scaled checkpoint).
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// The original context of a scaled checkpoint (top-level field, as HF and the exporter write it).
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// Whether `lm_head` shares the embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The sliding attention window (Mistral, Phi-3; Qwen2 when `use_sliding_window`).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2: whether the sliding window is used at all (HF default false).
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Qwen2: layers from this index on slide (when `use_sliding_window` and no `layer_types`).
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// Per-layer attention kind (`full_attention` / `sliding_attention`), as transformers 5 writes it.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// BOS id (a number, or a list whose first entry is used).
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// EOS id (a number, or a list whose first entry is used).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// MLP activation (only `silu` is supported).
    #[serde(default = "d_act")]
    pub hidden_act: String,
    /// Bias in the attention projections (Llama's flag; not supported for Llama/Mistral).
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias in the MLP (not supported).
    #[serde(default)]
    pub mlp_bias: bool,
    /// The whole document, for the rope block (read by `longrope_core::scaling::hf`).
    #[serde(skip)]
    pub doc: serde_json::Value,
}

impl HfConfig {
    /// Read `DIR/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = read_json_text(&path)?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::corrupt(&path, format!("not a valid config.json: {e}")))?;
        let mut config: HfConfig = serde_json::from_value(doc.clone())
            .map_err(|e| ModelError::corrupt(&path, format!("not a valid config.json: {e}")))?;
        config.doc = doc;
        Ok(config)
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

    /// The RoPE base as transformers 5 takes it: the rope block's `rope_theta`, else the top-level one, else
    /// 10000 (`longrope_core::scaling::hf::rope_theta`).
    pub fn rope_base(&self) -> f64 {
        longrope_core::scaling::hf::rope_theta(&self.doc)
    }

    /// The fraction of each head that rotates: the rope block's `partial_rotary_factor`, else the top-level
    /// one, else 1 (HF `int(head_dim * partial_rotary_factor)` dimensions rotate).
    pub fn partial_rotary(&self) -> Option<f64> {
        longrope_core::scaling::hf::rope_block(&self.doc)
            .and_then(|(_, b)| b.get("partial_rotary_factor"))
            .and_then(|v| v.as_f64())
            .or(self.partial_rotary_factor)
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
