//! Grid-search baseline: `budget` distinct points of a regular lattice over a low-dimensional family of
//! monotone factor curves, the "NTK-by-parts" shape that PI, YaRN and Llama 3 all belong to:
//! `lambda_i = 1` for `i < a`, a linear ramp in `lambda` from 1 up to `v` over `a <= i < b`, `lambda_i = v`
//! for `i >= b` (grid index `round(k_v * (i - a + 1) / (b - a + 1))` on the ramp).
//!
//! Axes, each mapped from `u` in `[0, 1]`: `a = round(u * d/2)`; `b = a + round(u * (d/2 - a))`;
//! `v` in `[s, max_factor]` (in `dim_mono` only, and only when `max_factor > s`; `dim_piece_mono` fixes
//! `v = s`); `n_hat` and the attention factor when they are searched. With `k` axes the lattice has
//! `n = ceil(budget^(1/k))` points per axis (`u = j / (n - 1)`); `budget` of its `n^k` points are taken at
//! evenly spaced positions of the row-major enumeration. Points that snap to an already chosen candidate
//! are skipped and the lattice is refined (`n + 1`, ...) until `budget` distinct candidates exist.

use longrope_core::search::{Candidate, Scored};
use longrope_core::{SearchStrategy};
use serde::{Deserialize, Serialize};

use crate::config::{SearchConfig, SearchContext};
use crate::error::{Result, SearchError};
use crate::space::{Genome, SearchSpace, Seen, SpaceKind};


fn d_batch() -> usize {
    16
}

/// `[strategy] strategy = "grid"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    /// Number of evaluations.
    pub budget: usize,
    /// Candidates per generation (checkpoint granularity; default 16).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
}

longrope_core::plugin! {
    kind: Search,
    name: "grid",
    summary: "regular grid over ramp-shaped factor curves, the same evaluation budget",
    impl SearchConfig for GridConfig {
        fn budget(&self) -> usize {
            self.budget
        }

        fn build(&self, ctx: &SearchContext) -> Result<Box<dyn SearchStrategy>> {
            if self.batch_size == 0 {
                return Err(SearchError::invalid("grid.batch_size", "must be at least 1"));
            }
            Ok(Box::new(GridSearch {
                points: grid_points(&ctx.space, self.budget)?,
                space: ctx.space.clone(),
                batch_size: self.batch_size,
                st: GridState { next: 0, pending: 0 },
            }))
        }
    }
}

/// The ramp curve with boundaries `a <= b` and end index `k_v`.
fn ramp(space: &SearchSpace, a: usize, b: usize, k_v: u32) -> Vec<u32> {
    (0..space.half_dim)
        .map(|i| {
            if i < a {
                0
            } else if i >= b {
                k_v
            } else {
                (k_v as f64 * (i - a + 1) as f64 / (b - a + 1) as f64).round() as u32
            }
        })
        .collect()
}

/// The genome of a lattice point `u` (one value in `[0, 1]` per axis, in the axis order of the module doc).
fn point(space: &SearchSpace, u: &[f64], has_v: bool) -> Genome {
    let h = space.half_dim;
    let mut axis = u.iter().copied();
    let a = (axis.next().unwrap_or(0.0) * h as f64).round() as usize;
    let b = a + (axis.next().unwrap_or(0.0) * (h - a) as f64).round() as usize;
    let k_v = if has_v {
        let span = space.max_index - space.scale_index;
        space.scale_index + (axis.next().unwrap_or(0.0) * span as f64).round() as u32
    } else {
        space.scale_index
    };
    let mut g = Genome { dims: ramp(space, a, b, k_v), bounds: None, n_hat: space.n_hat_seed, attn: 0 };
    if space.kind == SpaceKind::DimPieceMono {
        g.bounds = Some((a as u32, b as u32));
    }
    if space.searches_n_hat() {
        g.n_hat = (axis.next().unwrap_or(0.0) * (space.n_hat_values.len() - 1) as f64).round() as u32;
    }
    if space.attention_count > 1 {
        g.attn = (axis.next().unwrap_or(0.0) * (space.attention_count - 1) as f64).round() as u32;
    }
    g
}

/// `budget` distinct lattice points, in proposal order (see the module doc).
pub fn grid_points(space: &SearchSpace, budget: usize) -> Result<Vec<Genome>> {
    let has_v = space.kind == SpaceKind::DimMono && space.max_index > space.scale_index;
    let k = 2 + has_v as usize + space.searches_n_hat() as usize + (space.attention_count > 1) as usize;
    let mut n = 1usize;
    while n.pow(k as u32) < budget {
        n += 1;
    }
    let mut seen = Seen::new();
    let mut out = Vec::with_capacity(budget);
    // Refinements in a row that found no new candidate: the family is exhausted.
    let mut stale = 0;
    while out.len() < budget {
        if stale >= 4 {
            return Err(SearchError::SpaceExhausted(format!(
                "the grid family has {} distinct candidates in this space, fewer than the budget {budget}",
                out.len()
            )));
        }
        let before = out.len();
        let total = n.pow(k as u32);
        let picks = budget.min(total);
        for j in 0..picks {
            if out.len() == budget {
                break;
            }
            let mut q = j * total / picks;
            let mut u = vec![0.0; k];
            for slot in u.iter_mut().rev() {
                let digit = q % n;
                q /= n;
                *slot = if n > 1 { digit as f64 / (n - 1) as f64 } else { 0.5 };
            }
            let g = point(space, &u, has_v);
            debug_assert!(space.is_valid(&g));
            if seen.insert(g.key()) {
                out.push(g);
            }
        }
        stale = if out.len() == before { stale + 1 } else { 0 };
        n += 1;
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GridState {
    /// Index of the next point to propose.
    next: usize,
    /// Number of points proposed and not yet observed.
    pending: usize,
}

/// The runtime grid search.
#[derive(Debug)]
pub struct GridSearch {
    space: SearchSpace,
    points: Vec<Genome>,
    batch_size: usize,
    st: GridState,
}

impl SearchStrategy for GridSearch {
    fn name(&self) -> &str {
        GridConfig::NAME
    }

    fn propose(&mut self) -> longrope_core::Result<Vec<Candidate>> {
        if self.st.pending == 0 {
            self.st.pending = self.batch_size.min(self.points.len() - self.st.next);
        }
        let batch = &self.points[self.st.next..self.st.next + self.st.pending];
        Ok(batch.iter().map(|g| self.space.candidate(g)).collect())
    }

    fn observe(&mut self, scored: &[Scored]) -> longrope_core::Result<()> {
        if scored.len() != self.st.pending {
            return Err(SearchError::invalid(
                "grid.observe",
                format!("{} results for {} proposed candidates", scored.len(), self.st.pending),
            )
            .into());
        }
        self.st.next += self.st.pending;
        self.st.pending = 0;
        Ok(())
    }

    fn budget(&self) -> usize {
        self.points.len()
    }

    /// Only the best point is the result; the grid does not depend on fitness.
    fn selection_size(&self) -> Option<usize> {
        Some(1)
    }

    fn save_state(&self) -> longrope_core::Result<serde_json::Value> {
        serde_json::to_value(&self.st).map_err(|e| SearchError::invalid("grid state", e.to_string()).into())
    }

    fn load_state(&mut self, state: serde_json::Value) -> longrope_core::Result<()> {
        let st: GridState =
            serde_json::from_value(state).map_err(|e| SearchError::invalid("grid state", e.to_string()))?;
        if st.next + st.pending > self.points.len() {
            return Err(SearchError::invalid("grid state", "points beyond the grid: another config?").into());
        }
        self.st = st;
        Ok(())
    }
}
