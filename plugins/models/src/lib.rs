//! `longrope-models`: Llama, Mistral, Qwen2 and Phi-3 on libtorch, loaded from HF safetensors directories or
//! GGUF files, with the RoPE scaling the checkpoint carries.
//!
//! - [`load`]: the entry point; picks the format from the path and the architecture from the checkpoint
//!   (`config.json` `model_type`/`architectures`, or GGUF `general.architecture`), then dispatches through the
//!   `ModelArch` registry of `longrope-core`.
//! - [`llama`]: the decoder the family shares and the `llama` plugin; [`mistral`] / [`qwen2`] / [`phi3`]: the
//!   other architectures (one file each: their layout as an [`llama::ArchSpec`]); [`gguf`]: GGUF reader,
//!   dequantisation and writer; [`gguf_rope`]: a GGUF file's RoPE scaling as llama.cpp applies it;
//!   [`gguf_export`]: `longrope export gguf`; [`hf`]: `config.json` mirror and safetensors; [`tokenizer`]:
//!   tokenizer from `tokenizer.json` or GGUF metadata; [`rope`]: cos/sin tables on the device from the caller's
//!   RoPE tables; [`error`]: [`ModelError`].
//!
//! See `docs/models.md`.

pub mod error;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_rope;
pub mod hf;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod rope;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use error::{ModelError, Result};
pub use longrope_core::model::LoadOptions;
use longrope_core::LanguageModel;

/// The checkpoint format of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// A GGUF file.
    Gguf,
    /// An HF directory (the path itself, or the parent of a file inside it).
    HfDir(PathBuf),
}

impl Format {
    /// `.gguf` file (by extension or magic) -> GGUF; a directory with `config.json`, or a `config.json` /
    /// `.safetensors` file inside one -> HF directory.
    pub fn of(path: &Path) -> Result<Format> {
        if path.is_dir() {
            if path.join("config.json").exists() {
                return Ok(Format::HfDir(path.to_path_buf()));
            }
            return Err(ModelError::NotAModel { path: path.to_path_buf() });
        }
        let meta = std::fs::metadata(path).map_err(|e| ModelError::Io { path: path.to_path_buf(), source: e })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if ext == "gguf" {
            return Ok(Format::Gguf);
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if meta.is_file() && (name == "config.json" || ext == "safetensors") {
            if let Some(dir) = path.parent().filter(|d| d.join("config.json").exists()) {
                return Ok(Format::HfDir(dir.to_path_buf()));
            }
        }
        let mut magic = [0u8; 4];
        if let Ok(mut f) = std::fs::File::open(path) {
            use std::io::Read;
            if f.read_exact(&mut magic).is_ok() && &magic == b"GGUF" {
                return Ok(Format::Gguf);
            }
        }
        Err(ModelError::NotAModel { path: path.to_path_buf() })
    }
}

/// The architecture name a checkpoint declares, and the path to hand to the plugin.
pub fn detect_arch(path: &Path) -> Result<String> {
    match Format::of(path)? {
        Format::Gguf => Ok(gguf::GgufFile::open(path)?.get_str("general.architecture")?.to_string()),
        Format::HfDir(dir) => hf::HfConfig::read(&dir)?.arch_name().ok_or_else(|| {
            ModelError::config(dir.join("config.json"), "model_type", "missing (and no `architectures` entry)")
        }),
    }
}

/// Load a model: the format from the path, the architecture from the checkpoint, through the registry.
pub fn load(path: &Path, options: &LoadOptions) -> longrope_core::Result<Box<dyn LanguageModel>> {
    let arch = detect_arch(path)?;
    let plugin = longrope_core::model::arch(&arch).map_err(|_| ModelError::UnknownArchitecture {
        path: path.to_path_buf(),
        arch: arch.clone(),
        known: longrope_core::registry::known_names(longrope_core::PluginKind::Arch),
    })?;
    plugin.load(path, options)
}

/// The files [`load`] reads for a model path: the GGUF file, or an HF directory's `config.json`,
/// `tokenizer.json`, weight index (if any) and weight files. What a model's content fingerprint covers
/// (experiment cells and search checkpoints are keyed by it, so weights overwritten in place are noticed).
pub fn checkpoint_files(path: &Path) -> Result<Vec<PathBuf>> {
    match Format::of(path)? {
        Format::Gguf => Ok(vec![path.to_path_buf()]),
        Format::HfDir(dir) => {
            let mut files = vec![dir.join("config.json"), dir.join("tokenizer.json")];
            let index = dir.join("model.safetensors.index.json");
            if index.exists() {
                files.push(index);
            }
            files.extend(hf::weight_files(&dir)?);
            Ok(files)
        }
    }
}

/// Only the tokenizer of a model path, without loading weights: GGUF metadata, an HF directory's
/// `tokenizer.json`, or a `tokenizer.json` file itself.
pub fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    if path.file_name().and_then(|n| n.to_str()) == Some("tokenizer.json") {
        return tokenizer::from_file(path);
    }
    match Format::of(path)? {
        Format::Gguf => tokenizer::from_gguf(&gguf::GgufFile::open(path)?),
        Format::HfDir(dir) => tokenizer::from_file(&dir.join("tokenizer.json")),
    }
}

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
