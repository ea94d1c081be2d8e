//! Seeds of the initial population: the per-dimension factors of existing scaling methods.
//!
//! LongRoPE (arXiv 2402.13753, Sec. 3.2) seeds the evolution with PI, NTK and YaRN. A method's factors are
//! `lambda_i = theta_i / theta'_i`: the unscaled inverse frequencies divided by the method's inverse frequencies
//! at the target length. They are taken from the scaling registry ([`RegistrySeeds`]), so the search never
//! re-implements a method's formula; tests and other callers can pass any [`SeedSource`], closures included.

use longrope_core::scaling::{load_scaling_config, RopeSchedule};
use longrope_core::RopeShape;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};

/// One seed: a method's factors and attention factor at the target length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seed {
    /// Where it came from (`pi`, `ntk`, `yarn`, a TOML path ...).
    pub name: String,
    /// `lambda_i = theta_i / theta'_i`, `d/2` values.
    pub factors: Vec<f64>,
    /// The method's attention factor `m` (used as the seed's value when the attention factor is searched).
    pub attn_factor: f64,
}

/// Anything that gives the seeds for a shape.
pub trait SeedSource {
    /// The seeds for `shape` (its `max_position_embeddings` is the target length).
    fn seeds(&self, shape: &RopeShape) -> Result<Vec<Seed>>;
}

impl<F> SeedSource for F
where
    F: Fn(&RopeShape) -> Result<Vec<Seed>>,
{
    fn seeds(&self, shape: &RopeShape) -> Result<Vec<Seed>> {
        self(shape)
    }
}

/// Seeds from registered scaling methods, each given as `--scaling` accepts it (a name or a TOML path).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegistrySeeds {
    /// The method specs, e.g. `["pi", "ntk", "yarn"]`.
    pub methods: Vec<String>,
}

impl SeedSource for RegistrySeeds {
    fn seeds(&self, shape: &RopeShape) -> Result<Vec<Seed>> {
        self.methods.iter().map(|m| seed_from_method(m, shape)).collect()
    }
}

/// The factors of one scaling method (a name or a TOML path) at `shape.max_position_embeddings`.
pub fn seed_from_method(spec: &str, shape: &RopeShape) -> Result<Seed> {
    let config = load_scaling_config(spec)?;
    let schedule = RopeSchedule::new(config.as_ref(), shape.clone())?;
    if schedule.method.per_layer() {
        return Err(SearchError::invalid(
            format!("seed `{spec}`"),
            "per-layer methods cannot seed a search of one factor vector",
        ));
    }
    let tables = schedule.tables(shape.max_position_embeddings)?;
    let t = tables.layers.first().ok_or_else(|| SearchError::invalid(format!("seed `{spec}`"), "no layers"))?;
    let factors = shape.base_inv_freq().iter().zip(&t.inv_freq).map(|(base, scaled)| base / scaled).collect();
    Ok(Seed { name: spec.to_string(), factors, attn_factor: t.attn_factor })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use longrope_core::{PositionScaling, RopeContext, RopeTables, ScalingConfig};

    use super::*;

    /// A stand-in PI for this test binary (the real `pi` lives in `longrope-scaling`): `theta_i / s`, m = 1.25.
    #[derive(Debug, Serialize, Deserialize)]
    struct TestPi {}

    longrope_core::plugin! {
        kind: Scaling,
        name: "search-test-pi",
        summary: "test stand-in for PI",
        impl ScalingConfig for TestPi {
            fn build(&self, _shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
                Ok(Arc::new(TestPiMethod))
            }
        }
    }

    #[derive(Debug)]
    struct TestPiMethod;

    impl PositionScaling for TestPiMethod {
        fn name(&self) -> &str {
            TestPi::NAME
        }
        fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
            let s = ctx.shape.scale();
            Ok(RopeTables::new(ctx.shape.base_inv_freq().iter().map(|f| f / s).collect(), 1.25))
        }
    }

    fn shape() -> RopeShape {
        RopeShape {
            head_dim: 8,
            rope_base: 10_000.0,
            original_max_position_embeddings: 1024,
            max_position_embeddings: 4096,
            num_layers: 2,
        }
    }

    #[test]
    fn registry_seed_is_the_ratio_of_inverse_frequencies() {
        let seeds = RegistrySeeds { methods: vec!["search-test-pi".into()] }.seeds(&shape()).unwrap();
        assert_eq!(seeds.len(), 1);
        assert_eq!(seeds[0].name, "search-test-pi");
        assert_eq!(seeds[0].attn_factor, 1.25);
        for f in &seeds[0].factors {
            assert!((f - 4.0).abs() < 1e-12, "{f}");
        }
        assert_eq!(seeds[0].factors.len(), 4);
    }

    #[test]
    fn unknown_seed_method_names_the_known_ones() {
        let err = RegistrySeeds { methods: vec!["nope".into()] }.seeds(&shape()).unwrap_err().to_string();
        assert!(err.contains("unknown scaling plugin `nope`") && err.contains("search-test-pi"), "{err}");
    }

    #[test]
    fn closures_are_seed_sources() {
        let stub = |s: &RopeShape| -> Result<Vec<Seed>> {
            Ok(vec![Seed { name: "stub".into(), factors: vec![s.scale(); s.head_dim / 2], attn_factor: 1.0 }])
        };
        assert_eq!(stub.seeds(&shape()).unwrap()[0].factors, vec![4.0; 4]);
    }
}
