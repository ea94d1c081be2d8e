//! Training windows: documents packed into one token stream, cut into fixed-length windows, visited in a
//! seeded order; optional PoSE positions and LongRoPE2 mixed context windows.
//!
//! - **Packing** (as LongRoPE's fine-tuning on RedPajama and HF's `group_texts`): every training document
//!   becomes `[BOS] doc [EOS]` (each when the model has it and it is enabled), the documents are concatenated
//!   in corpus order, and the stream is cut into windows of `seq_len` tokens (a shorter tail is dropped). A
//!   window of `n` tokens gives `n - 1` next-token targets. Documents named in `held_out` never enter the stream.
//! - **Order**: window `g` of the run (0, 1, 2 ... across epochs) is stream window `perm_e[g mod n]` with
//!   `e = g / n` and `perm_e` a ChaCha8 shuffle seeded by `seed` on stream `e`. The data position of a run is
//!   therefore the single number `g`, and a resumed run continues exactly.
//! - **PoSE** (Zhu et al., arXiv 2309.10400, `train_pose.py` of dwzhu-pku/PoSE): a window of `n` tokens keeps
//!   its text but its position ids are spread over `[0, target)`: with two chunks (the reference), the first
//!   `c ~ U{1 .. (n+1)/2}` tokens sit at `0 .. c` and the rest at `c + u .. n + u` with `u ~ U{0 .. target - n}`
//!   (the reference's `lt = 0` revision). With `chunks = N > 2`, `N - 1` distinct sorted cut points
//!   `~ U{1 .. n-1}` and sorted skips `~ U{0 .. target - n}`. Randomness comes from ChaCha8 seeded by `seed` on
//!   stream `2^32 + g`, so it is a function of the window index alone.
//! - **Mixed context windows** (LongRoPE2, arXiv 2502.20082 §3.3): a fraction `short_ratio` of the tokens is
//!   trained as short windows of `short_len` with the original RoPE, the rest as long windows with the rescaled
//!   RoPE. Micro-batch `m` is short when `floor((m+1) r) > floor(m r)`, so the token ratio is exact and needs no
//!   state; a short micro-batch cuts each of its windows into `seq_len / short_len` rows.

use longrope_core::eval::TokenSource;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

/// One document of the training stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedDoc {
    /// Its name in the corpus (file stem, `file.jsonl:LINE`, store entry).
    pub name: String,
    /// Its length in tokens (without BOS/EOS).
    pub tokens: usize,
    /// SHA-256 (hex) of its token ids (little-endian `u32`), the identity the held-out checks compare.
    pub sha256: String,
}

/// SHA-256 (hex) of token ids as little-endian `u32`.
pub fn tokens_sha256(ids: &[u32]) -> String {
    let mut h = Sha256::new();
    for t in ids {
        h.update(t.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The training documents packed into one token stream.
#[derive(Debug, Clone)]
pub struct PackedCorpus {
    tokens: Vec<u32>,
    docs: Vec<PackedDoc>,
    excluded: Vec<String>,
}

impl PackedCorpus {
    /// Pack every document of `source` except those named in `held_out`, each as `[bos] doc [eos]`.
    /// `origin` names the data in errors. An empty result is an error.
    pub fn build(source: &dyn TokenSource, held_out: &[String], bos: Option<u32>, eos: Option<u32>, origin: &str) -> Result<Self> {
        let mut tokens = Vec::new();
        let mut docs = Vec::new();
        let mut excluded = Vec::new();
        for i in 0..source.num_docs() {
            let name = source.doc_name(i);
            if held_out.iter().any(|h| h == &name) {
                excluded.push(name);
                continue;
            }
            let ids = source.doc(i)?;
            if ids.is_empty() {
                continue;
            }
            tokens.extend(bos);
            tokens.extend_from_slice(&ids);
            tokens.extend(eos);
            docs.push(PackedDoc { name, tokens: ids.len(), sha256: tokens_sha256(&ids) });
        }
        if docs.is_empty() {
            return Err(DataError::NotEnoughData {
                origin: origin.to_string(),
                message: format!("no training documents left ({} held out: {})", excluded.len(), excluded.join(", ")),
            });
        }
        Ok(PackedCorpus { tokens, docs, excluded })
    }

    /// The packed stream.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The documents in the stream, in order.
    pub fn docs(&self) -> &[PackedDoc] {
        &self.docs
    }

    /// The held-out documents that were found in the data (and left out).
    pub fn excluded(&self) -> &[String] {
        &self.excluded
    }
}

/// PoSE settings: positions of a window spread over `[0, target)` in `chunks` chunks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    /// The context the positions simulate (at least the window length).
    pub target: usize,
    /// Number of chunks (2 in the reference).
    pub chunks: usize,
}

/// LongRoPE2 mixed context windows: the share of tokens trained as short windows with the original RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mixed {
    /// Length of a short window (divides the window length).
    pub short_len: usize,
    /// Fraction of tokens trained as short windows, in `[0, 1]`.
    pub short_ratio: f64,
}

/// Whether micro-batch `m` is a short one for a short-token ratio `r` (exact ratio, no state).
pub fn is_short(m: u64, r: f64) -> bool {
    ((m + 1) as f64 * r).floor() > (m as f64 * r).floor()
}

/// PoSE position ids of a window of `len` tokens simulating `target` positions with `chunks` chunks, drawn
/// from `rng` (see the module header). `chunks = 1` or `target == len` gives `0 .. len`.
pub fn pose_positions(len: usize, target: usize, chunks: usize, rng: &mut ChaCha8Rng) -> Vec<i64> {
    let span = target.saturating_sub(len);
    let mut pos: Vec<i64> = (0..len as i64).collect();
    if chunks < 2 || len < 2 {
        return pos;
    }
    if chunks == 2 {
        let cut = rng.random_range(1..=(len + 1) / 2);
        let skip = rng.random_range(0..=span) as i64;
        pos[cut..].iter_mut().for_each(|p| *p += skip);
        return pos;
    }
    let k = (chunks - 1).min(len - 1);
    let mut cuts: Vec<usize> = (1..len).collect();
    cuts.shuffle(rng);
    cuts.truncate(k);
    cuts.sort_unstable();
    let mut skips: Vec<i64> = (0..k).map(|_| rng.random_range(0..=span) as i64).collect();
    skips.sort_unstable();
    for (c, s) in cuts.iter().zip(&skips) {
        // Later chunks add the difference to the previous skip, so chunk i ends up shifted by skips[i].
        let prev = pos[*c] - *c as i64;
        pos[*c..].iter_mut().for_each(|p| *p += s - prev);
    }
    pos
}

/// One micro-batch: `rows x len` token ids, their position ids, and whether it is a short (original-RoPE)
/// batch of mixed context windows.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatch {
    /// Token ids, row-major `[rows, len]`.
    pub tokens: Vec<i64>,
    /// Position ids, row-major `[rows, len]` (`0 .. len` per row unless PoSE).
    pub positions: Vec<i64>,
    /// Number of rows.
    pub rows: usize,
    /// Tokens per row.
    pub len: usize,
    /// A short window of mixed training (trained with the original RoPE).
    pub short: bool,
    /// Whether the positions are PoSE's (spread over the target) rather than `0 .. len`.
    pub pose: bool,
}

impl MicroBatch {
    /// Next-token targets in the batch: `rows * (len - 1)`.
    pub fn targets(&self) -> usize {
        self.rows * self.len.saturating_sub(1)
    }
}

/// The windows of a training run: the packed stream, the window length, the batch, and the options.
#[derive(Debug, Clone)]
pub struct WindowPlan {
    corpus: PackedCorpus,
    /// Tokens per window.
    pub seq_len: usize,
    /// Windows per micro-batch.
    pub batch_size: usize,
    /// Seed of the order and of PoSE.
    pub seed: u64,
    /// PoSE positions for long windows.
    pub pose: Option<Pose>,
    /// Mixed context windows.
    pub mixed: Option<Mixed>,
    num_windows: usize,
}

impl WindowPlan {
    /// A plan over `corpus`; checks that the stream holds at least one micro-batch and that the options fit
    /// (`field` names in errors are the config's).
    pub fn new(
        corpus: PackedCorpus,
        seq_len: usize,
        batch_size: usize,
        seed: u64,
        pose: Option<Pose>,
        mixed: Option<Mixed>,
        origin: &str,
    ) -> Result<Self> {
        let invalid = |message: String| DataError::NotEnoughData { origin: origin.to_string(), message };
        if seq_len < 2 || batch_size == 0 {
            return Err(invalid(format!("seq_len must be >= 2 and batch_size >= 1 (got {seq_len}, {batch_size})")));
        }
        let num_windows = corpus.tokens.len() / seq_len;
        if num_windows < batch_size {
            return Err(invalid(format!(
                "the training stream has {} tokens: fewer than one batch of {batch_size} x {seq_len}-token windows",
                corpus.tokens.len()
            )));
        }
        if let Some(p) = pose {
            if p.target < seq_len || p.chunks == 0 {
                return Err(invalid(format!("pose.target {} must be >= seq_len {seq_len} and pose.chunks >= 1", p.target)));
            }
        }
        if let Some(m) = mixed {
            if m.short_len < 2 || seq_len % m.short_len != 0 || !(0.0..=1.0).contains(&m.short_ratio) {
                return Err(invalid(format!(
                    "mixed.short_len {} must divide seq_len {seq_len} (and be >= 2), mixed.short_ratio {} must be in [0, 1]",
                    m.short_len, m.short_ratio
                )));
            }
        }
        Ok(WindowPlan { corpus, seq_len, batch_size, seed, pose, mixed, num_windows })
    }

    /// The packed corpus.
    pub fn corpus(&self) -> &PackedCorpus {
        &self.corpus
    }

    /// Windows in one epoch.
    pub fn num_windows(&self) -> usize {
        self.num_windows
    }

    /// The stream window visited as window `g` of the run.
    pub fn stream_window(&self, g: u64) -> usize {
        let n = self.num_windows as u64;
        let (epoch, idx) = (g / n, (g % n) as usize);
        let mut order: Vec<usize> = (0..self.num_windows).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        order.shuffle(&mut rng);
        order[idx]
    }

    /// Micro-batch `m` of the run (it consumes windows `m * batch_size ..`).
    pub fn micro_batch(&self, m: u64) -> MicroBatch {
        let short = self.mixed.is_some_and(|x| is_short(m, x.short_ratio));
        let mut tokens = Vec::with_capacity(self.batch_size * self.seq_len);
        let mut positions = Vec::with_capacity(self.batch_size * self.seq_len);
        let first = m * self.batch_size as u64;
        let mut pose_used = false;
        for g in first..first + self.batch_size as u64 {
            let w = self.stream_window(g);
            let ids = &self.corpus.tokens[w * self.seq_len..(w + 1) * self.seq_len];
            tokens.extend(ids.iter().map(|&t| t as i64));
            match (short, self.pose) {
                (true, _) => {
                    let s = self.mixed.map(|x| x.short_len).unwrap_or(self.seq_len);
                    for _ in 0..self.seq_len / s {
                        positions.extend(0..s as i64);
                    }
                }
                (false, Some(p)) => {
                    let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                    rng.set_stream((1u64 << 32) + g);
                    positions.extend(pose_positions(self.seq_len, p.target, p.chunks, &mut rng));
                    pose_used = true;
                }
                (false, None) => positions.extend(0..self.seq_len as i64),
            }
        }
        let len = if short { self.mixed.map(|x| x.short_len).unwrap_or(self.seq_len) } else { self.seq_len };
        MicroBatch { rows: tokens.len() / len, len, tokens, positions, short, pose: pose_used }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::TokenDocs;

    fn corpus(lens: &[usize]) -> TokenDocs {
        let mut next = 10u32;
        TokenDocs {
            docs: lens
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let ids: Vec<u32> = (0..n as u32).map(|k| next + k).collect();
                    next += 1000;
                    (format!("d{i}"), ids)
                })
                .collect(),
        }
    }

    #[test]
    fn packing_adds_bos_eos_and_leaves_held_out_documents_out() {
        let docs = corpus(&[3, 2, 4]);
        let p = PackedCorpus::build(&docs, &["d1".to_string()], Some(1), Some(2), "t").unwrap();
        assert_eq!(p.tokens(), &[1, 10, 11, 12, 2, 1, 2010, 2011, 2012, 2013, 2]);
        assert_eq!(p.docs().iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["d0", "d2"]);
        assert_eq!(p.excluded(), ["d1"]);
        assert_eq!(p.docs()[0].sha256, tokens_sha256(&[10, 11, 12]));
        let err = PackedCorpus::build(&docs, &["d0".into(), "d1".into(), "d2".into()], None, None, "data.txt").unwrap_err();
        assert!(err.to_string().contains("data.txt") && err.to_string().contains("no training documents"), "{err}");
    }

    #[test]
    fn every_window_is_visited_once_per_epoch_in_a_seeded_order() {
        let p = PackedCorpus::build(&corpus(&[100]), &[], None, None, "t").unwrap();
        let plan = WindowPlan::new(p, 10, 1, 7, None, None, "t").unwrap();
        assert_eq!(plan.num_windows(), 10);
        let epoch0: Vec<usize> = (0..10).map(|g| plan.stream_window(g)).collect();
        let epoch1: Vec<usize> = (10..20).map(|g| plan.stream_window(g)).collect();
        let mut sorted = epoch0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(epoch0, epoch1, "each epoch has its own order");
        assert_ne!(epoch0, (0..10).collect::<Vec<_>>(), "the order is shuffled");
        let b = plan.micro_batch(3);
        let w = plan.stream_window(3);
        assert_eq!(b.tokens, (10 + 10 * w as i64..20 + 10 * w as i64).collect::<Vec<_>>());
        assert_eq!(b.positions, (0..10).collect::<Vec<_>>());
        assert_eq!((b.rows, b.len, b.targets()), (1, 10, 9));
    }

    #[test]
    fn pose_positions_follow_the_reference_rule() {
        let mut seen_cut = std::collections::BTreeSet::new();
        let mut max_skip = 0;
        for s in 0..300 {
            let mut rng = ChaCha8Rng::seed_from_u64(s);
            let p = pose_positions(8, 40, 2, &mut rng);
            assert_eq!(p.len(), 8);
            assert!(p.windows(2).all(|w| w[1] > w[0]), "{p:?}");
            let cut = p.windows(2).position(|w| w[1] - w[0] > 1).map(|i| i + 1);
            let skip = *p.last().unwrap() - 7;
            assert!((0..=32).contains(&skip), "skip {skip} within target - len");
            if let Some(c) = cut {
                assert!((1..=4).contains(&c), "first chunk of 1 ..= (n+1)/2 tokens, got {c}");
                seen_cut.insert(c);
            }
            assert_eq!(p[0], 0);
            max_skip = max_skip.max(skip);
        }
        assert_eq!(seen_cut.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(max_skip > 25, "skips reach the end of the target");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = pose_positions(12, 100, 4, &mut rng);
        assert!(p.windows(2).all(|w| w[1] > w[0]) && *p.last().unwrap() < 100, "{p:?}");
        assert_eq!(pose_positions(5, 5, 2, &mut rng), vec![0, 1, 2, 3, 4], "no room: contiguous");
    }

    #[test]
    fn pose_and_mixed_batches_are_functions_of_their_index() {
        let p = PackedCorpus::build(&corpus(&[400]), &[], None, None, "t").unwrap();
        let pose = Some(Pose { target: 64, chunks: 2 });
        let mixed = Some(Mixed { short_len: 4, short_ratio: 0.25 });
        let plan = WindowPlan::new(p, 16, 2, 3, pose, mixed, "t").unwrap();
        let kinds: Vec<bool> = (0..8).map(|m| plan.micro_batch(m).short).collect();
        assert_eq!(kinds.iter().filter(|s| **s).count(), 2, "a quarter of the micro-batches: {kinds:?}");
        let m = kinds.iter().position(|s| *s).unwrap() as u64;
        let short = plan.micro_batch(m);
        assert_eq!((short.rows, short.len, short.targets()), (8, 4, 24));
        assert!(!short.pose && short.positions.chunks(4).all(|r| r == [0, 1, 2, 3]));
        let long = plan.micro_batch(m + 1);
        assert!(long.pose && !long.short && long.rows == 2 && long.len == 16);
        assert!(long.positions.iter().any(|&p| p >= 16), "PoSE spreads positions beyond the window");
        assert_eq!(plan.micro_batch(m + 1), long, "deterministic");
        assert!(WindowPlan::new(PackedCorpus::build(&corpus(&[40]), &[], None, None, "t").unwrap(), 16, 3, 0, None, None, "x").is_err());
    }
}
