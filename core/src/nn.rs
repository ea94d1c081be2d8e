//! Model-agnostic layers shared by the architectures and the trainer: a linear projection that can carry a
//! LoRA adapter.
//!
//! LoRA (Hu et al., arXiv 2106.09685) adds a low-rank update to a frozen weight `W` (`[out, in]`):
//! `y = x Wᵀ + b + (alpha / r) · dropout(x) Aᵀ Bᵀ` with `A: [r, in]`, `B: [out, r]`. As in PEFT, only the
//! adapter term is scaled (`scaling = alpha / r`), `B` starts at zero so an attached adapter changes nothing
//! until trained, and [`Linear::merge_adapter`] folds `scaling · B A` into `W` for export. The architectures
//! hold every projection as a [`Linear`]; the trainer attaches adapters through
//! [`crate::model::Decoder::linears_mut`], so no model file knows about LoRA beyond calling
//! [`Linear::forward`].

use tch::{Kind, Tensor};

/// A low-rank adapter of one [`Linear`]: `scaling · dropout(x) Aᵀ Bᵀ`.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `A`, `[rank, in_features]` (PEFT's `lora_A.weight`).
    pub a: Tensor,
    /// `B`, `[out_features, rank]` (PEFT's `lora_B.weight`), zero at initialisation.
    pub b: Tensor,
    /// `alpha / rank`, the factor of the adapter term only.
    pub scaling: f64,
    /// Dropout probability on the adapter's input while training.
    pub dropout: f64,
    /// Whether dropout is active (training) or not (evaluation, export).
    pub training: bool,
}

/// A linear projection `x Wᵀ + b` with HF's weight layout (`[out_features, in_features]`), optionally with a
/// LoRA adapter.
#[derive(Debug)]
pub struct Linear {
    /// The weight, `[out_features, in_features]`.
    pub weight: Tensor,
    /// The bias, `[out_features]`, if the projection has one.
    pub bias: Option<Tensor>,
    /// An attached LoRA adapter.
    pub adapter: Option<LoraAdapter>,
}

impl Linear {
    /// A projection without adapter.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias, adapter: None }
    }

    /// `[out_features, in_features]` of the weight.
    pub fn shape(&self) -> (i64, i64) {
        let s = self.weight.size();
        (s[0], s[1])
    }

    /// Apply the projection (and the adapter, if attached) to `x` `[..., in_features]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.adapter {
            None => y,
            Some(ad) => {
                let input = if ad.training && ad.dropout > 0.0 { x.dropout(ad.dropout, true) } else { x.shallow_clone() };
                let low = input.linear(&ad.a, None::<Tensor>).linear(&ad.b, None::<Tensor>);
                y + low * ad.scaling
            }
        }
    }

    /// Fold the adapter into the weight (`W += scaling · B A`, computed in f32 (f64 for f64 weights) and cast
    /// to the weight's dtype) and drop it. Runs without gradient tracking; without adapter nothing changes.
    pub fn merge_adapter(&mut self) {
        let Some(ad) = self.adapter.take() else { return };
        let _guard = tch::no_grad_guard();
        let k = if self.weight.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let delta = ad.b.to_kind(k).matmul(&ad.a.to_kind(k)) * ad.scaling;
        let merged = self.weight.to_kind(k) + delta;
        self.weight.copy_(&merged.to_kind(self.weight.kind()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn adapter_adds_scaled_low_rank_term_and_merges_exactly() {
        let opts = (Kind::Double, Device::Cpu);
        let w = Tensor::arange(12, opts).reshape([3, 4]) / 10.0;
        let mut lin = Linear::new(w.copy(), Some(Tensor::from_slice(&[1.0f64, 2.0, 3.0])));
        let x = Tensor::arange(8, opts).reshape([2, 4]) / 7.0;
        let plain = lin.forward(&x);
        let a = Tensor::arange(8, opts).reshape([2, 4]) / 5.0;
        let b = Tensor::arange(6, opts).reshape([3, 2]) / 3.0;
        lin.adapter = Some(LoraAdapter { a: a.copy(), b: b.copy(), scaling: 0.5, dropout: 0.0, training: true });
        let adapted = lin.forward(&x);
        let expected = &plain + x.matmul(&a.tr()).matmul(&b.tr()) * 0.5;
        assert!(adapted.allclose(&expected, 1e-12, 1e-12, false));
        lin.merge_adapter();
        assert!(lin.adapter.is_none());
        assert!(lin.forward(&x).allclose(&expected, 1e-12, 1e-12, false));
        assert!(lin.weight.allclose(&(w + b.matmul(&a) * 0.5), 1e-12, 1e-12, false));
    }
}
