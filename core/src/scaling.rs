//! Position-scaling methods: the config trait users write in TOML and the runtime trait that makes tables.
//!
//! Config pattern (candle's `LlamaConfig -> Config`, burn's `Config -> init`): a [`ScalingConfig`] is a serde
//! struct that mirrors the TOML (`method = "yarn"` selects the `typetag` variant; unknown fields are rejected),
//! and [`ScalingConfig::build`] validates it against a [`RopeShape`] and returns the runtime
//! [`PositionScaling`], with every default resolved (for example `factor` defaults to `s = L'/L`).
//!
//! `--scaling CONFIG` everywhere means a plugin name (the same as the TOML `method = "NAME"`, i.e. all defaults,
//! as HF takes them), a name with inline fields (`yarn{beta_fast = 128.0, beta_slow = 2.0}`: a TOML inline table),
//! or the path of a TOML file; see [`load_scaling_config`]. Methods from shared
//! libraries loaded at run time (`--plugin`) are configured the same way through the `dynamic` submodule
//! ([`register_dynamic_scaling`], [`DynamicScalingConfig`]; see `docs/plugins.md`). A checkpoint's own method
//! and the choice between it and an explicit one are in [`checkpoint`]; HF `rope_scaling` blocks in [`hf`].

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use crate::registry::{self, PluginKind};
use crate::rope::{RopeContext, RopeShape, RopeTables};
use crate::{Error, Result};

pub mod checkpoint;
mod dynamic;
pub mod hf;
pub use checkpoint::{run_scaling, CheckpointScaling, RunScaling, ScalingRequest, ScalingSource, CHECKPOINT};
pub use dynamic::{
    dynamic_scaling, register_dynamic_scaling, DynamicScalingBuilder, DynamicScalingConfig, DYNAMIC_METHOD,
};

/// A scaling method's configuration as written by a user; `typetag` selects the implementation by `method`.
#[typetag::serde(tag = "method")]
pub trait ScalingConfig: Debug + Send + Sync {
    /// Validate against the model/extension shape and return the runtime method with defaults resolved.
    fn build(&self, shape: &RopeShape) -> Result<Arc<dyn PositionScaling>>;

    /// Check the fields that need no shape against [`crate::limits`] (a `factor` of `1e308`, a NaN, a negative
    /// attention factor ...), naming the field. [`parse_scaling_toml`] calls it, so a bad value is refused with
    /// its file before any model is loaded; `build` implementations call it too. The default accepts anything.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Make relative file paths inside the config (e.g. LongRoPE's `factors_file`) relative to `base_dir`, the
    /// directory of the TOML file they were written in. [`load_scaling_config`] calls it for files; the default
    /// does nothing (configs without paths).
    fn resolve_relative_paths(&mut self, base_dir: &Path) {
        let _ = base_dir;
    }
}

/// A built scaling method: computes the tables of one layer for one forward.
pub trait PositionScaling: Debug + Send + Sync {
    /// The plugin name (`yarn`, `longrope` ...).
    fn name(&self) -> &str;

    /// The tables for a context (shape, current sequence length, layer).
    fn tables(&self, ctx: &RopeContext) -> Result<RopeTables>;

    /// Whether the tables depend on the current sequence length (dynamic methods, short/long switching).
    /// Callers use it to know when tables, and any KV cache built with them, must be recomputed.
    fn depends_on_seq_len(&self) -> bool {
        false
    }

    /// Whether the tables differ between layers (per-layer factors).
    fn per_layer(&self) -> bool {
        false
    }

    /// The resolved parameters as JSON (for reports and `longrope rope`).
    fn params(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Parse a scaling config from TOML text; `origin` names the source in errors (a path or `--scaling NAME`).
/// The method name is checked against the registry first so an unknown name lists the known ones.
pub fn parse_scaling_toml(text: &str, origin: &str) -> Result<Box<dyn ScalingConfig>> {
    let value: toml::Value = toml::from_str(text).map_err(|e| Error::config(origin, e.to_string()))?;
    let method = value
        .get("method")
        .and_then(|m| m.as_str())
        .ok_or_else(|| Error::config(origin, "missing string field `method` (the scaling plugin's name)"))?;
    // Methods from loaded libraries (`--plugin`) are not `typetag` variants: see `dynamic`.
    if let Some(config) = dynamic::parse_dynamic(&value, origin)? {
        return Ok(config);
    }
    registry::require(PluginKind::Scaling, method)?;
    let config = toml::from_str::<Box<dyn ScalingConfig>>(text).map_err(|e| Error::config(origin, e.to_string()))?;
    config.validate().map_err(|e| Error::config(origin, e.to_string()))?;
    Ok(config)
}

/// Load `--scaling CONFIG`: a path to a TOML file (anything that exists or ends in `.toml`), a plugin name, or a
/// plugin name followed by a TOML inline table of its fields (`yarn{blend = "factor", beta_fast = 128.0}`).
/// Relative paths inside a TOML file are taken relative to that file's directory.
pub fn load_scaling_config(spec: &str) -> Result<Box<dyn ScalingConfig>> {
    let path = Path::new(spec);
    if path.exists() || spec.ends_with(".toml") {
        let text = crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES)?;
        let mut config = parse_scaling_toml(&text, &path.display().to_string())?;
        config.resolve_relative_paths(path.parent().unwrap_or(Path::new("")));
        return Ok(config);
    }
    let origin = format!("--scaling {spec}");
    if let Some((name, fields)) = spec.split_once('{') {
        let name = name.trim();
        registry::require(PluginKind::Scaling, name)?;
        let table: toml::Table = toml::from_str(&format!("fields = {{{fields}"))
            .map_err(|e| Error::config(&origin, format!("the fields after `{name}` are not a TOML inline table: {e}")))?;
        let mut fields = match table.get("fields") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => return Err(Error::config(&origin, "expected `NAME{field = value, ...}`")),
        };
        if fields.contains_key("method") {
            return Err(Error::config(&origin, "the method is the name before `{`; remove `method` from the fields"));
        }
        fields.insert("method".into(), toml::Value::String(name.to_string()));
        let text = toml::to_string(&fields).map_err(|e| Error::config(&origin, e.to_string()))?;
        return parse_scaling_toml(&text, &origin);
    }
    registry::require(PluginKind::Scaling, spec)?;
    parse_scaling_toml(&format!("method = {spec:?}\n"), &origin)
}

/// A built method bound to a shape: hands out the per-layer tables for any sequence length and caches them.
#[derive(Debug, Clone)]
pub struct RopeSchedule {
    /// The model/extension shape.
    pub shape: RopeShape,
    /// The built method.
    pub method: Arc<dyn PositionScaling>,
}

/// The tables of every layer for one sequence length, with an identity used to detect changes.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTables {
    /// One entry per layer (entries may repeat when the method is not per-layer).
    pub layers: Vec<Arc<RopeTables>>,
}

impl RopeSchedule {
    /// Build `config` for `shape` and bind it.
    pub fn new(config: &dyn ScalingConfig, shape: RopeShape) -> Result<Self> {
        shape.validate()?;
        config.validate()?;
        let method = config.build(&shape)?;
        Ok(RopeSchedule { shape, method })
    }

    /// The tables of all layers for a forward whose largest position is `seq_len - 1`.
    pub fn tables(&self, seq_len: usize) -> Result<LayerTables> {
        let n = self.shape.num_layers;
        let mut layers = Vec::with_capacity(n);
        if self.method.per_layer() {
            for layer in 0..n {
                let t = self.method.tables(&self.shape.at(seq_len, layer))?;
                t.validate(&self.shape)?;
                layers.push(Arc::new(t));
            }
        } else {
            let t = self.method.tables(&self.shape.at(seq_len, 0))?;
            t.validate(&self.shape)?;
            let t = Arc::new(t);
            layers.resize(n, t);
        }
        Ok(LayerTables { layers })
    }
}
