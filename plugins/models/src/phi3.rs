//! Phi-3 / Phi-3.5 / Phi-4-mini (HF `modeling_phi3.py`, `configuration_phi3.py`; llama.cpp
//! `src/models/phi3.cpp`, `conversion/phi.py`): the Llama decoder with one fused `qkv_proj` (rows: queries,
//! keys, values) and one fused `gate_up_proj` (rows: gate, then up), optionally a partial rotary head
//! (`partial_rotary_factor`), and LongRoPE in its config: `rope_scaling` of type `longrope` (old names `su`,
//! and `yarn`, which `Phi3Config` also reads as `longrope`) with `short_factor` / `long_factor`, switching at
//! `original_max_position_embeddings` (default 4096 when the file has none, as `Phi3Config`'s). HF applies
//! `sliding_window` to every layer; so do we. LoRA targets are the fused modules (`qkv_proj`, `gate_up_proj`).
//!
//! GGUF (llama.cpp `LLM_ARCH_PHI3`, NEOX rope): `blk.N.attn_qkv.weight` (or separate q/k/v, fused here),
//! `blk.N.ffn_up.weight` = the fused gate/up, `rope_factors_long/short.weight` with
//! `phi3.rope.scaling.attn_factor` and `phi3.rope.scaling.original_context_length`. llama.cpp disables Phi-3's
//! sliding window (`phi3.attention.sliding_window` is ignored) and so do we for GGUF files.

use std::path::Path;

use longrope_core::model::LoadOptions;
use longrope_core::{LanguageModel, ModelArch};

use crate::llama::{ArchSpec, GgufFactors, Llama, SlidingRule};

/// Phi-3's layout.
pub static PHI3: ArchSpec = ArchSpec {
    name: Phi3Arch::NAME,
    hf_class: "Phi3ForCausalLM",
    qkv_bias: false,
    fused_qkv: true,
    fused_gate_up: true,
    sliding: SlidingRule::Always,
    gguf_sliding_window: false,
    gguf_permuted_qk: false,
    gguf_factors: GgufFactors::LongShort,
    hf_rope_aliases: &[("su", "longrope"), ("yarn", "longrope")],
    hf_original_default: Some(4096),
};

/// The `phi3` architecture plugin.
pub struct Phi3Arch;

impl ModelArch for Phi3Arch {
    fn load(&self, path: &Path, options: &LoadOptions) -> longrope_core::Result<Box<dyn LanguageModel>> {
        Llama::load_windowed(path, &PHI3, options)
    }
}

longrope_core::plugin! {
    kind: Arch,
    name: "phi3",
    summary: "Phi-3/3.5: fused qkv_proj and gate_up_proj, partial rotary, LongRoPE short/long factors",
    arch: Phi3Arch,
}
