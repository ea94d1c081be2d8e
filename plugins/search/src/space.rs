//! The shared candidate space of every strategy: bounds, monotonicity, snapping to the grid, and LongRoPE's
//! mutation and crossover operators (arXiv 2402.13753, Sec. 3.2 and Alg. 1; reference
//! `microsoft/LongRoPE@c9e56aa` `evolution/search.py`, `evolution/algorithms/dim_mono.py`, `dim_piece_mono.py`).
//!
//! Two modes ([`SearchMode`]) set what a config leaves unset and which operators run:
//! - `reference` (default): the reference code at HEAD: one seed, YaRN's ramp with the factors blended linearly
//!   (`yarn{blend = "factor"}`, betas 128/2 on Mistral), factors up to `1 + s`, and its operators
//!   ([`crate::reference_ops`]): `dim_mono.py`'s mutation (dimension 0 redrawn in `[1, lambda_1)`), and
//!   `dim_piece_mono.py`'s boundaries `alpha < beta` (see there);
//! - `paper`: the paper's seeds (PI, NTK, YaRN) and bound `1.25 s`, with the operators below.
//!
//! A point is a [`Genome`]: one grid index per RoPE dimension (`lambda_i = 1 + k_i * step`, `d/2` values, in
//! `[1, max_factor]`, non-decreasing in `i`), plus, in the `dim_piece_mono` space, two boundaries `(a, b)`
//! (`lambda_i = 1` for `i < a`, `lambda_i = s` for `i >= b`, searched in between), plus optional indices into
//! the retained-start-token list `n_hat` and into the attention-factor grid. Working on integer grid indices
//! keeps every factor exactly on the `step` grid and makes equality (deduplication) exact.
//!
//! `paper` operators (all keep the constraints by construction):
//! - mutation: each searched dimension, with probability `p` (0.3), is redrawn uniformly from the grid values
//!   between its neighbours `[lambda_{i-1}, lambda_{i+1}]` (`1` below dimension 0, `max_factor` above the last),
//!   so the vector stays monotone; `n_hat` and the attention factor are redrawn with the same probability; in
//!   `dim_piece_mono`, with probability `p` one boundary moves by a rounded `N(0, 2)` step first;
//! - crossover: starting from parent 1, each gene with probability `p` and then a fair coin takes parent 2's
//!   value; the first child that is valid and accepted (not seen before) is returned, `max_crossover_try`
//!   passes over the genes at most.
//!
//! The two modes side by side, and how each differs from the reference, are in `docs/search.md`.

use std::collections::BTreeSet;

use longrope_core::search::Candidate;
use longrope_core::RopeShape;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::reference_ops::Draws;

/// The paper's retained start-token values `n_hat` (LongRoPE Sec. 3.2).
pub const PAPER_N_HAT_VALUES: [usize; 14] = [0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256];

/// Which defaults and operators a search uses (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// microsoft/LongRoPE's `evolution/` code at HEAD.
    #[default]
    Reference,
    /// The paper's seeds (PI, NTK, YaRN) and bound (`1.25 s`), with this crate's operators.
    Paper,
}

/// The reference's YaRN seed (`evolution/search.py:153-171`) as a scaling spec for a model architecture: YaRN's
/// ramp with linearly blended factors, betas 128/2 for Mistral (`config.model_type == 'mistral'`), else 32/1.
pub fn reference_yarn_seed(arch: Option<&str>) -> String {
    match arch {
        Some("mistral") => "yarn{blend = \"factor\", beta_fast = 128.0, beta_slow = 2.0}".into(),
        _ => "yarn{blend = \"factor\"}".into(),
    }
}

/// Which of LongRoPE's two search spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpaceKind {
    /// `d/2` factors, monotone non-decreasing (reference `dim_mono`).
    #[default]
    DimMono,
    /// Factors fixed to 1 below boundary `a` and to `s` from boundary `b` on, monotone in between
    /// (reference `dim_piece_mono`).
    DimPieceMono,
}

/// The attention-factor axis of the search, when it is searched: the grid `min, min + step, ..., max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionSearch {
    /// Smallest attention factor `m` (default 1.0).
    #[serde(default = "one")]
    pub min: f64,
    /// Largest attention factor `m` (default 1.5).
    #[serde(default = "one_and_a_half")]
    pub max: f64,
    /// Grid step (default 0.01).
    #[serde(default = "default_step")]
    pub step: f64,
}

fn one() -> f64 {
    1.0
}
fn one_and_a_half() -> f64 {
    1.5
}
fn default_step() -> f64 {
    0.01
}
fn paper_seeds() -> Vec<String> {
    vec!["pi".into(), "ntk".into(), "yarn".into()]
}
fn default_n_hat_values() -> Vec<usize> {
    PAPER_N_HAT_VALUES.to_vec()
}

/// The `[space]` table of a search config: what is searched and on which grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpaceConfig {
    /// `reference` (default) or `paper`: the defaults of `max_factor` and `seeds`, and the operators.
    #[serde(default)]
    pub mode: SearchMode,
    /// `dim_mono` (default) or `dim_piece_mono`.
    #[serde(default)]
    pub kind: SpaceKind,
    /// Grid step of the factors (reference `list_step`, default 0.01).
    #[serde(default = "default_step")]
    pub step: f64,
    /// Largest factor; default `1 + s` (`reference`, `evo_list = arange(1, 1 + s + step)`) or `1.25 s` (`paper`).
    #[serde(default)]
    pub max_factor: Option<f64>,
    /// Scaling methods (as `--scaling` takes them) whose factors seed the initial population; taken from the
    /// scaling registry. Default: the reference's YaRN seed ([`reference_yarn_seed`]) in `reference` mode,
    /// `["pi", "ntk", "yarn"]` in `paper` mode. Empty: the initial population is drawn at random.
    #[serde(default)]
    pub seeds: Option<Vec<String>>,
    /// Retained start tokens `n_hat` when it is not searched; the seeds' value when it is (default 0).
    #[serde(default)]
    pub n_hat: usize,
    /// Search `n_hat` over `n_hat_values` (default false).
    #[serde(default)]
    pub search_n_hat: bool,
    /// The `n_hat` values searched (default the paper's 0, 1, 2, 4, 8, 12, ..., 32, 64, 128, 256).
    #[serde(default = "default_n_hat_values")]
    pub n_hat_values: Vec<usize>,
    /// Search the attention factor on this grid; absent: the method's own policy (`attention_factor` unset).
    #[serde(default)]
    pub attention_factor: Option<AttentionSearch>,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        SpaceConfig {
            mode: SearchMode::default(),
            kind: SpaceKind::default(),
            step: default_step(),
            max_factor: None,
            seeds: None,
            n_hat: 0,
            search_n_hat: false,
            n_hat_values: default_n_hat_values(),
            attention_factor: None,
        }
    }
}

impl SpaceConfig {
    /// The seed specs this config means for a model architecture (`llama`, `mistral`; `None` when unknown): the
    /// `seeds` given, else the mode's default.
    pub fn seed_specs(&self, arch: Option<&str>) -> Vec<String> {
        match (&self.seeds, self.mode) {
            (Some(v), _) => v.clone(),
            (None, SearchMode::Reference) => vec![reference_yarn_seed(arch)],
            (None, SearchMode::Paper) => paper_seeds(),
        }
    }
}

/// One point of a search space, as grid indices (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Genome {
    /// Grid index `k_i` of each dimension's factor, `lambda_i = 1 + k_i * step`.
    pub dims: Vec<u32>,
    /// `dim_piece_mono` boundaries `(a, b)`, `0 <= a <= b <= d/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<(u32, u32)>,
    /// Index into the space's `n_hat` values.
    #[serde(default)]
    pub n_hat: u32,
    /// Index into the attention-factor grid (0 when it is not searched).
    #[serde(default)]
    pub attn: u32,
}

/// What identifies a candidate: the factors' grid indices, `n_hat` and attention indices (not the boundaries,
/// which do not change what is evaluated).
pub type GenomeKey = Vec<u32>;

impl Genome {
    /// The deduplication key of this genome.
    pub fn key(&self) -> GenomeKey {
        let mut k = self.dims.clone();
        k.push(self.n_hat);
        k.push(self.attn);
        k
    }
}

/// A set of already-proposed genomes (by [`Genome::key`]), ordered so checkpoints are reproducible.
pub type Seen = BTreeSet<GenomeKey>;

/// A resolved search space: the config validated against a [`RopeShape`] with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpace {
    /// Which defaults and operators.
    #[serde(default)]
    pub mode: SearchMode,
    /// Which space.
    pub kind: SpaceKind,
    /// The model/extension shape (`d`, base, `L`, `L'`).
    pub shape: RopeShape,
    /// Number of factors `d/2`.
    pub half_dim: usize,
    /// The extension ratio `s = L'/L`.
    pub scale: f64,
    /// Grid step of the factors.
    pub step: f64,
    /// Largest factor, on the grid.
    pub max_factor: f64,
    /// Grid index of `max_factor`.
    pub max_index: u32,
    /// Grid index of `s` (snapped), the fixed value above `b` in `dim_piece_mono`.
    pub scale_index: u32,
    /// The `n_hat` values: the searched list, or the single fixed value.
    pub n_hat_values: Vec<usize>,
    /// Index of the config's `n_hat` in `n_hat_values` (the seeds' value).
    pub n_hat_seed: u32,
    /// The attention grid, if searched.
    pub attention: Option<AttentionSearch>,
    /// Number of attention grid values (1 when not searched).
    pub attention_count: u32,
}

/// Round to 12 decimals so grid values print as written (`1.37`, not `1.3700000000000001`).
fn round12(x: f64) -> f64 {
    (x * 1e12).round() / 1e12
}

/// A standard normal draw (Box-Muller), from the strategy's own RNG so runs are reproducible.
pub fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl SearchSpace {
    /// Validate `config` against `shape` and resolve the defaults (`max_factor = 1 + s` or `1.25 s`).
    pub fn new(config: &SpaceConfig, shape: &RopeShape) -> Result<Self> {
        shape.validate()?;
        let scale = shape.scale();
        if scale < 1.0 {
            return Err(SearchError::invalid(
                "target length",
                format!(
                    "the target context {} is shorter than the original {}",
                    shape.max_position_embeddings, shape.original_max_position_embeddings
                ),
            ));
        }
        if !(config.step.is_finite() && config.step > 0.0) {
            return Err(SearchError::invalid("space.step", format!("must be positive, got {}", config.step)));
        }
        let max_factor = config.max_factor.unwrap_or(match config.mode {
            SearchMode::Reference => 1.0 + scale,
            SearchMode::Paper => 1.25 * scale,
        });
        if !(max_factor.is_finite() && max_factor >= 1.0) {
            return Err(SearchError::invalid("space.max_factor", format!("must be >= 1, got {max_factor}")));
        }
        let max_index = ((max_factor - 1.0) / config.step + 1e-9).floor();
        if max_index > 1e6 {
            return Err(SearchError::invalid("space.step", "the grid has more than a million values per dimension"));
        }
        let max_index = max_index as u32;
        let scale_index = ((scale - 1.0) / config.step).round().min(max_index as f64) as u32;
        if config.kind == SpaceKind::DimPieceMono && max_factor + 1e-9 < scale {
            return Err(SearchError::invalid(
                "space.max_factor",
                format!("dim_piece_mono fixes the upper dimensions to s = {scale}: max_factor {max_factor} is below it"),
            ));
        }
        let (n_hat_values, n_hat_seed) = if config.search_n_hat {
            let mut v = config.n_hat_values.clone();
            if v.is_empty() {
                return Err(SearchError::invalid("space.n_hat_values", "empty list"));
            }
            let mut sorted = v.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != v.len() {
                return Err(SearchError::invalid("space.n_hat_values", "values repeat"));
            }
            v.sort_unstable();
            let seed = v.iter().position(|&n| n == config.n_hat).ok_or_else(|| {
                SearchError::invalid("space.n_hat", format!("{} is not one of n_hat_values {:?}", config.n_hat, v))
            })?;
            (v, seed as u32)
        } else {
            (vec![config.n_hat], 0)
        };
        let attention_count = match &config.attention_factor {
            None => 1,
            Some(a) => {
                if !(a.min.is_finite() && a.min > 0.0 && a.max >= a.min && a.step > 0.0) {
                    return Err(SearchError::invalid(
                        "space.attention_factor",
                        format!("needs 0 < min <= max and step > 0, got min {} max {} step {}", a.min, a.max, a.step),
                    ));
                }
                ((a.max - a.min) / a.step + 1e-9).floor() as u32 + 1
            }
        };
        Ok(SearchSpace {
            mode: config.mode,
            kind: config.kind,
            shape: shape.clone(),
            half_dim: shape.head_dim / 2,
            scale,
            step: config.step,
            max_factor: round12(1.0 + max_index as f64 * config.step),
            max_index,
            scale_index,
            n_hat_values,
            n_hat_seed,
            attention: config.attention_factor.clone(),
            attention_count,
        })
    }

    /// The factor of grid index `k`: `1 + k * step`.
    pub fn factor(&self, k: u32) -> f64 {
        round12(1.0 + k as f64 * self.step)
    }

    /// The grid index nearest to factor `x`, clamped to `[1, max_factor]`.
    pub fn index_of(&self, x: f64) -> u32 {
        let k = ((x - 1.0) / self.step).round();
        if k.is_nan() || k < 0.0 {
            0
        } else {
            (k as u32).min(self.max_index)
        }
    }

    /// The attention factor of attention index `j` (`None` when the attention factor is not searched).
    pub fn attention_factor(&self, j: u32) -> Option<f64> {
        self.attention.as_ref().map(|a| round12(a.min + j as f64 * a.step))
    }

    /// Whether `n_hat` is searched.
    pub fn searches_n_hat(&self) -> bool {
        self.n_hat_values.len() > 1
    }

    /// The candidate a genome stands for.
    pub fn candidate(&self, g: &Genome) -> Candidate {
        Candidate {
            factors: g.dims.iter().map(|&k| self.factor(k)).collect(),
            n_hat: self.n_hat_values[g.n_hat as usize],
            attn_factor: self.attention_factor(g.attn),
        }
    }

    /// A genome from factors (a seed): snapped to the grid, made monotone (running maximum), and in
    /// `dim_piece_mono` given boundaries: `(0, 0)` in `reference` mode (the reference's initial alpha and beta),
    /// else `a` = leading factors at 1, `b` = first of the trailing factors `>= s`, then projected. The attention
    /// factor, when searched, is snapped to its grid.
    pub fn genome_from_factors(&self, factors: &[f64], attn_factor: Option<f64>) -> Result<Genome> {
        if factors.len() != self.half_dim {
            return Err(SearchError::invalid(
                "seed factors",
                format!("expected {} factors (d/2), got {}", self.half_dim, factors.len()),
            ));
        }
        if let Some(i) = factors.iter().position(|x| !x.is_finite()) {
            return Err(SearchError::invalid("seed factors", format!("factor {i} is {}", factors[i])));
        }
        let mut dims: Vec<u32> = factors.iter().map(|&x| self.index_of(x)).collect();
        for i in 1..dims.len() {
            dims[i] = dims[i].max(dims[i - 1]);
        }
        let attn = match (&self.attention, attn_factor) {
            (Some(a), Some(m)) => {
                (((m - a.min) / a.step).round().max(0.0) as u32).min(self.attention_count - 1)
            }
            (Some(a), None) => (((1.0 - a.min) / a.step).round().max(0.0) as u32).min(self.attention_count - 1),
            (None, _) => 0,
        };
        let mut g = Genome { dims, bounds: None, n_hat: self.n_hat_seed, attn };
        if self.kind == SpaceKind::DimPieceMono && self.mode == SearchMode::Reference {
            // `preprocess_init_factors`: alpha = beta = 0 in front of the seed's factors.
            g.bounds = Some((0, 0));
        } else if self.kind == SpaceKind::DimPieceMono {
            let h = self.half_dim as u32;
            let a = g.dims.iter().take_while(|&&k| k == 0).count() as u32;
            let trailing = g.dims.iter().rev().take_while(|&&k| k >= self.scale_index).count() as u32;
            let b = (h - trailing).max(a);
            g.bounds = Some((a, b));
            self.project(&mut g);
        }
        Ok(g)
    }

    /// The deduplication key of a genome in this space: [`Genome::key`], plus the boundaries in `reference`
    /// `dim_piece_mono` (the reference's `Individual.__eq__` compares alpha and beta too).
    pub fn key(&self, g: &Genome) -> GenomeKey {
        let mut k = g.key();
        if let (SearchMode::Reference, Some((a, b))) = (self.mode, g.bounds) {
            k.push(a);
            k.push(b);
        }
        k
    }

    /// `dim_piece_mono` in `paper` mode: set the fixed parts from the boundaries and cap the middle so the whole
    /// vector can stay monotone (`<= s` when fixed dimensions follow). No-op in `dim_mono` and in `reference`
    /// mode (the reference never re-imposes the fixed parts).
    pub fn project(&self, g: &mut Genome) {
        if self.mode == SearchMode::Reference {
            return;
        }
        if let Some((a, b)) = g.bounds {
            let (a, b) = (a as usize, b as usize);
            let cap = if b < self.half_dim { self.scale_index } else { self.max_index };
            for (i, k) in g.dims.iter_mut().enumerate() {
                if i < a {
                    *k = 0;
                } else if i >= b {
                    *k = self.scale_index;
                } else {
                    *k = (*k).min(cap);
                }
            }
        }
    }

    /// Whether a genome satisfies every constraint of the space (length, bounds, monotonicity, and in `paper`
    /// `dim_piece_mono` the fixed parts).
    pub fn is_valid(&self, g: &Genome) -> bool {
        if g.dims.len() != self.half_dim
            || g.dims.iter().any(|&k| k > self.max_index)
            || g.dims.windows(2).any(|w| w[0] > w[1])
            || g.n_hat as usize >= self.n_hat_values.len()
            || g.attn >= self.attention_count
        {
            return false;
        }
        match (self.kind, g.bounds) {
            (SpaceKind::DimMono, None) => true,
            (SpaceKind::DimPieceMono, Some((a, b))) if self.mode == SearchMode::Reference => a <= b && (b as usize) <= self.half_dim,
            (SpaceKind::DimPieceMono, Some((a, b))) => {
                let (a, b) = (a as usize, b as usize);
                a <= b
                    && b <= self.half_dim
                    && g.dims[..a].iter().all(|&k| k == 0)
                    && g.dims[b..].iter().all(|&k| k == self.scale_index)
            }
            _ => false,
        }
    }

    /// The searched dimensions of a genome: all in `dim_mono`, `a..b` in `dim_piece_mono`.
    fn searched_dims(&self, g: &Genome) -> std::ops::Range<usize> {
        match g.bounds {
            Some((a, b)) => a as usize..b as usize,
            None => 0..self.half_dim,
        }
    }

    /// Grid bounds `[lo, hi]` of dimension `i` given its neighbours (1 below dimension 0, `max_factor` above
    /// the last one): redrawing inside them keeps the vector monotone.
    fn neighbour_bounds(&self, dims: &[u32], i: usize) -> (u32, u32) {
        let lo = if i == 0 { 0 } else { dims[i - 1] };
        let hi = if i + 1 == dims.len() { self.max_index } else { dims[i + 1] };
        (lo, hi.max(lo))
    }

    /// One mutation pass (in place): see the module doc. The result is valid if the input was.
    pub fn mutate_once(&self, g: &mut Genome, p: f64, rng: &mut ChaCha8Rng) {
        if let Some((mut a, mut b)) = g.bounds {
            if rng.random::<f64>() < p {
                let h = self.half_dim as i64;
                for _ in 0..100 {
                    let (mut na, mut nb) = (a as i64, b as i64);
                    let delta = (2.0 * standard_normal(rng)).round() as i64;
                    if rng.random::<f64>() < 0.5 {
                        na += delta;
                    } else {
                        nb += delta;
                    }
                    if 0 <= na && na <= nb && nb <= h {
                        a = na as u32;
                        b = nb as u32;
                        break;
                    }
                }
                g.bounds = Some((a, b));
                self.project(g);
            }
        }
        for i in self.searched_dims(g) {
            if rng.random::<f64>() < p {
                let (lo, hi) = self.neighbour_bounds(&g.dims, i);
                g.dims[i] = rng.random_range(lo..=hi);
            }
        }
        if self.searches_n_hat() && rng.random::<f64>() < p {
            g.n_hat = rng.random_range(0..self.n_hat_values.len() as u32);
        }
        if self.attention_count > 1 && rng.random::<f64>() < p {
            g.attn = rng.random_range(0..self.attention_count);
        }
    }

    /// Mutate `parent` until the result is accepted (typically: not seen before), at most `max_tries` passes
    /// (each pass continues from the previous one, as the reference does). `None` if none was accepted. In
    /// `reference` mode the passes are the reference's ([`SearchSpace::reference_mutate`]).
    pub fn mutate(
        &self,
        parent: &Genome,
        p: f64,
        max_tries: usize,
        rng: &mut ChaCha8Rng,
        accept: impl Fn(&Genome) -> bool,
    ) -> Option<Genome> {
        if self.mode == SearchMode::Reference {
            return self.reference_mutate(parent, p, max_tries, rng, accept);
        }
        let mut g = parent.clone();
        for _ in 0..max_tries {
            self.mutate_once(&mut g, p, rng);
            if self.is_valid(&g) && accept(&g) {
                return Some(g);
            }
        }
        None
    }

    /// LongRoPE crossover of `p1` (the fitter parent) and `p2`: see the module doc. `None` when the parents
    /// are equal or no accepted child was found in `max_tries` passes. In `reference` `dim_piece_mono` the
    /// boundaries are two genes (`i < 2` each copies both, `dim_piece_mono.py:77-79`) and nothing is projected.
    pub fn crossover<D: Draws>(
        &self,
        p1: &Genome,
        p2: &Genome,
        p: f64,
        max_tries: usize,
        rng: &mut D,
        accept: impl Fn(&Genome) -> bool,
    ) -> Option<Genome> {
        if self.key(p1) == self.key(p2) && p1.bounds == p2.bounds {
            return None;
        }
        // Genes: [boundaries], dims..., [n_hat], [attention].
        let bound_genes = match (p1.bounds.is_some(), self.mode) {
            (false, _) => 0,
            (true, SearchMode::Paper) => 1,
            (true, SearchMode::Reference) => 2,
        };
        let genes = bound_genes + self.half_dim + self.searches_n_hat() as usize + (self.attention_count > 1) as usize;
        let mut child = p1.clone();
        for _ in 0..max_tries {
            for gene in 0..genes {
                if rng.rand() >= p {
                    continue;
                }
                if rng.rand() < 0.5 {
                    match gene < bound_genes {
                        true => child.bounds = p2.bounds,
                        false => {
                            let j = gene - bound_genes;
                            if j < self.half_dim {
                                child.dims[j] = p2.dims[j];
                            } else if j == self.half_dim && self.searches_n_hat() {
                                child.n_hat = p2.n_hat;
                            } else {
                                child.attn = p2.attn;
                            }
                        }
                    }
                    self.project(&mut child);
                }
                if self.is_valid(&child) && accept(&child) {
                    return Some(child);
                }
            }
        }
        None
    }

    /// A uniformly drawn point: `d/2` uniform grid values sorted (monotone); in `dim_piece_mono` two sorted
    /// uniform boundaries first; uniform `n_hat` and attention indices when searched.
    pub fn random(&self, rng: &mut ChaCha8Rng) -> Genome {
        let h = self.half_dim;
        let mut g = Genome { dims: vec![0; h], bounds: None, n_hat: self.n_hat_seed, attn: 0 };
        let cap = match self.kind {
            SpaceKind::DimMono => self.max_index,
            SpaceKind::DimPieceMono => {
                let x = rng.random_range(0..=h as u32);
                let y = rng.random_range(0..=h as u32);
                let (a, b) = (x.min(y), x.max(y));
                g.bounds = Some((a, b));
                if (b as usize) < h {
                    self.scale_index
                } else {
                    self.max_index
                }
            }
        };
        for k in g.dims.iter_mut() {
            *k = rng.random_range(0..=cap);
        }
        g.dims.sort_unstable();
        self.project(&mut g);
        if self.searches_n_hat() {
            g.n_hat = rng.random_range(0..self.n_hat_values.len() as u32);
        }
        if self.attention_count > 1 {
            g.attn = rng.random_range(0..self.attention_count);
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    pub(crate) fn shape() -> RopeShape {
        RopeShape {
            head_dim: 64,
            rope_base: 100_000.0,
            original_max_position_embeddings: 8192,
            max_position_embeddings: 16384,
            num_layers: 30,
        }
    }

    fn paper() -> SpaceConfig {
        SpaceConfig { mode: SearchMode::Paper, ..SpaceConfig::default() }
    }

    /// The four `paper`-mode spaces the property tests run in.
    fn spaces() -> Vec<SearchSpace> {
        let mono = paper();
        let piece = SpaceConfig { kind: SpaceKind::DimPieceMono, ..paper() };
        let full = SpaceConfig {
            search_n_hat: true,
            attention_factor: Some(AttentionSearch { min: 1.0, max: 1.2, step: 0.01 }),
            ..paper()
        };
        let full_piece = SpaceConfig { kind: SpaceKind::DimPieceMono, ..full.clone() };
        [mono, piece, full, full_piece].iter().map(|c| SearchSpace::new(c, &shape()).unwrap()).collect()
    }

    /// Check monotonicity and bounds directly on the factor values (not through `is_valid`).
    fn assert_in_space(space: &SearchSpace, g: &Genome) {
        let c = space.candidate(g);
        assert_eq!(c.factors.len(), 32);
        for w in c.factors.windows(2) {
            assert!(w[0] <= w[1], "not monotone: {:?}", c.factors);
        }
        assert!(c.factors[0] >= 1.0 && *c.factors.last().unwrap() <= 2.5, "{:?}", c.factors);
        if let Some((a, b)) = g.bounds {
            assert!(a <= b && b <= 32);
            assert!(c.factors[..a as usize].iter().all(|&x| x == 1.0), "{:?} {a}", c.factors);
            assert!(c.factors[b as usize..].iter().all(|&x| x == 2.0), "{:?} {b}", c.factors);
        }
        for x in &c.factors {
            let k = (x - 1.0) / 0.01;
            assert!((k - k.round()).abs() < 1e-6, "{x} off the grid");
        }
        assert!(PAPER_N_HAT_VALUES.contains(&c.n_hat));
        if let Some(m) = c.attn_factor {
            assert!((1.0..=1.2 + 1e-12).contains(&m), "{m}");
        }
        assert!(space.is_valid(g));
    }

    #[test]
    fn defaults_follow_the_reference_or_the_paper() {
        let r = SearchSpace::new(&SpaceConfig::default(), &shape()).unwrap();
        assert_eq!(r.mode, SearchMode::Reference);
        assert_eq!(r.max_factor, 3.0); // 1 + s
        assert_eq!(SpaceConfig::default().seed_specs(Some("llama")), vec!["yarn{blend = \"factor\"}".to_string()]);
        assert_eq!(
            SpaceConfig::default().seed_specs(Some("mistral")),
            vec!["yarn{blend = \"factor\", beta_fast = 128.0, beta_slow = 2.0}".to_string()]
        );
        assert_eq!(paper().seed_specs(Some("mistral")), vec!["pi", "ntk", "yarn"]);
        let explicit = SpaceConfig { seeds: Some(vec![]), ..SpaceConfig::default() };
        assert!(explicit.seed_specs(None).is_empty());
        let s = SearchSpace::new(&paper(), &shape()).unwrap();
        assert_eq!(s.scale, 2.0);
        assert_eq!(s.max_factor, 2.5); // 1.25 s
        assert_eq!(s.max_index, 150);
        assert_eq!(s.scale_index, 100);
        assert_eq!(s.factor(37), 1.37);
        assert_eq!(s.index_of(1.374), 37);
        assert_eq!(s.index_of(0.5), 0);
        assert_eq!(s.index_of(9.0), 150);
        assert_eq!(s.n_hat_values, vec![0]);
        let n = SearchSpace::new(&SpaceConfig { search_n_hat: true, ..paper() }, &shape()).unwrap();
        assert_eq!(n.n_hat_values, PAPER_N_HAT_VALUES.to_vec());
    }

    #[test]
    fn bad_configs_are_refused_with_the_field_named() {
        let err = |c: SpaceConfig| SearchSpace::new(&c, &shape()).unwrap_err().to_string();
        assert!(err(SpaceConfig { step: 0.0, ..SpaceConfig::default() }).contains("space.step"));
        assert!(err(SpaceConfig { max_factor: Some(0.5), ..SpaceConfig::default() }).contains("space.max_factor"));
        let piece = SpaceConfig { kind: SpaceKind::DimPieceMono, max_factor: Some(1.5), ..SpaceConfig::default() };
        assert!(err(piece).contains("space.max_factor"));
        let n = SpaceConfig { search_n_hat: true, n_hat: 3, ..SpaceConfig::default() };
        assert!(err(n).contains("space.n_hat"));
        let shorter = RopeShape { max_position_embeddings: 4096, ..shape() };
        assert!(SearchSpace::new(&SpaceConfig::default(), &shorter).unwrap_err().to_string().contains("shorter"));
    }

    #[test]
    fn seeds_snap_and_piece_boundaries_are_derived() {
        let spaces = spaces();
        let ntk: Vec<f64> = (0..32).map(|i| 2f64.powf(2.0 * i as f64 / 62.0)).collect();
        let g = spaces[0].genome_from_factors(&ntk, None).unwrap();
        assert_eq!(g.dims[0], 0);
        assert_eq!(g.dims[31], 100);
        assert_eq!(g.dims[16], ((2f64.powf(32.0 / 62.0) - 1.0) / 0.01).round() as u32);
        assert_in_space(&spaces[0], &g);
        // PI in dim_piece_mono: no leading 1, everything from dimension 0 fixed to s.
        let pi = spaces[1].genome_from_factors(&[2.0; 32], None).unwrap();
        assert_eq!(pi.bounds, Some((0, 0)));
        assert_in_space(&spaces[1], &pi);
        let g = spaces[1].genome_from_factors(&ntk, None).unwrap();
        assert_eq!(g.bounds, Some((1, 31)));
        assert_in_space(&spaces[1], &g);
        // The attention factor is snapped to its grid.
        let g = spaces[2].genome_from_factors(&ntk, Some(1.0693)).unwrap();
        assert_eq!(spaces[2].candidate(&g).attn_factor, Some(1.07));
        assert!(spaces[0].genome_from_factors(&[1.0; 31], None).is_err());
    }

    #[test]
    fn mutation_respects_monotonicity_and_bounds() {
        for space in spaces() {
            for seed in 0..200u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut g = space.random(&mut rng);
                assert_in_space(&space, &g);
                for _ in 0..20 {
                    let parent = g.clone();
                    g = space.mutate(&parent, 0.3, 1000, &mut rng, |c| c.key() != parent.key()).expect("a new point");
                    assert_in_space(&space, &g);
                }
            }
        }
    }

    #[test]
    fn crossover_respects_monotonicity_and_bounds_and_mixes_parents() {
        for space in spaces() {
            for seed in 0..200u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let p1 = space.random(&mut rng);
                let p2 = space.random(&mut rng);
                let child = space.crossover(&p1, &p2, 0.3, 20, &mut rng, |c| c.key() != p1.key() && c.key() != p2.key());
                if let Some(c) = child {
                    assert_in_space(&space, &c);
                    // Every factor comes from one of the parents, unless a piece boundary fixed it.
                    if c.bounds.is_none() {
                        for i in 0..32 {
                            assert!(c.dims[i] == p1.dims[i] || c.dims[i] == p2.dims[i]);
                        }
                    }
                }
                assert!(space.crossover(&p1, &p1.clone(), 0.3, 20, &mut rng, |_| true).is_none());
            }
        }
    }

    #[test]
    fn crossover_usually_finds_a_child() {
        let space = &spaces()[0];
        let mut found = 0;
        for seed in 0..100u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let ntk: Vec<f64> = (0..32).map(|i| 2f64.powf(2.0 * i as f64 / 62.0)).collect();
            let p1 = space.genome_from_factors(&ntk, None).unwrap();
            let p2 = space.mutate(&p1, 0.3, 100, &mut rng, |c| c != &p1).unwrap();
            found += space.crossover(&p1, &p2, 0.3, 20, &mut rng, |c| c.key() != p1.key() && c.key() != p2.key()).is_some() as usize;
        }
        assert!(found > 50, "{found}");
    }

    /// `reference` mode: the reference's piece boundaries (alpha < beta after every mutation, no projection, the
    /// last two factors fixed), monotone factors on the grid.
    #[test]
    fn reference_operators_keep_the_references_constraints() {
        for kind in [SpaceKind::DimMono, SpaceKind::DimPieceMono] {
            let space = SearchSpace::new(&SpaceConfig { kind, ..SpaceConfig::default() }, &shape()).unwrap();
            // A YaRN-like ramp from 1 to s, as the reference's seed (which ends at s: the dimensions above beta
            // are set to s, so a seed ending below it could never be monotone again).
            let ramp: Vec<f64> = (0..32).map(|i| 1.0 + ((i as f64 - 10.0) / 10.0).clamp(0.0, 1.0)).collect();
            let seed = space.genome_from_factors(&ramp, None).unwrap();
            assert_eq!(seed.bounds, (kind == SpaceKind::DimPieceMono).then_some((0, 0)));
            for rng_seed in 0..100u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
                let mut g = seed.clone();
                for _ in 0..10 {
                    let parent = g.clone();
                    g = space.mutate(&parent, 0.3, 10_000, &mut rng, |c| space.key(c) != space.key(&parent)).expect("a new point");
                    assert!(space.is_valid(&g));
                    assert!(g.dims.windows(2).all(|w| w[0] <= w[1]));
                    assert!(g.dims.iter().all(|&k| k <= space.max_index));
                    if let Some((a, b)) = g.bounds {
                        assert!(a < b && (b as usize) < 32, "{a} {b}");
                        assert_eq!(g.dims[30..], seed.dims[30..], "the last two factors never change");
                    }
                }
                let other = space.mutate(&seed, 0.3, 10_000, &mut rng, |c| space.key(c) != space.key(&seed)).unwrap();
                if let Some(c) = space.crossover(&g, &other, 0.3, 20, &mut rng, |c| space.key(c) != space.key(&g)) {
                    assert!(space.is_valid(&c));
                }
            }
        }
    }

    #[test]
    fn standard_normal_has_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let xs: Vec<f64> = (0..20000).map(|_| standard_normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{mean} {var}");
    }
}
