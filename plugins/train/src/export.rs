//! Export of a fine-tuned model as an HF checkpoint directory that HF transformers and vLLM load unchanged
//! and that `longrope` loads with `--scaling DIR/longrope_scaling.toml`:
//!
//! - `config.json`: the architecture's own config (`Decoder::hf_config`) plus the method as an HF
//!   `rope_scaling` block of type `longrope` (short/long per-dimension factors and the attention factor,
//!   which HF computes exactly for every static method; `longrope_core::scaling::hf`), with
//!   `max_position_embeddings = L'` and `original_max_position_embeddings = L`. A method that leaves RoPE
//!   unchanged (`none`) writes no block;
//! - `model.safetensors`: every weight under its HF name in the chosen dtype, LoRA adapters merged;
//! - `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`;
//! - `longrope_scaling.toml`: the method as a self-contained `longrope` scaling config equal to the block
//!   (`factors` = long, `short_factors`, `attention_factor`, `factor`), so `--scaling DIR/longrope_scaling.toml`
//!   gives the trained tables whatever `--target` is; the config the run was trained under follows as a comment.
//!
//! The directory is written as `DIR.tmp` and renamed, so an interrupted export never leaves a half directory.

use std::path::{Path, PathBuf};

use longrope_core::model::Decoder;
use longrope_core::scaling::hf::{hf_config_update, hf_rope_scaling, is_identity};
use longrope_core::{PositionScaling, RopeShape};
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};
use crate::{fsio, lora, st};

/// The `rope_scaling` block a method exports as, `None` when it leaves RoPE unchanged; an error when HF cannot
/// express it (dynamic methods, retained start tokens, per-layer factors). Called before training so a
/// non-exportable method is refused before any compute.
pub fn rope_scaling_block(method: &dyn PositionScaling, shape: &RopeShape) -> Result<Option<serde_json::Value>> {
    if is_identity(method, shape)? {
        return Ok(None);
    }
    Ok(Some(hf_rope_scaling(method, shape)?))
}

/// `longrope_scaling.toml` for an exported block: a `longrope` config with the block's numbers (or `none`
/// without a block), then the training-time config as comments.
fn scaling_toml_of(block: Option<&serde_json::Value>, method: &dyn PositionScaling, trained_under: &str) -> String {
    let mut out = format!("# The RoPE scaling this model was fine-tuned under (`{}`), as the exported config.json computes it.\n", method.name());
    out.push_str("# Load with: --scaling THIS_FILE (independent of --target).\n# Trained under:\n");
    for line in trained_under.lines() {
        out.push_str(&format!("#   {line}\n"));
    }
    match block {
        None => out.push_str("method = \"none\"\n"),
        Some(b) => {
            let list = |k: &str| b.get(k).map(|v| v.to_string()).unwrap_or_else(|| "[]".into());
            let num = |k: &str| b.get(k).and_then(|v| v.as_f64()).map(|v| format!("{v:?}")).unwrap_or_else(|| "1.0".into());
            out.push_str(&format!(
                "method = \"longrope\"\nfactors = {}\nshort_factors = {}\nattention_factor = {}\nfactor = {}\n",
                list("long_factor"),
                list("short_factor"),
                num("attention_factor"),
                num("factor")
            ));
        }
    }
    out
}

/// HF's name of a storage dtype.
fn torch_dtype(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// Write the HF directory `out` for the model `dec` (adapters are merged into its weights first).
/// `weights` overrides the model's own tensors by name (the f32 master weights of a mixed-precision run).
pub fn export_hf(
    dec: &mut dyn Decoder,
    weights: &[(String, Tensor)],
    method: &dyn PositionScaling,
    shape: &RopeShape,
    scaling_toml: &str,
    dtype: Kind,
    out: &Path,
) -> Result<PathBuf> {
    let block = rope_scaling_block(method, shape)?;
    let scaling_file = scaling_toml_of(block.as_ref(), method, scaling_toml);
    lora::merge(dec);
    let mut config = dec.hf_config();
    let doc = config.as_object_mut().ok_or_else(|| TrainError::Checkpoint { path: out.into(), message: "hf_config is not an object".into() })?;
    if let Some(block) = block {
        hf_config_update(doc, block, shape);
    }
    doc.insert("torch_dtype".into(), torch_dtype(dtype).into());
    doc.insert("dtype".into(), torch_dtype(dtype).into());

    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    {
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = dec.var_store().variables().into_iter().filter(|(n, _)| !lora::is_adapter(n)).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            let t = weights.iter().find(|(n, _)| n == &name).map(|(_, w)| w.shallow_clone()).unwrap_or(t);
            tensors.push((name, t.detach().to_kind(dtype)));
        }
    }
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let tmp = out.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let write = || -> Result<()> {
        st::write(&tmp.join("model.safetensors"), &tensors)?;
        let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("json serializes");
        fsio::write_atomic(&tmp.join("config.json"), json(&config).as_bytes())?;
        let tok = dec.tokenizer();
        let tok_json = tok.to_string(true).map_err(|e| TrainError::Checkpoint { path: tmp.join("tokenizer.json"), message: e.to_string() })?;
        fsio::write_atomic(&tmp.join("tokenizer.json"), tok_json.as_bytes())?;
        let s = dec.summary();
        let name_of = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
        let tok_config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name_of(s.bos_token_id),
            "eos_token": name_of(s.eos_token_id),
            "add_bos_token": false,
            "model_max_length": shape.max_position_embeddings,
        });
        fsio::write_atomic(&tmp.join("tokenizer_config.json"), json(&tok_config).as_bytes())?;
        let gen = serde_json::json!({"bos_token_id": s.bos_token_id, "eos_token_id": s.eos_token_id, "_from_model_config": true});
        fsio::write_atomic(&tmp.join("generation_config.json"), json(&gen).as_bytes())?;
        fsio::write_atomic(&tmp.join("longrope_scaling.toml"), scaling_file.as_bytes())?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| TrainError::io(out, e))?;
    fsio::sync_dir(parent);
    Ok(out.to_path_buf())
}
