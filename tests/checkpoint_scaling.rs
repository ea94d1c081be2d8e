//! A checkpoint's own RoPE scaling (`config.json` `rope_scaling` / `rope_parameters`) against HF transformers.
//!
//! - Every HF rope type (`default`, `linear`, `dynamic`, `yarn` with its options and plain, `llama3`,
//!   `longrope`, `su`) on SmolLM2: the directories `scripts/fixtures/rope_types_golden.py` made for HF are
//!   rebuilt here without Python (the GGUF's weights through our HF exporter, each case's `config.json` patch),
//!   loaded, and run with the checkpoint's own method: mean NLL equal to HF's to 1e-4 relative at 192 and 640
//!   tokens, below and above the window each block declares (256);
//! - `--scaling` replaces the checkpoint's method and says so; `model info` shows it; an unknown type or a
//!   missing required field is an error naming the file and the field (tiny random Llama, CLI).

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use longrope_core::model::{LanguageModel, LoadOptions};
use longrope_core::scaling::{load_scaling_config, run_scaling, ScalingRequest, ScalingSource};
use serde_json::Value;
use tch::Kind;

fn golden() -> Value {
    let path = common::root().join("tests/fixtures/rope_types_golden.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("rope_types_golden.json")).expect("valid JSON")
}

fn load(path: &Path) -> Box<dyn LanguageModel> {
    let options = LoadOptions { dtype: Kind::Float, ..LoadOptions::default() };
    longrope_models::load(path, &options).unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// SmolLM2's weights as an HF directory (f32, 0.5 GB), exported once per test process from the GGUF into
/// [`common::process_scratch`] (a `TempDir` in the static would never be removed).
fn smollm2_hf() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let scratch = common::process_scratch("checkpoint-scaling");
        let mut model = load(&common::smollm2());
        let shape = model.summary().rope_shape(model.summary().max_position_embeddings);
        let none = load_scaling_config("none").unwrap().build(&shape).unwrap();
        let out = scratch.join("smollm2-hf");
        let dec = model.decoder_mut().expect("llama decodes");
        longrope_train::export::export_hf(dec, &[], none.as_ref(), &shape, "method = \"none\"\n", Kind::Float, &out).unwrap();
        out
    })
}

/// A copy of `base` (weights and tokenizer symlinked) whose `config.json` has `patch` applied the way the
/// fixture script applies it: the rope keys removed, then the patch's keys set.
fn patched_dir(base: &Path, into: &Path, patch: &Value) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(base.join(f), into.join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    let obj = config.as_object_mut().unwrap();
    for k in ["rope_scaling", "rope_parameters", "rope_theta", "original_max_position_embeddings"] {
        obj.remove(k);
    }
    for (k, v) in patch.as_object().unwrap() {
        obj.insert(k.clone(), v.clone());
    }
    std::fs::write(into.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    into.to_path_buf()
}

#[test]
fn every_hf_rope_type_gives_hf_nll_on_smollm2() {
    let g = golden();
    let ids: Vec<i64> = g["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let base = smollm2_hf();
    let tmp = tempfile::tempdir().unwrap();
    let expected_method = |case: &str| match case {
        "default" => None,
        "linear" => Some("pi"),
        "dynamic" => Some("dynamic-ntk"),
        "yarn" | "yarn-legacy" => Some("yarn"),
        "llama3" => Some("llama3"),
        "longrope" | "su" => Some("longrope"),
        other => panic!("case `{other}` of the fixture has no expectation here"),
    };
    let cases = g["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 8, "every HF type: {:?}", cases.keys().collect::<Vec<_>>());
    let _guard = tch::no_grad_guard();
    let mut worst: f64 = 0.0;
    for (name, case) in cases {
        let dir = patched_dir(base, &tmp.path().join(name), &case["patch"]);
        let model = load(&dir);
        let s = model.summary();
        let own = s.checkpoint_scaling.as_ref();
        assert_eq!(own.map(|c| c.method.as_str()), expected_method(name), "{name}: {own:?}");
        let mut nlls = Vec::new();
        for (len, hf) in case["nll"].as_object().unwrap() {
            let len: usize = len.parse().unwrap();
            let hf = hf.as_f64().unwrap();
            let run = run_scaling(s, ScalingRequest::Default, len).unwrap();
            let expected_source = if own.is_some() { ScalingSource::Checkpoint } else { ScalingSource::Unscaled };
            assert_eq!(run.source, expected_source, "{name}");
            let ours = model.nll(&ids[..len], &run.schedule.tables(len).unwrap(), 0).unwrap().mean();
            let rel = (ours - hf).abs() / hf;
            eprintln!("{name:12} {len:4} tokens: NLL ours {ours:.6} HF {hf:.6} rel {rel:.2e}");
            worst = worst.max(rel);
            assert!(rel <= 1e-4, "{name} at {len} tokens: our NLL {ours} vs HF {hf} (rel {rel:e})");
            nlls.push(ours);
        }
        // The unscaled RoPE differs from every scaled case at the longer length (the test can tell methods apart).
        if own.is_some() {
            let none = run_scaling(s, ScalingRequest::Explicit(load_scaling_config("none").unwrap()), 640).unwrap();
            assert!(none.note.as_deref().is_some_and(|n| n.contains("replaces the checkpoint's own scaling")), "{name}");
            let plain = model.nll(&ids[..640], &none.schedule.tables(640).unwrap(), 0).unwrap().mean();
            assert!((plain - nlls[1]).abs() > 1e-3, "{name}: the scaled NLL {} equals the unscaled one {plain}", nlls[1]);
        }
    }
    eprintln!("worst relative NLL difference to HF: {worst:e}");
}

// ------------------------------------------------------------- CLI on the tiny random Llama -------------------

fn tiny_with(tmp: &Path, name: &str, patch: Value) -> PathBuf {
    patched_dir(&common::tiny_llama(), &tmp.join(name), &patch)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn model_info_shows_the_checkpoint_scaling_and_scaling_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_with(
        tmp.path(),
        "yarn",
        serde_json::json!({"rope_theta": 10000.0, "max_position_embeddings": 512,
                           "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256}}),
    );
    let out = common::longrope(&["model", "info", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rope scaling     yarn (`yarn` in "), "{text}");
    assert!(text.contains("L = 256, L' = 512"), "{text}");
    let out = common::longrope(&["model", "info", dir.to_str().unwrap(), "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["checkpoint_scaling"]["method"], "yarn");
    assert_eq!(doc["checkpoint_scaling"]["config"]["factor"], 2.0);
    assert_eq!(doc["max_position_embeddings"], 256, "the trained context L of a scaled checkpoint is its original one");

    let text_file = tmp.path().join("text.txt");
    std::fs::write(&text_file, "Emma Woodhouse, handsome, clever, and rich, with a comfortable home. ".repeat(40)).unwrap();
    let ppl = |scaling: Option<&str>, out_dir: &str| {
        let mut args = vec!["ppl", "--model", dir.to_str().unwrap(), "--data", text_file.to_str().unwrap(), "--lengths", "300",
                            "--samples", "1", "--json"];
        let out_dir = tmp.path().join(out_dir);
        args.extend(["--out", out_dir.to_str().unwrap()]);
        if let Some(s) = scaling {
            args.extend(["--scaling", s]);
        }
        let out = common::longrope(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        (doc["results"][0]["ppl"].as_f64().unwrap(), stderr(&out))
    };
    let (own, err) = ppl(None, "own");
    assert!(err.contains("using the checkpoint's own RoPE scaling yarn"), "{err}");
    let (own_again, _) = ppl(Some("checkpoint"), "checkpoint");
    assert_eq!(own, own_again);
    let (pi, err) = ppl(Some("pi"), "pi");
    assert!(err.contains("--scaling pi replaces the checkpoint's own scaling: yarn"), "{err}");
    assert!((pi - own).abs() > 1e-6, "pi {pi} vs the checkpoint's yarn {own}");
}

#[test]
fn unknown_or_incomplete_blocks_are_errors_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown", serde_json::json!({"rope_scaling": {"type": "ntk-by-magic", "factor": 2.0}}), vec!["rope_scaling", "ntk-by-magic", "known HF types", "longrope", "su"]),
        ("no-factor", serde_json::json!({"rope_scaling": {"rope_type": "linear"}}), vec!["rope_scaling", "`factor`", "missing"]),
        ("bad-list", serde_json::json!({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": "x"}}), vec!["rope_parameters", "long_factor"]),
    ];
    for (name, patch, needles) in cases {
        let dir = tiny_with(tmp.path(), name, patch);
        let out = common::longrope(&["model", "info", dir.to_str().unwrap()]);
        assert!(!out.status.success(), "{name}: accepted");
        let err = stderr(&out);
        assert!(err.contains(&dir.join("config.json").display().to_string()), "{name}: {err}");
        for n in needles {
            assert!(err.contains(n), "{name}: `{n}` not in {err}");
        }
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    }
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "Emma Woodhouse, handsome, clever, and rich. ".repeat(20)).unwrap();
    let out_dir = tmp.path().join("out");
    let out = common::longrope(&["ppl", "--model", common::tiny_llama().to_str().unwrap(), "--data", text.to_str().unwrap(),
                                 "--lengths", "64", "--scaling", "checkpoint", "--out", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("carries none"), "{}", stderr(&out));
}
