//! Scaling methods that come from shared libraries loaded at run time (`longrope --plugin lib.so`).
//!
//! `typetag`'s registry is fixed at link time, so a dynamically loaded method cannot add a variant to it.
//! Instead the loader (`longrope-plugin-abi`'s `host` module) registers a [`DynamicScalingBuilder`] under the
//! plugin's name with [`register_dynamic_scaling`]. [`super::parse_scaling_toml`] consults this table before
//! `typetag`: a TOML `method = "powerlaw"` plus fields becomes a [`DynamicScalingConfig`] that forwards the
//! fields as a JSON object. That config is also the `typetag` variant `method = "dynamic"` (fields `plugin` and
//! the flattened parameters), so it serialises and reads back like any static config.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::{PositionScaling, ScalingConfig};
use crate::registry::PluginKind;
use crate::rope::RopeShape;
use crate::{Error, Result};

/// The `typetag` name of [`DynamicScalingConfig`]: `method = "dynamic"`, `plugin = "NAME"`, parameters.
pub const DYNAMIC_METHOD: &str = "dynamic";

/// Builds a dynamic method from its parameters (the TOML fields except `method`, as JSON) and a shape.
pub type DynamicScalingBuilder = Arc<
    dyn Fn(&serde_json::Map<String, serde_json::Value>, &RopeShape) -> Result<Arc<dyn PositionScaling>> + Send + Sync,
>;

static BUILDERS: RwLock<BTreeMap<String, DynamicScalingBuilder>> = RwLock::new(BTreeMap::new());

/// Make `method = "NAME"` configs build through `builder`. A name registered twice is an error.
pub fn register_dynamic_scaling(name: &str, builder: DynamicScalingBuilder) -> Result<()> {
    let mut builders = BUILDERS.write().unwrap_or_else(|e| e.into_inner());
    if builders.contains_key(name) {
        return Err(Error::invalid("dynamic scaling method", format!("`{name}` is already registered")));
    }
    builders.insert(name.to_string(), builder);
    Ok(())
}

/// The builder registered under `name`, if any.
pub fn dynamic_scaling(name: &str) -> Option<DynamicScalingBuilder> {
    BUILDERS.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
}

fn unknown_dynamic(name: &str) -> Error {
    let names: Vec<String> = BUILDERS.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
    let known = if names.is_empty() { "(none loaded)".to_string() } else { names.join(", ") };
    Error::UnknownPlugin { kind: PluginKind::Scaling, name: name.to_string(), known }
}

/// The config of a method from a loaded library: its name and its parameters, forwarded as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicScalingConfig {
    /// The plugin's name (its descriptor name, what users write as `method = "NAME"`).
    pub plugin: String,
    /// Every other field of the user's table, passed to the plugin as a JSON object.
    #[serde(flatten)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

#[typetag::serde(name = "dynamic")]
impl ScalingConfig for DynamicScalingConfig {
    fn build(&self, shape: &RopeShape) -> Result<Arc<dyn PositionScaling>> {
        let builder = dynamic_scaling(&self.plugin).ok_or_else(|| unknown_dynamic(&self.plugin))?;
        builder(&self.params, shape)
    }
}

/// If the table names a dynamic method (`method = "NAME"` registered here, or `method = "dynamic"`), its
/// config; `None` for static methods. `origin` names the source in errors.
pub(crate) fn parse_dynamic(value: &toml::Value, origin: &str) -> Result<Option<Box<dyn ScalingConfig>>> {
    let Some(table) = value.as_table() else { return Ok(None) };
    let Some(method) = table.get("method").and_then(|m| m.as_str()) else { return Ok(None) };
    let mut params = table.clone();
    params.remove("method");
    let plugin = if method == DYNAMIC_METHOD {
        let plugin = params
            .remove("plugin")
            .and_then(|p| p.as_str().map(str::to_string))
            .ok_or_else(|| Error::config(origin, "`method = \"dynamic\"` needs a string field `plugin`"))?;
        if dynamic_scaling(&plugin).is_none() {
            return Err(unknown_dynamic(&plugin));
        }
        plugin
    } else if dynamic_scaling(method).is_some() {
        method.to_string()
    } else {
        return Ok(None);
    };
    let params = match serde_json::to_value(params) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(other) => return Err(Error::config(origin, format!("parameters are not a table: {other}"))),
        Err(e) => return Err(Error::config(origin, format!("parameters do not convert to JSON: {e}"))),
    };
    Ok(Some(Box::new(DynamicScalingConfig { plugin, params })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{self, PluginEntry};
    use crate::rope::{RopeContext, RopeTables};
    use crate::scaling::{parse_scaling_toml, RopeSchedule};

    /// A stand-in for a loaded library: PI with the factor taken from the JSON parameters.
    #[derive(Debug)]
    struct JsonPi(f64);

    impl PositionScaling for JsonPi {
        fn name(&self) -> &str {
            "dyn-test-pi"
        }
        fn tables(&self, ctx: &RopeContext) -> Result<RopeTables> {
            Ok(RopeTables::new(ctx.shape.base_inv_freq().iter().map(|f| f / self.0).collect(), 1.0))
        }
    }

    fn register() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            registry::register_dynamic(PluginEntry {
                kind: PluginKind::Scaling,
                name: "dyn-test-pi".into(),
                summary: "test".into(),
                library: Some("libtest.so".into()),
            })
            .unwrap();
            register_dynamic_scaling(
                "dyn-test-pi",
                Arc::new(|params, _shape| {
                    let factor = params.get("factor").and_then(|f| f.as_f64()).unwrap_or(2.0);
                    Ok(Arc::new(JsonPi(factor)) as Arc<dyn PositionScaling>)
                }),
            )
            .unwrap();
        });
    }

    fn shape() -> RopeShape {
        RopeShape {
            head_dim: 4,
            rope_base: 100.0,
            original_max_position_embeddings: 10,
            max_position_embeddings: 20,
            num_layers: 1,
        }
    }

    #[test]
    fn method_name_forwards_fields_as_json() {
        register();
        let config = parse_scaling_toml("method = \"dyn-test-pi\"\nfactor = 4.0\n", "test").unwrap();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json, serde_json::json!({"method": "dynamic", "plugin": "dyn-test-pi", "factor": 4.0}));
        let tables = RopeSchedule::new(config.as_ref(), shape()).unwrap().tables(8).unwrap();
        assert_eq!(tables.layers[0].inv_freq, vec![0.25, 0.025]);
    }

    #[test]
    fn serialised_config_reads_back() {
        register();
        let config = parse_scaling_toml("method = \"dyn-test-pi\"\nfactor = 4.0\n", "test").unwrap();
        let text = toml::to_string(&config).unwrap();
        let back = parse_scaling_toml(&text, "round trip").unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&config).unwrap());
        let direct: Box<dyn ScalingConfig> = toml::from_str(&text).unwrap();
        assert_eq!(serde_json::to_value(&direct).unwrap(), serde_json::to_value(&config).unwrap());
    }

    #[test]
    fn unknown_dynamic_plugin_is_named() {
        let err = parse_scaling_toml("method = \"dynamic\"\nplugin = \"nope\"\n", "cfg.toml").unwrap_err();
        assert!(err.to_string().contains("unknown scaling plugin `nope`"), "{err}");
        let err = parse_scaling_toml("method = \"dynamic\"\n", "cfg.toml").unwrap_err().to_string();
        assert_eq!(err, "cfg.toml: `method = \"dynamic\"` needs a string field `plugin`");
    }
}
