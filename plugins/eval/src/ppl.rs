//! `ppl`: long-context perplexity exactly as LongRoPE's `evaluation/perplexity.py` computes it.
//!
//! For each selected document (at least one full window long, first `samples` in corpus order):
//! - `max_tokenized_len = num_tokens - 1` when a BOS token is prepended, else `num_tokens`;
//! - windows begin at `0, stride, 2*stride, ...`; a window that would run past the document is skipped; at most
//!   `max_sliding_count` windows per document; the loop stops at the document's end;
//! - each window is `[BOS] + doc[begin..end]`, and only its new tokens are scored: the last
//!   `trg_len = end - prev_end` labels (HF's `target_ids[:, :-trg_len] = -100`, then the causal shift, so the
//!   first input position is never a target);
//! - `truncate` mode keeps one window of the first `max_tokenized_len` tokens of each document.
//!
//! The window NLL is the mean over its scored tokens (HF's `outputs.loss`); the result is
//! `exp(mean of window NLLs)` over all windows of all documents, as the reference reports it, plus each
//! document's `exp(mean of its window NLLs)`.

use std::time::Instant;

use longrope_core::eval::{Evaluator, EvaluatorConfig, ItemScore, Score, TokenSource};
use longrope_core::model::LanguageModel;
use longrope_core::scaling::RopeSchedule;
use longrope_core::{register_plugin, Error, Result};
use serde::{Deserialize, Serialize};

use longrope_data::corpus::select_docs;
use crate::progress::Progress;

register_plugin!(Evaluator, "ppl", "perplexity over sliding windows, LongRoPE's definition (stride, max windows, truncate)");

/// One scoring window of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First document token of the window.
    pub begin: usize,
    /// One past the last document token.
    pub end: usize,
    /// First input position (after any BOS) whose token is scored; targets are positions `score_from..len`.
    pub score_from: usize,
}

/// The windows the reference scores for a document of `doc_len` tokens.
pub fn windows(doc_len: usize, num_tokens: usize, bos: bool, stride: usize, max_count: usize, truncate: bool) -> Vec<Window> {
    let max_len = num_tokens - usize::from(bos);
    let (doc_len, stride) = if truncate { (doc_len.min(max_len), max_len) } else { (doc_len, stride) };
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < doc_len && out.len() < max_count {
        if begin + max_len > doc_len {
            break;
        }
        let end = begin + max_len;
        let trg_len = end - prev_end;
        let input_len = max_len + usize::from(bos);
        // A stride longer than the window skips tokens: every token of such a window is new (the reference's
        // `target_ids[:, :-trg_len]` is then an empty slice).
        out.push(Window { begin, end, score_from: input_len.saturating_sub(trg_len).max(1) });
        prev_end = end;
        if end == doc_len {
            break;
        }
        begin += stride.max(1);
    }
    out
}

/// Configuration of the `ppl` evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PplConfig {
    /// Stride between windows (`--sliding_window` of the reference).
    #[serde(default = "default_stride")]
    pub sliding_window: usize,
    /// At most this many windows per document.
    #[serde(default = "default_max_sliding_count")]
    pub max_sliding_count: usize,
    /// One window of the first `num_tokens` per document.
    #[serde(default)]
    pub truncate: bool,
    /// Number of documents (the first that are long enough).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Prepend BOS: `true`, `false`, or unset = when the model has a BOS token (the reference's rule).
    #[serde(default)]
    pub add_bos: Option<bool>,
    /// Shuffle the qualifying documents with this seed before taking `samples`.
    #[serde(default)]
    pub shuffle_seed: Option<u64>,
}

fn default_stride() -> usize {
    256
}
fn default_max_sliding_count() -> usize {
    10
}
fn default_samples() -> usize {
    5
}

impl Default for PplConfig {
    fn default() -> Self {
        PplConfig {
            sliding_window: default_stride(),
            max_sliding_count: default_max_sliding_count(),
            truncate: false,
            samples: default_samples(),
            add_bos: None,
            shuffle_seed: None,
        }
    }
}

#[typetag::serde(name = "ppl")]
impl EvaluatorConfig for PplConfig {
    fn build(&self) -> Result<Box<dyn Evaluator>> {
        if self.sliding_window == 0 || self.max_sliding_count == 0 || self.samples == 0 {
            return Err(Error::invalid("ppl", "sliding_window, max_sliding_count and samples must be positive"));
        }
        use longrope_core::limits::{int_in, MAX_CONTEXT, MAX_SAMPLES};
        int_in("ppl.sliding_window", self.sliding_window, 1, MAX_CONTEXT, "a stride in tokens")?;
        int_in("ppl.max_sliding_count", self.max_sliding_count, 1, MAX_SAMPLES, "windows per document")?;
        int_in("ppl.samples", self.samples, 1, MAX_SAMPLES, "documents per length")?;
        Ok(Box::new(Perplexity { config: self.clone() }))
    }
}

/// The built `ppl` evaluator.
#[derive(Debug, Clone)]
pub struct Perplexity {
    /// Its configuration.
    pub config: PplConfig,
}

impl Evaluator for Perplexity {
    fn name(&self) -> &str {
        "ppl"
    }

    fn evaluate(
        &self,
        model: &dyn LanguageModel,
        schedule: &RopeSchedule,
        length: usize,
        data: &dyn TokenSource,
    ) -> Result<Score> {
        let _no_grad = tch::no_grad_guard();
        let c = &self.config;
        let bos_id = match c.add_bos {
            Some(false) => None,
            Some(true) => Some(model.summary().bos_token_id.ok_or_else(|| {
                Error::invalid("ppl.add_bos", "the model has no BOS token")
            })?),
            None => model.summary().bos_token_id,
        };
        if length < 2 + usize::from(bos_id.is_some()) {
            return Err(Error::invalid("ppl length", format!("{length} is too short")));
        }
        let max_len = length - usize::from(bos_id.is_some());
        let picked = select_docs(data, max_len, c.samples, c.shuffle_seed, "ppl data")?;
        let tables = schedule.tables(length)?;
        let plan: Vec<(usize, Vec<Window>)> = picked
            .iter()
            .map(|&i| (i, windows(data.doc_len(i), length, bos_id.is_some(), c.sliding_window, c.max_sliding_count, c.truncate)))
            .collect();
        let total: usize = plan.iter().map(|(_, w)| w.len()).sum();
        let start = Instant::now();
        let mut progress = Progress::new(total as u64, &format!("ppl@{length}"));
        let mut window_nlls = Vec::with_capacity(total);
        let mut per_item = Vec::with_capacity(plan.len());
        let mut tokens = 0usize;
        for (doc_index, wins) in plan {
            let doc = data.doc(doc_index)?;
            let mut doc_nlls = Vec::with_capacity(wins.len());
            for w in wins {
                let mut input: Vec<i64> = Vec::with_capacity(length);
                if let Some(b) = bos_id {
                    input.push(b as i64);
                }
                input.extend(doc[w.begin..w.end].iter().map(|&t| t as i64));
                let nll = model.nll(&input, &tables, w.score_from)?;
                tokens += input.len();
                doc_nlls.push(nll.mean());
                window_nlls.push(nll.mean());
                progress.advance(input.len() as u64);
            }
            per_item.push(ItemScore { name: data.doc_name(doc_index), value: mean(&doc_nlls).exp() });
        }
        progress.finish();
        Ok(Score {
            evaluator: "ppl".into(),
            metric: "ppl".into(),
            length,
            value: mean(&window_nlls).exp(),
            lower_is_better: true,
            per_item,
            details: serde_json::json!({ "windows": window_nlls.len(), "window_nll": window_nlls }),
            tokens,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_reference_bookkeeping() {
        // doc 1000 tokens, num_tokens 300 with BOS -> max_len 299, stride 256.
        let w = windows(1000, 300, true, 256, 10, false);
        // begins 0, 256, 512; 768 + 299 > 1000 is skipped.
        assert_eq!(w.iter().map(|w| (w.begin, w.end)).collect::<Vec<_>>(), vec![(0, 299), (256, 555), (512, 811)]);
        // First window: trg_len = 299 of 300 inputs -> score from 1 (the first doc token, predicted from BOS).
        assert_eq!(w[0].score_from, 1);
        // Second: trg_len = 555 - 299 = 256 -> score_from = 300 - 256 = 44.
        assert_eq!(w[1].score_from, 44);
        assert_eq!(w[2].score_from, 300 - (811 - 555));
    }

    #[test]
    fn windows_without_bos_cannot_score_position_zero() {
        let w = windows(10, 4, false, 2, 10, false);
        assert_eq!(w.iter().map(|w| (w.begin, w.end, w.score_from)).collect::<Vec<_>>(), vec![
            (0, 4, 1),
            (2, 6, 2),
            (4, 8, 2),
            (6, 10, 2)
        ]);
    }

    #[test]
    fn windows_respect_max_count_and_truncate() {
        assert_eq!(windows(10_000, 100, false, 10, 3, false).len(), 3);
        let t = windows(10_000, 100, true, 10, 10, true);
        assert_eq!(t, vec![Window { begin: 0, end: 99, score_from: 1 }]);
        assert!(windows(50, 100, false, 10, 10, false).is_empty());
        // Document exactly one window long.
        assert_eq!(windows(100, 100, false, 256, 10, false).len(), 1);
        // Stride longer than the window: each window is scored whole.
        assert_eq!(windows(100, 10, true, 30, 10, false)[1], Window { begin: 30, end: 39, score_from: 1 });
    }

    /// A schedule with the model's own RoPE, built without the scaling plugins crate.
    fn identity_schedule(model: &crate::testing::MockModel, target: usize) -> RopeSchedule {
        #[derive(Debug)]
        struct Original;
        impl longrope_core::PositionScaling for Original {
            fn name(&self) -> &str {
                "original"
            }
            fn tables(&self, ctx: &longrope_core::RopeContext) -> Result<longrope_core::RopeTables> {
                Ok(longrope_core::RopeTables::original(&ctx.shape))
            }
        }
        RopeSchedule { shape: model.summary.rope_shape(target), method: std::sync::Arc::new(Original) }
    }

    #[test]
    fn perplexity_is_exp_of_mean_window_nll_over_new_tokens() {
        use longrope_data::corpus::TokenDocs;
        let model = crate::testing::MockModel::new(Some(1));
        // One document of 12 tokens with ids 10..22; a short one that is skipped.
        let docs = TokenDocs { docs: vec![("short".into(), vec![5; 3]), ("doc".into(), (10..22).collect())] };
        let config = PplConfig { sliding_window: 3, max_sliding_count: 10, samples: 5, ..PplConfig::default() };
        let eval = config.build().unwrap();
        let score = eval.evaluate(&model, &identity_schedule(&model, 64), 6, &docs).unwrap();
        // num_tokens 6 with BOS -> 5 doc tokens a window; stride 3: windows [0,5) [3,8) [6,11); 9+5 > 12 stops.
        let calls = model.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![(6, 1, 1), (6, 3, 1), (6, 3, 1)]);
        // Window NLL means: tokens scored are the new ones.
        let w1 = (10..15).map(|t| t as f64 / 100.0).sum::<f64>() / 5.0;
        let w2 = (15..18).map(|t| t as f64 / 100.0).sum::<f64>() / 3.0;
        let w3 = (18..21).map(|t| t as f64 / 100.0).sum::<f64>() / 3.0;
        let expected = ((w1 + w2 + w3) / 3.0).exp();
        assert!((score.value - expected).abs() < 1e-12, "{} vs {expected}", score.value);
        assert_eq!(score.per_item.len(), 1);
        assert_eq!(score.per_item[0].name, "doc");
        assert_eq!(score.tokens, 18);
    }

    #[test]
    fn truncate_scores_one_window_without_bos() {
        use longrope_data::corpus::TokenDocs;
        let model = crate::testing::MockModel::new(Some(1));
        let docs = TokenDocs { docs: vec![("a".into(), (10..30).collect()), ("b".into(), (40..60).collect())] };
        let config = PplConfig { truncate: true, add_bos: Some(false), samples: 2, ..PplConfig::default() };
        let score = config.build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 8, &docs).unwrap();
        let calls = model.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![(8, 1, 10), (8, 1, 40)]);
        let a = (11..18).map(|t| t as f64 / 100.0).sum::<f64>() / 7.0;
        let b = (41..48).map(|t| t as f64 / 100.0).sum::<f64>() / 7.0;
        assert!((score.value - ((a + b) / 2.0).exp()).abs() < 1e-12);
        assert!((score.per_item[1].value - b.exp()).abs() < 1e-12);
    }

    #[test]
    fn too_long_length_is_a_clear_error() {
        use longrope_data::corpus::TokenDocs;
        let model = crate::testing::MockModel::new(None);
        let docs = TokenDocs { docs: vec![("a".into(), vec![3; 10])] };
        let err = PplConfig::default().build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 64, &docs);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("no document has the 64 tokens") && msg.contains("longest has 10"), "{msg}");
    }
}
