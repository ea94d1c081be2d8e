//! RoPE cos/sin tables on the model's device, from the caller's [`RopeTables`] (RoPE, Su et al. 2104.09864).
//!
//! Computed as HF transformers' `LlamaRotaryEmbedding` does: positions and `inv_freq` in f32, the angle
//! `position * inv_freq` in f32, `emb = cat(freqs, freqs)`, `cos = emb.cos() * attn_factor` (and sin), and only
//! then cast to the compute dtype ("f32 tables, cast late"). Positions `< retained.n_hat` use the retained
//! (original) tables: LongRoPE's start tokens (arXiv 2402.13753, Eq. 3). Positions may be any set of
//! integers (PoSE's skipped positions, arXiv 2309.10400), one row per sequence of a batch.

use longrope_core::RopeTables;
use tch::{Device, Kind, Tensor};

/// cos and sin of positions `start .. start + len`, each `[len, head_dim]` in `dtype`.
pub fn cos_sin(tables: &RopeTables, start: usize, len: usize, device: Device, dtype: Kind) -> (Tensor, Tensor) {
    let positions = Tensor::arange_start(start as i64, (start + len) as i64, (Kind::Int64, device));
    cos_sin_at(tables, &positions, dtype)
}

/// cos and sin of arbitrary integer `positions` (any shape `[...]`, on the device they should be computed on),
/// each `[..., head_dim]` in `dtype`.
pub fn cos_sin_at(tables: &RopeTables, positions: &Tensor, dtype: Kind) -> (Tensor, Tensor) {
    let pos = positions.to_kind(Kind::Float);
    let (mut cos, mut sin) = angles(&tables.inv_freq, tables.attn_factor, &pos);
    if let Some(r) = &tables.retained {
        let start = positions.lt(r.n_hat as i64).unsqueeze(-1);
        if start.any().int64_value(&[]) != 0 {
            let (rc, rs) = angles(&r.inv_freq, r.attn_factor, &pos);
            cos = rc.where_self(&start, &cos);
            sin = rs.where_self(&start, &sin);
        }
    }
    (cos.to_kind(dtype), sin.to_kind(dtype))
}

/// f32 `cos/sin(pos * inv_freq) * attn_factor`, `[..., head_dim]` (the halves repeated).
fn angles(inv_freq: &[f64], attn_factor: f64, pos: &Tensor) -> (Tensor, Tensor) {
    let inv: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
    let inv = Tensor::from_slice(&inv).to_device(pos.device());
    let freqs = pos.unsqueeze(-1) * inv;
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

    #[test]
    fn arbitrary_positions_per_row_equal_the_host_reference() {
        let mut t = RopeTables::new(vec![0.5, 0.01], 1.25);
        t.retained = Some(RetainedStart { n_hat: 2, inv_freq: vec![1.0, 0.1], attn_factor: 1.0 });
        // Two rows with skipped positions (PoSE): [0, 1, 7, 8] and [0, 5, 6, 9].
        let pos = Tensor::from_slice(&[0i64, 1, 7, 8, 0, 5, 6, 9]).view([2, 4]);
        let (c, s) = cos_sin_at(&t, &pos, Kind::Float);
        assert_eq!(c.size(), vec![2, 4, 4]);
        for (row, ps) in [[0usize, 1, 7, 8], [0, 5, 6, 9]].iter().enumerate() {
            let (rc, rs) = t.cos_sin(ps);
            let got_c: Vec<f32> = Vec::try_from(c.get(row as i64).narrow(1, 0, 2).flatten(0, -1)).unwrap();
            let got_s: Vec<f32> = Vec::try_from(s.get(row as i64).narrow(1, 2, 2).flatten(0, -1)).unwrap();
            for i in 0..8 {
                assert!((got_c[i] - rc[i]).abs() < 1e-6 && (got_s[i] - rs[i]).abs() < 1e-6, "row {row} {i}");
            }
        }
    }
}
