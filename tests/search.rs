//! The search library against the real scaling registry: seeds are the PI/NTK/YaRN factors the scaling
//! plugins compute, the reference mode's seed is microsoft/LongRoPE's initial factors (fixture made by its own
//! code), and a candidate's TOML is a `longrope` config whose tables are `theta_i / lambda_i`.

mod common;

use longrope_core::scaling::{parse_scaling_toml, RopeSchedule};
use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use longrope_search::{candidate_to_toml, RegistrySeeds, SeedSource};

fn smollm2_16k() -> RopeShape {
    RopeShape {
        head_dim: 64,
        rope_base: 100_000.0,
        original_max_position_embeddings: 8192,
        max_position_embeddings: 16384,
        num_layers: 30,
    }
}

#[test]
fn seeds_are_the_pi_ntk_and_yarn_factors() {
    longrope_scaling::link();
    let shape = smollm2_16k();
    let seeds = RegistrySeeds { methods: vec!["pi".into(), "ntk".into(), "yarn".into()] }.seeds(&shape).unwrap();
    let names: Vec<&str> = seeds.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pi", "ntk", "yarn"]);
    // PI: lambda_i = s.
    for f in &seeds[0].factors {
        assert!((f - 2.0).abs() < 1e-12, "{f}");
    }
    // NTK: lambda_i = s^(2i/(d-2)).
    for (i, f) in seeds[1].factors.iter().enumerate() {
        let expected = 2f64.powf(2.0 * i as f64 / 62.0);
        assert!((f - expected).abs() < 1e-9 * expected, "ntk {i}: {f} vs {expected}");
    }
    // YaRN: 1 at the high frequencies, s at the low ones, attention factor 0.1 ln s + 1.
    let yarn = &seeds[2];
    assert!((yarn.factors[0] - 1.0).abs() < 1e-12);
    assert!((yarn.factors[31] - 2.0).abs() < 1e-12);
    assert!(yarn.factors.windows(2).all(|w| w[0] <= w[1] + 1e-12));
    assert!((yarn.attn_factor - (0.1 * 2f64.ln() + 1.0)).abs() < 1e-12);
}

#[test]
fn candidate_toml_is_a_longrope_config_with_those_factors() {
    longrope_scaling::link();
    let shape = smollm2_16k();
    let factors: Vec<f64> = (0..32).map(|i| 1.0 + i as f64 * 0.03).collect();
    let c = Candidate { factors: factors.clone(), n_hat: 8, attn_factor: Some(1.07) };
    let text = candidate_to_toml(&c, &shape);
    let config = parse_scaling_toml(&text, "candidate").unwrap();
    let schedule = RopeSchedule::new(config.as_ref(), shape.clone()).unwrap();
    let tables = schedule.tables(16384).unwrap();
    let t = &tables.layers[0];
    for ((base, scaled), lambda) in shape.base_inv_freq().iter().zip(&t.inv_freq).zip(&factors) {
        assert!((base / lambda - scaled).abs() <= 1e-15 * base, "{base} / {lambda} != {scaled}");
    }
    assert_eq!(t.attn_factor, 1.07);
    assert_eq!(t.retained.as_ref().map(|r| r.n_hat), Some(8));
}

fn reference_golden() -> serde_json::Value {
    let path = common::root().join("tests/fixtures/reference_golden.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn assert_factors(name: &str, ours: &[f64], theirs: &serde_json::Value) {
    let theirs: Vec<f64> = theirs.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(ours.len(), theirs.len(), "{name}");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        // The reference computes in float32.
        assert!((a - b).abs() <= 1e-6 * b, "{name} dim {i}: ours {a}, reference {b}");
    }
}

/// The reference's initial factors (`evolution/search.py:117-171`, its own `YaRNScaledRotaryEmbedding`, run by
/// scripts/fixtures/reference_golden.py): `L` from the sliding window, betas 128/2 on Mistral, the linear blend.
#[test]
fn reference_mode_seed_is_the_references_initial_factors() {
    longrope_scaling::link();
    longrope_models::link();
    let g = reference_golden();
    let y = &g["yarn_seed"];
    let reference = longrope_search::SpaceConfig::default();
    assert_eq!(reference.mode, longrope_search::SearchMode::Reference);
    let seed_of = |arch: &str, shape: &RopeShape| {
        let specs = reference.seed_specs(Some(arch));
        assert_eq!(specs.len(), 1, "{specs:?}");
        RegistrySeeds { methods: specs }.seeds(shape).unwrap().remove(0)
    };

    // Llama-like models: L = max_position_embeddings, betas 32/1.
    for (name, shape) in [
        ("smollm2-16k", smollm2_16k()),
        ("llama2-7b-16k", RopeShape { head_dim: 128, rope_base: 10_000.0, original_max_position_embeddings: 4096, max_position_embeddings: 16384, num_layers: 32 }),
    ] {
        let case = &y[name];
        assert_eq!(case["original_length"], shape.original_max_position_embeddings);
        assert_eq!(case["betas"]["beta_fast"], 32);
        let seed = seed_of("llama", &shape);
        assert_factors(name, &seed.factors, &case["factors"]);
        // The paper's YaRN seed (YaRN's own blend) is another vector: the comparison above can fail.
        let yarn = RegistrySeeds { methods: vec!["yarn".into()] }.seeds(&shape).unwrap().remove(0);
        let d = yarn.factors.iter().zip(&seed.factors).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(d > 0.1, "{name}: the two YaRN blends differ by {d}");
    }

    // Mistral-7B-v0.1 (config.json: max_position_embeddings 32768, sliding_window 4096): L = 4096, s = 8 at 32k.
    let mistral: longrope_core::model::ModelSummary = serde_json::from_value(serde_json::json!({
        "arch": "mistral", "format": "safetensors", "num_layers": 32, "hidden_size": 4096, "num_heads": 32,
        "num_kv_heads": 8, "head_dim": 128, "vocab_size": 32000, "rope_base": 10000.0,
        "max_position_embeddings": 32768, "sliding_window": 4096, "tied_embeddings": false, "weight_dtype": "BF16",
        "bos_token_id": 1, "eos_token_id": 2
    }))
    .unwrap();
    let case = &y["mistral-7b-v0.1-32k"];
    let shape = mistral.rope_shape(32768);
    assert_eq!(shape.original_max_position_embeddings as u64, case["original_length"].as_u64().unwrap());
    assert_eq!(shape.scale(), case["scale"].as_f64().unwrap());
    assert_eq!((case["betas"]["beta_fast"].as_u64(), case["betas"]["beta_slow"].as_u64()), (Some(128), Some(2)));
    assert_factors("mistral-7b-v0.1-32k", &seed_of(&mistral.arch, &shape).factors, &case["factors"]);
    // With Llama's betas the seed would differ.
    let llama_betas = seed_of("llama", &shape);
    assert!(llama_betas.factors.iter().zip(case["factors"].as_array().unwrap()).any(|(a, b)| (a - b.as_f64().unwrap()).abs() > 0.1));

    // Our tiny Mistral checkpoint, loaded: its sliding window (8) is L.
    let model = longrope_models::load(&common::tiny_mistral(), &Default::default()).unwrap();
    let case = &y["tiny-mistral-32"];
    let shape = model.summary().rope_shape(32);
    assert_eq!(shape.original_max_position_embeddings as u64, case["original_length"].as_u64().unwrap());
    assert_factors("tiny-mistral-32", &seed_of(&model.summary().arch, &shape).factors, &case["factors"]);
}
