//! Qwen2 / Qwen2.5 (HF `modeling_qwen2.py`, `configuration_qwen2.py`; llama.cpp `src/models/qwen2.cpp`): the
//! Llama decoder with biases on the q/k/v projections, a tied or untied head, and a sliding window used only
//! when `use_sliding_window` is true, on the layers `layer_types` marks `sliding_attention` (else from
//! `max_window_layers` on, HF's default rule). Long-context releases carry a `yarn` `rope_scaling`, read by the
//! `yarn` scaling plugin.
//!
//! GGUF (llama.cpp `LLM_ARCH_QWEN2`, NEOX rope): `blk.N.attn_{q,k,v}.{weight,bias}` stored as HF's rows (no
//! permutation); llama.cpp reads no RoPE factor tensors for it. [`LoadOptions::sliding_window`] overrides the
//! window of the sliding layers.

use std::path::Path;

use longrope_core::model::LoadOptions;
use longrope_core::{LanguageModel, ModelArch};

use crate::llama::{ArchSpec, GgufFactors, Llama, SlidingRule};

/// Qwen2's layout.
pub static QWEN2: ArchSpec = ArchSpec {
    name: Qwen2Arch::NAME,
    hf_class: "Qwen2ForCausalLM",
    qkv_bias: true,
    fused_qkv: false,
    fused_gate_up: false,
    sliding: SlidingRule::WhenUsed,
    gguf_sliding_window: false,
    gguf_permuted_qk: false,
    gguf_factors: GgufFactors::Nothing,
    hf_rope_aliases: &[],
    hf_original_default: None,
};

/// The `qwen2` architecture plugin.
pub struct Qwen2Arch;

impl ModelArch for Qwen2Arch {
    fn load(&self, path: &Path, options: &LoadOptions) -> longrope_core::Result<Box<dyn LanguageModel>> {
        Llama::load_windowed(path, &QWEN2, options)
    }
}

longrope_core::plugin! {
    kind: Arch,
    name: "qwen2",
    summary: "Qwen2/Qwen2.5: Llama + q/k/v biases, sliding window when use_sliding_window",
    arch: Qwen2Arch,
}
