//! `needle-ppl`: LongRoPE2's search fitness (arXiv 2502.20082, Sec. 3.2): the NLL of the answer tokens only of
//! a passkey-style prompt whose filler is real corpus text.
//!
//! Sample `i` takes the needle "The pass key is K. Remember it. K is the pass key." at the start, then corpus
//! tokens from a selected document (documents cycle when samples outnumber them; each sample starts at a
//! different offset), then "\nWhat is the pass key? The pass key is" and the answer " K". Only the answer's
//! tokens are scored. The score is the mean answer NLL over samples (lower is better); per-sample values
//! are reported too. Keys are uniform in 1..=50000 from a seeded RNG.

use std::time::Instant;

use longrope_core::eval::{Evaluator, EvaluatorConfig, ItemScore, Score, TokenSource};
use longrope_core::model::LanguageModel;
use longrope_core::scaling::RopeSchedule;
use longrope_core::{Error, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use longrope_data::corpus::select_docs;
use crate::passkey::{information_line, QUESTION};
use crate::progress::Progress;


/// Configuration of the `needle-ppl` evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeedleConfig {
    /// Number of prompts.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Seed of keys and filler offsets.
    #[serde(default)]
    pub seed: u64,
    /// Prepend BOS: unset = when the model has a BOS token.
    #[serde(default)]
    pub add_bos: Option<bool>,
}

fn default_samples() -> usize {
    4
}

impl Default for NeedleConfig {
    fn default() -> Self {
        NeedleConfig { samples: default_samples(), seed: 0, add_bos: None }
    }
}

longrope_core::plugin! {
    kind: Evaluator,
    name: "needle-ppl",
    summary: "NLL of the needle's answer tokens in real text (LongRoPE2's search fitness)",
    impl EvaluatorConfig for NeedleConfig {
        fn build(&self) -> Result<Box<dyn Evaluator>> {
            if self.samples == 0 {
                return Err(Error::invalid("needle-ppl.samples", "must be positive"));
            }
            longrope_core::limits::int_in("needle-ppl.samples", self.samples, 1, longrope_core::limits::MAX_SAMPLES, "samples per length")?;
            Ok(Box::new(NeedlePpl { config: self.clone() }))
        }
    }
}

/// The built `needle-ppl` evaluator.
#[derive(Debug, Clone)]
pub struct NeedlePpl {
    /// Its configuration.
    pub config: NeedleConfig,
}

fn encode(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer.encode(text, false).map_err(|e| Error::invalid("tokenizer", e.to_string()))?.get_ids().to_vec())
}

/// The tokens of one needle prompt of exactly `length` tokens and the index of the first answer token.
pub fn needle_prompt(
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    key: u32,
    filler: &[u32],
    length: usize,
) -> Result<(Vec<u32>, usize)> {
    let needle = encode(tokenizer, &format!("{}\n", information_line(key)))?;
    let question = encode(tokenizer, &format!("\n{QUESTION}"))?;
    let answer = encode(tokenizer, &format!(" {key}"))?;
    let fixed = usize::from(bos.is_some()) + needle.len() + question.len() + answer.len();
    if fixed >= length {
        return Err(Error::invalid("needle-ppl length", format!("{length} tokens cannot hold the prompt ({fixed} fixed tokens)")));
    }
    let fill = length - fixed;
    if filler.len() < fill {
        return Err(Error::invalid("needle-ppl data", format!("filler has {} tokens, {fill} needed", filler.len())));
    }
    let mut ids: Vec<u32> = bos.into_iter().collect();
    ids.extend(needle);
    ids.extend_from_slice(&filler[..fill]);
    ids.extend(question);
    let answer_at = ids.len();
    ids.extend(answer);
    Ok((ids, answer_at))
}

impl Evaluator for NeedlePpl {
    fn name(&self) -> &str {
        NeedleConfig::NAME
    }

    fn evaluate(&self, model: &dyn LanguageModel, schedule: &RopeSchedule, length: usize, data: &dyn TokenSource) -> Result<Score> {
        let _no_grad = tch::no_grad_guard();
        let c = &self.config;
        let bos = match c.add_bos {
            Some(false) => None,
            _ => model.summary().bos_token_id,
        };
        let docs = select_docs(data, length, c.samples, None, "needle-ppl data")?;
        let tables = schedule.tables(length)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.seed);
        let start = Instant::now();
        let mut progress = Progress::new(c.samples as u64, &format!("needle@{length}"));
        let mut per_item = Vec::with_capacity(c.samples);
        let mut tokens = 0;
        for i in 0..c.samples {
            let d = docs[i % docs.len()];
            let doc = data.doc(d)?;
            let key: u32 = rng.random_range(1..=50_000);
            let slack = doc.len().saturating_sub(length);
            let offset = if slack == 0 { 0 } else { rng.random_range(0..=slack) };
            let (ids, answer_at) = needle_prompt(model.tokenizer(), bos, key, &doc[offset..], length)?;
            let input: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            let nll = model.nll(&input, &tables, answer_at)?;
            tokens += input.len();
            per_item.push(ItemScore { name: format!("{}@{offset}", data.doc_name(d)), value: nll.mean() });
            progress.advance(input.len() as u64);
        }
        progress.finish();
        let value = per_item.iter().map(|p| p.value).sum::<f64>() / per_item.len() as f64;
        Ok(Score {
            evaluator: "needle-ppl".into(),
            metric: "needle_nll".into(),
            length,
            value,
            lower_is_better: true,
            per_item,
            details: serde_json::Value::Null,
            tokens,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}
