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
