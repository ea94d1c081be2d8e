//! `longrope-search`: Search strategies (LongRoPE evolution, random, grid) and the search driver.

/// Referenced by the binary so the linker keeps this crate and its `inventory` registrations.
pub fn link() {}
