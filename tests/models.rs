//! Models against HF transformers: golden fixtures written by `scripts/fixtures/model_golden.py`.
//!
//! - tiny random Llama (f32, one safetensors file, untied) and Mistral (bf16 shards, tied, sliding window 8):
//!   logits to 1e-5; KV-cache continuation equal to a full forward;
//! - tiny random Qwen2 and Phi-3 (`scripts/fixtures/arch_golden.py`), and tiny Llama / Qwen2 / Phi-3 as GGUF files
//!   made by llama.cpp's own converter (`scripts/fixtures/gguf_arch_golden.py`): logits to 1e-5;
//! - SmolLM2-135M GGUF (Q4_1/Q8_0/F32): logits to 1e-3 at ~200 tokens, mean NLL to 1e-4, tokenizer ids,
//!   greedy 20 tokens, bf16 NLL within 1% of f32;
//! - greedy generation rebuilds the KV cache when the tables change with the sequence length;
//! - `longrope model info` on truncated / corrupt / unsupported files: one-line error naming the file.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use longrope_core::generate::greedy_generate;
use longrope_core::model::{KvCache, LanguageModel, LoadOptions};
use longrope_core::scaling::{LayerTables, PositionScaling, RopeSchedule};
use longrope_core::{RopeContext, RopeShape, RopeTables};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/models").join(name)
}

fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name)).expect("golden fixture").into_iter().collect()
}

fn load(path: &Path, dtype: Kind) -> Box<dyn LanguageModel> {
    let options = LoadOptions { dtype, ..LoadOptions::default() };
    longrope_models::load(path, &options).unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

fn original(model: &dyn LanguageModel) -> LayerTables {
    let s = model.summary();
    let t = Arc::new(RopeTables::original(&s.rope_shape(s.max_position_embeddings)));
    LayerTables { layers: vec![t; s.num_layers] }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn ids_of(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.flatten(0, -1)).expect("i64 ids")
}

fn check_tiny(dir: PathBuf, golden_name: &str, arch: &str) -> Box<dyn LanguageModel> {
    let model = load(&dir, Kind::Float);
    assert_eq!(model.summary().arch, arch);
    let g = golden(golden_name);
    let ids = g["input_ids"].unsqueeze(0);
    let logits = model.forward(&ids, &original(model.as_ref()), None).unwrap().squeeze_dim(0);
    let diff = max_abs_diff(&logits, &g["logits"]);
    eprintln!("{arch}: max |logits - HF| = {diff:e}");
    assert!(diff <= 1e-5, "{arch}: max |logits - HF| = {diff}");
    model
}

#[test]
fn tiny_llama_logits_equal_hf() {
    let model = check_tiny(common::tiny_llama(), "tiny_llama_golden.safetensors", "llama");
    let s = model.summary();
    assert_eq!((s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.vocab_size), (2, 4, 2, 16, 320));
    assert!(!s.tied_embeddings);
    assert_eq!(s.weight_dtype, "F32");
}

#[test]
fn tiny_mistral_logits_equal_hf_with_sliding_window() {
    let model = check_tiny(common::tiny_mistral(), "tiny_mistral_golden.safetensors", "mistral");
    let s = model.summary();
    assert_eq!(s.sliding_window, Some(8));
    assert!(s.tied_embeddings);
    assert_eq!(s.weight_dtype, "BF16");
    // Without the window the logits differ: the window is really applied.
    let options = LoadOptions { sliding_window: Some(None), ..LoadOptions::default() };
    let wide = longrope_models::load(&common::tiny_mistral(), &options).unwrap();
    assert_eq!(wide.summary().sliding_window, None);
    let g = golden("tiny_mistral_golden.safetensors");
    let logits = wide.forward(&g["input_ids"].unsqueeze(0), &original(wide.as_ref()), None).unwrap().squeeze_dim(0);
    assert!(max_abs_diff(&logits, &g["logits"]) > 1e-3);
}

/// Tiny random Qwen2 (`scripts/fixtures/arch_golden.py`): biases on q/k/v, tied head, the sliding window on
/// layer 1 only (`use_sliding_window`, `layer_types`); logits equal HF's to 1e-5.
#[test]
fn tiny_qwen2_logits_equal_hf() {
    let dir = common::root().join("tests/fixtures/tiny-qwen2");
    let model = load(&dir, Kind::Float);
    let s = model.summary();
    assert_eq!((s.arch.as_str(), s.num_layers, s.head_dim, s.sliding_window), ("qwen2", 2, 16, Some(8)));
    assert!(s.tied_embeddings && s.checkpoint_scaling.is_none());
    let g = golden("tiny_qwen2_golden.safetensors");
    let ids = g["input_ids"].narrow(0, 0, 48).unsqueeze(0);
    let logits = model.forward(&ids, &original(model.as_ref()), None).unwrap().squeeze_dim(0);
    let diff = max_abs_diff(&logits, &g["logits_48"]);
    eprintln!("qwen2: max |logits - HF| = {diff:e}");
    assert!(diff <= 1e-5, "qwen2: max |logits - HF| = {diff}");
    // Without the window (or with it on every layer) the logits differ: layer 1 alone slides, as HF's.
    for window in [None, Some(8)] {
        let options = LoadOptions { sliding_window: Some(window), ..LoadOptions::default() };
        let other = longrope_models::load(&dir, &options).unwrap();
        let logits = other.forward(&ids, &original(other.as_ref()), None).unwrap().squeeze_dim(0);
        let d = max_abs_diff(&logits, &g["logits_48"]);
        if window.is_none() {
            assert!(d > 1e-3, "the window of layer 1 has no effect ({d})");
        } else {
            assert!(d <= 1e-5, "overriding the window with the same size changes the logits ({d})");
        }
    }
}

/// Tiny random Phi-3 (`scripts/fixtures/arch_golden.py`): fused `qkv_proj` / `gate_up_proj`, partial rotary
/// (8 of 16 dimensions), LongRoPE short/long factors in its config switching at 32 tokens; logits equal HF's to
/// 1e-5 below (24 tokens: short factors) and above (80 tokens: long factors) the original window, with the
/// checkpoint's own scaling as runs apply it by default.
#[test]
fn tiny_phi3_longrope_logits_equal_hf_below_and_above_the_window() {
    let dir = common::root().join("tests/fixtures/tiny-phi3");
    let model = load(&dir, Kind::Float);
    let s = model.summary();
    assert_eq!((s.arch.as_str(), s.head_dim, s.rope_dim(), s.max_position_embeddings), ("phi3", 16, 8, 32));
    let own = s.checkpoint_scaling.as_ref().expect("Phi-3's longrope block");
    assert_eq!((own.method.as_str(), own.original_max_position_embeddings, own.max_position_embeddings), ("longrope", 32, 128));
    let g = golden("tiny_phi3_golden.safetensors");
    for n in [24usize, 80] {
        let run = longrope_core::scaling::run_scaling(s, longrope_core::scaling::ScalingRequest::Default, n).unwrap();
        let ids = g["input_ids"].narrow(0, 0, n as i64).unsqueeze(0);
        let logits = model.forward(&ids, &run.schedule.tables(n).unwrap(), None).unwrap().squeeze_dim(0);
        let diff = max_abs_diff(&logits, &g[&format!("logits_{n}")]);
        eprintln!("phi3 at {n} tokens: max |logits - HF| = {diff:e}");
        assert!(diff <= 1e-5, "phi3 at {n} tokens: max |logits - HF| = {diff}");
        // the unscaled RoPE gives other logits (the factors are really applied)
        let plain = model.forward(&ids, &original(model.as_ref()), None).unwrap().squeeze_dim(0);
        assert!(max_abs_diff(&plain, &g[&format!("logits_{n}")]) > 1e-4, "phi3 at {n}: scaling has no effect");
    }
}

/// The same tiny models as GGUF files converted by llama.cpp's own `convert_hf_to_gguf.py`
/// (`scripts/fixtures/gguf_arch_golden.py`): our GGUF loader reads each architecture's llama.cpp layout (Llama's
/// permuted Q/K; Qwen2's biases; Phi-3's fused `attn_qkv` / `ffn_up`, partial rotary, and its LongRoPE as
/// `rope_factors_short/long.weight` + `rope.scaling.attn_factor`) into the logits HF computes from safetensors.
#[test]
fn tiny_gguf_files_from_llama_cpp_converter_give_hf_logits() {
    let gguf = |arch: &str| common::root().join(format!("tests/fixtures/gguf/tiny-{arch}.gguf"));
    let check = |arch: &str, model: &dyn LanguageModel, tables: &LayerTables, ids: &Tensor, expected: &Tensor| {
        let logits = model.forward(&ids.unsqueeze(0), tables, None).unwrap().squeeze_dim(0);
        let diff = max_abs_diff(&logits, expected);
        eprintln!("{arch} GGUF ({} tokens): max |logits - HF| = {diff:e}", ids.size()[0]);
        assert!(diff <= 1e-5, "{arch} GGUF: max |logits - HF| = {diff}");
    };
    let llama = load(&gguf("llama"), Kind::Float);
    assert_eq!((llama.summary().arch.as_str(), llama.summary().format.as_str()), ("llama", "gguf"));
    let g = golden("tiny_llama_golden.safetensors");
    check("llama", llama.as_ref(), &original(llama.as_ref()), &g["input_ids"], &g["logits"]);

    // llama.cpp's qwen2 converter writes no sliding window (llama.cpp runs Qwen2 without one): compare the first
    // 8 positions, which HF's window of 8 on layer 1 does not reach.
    let qwen2 = load(&gguf("qwen2"), Kind::Float);
    assert_eq!((qwen2.summary().arch.as_str(), qwen2.summary().tied_embeddings), ("qwen2", true));
    let g = golden("tiny_qwen2_golden.safetensors");
    check("qwen2", qwen2.as_ref(), &original(qwen2.as_ref()), &g["input_ids"].narrow(0, 0, 8), &g["logits_48"].narrow(0, 0, 8));

    let phi3 = load(&gguf("phi3"), Kind::Float);
    let s = phi3.summary();
    assert_eq!((s.arch.as_str(), s.rope_dim(), s.max_position_embeddings), ("phi3", 8, 32));
    let own = s.checkpoint_scaling.as_ref().expect("Phi-3's factor tensors");
    assert_eq!((own.method.as_str(), own.original_max_position_embeddings, own.max_position_embeddings), ("longrope", 32, 128));
    let g = golden("tiny_phi3_golden.safetensors");
    for n in [24usize, 80] {
        let run = longrope_core::scaling::run_scaling(s, longrope_core::scaling::ScalingRequest::Default, n).unwrap();
        let tables = run.schedule.tables(n).unwrap();
        check("phi3", phi3.as_ref(), &tables, &g["input_ids"].narrow(0, 0, n as i64), &g[&format!("logits_{n}")]);
    }
}

#[test]
fn kv_cache_continuation_equals_full_forward() {
    for (dir, name) in [
        (common::tiny_llama(), "tiny_llama_golden.safetensors"),
        (common::tiny_mistral(), "tiny_mistral_golden.safetensors"),
    ] {
        let model = load(&dir, Kind::Float);
        let tables = original(model.as_ref());
        let ids = golden(name)["input_ids"].unsqueeze(0);
        let full = model.forward(&ids, &tables, None).unwrap();
        let mut cache = KvCache::default();
        let mut parts = Vec::new();
        // Prefill, decoding steps of one token (GQA: 4 query heads over 2 KV heads, grouped without copying the
        // cache), then a multi-token continuation.
        for (start, len) in [(0, 20), (20, 1), (21, 1), (22, 26)] {
            parts.push(model.forward(&ids.narrow(1, start, len), &tables, Some(&mut cache)).unwrap());
        }
        assert_eq!(cache.len, 48);
        let diff = max_abs_diff(&Tensor::cat(&parts, 1), &full);
        assert!(diff <= 1e-5, "{}: cached vs full {diff}", dir.display());
        // A cache built under other tables is refused rather than silently reused.
        let mut other = (*tables.layers[0]).clone();
        other.inv_freq[1] *= 0.5;
        let other = LayerTables { layers: vec![Arc::new(other); tables.layers.len()] };
        assert!(model.forward(&ids.narrow(1, 0, 1), &other, Some(&mut cache)).is_err());
    }
}

#[test]
fn nll_is_chunked_sum_of_log_softmax() {
    let model = load(&common::tiny_llama(), Kind::Float);
    let g = golden("tiny_llama_golden.safetensors");
    let ids = ids_of(&g["input_ids"]);
    let logp = g["logits"].to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    let mut expected = 0.0;
    for p in 5..ids.len() {
        expected -= logp.double_value(&[(p - 1) as i64, ids[p]]);
    }
    let got = model.nll(&ids, &original(model.as_ref()), 5).unwrap();
    assert_eq!(got.count, ids.len() - 5);
    assert!((got.sum - expected).abs() < 1e-4, "{} vs {expected}", got.sum);
}

/// A test method whose tables change with the sequence length (like dynamic NTK): frequencies halve once the
/// sequence is longer than `switch`.
#[derive(Debug)]
struct SwitchAt {
    switch: usize,
}

impl PositionScaling for SwitchAt {
    fn name(&self) -> &str {
        "switch-at-test"
    }
    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        let f = if ctx.seq_len > self.switch { 0.5 } else { 1.0 };
        Ok(RopeTables::new(ctx.shape.base_inv_freq().iter().map(|v| v * f).collect(), 1.0))
    }
    fn depends_on_seq_len(&self) -> bool {
        true
    }
}

#[test]
fn greedy_generation_rebuilds_cache_when_tables_change() {
    let model = load(&common::tiny_llama(), Kind::Float);
    let s = model.summary().clone();
    let shape: RopeShape = s.rope_shape(s.max_position_embeddings);
    let schedule = RopeSchedule { shape, method: Arc::new(SwitchAt { switch: 16 }) };
    let prompt: Vec<u32> = ids_of(&golden("tiny_llama_golden.safetensors")["input_ids"])[..10].iter().map(|&i| i as u32).collect();
    assert_ne!(schedule.tables(10).unwrap(), schedule.tables(17).unwrap(), "the tables switch mid-generation");
    let got = greedy_generate(model.as_ref(), &prompt, 12, &schedule, false).unwrap();
    // Reference: a full forward (no cache) at every step under the tables of that step's length.
    let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let mut expected = Vec::new();
    for _ in 0..12 {
        let tables = schedule.tables(seq.len()).unwrap();
        let logits = model.forward(&Tensor::from_slice(&seq).unsqueeze(0), &tables, None).unwrap();
        let next = logits.select(1, -1).argmax(-1, false).int64_value(&[0]);
        seq.push(next);
        expected.push(next as u32);
    }
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------- SmolLM2 (real GGUF) ----------------------

fn smollm2_f32() -> &'static Mutex<Box<dyn LanguageModel>> {
    static MODEL: OnceLock<Mutex<Box<dyn LanguageModel>>> = OnceLock::new();
    MODEL.get_or_init(|| Mutex::new(load(&common::smollm2(), Kind::Float)))
}

fn smollm2_doc() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("smollm2_golden.json")).unwrap()).unwrap()
}

#[test]
fn smollm2_logits_and_nll_equal_hf() {
    let model = smollm2_f32().lock().unwrap();
    let g = golden("smollm2_golden.safetensors");
    let ids = g["input_ids"].unsqueeze(0);
    assert_eq!(ids.size()[1], 200);
    let logits = model.forward(&ids, &original(model.as_ref()), None).unwrap().squeeze_dim(0);
    let cols = logits.index_select(1, &g["columns"]);
    let d_cols = max_abs_diff(&cols, &g["logits_at_columns"]);
    let d_rows = max_abs_diff(&logits.index_select(0, &g["full_positions"]), &g["full_rows"]);
    eprintln!("SmolLM2 f32: max |logits - HF| columns {d_cols:e}, full rows {d_rows:e}");
    assert!(d_cols <= 1e-3 && d_rows <= 1e-3, "max |logits - HF|: columns {d_cols}, full rows {d_rows}");
    let nll = model.nll(&ids_of(&g["input_ids"]), &original(model.as_ref()), 0).unwrap();
    let hf_mean = smollm2_doc()["mean_nll"].as_f64().unwrap();
    assert_eq!(nll.count, 199);
    eprintln!("SmolLM2 f32: mean NLL {} vs HF {hf_mean}", nll.mean());
    assert!((nll.mean() - hf_mean).abs() <= 1e-4, "mean NLL {} vs HF {hf_mean}", nll.mean());
}

#[test]
fn smollm2_tokenizer_ids_equal_hf() {
    let model = smollm2_f32().lock().unwrap();
    let tok = model.tokenizer();
    for case in smollm2_doc()["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids, expected, "token ids of {text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), case["decoded"].as_str().unwrap(), "round trip of {text:?}");
    }
}

#[test]
fn smollm2_greedy_20_tokens_equal_hf() {
    let model = smollm2_f32().lock().unwrap();
    let doc = smollm2_doc();
    let g = &doc["greedy"];
    let prompt = model.tokenizer().encode(g["prompt"].as_str().unwrap(), false).unwrap().get_ids().to_vec();
    let hf_prompt: Vec<u32> = g["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(prompt, hf_prompt);
    let s = model.summary().clone();
    let schedule = RopeSchedule { shape: s.rope_shape(s.max_position_embeddings), method: Arc::new(SwitchAt { switch: usize::MAX }) };
    let new = greedy_generate(model.as_ref(), &prompt, 20, &schedule, true).unwrap();
    let hf_new: Vec<u32> = g["new_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(new, hf_new, "ours: {:?}", model.tokenizer().decode(&new, false));
}

#[test]
fn smollm2_bf16_nll_within_one_percent_of_f32() {
    let path = common::smollm2();
    let g = golden("smollm2_golden.safetensors");
    let ids = ids_of(&g["input_ids"]);
    let f32_nll = {
        let m = smollm2_f32().lock().unwrap();
        m.nll(&ids, &original(m.as_ref()), 0).unwrap().mean()
    };
    let bf16 = load(&path, Kind::BFloat16);
    assert_eq!(bf16.dtype(), Kind::BFloat16);
    let bf16_nll = bf16.nll(&ids, &original(bf16.as_ref()), 0).unwrap().mean();
    let rel = (bf16_nll - f32_nll).abs() / f32_nll;
    eprintln!("SmolLM2 mean NLL: bf16 {bf16_nll} vs f32 {f32_nll} ({:.3}%)", rel * 100.0);
    assert!(rel < 0.01, "bf16 NLL {bf16_nll} vs f32 {f32_nll}: {:.3}%", rel * 100.0);
}

// ---------------------------------------------------------------- CLI and bad files ------------------------

#[test]
fn model_info_reports_smollm2() {
    let path = common::smollm2();
    let out = common::longrope(&["model", "info", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["arch"], "llama");
    assert_eq!(s["format"], "gguf");
    assert_eq!(s["num_layers"], 30);
    assert_eq!(s["num_heads"], 9);
    assert_eq!(s["num_kv_heads"], 3);
    assert_eq!(s["head_dim"], 64);
    assert_eq!(s["vocab_size"], 49152);
    assert_eq!(s["rope_base"], 100000.0);
    assert_eq!(s["max_position_embeddings"], 8192);
    assert_eq!(s["weight_dtype"], "Q4_1, F32, Q8_0");
    assert_eq!(s["tied_embeddings"], true);
}

#[test]
fn generate_cli_json_has_ids_and_text() {
    let dir = common::tiny_llama();
    let out = common::longrope(&[
        "generate", "--model", dir.to_str().unwrap(), "--prompt", "Emma Woodhouse", "--max-new-tokens", "5",
        "--ignore-eos", "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = doc["new_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids.len(), 5);
    let model = load(&dir, Kind::Float);
    assert_eq!(doc["text"].as_str().unwrap(), model.tokenizer().decode(&ids, false).unwrap());
    let prompt = model.tokenizer().encode("Emma Woodhouse", true).unwrap().get_ids().to_vec();
    let s = model.summary().clone();
    let schedule = RopeSchedule { shape: s.rope_shape(s.max_position_embeddings), method: Arc::new(SwitchAt { switch: usize::MAX }) };
    assert_eq!(ids, greedy_generate(model.as_ref(), &prompt, 5, &schedule, false).unwrap());
}

#[test]
fn bench_commands_report_speed_on_the_tiny_model() {
    let dir = common::tiny_llama();
    let model = dir.to_str().unwrap();
    let out = common::longrope(&["bench", "decode", "--model", model, "--lengths", "8,16", "--steps", "3", "--dtypes", "f32,bf16", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cells: Vec<(&str, u64)> = runs.iter().map(|r| (r["dtype"].as_str().unwrap(), r["prompt_tokens"].as_u64().unwrap())).collect();
    assert_eq!(cells, [("f32", 8), ("f32", 16), ("bf16", 8), ("bf16", 16)]);
    for r in &runs {
        assert_eq!(r["decode_steps"], 3);
        let ms = r["decode_ms_per_token"].as_f64().unwrap();
        assert!(ms > 0.0 && (r["decode_tokens_per_s"].as_f64().unwrap() - 1e3 / ms).abs() < 1e-6 * (1e3 / ms), "{r}");
        assert!(r["prefill_seconds"].as_f64().unwrap() > 0.0, "{r}");
    }
    let out = common::longrope(&["bench", "forward", "--model", model, "--lengths", "16", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0]["tokens_per_s"].as_f64().unwrap() > 0.0 && runs[0]["mean_nll"].as_f64().unwrap() > 0.0);
    let bad = common::longrope(&["bench", "decode", "--model", model, "--steps", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--steps must be positive"));
}

/// A minimal GGUF v3 file: metadata and one F32/other-typed tensor of 32 values.
fn tiny_gguf(arch: &str, tensor_type: u32) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, arch);
    s(&mut b, "token_embd.weight");
    b.extend(1u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(tensor_type.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend([0u8; 128]);
    b
}

fn info_error(path: &Path) -> String {
    let out = common::longrope(&["model", "info", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{} should fail", path.display());
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(err.contains(path.to_str().unwrap()), "error names the file: {err}");
    err
}

#[test]
fn model_info_on_bad_files_names_file_and_problem() {
    let dir = std::env::temp_dir().join(format!("longrope-models-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let err = info_error(&write("garbage.gguf", b"this is not a gguf file at all"));
    assert!(err.contains("bad magic"), "{err}");
    let err = info_error(&write("unknown-arch.gguf", &tiny_gguf("gpt-neox", 0)));
    assert!(err.contains("unknown architecture `gpt-neox`") && err.contains("llama, mistral"), "{err}");
    let err = info_error(&write("q5k.gguf", &tiny_gguf("llama", 13)));
    assert!(err.contains("token_embd.weight") && err.contains("Q5_K"), "{err}");
    let full = tiny_gguf("llama", 0);
    let err = info_error(&write("cut-header.gguf", &full[..40]));
    assert!(err.contains("truncated"), "{err}");
    let err = info_error(&write("cut-data.gguf", &full[..full.len() - 64]));
    assert!(err.contains("truncated") && err.contains("token_embd.weight"), "{err}");
    let bytes = std::fs::read(common::smollm2()).unwrap();
    let err = info_error(&write("smollm2-cut.gguf", &bytes[..bytes.len() / 2]));
    assert!(err.contains("truncated"), "{err}");
    let err = info_error(&dir.join("missing.gguf"));
    assert!(err.contains("No such file"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
