//! An experiment cell as a trial: [`CellTask`] is everything a process needs to compute one cell (the runner
//! itself, or `longrope worker` on another machine), [`Models`] keeps one loaded model per process, and
//! [`compute_cell`] evaluates the task into a [`CellResult`]. The task carries the content identity of the
//! model and corpus the runner keyed the cell with; [`Models`] checks it against the files the worker
//! reads, so a machine whose copy of the model or corpus differs refuses the cell instead of mixing inputs.

use std::collections::HashMap;
use std::path::PathBuf;

use longrope_core::eval::{parse_evaluator_toml, TokenSource};
use longrope_core::model::{LanguageModel, LoadOptions};
use longrope_core::scaling::RopeSchedule;
use longrope_data::corpus::CorpusSet;
use serde::{Deserialize, Serialize};

use crate::config::{parse_scaling_table, ModelEntry};
use crate::error::{ExperimentError, Result};
use crate::runner::CellResult;

/// One cell to compute: the payload of an experiment trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellTask {
    /// The progress label (`[ 3/26] model method eval@length`).
    pub label: String,
    /// The experiment file (for messages).
    pub experiment: PathBuf,
    /// Dynamic plugin libraries the experiment loads.
    #[serde(default)]
    pub plugins: Vec<PathBuf>,
    /// The model (name, path, dtype, device).
    pub model: ModelEntry,
    /// The corpus the evaluators read (resolved paths).
    pub corpus: Vec<PathBuf>,
    /// The identity of the inputs the cell is keyed with (`crate::identity::inputs`).
    pub inputs: serde_json::Value,
    /// Method name.
    pub method: String,
    /// The `[[method]]` it derives from.
    pub method_base: String,
    /// Ablation settings.
    pub ablation: Vec<(String, String)>,
    /// `[[eval]]` entry name.
    pub eval: String,
    /// Evaluator plugin.
    pub evaluator: String,
    /// The evaluator's table (with the seed).
    pub eval_table: toml::Table,
    /// Context length.
    pub length: usize,
    /// Seed.
    pub seed: Option<u64>,
    /// The method's scaling table.
    pub scaling_table: toml::Table,
    /// The directory its relative paths are resolved from.
    pub base_dir: PathBuf,
    /// Target `L'`; `None`: `max(longest, trained context)`.
    pub target: Option<usize>,
    /// The longest length evaluated on the model.
    pub longest: usize,
}

/// The model a process has loaded, with the corpora it tokenized and the identities it verified.
struct Loaded {
    key: (PathBuf, String, String),
    model: Box<dyn LanguageModel>,
    corpora: HashMap<Vec<PathBuf>, CorpusSet>,
}

/// One loaded model per process: a cell or search trial on another model replaces it.
#[derive(Default)]
pub struct Models {
    loaded: Option<Loaded>,
    verified: HashMap<String, bool>,
    device: Option<String>,
}

/// An identity without the device (a worker may run the same model on another device).
fn without_device(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("model").and_then(|m| m.as_object_mut()) {
        m.remove("device");
    }
    v
}

impl Models {
    /// Models on their configured devices.
    pub fn new() -> Self {
        Models::default()
    }

    /// Models on `device` whatever the config says (`longrope worker --device cuda:1`).
    pub fn on_device(device: Option<String>) -> Self {
        Models { device, ..Models::default() }
    }

    /// The device a model entry runs on here.
    pub fn device_for(&self, configured: &str) -> String {
        self.device.clone().unwrap_or_else(|| configured.to_string())
    }

    /// The model `path` in `dtype` on `device` (or this process's device), loaded once.
    pub fn model(&mut self, path: &std::path::Path, dtype: &str, device: &str, log: &mut dyn FnMut(String)) -> Result<&dyn LanguageModel> {
        let device = self.device_for(device);
        let key = (path.to_path_buf(), dtype.to_string(), device.clone());
        if self.loaded.as_ref().is_none_or(|l| l.key != key) {
            self.loaded = None;
            log(format!("loading model {} ({dtype} on {device})", path.display()));
            let model = load_model(path, dtype, &device)?;
            self.loaded = Some(Loaded { key, model, corpora: HashMap::new() });
        }
        Ok(self.loaded.as_ref().expect("loaded above").model.as_ref())
    }

    /// The summary of the loaded model, if it is `path` in `dtype` on `device` (or this process's device).
    pub fn summary_of(&self, path: &std::path::Path, dtype: &str, device: &str) -> Option<longrope_core::model::ModelSummary> {
        let key = (path.to_path_buf(), dtype.to_string(), self.device_for(device));
        self.loaded.as_ref().filter(|l| l.key == key).map(|l| l.model.summary().clone())
    }

    /// The loaded model and `paths` tokenized with its tokenizer (cached). Call [`Models::model`] first.
    pub fn with_corpus(&mut self, paths: &[PathBuf]) -> Result<(&dyn LanguageModel, &CorpusSet)> {
        let l = self.loaded.as_mut().ok_or_else(|| ExperimentError::config("worker", "no model loaded"))?;
        if !l.corpora.contains_key(paths) {
            let set = CorpusSet::open(paths, l.model.tokenizer())?;
            l.corpora.insert(paths.to_vec(), set);
        }
        Ok((l.model.as_ref(), &l.corpora[paths]))
    }

    /// Check that the model and corpus here have the content `expected` (an identity from
    /// [`crate::identity::inputs`]), ignoring the device; cached per identity.
    pub fn verify(&mut self, model: &ModelEntry, corpus: Option<&[PathBuf]>, expected: &serde_json::Value) -> Result<()> {
        let tag = serde_json::to_string(expected).unwrap_or_default();
        let ok = match self.verified.get(&tag) {
            Some(ok) => *ok,
            None => {
                let here = crate::identity::inputs(&model.path, &model.dtype, &model.device, corpus)?;
                let ok = without_device(&here) == without_device(expected);
                self.verified.insert(tag, ok);
                ok
            }
        };
        if ok {
            Ok(())
        } else {
            Err(ExperimentError::config(
                &model.path,
                "the model or the corpus here differs in content from the one the experiment was keyed with (another \
                 copy of the files on this machine?): this worker does not compute its cells",
            ))
        }
    }
}

/// Load a model entry's model on a device (`auto`: CUDA 0 when available).
pub fn load_model(path: &std::path::Path, dtype: &str, device: &str) -> Result<Box<dyn LanguageModel>> {
    let device = if device == "auto" {
        longrope_core::device::ensure_cuda_loaded();
        if tch::Cuda::is_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu }
    } else {
        longrope_core::device::parse_device(device)?
    };
    let options = LoadOptions { device, dtype: longrope_core::device::parse_dtype(dtype)?, sliding_window: None };
    Ok(longrope_models::load(path, &options)?)
}

/// Compute a cell on the model `models` holds (loading it when needed).
pub fn compute_cell(task: &CellTask, models: &mut Models, log: &mut dyn FnMut(String)) -> Result<CellResult> {
    longrope_plugin_abi::host::load_plugins(&task.plugins)
        .map_err(|e| ExperimentError::config(&task.experiment, format!("plugins: {e}")))?;
    let reads_corpus = !task.corpus.is_empty() && task.inputs.get("data").is_some_and(|d| !d.is_null());
    models.verify(&task.model, reads_corpus.then_some(task.corpus.as_slice()), &task.inputs)?;
    models.model(&task.model.path, &task.model.dtype, &task.model.device, log)?;
    let empty = longrope_data::corpus::TokenDocs::default();
    let (model, source): (&dyn LanguageModel, &dyn TokenSource) = if task.corpus.is_empty() {
        (models.model(&task.model.path, &task.model.dtype, &task.model.device, log)?, &empty)
    } else {
        let (m, c) = models.with_corpus(&task.corpus)?;
        (m, c)
    };
    let s = model.summary().clone();
    let trained = s.original_context();
    let target = task.target.unwrap_or_else(|| task.longest.max(trained));
    let config = parse_scaling_table(&task.scaling_table, &task.base_dir, &task.method)?;
    let schedule = RopeSchedule::new(config.as_ref(), s.rope_shape(target))
        .and_then(|sc| sc.tables(task.length).map(|_| sc))
        .map_err(|e| ExperimentError::config(&task.experiment, format!("[[method]] `{}` at {} tokens: {e}", task.method, task.length)))?;
    let text = toml::to_string(&task.eval_table).expect("tables serialize");
    let evaluator = parse_evaluator_toml(&text, &task.eval)?.build()?;
    let score = evaluator
        .evaluate(model, &schedule, task.length, source)
        .map_err(|e| ExperimentError::Core(longrope_core::Error::invalid(format!("cell {}", task.label), e.to_string())))?;
    Ok(CellResult {
        key: String::new(),
        model: task.model.name.clone(),
        method: task.method.clone(),
        method_base: task.method_base.clone(),
        ablation: task.ablation.clone(),
        eval: task.eval.clone(),
        evaluator: task.evaluator.clone(),
        length: task.length,
        seed: task.seed,
        target,
        trained_context: trained,
        scaling: schedule.method.name().to_string(),
        scaling_params: schedule.method.params(),
        score,
    })
}
