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
    // HF's golden takes L = max_position_embeddings (256), not the tiny Mistral's 8-token sliding window that
    // LongRoPE's rule (`rope_shape`) would take.
    let shape = model.summary().rope_shape_by(1024, longrope_core::model::OriginalContext::MaxPositionEmbeddings);
    let schedule = RopeSchedule::new(parse_scaling_toml(scaling, "test").unwrap().as_ref(), shape).unwrap();
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

/// A fine-tune of the tiny Llama on a short text, written into `dir` (text + config); `extra` is appended to
/// the config (more tables or fields).
fn tiny_finetune(dir: &Path, steps: usize, extra: &str) -> longrope_train::Finetune {
    tiny_finetune_every(dir, steps, 5, extra)
}

/// [`tiny_finetune`] with a checkpoint every `every` steps.
fn tiny_finetune_every(dir: &Path, steps: usize, every: usize, extra: &str) -> longrope_train::Finetune {
    link();
    let text = std::fs::read_to_string(common::assets().join("corpus/austen-emma.txt")).expect("corpus asset");
    std::fs::write(dir.join("text.txt"), &text[300..1500]).unwrap();
    let toml = format!(
        r#"scaling = "yarn"
target = 512
[model]
path = "{model}"
[data]
train = ["text.txt"]
seq_len = 32
batch_size = 2
seed = 1
[optim]
lr = 1e-2
schedule = "constant"
[train]
steps = {steps}
checkpoint_every = {every}
{extra}"#,
        model = common::tiny_llama().display()
    );
    std::fs::write(dir.join("ft.toml"), &toml).unwrap();
    longrope_train::Finetune::load(&dir.join("ft.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn run_finetune(spec: &longrope_train::Finetune, out: &Path, resume: bool, stop: Option<usize>) -> (Box<dyn LanguageModel>, longrope_train::Outcome) {
    let mut model = load(&spec.file.model.path, spec.compute_dtype());
    let opts = longrope_train::RunOptions { out_dir: out.to_path_buf(), resume, stop_after_steps: stop, progress: false, model_identity: None };
    let outcome = longrope_train::Trainer::new(spec, model.as_mut(), opts).unwrap_or_else(|e| panic!("{e}")).run(&mut |_| {}).unwrap();
    (model, outcome)
}

fn log_of(out: &Path) -> Vec<longrope_train::trainer::LogRecord> {
    longrope_train::trainer::read_log(&out.join("train_log.jsonl")).unwrap()
}

#[test]
fn tiny_model_overfits_a_short_text() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_finetune(dir.path(), 150, "");
    let (_, outcome) = run_finetune(&spec, &dir.path().join("out"), false, None);
    let longrope_train::Outcome::Finished(s) = outcome else { panic!("not finished") };
    let log = log_of(&dir.path().join("out"));
    assert_eq!(log.len(), 150);
    let tail: f64 = log[140..].iter().map(|r| r.loss).sum::<f64>() / 10.0;
    eprintln!("loss {:.3} -> last ten steps {tail:.3}", log[0].loss);
    assert!(log[0].loss > 5.5, "a random model starts near ln(320) = 5.77: {}", log[0].loss);
    assert!(tail < 1.5, "the model memorises ~300 tokens: mean loss of the last ten steps {tail}");
    assert_eq!(s.tokens, 150 * 2 * 32);
}

#[test]
fn stopped_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit() {
    // PoSE, mixed context windows and gradient accumulation: the data position and the windows' positions
    // must be restored too, not only the weights and moments.
    let extra = "[data.pose]\ntarget = 512\n[data.mixed]\nshort_len = 8\nshort_ratio = 0.3\n";
    let dir = tempfile::tempdir().unwrap();
    let mut spec = tiny_finetune(dir.path(), 12, extra);
    spec.file.optim.grad_accum = 2;
    let whole = dir.path().join("whole");
    run_finetune(&spec, &whole, false, None);
    let parts = dir.path().join("parts");
    let (_, first) = run_finetune(&spec, &parts, false, Some(7));
    assert!(matches!(first, longrope_train::Outcome::Stopped { step: 7 }));
    // Resuming without --resume is refused; with it, the run continues from step 7.
    let mut model = load(&spec.file.model.path, Kind::Float);
    let opts = longrope_train::RunOptions { out_dir: parts.clone(), resume: false, stop_after_steps: None, progress: false, model_identity: None };
    let err = longrope_train::Trainer::new(&spec, model.as_mut(), opts).err().expect("refused").to_string();
    assert!(err.contains("--resume") && err.contains("step 7"), "{err}");
    run_finetune(&spec, &parts, true, None);
    let (a, b) = (log_of(&whole), log_of(&parts));
    assert_eq!(a.len(), 12);
    let short: usize = a.iter().map(|r| r.short_tokens).sum();
    let all: usize = a.iter().map(|r| r.tokens).sum();
    assert_eq!((short, all), (7 * 64, 24 * 64), "7 of the 24 micro-batches (ratio 0.3) are short windows");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss.to_bits(), x.grad_norm.to_bits(), x.lr.to_bits(), x.tokens_seen, x.short_tokens), (y.step, y.loss.to_bits(), y.grad_norm.to_bits(), y.lr.to_bits(), y.tokens_seen, y.short_tokens), "step {}", x.step);
    }
    let wa = std::fs::read(whole.join("model/model.safetensors")).unwrap();
    let wb = std::fs::read(parts.join("model/model.safetensors")).unwrap();
    assert!(wa == wb, "the exported weights are identical");
    // A resume against changed data is refused rather than mixing two runs.
    let other = tiny_finetune(dir.path(), 12, &extra.replace("0.3", "0.5"));
    let mut model = load(&other.file.model.path, Kind::Float);
    let opts = longrope_train::RunOptions { out_dir: parts.clone(), resume: true, stop_after_steps: None, progress: false, model_identity: None };
    let err = longrope_train::Trainer::new(&other, model.as_mut(), opts).err().expect("refused").to_string();
    assert!(err.contains("another config"), "{err}");
}

#[test]
fn exported_directory_loads_and_scores_as_the_trained_model() {
    for (name, extra) in [("full", ""), ("lora", "[lora]\nrank = 4\nalpha = 8\ntrain_norms = true\n")] {
        let dir = tempfile::tempdir().unwrap();
        let spec = tiny_finetune(dir.path(), 10, extra);
        let out = dir.path().join("out");
        let (trained, outcome) = run_finetune(&spec, &out, false, None);
        let longrope_train::Outcome::Finished(s) = outcome else { panic!("not finished") };
        let export = s.export_dir.expect("exported");
        let exported = load(&export, Kind::Float);
        let summary = exported.summary();
        assert_eq!(summary.max_position_embeddings, 256, "{name}: the trained context L stays the original one");
        let own = summary.checkpoint_scaling.as_ref().expect("the export carries its rope_scaling");
        assert_eq!((own.kind.as_str(), own.method.as_str()), ("longrope", "longrope"));
        // Without --scaling, the export's own `rope_scaling` block is what runs.
        let own_schedule = longrope_core::scaling::run_scaling(summary, longrope_core::scaling::ScalingRequest::Default, 300).unwrap();
        assert_eq!(own_schedule.source, longrope_core::scaling::ScalingSource::Checkpoint);
        let config = longrope_core::scaling::load_scaling_config(export.join("longrope_scaling.toml").to_str().unwrap()).unwrap();
        let trained_schedule = RopeSchedule::new(spec.scaling.as_ref(), trained.summary().rope_shape(512)).unwrap();
        // The exported scaling file gives the training tables whatever the target is.
        let exported_schedule = RopeSchedule::new(config.as_ref(), exported.summary().rope_shape(300)).unwrap();
        let ids: Vec<i64> = (0..300).map(|i| (i * 37 % 320) as i64).collect();
        let _guard = tch::no_grad_guard();
        for len in [100, 300] {
            let a = trained.nll(&ids[..len], &trained_schedule.tables(len).unwrap(), 1).unwrap().mean();
            let b = exported.nll(&ids[..len], &exported_schedule.tables(len).unwrap(), 1).unwrap().mean();
            assert!((a - b).abs() < 1e-5 * a, "{name} at {len}: trained {a} vs exported {b}");
            let c = exported.nll(&ids[..len], &own_schedule.schedule.tables(len).unwrap(), 1).unwrap().mean();
            assert!((a - c).abs() < 1e-5 * a, "{name} at {len}: trained {a} vs the export's own rope_scaling {c}");
        }
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("finetune.json")).unwrap()).unwrap();
        let trainable = manifest["trainable_tensors"].as_u64().unwrap();
        if name == "lora" {
            // 7 projections x 2 layers x (A, B) + 5 norms.
            assert_eq!(trainable, 7 * 2 * 2 + 5);
        } else {
            assert_eq!(trainable, 21);
        }
    }
}

#[test]
fn lora_adapters_start_at_zero_and_only_they_train() {
    link();
    let mut model = load(&common::tiny_llama(), Kind::Float);
    let schedule = RopeSchedule::new(parse_scaling_toml("method = \"none\"", "t").unwrap().as_ref(), model.summary().rope_shape(256)).unwrap();
    let ids: Vec<i64> = (0..40).map(|i| (i * 11 % 320) as i64).collect();
    let tables = schedule.tables(40).unwrap();
    let before = tch::no_grad(|| model.nll(&ids, &tables, 1).unwrap().mean());
    let config = longrope_train::config::LoraSection {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["q_proj".into(), "down_proj".into()],
        train_embeddings: false,
        train_norms: false,
    };
    let adapted = longrope_train::lora::attach(model.decoder_mut().unwrap(), &config, 3, "t").unwrap();
    assert_eq!(adapted, ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]);
    let after = tch::no_grad(|| model.nll(&ids, &tables, 1).unwrap().mean());
    assert_eq!(before.to_bits(), after.to_bits(), "B = 0: an attached adapter changes nothing");
    let bad = longrope_train::config::LoraSection { targets: vec!["qkv_proj".into()], ..config };
    let err = longrope_train::lora::attach(model.decoder_mut().unwrap(), &bad, 3, "ft.toml").unwrap_err().to_string();
    assert!(err.starts_with("ft.toml: lora.targets: `qkv_proj` names no projection") && err.contains("q_proj"), "{err}");
}

#[test]
fn kill_9_then_resume_continues_the_same_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let spec = tiny_finetune_every(dir.path(), 120, 20, "");
    let whole = dir.path().join("whole");
    run_finetune(&spec, &whole, false, None);
    let parts = dir.path().join("parts");
    let config = dir.path().join("ft.toml");
    let args = ["finetune", "--config", config.to_str().unwrap(), "--out", parts.to_str().unwrap(), "--no-progress"];
    let mut child = std::process::Command::new(common::longrope_bin()).args(args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let first = parts.join("checkpoints/step-000020/state.json");
    let t0 = std::time::Instant::now();
    while !first.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed before finishing (it takes 120 steps)");
    let before = log_of(&parts);
    assert!(before.len() >= 20 && before.len() < 120, "{} steps logged before the kill", before.len());
    let out = common::longrope(&[&args[..], &["--resume"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (log_of(&whole), log_of(&parts));
    assert_eq!(b.len(), 120);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, x.loss.to_bits(), x.grad_norm.to_bits()), (y.step, y.loss.to_bits(), y.grad_norm.to_bits()), "step {}", x.step);
    }
}

#[test]
fn bad_finetune_configs_are_refused_before_any_compute_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    tiny_finetune(dir.path(), 10, "");
    let config = std::fs::read_to_string(dir.path().join("ft.toml")).unwrap();
    for (from, to, expected) in [
        ("lr = 1e-2", "lr = -1.0", "optim.lr: -1 must be in (0, 1)"),
        ("seq_len = 32", "seq_len = 1", "data.seq_len: 1 is too short"),
        ("scaling = \"yarn\"", "scaling = \"yarnn\"", "scaling: unknown scaling plugin `yarnn`"),
        ("[train]", "[lora]\ntargets = [\"qkv\"]\n[train]", "lora.targets: `qkv` names no projection"),
        ("seq_len = 32", "seq_len = 32\nheld_out = [\"text\"]", "no training documents left"),
        ("scaling = \"yarn\"", "scaling = \"dynamic-ntk\"", "scaling: cannot export `dynamic-ntk`"),
    ] {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, config.replace(from, to)).unwrap();
        let out_dir = dir.path().join("bad-out");
        let out = common::longrope(&["finetune", "--config", p.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--no-progress"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected) && err.contains("bad.toml"), "{to}: {err}");
        assert!(!out_dir.join("train_log.jsonl").exists() || std::fs::read_to_string(out_dir.join("train_log.jsonl")).unwrap().is_empty(), "{to}: nothing trained");
    }
}

#[test]
fn bench_train_compares_dtypes_on_the_same_steps() {
    let dir = tempfile::tempdir().unwrap();
    tiny_finetune(dir.path(), 10, "");
    let config = dir.path().join("ft.toml");
    let out = common::longrope(&["bench", "train", "--config", config.to_str().unwrap(), "--steps", "3", "--dtypes", "f32,bf16", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.iter().map(|r| r["dtype"].as_str().unwrap()).collect::<Vec<_>>(), ["f32", "bf16"]);
    assert!(runs[0]["max_rel_loss_diff_vs_first"].is_null());
    let diff = runs[1]["max_rel_loss_diff_vs_first"].as_f64().unwrap();
    assert!(diff > 0.0 && diff < 0.05, "bf16 follows f32 closely on 3 steps of the tiny model: {diff}");
    for r in &runs {
        assert_eq!(r["losses"].as_array().unwrap().len(), 3);
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn resume_after_the_base_model_changed_in_place_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A private copy of the tiny model whose weights we rewrite (same size, other values).
    let model = dir.path().join("tiny");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(common::tiny_llama()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    tiny_finetune(dir.path(), 10, "");
    let config = dir.path().join("ft.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(&common::tiny_llama().display().to_string(), &model.display().to_string());
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("out");
    let args = ["finetune", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-progress"];
    let first = common::longrope(&[&args[..], &["--stop-after-steps", "3"]].concat());
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // Same path, same size, same modification time: only the content differs.
    let weights = model.join("model.safetensors");
    let modified = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 8..].iter_mut().for_each(|b| *b ^= 0x40);
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::File::options().write(true).open(&weights).unwrap().set_modified(modified).unwrap();
    assert_eq!(std::fs::metadata(&weights).unwrap().modified().unwrap(), modified);
    let again = common::longrope(&[&args[..], &["--resume"]].concat());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("another config, model or data"), "{err}");
}
