//! `longrope-train`: long-context fine-tuning on the same libtorch models and RoPE tables as evaluation.
//!
//! The design card's training half, as the papers do it (LongRoPE arXiv 2402.13753 §4; YaRN 2309.00071; PI
//! 2306.15595; PoSE 2309.10400; LongRoPE2 2502.20082; LongLoRA 2309.12307), for any model whose architecture
//! has a [`longrope_core::model::Decoder`] form and any scaling plugin (static or dynamic):
//!
//! - [`config`]: the fine-tune file (`configs/finetune/*.toml`), validated before any compute;
//! - [`grad`]: causal-LM loss with a chunked LM head and per-layer recomputation, same gradients as a plain
//!   backward;
//! - [`optim`]: AdamW as PyTorch writes it, HF's schedules, global-norm clipping;
//! - [`lora`]: PEFT-style adapters on the model's projections, merged on export;
//! - [`trainer`]: the loop (accumulation, f32 masters for bf16 compute, PoSE / mixed windows from
//!   `longrope-data`), `train_log.jsonl`, checkpoints and exact resume;
//! - [`checkpoint`], [`export`] (HF directory), [`st`] (safetensors I/O), [`fsio`] (atomic writes);
//! - [`error`]: [`TrainError`].
//!
//! See `docs/training.md`.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod export;
pub mod fsio;
pub mod grad;
pub mod lora;
pub mod optim;
pub mod st;
pub mod trainer;

pub use config::FinetuneFile;
pub use error::{Result, TrainError};
pub use trainer::{Finetune, Outcome, RunOptions, Summary, Trainer};
