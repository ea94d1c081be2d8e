//! A scaling plugin whose entry points panic, for `tests/plugins_dynamic.rs`: the `export_scaling_plugin!`
//! wrappers must turn the panic into an error the host reports, and the host must keep running.
//! Parameters: `{"panic_in": "tables"}` validates fine and panics when asked for tables; `{"nan_tables": true}`
//! returns a NaN frequency (the host must refuse the tables); anything else panics while resolving parameters.

use longrope_plugin_abi::ffi::RopeContext;
use longrope_plugin_abi::{export_scaling_plugin, ScalingPlugin, TablesMut};

/// Panics in `new` unless the parameters say `"panic_in": "tables"` (then panics in `tables`) or
/// `"nan_tables": true` (then returns invalid tables).
pub struct Panicking {
    nan_tables: bool,
}

impl ScalingPlugin for Panicking {
    fn new(_ctx: &RopeContext, params: &str) -> Result<Self, String> {
        if params.contains(r#""panic_in":"tables""#) {
            Ok(Panicking { nan_tables: false })
        } else if params.contains(r#""nan_tables":true"#) {
            Ok(Panicking { nan_tables: true })
        } else {
            panic!("deliberate panic while resolving parameters")
        }
    }

    fn resolved_params(&self) -> String {
        "{}".to_string()
    }

    fn tables(&self, _ctx: &RopeContext, out: &mut TablesMut<'_>) -> Result<(), String> {
        if self.nan_tables {
            out.inv_freq[1] = f64::NAN;
            return Ok(());
        }
        panic!("deliberate panic in tables")
    }
}

export_scaling_plugin!(Panicking, "panicking", "Test plugin whose entry points panic");
