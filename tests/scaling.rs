//! Scaling methods against their references: golden tables from HF transformers' `ROPE_INIT_FUNCTIONS`
//! (`tests/fixtures/rope_golden.json`, written by `scripts/fixtures/rope_golden.py`), identity at s = 1,
//! config parsing (every file under `configs/scaling/`, unknown fields rejected), and round trips of the
//! LongRoPE CSV and the HF `rope_scaling` export.

mod common;

use std::sync::Arc;

use longrope_core::scaling::{load_scaling_config, parse_scaling_toml};
use longrope_core::{PositionScaling, RopeShape, RopeTables, ScalingConfig};
use longrope_scaling::factors::{self, FactorTable};
use serde_json::{json, Value};

fn shape(head_dim: usize, base: f64, original: usize, target: usize, layers: usize) -> RopeShape {
    RopeShape {
        head_dim,
        rope_base: base,
        original_max_position_embeddings: original,
        max_position_embeddings: target,
        num_layers: layers,
    }
}

fn build(config: Value, shape: &RopeShape) -> Arc<dyn PositionScaling> {
    let config: Box<dyn ScalingConfig> =
        serde_json::from_value(config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"));
    config.build(shape).unwrap_or_else(|e| panic!("{config:?}: {e}"))
}

fn golden() -> Value {
    let path = common::root().join("tests/fixtures/rope_golden.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("golden fixture")).expect("golden JSON")
}

/// Every HF case: inv_freq within 1e-6 relative, attention factor equal after rounding to f32.
#[test]
fn golden_tables_match_hf_transformers() {
    let doc = golden();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut seen = std::collections::BTreeSet::new();
    let mut worst = (0.0f64, String::new());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        seen.insert(case["hf_type"].as_str().unwrap().to_string());
        let sh = shape(
            case["head_dim"].as_u64().unwrap() as usize,
            case["base"].as_f64().unwrap(),
            case["original"].as_u64().unwrap() as usize,
            case["target"].as_u64().unwrap() as usize,
            1,
        );
        let mut config = case["params"].clone();
        config["method"] = case["method"].clone();
        let method = build(config, &sh);
        let t = method.tables(&sh.at(case["seq_len"].as_u64().unwrap() as usize, 0)).unwrap();
        let hf: Vec<f64> = serde_json::from_value(case["inv_freq"].clone()).unwrap();
        assert_eq!(t.inv_freq.len(), hf.len(), "{name}");
        for (i, (ours, theirs)) in t.inv_freq.iter().zip(&hf).enumerate() {
            let rel = (ours - theirs).abs() / theirs.abs();
            assert!(rel <= 1e-6, "{name}: inv_freq[{i}] = {ours}, HF {theirs} (relative error {rel:e})");
            if rel > worst.0 {
                worst = (rel, format!("{name}[{i}]"));
            }
        }
        let m = case["attention_factor"].as_f64().unwrap();
        assert_eq!(t.attn_factor as f32, m as f32, "{name}: attention factor {} vs HF {m}", t.attn_factor);
        assert!(t.retained.is_none(), "{name}");
    }
    for hf_type in ["default", "linear", "dynamic", "yarn", "longrope", "llama3"] {
        assert!(seen.contains(hf_type), "no golden case for HF `{hf_type}`");
    }
    eprintln!("largest relative error vs HF: {:e} at {}", worst.0, worst.1);
}

/// Every method that defines identity at s = 1 gives exactly the `none` tables (so the model's PPL is the same).
#[test]
fn identity_at_scale_one() {
    for sh in [shape(64, 1e5, 8192, 8192, 2), shape(128, 1e4, 4096, 4096, 2)] {
        let none = RopeTables::original(&sh);
        let half = sh.head_dim / 2;
        let configs = [
            json!({"method": "none"}),
            json!({"method": "pi"}),
            json!({"method": "ntk"}),
            json!({"method": "yarn"}),
            json!({"method": "yarn", "beta_fast": 64.0, "truncate": false, "mscale": 1.0, "mscale_all_dim": 0.5}),
            json!({"method": "llama3"}),
            json!({"method": "longrope", "factors": vec![1.0; half]}),
            json!({"method": "longrope", "factors": vec![1.0; half], "short_factors": vec![1.0; half], "attention_policy": "yarn"}),
            json!({"method": "longrope", "factors": vec![vec![1.0; half]; 2]}),
        ];
        for config in configs {
            let m = build(config.clone(), &sh);
            for seq_len in [1, 100, sh.original_max_position_embeddings, 3 * sh.original_max_position_embeddings] {
                for layer in 0..2 {
                    let t = m.tables(&sh.at(seq_len, layer)).unwrap();
                    assert_eq!(t, none, "{config} at l = {seq_len}, layer {layer}");
                }
            }
        }
    }
    // The dynamic methods define identity up to L (at any s), not beyond: they keep growing with l.
    let sh = shape(64, 1e5, 8192, 32768, 1);
    let none = RopeTables::original(&sh);
    for config in [json!({"method": "dynamic-ntk"}), json!({"method": "dynamic-yarn"})] {
        let m = build(config.clone(), &sh);
        assert!(m.depends_on_seq_len(), "{config}");
        assert_eq!(m.tables(&sh.at(8192, 0)).unwrap(), none, "{config}");
        assert_ne!(m.tables(&sh.at(8193, 0)).unwrap(), none, "{config}");
    }
    let lr = build(json!({"method": "longrope", "factors": vec![2.0; 32], "dynamic": true}), &sh);
    assert_eq!(lr.tables(&sh.at(8192, 0)).unwrap().inv_freq, none.inv_freq);
}

/// Dynamic NTK at length l is static NTK at x = s*l/L - (s-1) (HF's form); dynamic YaRN at l = L' is YaRN at s.
#[test]
fn dynamic_methods_match_static_counterparts() {
    let sh = shape(128, 1e4, 4096, 4 * 4096, 1);
    for seq_len in [6000, 4 * 4096, 40_000] {
        let x = 4.0 * seq_len as f64 / 4096.0 - 3.0;
        let dn = build(json!({"method": "dynamic-ntk"}), &sh).tables(&sh.at(seq_len, 0)).unwrap();
        let n = build(json!({"method": "ntk", "factor": x}), &sh).tables(&sh.at(seq_len, 0)).unwrap();
        for (a, b) in dn.inv_freq.iter().zip(&n.inv_freq) {
            assert!((a - b).abs() <= 1e-14 * b, "l = {seq_len}: {a} vs {b}");
        }
    }
    let at_target = |c: Value| build(c, &sh).tables(&sh.at(4 * 4096, 0)).unwrap();
    assert_eq!(at_target(json!({"method": "dynamic-yarn"})), at_target(json!({"method": "yarn"})));
}

#[test]
fn plugin_names_are_registered() {
    let names: Vec<String> =
        longrope_core::registry::list(longrope_core::PluginKind::Scaling).into_iter().map(|p| p.name).collect();
    longrope_scaling::link();
    assert!(names.len() >= 8, "the scaling crate's methods are registered: {names:?}");
    for name in &names {
        let name = name.as_str();
        // a plugin name alone is a valid --scaling (defaults), except longrope which needs factors
        let config = load_scaling_config(name).unwrap();
        let built = config.build(&shape(64, 1e5, 8192, 16384, 1));
        assert_eq!(built.is_ok(), name != "longrope", "{name}: {built:?}");
        if let Ok(m) = built {
            assert_eq!(m.name(), name);
            assert!(m.params().is_object(), "{name}: params() is a JSON object");
        }
    }
}

/// `NAME{fields}` is a config inline: the same as the TOML with those fields; bad fields name the spec.
#[test]
fn inline_scaling_specs() {
    let sh = shape(64, 1e5, 8192, 16384, 1);
    let inline = load_scaling_config("yarn{beta_fast = 128.0, beta_slow = 2.0, blend = \"factor\"}").unwrap().build(&sh).unwrap();
    let toml = parse_scaling_toml("method = \"yarn\"\nbeta_fast = 128.0\nbeta_slow = 2.0\nblend = \"factor\"\n", "t").unwrap();
    let toml = toml.build(&sh).unwrap();
    assert_eq!(inline.tables(&sh.at(16384, 0)).unwrap(), toml.tables(&sh.at(16384, 0)).unwrap());
    assert_ne!(
        inline.tables(&sh.at(16384, 0)).unwrap(),
        load_scaling_config("yarn").unwrap().build(&sh).unwrap().tables(&sh.at(16384, 0)).unwrap()
    );
    let err = load_scaling_config("yarn{beta_fsat = 1.0}").unwrap_err().to_string();
    assert!(err.contains("--scaling yarn{beta_fsat = 1.0}") && err.contains("beta_fsat"), "{err}");
    let err = load_scaling_config("yarn{beta_fast = }").unwrap_err().to_string();
    assert!(err.contains("not a TOML inline table"), "{err}");
    let err = load_scaling_config("nope{a = 1}").unwrap_err().to_string();
    assert!(err.contains("unknown scaling plugin `nope`"), "{err}");
}

/// `deny_unknown_fields` works through typetag's internally tagged `method`, wherever the tag is.
#[test]
fn unknown_fields_are_rejected() {
    for text in [
        "method = \"yarn\"\nbeta_fsat = 16\n",
        "beta_fsat = 16\nmethod = \"yarn\"\n",
        "method = \"none\"\nfactor = 2\n",
        "method = \"pi\"\nscale = 2\n",
        "method = \"longrope\"\nfactors = [1, 1]\nlong_factor = [1, 1]\n",
        "method = \"dynamic-yarn\"\nfactor = 2\n",
    ] {
        let err = parse_scaling_toml(text, "test.toml").unwrap_err().to_string();
        assert!(err.starts_with("test.toml: ") && err.contains("unknown field"), "{text:?}: {err}");
    }
    let err = parse_scaling_toml("method = \"yarn\"\nbeta_fast = \"fast\"\n", "t.toml").unwrap_err().to_string();
    assert!(err.contains("invalid type"), "{err}");
    let err = parse_scaling_toml("method = \"longrope\"\nfactors = \"1,2\"\n", "t.toml").unwrap_err().to_string();
    assert!(err.contains("a list of head_dim/2 numbers"), "{err}");
    let err = parse_scaling_toml("method = \"yran\"\n", "t.toml").unwrap_err().to_string();
    assert!(err.contains("unknown scaling plugin `yran`") && err.contains("yarn"), "{err}");
    // TOML's nan/inf reach validation, which parsing runs (ScalingConfig::validate): refused naming file and field
    let err = parse_scaling_toml("method = \"pi\"\nfactor = nan\n", "t.toml").unwrap_err().to_string();
    assert!(err.starts_with("t.toml: ") && err.contains("pi.factor: NaN is not a finite number"), "{err}");
    let c = parse_scaling_toml("method = \"yarn\"\n", "t.toml").unwrap();
    let err = c.build(&shape(64, 1e5, 8192, 4096, 1)).unwrap_err().to_string();
    assert!(err.contains("s = 0.5 < 1"), "{err}");
}

/// Every file under configs/scaling/ parses and builds for the SmolLM2 shape (30 layers) at 2x.
#[test]
fn every_scaling_config_parses_and_builds() {
    let dir = common::root().join("configs/scaling");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config = load_scaling_config(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        let m = config.build(&shape(64, 1e5, 8192, 16384, 30)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        m.tables(&shape(64, 1e5, 8192, 16384, 30).at(16384, 0)).unwrap();
        n += 1;
    }
    assert!(n >= 9, "expected one config per method plus examples, found {n}");
}

#[test]
fn csv_round_trip() {
    let dir = std::env::temp_dir().join(format!("longrope-scaling-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shared = FactorTable::Shared(vec![1.0, 1.0000000000000002, 1.25, 7.999999, 32.0]);
    let per_layer = FactorTable::PerLayer(vec![vec![1.0, 2.5, 3.0], vec![1.1, 2.2, 0.1 + 0.2]]);
    for table in [shared, per_layer] {
        let path = dir.join("f.csv");
        factors::write_csv(&path, &table).unwrap();
        assert_eq!(factors::read_csv(&path).unwrap(), table);
    }
    // LongRoPE files: one value per line, or d/2 values on one line, are both shared
    let p = std::path::Path::new("x.csv");
    assert_eq!(factors::parse_csv("1.0\n2\n\n", p).unwrap(), FactorTable::Shared(vec![1.0, 2.0]));
    assert_eq!(factors::parse_csv("# lambda\n1.0, 2\n", p).unwrap(), FactorTable::Shared(vec![1.0, 2.0]));
    let err = factors::parse_csv("1,2\n1,x\n", p).unwrap_err().to_string();
    assert_eq!(err, "x.csv:2: column 2: `x` is not a number");
    let err = factors::parse_csv("1,2\n1,2,3\n", p).unwrap_err().to_string();
    assert!(err.starts_with("x.csv:2: 3 values, but the first row has 2"), "{err}");
    // a factors_file in a TOML config is relative to the TOML file
    std::fs::write(dir.join("f.csv"), "1\n2\n").unwrap();
    std::fs::write(dir.join("c.toml"), "method = \"longrope\"\nfactors_file = \"f.csv\"\n").unwrap();
    let sh = shape(4, 1e4, 100, 200, 1);
    let m = load_scaling_config(dir.join("c.toml").to_str().unwrap()).unwrap().build(&sh).unwrap();
    assert_eq!(m.tables(&sh.at(200, 0)).unwrap().inv_freq[1], sh.base_inv_freq()[1] / 2.0);
    std::fs::write(dir.join("f.csv"), "1\n2\n3\n").unwrap();
    let err = load_scaling_config(dir.join("c.toml").to_str().unwrap()).unwrap().build(&sh).unwrap_err().to_string();
    assert!(err.contains("f.csv: expected 2 factors (head_dim/2), got 3"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Export to HF `rope_scaling` and read it back: same tables below and above L. Methods HF cannot express
/// are refused with a reason.
#[test]
fn hf_export_round_trip() {
    let sh = shape(64, 1e5, 8192, 4 * 8192, 1);
    let half = 32;
    let long: Vec<f64> = (0..half).map(|i| 1.0 + i as f64 * 0.1).collect();
    let configs = [
        json!({"method": "longrope", "factors": long, "short_factors": vec![1.0; half]}),
        json!({"method": "longrope", "factors": long, "attention_policy": "yarn"}),
        json!({"method": "yarn"}),
        json!({"method": "pi"}),
        json!({"method": "llama3"}),
        json!({"method": "ntk"}),
    ];
    for config in configs {
        let m = build(config.clone(), &sh);
        let block = factors::hf_rope_scaling(m.as_ref(), &sh).unwrap();
        assert_eq!(block["type"], "longrope");
        assert_eq!(block["original_max_position_embeddings"], 8192);
        let mut doc = serde_json::Map::new();
        doc.insert("hidden_size".into(), 576.into());
        factors::hf_config_update(&mut doc, block, &sh);
        assert_eq!(doc["max_position_embeddings"], 32768);
        assert_eq!(doc["hidden_size"], 576);
        let back = longrope_core::scaling::hf::read_hf_config(&Value::Object(doc), "config.json", &[]).unwrap().unwrap();
        assert_eq!((back.method.as_str(), back.original_max_position_embeddings, back.max_position_embeddings), ("longrope", 8192, 32768));
        let rebuilt = back.scaling_config().unwrap().build(&sh).unwrap();
        for seq_len in [1, 8192, 8193, 32768] {
            let (a, b) = (m.tables(&sh.at(seq_len, 0)).unwrap(), rebuilt.tables(&sh.at(seq_len, 0)).unwrap());
            assert_eq!(a.attn_factor, b.attn_factor, "{config} at {seq_len}");
            for (x, y) in a.inv_freq.iter().zip(&b.inv_freq) {
                assert!((x - y).abs() <= 4e-16 * x, "{config} at {seq_len}: {x} vs {y}");
            }
        }
    }
    for (config, reason) in [
        (json!({"method": "dynamic-ntk"}), "change with the sequence length"),
        (json!({"method": "longrope", "factors": long, "n_hat": 4}), "n_hat"),
        (json!({"method": "longrope", "factors": long, "dynamic": true}), "change with the sequence length"),
    ] {
        let err = factors::hf_rope_scaling(build(config.clone(), &sh).as_ref(), &sh).unwrap_err().to_string();
        assert!(err.contains(reason), "{config}: {err}");
    }
    let per_layer = shape(64, 1e5, 8192, 16384, 2);
    let m = build(json!({"method": "longrope", "factors": vec![long.clone(), long.clone()]}), &per_layer);
    assert!(factors::hf_rope_scaling(m.as_ref(), &per_layer).unwrap_err().to_string().contains("per layer"));
}

/// `factors_of` gives each method's lambda: PI s everywhere, NTK s^(2i/(d-2)), YaRN 1 then s.
#[test]
fn method_factors_seed_longrope() {
    let sh = shape(128, 1e4, 4096, 8 * 4096, 1);
    let lambda = |c: Value| match factors::method_factors(build(c, &sh).as_ref(), &sh, 8 * 4096).unwrap() {
        FactorTable::Shared(v) => v,
        other => panic!("{other:?}"),
    };
    assert!(lambda(json!({"method": "pi"})).iter().all(|l| (l - 8.0).abs() < 1e-12));
    for (i, l) in lambda(json!({"method": "ntk"})).iter().enumerate() {
        assert!((l - 8f64.powf(2.0 * i as f64 / 126.0)).abs() < 1e-9, "dim {i}: {l}");
    }
    let y = lambda(json!({"method": "yarn"}));
    assert!(y[..=20].iter().all(|l| *l == 1.0) && y[46..].iter().all(|l| (l - 8.0).abs() < 1e-12), "{y:?}");
}

/// PPL of SmolLM2 (real GGUF, f32) over 256 tokens: `none` and methods at s = 1 give exactly the same NLL; a
/// method at s = 2 does not (so the comparison can fail). (Every method's s = 1 tables are checked equal to
/// `none` in `identity_at_scale_one`; two representative ones run through the model here to keep it fast.)
#[test]
fn smollm2_ppl_at_scale_one_equals_none() {
    use longrope_core::model::LoadOptions;
    use longrope_core::scaling::RopeSchedule;

    let path = common::smollm2();
    let model = longrope_models::load(&path, &LoadOptions { dtype: tch::Kind::Float, ..LoadOptions::default() })
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    let text = std::fs::read_to_string(common::assets().join("corpus/austen-pride-and-prejudice.txt")).unwrap();
    let start = text.find("It is a truth universally acknowledged").unwrap_or(0);
    let ids: Vec<i64> = model.tokenizer().encode(&text[start..start + 4000], false).unwrap().get_ids()[..256]
        .iter()
        .map(|&i| i as i64)
        .collect();
    let summary = model.summary().clone();
    let original = summary.max_position_embeddings;
    let nll = |config: Value, target: usize| {
        let config: Box<dyn ScalingConfig> = serde_json::from_value(config).unwrap();
        let schedule = RopeSchedule::new(config.as_ref(), summary.rope_shape(target)).unwrap();
        model.nll(&ids, &schedule.tables(ids.len()).unwrap(), 0).unwrap()
    };
    let none = nll(json!({"method": "none"}), original);
    assert_eq!(none.count, 255);
    let ppl = none.mean().exp();
    assert!(ppl > 1.0 && ppl < 100.0, "PPL {ppl}");
    let half = summary.head_dim / 2;
    for config in [json!({"method": "yarn"}), json!({"method": "longrope", "factors": vec![1.0; half]})] {
        let got = nll(config.clone(), original);
        assert_eq!((got.sum, got.count), (none.sum, none.count), "{config}: NLL differs from none at s = 1");
    }
    let pi2 = nll(json!({"method": "pi"}), 2 * original);
    assert_ne!(pi2.sum, none.sum, "PI at s = 2 must change the NLL");
    eprintln!("SmolLM2 PPL over 256 tokens: none {ppl:.4}, pi s=2 {:.4}", pi2.mean().exp());
}
