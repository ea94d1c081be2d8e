//! `longrope rope`: the inspection tool researchers use to check a method, end to end through the binary.

mod common;

use common::longrope;
use serde_json::Value;

fn rope_json(args: &[&str]) -> Value {
    let mut all = vec!["rope", "--json"];
    all.extend_from_slice(args);
    let out = longrope(&all);
    assert!(out.status.success(), "longrope {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

const LLAMA2_8X: [&str; 8] = ["--head-dim", "128", "--base", "10000", "--original", "4096", "--target", "32768"];

#[test]
fn yarn_llama2_tables() {
    let mut args = vec!["--scaling", "yarn"];
    args.extend_from_slice(&LLAMA2_8X);
    let doc = rope_json(&args);
    assert_eq!(doc["method"], "yarn");
    assert_eq!(doc["params"]["factor"], 8.0);
    assert_eq!(doc["params"]["beta_fast"], 32.0);
    assert_eq!(doc["attn_factor"].as_f64().unwrap(), 0.1 * 8f64.ln() + 1.0);
    assert_eq!(doc["retained"], Value::Null);
    let inv: Vec<f64> = serde_json::from_value(doc["inv_freq"].clone()).unwrap();
    let lambda: Vec<f64> = serde_json::from_value(doc["factors"].clone()).unwrap();
    assert_eq!(inv.len(), 64);
    // ramp dims [20, 46]: kept up to 20, divided by 8 from 46
    assert!(lambda[..=20].iter().all(|l| *l == 1.0) && lambda[21] > 1.0, "{lambda:?}");
    assert!(lambda[45] < 8.0 && lambda[46..].iter().all(|l| (l - 8.0).abs() < 1e-12), "{lambda:?}");
    assert_eq!(inv[0], 1.0);
}

#[test]
fn longrope_retained_start_and_short_long_switch() {
    let dir = std::env::temp_dir().join(format!("longrope-cli-rope-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("lr.toml");
    std::fs::write(
        &config,
        "method = \"longrope\"\nfactors = [1.0, 2.0, 4.0, 8.0]\nshort_factors = [1.0, 1.0, 1.5, 1.5]\nn_hat = 4\n",
    )
    .unwrap();
    let common = ["--head-dim", "8", "--base", "10000", "--original", "4096", "--target", "32768"];
    let run = |seq_len: &str| {
        let mut args = vec!["--scaling", config.to_str().unwrap(), "--seq-len", seq_len];
        args.extend_from_slice(&common);
        rope_json(&args)
    };
    let (short, long) = (run("4096"), run("4097"));
    assert_eq!(short["factors"], serde_json::json!([1.0, 1.0, 1.5, 1.5]));
    assert_eq!(long["factors"], serde_json::json!([1.0, 2.0, 4.0, 8.0]));
    assert_eq!(long["depends_on_seq_len"], true);
    // su at L = 4096, s = 8
    let m = long["attn_factor"].as_f64().unwrap();
    assert!((m - 1.1180).abs() < 5e-5, "{m}");
    assert_eq!(short["attn_factor"], long["attn_factor"]);
    assert_eq!(long["retained"]["n_hat"], 4);
    assert_eq!(long["retained"]["attn_factor"], 1.0);

    // HF export refuses n_hat; without it the block is written into an existing config.json
    let hf = dir.join("config.json");
    std::fs::write(&hf, "{\"hidden_size\": 8, \"max_position_embeddings\": 4096}").unwrap();
    let mut args = vec!["rope", "--scaling", config.to_str().unwrap(), "--hf-config", hf.to_str().unwrap()];
    args.extend_from_slice(&common);
    let out = longrope(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("n_hat"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(
        &config,
        "method = \"longrope\"\nfactors = [1.0, 2.0, 4.0, 8.0]\nshort_factors = [1.0, 1.0, 1.5, 1.5]\n",
    )
    .unwrap();
    assert!(longrope(&args).status.success());
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&hf).unwrap()).unwrap();
    assert_eq!(doc["hidden_size"], 8);
    assert_eq!(doc["max_position_embeddings"], 32768);
    assert_eq!(doc["rope_scaling"]["type"], "longrope");
    assert_eq!(doc["rope_scaling"]["long_factor"], serde_json::json!([1.0, 2.0, 4.0, 8.0]));
    assert_eq!(doc["rope_scaling"]["short_factor"], serde_json::json!([1.0, 1.0, 1.5, 1.5]));
    assert_eq!(doc["rope_scaling"]["original_max_position_embeddings"], 4096);
    assert_eq!(doc["rope_scaling"]["attention_factor"].as_f64().unwrap(), m);
    std::fs::remove_dir_all(&dir).ok();
}

/// A method's factors written as CSV run unchanged as `longrope` with `factors_file`.
#[test]
fn factors_csv_seeds_longrope() {
    let dir = std::env::temp_dir().join(format!("longrope-cli-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("ntk.csv");
    let mut args = vec!["--scaling", "ntk", "--factors-csv", csv.to_str().unwrap()];
    args.extend_from_slice(&LLAMA2_8X);
    let ntk = rope_json(&args);
    let config = dir.join("lr.toml");
    std::fs::write(&config, "method = \"longrope\"\nfactors_file = \"ntk.csv\"\nattention_policy = \"none\"\n")
        .unwrap();
    let mut args = vec!["--scaling", config.to_str().unwrap()];
    args.extend_from_slice(&LLAMA2_8X);
    let lr = rope_json(&args);
    let (a, b): (Vec<f64>, Vec<f64>) = (
        serde_json::from_value(ntk["inv_freq"].clone()).unwrap(),
        serde_json::from_value(lr["inv_freq"].clone()).unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 4e-16 * x, "{x} vs {y}");
    }
    assert_eq!(lr["attn_factor"], 1.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_a_clear_error() {
    let cases: [(&[&str], &str); 4] = [
        (&["--scaling", "yran"], "unknown scaling plugin `yran`"),
        (&["--scaling", "longrope"], "missing field `factors`"),
        (&["--scaling", "pi", "--target", "2048"], "s = 0.5 < 1"),
        (&["--scaling", "no/such/file.toml"], "no/such/file.toml"),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["rope", "--head-dim", "128", "--base", "10000", "--original", "4096"];
        if !extra.contains(&"--target") {
            args.extend_from_slice(&["--target", "8192"]);
        }
        args.extend_from_slice(extra);
        let out = longrope(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
