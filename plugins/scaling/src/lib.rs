//! `longrope-scaling`: RoPE position-scaling methods (PI, NTK, dynamic NTK, YaRN, Llama-3, LongRoPE ...), one file each.

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
