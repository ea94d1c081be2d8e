//! The `reference` mode's mutation: microsoft/LongRoPE@c9e56aa `evolution/algorithms/dim_mono.py` and
//! `dim_piece_mono.py` (`mutate`), on the space's grid. (Crossover is shared with the `paper` mode in
//! [`SearchSpace::crossover`]; in `reference` mode it uses the reference's two boundary genes and no projection.)
//!
//! `dim_mono`, one pass: each dimension, on a `p` coin (0.3), is redrawn uniformly from the grid values of
//! `arange(1, lambda_1)` (dimension 0: `lambda_1` itself excluded), `arange(lambda_{n-2}, max + step)` (the last)
//! or `arange(lambda_{i-1}, lambda_{i+1} + step)` (the others); an empty interval leaves it unchanged.
//!
//! `dim_piece_mono` keeps two boundaries `alpha`, `beta` in front of the factors, `(0, 0)` at the seed. One pass:
//! - one boundary (fair coin) moves to `int(N(x, 2))` (truncated toward zero), then, while
//!   `0 <= alpha < beta < d/2` fails, a boundary (fair coin) moves again the same way: a boundary moves on
//!   every pass;
//! - each factor `j` except the last two (`range(2, len - 2)` over `[alpha, beta, factors...]`), on a `p` coin:
//!   set to 1 when `j <= alpha`, to `s` when `j > beta`, else redrawn in `arange(lambda_{j-1}, lambda_{j+1} + step)`.
//!   Only the dimensions whose coin fires are fixed to 1 or `s`; the last two factors never change.
//!
//! Both repeat passes, each from the previous one's result, until the result is monotone and not seen before
//! (`while Individual(new) in history or not monotone`). Every random number goes through [`Draws`], so a test
//! replays the reference's own draws (recorded by `scripts/fixtures/reference_golden.py`) and must reach the
//! reference's children. Grid note: the reference works on floats and numpy's `arange(a, b + step, step)` has
//! one extra element (about `b + step`) for roughly 1 in 10 grid intervals; drawing it breaks monotonicity and
//! the reference passes again. We draw from the interval the code means, `[a, b]` on the grid.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::space::{standard_normal, Genome, SearchSpace, SpaceKind};

/// The random numbers the reference's operators draw, by numpy call.
pub trait Draws {
    /// `np.random.rand()`: uniform in `[0, 1)`.
    fn rand(&mut self) -> f64;
    /// `np.random.normal(mean, std)`.
    fn normal(&mut self, mean: f64, std: f64) -> f64;
    /// `np.random.randint(0, n)` for `n >= 1`: uniform in `0..n`.
    fn randint(&mut self, n: u32) -> u32;
}

impl Draws for ChaCha8Rng {
    fn rand(&mut self) -> f64 {
        self.random::<f64>()
    }
    fn normal(&mut self, mean: f64, std: f64) -> f64 {
        mean + std * standard_normal(self)
    }
    fn randint(&mut self, n: u32) -> u32 {
        self.random_range(0..n)
    }
}

/// How many times the boundary loop may redraw before a pass gives up moving the boundaries.
const MAX_BOUNDARY_DRAWS: usize = 100_000;

impl SearchSpace {
    /// One `dim_mono.py` mutation pass over `dims` (in place).
    fn reference_mono_pass<D: Draws>(&self, dims: &mut [u32], p: f64, d: &mut D) {
        let n = dims.len();
        for i in 0..n {
            if d.rand() < p {
                // Grid interval [lo, hi) of the reference's arange.
                let (lo, hi) = if i + 1 == n {
                    (if i == 0 { 0 } else { dims[i - 1] }, self.max_index + 1)
                } else if i == 0 {
                    (0, dims[1])
                } else {
                    (dims[i - 1], dims[i + 1] + 1)
                };
                if hi > lo {
                    dims[i] = lo + d.randint(hi - lo);
                }
            }
        }
    }

    /// One `dim_piece_mono.py` mutation pass over `g` (in place).
    fn reference_piece_pass<D: Draws>(&self, g: &mut Genome, p: f64, d: &mut D) {
        let h = self.half_dim as i64;
        let (a, b) = g.bounds.unwrap_or((0, 0));
        let (mut alpha, mut beta) = (a as i64, b as i64);
        let step = |x: i64, d: &mut D| d.normal(x as f64, 2.0).trunc() as i64;
        if d.rand() < 0.5 {
            alpha = step(alpha, d);
        } else {
            beta = step(beta, d);
        }
        let mut draws = 0;
        while !(0 <= alpha && alpha < beta && beta < h) && draws < MAX_BOUNDARY_DRAWS {
            if d.rand() < 0.5 {
                alpha = step(alpha, d);
            } else {
                beta = step(beta, d);
            }
            draws += 1;
        }
        if !(0 <= alpha && alpha < beta && beta < h) {
            return;
        }
        g.bounds = Some((alpha as u32, beta as u32));
        let dims = &mut g.dims;
        for j in 0..dims.len().saturating_sub(2) {
            if d.rand() < p {
                let ji = j as i64;
                if ji <= alpha {
                    dims[j] = 0;
                } else if ji > beta {
                    dims[j] = self.scale_index;
                } else {
                    // j > alpha >= 0, so j - 1 is a factor; j + 1 <= len - 2 exists.
                    let (lo, hi) = (dims[j - 1], dims[j + 1] + 1);
                    if hi > lo {
                        dims[j] = lo + d.randint(hi - lo);
                    }
                }
            }
        }
    }

    /// The reference's `mutate`: passes from `parent` until the result is monotone and accepted (not seen before),
    /// at most `max_passes`. `None` if none was accepted.
    pub fn reference_mutate<D: Draws>(
        &self,
        parent: &Genome,
        p: f64,
        max_passes: usize,
        d: &mut D,
        accept: impl Fn(&Genome) -> bool,
    ) -> Option<Genome> {
        let mut g = parent.clone();
        for _ in 0..max_passes {
            match self.kind {
                SpaceKind::DimMono => self.reference_mono_pass(&mut g.dims, p, d),
                SpaceKind::DimPieceMono => self.reference_piece_pass(&mut g, p, d),
            }
            if self.searches_n_hat() && d.rand() < p {
                g.n_hat = d.randint(self.n_hat_values.len() as u32);
            }
            if self.attention_count > 1 && d.rand() < p {
                g.attn = d.randint(self.attention_count);
            }
            if self.is_valid(&g) && accept(&g) {
                return Some(g);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use longrope_core::RopeShape;
    use serde_json::Value;

    use super::*;
    use crate::space::{GenomeKey, SearchMode, SpaceConfig};

    /// Replays draws recorded from numpy, checking that each call is the one the reference made.
    struct Tape<'a> {
        calls: &'a [Value],
        next: usize,
        case: usize,
    }

    impl Tape<'_> {
        fn take(&mut self, kind: &str) -> &Value {
            let call = self.calls.get(self.next).unwrap_or_else(|| panic!("case {}: draw {} ({kind}) beyond the tape", self.case, self.next));
            assert_eq!(call[0].as_str().unwrap(), kind, "case {}: draw {} is `{}` in the reference", self.case, self.next, call[0]);
            self.next += 1;
            call
        }
    }

    impl Draws for Tape<'_> {
        fn rand(&mut self) -> f64 {
            self.take("rand")[2].as_f64().unwrap()
        }
        fn normal(&mut self, mean: f64, std: f64) -> f64 {
            let (case, at) = (self.case, self.next);
            let call = self.take("normal");
            let args = (call[1][0].as_f64().unwrap(), call[1][1].as_f64().unwrap());
            assert_eq!((mean, std), args, "case {case}: normal() arguments at draw {at}");
            call[2].as_f64().unwrap()
        }
        fn randint(&mut self, n: u32) -> u32 {
            let (case, at) = (self.case, self.next);
            let call = self.take("randint");
            assert_eq!(n as u64, call[1][0].as_u64().unwrap(), "case {case}: randint() range at draw {at}");
            call[2].as_u64().unwrap() as u32
        }
    }

    fn golden() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference_golden.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// A reference individual (`[alpha, beta,] factors...`) as a genome of `space`.
    fn genome(space: &SearchSpace, v: &Value) -> Genome {
        let v: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let (bounds, factors) = match space.kind {
            SpaceKind::DimPieceMono => (Some((v[0] as u32, v[1] as u32)), &v[2..]),
            SpaceKind::DimMono => (None, &v[..]),
        };
        let dims = factors
            .iter()
            .map(|&x| {
                let k = (x - 1.0) / space.step;
                assert!((k - k.round()).abs() < 1e-6, "{x} is off the grid");
                k.round() as u32
            })
            .collect();
        Genome { dims, bounds, n_hat: 0, attn: 0 }
    }

    /// Replay every recorded `mutate` / `crossover` call of one fixture section and compare the children.
    fn replay(section: &str) -> usize {
        let g = golden();
        let f = &g[section];
        let half = f["half_dim"].as_u64().unwrap() as usize;
        let scale = f["scale"].as_f64().unwrap();
        let kind = if f["kind"] == "dim_piece_mono" { SpaceKind::DimPieceMono } else { SpaceKind::DimMono };
        let shape = RopeShape {
            head_dim: 2 * half,
            rope_base: 10_000.0,
            original_max_position_embeddings: 4096,
            max_position_embeddings: (4096.0 * scale) as usize,
            num_layers: 1,
        };
        let config = SpaceConfig { mode: SearchMode::Reference, kind, step: f["step"].as_f64().unwrap(), ..SpaceConfig::default() };
        let space = SearchSpace::new(&config, &shape).unwrap();
        assert_eq!(space.max_factor, f["max_factor"].as_f64().unwrap());
        let p = f["p"].as_f64().unwrap();
        let tries = f["max_crossover_try"].as_u64().unwrap() as usize;
        // The reference's history: the seed, then every child its operators returned.
        let mut history: BTreeSet<GenomeKey> = BTreeSet::new();
        history.insert(space.key(&genome(&space, &f["seed"])));
        let mut history_len = 1;
        let mut draws = 0;
        for (i, case) in f["cases"].as_array().unwrap().iter().enumerate() {
            assert_eq!(case["history_len"].as_u64().unwrap() as usize, history_len, "case {i}");
            let tape_calls = case["tape"].as_array().unwrap();
            let mut tape = Tape { calls: tape_calls, next: 0, case: i };
            let parents: Vec<Genome> = case["parents"].as_array().unwrap().iter().map(|v| genome(&space, v)).collect();
            let seen = |c: &Genome| !history.contains(&space.key(c));
            let child = match case["op"].as_str().unwrap() {
                "mutate" => space.reference_mutate(&parents[0], p, 1_000_000, &mut tape, seen),
                _ => space.crossover(&parents[0], &parents[1], p, tries, &mut tape, seen),
            };
            assert_eq!(tape.next, tape_calls.len(), "case {i}: {} of {} recorded draws used", tape.next, tape_calls.len());
            draws += tape.next;
            let want = if case["child"].is_null() { None } else { Some(genome(&space, &case["child"])) };
            assert_eq!(child, want, "case {i} ({})", case["op"]);
            if let Some(c) = child {
                history.insert(space.key(&c));
                history_len += 1;
            }
        }
        draws
    }

    #[test]
    fn dim_mono_operators_replay_the_reference() {
        assert!(replay("dim_mono") > 500);
    }

    #[test]
    fn dim_piece_mono_operators_replay_the_reference() {
        assert!(replay("dim_piece_mono") > 1000);
        assert!(replay("dim_piece_mono_s4") > 1000);
    }
}
