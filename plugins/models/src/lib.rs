//! `longrope-models`: Model architectures (Llama, Mistral) on libtorch, with HF safetensors and GGUF loaders.

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
