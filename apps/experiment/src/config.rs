//! The experiment file (`configs/experiments/*.toml`): its serde schema, validation before any compute, and
//! the expansion of `[[ablation]]` sweeps into extra methods and searches.
//!
//! Every table rejects unknown fields (`deny_unknown_fields`; the error names the field and lists the known
//! ones). Scaling, evaluator and search configs are parsed by their plugins' own parsers, so an unknown plugin
//! lists the known plugins and a typo inside a plugin's table names the field. Files (models, corpus, scaling
//! and search configs, factor files) are checked to exist. Relative paths are taken from the experiment file's
//! directory (or, inside a referenced scaling/search file, from that file's directory). See
//! `docs/experiments.md` for every field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use longrope_core::eval::parse_evaluator_toml;
use longrope_core::limits;
use longrope_core::registry::{self, PluginKind};
use longrope_core::scaling::{parse_scaling_toml, ScalingConfig};
use longrope_search::SearchFile;
use serde::{Deserialize, Serialize};

use crate::error::{ExperimentError, Result};

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}
fn default_seed_field() -> String {
    "seed".into()
}

/// A whole experiment file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// Name of the experiment (report title, `results.json`).
    pub name: String,
    /// Free text shown under the report's title.
    #[serde(default)]
    pub description: String,
    /// Target context `L'` of every method (default: the longest evaluated length, at least the model's
    /// trained context). A method's own `target` overrides it.
    #[serde(default)]
    pub target: Option<usize>,
    /// `[[model]]`: the models, each loaded once.
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
    /// `[data]`: the corpus the evaluators (and searches without their own corpus) read.
    #[serde(default)]
    pub data: Option<DataSection>,
    /// `[[method]]`: the scaling methods compared.
    #[serde(rename = "method")]
    pub methods: Vec<MethodEntry>,
    /// `[[search]]`: search steps whose best factors later methods name with `from_search`.
    #[serde(default, rename = "search")]
    pub searches: Vec<SearchEntry>,
    /// `[[finetune]]`: fine-tunes of a model under a method; each result is a model that evaluations and
    /// searches name like a `[[model]]`.
    #[serde(default, rename = "finetune")]
    pub finetunes: Vec<FinetuneEntry>,
    /// `[[eval]]`: evaluators with their lengths.
    #[serde(rename = "eval")]
    pub evals: Vec<EvalEntry>,
    /// `[[ablation]]`: sweeps over fields of a method's scaling config or of a search config.
    #[serde(default, rename = "ablation")]
    pub ablations: Vec<AblationEntry>,
    /// Dynamic plugin libraries (`longrope-plugin-abi`) to load before anything is parsed, relative to the
    /// experiment file; their methods are then named like built-in ones (`scaling = "powerlaw"`).
    #[serde(default)]
    pub plugins: Vec<PathBuf>,
}

/// `[[model]]`: a model and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Short name used in tables, `models = [...]` filters and `[[search]] model`.
    pub name: String,
    /// A `.gguf` file or an HF model directory.
    pub path: PathBuf,
    /// Compute dtype: `f32` (default), `bf16`, `f16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Device: `cpu` (default), `cuda`, `cuda:N`, `auto`.
    #[serde(default = "default_device")]
    pub device: String,
}

/// `[data]`: the evaluation corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Text files, JSONL files, directories of them, or token stores; their documents in this order.
    pub corpus: Vec<PathBuf>,
}

/// `[[method]]`: one scaling method, given exactly one way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodEntry {
    /// Name in tables and plots (e.g. `yarn`, `longrope-searched`).
    pub name: String,
    /// A scaling plugin name (all defaults) or a scaling TOML file.
    #[serde(default)]
    pub scaling: Option<String>,
    /// `[method.config]`: an inline scaling config (`method = "yarn"`, plus that plugin's fields).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// The best candidate of the `[[search]]` of this name (a `longrope` config with the searched factors).
    #[serde(default)]
    pub from_search: Option<String>,
    /// Target context `L'` of this method (default: the experiment's).
    #[serde(default)]
    pub target: Option<usize>,
}

/// `[[search]]`: a search step run before the evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchEntry {
    /// Name that methods refer to with `from_search`.
    pub name: String,
    /// The `[[model]]` it runs on (default: the first).
    #[serde(default)]
    pub model: Option<String>,
    /// A search file (`configs/search/*.toml`); its `[model]` table is ignored (the model is `model`).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `[search.config]`: an inline search file (same layout as `configs/search/*.toml`).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Another strategy with the same budget (`random`, `grid` baselines).
    #[serde(default)]
    pub strategy: Option<String>,
}

/// `[[finetune]]`: fine-tune `model` under `method` with a recipe (a `configs/finetune/*.toml` file or an
/// inline `[finetune.config]`); the experiment sets the recipe's `[model] path`, `scaling` and `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneEntry {
    /// Name of the fine-tuned model (evaluations, `models = [...]` filters and `[[search]] model` use it).
    pub name: String,
    /// The `[[model]]` fine-tuned (default: the first).
    #[serde(default)]
    pub model: Option<String>,
    /// The `[[method]]` trained under (a plugin, a file, an inline config or `from_search`).
    pub method: String,
    /// A fine-tune file (`configs/finetune/*.toml`), relative to the experiment file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `[finetune.config]`: an inline fine-tune recipe (same layout as the files).
    #[serde(default)]
    pub config: Option<toml::Table>,
}

/// `[[eval]]`: an evaluator at several lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalEntry {
    /// Evaluator plugin (`ppl`, `passkey`, `needle-ppl`).
    pub evaluator: String,
    /// Name of this entry (default: the evaluator's); must be unique.
    #[serde(default)]
    pub name: Option<String>,
    /// Context lengths in tokens.
    pub lengths: Vec<usize>,
    /// `[eval.config]`: the evaluator's settings (its plugin's fields; `evaluator` is implied).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Only these methods (default: all). Naming an ablated method includes its variants.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Only these models (default: all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Seeds: one cell per seed, the seed written into the config field `seed_field` (default: no seed).
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// The evaluator's config field that takes the seed (default `seed`; `shuffle_seed` for `ppl`).
    #[serde(default = "default_seed_field")]
    pub seed_field: String,
}

/// `[[ablation]]`: the cartesian product of `grid` applied to a method's scaling config or a search config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationEntry {
    /// The `[[method]]` whose scaling config is varied (not a `from_search` method).
    #[serde(default)]
    pub method: Option<String>,
    /// The `[[search]]` whose config is varied; methods `from_search` it are evaluated for every variant.
    #[serde(default)]
    pub search: Option<String>,
    /// `[ablation.grid]`: field path (dotted for nested tables, e.g. `space.monotone`) -> list of values.
    pub grid: toml::Table,
}

/// Where a method's scaling config comes from, after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum MethodSource {
    /// A scaling config table (plugin name, file or inline), relative paths taken from `base_dir`.
    Scaling {
        /// The config as a TOML table (`method = ...`).
        table: toml::Table,
        /// The directory relative paths inside it are resolved from.
        base_dir: PathBuf,
    },
    /// The best candidate of a search.
    FromSearch(String),
}

/// A validated method (ablation variants included).
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSpec {
    /// Its name (`base[field=value,...]` for ablation variants).
    pub name: String,
    /// The `[[method]]` it derives from (itself when not a variant).
    pub base: String,
    /// Its config.
    pub source: MethodSource,
    /// Target override.
    pub target: Option<usize>,
    /// The ablation settings that made it (empty for plain methods).
    pub ablation: Vec<(String, String)>,
}

/// A validated search step (ablation variants included).
#[derive(Debug)]
pub struct SearchSpec {
    /// Its name (`base[field=value,...]` for variants).
    pub name: String,
    /// The `[[search]]` it derives from.
    pub base: String,
    /// The model name it runs on.
    pub model: String,
    /// The parsed search file (paths resolved).
    pub file: SearchFile,
}

/// A validated fine-tune step.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneSpec {
    /// The fine-tuned model's name.
    pub name: String,
    /// The base `[[model]]`.
    pub model: String,
    /// The `[[method]]` trained under.
    pub method: String,
    /// The recipe as a TOML table, `[model] path` set to the base model's.
    pub recipe: toml::Table,
    /// The directory relative paths of the recipe are resolved from.
    pub base_dir: PathBuf,
    /// `EXPERIMENT [[finetune]] NAME`, for errors.
    pub origin: String,
}

impl FinetuneSpec {
    /// The recipe with the method's scaling table and target set, parsed and validated: the fine-tune
    /// the runner trains.
    pub fn build(&self, scaling: toml::Table, target: usize) -> longrope_train::Result<longrope_train::Finetune> {
        let mut t = self.recipe.clone();
        t.insert("scaling".into(), toml::Value::Table(scaling));
        t.insert("target".into(), toml::Value::Integer(target as i64));
        let text = toml::to_string(&t).map_err(|e| longrope_train::TrainError::config(&self.origin, "(recipe)", e.to_string()))?;
        let file = longrope_train::FinetuneFile::parse(&text, &self.origin)?;
        longrope_train::Finetune::from_file(file, &self.origin, &self.base_dir)
    }
}

/// A validated evaluator entry.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSpec {
    /// Entry name.
    pub name: String,
    /// Evaluator plugin.
    pub evaluator: String,
    /// Its config table (with `evaluator = ...`), without the seed.
    pub table: toml::Table,
    /// Lengths.
    pub lengths: Vec<usize>,
    /// Method filter (base names).
    pub methods: Option<Vec<String>>,
    /// Model filter.
    pub models: Option<Vec<String>>,
    /// Seeds (`[None]` when no seed is set).
    pub seeds: Vec<Option<u64>>,
    /// Field that takes the seed.
    pub seed_field: String,
}

impl EvalSpec {
    /// The config table for one seed.
    pub fn table_for(&self, seed: Option<u64>) -> toml::Table {
        let mut t = self.table.clone();
        if let Some(s) = seed {
            t.insert(self.seed_field.clone(), toml::Value::Integer(s as i64));
        }
        t
    }
}

/// A validated experiment: everything resolved and checked, nothing computed.
#[derive(Debug)]
pub struct Experiment {
    /// The experiment file.
    pub path: PathBuf,
    /// The file as parsed.
    pub file: ExperimentFile,
    /// Models with resolved paths.
    pub models: Vec<ModelEntry>,
    /// Corpus paths, resolved.
    pub corpus: Vec<PathBuf>,
    /// Methods, ablation variants included (in file order, each base followed by its variants).
    pub methods: Vec<MethodSpec>,
    /// Searches, ablation variants included.
    pub searches: Vec<SearchSpec>,
    /// Evaluator entries.
    pub evals: Vec<EvalSpec>,
    /// Fine-tune steps, in file order.
    pub finetunes: Vec<FinetuneSpec>,
    /// Dynamic plugin libraries, resolved (loaded by [`Experiment::load`]; workers load them per cell).
    pub plugins: Vec<PathBuf>,
}

/// Set `path` (dotted) in `table` to `value`, creating intermediate tables.
pub fn set_field(table: &mut toml::Table, path: &str, value: toml::Value) -> std::result::Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().ok_or_else(|| "empty field path".to_string())?;
    let mut cur = table;
    for p in parts {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{p}` in `{path}` is not a table"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// How an ablation value appears in a variant name: strings bare, everything else as TOML.
pub fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every combination of the grid, in key order: `[(field, value)...]` per variant.
fn grid_product(grid: &toml::Table, origin: &Path, what: &str) -> Result<Vec<Vec<(String, toml::Value)>>> {
    if grid.is_empty() {
        return Err(ExperimentError::config(origin, format!("{what}: `grid` is empty")));
    }
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (field, values) in grid {
        let values = values.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
            ExperimentError::config(origin, format!("{what}: grid.{field} must be a non-empty list of values"))
        })?;
        let mut next = Vec::new();
        for c in &combos {
            for v in values {
                let mut c = c.clone();
                c.push((field.clone(), v.clone()));
                next.push(c);
            }
        }
        combos = next;
    }
    Ok(combos)
}

fn variant_name(base: &str, combo: &[(String, toml::Value)]) -> String {
    let parts: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={}", value_label(v))).collect();
    format!("{base}[{}]", parts.join(","))
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        dir.join(p)
    } else {
        p.to_path_buf()
    }
}

/// Parse a scaling table as its plugin does (unknown plugin or field is an error) and resolve its paths.
pub fn parse_scaling_table(table: &toml::Table, base_dir: &Path, origin: &str) -> longrope_core::Result<Box<dyn ScalingConfig>> {
    let text = toml::to_string(table).map_err(|e| longrope_core::Error::config(origin, e.to_string()))?;
    let mut config = parse_scaling_toml(&text, origin)?;
    config.resolve_relative_paths(base_dir);
    Ok(config)
}

/// Files a scaling table refers to (fields whose name ends in `_file`), resolved from `base_dir`.
pub fn referenced_files(table: &toml::Table, base_dir: &Path) -> Vec<(String, PathBuf)> {
    table
        .iter()
        .filter(|(k, _)| k.ends_with("_file"))
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), resolve(base_dir, Path::new(s)))))
        .collect()
}

impl Experiment {
    /// Read and validate an experiment file (every file it names must exist).
    pub fn load(path: &Path) -> Result<Experiment> {
        Self::load_with(path, true)
    }

    /// Read and validate; with `check_files = false` the model and corpus paths are not required to exist
    /// and a CUDA device need not be present (the full-scale configs name a model directory the user provides
    /// and a GPU). Everything else is checked.
    pub fn load_with(path: &Path, check_files: bool) -> Result<Experiment> {
        let text = longrope_core::files::read_text(path, longrope_core::files::MAX_CONFIG_BYTES)?;
        Self::parse_with(&text, path, check_files)
    }

    /// Parse and validate experiment text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Experiment> {
        Self::parse_with(text, path, true)
    }

    /// [`Experiment::parse`], optionally without requiring model and corpus paths to exist.
    pub fn parse_with(text: &str, path: &Path, check_files: bool) -> Result<Experiment> {
        let file: ExperimentFile = toml::from_str(text).map_err(|e| ExperimentError::config(path, e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let err = |m: String| ExperimentError::config(path, m);
        // Numeric fields go through `longrope_core::limits`; the error names the field, `err` the file.
        let bounded = |e: longrope_core::Error| ExperimentError::config(path, e.to_string());
        if let Some(t) = file.target {
            limits::context("target", t, 1).map_err(bounded)?;
        }

        // Dynamic plugins first: the methods below may name them.
        let libraries: Vec<PathBuf> = file.plugins.iter().map(|p| resolve(&dir, p)).collect();
        longrope_plugin_abi::host::load_plugins(&libraries).map_err(|e| err(format!("plugins: {e}")))?;

        // Models.
        if file.models.is_empty() {
            return Err(err("at least one [[model]] is required".into()));
        }
        let mut models = Vec::new();
        let mut names = BTreeSet::new();
        for m in &file.models {
            if !names.insert(m.name.clone()) {
                return Err(err(format!("[[model]] name `{}` is used twice", m.name)));
            }
            longrope_core::device::parse_dtype(&m.dtype).map_err(|e| err(format!("[[model]] `{}`: dtype: {e}", m.name)))?;
            let syntax_ok = m.device == "cpu"
                || m.device == "auto"
                || m.device == "cuda"
                || m.device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
            if !syntax_ok {
                return Err(err(format!("[[model]] `{}`: device `{}`: expected cpu, cuda, cuda:N or auto", m.name, m.device)));
            }
            if check_files && m.device != "auto" {
                longrope_core::device::parse_device(&m.device)
                    .map_err(|e| err(format!("[[model]] `{}`: device: {e}", m.name)))?;
            }
            let p = resolve(&dir, &m.path);
            if check_files && !p.exists() {
                return Err(err(format!("[[model]] `{}`: path {} does not exist", m.name, p.display())));
            }
            models.push(ModelEntry { path: p, ..m.clone() });
        }
        let loaded_names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        // Fine-tuned models are named like models by searches and evaluations.
        let mut model_names = loaded_names.clone();
        for f in &file.finetunes {
            if model_names.contains(&f.name) {
                return Err(err(format!("[[finetune]] name `{}` is already a [[model]] or [[finetune]] name", f.name)));
            }
            model_names.push(f.name.clone());
        }

        // Corpus.
        let mut corpus = Vec::new();
        if let Some(d) = &file.data {
            for c in &d.corpus {
                let p = resolve(&dir, c);
                if check_files && !p.exists() {
                    return Err(err(format!("[data] corpus: {} does not exist", p.display())));
                }
                corpus.push(p);
            }
        }

        // Searches.
        let mut searches = Vec::new();
        let mut search_tables: Vec<(toml::Table, PathBuf, String)> = Vec::new();
        for s in &file.searches {
            if searches.iter().any(|x: &SearchSpec| x.name == s.name) {
                return Err(err(format!("[[search]] name `{}` is used twice", s.name)));
            }
            let model = s.model.clone().unwrap_or_else(|| model_names[0].clone());
            if !model_names.contains(&model) {
                return Err(err(format!("[[search]] `{}`: unknown model `{model}`; known models: {}", s.name, model_names.join(", "))));
            }
            let (table, origin) = match (&s.file, &s.config) {
                (Some(f), None) => {
                    let p = resolve(&dir, f);
                    let t = longrope_core::files::read_text(&p, longrope_core::files::MAX_CONFIG_BYTES).map_err(|e| err(format!("[[search]] `{}`: file {e}", s.name)))?;
                    let table: toml::Table = toml::from_str(&t).map_err(|e| err(format!("[[search]] `{}`: {}: {e}", s.name, p.display())))?;
                    (table, p)
                }
                (None, Some(t)) => (t.clone(), path.to_path_buf()),
                _ => return Err(err(format!("[[search]] `{}`: give exactly one of `file` or `[search.config]`", s.name))),
            };
            let spec = Self::search_spec(&s.name, &s.name, &model, &table, &origin, s.strategy.as_deref(), &corpus, path, check_files)?;
            searches.push(spec);
            search_tables.push((table, origin, model));
        }

        // Methods.
        let mut methods: Vec<MethodSpec> = Vec::new();
        for m in &file.methods {
            if methods.iter().any(|x| x.name == m.name) {
                return Err(err(format!("[[method]] name `{}` is used twice", m.name)));
            }
            let source = match (&m.scaling, &m.config, &m.from_search) {
                (Some(spec), None, None) => {
                    let p = resolve(&dir, Path::new(spec));
                    if spec.ends_with(".toml") || p.exists() {
                        let t = longrope_core::files::read_text(&p, longrope_core::files::MAX_CONFIG_BYTES).map_err(|e| err(format!("[[method]] `{}`: scaling file {e}", m.name)))?;
                        let table: toml::Table = toml::from_str(&t).map_err(|e| err(format!("[[method]] `{}`: {}: {e}", m.name, p.display())))?;
                        MethodSource::Scaling { table, base_dir: p.parent().unwrap_or(Path::new("")).to_path_buf() }
                    } else {
                        registry::require(PluginKind::Scaling, spec).map_err(|e| err(format!("[[method]] `{}`: {e}", m.name)))?;
                        let mut table = toml::Table::new();
                        table.insert("method".into(), toml::Value::String(spec.clone()));
                        MethodSource::Scaling { table, base_dir: dir.clone() }
                    }
                }
                (None, Some(t), None) => MethodSource::Scaling { table: t.clone(), base_dir: dir.clone() },
                (None, None, Some(s)) => {
                    if !searches.iter().any(|x| &x.name == s) {
                        let known: Vec<&str> = searches.iter().map(|x| x.name.as_str()).collect();
                        return Err(err(format!("[[method]] `{}`: from_search `{s}` names no [[search]]; known searches: {}", m.name, if known.is_empty() { "(none)".to_string() } else { known.join(", ") })));
                    }
                    MethodSource::FromSearch(s.clone())
                }
                _ => return Err(err(format!("[[method]] `{}`: give exactly one of `scaling`, `[method.config]` or `from_search`", m.name))),
            };
            if let MethodSource::Scaling { table, base_dir } = &source {
                Self::check_scaling(table, base_dir, &format!("{} [[method]] `{}`", path.display(), m.name))?;
            }
            if let Some(t) = m.target {
                limits::context(&format!("[[method]] `{}` target", m.name), t, 1).map_err(bounded)?;
            }
            methods.push(MethodSpec { name: m.name.clone(), base: m.name.clone(), source, target: m.target, ablation: Vec::new() });
        }
        if methods.is_empty() {
            return Err(err("at least one [[method]] is required".into()));
        }

        // Ablations.
        for (i, a) in file.ablations.iter().enumerate() {
            let what = format!("[[ablation]] #{}", i + 1);
            match (&a.method, &a.search) {
                (Some(mname), None) => {
                    let base = methods.iter().find(|m| &m.name == mname && m.ablation.is_empty()).cloned().ok_or_else(|| {
                        err(format!("{what}: method `{mname}` names no [[method]]; known methods: {}", file.methods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")))
                    })?;
                    let MethodSource::Scaling { table, base_dir } = &base.source else {
                        return Err(err(format!("{what}: method `{mname}` comes from a search: ablate the search instead (`search = ...`)")));
                    };
                    let pos = methods.iter().rposition(|m| m.base == base.name).unwrap_or(methods.len() - 1);
                    let mut variants = Vec::new();
                    for combo in grid_product(&a.grid, path, &what)? {
                        let mut t = table.clone();
                        for (k, v) in &combo {
                            set_field(&mut t, k, v.clone()).map_err(|m| err(format!("{what}: grid.{k}: {m}")))?;
                        }
                        let name = variant_name(&base.name, &combo);
                        Self::check_scaling(&t, base_dir, &format!("{} {what} ({name})", path.display()))?;
                        variants.push(MethodSpec {
                            name,
                            base: base.name.clone(),
                            source: MethodSource::Scaling { table: t, base_dir: base_dir.clone() },
                            target: base.target,
                            ablation: combo.iter().map(|(k, v)| (k.clone(), value_label(v))).collect(),
                        });
                    }
                    methods.splice(pos + 1..pos + 1, variants);
                }
                (None, Some(sname)) => {
                    let idx = file.searches.iter().position(|s| &s.name == sname).ok_or_else(|| {
                        err(format!("{what}: search `{sname}` names no [[search]]; known searches: {}", file.searches.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")))
                    })?;
                    let (table, origin, model) = search_tables[idx].clone();
                    let strategy = file.searches[idx].strategy.clone();
                    for combo in grid_product(&a.grid, path, &what)? {
                        let mut t = table.clone();
                        for (k, v) in &combo {
                            set_field(&mut t, k, v.clone()).map_err(|m| err(format!("{what}: grid.{k}: {m}")))?;
                        }
                        let name = variant_name(sname, &combo);
                        let spec = Self::search_spec(&name, sname, &model, &t, &origin, strategy.as_deref(), &corpus, path, check_files)?;
                        searches.push(spec);
                        // Every method built from the base search is evaluated for this variant too.
                        let users: Vec<MethodSpec> = methods
                            .iter()
                            .filter(|m| m.source == MethodSource::FromSearch(sname.clone()) && m.ablation.is_empty())
                            .cloned()
                            .collect();
                        for u in users {
                            let pos = methods.iter().rposition(|m| m.base == u.name).unwrap_or(methods.len() - 1);
                            methods.insert(pos + 1, MethodSpec {
                                name: variant_name(&u.name, &combo),
                                base: u.name.clone(),
                                source: MethodSource::FromSearch(name.clone()),
                                target: u.target,
                                ablation: combo.iter().map(|(k, v)| (k.clone(), value_label(v))).collect(),
                            });
                        }
                    }
                }
                _ => return Err(err(format!("{what}: give exactly one of `method` or `search`"))),
            }
        }

        // Evaluators.
        let mut evals: Vec<EvalSpec> = Vec::new();
        if file.evals.is_empty() {
            return Err(err("at least one [[eval]] is required".into()));
        }
        let base_names: BTreeSet<&str> = methods.iter().map(|m| m.base.as_str()).chain(methods.iter().map(|m| m.name.as_str())).collect();
        for e in &file.evals {
            let name = e.name.clone().unwrap_or_else(|| e.evaluator.clone());
            if evals.iter().any(|x| x.name == name) {
                return Err(err(format!("[[eval]] name `{name}` is used twice (give each entry a distinct `name`)")));
            }
            let mut table = e.config.clone().unwrap_or_default();
            if table.contains_key("evaluator") {
                return Err(err(format!("[[eval]] `{name}`: put `evaluator` in the [[eval]] table, not in [eval.config]")));
            }
            table.insert("evaluator".into(), toml::Value::String(e.evaluator.clone()));
            let seeds: Vec<Option<u64>> = if e.seeds.is_empty() { vec![None] } else { e.seeds.iter().map(|&s| Some(s)).collect() };
            let spec = EvalSpec {
                name: name.clone(),
                evaluator: e.evaluator.clone(),
                table,
                lengths: e.lengths.clone(),
                methods: e.methods.clone(),
                models: e.models.clone(),
                seeds,
                seed_field: e.seed_field.clone(),
            };
            if spec.lengths.is_empty() {
                return Err(err(format!("[[eval]] `{name}`: lengths must be a non-empty list of lengths >= 8")));
            }
            for &l in &spec.lengths {
                limits::context(&format!("[[eval]] `{name}` lengths"), l, limits::MIN_EVAL_LENGTH).map_err(bounded)?;
            }
            limits::distinct(&format!("[[eval]] `{name}` lengths"), &spec.lengths).map_err(bounded)?;
            limits::distinct(&format!("[[eval]] `{name}` seeds"), &e.seeds).map_err(bounded)?;
            for seed in &spec.seeds {
                let text = toml::to_string(&spec.table_for(*seed)).map_err(|x| err(x.to_string()))?;
                let origin = format!("{} [[eval]] `{name}`", path.display());
                let config = parse_evaluator_toml(&text, &origin)?;
                config.build().map_err(|x| err(format!("[[eval]] `{name}`: {x}")))?;
            }
            if let Some(ms) = &spec.methods {
                for m in ms {
                    if !base_names.contains(m.as_str()) {
                        return Err(err(format!("[[eval]] `{name}`: methods: unknown method `{m}`; known methods: {}", file.methods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "))));
                    }
                }
            }
            if let Some(ms) = &spec.models {
                for m in ms {
                    if !model_names.contains(m) {
                        return Err(err(format!("[[eval]] `{name}`: models: unknown model `{m}`; known models: {}", model_names.join(", "))));
                    }
                }
            }
            if e.evaluator != "passkey" && corpus.is_empty() {
                return Err(err(format!("[[eval]] `{name}`: evaluator `{}` reads documents: add [data] corpus = [...]", e.evaluator)));
            }
            evals.push(spec);
        }
        // Fine-tunes.
        let mut finetunes = Vec::new();
        for f in &file.finetunes {
            let what = format!("[[finetune]] `{}`", f.name);
            let model = f.model.clone().unwrap_or_else(|| loaded_names[0].clone());
            let base = models.iter().find(|m| m.name == model).ok_or_else(|| {
                err(format!("{what}: model `{model}` names no [[model]] (a fine-tune starts from a [[model]]); known models: {}", loaded_names.join(", ")))
            })?;
            let method = methods.iter().find(|m| m.name == f.method && m.ablation.is_empty()).ok_or_else(|| {
                err(format!("{what}: method `{}` names no [[method]]; known methods: {}", f.method, file.methods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")))
            })?;
            let (mut recipe, base_dir) = match (&f.file, &f.config) {
                (Some(p), None) => {
                    let p = resolve(&dir, p);
                    let text = longrope_core::files::read_text(&p, longrope_core::files::MAX_CONFIG_BYTES).map_err(|e| err(format!("{what}: file {e}")))?;
                    let t: toml::Table = toml::from_str(&text).map_err(|e| err(format!("{what}: {}: {e}", p.display())))?;
                    (t, p.parent().unwrap_or(Path::new("")).to_path_buf())
                }
                (None, Some(t)) => (t.clone(), dir.clone()),
                _ => return Err(err(format!("{what}: give exactly one of `file` or `[finetune.config]`"))),
            };
            let model_table = recipe.entry("model").or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let model_table = model_table.as_table_mut().ok_or_else(|| err(format!("{what}: `model` in the recipe must be a table")))?;
            let base_path = std::path::absolute(&base.path).unwrap_or_else(|_| base.path.clone());
            model_table.insert("path".into(), toml::Value::String(base_path.display().to_string()));
            let spec = FinetuneSpec {
                name: f.name.clone(),
                model: model.clone(),
                method: f.method.clone(),
                recipe,
                base_dir,
                origin: format!("{} {what}", path.display()),
            };
            // Validate the recipe now with the method's scaling (a searched method's factors come later: its
            // recipe is checked with `none` and the search's target).
            let (scaling, target) = match &method.source {
                MethodSource::Scaling { table, .. } => (table.clone(), method.target.or(file.target)),
                MethodSource::FromSearch(s) => {
                    let search = searches.iter().find(|x| &x.name == s).expect("checked with the methods");
                    (toml::from_str("method = \"none\"").expect("valid"), Some(search.file.target_length))
                }
            };
            let target = target.ok_or_else(|| err(format!("{what}: the method `{}` has no target: set `target` on the [[method]] or the experiment", f.method)))?;
            if check_files {
                spec.build(scaling, target).map_err(ExperimentError::Train)?;
            }
            finetunes.push(spec);
        }
        Ok(Experiment { path: path.to_path_buf(), file, models, corpus, methods, searches, evals, finetunes, plugins: libraries })
    }

    fn check_scaling(table: &toml::Table, base_dir: &Path, origin: &str) -> Result<()> {
        parse_scaling_table(table, base_dir, origin)?;
        for (field, p) in referenced_files(table, base_dir) {
            if !p.exists() {
                return Err(ExperimentError::Core(longrope_core::Error::config(origin, format!("{field}: {} does not exist", p.display()))));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn search_spec(
        name: &str,
        base: &str,
        model: &str,
        table: &toml::Table,
        origin: &Path,
        strategy: Option<&str>,
        corpus: &[PathBuf],
        experiment: &Path,
        check_files: bool,
    ) -> Result<SearchSpec> {
        let text = toml::to_string(table).map_err(|e| ExperimentError::config(experiment, e.to_string()))?;
        let label = format!("{} ([[search]] `{name}` of {})", origin.display(), experiment.display());
        let mut file = SearchFile::parse(&text, &origin.display().to_string()).map_err(|e| match e {
            longrope_search::SearchError::Config { message, .. } => ExperimentError::config(experiment, format!("[[search]] `{name}` ({}): {message}", origin.display())),
            other => other.into(),
        })?;
        if let Some(s) = strategy {
            file.switch_strategy(s)?;
        }
        for c in &file.fitness.corpus {
            if check_files && !c.exists() {
                return Err(ExperimentError::config(experiment, format!("{label}: fitness.corpus: {} does not exist", c.display())));
            }
        }
        if file.fitness.corpus.is_empty() && corpus.is_empty() {
            return Err(ExperimentError::config(experiment, format!("{label}: no documents: set fitness.corpus or the experiment's [data] corpus")));
        }
        Ok(SearchSpec { name: name.to_string(), base: base.to_string(), model: model.to_string(), file })
    }

    /// The methods an evaluator entry runs on a model: its `methods` filter (names and ablation bases) over
    /// the model's methods. A `[[model]]` runs every method except those from a search on another model; a
    /// fine-tuned model runs the method it was trained under and those from searches on itself.
    pub fn methods_for(&self, eval: &EvalSpec, model: &str) -> Vec<&MethodSpec> {
        let search_model = |s: &str| self.searches.iter().find(|x| x.name == s).map(|x| x.model.as_str());
        let finetune = self.finetunes.iter().find(|f| f.name == model);
        self.methods
            .iter()
            .filter(|m| {
                if finetune.is_some_and(|f| f.method == m.name) {
                    return true;
                }
                match &m.source {
                    MethodSource::FromSearch(s) => search_model(s) == Some(model),
                    MethodSource::Scaling { .. } => finetune.is_none(),
                }
            })
            .filter(|m| eval.methods.as_ref().is_none_or(|f| f.iter().any(|n| n == &m.name || n == &m.base)))
            .collect()
    }

    /// Whether an evaluator entry runs on a model.
    pub fn eval_runs_on(&self, eval: &EvalSpec, model: &str) -> bool {
        eval.models.as_ref().is_none_or(|f| f.iter().any(|n| n == model))
    }

    /// The longest length any evaluator asks of a model.
    pub fn longest_length(&self, model: &str) -> usize {
        self.evals.iter().filter(|e| self.eval_runs_on(e, model)).flat_map(|e| e.lengths.iter().copied()).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_field_creates_nested_tables_and_refuses_non_tables() {
        let mut t: toml::Table = toml::from_str("a = 1\n[space]\nkind = \"dim_mono\"\n").unwrap();
        set_field(&mut t, "space.kind", toml::Value::String("dim_piece_mono".into())).unwrap();
        set_field(&mut t, "strategy.iterations", toml::Value::Integer(3)).unwrap();
        assert_eq!(t["space"]["kind"].as_str(), Some("dim_piece_mono"));
        assert_eq!(t["strategy"]["iterations"].as_integer(), Some(3));
        let err = set_field(&mut t, "a.b", toml::Value::Integer(1)).unwrap_err();
        assert!(err.contains("`a`"), "{err}");
    }

    #[test]
    fn grid_is_the_cartesian_product_in_key_order() {
        let grid: toml::Table = toml::from_str("n_hat = [0, 4, 64]\nattention_policy = [\"su\", \"yarn\"]\n").unwrap();
        let combos = grid_product(&grid, Path::new("x.toml"), "[[ablation]] #1").unwrap();
        let names: Vec<String> = combos.iter().map(|c| variant_name("m", c)).collect();
        assert_eq!(
            names,
            [
                "m[attention_policy=su,n_hat=0]",
                "m[attention_policy=su,n_hat=4]",
                "m[attention_policy=su,n_hat=64]",
                "m[attention_policy=yarn,n_hat=0]",
                "m[attention_policy=yarn,n_hat=4]",
                "m[attention_policy=yarn,n_hat=64]",
            ]
        );
        let empty: toml::Table = toml::from_str("n_hat = []\n").unwrap();
        let err = grid_product(&empty, Path::new("x.toml"), "[[ablation]] #1").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("grid.n_hat"), "{err}");
    }

    #[test]
    fn unknown_top_level_field_is_named() {
        let err = Experiment::parse("name = \"x\"\nmodels = []\n", Path::new("e.toml")).unwrap_err().to_string();
        assert!(err.starts_with("e.toml: ") && err.contains("unknown field `models`") && err.contains("`model`"), "{err}");
    }
}
