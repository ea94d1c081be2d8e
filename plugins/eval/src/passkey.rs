//! `passkey`: passkey retrieval with LongRoPE's prompt (`evaluation/passkey.py`, from landmark-attention).
//!
//! The prompt joins with newlines: the task description; the garbage sentence "The grass is green. The sky is
//! blue. The sun is yellow. Here we go. There and back again." repeated (space-separated) before the key; the
//! information line "The pass key is K. Remember it. K is the pass key."; more garbage; and the question "What
//! is the pass key? The pass key is". The key K is uniform in 1..=50000 from a seeded RNG. Unlike the
//! reference, which counts garbage in characters, the length is set in tokens with the model's tokenizer: the
//! largest number of garbage sentences whose prompt fits `length` tokens (BOS included when the model adds
//! one). The key sits at a depth (fraction of the garbage before it): random per sample, or from `depths`.
//! The model decodes greedily with a KV cache; a sample is correct when the first number in the continuation
//! equals K. The score is the accuracy, with a per-depth breakdown.

use std::collections::BTreeMap;
use std::time::Instant;

use longrope_core::eval::{Evaluator, EvaluatorConfig, ItemScore, Score, TokenSource};
use longrope_core::generate::greedy_generate;
use longrope_core::model::LanguageModel;
use longrope_core::scaling::RopeSchedule;
use longrope_core::{register_plugin, Error, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

register_plugin!(Evaluator, "passkey", "passkey retrieval in garbage text (LongRoPE's prompt), accuracy by length and depth");

/// The task description line.
pub const TASK: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.";
/// The garbage sentence.
pub const GARBAGE: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
/// The question.
pub const QUESTION: &str = "What is the pass key? The pass key is";

/// The information line for a key.
pub fn information_line(key: u32) -> String {
    format!("The pass key is {key}. Remember it. {key} is the pass key.")
}

/// The prompt text with `before` garbage sentences before the key and `after` after it.
pub fn prompt_text(key: u32, before: usize, after: usize) -> String {
    let garbage = |n: usize| vec![GARBAGE; n].join(" ");
    [TASK.to_string(), garbage(before), information_line(key), garbage(after), QUESTION.to_string()].join("\n")
}

/// Tokenize a prompt (no special tokens) and prepend BOS when given.
fn encode(tokenizer: &tokenizers::Tokenizer, text: &str, bos: Option<u32>) -> Result<Vec<u32>> {
    let enc = tokenizer.encode(text, false).map_err(|e| Error::invalid("tokenizer", e.to_string()))?;
    let mut ids = Vec::with_capacity(enc.len() + 1);
    ids.extend(bos);
    ids.extend_from_slice(enc.get_ids());
    Ok(ids)
}

/// The prompt tokens for `key` at `depth` in [0, 1] that fill at most `length` tokens (the most garbage that fits).
pub fn build_prompt(tokenizer: &tokenizers::Tokenizer, bos: Option<u32>, key: u32, depth: f64, length: usize) -> Result<Vec<u32>> {
    let count = |n: usize| -> Result<usize> {
        let before = (depth * n as f64).round() as usize;
        Ok(encode(tokenizer, &prompt_text(key, before, n - before), bos)?.len())
    };
    let fixed = count(0)?;
    if fixed > length {
        return Err(Error::invalid("passkey length", format!("{length} tokens cannot hold the prompt ({fixed} tokens without garbage)")));
    }
    let per = (count(8)? - fixed).max(8) as f64 / 8.0;
    let mut n = ((length - fixed) as f64 / per) as usize;
    while n > 0 && count(n)? > length {
        n -= 1;
    }
    while count(n + 1)? <= length {
        n += 1;
    }
    let before = (depth * n as f64).round() as usize;
    encode(tokenizer, &prompt_text(key, before, n - before), bos)
}

/// The first run of ASCII digits in a text, as a number.
pub fn first_number(text: &str) -> Option<u64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Configuration of the `passkey` evaluator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyConfig {
    /// Samples per length.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Depths of the key in [0, 1]; sample `i` uses `depths[i % len]`. Unset: a random depth per sample.
    #[serde(default)]
    pub depths: Option<Vec<f64>>,
    /// Seed of keys and random depths.
    #[serde(default)]
    pub seed: u64,
    /// Prepend BOS: unset = when the model has a BOS token.
    #[serde(default)]
    pub add_bos: Option<bool>,
}

fn default_samples() -> usize {
    10
}

impl Default for PasskeyConfig {
    fn default() -> Self {
        PasskeyConfig { samples: default_samples(), depths: None, seed: 0, add_bos: None }
    }
}

#[typetag::serde(name = "passkey")]
impl EvaluatorConfig for PasskeyConfig {
    fn build(&self) -> Result<Box<dyn Evaluator>> {
        if self.samples == 0 {
            return Err(Error::invalid("passkey.samples", "must be positive"));
        }
        longrope_core::limits::int_in("passkey.samples", self.samples, 1, longrope_core::limits::MAX_SAMPLES, "samples per length")?;
        if let Some(d) = &self.depths {
            if d.is_empty() || d.iter().any(|x| !(0.0..=1.0).contains(x)) {
                return Err(Error::invalid("passkey.depths", format!("must be a non-empty list of values in [0, 1], got {d:?}")));
            }
        }
        Ok(Box::new(Passkey { config: self.clone() }))
    }
}

/// The built `passkey` evaluator.
#[derive(Debug, Clone)]
pub struct Passkey {
    /// Its configuration.
    pub config: PasskeyConfig,
}

impl Evaluator for Passkey {
    fn name(&self) -> &str {
        "passkey"
    }

    fn evaluate(&self, model: &dyn LanguageModel, schedule: &RopeSchedule, length: usize, _data: &dyn TokenSource) -> Result<Score> {
        let _no_grad = tch::no_grad_guard();
        let c = &self.config;
        let bos = match c.add_bos {
            Some(false) => None,
            _ => model.summary().bos_token_id,
        };
        let tokenizer = model.tokenizer();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.seed);
        let start = Instant::now();
        let mut progress = Progress::new(c.samples as u64, &format!("passkey@{length}"));
        let mut per_item = Vec::with_capacity(c.samples);
        let mut by_depth: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut samples_json = Vec::new();
        let mut tokens = 0usize;
        for i in 0..c.samples {
            let key: u32 = rng.random_range(1..=50_000);
            let random_depth: f64 = rng.random_range(0.0..=1.0);
            let depth = c.depths.as_ref().map(|d| d[i % d.len()]).unwrap_or(random_depth);
            let prompt = build_prompt(tokenizer, bos, key, depth, length)?;
            let answer = encode(tokenizer, &format!(" {key}."), None)?;
            let new_ids = greedy_generate(model, &prompt, answer.len() + 2, schedule, true)?;
            let text = tokenizer.decode(&new_ids, true).map_err(|e| Error::invalid("tokenizer", e.to_string()))?;
            let correct = first_number(&text) == Some(key as u64);
            tokens += prompt.len() + new_ids.len();
            let entry = by_depth.entry(format!("{depth:.2}")).or_default();
            entry.0 += usize::from(correct);
            entry.1 += 1;
            per_item.push(ItemScore { name: format!("sample-{i}"), value: f64::from(u8::from(correct)) });
            samples_json.push(serde_json::json!({
                "key": key, "depth": depth, "prompt_tokens": prompt.len(), "output": text, "correct": correct
            }));
            progress.advance((prompt.len() + new_ids.len()) as u64);
        }
        progress.finish();
        let accuracy = per_item.iter().map(|p| p.value).sum::<f64>() / per_item.len() as f64;
        let depth_acc: BTreeMap<String, f64> = by_depth.iter().map(|(k, (ok, n))| (k.clone(), *ok as f64 / *n as f64)).collect();
        Ok(Score {
            evaluator: "passkey".into(),
            metric: "accuracy".into(),
            length,
            value: accuracy,
            lower_is_better: false,
            per_item,
            details: serde_json::json!({ "accuracy_by_depth": depth_acc, "samples": samples_json }),
            tokens,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_layout_matches_the_reference() {
        let p = prompt_text(123, 2, 1);
        let lines: Vec<&str> = p.split('\n').collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], TASK);
        assert_eq!(lines[1], format!("{GARBAGE} {GARBAGE}"));
        assert_eq!(lines[2], "The pass key is 123. Remember it. 123 is the pass key.");
        assert_eq!(lines[3], GARBAGE);
        assert_eq!(lines[4], QUESTION);
    }

    #[test]
    fn first_number_extracts_the_answer() {
        assert_eq!(first_number(" 4217. Remember"), Some(4217));
        assert_eq!(first_number("no digits"), None);
        assert_eq!(first_number(" 42 17"), Some(42));
    }
}
