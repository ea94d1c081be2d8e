//! Evaluators end to end through the CLI: perplexity against HF transformers' values and against the reference's
//! own `compute_perplexity` and selection on SmolLM2, the reference's passkey prompts and answers, passkey
//! retrieval inside the trained window, token stores and their errors.

mod common;

use std::path::{Path, PathBuf};

use common::{longrope, root};

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/eval_golden.json")).expect("eval golden fixture");
    serde_json::from_str(&text).unwrap()
}

/// Made by scripts/fixtures/reference_golden.py from microsoft/LongRoPE's own code.
fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/reference_golden.json")).expect("reference golden fixture");
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn model() -> PathBuf {
    common::smollm2()
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

/// `--windows full`: two full windows (stride 256) score only their new tokens, as HF's masked loss does.
#[test]
fn full_windows_score_only_new_tokens_like_hf() {
    let dir = tempfile::tempdir().unwrap();
    let data = emma_head(dir.path());
    let doc = run_json(&[
        "ppl", "--model", model().to_str().unwrap(), "--data", data.to_str().unwrap(), "--lengths", "512",
        "--sliding-window", "256", "--max-sliding-count", "2", "--samples", "1", "--add-bos", "false",
        "--windows", "full", "--out", dir.path().join("o").to_str().unwrap(), "--json",
    ]);
    let r = &doc["results"][0];
    assert_eq!(r["details"]["windows"], 2);
    assert_eq!(r["details"]["window_rule"], "full");
    assert_rel(r["ppl"].as_f64().unwrap(), golden()["sliding_512_stride_256_two_windows_no_bos"].as_f64().unwrap(), 1e-4, "sliding");
    // The reference reads 2 * 256 = 512 tokens: a single window, the first-window value.
    let doc = run_json(&[
        "ppl", "--model", model().to_str().unwrap(), "--data", data.to_str().unwrap(), "--lengths", "512",
        "--sliding-window", "256", "--max-sliding-count", "2", "--samples", "1", "--add-bos", "false",
        "--out", dir.path().join("o2").to_str().unwrap(), "--json",
    ]);
    assert_eq!(doc["results"][0]["details"]["windows"], 1);
    assert_eq!(doc["results"][0]["details"]["window_rule"], "reference");
}

/// The corpus the reference fixture was computed on, tokenized by us: the same token counts and ids as SmolLM2's
/// HF tokenizer.
fn reference_corpus(g: &serde_json::Value) -> (PathBuf, Vec<usize>) {
    let path = root().join(g["corpus"]["file"].as_str().unwrap());
    let tok = longrope_models::load_tokenizer(&model()).unwrap();
    let docs = longrope_data::corpus::read_text_docs(&path).unwrap();
    let tokens = longrope_data::corpus::tokenize_docs(&tok, &docs).unwrap();
    let lens: Vec<usize> = tokens.iter().map(|(_, t)| t.len()).collect();
    let want: Vec<usize> = g["corpus"]["token_lens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(lens, want, "token counts of {}", path.display());
    for ((_, t), first) in tokens.iter().zip(g["corpus"]["first_ids"].as_array().unwrap()) {
        assert_eq!(t[..8].to_vec(), ids(first));
    }
    (path, lens)
}

/// `perplexity.py:112-115` (`--dataset-min-tokens`, `--samples`) on our tokens: the same documents.
#[test]
fn selection_equals_the_references() {
    let g = reference();
    let (path, lens) = reference_corpus(&g);
    let docs = longrope_data::corpus::TokenDocs { docs: lens.iter().enumerate().map(|(i, &n)| (format!("d{i}"), vec![0; n])).collect() };
    let cases = g["selection"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let min = case["dataset_min_tokens"].as_u64().unwrap_or(0) as usize;
        // `if args.samples:` -- unset (or 0) keeps every document.
        let samples = case["samples"].as_u64().filter(|&n| n > 0).map(|n| n as usize).unwrap_or(lens.len());
        let want: Vec<usize> = case["selected"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        match longrope_data::corpus::select_docs(&docs, min, samples, None, &path.display().to_string()) {
            Ok(got) => assert_eq!(got, want, "{case}"),
            Err(e) => assert!(want.is_empty(), "{case}: {e}"),
        }
    }
}

/// The reference's `compute_perplexity` on HF transformers' SmolLM2 (f32) over the documents its selection keeps,
/// at two lengths (windows: full, cut at the 144-token budget, a tail at the document's budget end): the same
/// perplexity, on the same documents at both lengths.
#[test]
fn ppl_equals_the_reference_function_on_smollm2() {
    let g = reference();
    let (path, _) = reference_corpus(&g);
    let r = &g["ppl_real"];
    let n = |k: &str| r[k].as_u64().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let doc = run_json(&[
        "ppl", "--model", model().to_str().unwrap(), "--data", path.to_str().unwrap(), "--lengths", "64,128",
        "--dataset-min-tokens", &n("dataset_min_tokens"), "--samples", &n("samples"), "--sliding-window", &n("sliding_window"),
        "--max-sliding-count", &n("max_sliding_count"), "--out", dir.path().to_str().unwrap(), "--json",
    ]);
    let file = path.file_name().unwrap().to_str().unwrap();
    let selected: Vec<String> = r["selected"].as_array().unwrap().iter().map(|i| format!("{file}:{}", i.as_u64().unwrap() + 1)).collect();
    for (ours, theirs) in doc["results"].as_array().unwrap().iter().zip(r["results"].as_array().unwrap()) {
        assert_eq!(ours["length"], theirs["length"]);
        let names: Vec<String> = ours["per_document"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, selected, "the reference's documents at {}", ours["length"]);
        assert_rel(ours["ppl"].as_f64().unwrap(), theirs["ppl"].as_f64().unwrap(), 1e-4, &format!("ppl at {}", ours["length"]));
    }
}

/// The reference's passkey prompts at 256 and 1024 tokens tokenize to the ids its pipeline feeds the model, and
/// SmolLM2 answers them as HF does (`generate_answer`, greedy, 10 new tokens).
#[test]
fn passkey_prompts_and_answers_equal_the_references() {
    let g = reference();
    let p = &g["passkey"];
    let tok = longrope_models::load_tokenizer(&model()).unwrap();
    for l in p["lengths"].as_array().unwrap().iter().filter(|l| l["samples"][0]["ids"].is_array()) {
        let n_garbage = l["n_garbage"].as_u64().unwrap() as usize;
        for s in l["samples"].as_array().unwrap() {
            let text = longrope_eval::passkey::reference_prompt_text(n_garbage, s["prefix_chars"].as_u64().unwrap() as usize, s["key"].as_u64().unwrap() as u32);
            let ours = longrope_eval::passkey::encode_reference(&tok, &text, None, Some(1)).unwrap();
            assert_eq!(ours, ids(&s["ids"]), "token ids of the prompt at {}", l["length"]);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let answers = p["answers_256"].as_array().unwrap();
    let doc = run_json(&[
        "passkey", "--model", model().to_str().unwrap(), "--lengths", "256", "--samples", &answers.len().to_string(),
        "--out", dir.path().to_str().unwrap(), "--json",
    ]);
    let r = &doc["results"][0];
    assert_eq!(r["details"]["mode"], "reference");
    assert_eq!(r["details"]["garbage_chars"], 934);
    let samples = r["details"]["samples"].as_array().unwrap();
    let want = p["lengths"][0]["samples"].as_array().unwrap();
    for ((ours, prompt), answer) in samples.iter().zip(want).zip(answers) {
        assert_eq!(ours["key"], prompt["key"]);
        assert_eq!(ours["prefix_chars"], prompt["prefix_chars"]);
        assert_eq!(ours["prompt_tokens"].as_u64().unwrap() as usize, prompt["ids"].as_array().unwrap().len());
        let number = longrope_eval::passkey::first_number(ours["output"].as_str().unwrap());
        assert_eq!(number, answer["answer"].as_u64(), "answer {ours}");
        assert_eq!(ours["correct"], answer["correct"]);
    }
}

#[test]
fn passkey_is_retrieved_inside_the_trained_window() {
    let dir = tempfile::tempdir().unwrap();
    let doc = run_json(&[
        "passkey", "--model", model().to_str().unwrap(), "--lengths", "1024", "--samples", "4", "--seed", "1",
        "--passkey-mode", "tokens", "--out", dir.path().to_str().unwrap(), "--json",
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

    // More tokens than the documents hold: a clear error, naming the need and what exists ...
    let m_s = m.to_str().unwrap();
    let out = longrope(&["ppl", "--model", m_s, "--data", store.to_str().unwrap(), "--lengths", "256", "--dataset-min-tokens", "100000", "--out", dir.path().join("o4").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("100000") && err.contains("dataset_min_tokens") && err.contains(&format!("longest has {total} tokens")), "{err}");
    // ... per length with `--selection per-length`, keeping the lengths computed before the error.
    let out = longrope(&["ppl", "--model", m_s, "--data", store.to_str().unwrap(), "--lengths", "256,100000", "--selection", "per-length", "--out", dir.path().join("o3").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("100000") && err.contains(&format!("longest has {total} tokens")), "{err}");
    let kept = std::fs::read_to_string(dir.path().join("o3/results.csv")).unwrap();
    assert!(kept.contains("ppl,256,ppl,"), "{kept}");
    // Without a minimum the reference scores a document shorter than the window on what it has, and says so.
    let out = longrope(&["ppl", "--model", m_s, "--data", data.to_str().unwrap(), "--lengths", "8192", "--samples", "1", "--truncate", "--out", dir.path().join("o5").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: ppl at 8192 tokens: 1 of 1 documents have fewer than the 8191 tokens"), "{err}");

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
