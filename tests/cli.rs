//! End-to-end tests of the `longrope` binary: help on every subcommand, plugin listing, environment.

mod common;

use common::longrope;

#[test]
fn every_subcommand_has_help() {
    let out = longrope(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let subcommands: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(subcommands.contains(&"plugins".to_string()), "{text}");
    for sub in subcommands {
        let out = longrope(&[&sub, "--help"]);
        assert!(out.status.success(), "`longrope {sub} --help` failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{sub}");
    }
}

#[test]
fn plugins_json_lists_every_kind() {
    let out = longrope(&["plugins", "--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    for kind in ["scaling", "search", "arch", "evaluator"] {
        let list = doc[kind].as_array().unwrap_or_else(|| panic!("kind {kind} missing"));
        let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{kind} listing is sorted");
        for p in list {
            assert!(!p["summary"].as_str().unwrap().is_empty());
        }
    }
}

/// The binary must link every plugin crate: each crate's registrations must appear in its listing.
#[test]
fn binary_links_every_plugin_crate() {
    let out = longrope(&["plugins", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = |kind: &str| -> Vec<String> {
        doc[kind].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    let expected = common::expected_plugins();
    // the workspace's own plugins, at least: 4 architectures, 3 evaluators, 8 scaling methods, 3 searches
    let counts: Vec<usize> = expected.iter().map(|(_, names)| names.len()).collect();
    assert!(counts.iter().zip([4, 3, 8, 3]).all(|(have, least)| *have >= least), "registry of the test process: {expected:?}");
    for (kind, expected) in &expected {
        let have = names(kind);
        // the binary lists exactly what the registry of a process linking every plugin crate holds (core's unit-test
        // registrations are not in either)
        assert_eq!(&have, expected, "{kind} plugins of the binary vs the registry");
    }
}

#[test]
fn env_reports_libtorch() {
    let out = longrope(&["env", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["libtorch_version"].as_str().unwrap().starts_with("2.13.0"), "{doc}");
    assert!(doc["threads"].as_i64().unwrap() >= 1);
    assert!(doc["cuda_available"].is_boolean());
}

#[test]
fn unknown_subcommand_fails() {
    let out = longrope(&["no-such-command"]);
    assert!(!out.status.success());
}

/// `bench compare` on the tiny Llama GGUF (ours and llama.cpp, 32 tokens): every requested implementation
/// measured in its own process (tokens/s, peak RSS), the ceiling measured, the report and plots written; a bad
/// `--impls` is refused.
#[test]
fn bench_compare_measures_each_implementation_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::root().join("tests/fixtures/gguf/tiny-llama.gguf");
    let llama = common::llama_perplexity();
    let (out, stem) = (dir.path().join("perf.md"), dir.path().join("cost"));
    let o = longrope(&[
        "bench", "compare", "--model", model.to_str().unwrap(), "--impls", "ours,llama.cpp", "--lengths", "32,64",
        "--dtypes", "f32", "--llama-perplexity", llama.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--plot", stem.to_str().unwrap(), "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{doc}");
    for r in runs {
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 1.0, "{r}");
        // llama-perplexity prints its time per pass with 2 decimals: on 32 tokens of a tiny model it may read
        // 0.00 s, which is reported as no throughput (null), never as infinity.
        if r["impl"] == "ours" || r["tokens_per_s"].is_number() {
            assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0 && r["gflops"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    assert!(runs.iter().any(|r| r["impl"] == "llama.cpp") && runs.iter().any(|r| r["impl"] == "ours"));
    assert!(doc["ceilings"][0][1].as_f64().unwrap() > 0.0, "{doc}");
    let report = std::fs::read_to_string(&out).unwrap();
    assert!(report.contains("| 64 | llama.cpp |") && report.contains("Command"), "{report}");
    for f in ["cost-throughput.png", "cost-throughput.svg", "cost-memory.png", "cost-memory.svg"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let bad = longrope(&["bench", "compare", "--model", model.to_str().unwrap(), "--impls", "ours,vllm"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("`vllm` is not one of"));
}

/// `bench profile` on the tiny Llama GGUF: every component timed, shares summing to one, a real forward beside.
#[test]
fn bench_profile_times_each_component_against_a_real_forward() {
    let model = common::root().join("tests/fixtures/gguf/tiny-llama.gguf");
    let o = longrope(&["bench", "profile", "--model", model.to_str().unwrap(), "--lengths", "32,64", "--dtype", "bf16", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    for r in runs.as_array().unwrap() {
        let parts = r["components"].as_array().unwrap();
        assert_eq!(parts.len(), 7, "{r}");
        let share: f64 = parts.iter().map(|p| p["share"].as_f64().unwrap()).sum();
        assert!((share - 1.0).abs() < 1e-9 && r["real_forward_seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(parts.iter().all(|p| p["seconds"].as_f64().unwrap() > 0.0), "{r}");
    }
}
