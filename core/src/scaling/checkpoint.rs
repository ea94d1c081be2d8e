//! The RoPE scaling a checkpoint carries, and the one place where a run chooses its scaling.
//!
//! A checkpoint's own method (HF `config.json` `rope_scaling` / `rope_parameters`, read by the plugin that
//! declares its `rope_type`, see [`super::hf`]; or GGUF `{arch}.rope.scaling.*` metadata and factor tensors,
//! translated by the model crate as llama.cpp applies them) is a [`CheckpointScaling`] in the model's
//! [`ModelSummary`]. [`run_scaling`] decides what a run computes with:
//!
//! - an explicit method (`--scaling`, a `[[method]]`'s scaling, a fine-tune's `scaling`) replaces the
//!   checkpoint's own one, bound to the model's `L` and the run's target (the result says it replaced it);
//! - otherwise the checkpoint's own method, bound to the contexts the checkpoint declares (`L` and `L'` =
//!   its `max_position_embeddings`): what HF transformers (or llama.cpp, for GGUF) compute for it;
//! - a plain checkpoint without a request runs `none`, the model's own RoPE.
//!
//! `none` given explicitly therefore means the unscaled base RoPE even for a scaled checkpoint (the
//! "without its scaling" baseline); [`CHECKPOINT`] (`--scaling checkpoint`, `[[method]] scaling =
//! "checkpoint"`) asks for the checkpoint's own method and is an error for a checkpoint without one.

use serde::{Deserialize, Serialize};

use super::{load_scaling_config, parse_scaling_toml, RopeSchedule, ScalingConfig};
use crate::model::ModelSummary;
use crate::rope::RopeShape;
use crate::{Error, Result};

/// The `--scaling` / `[[method]] scaling` value that names the checkpoint's own method.
pub const CHECKPOINT: &str = "checkpoint";

/// A checkpoint's own RoPE scaling, read into one of our methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointScaling {
    /// Where it was read (`DIR/config.json rope_scaling`, `M.gguf llama.rope.scaling.* + rope_freqs.weight`).
    pub source: String,
    /// The type as the checkpoint names it (HF `rope_type`: `yarn`, `su` ...; GGUF `rope.scaling.type`).
    pub kind: String,
    /// The scaling plugin that computes it (`yarn`, `longrope` ...).
    pub method: String,
    /// That plugin's config (`{"method": "yarn", "factor": 4.0, ...}`), every default resolved as the
    /// checkpoint's runtime resolves it.
    pub config: serde_json::Value,
    /// The original context `L` the method is defined against.
    pub original_max_position_embeddings: usize,
    /// The extended context `L'` the checkpoint declares (its `max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// The block as written (HF), or the metadata and factors read (GGUF, in the form of an HF block).
    pub block: serde_json::Value,
}

impl CheckpointScaling {
    /// The method's config, parsed back from [`CheckpointScaling::config`].
    pub fn scaling_config(&self) -> Result<Box<dyn ScalingConfig>> {
        let text = toml::to_string(&self.config).map_err(|e| Error::config(&self.source, e.to_string()))?;
        parse_scaling_toml(&text, &self.source)
    }

    /// The shape the method is bound to on `summary`'s model: the checkpoint's `L` and `L'`.
    pub fn shape(&self, summary: &ModelSummary) -> RopeShape {
        RopeShape {
            head_dim: summary.rope_dim(),
            rope_base: summary.rope_base,
            original_max_position_embeddings: self.original_max_position_embeddings,
            max_position_embeddings: self.max_position_embeddings,
            num_layers: summary.num_layers,
        }
    }

    /// One line: `yarn (`yarn` from DIR/config.json rope_scaling, L = 256, L' = 1024)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (`{}` from {}, L = {}, L' = {})",
            self.method, self.kind, self.source, self.original_max_position_embeddings, self.max_position_embeddings
        )
    }
}

/// What a run asks for.
#[derive(Debug)]
pub enum ScalingRequest {
    /// Nothing: the checkpoint's own method, else `none`.
    Default,
    /// The checkpoint's own method ([`CHECKPOINT`]); an error for a checkpoint without one.
    Checkpoint,
    /// This method, replacing any method of the checkpoint.
    Explicit(Box<dyn ScalingConfig>),
}

impl ScalingRequest {
    /// The request of an optional `--scaling` value: absent -> [`ScalingRequest::Default`], [`CHECKPOINT`] ->
    /// [`ScalingRequest::Checkpoint`], anything else is loaded with [`load_scaling_config`].
    pub fn from_spec(spec: Option<&str>) -> Result<Self> {
        match spec {
            None => Ok(ScalingRequest::Default),
            Some(CHECKPOINT) => Ok(ScalingRequest::Checkpoint),
            Some(spec) => Ok(ScalingRequest::Explicit(load_scaling_config(spec)?)),
        }
    }
}

/// Where a run's method came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalingSource {
    /// Given explicitly.
    Explicit,
    /// The checkpoint's own method.
    Checkpoint,
    /// None asked, none in the checkpoint: the model's RoPE.
    Unscaled,
}

/// The scaling a run computes with: the bound schedule, where it came from, and a note for the user when an
/// explicit method replaced the checkpoint's own.
#[derive(Debug, Clone)]
pub struct RunScaling {
    /// The method bound to its shape.
    pub schedule: RopeSchedule,
    /// Where it came from.
    pub source: ScalingSource,
    /// `replaces the checkpoint's own scaling: yarn (...)` when an explicit method overrides one.
    pub note: Option<String>,
}

/// Choose and bind a run's scaling for `summary`'s model (see the module doc). `target` is the run's target
/// context `L'` for an explicit or default method; the checkpoint's own method keeps the `L'` it declares.
pub fn run_scaling(summary: &ModelSummary, request: ScalingRequest, target: usize) -> Result<RunScaling> {
    let own = summary.checkpoint_scaling.as_ref();
    match (request, own) {
        (ScalingRequest::Explicit(config), own) => Ok(RunScaling {
            schedule: RopeSchedule::new(config.as_ref(), summary.rope_shape(target))?,
            source: ScalingSource::Explicit,
            note: own.map(|cs| format!("replaces the checkpoint's own scaling: {}", cs.describe())),
        }),
        (ScalingRequest::Default | ScalingRequest::Checkpoint, Some(cs)) => {
            let config = cs.scaling_config()?;
            let schedule = RopeSchedule::new(config.as_ref(), cs.shape(summary))
                .map_err(|e| Error::config(&cs.source, format!("the checkpoint's own scaling `{}`: {e}", cs.method)))?;
            Ok(RunScaling { schedule, source: ScalingSource::Checkpoint, note: None })
        }
        (ScalingRequest::Checkpoint, None) => Err(Error::invalid(
            "scaling",
            format!("`{CHECKPOINT}` asks for the checkpoint's own RoPE scaling, but this {} checkpoint carries none", summary.arch),
        )),
        (ScalingRequest::Default, None) => {
            let config = parse_scaling_toml("method = \"none\"\n", "the default scaling")?;
            Ok(RunScaling {
                schedule: RopeSchedule::new(config.as_ref(), summary.rope_shape(target))?,
                source: ScalingSource::Unscaled,
                note: None,
            })
        }
    }
}
