//! The search library against the real scaling registry: seeds are the PI/NTK/YaRN factors the scaling
//! plugins compute, and a candidate's TOML is a `longrope` config whose tables are `theta_i / lambda_i`.

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
