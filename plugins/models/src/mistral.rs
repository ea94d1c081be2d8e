//! Mistral (Jiang et al. 2023, arXiv 2310.06825; HF `modeling_mistral.py`): Llama plus sliding-window
//! attention. Query `i` sees keys `j` with `j <= i` and `i - j < sliding_window` (HF's mask).
//!
//! The window comes from `config.json` `sliding_window` (GGUF `{arch}.attention.sliding_window`) and is
//! overridable through [`LoadOptions::sliding_window`]: the LongRoPE reference treats the window as the
//! original context and widens it when extending (`Some(Some(w))`), or drops it (`Some(None)`).
//! Everything else reuses [`crate::llama`].

use std::path::Path;

use longrope_core::model::LoadOptions;
use longrope_core::{LanguageModel, ModelArch};

use crate::llama::{Checkpoint, Llama};

/// The `mistral` architecture plugin.
pub struct MistralArch;

impl ModelArch for MistralArch {
    fn name(&self) -> &'static str {
        "mistral"
    }
    fn load(&self, path: &Path, options: &LoadOptions) -> longrope_core::Result<Box<dyn LanguageModel>> {
        let mut ck = Checkpoint::read(path)?;
        if let Some(window) = options.sliding_window {
            ck.config.sliding_window = window;
        }
        ck.config.validate(&ck.path)?;
        Ok(Box::new(Llama::from_checkpoint(ck, "mistral", options)?))
    }
}

longrope_core::inventory::submit!(longrope_core::model::ArchRegistration { name: "mistral", arch: &MistralArch });
longrope_core::register_plugin!(Arch, "mistral", "Mistral: Llama + sliding-window attention (window overridable)");
