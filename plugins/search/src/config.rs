//! Search configuration: the `SearchConfig` plugin trait (selected by `strategy = "NAME"` through `typetag`)
//! and the whole search file (`configs/search/*.toml`) that `longrope search --config` reads.
//!
//! Layout of a search file (every table rejects unknown fields):
//! ```toml
//! seed = 0                 # RNG seed of the strategy
//! target_length = 16384    # L', the length the fitness is measured at
//! workers = 1              # parallel fitness workers (devices or CPU threads)
//! [model]                  # the model the fitness loads once (path, dtype, device)
//! [shape]                  # RoPE shape; read from the model when absent (required by the synthetic fitness)
//! [fitness]                # evaluator (ppl | needle-ppl ...), documents, dataset_min_tokens, corpus, racing
//! [space]                  # see `SpaceConfig`: mode, dim_mono | dim_piece_mono, step, max_factor, seeds, n_hat ...
//! [strategy]               # strategy = "evolution" | "random" | "grid" and its hyperparameters
//! ```

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use longrope_core::registry::{self, PluginKind};
use longrope_core::search::Candidate;
use longrope_core::{RopeShape, SearchStrategy};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::fitness::Racing;
use crate::seeds::{RegistrySeeds, Seed, SeedSource};
use crate::space::{SearchSpace, SpaceConfig};

/// What a strategy is built with: the resolved space, the seeds of the initial population, the RNG seed.
#[derive(Debug, Clone)]
pub struct SearchContext {
    /// The resolved search space.
    pub space: SearchSpace,
    /// Seeds (PI, NTK, YaRN factors by default); strategies that do not use seeds ignore them.
    pub seeds: Vec<Seed>,
    /// RNG seed.
    pub seed: u64,
}

impl SearchContext {
    /// Each seed as the candidate it becomes in this space (snapped to the grid, made monotone, projected):
    /// what an evolution evaluates in its initial population. The driver uses them to report the seeds'
    /// fitness next to the search's best ([`crate::outputs::SeedResult`]).
    pub fn seed_candidates(&self) -> Result<Vec<(String, Candidate)>> {
        self.seeds
            .iter()
            .map(|s| {
                let g = self.space.genome_from_factors(&s.factors, Some(s.attn_factor)).map_err(|e| {
                    SearchError::invalid(format!("seed `{}`", s.name), e.to_string())
                })?;
                Ok((s.name.clone(), self.space.candidate(&g)))
            })
            .collect()
    }
}

/// A strategy's configuration as written in the `[strategy]` table; `typetag` selects it by `strategy`.
#[typetag::serde(tag = "strategy")]
pub trait SearchConfig: Debug + Send + Sync {
    /// The number of evaluations the strategy will ask for.
    fn budget(&self) -> usize;
    /// Validate and build the runtime strategy.
    fn build(&self, ctx: &SearchContext) -> Result<Box<dyn SearchStrategy>>;
}

/// The `[model]` table: which model the fitness loads (once) and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A `.gguf` file or an HF model directory; relative paths are taken from the config file's directory.
    pub path: PathBuf,
    /// Compute dtype (`f32`, `bf16`, `f16`); default: the app's.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Device (`cpu`, `cuda`, `cuda:N`, `auto`); default: the app's.
    #[serde(default)]
    pub device: Option<String>,
}

/// The `[shape]` table: the RoPE shape of the model (without the target length, which is `target_length`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeSection {
    /// Head dimension `d`.
    pub head_dim: usize,
    /// RoPE base (HF `rope_theta`).
    pub rope_base: f64,
    /// The trained context `L`.
    pub original_max_position_embeddings: usize,
    /// Number of layers.
    pub num_layers: usize,
}

fn default_evaluator() -> String {
    "ppl".into()
}
fn default_documents() -> usize {
    1
}
fn default_workers() -> usize {
    1
}

/// The `[fitness]` table: which evaluator measures a candidate, on which documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitnessSection {
    /// Evaluator plugin (default `ppl`; `needle-ppl` for LongRoPE2-style search).
    #[serde(default = "default_evaluator")]
    pub evaluator: String,
    /// Number of documents evaluated per candidate (default 1).
    #[serde(default = "default_documents")]
    pub documents: usize,
    /// `ppl`: skip documents with fewer tokens (the reference's `--dataset-min-tokens`); default the target length,
    /// so every document fills the window.
    #[serde(default)]
    pub dataset_min_tokens: Option<usize>,
    /// Corpus files the documents are taken from; relative paths from the config file's directory.
    #[serde(default)]
    pub corpus: Vec<PathBuf>,
    /// Racing over the documents: `off` (default), `exact`, `observed` or `paired` ([`Racing`], `docs/search.md`).
    #[serde(default, skip_serializing_if = "Racing::is_off")]
    pub racing: Racing,
}

impl Default for FitnessSection {
    fn default() -> Self {
        FitnessSection {
            evaluator: default_evaluator(),
            documents: default_documents(),
            dataset_min_tokens: None,
            corpus: Vec::new(),
            racing: Racing::Off,
        }
    }
}

/// A whole search file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchFile {
    /// RNG seed of the strategy (default 0).
    #[serde(default)]
    pub seed: u64,
    /// The target length `L'` the fitness is measured at.
    pub target_length: usize,
    /// Parallel fitness workers (default 1).
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// The model (absent: only the synthetic fitness can run).
    #[serde(default)]
    pub model: Option<ModelSection>,
    /// The RoPE shape (absent: read from the model).
    #[serde(default)]
    pub shape: Option<ShapeSection>,
    /// The fitness.
    #[serde(default)]
    pub fitness: FitnessSection,
    /// The search space.
    #[serde(default)]
    pub space: SpaceConfig,
    /// The strategy and its hyperparameters.
    pub strategy: Box<dyn SearchConfig>,
}

impl SearchFile {
    /// Parse a search file from TOML text; `origin` names it in errors. Unknown strategies list the known ones.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let value: toml::Value = toml::from_str(text).map_err(|e| SearchError::config(origin, e.to_string()))?;
        let name = value
            .get("strategy")
            .and_then(|s| s.get("strategy"))
            .and_then(|s| s.as_str())
            .ok_or_else(|| SearchError::config(origin, "missing `[strategy]` table with a string field `strategy`"))?;
        registry::require(PluginKind::Search, name)?;
        let mut file: SearchFile = toml::from_str(text).map_err(|e| SearchError::config(origin, e.to_string()))?;
        file.validate(origin)?;
        let base = Path::new(origin).parent().unwrap_or(Path::new(""));
        if let Some(m) = &mut file.model {
            if m.path.is_relative() && Path::new(origin).exists() {
                m.path = base.join(&m.path);
            }
        }
        if Path::new(origin).exists() {
            for c in &mut file.fitness.corpus {
                if c.is_relative() {
                    *c = base.join(&*c);
                }
            }
        }
        Ok(file)
    }

    /// Read and parse a search file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = longrope_core::files::read_text(path, longrope_core::files::MAX_CONFIG_BYTES)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Check the common fields; numeric ones against `longrope_core::limits`, the error naming the field and
    /// `origin` (the file).
    pub fn validate(&self, origin: &str) -> Result<()> {
        use longrope_core::limits;
        let bounded = |e: longrope_core::Error| SearchError::config(origin, e.to_string());
        if self.target_length == 0 {
            return Err(SearchError::config(origin, "target_length must be positive"));
        }
        limits::context("target_length", self.target_length, limits::MIN_EVAL_LENGTH).map_err(bounded)?;
        if self.workers == 0 {
            return Err(SearchError::config(origin, "workers must be at least 1"));
        }
        limits::int_in("workers", self.workers, 1, 1024, "parallel fitness workers").map_err(bounded)?;
        if self.fitness.documents == 0 {
            return Err(SearchError::config(origin, "fitness.documents must be at least 1"));
        }
        limits::int_in("fitness.documents", self.fitness.documents, 1, 1 << 20, "documents per candidate").map_err(bounded)?;
        if let Some(m) = self.space.max_factor {
            limits::scale("space.max_factor", m, 1.0).map_err(bounded)?;
        }
        limits::int_in("space.n_hat", self.space.n_hat, 0, limits::MAX_CONTEXT, "retained start tokens").map_err(bounded)?;
        for (i, &n) in self.space.n_hat_values.iter().enumerate() {
            limits::int_in(&format!("space.n_hat_values[{i}]"), n, 0, limits::MAX_CONTEXT, "retained start tokens").map_err(bounded)?;
        }
        if let Some(shape) = self.shape() {
            shape.validate().map_err(|e| SearchError::config(origin, format!("[shape]: {e}")))?;
        }
        if self.strategy.budget() == 0 {
            return Err(SearchError::config(origin, "the strategy's budget is 0 evaluations"));
        }
        Ok(())
    }

    /// The RoPE shape from the `[shape]` table and `target_length`, if the table is present.
    pub fn shape(&self) -> Option<RopeShape> {
        self.shape.as_ref().map(|s| RopeShape {
            head_dim: s.head_dim,
            rope_base: s.rope_base,
            original_max_position_embeddings: s.original_max_position_embeddings,
            max_position_embeddings: self.target_length,
            num_layers: s.num_layers,
        })
    }

    /// The seeds the `[space]` table means for a model architecture (`summary.arch`; `None` when no model is
    /// loaded, e.g. the synthetic fitness), from the scaling registry: [`SpaceConfig::seed_specs`].
    pub fn registry_seeds(&self, arch: Option<&str>) -> RegistrySeeds {
        RegistrySeeds { methods: self.space.seed_specs(arch) }
    }

    /// Resolve the space for `shape`, fetch the seeds (none when `space.seeds` is empty) and build the strategy.
    pub fn build(&self, shape: &RopeShape, seeds: &dyn SeedSource) -> Result<(Box<dyn SearchStrategy>, SearchContext)> {
        let space = SearchSpace::new(&self.space, shape)?;
        let no_seeds = self.space.seeds.as_ref().is_some_and(|v| v.is_empty());
        let seeds = if no_seeds { Vec::new() } else { seeds.seeds(shape)? };
        let ctx = SearchContext { space, seeds, seed: self.seed };
        Ok((self.strategy.build(&ctx)?, ctx))
    }

    /// Build the strategy from given seeds (a study's stored ones, [`SearchFile::study_derived`]) instead of
    /// fetching them: how a worker rebuilds the strategy of a study it joins.
    pub fn build_with_seeds(&self, shape: &RopeShape, seeds: Vec<Seed>) -> Result<(Box<dyn SearchStrategy>, SearchContext)> {
        let space = SearchSpace::new(&self.space, shape)?;
        let ctx = SearchContext { space, seeds, seed: self.seed };
        Ok((self.strategy.build(&ctx)?, ctx))
    }

    /// What a study stores beside its config for workers to rebuild the strategy: the seeds (their factors are
    /// computed from the scaling registry and the model's architecture, which a worker may not share).
    pub fn study_derived(ctx: &SearchContext) -> serde_json::Value {
        serde_json::json!({ "seeds": ctx.seeds })
    }

    /// The search file, its resolved RoPE shape and its fitness kind (`model`, `synthetic`) from a study's
    /// config (a run's [`SearchFile::meta`] without `inputs`) and its derived values' seeds.
    pub fn from_study(config: &serde_json::Value, derived: &serde_json::Value) -> Result<(SearchFile, RopeShape, String, Vec<Seed>)> {
        let origin = "the study's config";
        let mut v = config.clone();
        let o = v.as_object_mut().ok_or_else(|| SearchError::config(origin, "not a JSON object"))?;
        let shape: RopeShape = o
            .remove("resolved_shape")
            .and_then(|s| serde_json::from_value(s).ok())
            .ok_or_else(|| SearchError::config(origin, "no `resolved_shape`"))?;
        let kind = o.remove("fitness_kind").and_then(|k| k.as_str().map(str::to_string)).unwrap_or_else(|| "model".into());
        o.remove("inputs");
        let file: SearchFile = serde_json::from_value(v).map_err(|e| SearchError::config(origin, e.to_string()))?;
        file.validate(origin)?;
        let seeds: Vec<Seed> = match derived.get("seeds") {
            Some(s) => serde_json::from_value(s.clone()).map_err(|e| SearchError::config("the study's seeds", e.to_string()))?,
            None => Vec::new(),
        };
        Ok((file, shape, kind, seeds))
    }

    /// A copy with the `[model]` table and the fitness corpus set (an experiment's search step, whose model is
    /// the experiment's, run as a study that workers elsewhere must be able to load).
    pub fn clone_with_model(&self, path: PathBuf, dtype: String, device: String, corpus: Vec<PathBuf>) -> Result<SearchFile> {
        let mut v = serde_json::to_value(self).map_err(|e| SearchError::config("search", e.to_string()))?;
        v["model"] = serde_json::to_value(ModelSection { path, dtype: Some(dtype), device: Some(device) })
            .map_err(|e| SearchError::config("search", e.to_string()))?;
        v["fitness"]["corpus"] = serde_json::to_value(corpus).map_err(|e| SearchError::config("search", e.to_string()))?;
        serde_json::from_value(v).map_err(|e| SearchError::config("search", e.to_string()))
    }

    /// What identifies the run in its checkpoint: the whole file as JSON plus the shape, without `workers`
    /// (the worker count does not change results, so a search may resume on other hardware).
    pub fn meta(&self, shape: &RopeShape) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = v.as_object_mut() {
            map.remove("workers");
            map.insert("resolved_shape".into(), serde_json::to_value(shape).unwrap_or_default());
        }
        v
    }

    /// Replace the strategy by another plugin with the same budget (`strategy = NAME, budget = B`): how the
    /// random and grid baselines are run against an evolution config. Same name: no change.
    pub fn switch_strategy(&mut self, name: &str) -> Result<()> {
        let current = serde_json::to_value(&self.strategy).map_err(|e| SearchError::config("[strategy]", e.to_string()))?;
        if current.get("strategy").and_then(|s| s.as_str()) == Some(name) {
            return Ok(());
        }
        let origin = format!("--strategy {name}");
        registry::require(PluginKind::Search, name)?;
        let text = format!("strategy = {name:?}\nbudget = {}\n", self.strategy.budget());
        self.strategy = toml::from_str::<Box<dyn SearchConfig>>(&text).map_err(|e| {
            SearchError::config(&origin, format!("cannot build it with the same budget ({text:?}): {e}"))
        })?;
        Ok(())
    }
}
