//! Optimisation as the long-context papers do it: AdamW (Loshchilov & Hutter, arXiv 1711.05101) written out
//! exactly as PyTorch's `_single_tensor_adamw` (decoupled decay `p *= 1 - lr·wd`, `m = lerp(m, g, 1-β1)`,
//! `v = β2 v + (1-β2) g²`, `p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)`), its state held as plain
//! tensors so a checkpoint saves and restores it exactly; the learning-rate schedules of HF transformers
//! (`get_{linear,cosine,constant}_schedule_with_warmup`, with an optional floor); and clipping by the global
//! gradient norm as `torch.nn.utils.clip_grad_norm_` (`coef = max / (norm + 1e-6)`, clamped to 1).

use tch::{Kind, Tensor};

use crate::config::{OptimSection, Schedule};

/// AdamW over a fixed list of f32 parameters (the master weights).
#[derive(Debug)]
pub struct AdamW {
    /// `(beta1, beta2)`.
    pub betas: [f64; 2],
    /// Epsilon of the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Optimizer steps taken (`t` of the bias corrections).
    pub step: u64,
    /// First moments, one per parameter.
    pub exp_avg: Vec<Tensor>,
    /// Second moments, one per parameter.
    pub exp_avg_sq: Vec<Tensor>,
}

impl AdamW {
    /// Zero state for parameters shaped like `params`.
    pub fn new(config: &OptimSection, params: &[&Tensor]) -> Self {
        let zeros = |p: &&Tensor| Tensor::zeros_like(p).to_kind(Kind::Float);
        AdamW {
            betas: config.betas,
            eps: config.eps,
            weight_decay: config.weight_decay,
            step: 0,
            exp_avg: params.iter().map(zeros).collect(),
            exp_avg_sq: params.iter().map(zeros).collect(),
        }
    }

    /// One update of every parameter with its gradient (both f32) at learning rate `lr`. `decay[i]` says
    /// whether parameter `i` takes weight decay. Runs without gradient tracking, in place.
    pub fn update(&mut self, params: &mut [Tensor], grads: &[Tensor], decay: &[bool], lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let [b1, b2] = self.betas;
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            if decay[i] && self.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let m = &mut self.exp_avg[i];
            let _ = m.lerp_(g, 1.0 - b1);
            let v = &mut self.exp_avg_sq[i];
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(g.square() * (1.0 - b2)));
            let denom = v.sqrt() / bias2_sqrt + self.eps;
            let _ = p.g_sub_(&(&*m / denom * step_size));
        }
    }
}

/// The learning rate before optimizer step `step` (0-based: the number of steps already taken), as HF's
/// `LambdaLR` schedules give it: linear warm-up from 0 over `warmup_steps`, then the decay to
/// `min_lr_ratio · lr` at `total` steps. Like HF, the first step of a warm-up runs at learning rate 0.
pub fn learning_rate(config: &OptimSection, step: usize, total: usize) -> f64 {
    let warm = config.warmup_steps;
    if step < warm {
        return config.lr * step as f64 / warm.max(1) as f64;
    }
    let progress = (step - warm) as f64 / total.saturating_sub(warm).max(1) as f64;
    let decay = match config.schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    };
    let floor = config.min_lr_ratio;
    config.lr * (floor + (1.0 - floor) * decay)
}

/// The global L2 norm of `grads` (each summed in f32).
pub fn global_norm(grads: &[Tensor]) -> f64 {
    let _guard = tch::no_grad_guard();
    grads.iter().map(|g| g.to_kind(Kind::Float).square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt()
}

/// Clip `grads` in place to global norm `max_norm` as `clip_grad_norm_` does; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    let _guard = tch::no_grad_guard();
    for g in grads.iter_mut() {
        let _ = g.g_mul_scalar_(coef);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OptimSection {
        OptimSection { lr: 0.1, warmup_steps: 2, ..OptimSection::default() }
    }

    #[test]
    fn adamw_matches_the_formula_over_two_steps() {
        let mut c = cfg();
        c.weight_decay = 0.1;
        let mut params = vec![Tensor::from_slice(&[1.0f32, -2.0])];
        let mut opt = AdamW::new(&c, &[&params[0]]);
        let (b1, b2, eps, wd, lr) = (0.9f64, 0.95f64, 1e-8f64, 0.1f64, 0.01f64);
        let mut p = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for (t, g) in [[0.5f64, -1.0], [0.25, 2.0]].iter().enumerate() {
            opt.update(&mut params, &[Tensor::from_slice(&[g[0] as f32, g[1] as f32])], &[true], lr);
            let t = (t + 1) as i32;
            for i in 0..2 {
                p[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = (v[i] / (1.0 - b2.powi(t))).sqrt() + eps;
                p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
        }
        let got: Vec<f32> = Vec::try_from(&params[0]).unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{i}: {} vs {}", got[i], p[i]);
        }
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn schedules_follow_hf() {
        let mut c = cfg();
        assert_eq!(learning_rate(&c, 0, 10), 0.0, "HF: the first warm-up step runs at 0");
        assert!((learning_rate(&c, 1, 10) - 0.05).abs() < 1e-12);
        assert!((learning_rate(&c, 2, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 6, 10) - 0.05).abs() < 1e-12, "linear: half way through the decay");
        assert_eq!(learning_rate(&c, 10, 10), 0.0);
        c.schedule = Schedule::Cosine;
        assert!((learning_rate(&c, 6, 10) - 0.05).abs() < 1e-12);
        c.min_lr_ratio = 0.1;
        assert!((learning_rate(&c, 10, 10) - 0.01).abs() < 1e-12, "floor");
        c.schedule = Schedule::Constant;
        assert_eq!(learning_rate(&c, 9, 10), 0.1);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut g = vec![Tensor::from_slice(&[3.0f32]), Tensor::from_slice(&[4.0f32])];
        assert_eq!(clip_grad_norm(&mut g, 10.0), 5.0);
        assert_eq!(Vec::<f32>::try_from(&g[1]).unwrap(), vec![4.0], "below the bound: unchanged");
        let norm = clip_grad_norm(&mut g, 1.0);
        assert_eq!(norm, 5.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
    }
}
