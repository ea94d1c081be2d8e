//! Helpers shared by the integration tests: locating the built binary, the asset cache, expected plugins.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every static plugin the workspace's crates register, by kind, as the registry of this test process lists it
/// (the test binary links every plugin crate, like the `longrope` binary). Derived, never hand-kept: a plugin
/// is declared once, with `longrope_core::plugin!`.
pub fn expected_plugins() -> Vec<(&'static str, Vec<String>)> {
    longrope_scaling::link();
    longrope_models::link();
    longrope_eval::link();
    longrope_search::link();
    use longrope_core::PluginKind;
    [("arch", PluginKind::Arch), ("evaluator", PluginKind::Evaluator), ("scaling", PluginKind::Scaling), ("search", PluginKind::Search)]
        .into_iter()
        .map(|(label, kind)| (label, longrope_core::registry::static_infos(kind).into_iter().map(|p| p.name.to_string()).collect()))
        .collect()
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the `longrope` binary built beside this test binary (`target/<profile>/longrope`).
pub fn longrope_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("longrope");
    assert!(bin.exists(), "{} not built: run `cargo build --workspace` before the tests (`make test` does)", bin.display());
    bin
}

/// Run `longrope ARGS...` and capture its output.
pub fn longrope(args: &[&str]) -> Output {
    Command::new(longrope_bin()).args(args).output().expect("run longrope")
}

/// The asset cache made by `scripts/setup.sh assets` (model and corpus), if present.
pub fn assets() -> PathBuf {
    std::env::var_os("LONGROPE_ASSETS").map(PathBuf::from).unwrap_or_else(|| root().join(".cache/assets"))
}

/// The default real model (SmolLM2-135M-Instruct Q4_1 GGUF). Its absence is a failure, never a skip: CI fetches
/// it (`make assets`), and a test that passes without its input proves nothing.
pub fn smollm2() -> PathBuf {
    let p = assets().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run `make assets` (scripts/setup.sh assets) or set LONGROPE_ASSETS", p.display());
    p
}

/// Path of a workspace `cdylib` (`lib<name>.so` on Linux), e.g. `cdylib("longrope_plugin_powerlaw")`.
/// `cargo test --workspace` builds every one into `target/<profile>/deps/` (`cargo build` copies it up to
/// `target/<profile>/`); the most recently built of the two is returned.
pub fn cdylib(lib_name: &str) -> PathBuf {
    let dir = longrope_bin().parent().expect("target/<profile>").to_path_buf();
    let file = format!("{}{lib_name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [dir.join("deps").join(&file), dir.join(&file)]
        .into_iter()
        .filter(|p| p.exists())
        .max_by_key(modified)
        .unwrap_or_else(|| panic!("{file} not built: run `cargo build --workspace` before the tests (`make test` does)"))
}

/// The tiny random Llama HF directory (2 layers, vocab 320, f32, untied head) written by
/// `scripts/fixtures/model_golden.py`.
pub fn tiny_llama() -> PathBuf {
    root().join("tests/fixtures/tiny-llama")
}

/// The tiny random Mistral HF directory (2 layers, vocab 320, bf16 sharded, tied, sliding window 8) written by
/// `scripts/fixtures/model_golden.py`.
pub fn tiny_mistral() -> PathBuf {
    root().join("tests/fixtures/tiny-mistral")
}

/// llama.cpp's `llama-perplexity` built by `scripts/setup.sh llamacpp` (`make test` builds it), or
/// `LONGROPE_LLAMA_PERPLEXITY`. Its absence is a failure, never a skip.
pub fn llama_perplexity() -> PathBuf {
    let p = std::env::var_os("LONGROPE_LLAMA_PERPLEXITY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/llamacpp/bin/llama-perplexity"));
    assert!(p.exists(), "{} is missing: run `make llamacpp` (scripts/setup.sh llamacpp) or set LONGROPE_LLAMA_PERPLEXITY", p.display());
    p
}
/// A text the tiny model's byte-level tokenizer turns into a few thousand tokens.
pub fn corpus_text() -> String {
    let words = ["the", "river", "ran", "past", "old", "mill", "and", "a", "heron", "stood", "very", "still", "while", "rain", "fell"];
    let mut s = String::new();
    let mut x: u64 = 7;
    for i in 0..1500 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s.push_str(words[(x >> 33) as usize % words.len()]);
        s.push(if i % 11 == 10 { '.' } else { ' ' });
        if i % 11 == 10 {
            s.push(' ');
        }
    }
    s
}

/// A tiny experiment: tiny random Llama (L = 256), 3 + 2 ablation methods + a searched one, ppl at 4 lengths
/// (beyond L at 512), passkey at 512, a search of 4 evaluations.
pub fn tiny_experiment(dir: &Path, extra_length: bool) -> PathBuf {
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, corpus_text()).unwrap();
    let lengths = if extra_length { "[64, 128, 256, 512, 384]" } else { "[64, 128, 256, 512]" };
    let text = format!(
        r#"name = "tiny"
target = 512

[[model]]
name = "tiny-llama"
path = {model:?}

[data]
corpus = [{corpus:?}]

[[search]]
name = "s"
[search.config]
target_length = 512
[search.config.fitness]
documents = 1
[search.config.strategy]
strategy = "evolution"
population_size = 3
iterations = 1
mutation_numbers = 1
crossover_size = 0
parents_size = 2

[[method]]
name = "none"
scaling = "none"

[[method]]
name = "pi"
scaling = "pi"

[[method]]
name = "yarn"
scaling = "yarn"

[[method]]
name = "longrope"
from_search = "s"

[[ablation]]
method = "yarn"
[ablation.grid]
beta_slow = [0.25, 4.0]

[[eval]]
evaluator = "ppl"
lengths = {lengths}
[eval.config]
samples = 1
truncate = true

[[eval]]
evaluator = "passkey"
lengths = [512]
methods = ["none", "longrope"]
[eval.config]
samples = 1
depths = [0.5]
"#,
        model = tiny_llama().display().to_string(),
        corpus = corpus.display().to_string(),
    );
    let p = dir.join(if extra_length { "tiny-v2.toml" } else { "tiny.toml" });
    std::fs::write(&p, text).unwrap();
    p
}

/// `results.json` without the fields that measure time or the machine.
pub fn stable(path: &Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !k.contains("seconds") && k != "machine");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.join("results.json")).unwrap()).unwrap();
    strip(&mut v);
    v
}

/// A search directory's `history.jsonl` without timings: (index, generation, candidate, fitness) per line.
pub fn history_without_timings(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v.as_object_mut().unwrap().remove("wall_seconds");
            v
        })
        .collect()
}

/// A fresh directory `NAME-PID` under cargo's scratch folder for integration tests (`CARGO_TARGET_TMPDIR`),
/// for data a test process shares between its tests through a static (which is never dropped, so a `TempDir`
/// there would never be removed). Directories `NAME-OTHERPID` left by processes that are gone are removed
/// first, so at most one per live process remains.
pub fn process_scratch(name: &str) -> PathBuf {
    let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let prefix = format!("{name}-");
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = parent.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
