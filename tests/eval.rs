//! Evaluators end to end through the CLI: perplexity against HF transformers' values on SmolLM2, passkey
//! retrieval inside the trained window, token stores and their errors.

mod common;

use std::path::{Path, PathBuf};

use common::{longrope, root};

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/eval_golden.json")).expect("eval golden fixture");
    serde_json::from_str(&text).unwrap()
}

fn model() -> PathBuf {
    common::smollm2().expect("SmolLM2 GGUF missing: run `make assets` (scripts/setup.sh assets)")
}

/// The first 20,000 characters of Emma: tokenizes to the same first ~4,000 tokens as the whole novel.
fn emma_head(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::assets().join("corpus/austen-emma.txt")).expect("corpus missing: run `make assets`");
    let head: String = text.chars().take(20_000).collect();
    let path = dir.join("emma-head.txt");
    std::fs::write(&path, head).unwrap();
    path
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = longrope(args);
    assert!(out.status.success(), "longrope {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn assert_rel(got: f64, want: f64, tol: f64, what: &str) {
    assert!(((got - want) / want).abs() <= tol, "{what}: got {got}, HF reference {want}");
}

#[test]
fn ppl_of_first_window_matches_hf_with_and_without_bos() {
    let dir = tempfile::tempdir().unwrap();
    let data = emma_head(dir.path());
    let m = model();
    let g = golden();
    let out = dir.path().join("out");
    for (bos, key) in [("false", "ppl_1024_no_bos"), ("true", "ppl_1024_bos")] {
        let doc = run_json(&[
            "ppl", "--model", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--lengths", "1024",
            "--truncate", "--samples", "1", "--add-bos", bos, "--out", out.to_str().unwrap(), "--json",
        ]);
        let r = &doc["results"][0];
        assert_eq!(r["length"], 1024);
        assert_rel(r["ppl"].as_f64().unwrap(), g[key].as_f64().unwrap(), 1e-4, key);
        assert_eq!(r["per_document"][0]["name"], "emma-head");
    }
    // Results were also written as JSON and CSV.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.starts_with("evaluator,length,metric,value,tokens,seconds\nppl,1024,ppl,"), "{csv}");
    assert!(out.join("results.json").exists());
}

#[test]
fn sliding_windows_score_only_new_tokens_like_hf() {
    let dir = tempfile::tempdir().unwrap();
    let data = emma_head(dir.path());
    let doc = run_json(&[
        "ppl", "--model", model().to_str().unwrap(), "--data", data.to_str().unwrap(), "--lengths", "512",
        "--sliding-window", "256", "--max-sliding-count", "2", "--samples", "1", "--add-bos", "false",
        "--out", dir.path().join("o").to_str().unwrap(), "--json",
    ]);
    let r = &doc["results"][0];
    assert_eq!(r["details"]["windows"], 2);
    assert_rel(r["ppl"].as_f64().unwrap(), golden()["sliding_512_stride_256_two_windows_no_bos"].as_f64().unwrap(), 1e-4, "sliding");
}

#[test]
fn passkey_is_retrieved_inside_the_trained_window() {
    let dir = tempfile::tempdir().unwrap();
    let doc = run_json(&[
        "passkey", "--model", model().to_str().unwrap(), "--lengths", "1024", "--samples", "4", "--seed", "1",
        "--out", dir.path().to_str().unwrap(), "--json",
    ]);
    let r = &doc["results"][0];
    let acc = r["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.75, "passkey accuracy at 1k: {acc}: {r}");
    for s in r["details"]["samples"].as_array().unwrap() {
        let n = s["prompt_tokens"].as_u64().unwrap();
        assert!(n <= 1024 && n > 950, "prompt length {n} should fill the 1024-token budget");
    }
}

#[test]
fn token_store_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = emma_head(dir.path());
    let m = model();
    let store = dir.path().join("store");
    let out = longrope(&["tokenize", "--model", m.to_str().unwrap(), "--input", data.to_str().unwrap(), "--out", store.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["documents"], 1);
    let total = summary["total_tokens"].as_u64().unwrap();
    assert!(total > 4000, "{summary}");
    assert_eq!(summary["docs"][0]["len"], total);

    // A store and the raw text give the same perplexity.
    let via_store = run_json(&[
        "ppl", "--model", m.to_str().unwrap(), "--data", store.to_str().unwrap(), "--lengths", "256", "--truncate",
        "--samples", "1", "--out", dir.path().join("o1").to_str().unwrap(), "--json",
    ]);
    let via_text = run_json(&[
        "ppl", "--model", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--lengths", "256", "--truncate",
        "--samples", "1", "--out", dir.path().join("o2").to_str().unwrap(), "--json",
    ]);
    assert_eq!(via_store["results"][0]["ppl"], via_text["results"][0]["ppl"]);

    // A length beyond what the documents hold: a clear error, naming the need and what exists.
    let out = longrope(&["ppl", "--model", m.to_str().unwrap(), "--data", store.to_str().unwrap(), "--lengths", "256,100000", "--out", dir.path().join("o3").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("100000") && err.contains(&format!("longest has {total} tokens")), "{err}");
    // ... and the length computed before the error is kept.
    let kept = std::fs::read_to_string(dir.path().join("o3/results.csv")).unwrap();
    assert!(kept.contains("ppl,256,ppl,"), "{kept}");

    // A store made with another tokenizer is refused.
    let tiny = common::tiny_llama();
    let out = longrope(&["ppl", "--model", tiny.to_str().unwrap(), "--data", store.to_str().unwrap(), "--lengths", "16"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another tokenizer") && err.contains("store"), "{err}");

    // A corrupt store is refused with the store's path.
    let bin = store.join("tokens.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() - 2]).unwrap();
    let out = longrope(&["ppl", "--model", m.to_str().unwrap(), "--data", store.to_str().unwrap(), "--lengths", "256"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt token store") && err.contains(store.to_str().unwrap()), "{err}");
}

#[test]
fn eval_runs_several_evaluators_in_one_load_and_rejects_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = common::tiny_llama();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "hello world ".repeat(400)).unwrap();
    let doc = run_json(&[
        "eval", "--model", tiny.to_str().unwrap(), "--data", text.to_str().unwrap(), "--evaluators", "ppl,needle-ppl",
        "--lengths", "128,192", "--samples", "1", "--out", dir.path().join("o").to_str().unwrap(), "--json",
    ]);
    let results = doc["results"].as_array().unwrap();
    let got: Vec<(String, u64)> = results.iter().map(|r| (r["evaluator"].as_str().unwrap().to_string(), r["length"].as_u64().unwrap())).collect();
    assert_eq!(got, vec![("ppl".into(), 128), ("ppl".into(), 192), ("needle-ppl".into(), 128), ("needle-ppl".into(), 192)]);
    for r in results {
        let v = r[r["metric"].as_str().unwrap()].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{r}");
    }
    let out = longrope(&["eval", "--model", tiny.to_str().unwrap(), "--data", text.to_str().unwrap(), "--evaluators", "nope", "--lengths", "32"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown evaluator plugin `nope`") && err.contains("needle-ppl, passkey, ppl"), "{err}");
}
