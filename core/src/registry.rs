//! The plugin registry: every plugin, static or dynamic, is listed here by kind and name.
//!
//! Static plugins are declared once with [`plugin!`](crate::plugin) (a [`PluginInfo`] submitted with `inventory`, and
//! the `typetag` name of their config); their configs deserialize through `typetag`. Dynamic plugins (shared libraries, see `longrope-plugin-abi`) are added at
//! run time with [`register_dynamic`]. Listings are sorted by name, because `inventory`'s order is unspecified;
//! looking up a missing name is a typed [`Error::UnknownPlugin`] that lists the known names
//! (the pattern of vector's `src/config/component.rs`).

use std::fmt;
use std::sync::RwLock;

use serde::Serialize;

use crate::{Error, Result};

/// The four kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A [`crate::PositionScaling`] method (PI, NTK, YaRN, LongRoPE ...).
    Scaling,
    /// A [`crate::SearchStrategy`] (evolution, random, grid ...).
    Search,
    /// A [`crate::ModelArch`] (llama, mistral ...).
    Arch,
    /// An [`crate::Evaluator`] (ppl, passkey, needle-ppl ...).
    Evaluator,
}

impl PluginKind {
    /// All kinds, in the order listings show them.
    pub const ALL: [PluginKind; 4] = [PluginKind::Scaling, PluginKind::Search, PluginKind::Arch, PluginKind::Evaluator];

    /// The kind's name as it appears in listings and JSON (`scaling`, `search`, `arch`, `evaluator`).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Scaling => "scaling",
            PluginKind::Search => "search",
            PluginKind::Arch => "arch",
            PluginKind::Evaluator => "evaluator",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The descriptor a static plugin submits to the registry: made by [`plugin!`](crate::plugin), never by hand.
#[derive(Clone, Copy)]
pub struct PluginInfo {
    /// Which kind of plugin this is.
    pub kind: PluginKind,
    /// The plugin's name: its `typetag` name and the name users type (`yarn`, `evolution`, `llama`).
    pub name: &'static str,
    /// A one-line summary for `longrope plugins`.
    pub summary: &'static str,
    /// What the plugin provides besides its `typetag` config.
    pub provides: Provides,
}

/// What a static plugin provides besides its config: an architecture's loader, a scaling method's reader of
/// HF `rope_scaling` blocks.
#[derive(Clone, Copy)]
pub enum Provides {
    /// Only its config (search strategies, evaluators, scaling methods HF has no type for).
    Config,
    /// A scaling method that HF checkpoints name: the HF `rope_type`s it reads and the reader.
    HfScaling {
        /// The HF `rope_type` values (and old names) this method reads (`linear`; `longrope`, `su`).
        hf_types: &'static [&'static str],
        /// Reads such a block into this method's config.
        read: crate::scaling::hf::HfReader,
    },
    /// An architecture's loader.
    Arch(&'static dyn crate::model::ModelArch),
}

impl fmt::Debug for PluginInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let provides = match self.provides {
            Provides::Config => "config".to_string(),
            Provides::HfScaling { hf_types, .. } => format!("HF types {hf_types:?}"),
            Provides::Arch(_) => "architecture".to_string(),
        };
        f.debug_struct("PluginInfo").field("kind", &self.kind).field("name", &self.name).field("provides", &provides).finish()
    }
}

inventory::collect!(PluginInfo);

/// Declare a static plugin, once: its kind, name and summary go to the registry, and the name is written
/// nowhere else. Every listing (`longrope plugins`, lookups, the tests' expectations) derives from it.
///
/// - A config plugin (scaling, search, evaluator) wraps the `impl` of its config trait, which the macro tags
///   for `typetag` with the same name; the config type gets `pub const NAME` for its runtime `name()`:
///   ```ignore
///   longrope_core::plugin! {
///       kind: Scaling, name: "pi", summary: "Position Interpolation",
///       hf: { types: ["linear"], read: read_hf },      // scaling methods HF has a `rope_type` for
///       impl ScalingConfig for PiConfig { fn build(&self, shape: &RopeShape) -> .. { .. } }
///   }
///   ```
/// - An architecture names its [`crate::ModelArch`] type (a unit struct), which gets `pub const NAME`:
///   `longrope_core::plugin! { kind: Arch, name: "llama", summary: "..", arch: LlamaArch }`.
/// - A name-only registration (tests): `longrope_core::plugin! { kind: Search, name: "x", summary: ".." }`.
///
/// The crate using it must depend on `typetag` (its expansion names it).
#[macro_export]
macro_rules! plugin {
    (kind: Arch, name: $name:tt, summary: $summary:expr, arch: $arch:ident $(,)?) => {
        impl $arch {
            /// The plugin's registered name.
            pub const NAME: &'static str = $name;
        }
        $crate::inventory::submit! {
            $crate::registry::PluginInfo {
                kind: $crate::registry::PluginKind::Arch,
                name: $name,
                summary: $summary,
                provides: $crate::registry::Provides::Arch(&$arch),
            }
        }
    };
    (kind: Scaling, name: $name:tt, summary: $summary:expr, hf: { types: [$($hf:expr),+ $(,)?], read: $read:expr $(,)? },
     impl $trait:ident for $config:ty { $($body:tt)* }) => {
        $crate::plugin!(@config Scaling, $name, $trait, $config, { $($body)* });
        $crate::inventory::submit! {
            $crate::registry::PluginInfo {
                kind: $crate::registry::PluginKind::Scaling,
                name: $name,
                summary: $summary,
                provides: $crate::registry::Provides::HfScaling { hf_types: &[$($hf),+], read: $read },
            }
        }
    };
    (kind: $kind:ident, name: $name:tt, summary: $summary:expr, impl $trait:ident for $config:ty { $($body:tt)* }) => {
        $crate::plugin!(@config $kind, $name, $trait, $config, { $($body)* });
        $crate::plugin!(kind: $kind, name: $name, summary: $summary);
    };
    (kind: $kind:ident, name: $name:tt, summary: $summary:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::registry::PluginInfo {
                kind: $crate::registry::PluginKind::$kind,
                name: $name,
                summary: $summary,
                provides: $crate::registry::Provides::Config,
            }
        }
    };
    (@config $kind:ident, $name:tt, $trait:ident, $config:ty, { $($body:tt)* }) => {
        impl $config {
            /// The plugin's registered name (its `typetag` name).
            pub const NAME: &'static str = $name;
        }
        #[typetag::serde(name = $name)]
        impl $trait for $config { $($body)* }
    };
}

/// The static registration of a plugin, if one exists (dynamic plugins have none).
pub fn static_info(kind: PluginKind, name: &str) -> Option<&'static PluginInfo> {
    inventory::iter::<PluginInfo>.into_iter().find(|p| p.kind == kind && p.name == name)
}

/// Every static registration of a kind, sorted by name.
pub fn static_infos(kind: PluginKind) -> Vec<&'static PluginInfo> {
    let mut out: Vec<&'static PluginInfo> = inventory::iter::<PluginInfo>.into_iter().filter(|p| p.kind == kind).collect();
    out.sort_by_key(|p| p.name);
    out
}

/// One row of a listing: a static or a dynamic plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginEntry {
    /// The plugin's kind.
    #[serde(skip)]
    pub kind: PluginKind,
    /// The plugin's name.
    pub name: String,
    /// Its one-line summary.
    pub summary: String,
    /// For a dynamic plugin, the shared library it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
}

static DYNAMIC: RwLock<Vec<PluginEntry>> = RwLock::new(Vec::new());

/// Add a dynamically loaded plugin to the listing. A name that already exists for that kind is an error.
pub fn register_dynamic(entry: PluginEntry) -> Result<()> {
    if find(entry.kind, &entry.name).is_some() {
        return Err(Error::config(
            entry.library.clone().unwrap_or_default(),
            format!("a {} plugin named `{}` is already registered", entry.kind, entry.name),
        ));
    }
    DYNAMIC.write().unwrap_or_else(|e| e.into_inner()).push(entry);
    Ok(())
}

/// Every plugin of a kind, static and dynamic, sorted by name.
pub fn list(kind: PluginKind) -> Vec<PluginEntry> {
    let mut out: Vec<PluginEntry> = inventory::iter::<PluginInfo>
        .into_iter()
        .filter(|p| p.kind == kind)
        .map(|p| PluginEntry { kind, name: p.name.to_string(), summary: p.summary.to_string(), library: None })
        .collect();
    out.extend(DYNAMIC.read().unwrap_or_else(|e| e.into_inner()).iter().filter(|p| p.kind == kind).cloned());
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// The plugin of a kind with that name, if registered.
pub fn find(kind: PluginKind, name: &str) -> Option<PluginEntry> {
    list(kind).into_iter().find(|p| p.name == name)
}

/// The plugin of a kind with that name, or [`Error::UnknownPlugin`] listing the known names.
pub fn require(kind: PluginKind, name: &str) -> Result<PluginEntry> {
    find(kind, name).ok_or_else(|| Error::UnknownPlugin { kind, name: name.to_string(), known: known_names(kind) })
}

/// The registered names of a kind, sorted and comma-separated (`(none)` when empty).
pub fn known_names(kind: PluginKind) -> String {
    let names: Vec<String> = list(kind).into_iter().map(|p| p.name).collect();
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::plugin!(kind: Search, name: "zz-test-strategy", summary: "registered by the core's unit tests");
    crate::plugin!(kind: Search, name: "aa-test-strategy", summary: "registered by the core's unit tests");

    #[test]
    fn static_registration_is_listed_sorted() {
        let names: Vec<String> = list(PluginKind::Search).into_iter().map(|p| p.name).collect();
        let a = names.iter().position(|n| n == "aa-test-strategy").expect("registered");
        let z = names.iter().position(|n| n == "zz-test-strategy").expect("registered");
        assert!(a < z);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let err = require(PluginKind::Search, "nope").unwrap_err().to_string();
        assert!(err.contains("unknown search plugin `nope`"), "{err}");
        assert!(err.contains("aa-test-strategy, "), "{err}");
    }

    #[test]
    fn dynamic_registration_is_listed_and_duplicates_refused() {
        let entry = PluginEntry {
            kind: PluginKind::Evaluator,
            name: "dyn-test".into(),
            summary: "dynamic".into(),
            library: Some("libx.so".into()),
        };
        register_dynamic(entry.clone()).unwrap();
        assert_eq!(find(PluginKind::Evaluator, "dyn-test"), Some(entry.clone()));
        assert!(register_dynamic(entry).is_err());
        assert!(register_dynamic(PluginEntry {
            kind: PluginKind::Search,
            name: "aa-test-strategy".into(),
            summary: String::new(),
            library: None
        })
        .is_err());
    }
}
