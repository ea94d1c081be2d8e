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

use crate::llama::{ArchSpec, GgufFactors, Llama, SlidingRule};

/// Mistral's layout: Llama's, every layer sliding.
pub static MISTRAL: ArchSpec = ArchSpec {
    name: MistralArch::NAME,
    hf_class: "MistralForCausalLM",
    qkv_bias: false,
    fused_qkv: false,
    fused_gate_up: false,
    sliding: SlidingRule::Always,
    gguf_sliding_window: true,
    gguf_permuted_qk: true,
    gguf_factors: GgufFactors::FreqsOrLongShort,
    hf_rope_aliases: &[],
    hf_original_default: None,
};

/// The `mistral` architecture plugin.
pub struct MistralArch;

impl ModelArch for MistralArch {
    fn load(&self, path: &Path, options: &LoadOptions) -> longrope_core::Result<Box<dyn LanguageModel>> {
        Llama::load_windowed(path, &MISTRAL, options)
    }
}

longrope_core::plugin! {
    kind: Arch,
    name: "mistral",
    summary: "Mistral: Llama + sliding-window attention (window overridable)",
    arch: MistralArch,
}
