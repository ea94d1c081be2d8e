//! RoPE cos/sin tables on the model's device, from the caller's [`RopeTables`] (RoPE, Su et al. 2104.09864).
//!
//! Computed as HF transformers' `LlamaRotaryEmbedding` does: positions and `inv_freq` in f32, the angle
//! `position * inv_freq` in f32, `emb = cat(freqs, freqs)`, `cos = emb.cos() * attn_factor` (and sin), and only
//! then cast to the compute dtype ("f32 tables, cast late"). Positions `< retained.n_hat` use the retained
//! (original) tables: LongRoPE's start tokens (arXiv 2402.13753, Eq. 3).

use longrope_core::RopeTables;
use tch::{Device, Kind, Tensor};

/// cos and sin of positions `start .. start + len`, each `[len, head_dim]` in `dtype`.
pub fn cos_sin(tables: &RopeTables, start: usize, len: usize, device: Device, dtype: Kind) -> (Tensor, Tensor) {
    let end = start + len;
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    let mut at = start;
    if let Some(r) = &tables.retained {
        if start < r.n_hat {
            let to = r.n_hat.min(end);
            let (c, s) = segment(&r.inv_freq, r.attn_factor, start, to, device);
            cos.push(c);
            sin.push(s);
            at = to;
        }
    }
    if at < end || cos.is_empty() {
        let (c, s) = segment(&tables.inv_freq, tables.attn_factor, at, end, device);
        cos.push(c);
        sin.push(s);
    }
    let join = |v: Vec<Tensor>| if v.len() == 1 { v.into_iter().next().expect("one") } else { Tensor::cat(&v, 0) };
    (join(cos).to_kind(dtype), join(sin).to_kind(dtype))
}

/// f32 cos/sin `[to - from, head_dim]` of one set of inverse frequencies.
fn segment(inv_freq: &[f64], attn_factor: f64, from: usize, to: usize, device: Device) -> (Tensor, Tensor) {
    let inv: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
    let inv = Tensor::from_slice(&inv).to_device(device);
    let pos = Tensor::arange_start(from as i64, to as i64, (Kind::Float, device));
    let freqs = pos.unsqueeze(1) * inv.unsqueeze(0);
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    let (mut c, mut s) = (emb.cos(), emb.sin());
    if attn_factor != 1.0 {
        c *= attn_factor;
        s *= attn_factor;
    }
    (c, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use longrope_core::RetainedStart;

    #[test]
    fn matches_host_reference_with_retained_start() {
        let mut t = RopeTables::new(vec![0.5, 0.01], 1.5);
        t.retained = Some(RetainedStart { n_hat: 3, inv_freq: vec![1.0, 0.1], attn_factor: 1.0 });
        let (c, s) = cos_sin(&t, 1, 5, Device::Cpu, Kind::Float);
        assert_eq!(c.size(), vec![5, 4]);
        let (rc, rs) = t.cos_sin(&[1, 2, 3, 4, 5]);
        let c: Vec<f32> = Vec::try_from(c.narrow(1, 0, 2).flatten(0, -1)).unwrap();
        let s: Vec<f32> = Vec::try_from(s.narrow(1, 2, 2).flatten(0, -1)).unwrap();
        for i in 0..10 {
            assert!((c[i] - rc[i]).abs() < 1e-6, "cos {i}: {} vs {}", c[i], rc[i]);
            assert!((s[i] - rs[i]).abs() < 1e-6, "sin {i}: {} vs {}", s[i], rs[i]);
        }
    }
}
