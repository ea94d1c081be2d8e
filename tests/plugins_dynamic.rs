//! Dynamic plugins end to end: the example `powerlaw` library (built by `cargo test --workspace`, a workspace
//! `cdylib`) is loaded, listed by the CLI, configured like a static plugin and compared with the same formula
//! computed here; broken libraries (wrong ABI major, missing symbol, not a library, truncated, panicking entry
//! points) are refused with an error naming the file while the host keeps running.

mod common;

use std::path::{Path, PathBuf};

use common::{cdylib, longrope};
use longrope_core::rope::base_inv_freq;
use longrope_core::scaling::{parse_scaling_toml, RopeSchedule, ScalingConfig};
use longrope_core::RopeShape;
use longrope_plugin_abi::host::{load_plugin, PluginError};
use serde_json::json;

fn powerlaw_lib() -> PathBuf {
    cdylib("longrope_plugin_powerlaw")
}

/// SmolLM2-135M's RoPE (head_dim 64, base 1e5, 30 layers) extended from 8k to 32k.
fn shape() -> RopeShape {
    RopeShape {
        head_dim: 64,
        rope_base: 100_000.0,
        original_max_position_embeddings: 8192,
        max_position_embeddings: 32768,
        num_layers: 30,
    }
}

/// The power-law schedule written out here, independently of the plugin:
/// `inv_freq_i = b^(-2i/d) / (1 + (s - 1) * (i / (d/2 - 1))^p)`.
fn powerlaw_inv_freq(shape: &RopeShape, s: f64, p: f64) -> Vec<f64> {
    let half = shape.head_dim / 2;
    base_inv_freq(shape.head_dim, shape.rope_base)
        .iter()
        .enumerate()
        .map(|(i, f)| f / (1.0 + (s - 1.0) * (i as f64 / (half - 1) as f64).powf(p)))
        .collect()
}

/// The host still loads and runs a good plugin (after a refusal or a panic in the same process).
fn assert_host_still_works() {
    load_plugin(&powerlaw_lib()).expect("powerlaw loads");
    let config = parse_scaling_toml("method = \"powerlaw\"\n", "after").unwrap();
    let tables = RopeSchedule::new(config.as_ref(), shape()).unwrap().tables(128).unwrap();
    assert_eq!(tables.layers[0].inv_freq, powerlaw_inv_freq(&shape(), 4.0, 2.0));
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn powerlaw_tables_match_the_formula() {
    let loaded = load_plugin(&powerlaw_lib()).unwrap();
    assert_eq!(loaded.name, "powerlaw");
    assert_eq!(loaded.abi_version, (longrope_plugin_abi::ABI_MAJOR, longrope_plugin_abi::ABI_MINOR));
    // (config, s, p, attn_factor): defaults resolve s = L'/L = 4, p = 2, m = 1.
    let cases = [
        ("method = \"powerlaw\"\n", 4.0, 2.0, 1.0),
        ("method = \"powerlaw\"\np = 3.5\nfactor = 8.0\nattn_factor = 1.25\n", 8.0, 3.5, 1.25),
        ("method = \"powerlaw\"\np = 1\n", 4.0, 1.0, 1.0),
    ];
    for (text, s, p, m) in cases {
        let config = parse_scaling_toml(text, "test config").unwrap();
        let schedule = RopeSchedule::new(config.as_ref(), shape()).unwrap();
        assert_eq!(schedule.method.name(), "powerlaw");
        assert_eq!(schedule.method.params(), json!({"factor": s, "p": p, "attn_factor": m}));
        assert!(!schedule.method.per_layer() && !schedule.method.depends_on_seq_len());
        let expected = powerlaw_inv_freq(&shape(), s, p);
        for seq_len in [1, 1024, 32768] {
            let tables = schedule.tables(seq_len).unwrap();
            assert_eq!(tables.layers.len(), 30);
            let t = &tables.layers[29];
            assert_eq!(t.inv_freq, expected, "{text}");
            assert_eq!(t.attn_factor, m);
            assert_eq!(t.retained, None);
        }
        // Endpoints of the schedule: the fastest dimension is untouched, the slowest interpolated by s.
        let t = schedule.tables(16).unwrap().layers[0].clone();
        let base = shape().base_inv_freq();
        assert_eq!(t.inv_freq[0], base[0]);
        assert_eq!(t.inv_freq[31], base[31] / s);
    }
}

#[test]
fn dynamic_config_serialises_and_reads_back() {
    load_plugin(&powerlaw_lib()).unwrap();
    let config = parse_scaling_toml("method = \"powerlaw\"\np = 3.0\n", "test config").unwrap();
    let value = serde_json::to_value(&config).unwrap();
    assert_eq!(value, json!({"method": "dynamic", "plugin": "powerlaw", "p": 3.0}));
    let back: Box<dyn ScalingConfig> = serde_json::from_value(value).unwrap();
    let tables = RopeSchedule::new(back.as_ref(), shape()).unwrap().tables(64).unwrap();
    assert_eq!(tables.layers[0].inv_freq, powerlaw_inv_freq(&shape(), 4.0, 3.0));
    // The explicit form parses too.
    let explicit = parse_scaling_toml("method = \"dynamic\"\nplugin = \"powerlaw\"\np = 3.0\n", "explicit").unwrap();
    assert_eq!(serde_json::to_value(&explicit).unwrap(), serde_json::to_value(&config).unwrap());
}

#[test]
fn bad_parameters_are_errors_naming_plugin_and_field() {
    let lib = load_plugin(&powerlaw_lib()).unwrap().path;
    let build = |text: &str| {
        let config = parse_scaling_toml(text, "cfg.toml").unwrap();
        RopeSchedule::new(config.as_ref(), shape()).unwrap_err().to_string()
    };
    let prefix = format!("plugin `powerlaw` ({}): longrope_scaling_resolve: ", lib.display());
    assert_eq!(
        build("method = \"powerlaw\"\np = -1.0\n"),
        format!("{prefix}powerlaw.p must be finite and > 0, got -1")
    );
    let unknown = build("method = \"powerlaw\"\nq = 1\n");
    assert!(unknown.starts_with(&prefix) && unknown.contains("unknown field `q`"), "{unknown}");
}

#[test]
fn cli_lists_the_loaded_plugin_beside_static_ones() {
    let lib = powerlaw_lib();
    let out = longrope(&["--plugin", lib.to_str().unwrap(), "plugins", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scaling = doc["scaling"].as_array().unwrap();
    let entry = scaling.iter().find(|p| p["name"] == "powerlaw").unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(entry["library"], json!(std::fs::canonicalize(&lib).unwrap().display().to_string()));
    assert!(entry["summary"].as_str().unwrap().starts_with("Power-law per-dimension stretch"));
    // Global flag: also accepted after the subcommand, and the text listing shows the library.
    let out = longrope(&["plugins", "--plugin", lib.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("powerlaw") && l.contains("liblongrope_plugin_powerlaw")),
        "{text}"
    );
}

/// Run `longrope --plugin LIB plugins` and check it fails cleanly (exit status 1, not a signal) naming the file.
fn assert_cli_refuses(lib: &Path, expected: &str) {
    let out = longrope(&["--plugin", lib.to_str().unwrap(), "plugins"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&lib.display().to_string()) && err.contains(expected), "{err}");
}

#[test]
fn wrong_major_abi_version_is_refused_before_any_other_call() {
    // Its descriptor export aborts the process: the host must not call it.
    let lib = cdylib("longrope_test_plugin_abi_major");
    let err = load_plugin(&lib).unwrap_err();
    assert!(matches!(err, PluginError::Version { plugin_major: 2, plugin_minor: 0, .. }), "{err:?}");
    let canonical = std::fs::canonicalize(&lib).unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "plugin {}: built for plugin ABI 2.0, this host supports 1.0 to 1.0: the major version differs; rebuild \
             the plugin against this longrope-plugin-abi",
            canonical.display()
        )
    );
    assert_cli_refuses(&lib, "built for plugin ABI 2.0");
    assert_host_still_works();
}

/// A shared library that surely exists and is not a plugin: the system zlib, else libtorch's libc10.
fn system_library() -> PathBuf {
    let candidates = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib64/libz.so.1",
        "/usr/lib/libz.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .chain([common::root().join(".libtorch/lib/libc10.so")])
        .find(|p| p.exists())
        .expect("a system shared library (libz) to test a missing symbol")
}

#[test]
fn library_without_the_symbols_is_refused() {
    let lib = system_library();
    let err = load_plugin(&lib).unwrap_err();
    assert!(matches!(err, PluginError::MissingSymbol { symbol: "longrope_plugin_abi_version", .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.ends_with("not a longrope plugin: missing symbol `longrope_plugin_abi_version`"), "{message}");
    assert_cli_refuses(&lib, "missing symbol `longrope_plugin_abi_version`");
    assert_host_still_works();
}

#[test]
fn file_that_is_not_a_library_is_refused() {
    let path = std::env::temp_dir().join(format!("longrope-not-a-plugin-{}.so", std::process::id()));
    std::fs::write(&path, "this is a text file, not a shared library\n").unwrap();
    let err = load_plugin(&path).unwrap_err();
    let canonical = std::fs::canonicalize(&path).unwrap();
    // Refused by the file check, before the dynamic loader sees it.
    assert!(matches!(err, PluginError::NotALibrary { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("plugin {}: not an ELF shared library", canonical.display())),
        "{message}"
    );
    assert_cli_refuses(&path, "not an ELF shared library");
    let missing = longrope(&["--plugin", "/nonexistent/libnope.so", "plugins"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("plugin /nonexistent/libnope.so: "), "{}", stderr(&missing));
    std::fs::remove_file(&path).unwrap();
    assert_host_still_works();
}

#[test]
fn panicking_entry_points_become_errors_and_the_host_keeps_running() {
    let lib = load_plugin(&cdylib("longrope_test_plugin_panicking")).unwrap();
    assert_eq!(lib.name, "panicking");
    let prefix = format!("plugin `panicking` ({}): ", lib.path.display());
    // A panic while resolving the parameters.
    let config = parse_scaling_toml("method = \"panicking\"\n", "cfg.toml").unwrap();
    let err = RopeSchedule::new(config.as_ref(), shape()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{prefix}longrope_scaling_resolve: longrope_scaling_resolve panicked: deliberate panic while resolving parameters")
    );
    // A panic while computing tables, twice: the library stays usable after a caught panic.
    let config = parse_scaling_toml("method = \"panicking\"\npanic_in = \"tables\"\n", "cfg.toml").unwrap();
    let schedule = RopeSchedule::new(config.as_ref(), shape()).unwrap();
    for _ in 0..2 {
        let err = schedule.tables(32).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{prefix}longrope_scaling_tables: longrope_scaling_tables panicked: deliberate panic in tables")
        );
    }
    // Tables that break the contract are refused by the host's validation.
    let config = parse_scaling_toml("method = \"panicking\"\nnan_tables = true\n", "cfg.toml").unwrap();
    let err = RopeSchedule::new(config.as_ref(), shape()).unwrap().tables(32).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{prefix}longrope_scaling_tables: returned invalid tables: invalid rope tables: inv_freq[1] = NaN is not finite and positive")
    );
    assert_host_still_works();
}

#[test]
fn a_second_library_with_a_taken_name_is_refused() {
    load_plugin(&powerlaw_lib()).unwrap();
    let copy = std::env::temp_dir().join(format!("longrope-powerlaw-copy-{}.so", std::process::id()));
    std::fs::copy(powerlaw_lib(), &copy).unwrap();
    let err = load_plugin(&copy).unwrap_err().to_string();
    std::fs::remove_file(&copy).unwrap();
    assert!(err.contains("a scaling plugin named `powerlaw` is already registered"), "{err}");
    assert!(err.contains("longrope-powerlaw-copy-"), "{err}");
    assert_host_still_works();
}

/// `longrope rope` with the plugin, by name and through a TOML file; values cross JSON, so compare to 1 ulp-ish.
#[test]
fn cli_rope_runs_the_plugin() {
    let lib = powerlaw_lib();
    let shape_args = ["--head-dim", "64", "--base", "100000", "--original", "8192", "--target", "32768"];
    let toml = std::env::temp_dir().join(format!("longrope-powerlaw-{}.toml", std::process::id()));
    std::fs::write(&toml, "method = \"powerlaw\"\np = 3.0\nattn_factor = 1.1\n").unwrap();
    for (scaling, p, m) in [("powerlaw", 2.0, 1.0), (toml.to_str().unwrap(), 3.0, 1.1)] {
        let mut args = vec!["--plugin", lib.to_str().unwrap(), "rope", "--scaling", scaling, "--json"];
        args.extend(shape_args);
        let out = longrope(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["method"], "powerlaw");
        assert_eq!(doc["params"], json!({"factor": 4.0, "p": p, "attn_factor": m}));
        assert_eq!(doc["attn_factor"], json!(m));
        assert_eq!(doc["retained"], serde_json::Value::Null);
        let got: Vec<f64> = doc["inv_freq"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let want = powerlaw_inv_freq(&shape(), 4.0, p);
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-15 * w, "inv_freq[{i}]: {g} vs {w}");
        }
    }
    std::fs::remove_file(&toml).unwrap();
    // Without --plugin the name is unknown, and the error lists what is known.
    let mut args = vec!["rope", "--scaling", "powerlaw"];
    args.extend(shape_args);
    let out = longrope(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown scaling plugin `powerlaw`"), "{}", stderr(&out));
    // A panicking plugin is an error of the command, not a crash.
    let panicking = cdylib("longrope_test_plugin_panicking");
    let mut args = vec!["--plugin", panicking.to_str().unwrap(), "rope", "--scaling", "panicking"];
    args.extend(shape_args);
    let out = longrope(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("panicked: deliberate panic while resolving parameters"), "{}", stderr(&out));
}

/// Issue 15: a library truncated after its headers (an interrupted copy) made `dlopen` kill the process with
/// SIGBUS and no message. It is refused, naming the file, at every cut, and the process exits with status 1.
#[test]
fn truncated_library_is_refused_without_a_signal() {
    let bytes = std::fs::read(powerlaw_lib()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [64, 4096, 20_000, 200_000, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join(format!("libcut{cut}.so"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let out = longrope(&["--plugin", path.to_str().unwrap(), "plugins"]);
        assert_eq!(out.status.code(), Some(1), "cut at {cut}: killed by a signal or wrong status: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("libcut{cut}.so")) && err.contains("truncated") && err.contains("refused before loading"), "{err}");
    }
    // The complete file still loads.
    let ok = longrope(&["--plugin", powerlaw_lib().to_str().unwrap(), "plugins"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}
