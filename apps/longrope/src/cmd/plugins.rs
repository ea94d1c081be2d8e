//! `longrope plugins [--json]`: every registered plugin by kind, and [`load`] for `--plugin PATH` libraries.

use std::path::PathBuf;

use anyhow::Result;
use longrope_core::registry::{self, PluginKind};

/// Load dynamic plugin libraries (`--plugin PATH`, an experiment's `plugins = [...]`) and register them.
/// A library already loaded is skipped; a bad one is an error naming its file, never a crash.
pub fn load(paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        // The error already names the file and what is wrong with it.
        let plugin = longrope_plugin_abi::host::load_plugin(path)?;
        tracing::info!(name = %plugin.name, path = %plugin.path.display(), "loaded plugin");
    }
    Ok(())
}

/// Arguments of `longrope plugins`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON document: `{"scaling": [{"name", "summary"}...], "search": [...], "arch": [...], "evaluator": [...]}`.
    #[arg(long)]
    json: bool,
}

/// Run `longrope plugins`.
pub fn run(args: Args) -> Result<()> {
    if args.json {
        let mut doc = serde_json::Map::new();
        for kind in PluginKind::ALL {
            doc.insert(kind.as_str().to_string(), serde_json::to_value(registry::list(kind))?);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    for kind in PluginKind::ALL {
        let list = registry::list(kind);
        println!("{kind} ({}):", list.len());
        for p in list {
            let origin = p.library.map(|l| format!("  [{l}]")).unwrap_or_default();
            println!("  {:<14} {}{origin}", p.name, p.summary);
        }
    }
    Ok(())
}
