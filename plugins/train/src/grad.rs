//! The causal-LM loss of one micro-batch and its gradients, accumulated into the trainable weights' `.grad`,
//! with two memory savers that give the same gradients as a plain backward (tested):
//!
//! - **Chunked head.** The final-normed hidden states are detached into a leaf `h`; the LM head and the
//!   log-softmax run over `head_chunk` positions at a time and each chunk's loss is back-propagated at once, so
//!   neither the forward nor the backward ever holds `[seq, vocab]` logits. `h.grad` then flows back through
//!   the final norm and the trunk.
//! - **Per-layer recomputation** (gradient checkpointing; Chen et al., arXiv 1604.06174). libtorch has no
//!   `torch.utils.checkpoint` and tch's backward takes no output gradient, so: run the trunk without gradient
//!   tracking keeping each block's input; then walk the blocks top-down, recompute block `l` with gradients
//!   from its saved input and back-propagate the incoming gradient `g` through it as `(y · g).sum()` with `g`
//!   detached (whose gradient with respect to `y` is exactly `g`); the input's `.grad` is the next `g`. Peak
//!   memory is one block's activations plus one `[batch, seq, hidden]` tensor per layer.
//!
//! The loss is the summed next-token NLL over every position of every row (`rows · (len - 1)` targets);
//! `scale` (1 / targets of the whole optimizer step) makes the accumulated gradient that of the mean, as HF's
//! `loss = CrossEntropy(mean)` over the step's tokens.

use longrope_core::model::{chunked_nll_sum, Decoder};
use longrope_core::scaling::LayerTables;
use tch::{Kind, Tensor};

use crate::error::{Result, TrainError};

/// One micro-batch on the model's device.
#[derive(Debug)]
pub struct Inputs {
    /// Token ids `[rows, len]` (i64).
    pub tokens: Tensor,
    /// Position ids `[rows, len]` (i64).
    pub positions: Tensor,
    /// The per-layer RoPE tables of this batch.
    pub tables: LayerTables,
}

impl Inputs {
    /// Next-token targets in the batch: `rows · (len - 1)`.
    pub fn targets(&self) -> usize {
        let s = self.tokens.size();
        (s[0] * (s[1] - 1).max(0)) as usize
    }
}

/// How to run the backward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackwardOptions {
    /// Recompute each block in the backward instead of keeping every activation.
    pub recompute: bool,
    /// Positions per LM-head chunk.
    pub head_chunk: usize,
}

/// Forward and backward of one micro-batch: adds `scale ·` the gradient of its summed NLL to every trainable
/// weight's `.grad` and returns the summed NLL (nats, unscaled).
pub fn accumulate(dec: &dyn Decoder, inputs: &Inputs, scale: f64, options: BackwardOptions) -> Result<f64> {
    let size = inputs.tokens.size();
    if size.len() != 2 || size[1] < 2 {
        return Err(TrainError::Core(longrope_core::Error::invalid("batch", format!("expected [rows, len >= 2] tokens, got {size:?}"))));
    }
    let (rows, len) = (size[0], size[1]);
    let layers = dec.summary().num_layers;
    let rotary = dec.rotary(&inputs.tables, &inputs.positions)?;

    // Trunk: with recomputation, no graph and each block's input kept; without, the whole graph.
    let (top, saved) = if options.recompute {
        let _guard = tch::no_grad_guard();
        let mut saved = Vec::with_capacity(layers);
        let mut x = dec.embed(&inputs.tokens)?;
        for l in 0..layers {
            let y = dec.block(l, &x, &rotary)?;
            saved.push(x);
            x = y;
        }
        (x.set_requires_grad(true), saved)
    } else {
        let mut x = dec.embed(&inputs.tokens)?;
        for l in 0..layers {
            x = dec.block(l, &x, &rotary)?;
        }
        (x, Vec::new())
    };

    // Final norm with its graph; the head runs on a detached leaf, chunk by chunk.
    let normed = dec.final_norm(&top);
    let hidden = normed.size()[2];
    let pred = normed.detach().narrow(1, 0, len - 1).reshape([rows * (len - 1), hidden]).set_requires_grad(true);
    let targets = inputs.tokens.narrow(1, 1, len - 1).reshape([rows * (len - 1)]).to_device(pred.device());
    let head = dec.lm_head();
    let chunk = options.head_chunk.max(1) as i64;
    let n = pred.size()[0];
    let mut nll = 0.0;
    let mut start = 0;
    while start < n {
        let size = chunk.min(n - start);
        let part = chunked_nll_sum(&pred.narrow(0, start, size), head, &targets.narrow(0, start, size), size as usize);
        nll += part.double_value(&[]);
        (part * scale).backward();
        start += size;
    }
    let grad_pred = pred.grad();
    let grad_normed = Tensor::zeros_like(&normed);
    grad_normed.narrow(1, 0, len - 1).copy_(&grad_pred.reshape([rows, len - 1, hidden]).to_kind(normed.kind()));
    (normed * grad_normed).sum(Kind::Float).backward();

    if options.recompute {
        let mut g = top.grad();
        for (l, x) in saved.into_iter().enumerate().rev() {
            let x = x.set_requires_grad(true);
            let y = dec.block(l, &x, &rotary)?;
            (y * g.detach()).sum(Kind::Float).backward();
            g = x.grad();
        }
        let e = dec.embed(&inputs.tokens)?;
        if e.requires_grad() {
            (e * g.detach()).sum(Kind::Float).backward();
        }
    }
    Ok(nll)
}
