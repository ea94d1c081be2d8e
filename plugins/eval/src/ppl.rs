//! `ppl`: long-context perplexity as LongRoPE's `evaluation/perplexity.py` (microsoft/LongRoPE@c9e56aa) computes
//! it, with our earlier rules kept as named options.
//!
//! **Selection** ([`Selection`]): `reference` (default, `perplexity.py:112-115`) keeps the documents with at
//! least `dataset_min_tokens` tokens (all of them when unset), in corpus order, and takes the first `samples`:
//! one fixed set of documents for every length. `per_length` keeps the documents that hold one full window at
//! the evaluated length, so longer lengths may use other documents.
//!
//! **Windows** ([`WindowRule`]), with `max_tokenized_len = num_tokens - 1` when a BOS token is prepended, else
//! `num_tokens`:
//! - `reference` (default, `compute_perplexity`, `perplexity.py:53-99`): at most
//!   `seq_len = min(doc_len, max_sliding_count * sliding_window)` tokens of the document are read; windows begin
//!   at `0, stride, 2*stride, ... < seq_len` and end at `min(begin + max_tokenized_len, seq_len)`, so the last
//!   window is shorter when it reaches the limit or the document's end; the loop stops at `seq_len`;
//! - `full`: every window is exactly `max_tokenized_len` document tokens; a window that would run past the
//!   document is dropped; at most `max_sliding_count` windows;
//! - `chunks`: llama.cpp's `llama-perplexity` (`tools/perplexity/perplexity.cpp`, `perplexity()`): the document
//!   is cut into non-overlapping chunks of `max_tokenized_len` tokens (a shorter tail is dropped), at most
//!   `max_sliding_count` of them (its `--chunks`), and only each chunk's second half is scored: targets at input
//!   positions `num_tokens / 2 + 1 ..` (llama.cpp's `first = n_ctx / 2`, the logits of positions
//!   `first .. n_ctx - 2`). Two differences remain: llama.cpp tokenizes a whole file as one stream where a corpus
//!   here is split into documents, and with a BOS it overwrites each chunk's first token where we prepend it.
//!
//! `reference` and `full`: each window is `[BOS] + doc[begin..end]` and only its new tokens are scored, the last
//! `trg_len = end - prev_end` labels (HF's `target_ids[:, :-trg_len] = -100`, then the causal shift, so input
//! position 0 is never a target). `truncate` first cuts each document to `max_tokenized_len` tokens and strides by
//! that, i.e. one window of the document's first tokens.
//!
//! The window NLL is the mean over its scored tokens (HF's `outputs.loss`); the result is
//! `exp(mean of window NLLs)` over all windows of all documents, as the reference reports it, plus each
//! document's `exp(mean of its window NLLs)`. `details` records the rules used and warns when a selected document
//! is shorter than a full window (the reference then scores a shorter window, and so do we).

use std::time::Instant;

use longrope_core::eval::{exp_mean_bound, Evaluator, EvaluatorConfig, ItemLosses, ItemScore, Score, StageItem, Staged, TokenSource};
use longrope_core::model::LanguageModel;
use longrope_core::scaling::RopeSchedule;
use longrope_core::{Error, Result};
use serde::{Deserialize, Serialize};

use longrope_data::corpus::select_docs;
use crate::progress::Progress;


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

/// How windows are laid over a document (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowRule {
    /// LongRoPE's `compute_perplexity`: at most `max_sliding_count * sliding_window` tokens per document, the last
    /// window shortened to end at that limit or at the document's end.
    #[default]
    Reference,
    /// Only full windows (`num_tokens` inputs each), at most `max_sliding_count` of them: every scored window has
    /// the full context and the same weight (the reference's last window may score a single token).
    Full,
    /// llama.cpp's `llama-perplexity`: non-overlapping chunks of `num_tokens` inputs, at most `max_sliding_count`
    /// of them, each scored on its second half only (see the module doc).
    Chunks,
}

/// Which documents are evaluated (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// LongRoPE's `--dataset-min-tokens` + `--samples`: the same documents at every length.
    #[default]
    Reference,
    /// The first `samples` documents that hold a full window at the evaluated length.
    PerLength,
}

/// The windows scored for a document of `doc_len` tokens at `num_tokens` (BOS included when `bos`).
pub fn windows(
    doc_len: usize,
    num_tokens: usize,
    bos: bool,
    stride: usize,
    max_count: usize,
    truncate: bool,
    rule: WindowRule,
) -> Vec<Window> {
    let max_len = num_tokens - usize::from(bos);
    let (doc_len, stride) = if truncate { (doc_len.min(max_len), max_len) } else { (doc_len, stride.max(1)) };
    // The reference reads at most `max_sliding_count * sliding_window` tokens; `full` counts windows instead.
    let seq_len = match rule {
        WindowRule::Reference => doc_len.min(max_count.saturating_mul(stride)),
        WindowRule::Full => doc_len,
        WindowRule::Chunks => {
            // llama.cpp's `first = n_ctx / 2` and its logits `first .. n_ctx - 2`: targets from `n_ctx / 2 + 1`.
            let score_from = num_tokens / 2 + 1;
            return (0..(doc_len / max_len).min(max_count))
                .map(|k| Window { begin: k * max_len, end: (k + 1) * max_len, score_from })
                .collect();
        }
    };
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < seq_len {
        let end = match rule {
            WindowRule::Reference => (begin + max_len).min(seq_len),
            WindowRule::Full if begin + max_len > seq_len || out.len() >= max_count => break,
            WindowRule::Full | WindowRule::Chunks => begin + max_len,
        };
        let trg_len = end - prev_end;
        let input_len = end - begin + usize::from(bos);
        // `target_ids[:, :-trg_len] = -100` masks nothing when `trg_len >= input_len` (a stride longer than the
        // window): every token of such a window is new.
        out.push(Window { begin, end, score_from: input_len.saturating_sub(trg_len).max(1) });
        prev_end = end;
        if end == seq_len {
            break;
        }
        begin += stride;
    }
    out
}

/// Configuration of the `ppl` evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PplConfig {
    /// Stride between windows (`--ppl-sliding-window` of the reference, default 256).
    #[serde(default = "default_stride")]
    pub sliding_window: usize,
    /// The reference rule reads at most `max_sliding_count * sliding_window` tokens per document; the `full`
    /// rule scores at most this many windows (default 10).
    #[serde(default = "default_max_sliding_count")]
    pub max_sliding_count: usize,
    /// One window of the first `num_tokens` per document.
    #[serde(default)]
    pub truncate: bool,
    /// Number of documents (`--samples`).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// `reference` selection: documents with fewer tokens are skipped (`--dataset-min-tokens`); unset keeps all.
    #[serde(default)]
    pub dataset_min_tokens: Option<usize>,
    /// Which documents: `reference` (default) or `per_length`.
    #[serde(default)]
    pub selection: Selection,
    /// How windows are laid: `reference` (default), `full` or `chunks` (llama.cpp's).
    #[serde(default)]
    pub windows: WindowRule,
    /// Prepend BOS: `true`, `false`, or unset = when the model has a BOS token (the reference's rule).
    #[serde(default)]
    pub add_bos: Option<bool>,
    /// Shuffle the kept documents with this seed before taking `samples` (not in the reference).
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
            dataset_min_tokens: None,
            selection: Selection::default(),
            windows: WindowRule::default(),
            add_bos: None,
            shuffle_seed: None,
        }
    }
}

longrope_core::plugin! {
    kind: Evaluator,
    name: "ppl",
    summary: "perplexity over sliding windows, LongRoPE's definition (stride, max windows, truncate)",
    impl EvaluatorConfig for PplConfig {
        fn build(&self) -> Result<Box<dyn Evaluator>> {
            if self.sliding_window == 0 || self.max_sliding_count == 0 || self.samples == 0 {
                return Err(Error::invalid("ppl", "sliding_window, max_sliding_count and samples must be positive"));
            }
            use longrope_core::limits::{int_in, MAX_CONTEXT, MAX_SAMPLES};
            int_in("ppl.sliding_window", self.sliding_window, 1, MAX_CONTEXT, "a stride in tokens")?;
            int_in("ppl.max_sliding_count", self.max_sliding_count, 1, MAX_SAMPLES, "windows per document")?;
            int_in("ppl.samples", self.samples, 1, MAX_SAMPLES, "documents per length")?;
            if let Some(n) = self.dataset_min_tokens {
                int_in("ppl.dataset_min_tokens", n, 0, MAX_CONTEXT, "tokens a document needs")?;
            }
            if self.selection == Selection::PerLength && self.dataset_min_tokens.is_some() {
                return Err(Error::invalid(
                    "ppl.dataset_min_tokens",
                    "applies to `selection = \"reference\"`; `per_length` selects by the evaluated length",
                ));
            }
            Ok(Box::new(Perplexity { config: self.clone() }))
        }
    }
}

/// The built `ppl` evaluator.
#[derive(Debug, Clone)]
pub struct Perplexity {
    /// Its configuration.
    pub config: PplConfig,
}

/// What one `ppl` evaluation at one length reads: the BOS, the documents with their windows, the warnings.
struct Plan {
    bos_id: Option<u32>,
    /// `(document index, its windows)`, empty documents dropped.
    docs: Vec<(usize, Vec<Window>)>,
    warnings: Vec<String>,
}

impl Perplexity {
    /// Select the documents and lay the windows at `length` (cheap: document lengths only).
    fn plan(&self, model: &dyn LanguageModel, length: usize, data: &dyn TokenSource) -> Result<Plan> {
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
        let picked = match c.selection {
            Selection::Reference => {
                select_docs(data, c.dataset_min_tokens.unwrap_or(0), c.samples, c.shuffle_seed, "ppl data (dataset_min_tokens)")?
            }
            Selection::PerLength => select_docs(data, max_len, c.samples, c.shuffle_seed, "ppl data")?,
        };
        let mut docs: Vec<(usize, Vec<Window>)> = picked
            .iter()
            .map(|&i| {
                let w = windows(data.doc_len(i), length, bos_id.is_some(), c.sliding_window, c.max_sliding_count, c.truncate, c.windows);
                (i, w)
            })
            .collect();
        let short: Vec<String> = picked.iter().filter(|&&i| data.doc_len(i) < max_len).map(|&i| data.doc_name(i)).collect();
        let mut warnings = Vec::new();
        if !short.is_empty() {
            warnings.push(format!(
                "{} of {} documents have fewer than the {max_len} tokens of a full window ({}): they are scored on \
                 shorter windows, as the reference does; set dataset_min_tokens (--dataset-min-tokens) to skip them",
                short.len(),
                picked.len(),
                short.join(", ")
            ));
        }
        let empty: Vec<String> = docs.iter().filter(|(_, w)| w.is_empty()).map(|(i, _)| data.doc_name(*i)).collect();
        if !empty.is_empty() && c.windows != WindowRule::Reference {
            let rule = serde_json::to_value(c.windows).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            return Err(Error::invalid(
                "ppl data",
                format!(
                    "{} hold no full window of {max_len} tokens (windows = \"{rule}\"): choose documents with \
                     dataset_min_tokens >= {max_len} or selection = \"per_length\"",
                    empty.join(", ")
                ),
            ));
        }
        if !empty.is_empty() {
            warnings.push(format!("empty documents skipped, as the reference does: {}", empty.join(", ")));
        }
        docs.retain(|(_, w)| !w.is_empty());
        if docs.is_empty() {
            return Err(Error::invalid("ppl data", "the selected documents are empty"));
        }
        Ok(Plan { bos_id, docs, warnings })
    }

    /// The NLL of each window of the plan's document `item` (the mean over its scored tokens).
    #[allow(clippy::too_many_arguments)]
    fn score_doc(
        &self,
        model: &dyn LanguageModel,
        tables: &longrope_core::scaling::LayerTables,
        length: usize,
        data: &dyn TokenSource,
        plan: &Plan,
        item: usize,
        progress: &mut Progress,
    ) -> Result<ItemLosses> {
        let (doc_index, wins) = &plan.docs[item];
        let doc = data.doc(*doc_index)?;
        let mut out = ItemLosses { losses: Vec::with_capacity(wins.len()), tokens: 0 };
        for w in wins {
            let mut input: Vec<i64> = Vec::with_capacity(length);
            if let Some(b) = plan.bos_id {
                input.push(b as i64);
            }
            input.extend(doc[w.begin..w.end].iter().map(|&t| t as i64));
            let nll = model.nll(&input, tables, w.score_from)?;
            out.tokens += input.len();
            out.losses.push(nll.mean());
            progress.advance(input.len() as u64);
        }
        Ok(out)
    }

    /// The score of a plan from its documents' window NLLs: `exp(mean of all window NLLs)`.
    fn combine_plan(&self, length: usize, data: &dyn TokenSource, plan: Plan, scored: Vec<ItemLosses>, seconds: f64) -> Result<Score> {
        if scored.len() != plan.docs.len() {
            return Err(Error::invalid("ppl", format!("{} documents scored of {} planned", scored.len(), plan.docs.len())));
        }
        let c = &self.config;
        let per_item = plan
            .docs
            .iter()
            .zip(&scored)
            .map(|((i, _), s)| ItemScore { name: data.doc_name(*i), value: mean(&s.losses).exp() })
            .collect();
        let tokens = scored.iter().map(|s| s.tokens).sum();
        let window_nlls: Vec<f64> = scored.into_iter().flat_map(|s| s.losses).collect();
        Ok(Score {
            evaluator: "ppl".into(),
            metric: "ppl".into(),
            length,
            value: mean(&window_nlls).exp(),
            lower_is_better: true,
            per_item,
            details: serde_json::json!({
                "windows": window_nlls.len(),
                "window_nll": window_nlls,
                "window_rule": c.windows,
                "selection": c.selection,
                "dataset_min_tokens": c.dataset_min_tokens,
                "warnings": plan.warnings,
            }),
            tokens,
            seconds,
        })
    }
}

impl Evaluator for Perplexity {
    fn name(&self) -> &str {
        PplConfig::NAME
    }

    fn evaluate(
        &self,
        model: &dyn LanguageModel,
        schedule: &RopeSchedule,
        length: usize,
        data: &dyn TokenSource,
    ) -> Result<Score> {
        let _no_grad = tch::no_grad_guard();
        let plan = self.plan(model, length, data)?;
        let tables = schedule.tables(length)?;
        let total: usize = plan.docs.iter().map(|(_, w)| w.len()).sum();
        let start = Instant::now();
        let mut progress = Progress::new(total as u64, &format!("ppl@{length}"));
        let scored = (0..plan.docs.len())
            .map(|item| self.score_doc(model, &tables, length, data, &plan, item, &mut progress))
            .collect::<Result<Vec<_>>>()?;
        progress.finish();
        self.combine_plan(length, data, plan, scored, start.elapsed().as_secs_f64())
    }

    fn staged(&self) -> Option<&dyn Staged> {
        Some(self)
    }
}

/// Racing over documents: each document is an item, its losses the NLLs of its windows; the value
/// `exp(sum of losses / number of losses)` grows with every loss, and a document not yet scored contributes at
/// least its floor to the sum.
impl Staged for Perplexity {
    fn items(&self, model: &dyn LanguageModel, length: usize, data: &dyn TokenSource) -> Result<Vec<StageItem>> {
        let plan = self.plan(model, length, data)?;
        Ok(plan.docs.iter().map(|(i, w)| StageItem { name: data.doc_name(*i), losses: w.len() }).collect())
    }

    fn score_item(
        &self,
        model: &dyn LanguageModel,
        schedule: &RopeSchedule,
        length: usize,
        data: &dyn TokenSource,
        item: usize,
    ) -> Result<ItemLosses> {
        let _no_grad = tch::no_grad_guard();
        let plan = self.plan(model, length, data)?;
        if item >= plan.docs.len() {
            return Err(Error::invalid("ppl item", format!("{item} of {} documents", plan.docs.len())));
        }
        let tables = schedule.tables(length)?;
        let mut progress = Progress::hidden();
        self.score_doc(model, &tables, length, data, &plan, item, &mut progress)
    }

    fn combine(
        &self,
        model: &dyn LanguageModel,
        length: usize,
        data: &dyn TokenSource,
        scored: Vec<ItemLosses>,
    ) -> Result<Score> {
        // `seconds` is the caller's to measure: the items may have been scored at different times.
        let plan = self.plan(model, length, data)?;
        self.combine_plan(length, data, plan, scored, 0.0)
    }

    fn bound(&self, items: &[StageItem], scored: &[ItemLosses], floors: &[f64]) -> f64 {
        let n: usize = items.iter().map(|i| i.losses).sum();
        let known: f64 = scored.iter().map(ItemLosses::sum).sum();
        exp_mean_bound(n, known, items.len().saturating_sub(scored.len()), floors)
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use longrope_data::corpus::TokenDocs;

    const REF: WindowRule = WindowRule::Reference;
    const FULL: WindowRule = WindowRule::Full;

    fn spans(w: &[Window]) -> Vec<(usize, usize, usize)> {
        w.iter().map(|w| (w.begin, w.end, w.score_from)).collect()
    }

    #[test]
    fn reference_windows_read_a_token_budget_and_end_at_the_document() {
        // Issue 13's example: 1000 tokens at num_tokens 300 with BOS (299 document tokens a window), stride 256.
        let w = windows(1000, 300, true, 256, 10, false, REF);
        // The last window ends at the document's end and scores its 189 new tokens (233 inputs - 44).
        assert_eq!(spans(&w), vec![(0, 299, 1), (256, 555, 44), (512, 811, 44), (768, 1000, 44)]);
        assert_eq!(1000 - 811, 189);
        // The budget is max_sliding_count * sliding_window tokens: 2 * 256 = 512 is one 512-token window.
        assert_eq!(spans(&windows(4000, 512, false, 256, 2, false, REF)), vec![(0, 512, 1)]);
        // ... and 3 * 128 = 384 makes a last window of 128 tokens that scores one new token.
        assert_eq!(spans(&windows(600, 256, true, 128, 3, false, REF)), vec![(0, 255, 1), (128, 383, 128), (256, 384, 128)]);
        // A document shorter than a window is one shorter window.
        assert_eq!(spans(&windows(50, 100, false, 10, 10, false, REF)), vec![(0, 50, 1)]);
    }

    #[test]
    fn full_windows_drop_the_tail_and_count_windows() {
        let w = windows(1000, 300, true, 256, 10, false, FULL);
        // begins 0, 256, 512; 768 + 299 > 1000 is dropped.
        assert_eq!(spans(&w), vec![(0, 299, 1), (256, 555, 44), (512, 811, 44)]);
        assert_eq!(windows(10_000, 100, false, 10, 3, false, FULL).len(), 3);
        assert_eq!(spans(&windows(10_000, 100, false, 10, 3, false, REF)), vec![(0, 30, 1)]);
        assert!(windows(50, 100, false, 10, 10, false, FULL).is_empty());
    }

    #[test]
    fn chunks_are_llama_cpp_perplexity() {
        // -c 512 over 1300 tokens: chunks [0, 512) and [512, 1024), the tail dropped; each scores the tokens at
        // 257..511 of its chunk (llama.cpp's first = 256, logits 256..510, count n_ctx - first - 1 = 255).
        let w = windows(1300, 512, false, 256, 10, false, WindowRule::Chunks);
        assert_eq!(spans(&w), vec![(0, 512, 257), (512, 1024, 257)]);
        assert_eq!(512 - w[0].score_from, 255);
        // --chunks 1; stride and truncate-to-one-chunk; too short a document has no chunk.
        assert_eq!(spans(&windows(1300, 512, false, 7, 1, false, WindowRule::Chunks)), vec![(0, 512, 257)]);
        assert_eq!(windows(1300, 512, false, 256, 10, true, WindowRule::Chunks).len(), 1);
        assert!(windows(511, 512, false, 256, 10, false, WindowRule::Chunks).is_empty());
        // With a BOS prepended: 511 document tokens a chunk, input positions scored as before.
        assert_eq!(spans(&windows(1100, 512, true, 256, 10, false, WindowRule::Chunks)), vec![(0, 511, 257), (511, 1022, 257)]);
        assert_eq!(serde_json::to_value(WindowRule::Chunks).unwrap(), "chunks");
    }

    #[test]
    fn windows_shared_by_both_rules() {
        for rule in [REF, FULL] {
            assert_eq!(spans(&windows(10, 4, false, 2, 10, false, rule)), vec![(0, 4, 1), (2, 6, 2), (4, 8, 2), (6, 10, 2)]);
            assert_eq!(windows(10_000, 100, true, 10, 10, true, rule), vec![Window { begin: 0, end: 99, score_from: 1 }]);
            assert_eq!(windows(100, 100, false, 256, 10, false, rule).len(), 1);
            // Stride longer than the window: each window is scored whole.
            assert_eq!(windows(100, 10, true, 30, 10, false, rule)[1], Window { begin: 30, end: 39, score_from: 1 });
        }
    }

    /// Every window of `compute_perplexity` itself (run by scripts/fixtures/reference_golden.py with a recording
    /// model) on 62 documents: begin, end, input length and the number of masked labels.
    #[test]
    fn reference_windows_equal_the_reference_function() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference_golden.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = golden["windows"].as_array().unwrap();
        assert!(cases.len() >= 60, "{}", cases.len());
        let mut windows_seen = 0;
        for case in cases {
            let n = |k: &str| case[k].as_u64().unwrap() as usize;
            let b = |k: &str| case[k].as_bool().unwrap();
            let ours = windows(n("doc_len"), n("num_tokens"), b("bos"), n("sliding_window"), n("max_sliding_count"), b("truncate"), REF);
            let theirs = case["windows"].as_array().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{case}");
            for (w, t) in ours.iter().zip(theirs) {
                let g = |k: &str| t[k].as_u64().unwrap() as usize;
                assert_eq!((w.begin, w.end), (g("begin"), g("end")), "{case}");
                assert_eq!(w.end - w.begin + usize::from(b("bos")), g("input_len"), "{case}");
                // HF shifts labels by one: input position 0 is never a target, whatever the mask.
                assert_eq!(w.score_from, g("masked").max(1), "{case}");
                windows_seen += 1;
            }
        }
        assert!(windows_seen > 150, "{windows_seen}");
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

    /// Mean NLL of the mock model (`token / 100`) over `ids`.
    fn m(ids: std::ops::Range<u32>) -> f64 {
        ids.clone().map(|t| t as f64 / 100.0).sum::<f64>() / ids.len() as f64
    }

    fn docs() -> TokenDocs {
        // A 3-token document, then one of 12 tokens with ids 10..22.
        TokenDocs { docs: vec![("short".into(), vec![5; 3]), ("doc".into(), (10..22).collect())] }
    }

    #[test]
    fn reference_perplexity_scores_the_same_documents_with_shorter_last_windows() {
        let model = crate::testing::MockModel::new(Some(1));
        let config = PplConfig { sliding_window: 3, max_sliding_count: 10, samples: 5, ..PplConfig::default() };
        let score = config.build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 6, &docs()).unwrap();
        // No dataset_min_tokens: both documents. num_tokens 6 with BOS -> 5 document tokens a window, stride 3.
        // short: one window of its 3 tokens. doc: [0,5) [3,8) [6,11) and [9,12), which scores token 11 only.
        let calls = model.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![(4, 1, 1), (6, 1, 1), (6, 3, 1), (6, 3, 1), (4, 3, 1)]);
        let nll = [0.05, m(10..15), m(15..18), m(18..21), m(21..22)];
        let expected = (nll.iter().sum::<f64>() / 5.0).exp();
        assert!((score.value - expected).abs() < 1e-12, "{} vs {expected}", score.value);
        assert_eq!(score.per_item.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["short", "doc"]);
        assert!((score.per_item[1].value - (nll[1..].iter().sum::<f64>() / 4.0).exp()).abs() < 1e-12);
        assert_eq!(score.tokens, 4 + 6 * 3 + 4);
        let warning = score.details["warnings"][0].as_str().unwrap();
        assert!(warning.contains("1 of 2 documents") && warning.contains("short"), "{warning}");
        assert_eq!(score.details["window_rule"], "reference");

        // dataset_min_tokens skips the short one, at every length alike.
        let config = PplConfig { dataset_min_tokens: Some(10), ..config };
        let eval = config.build().unwrap();
        for length in [6, 8] {
            let score = eval.evaluate(&model, &identity_schedule(&model, 64), length, &docs()).unwrap();
            assert_eq!(score.per_item.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["doc"]);
            assert_eq!(score.details["warnings"].as_array().unwrap().len(), 0);
        }
    }

    #[test]
    fn per_length_selection_and_full_windows_keep_the_earlier_rules() {
        let model = crate::testing::MockModel::new(Some(1));
        let config = PplConfig {
            sliding_window: 3,
            samples: 5,
            selection: Selection::PerLength,
            windows: WindowRule::Full,
            ..PplConfig::default()
        };
        let score = config.build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 6, &docs()).unwrap();
        // The short document holds no 5-token window and is not selected; windows [0,5) [3,8) [6,11); 9+5 > 12.
        let calls = model.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![(6, 1, 1), (6, 3, 1), (6, 3, 1)]);
        let expected = ((m(10..15) + m(15..18) + m(18..21)) / 3.0).exp();
        assert!((score.value - expected).abs() < 1e-12, "{} vs {expected}", score.value);
        assert_eq!(score.per_item.len(), 1);
        assert_eq!(score.tokens, 18);
        // Full windows on a document without one is an error that says what to change.
        let full_only = PplConfig { windows: WindowRule::Full, sliding_window: 3, ..PplConfig::default() };
        let err = full_only.build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 6, &docs()).unwrap_err().to_string();
        assert!(err.contains("short") && err.contains("per_length"), "{err}");
        // dataset_min_tokens belongs to the reference selection.
        let both = PplConfig { selection: Selection::PerLength, dataset_min_tokens: Some(3), ..PplConfig::default() };
        assert!(both.build().is_err());
    }

    /// The staged path (racing) is the evaluation: `combine` of every `score_item` equals `evaluate` bit for bit,
    /// the bound with every document scored is the value, and with floors of 0 it is a lower bound that grows
    /// with each document scored.
    #[test]
    fn staged_documents_combine_to_the_evaluation_and_bound_it() {
        let model = crate::testing::MockModel::new(Some(1));
        let config = PplConfig { sliding_window: 3, max_sliding_count: 10, samples: 5, ..PplConfig::default() };
        let eval = config.build().unwrap();
        let schedule = identity_schedule(&model, 64);
        let score = eval.evaluate(&model, &schedule, 6, &docs()).unwrap();
        let staged = eval.staged().expect("ppl scores document by document");
        let items = staged.items(&model, 6, &docs()).unwrap();
        assert_eq!(items.iter().map(|i| (i.name.as_str(), i.losses)).collect::<Vec<_>>(), [("short", 1), ("doc", 4)]);
        let scored: Vec<ItemLosses> = (0..items.len()).map(|j| staged.score_item(&model, &schedule, 6, &docs(), j).unwrap()).collect();
        assert!(staged.score_item(&model, &schedule, 6, &docs(), 2).is_err());
        let combined = staged.combine(&model, 6, &docs(), scored.clone()).unwrap();
        assert_eq!(combined.value.to_bits(), score.value.to_bits());
        assert_eq!((combined.per_item.clone(), combined.tokens, combined.details.clone()), (score.per_item.clone(), score.tokens, score.details.clone()));
        assert_eq!(staged.bound(&items, &scored, &[]), score.value);
        let (b0, b1) = (staged.bound(&items, &[], &[]), staged.bound(&items, &scored[..1], &[]));
        assert!(b0 == 1.0 && b0 < b1 && b1 < score.value, "{b0} {b1} {}", score.value);
        // A floor at the document's own loss sum gives the value; a negative floor counts as 0.
        let exact_floor = staged.bound(&items, &scored[..1], &[scored[1].sum()]);
        assert!((exact_floor - score.value).abs() < 1e-12);
        assert_eq!(staged.bound(&items, &scored[..1], &[-5.0]), b1);
        assert!(combined.lower_is_better);
    }

    #[test]
    fn truncate_scores_one_window_without_bos() {
        let model = crate::testing::MockModel::new(Some(1));
        let docs = TokenDocs { docs: vec![("a".into(), (10..30).collect()), ("b".into(), (40..60).collect())] };
        let config = PplConfig { truncate: true, add_bos: Some(false), samples: 2, ..PplConfig::default() };
        let score = config.build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 8, &docs).unwrap();
        let calls = model.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![(8, 1, 10), (8, 1, 40)]);
        let a = m(11..18);
        let b = m(41..48);
        assert!((score.value - ((a + b) / 2.0).exp()).abs() < 1e-12);
        assert!((score.per_item[1].value - b.exp()).abs() < 1e-12);
    }

    #[test]
    fn too_few_tokens_is_a_clear_error() {
        let model = crate::testing::MockModel::new(None);
        let docs = TokenDocs { docs: vec![("a".into(), vec![3; 10])] };
        let c = PplConfig { dataset_min_tokens: Some(64), ..PplConfig::default() };
        let err = c.build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 64, &docs);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("no document has at least 64 tokens") && msg.contains("longest has 10"), "{msg}");
        let c = PplConfig { selection: Selection::PerLength, ..PplConfig::default() };
        let msg = c.build().unwrap().evaluate(&model, &identity_schedule(&model, 64), 64, &docs).unwrap_err().to_string();
        assert!(msg.contains("no document has at least 64 tokens"), "{msg}");
    }
}
