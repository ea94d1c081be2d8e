//! `passkey`: passkey retrieval with LongRoPE's prompt (`evaluation/passkey.py`, microsoft/LongRoPE@c9e56aa, from
//! landmark-attention).
//!
//! The prompt joins with newlines: the task description; garbage made of the sentence "The grass is green. The
//! sky is blue. The sun is yellow. Here we go. There and back again." repeated; the information line "The pass key
//! is K. Remember it. K is the pass key."; more garbage; and the question "What is the pass key? The pass key is".
//! The model decodes greedily with a KV cache; a sample is correct when the first number in the continuation
//! equals K. The score is the accuracy, with a per-depth breakdown (depth = the fraction of the garbage before the
//! key).
//!
//! Two ways to set the prompt's length ([`PasskeyMode`]):
//! - `reference` (default), as `passkey.py` does: `n_garbage = int(3.65 * length)` characters of garbage
//!   (`calc_str_length`); the garbage string doubles (`" ".join([g] * 2)`) until it is that long; the prefix is
//!   its first `randint(0, n_garbage)` characters and the suffix its first `n_garbage - prefix` characters (cut
//!   mid-sentence); the key is `randint(1, 50000)`, both from Python's `random` seeded with 42 once per length
//!   ([`crate::pyrandom`], so the prompts are the reference's, character for character); the prompt is tokenized
//!   with the tokenizer's own special tokens (what the HF pipeline feeds the model); 10 new tokens. The prompt's
//!   token count is whatever the text gives (3.65 characters per token is a Llama-tokenizer average);
//! - `tokens`: the length is counted in tokens with the model's tokenizer: the most whole garbage sentences whose
//!   prompt (BOS included when the model has one) fits `length` tokens; keys from a seeded ChaCha8 (default seed
//!   0); as many new tokens as " K." has plus two. Every prompt is within one sentence (~20 tokens) of `length`.
//!
//! In both modes `depths` places the key at fixed fractions instead of random ones (the reference mode still
//! draws the random position, so the keys stay the reference's).

use std::collections::BTreeMap;
use std::time::Instant;

use longrope_core::eval::{Evaluator, EvaluatorConfig, ItemScore, Score, TokenSource};
use longrope_core::generate::greedy_generate;
use longrope_core::model::LanguageModel;
use longrope_core::scaling::RopeSchedule;
use longrope_core::{Error, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::progress::Progress;
use crate::pyrandom::PyRandom;


/// The task description line.
pub const TASK: &str = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.";
/// The garbage sentence.
pub const GARBAGE: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
/// The question.
pub const QUESTION: &str = "What is the pass key? The pass key is";
/// Characters of garbage per token of the requested length (`calc_str_length`'s `letters_per_token`).
pub const LETTERS_PER_TOKEN: f64 = 3.65;
/// The reference's seed (`set_seed(seed=42)`).
pub const REFERENCE_SEED: u64 = 42;
/// The reference's `max_new_tokens`.
pub const REFERENCE_NEW_TOKENS: usize = 10;

/// How the prompt's length is set (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasskeyMode {
    /// `int(3.65 * length)` characters of garbage, Python's `random` seeded 42, 10 new tokens.
    #[default]
    Reference,
    /// The most whole garbage sentences that fit `length` tokens, ChaCha8 keys, " K." + 2 new tokens.
    Tokens,
}

/// The information line for a key.
pub fn information_line(key: u32) -> String {
    format!("The pass key is {key}. Remember it. {key} is the pass key.")
}

/// The prompt text with `before` garbage sentences before the key and `after` after it (`tokens` mode).
pub fn prompt_text(key: u32, before: usize, after: usize) -> String {
    let garbage = |n: usize| vec![GARBAGE; n].join(" ");
    [TASK.to_string(), garbage(before), information_line(key), garbage(after), QUESTION.to_string()].join("\n")
}

/// `calc_str_length(length)`: the characters of garbage of the reference's prompt for `length` tokens.
pub fn reference_garbage_chars(length: usize) -> usize {
    (length as f64 * LETTERS_PER_TOKEN) as usize
}

/// `generate_prompt(n_garbage)` with the key's position `prefix` (characters of garbage before it) and `key`.
pub fn reference_prompt_text(n_garbage: usize, prefix: usize, key: u32) -> String {
    let mut garbage = GARBAGE.to_string();
    while garbage.len() < n_garbage {
        garbage = format!("{garbage} {garbage}");
    }
    let prefix = prefix.min(n_garbage);
    [TASK, &garbage[..prefix], &information_line(key), &garbage[..n_garbage - prefix], QUESTION].join("\n")
}

/// The reference's random draws of one length: `(prefix characters, key)` per sample, from Python's `random`
/// seeded with `seed` (`generate_prompt` draws the position first, then the key).
pub fn reference_draws(n_garbage: usize, samples: usize, seed: u64) -> Vec<(usize, u32)> {
    let mut rng = PyRandom::new(seed);
    (0..samples)
        .map(|_| {
            let prefix = rng.randint(0, n_garbage as u64) as usize;
            (prefix, rng.randint(1, 50_000) as u32)
        })
        .collect()
}

/// Tokenize a prompt (no special tokens) and prepend BOS when given.
fn encode(tokenizer: &tokenizers::Tokenizer, text: &str, bos: Option<u32>) -> Result<Vec<u32>> {
    let enc = tokenizer.encode(text, false).map_err(|e| Error::invalid("tokenizer", e.to_string()))?;
    let mut ids = Vec::with_capacity(enc.len() + 1);
    ids.extend(bos);
    ids.extend_from_slice(enc.get_ids());
    Ok(ids)
}

/// The token ids of a reference prompt: the tokenizer's own special tokens (`add_bos` unset, as the HF pipeline
/// tokenizes), or none plus an explicit BOS (`add_bos = true`), or none (`false`).
pub fn encode_reference(tokenizer: &tokenizers::Tokenizer, text: &str, add_bos: Option<bool>, bos: Option<u32>) -> Result<Vec<u32>> {
    match add_bos {
        None => Ok(tokenizer.encode(text, true).map_err(|e| Error::invalid("tokenizer", e.to_string()))?.get_ids().to_vec()),
        Some(true) => {
            let bos = bos.ok_or_else(|| Error::invalid("passkey.add_bos", "the model has no BOS token"))?;
            encode(tokenizer, text, Some(bos))
        }
        Some(false) => encode(tokenizer, text, None),
    }
}

/// The prompt tokens for `key` at `depth` in [0, 1] that fill at most `length` tokens (the most garbage that
/// fits; `tokens` mode).
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
    /// `reference` (default) or `tokens`: how the prompt's length is set.
    #[serde(default)]
    pub mode: PasskeyMode,
    /// Samples per length.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Depths of the key in [0, 1]; sample `i` uses `depths[i % len]`. Unset: a random depth per sample.
    #[serde(default)]
    pub depths: Option<Vec<f64>>,
    /// Seed of keys and random depths: Python's `random` in `reference` mode (default 42, the reference's),
    /// ChaCha8 in `tokens` mode (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Prepend BOS (`true`/`false`); unset: the tokenizer's own special tokens (`reference`), the model's BOS
    /// token when it has one (`tokens`).
    #[serde(default)]
    pub add_bos: Option<bool>,
    /// New tokens generated per sample; default 10 (`reference`) or the answer's length + 2 (`tokens`).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

fn default_samples() -> usize {
    10
}

impl Default for PasskeyConfig {
    fn default() -> Self {
        PasskeyConfig { mode: PasskeyMode::default(), samples: default_samples(), depths: None, seed: None, add_bos: None, max_new_tokens: None }
    }
}

longrope_core::plugin! {
    kind: Evaluator,
    name: "passkey",
    summary: "passkey retrieval in garbage text (LongRoPE's prompt), accuracy by length and depth",
    impl EvaluatorConfig for PasskeyConfig {
        fn build(&self) -> Result<Box<dyn Evaluator>> {
            if self.samples == 0 {
                return Err(Error::invalid("passkey.samples", "must be positive"));
            }
            longrope_core::limits::int_in("passkey.samples", self.samples, 1, longrope_core::limits::MAX_SAMPLES, "samples per length")?;
            if let Some(n) = self.max_new_tokens {
                longrope_core::limits::int_in("passkey.max_new_tokens", n, 1, longrope_core::limits::MAX_CONTEXT, "new tokens per sample")?;
            }
            if let Some(d) = &self.depths {
                if d.is_empty() || d.iter().any(|x| !(0.0..=1.0).contains(x)) {
                    return Err(Error::invalid("passkey.depths", format!("must be a non-empty list of values in [0, 1], got {d:?}")));
                }
            }
            Ok(Box::new(Passkey { config: self.clone() }))
        }
    }
}

/// The built `passkey` evaluator.
#[derive(Debug, Clone)]
pub struct Passkey {
    /// Its configuration.
    pub config: PasskeyConfig,
}

/// One prompt of a run.
struct Prompt {
    key: u32,
    depth: f64,
    ids: Vec<u32>,
    max_new_tokens: usize,
    /// Characters of garbage before the key (`reference` mode).
    prefix_chars: Option<usize>,
}

impl Passkey {
    /// The prompts of one length, in sample order.
    fn prompts(&self, model: &dyn LanguageModel, length: usize) -> Result<Vec<Prompt>> {
        let c = &self.config;
        let tokenizer = model.tokenizer();
        let fixed_depth = |i: usize| c.depths.as_ref().map(|d| d[i % d.len()]);
        let mut out = Vec::with_capacity(c.samples);
        match c.mode {
            PasskeyMode::Reference => {
                let n_garbage = reference_garbage_chars(length);
                let draws = reference_draws(n_garbage, c.samples, c.seed.unwrap_or(REFERENCE_SEED));
                for (i, (drawn, key)) in draws.into_iter().enumerate() {
                    let prefix = fixed_depth(i).map(|d| (d * n_garbage as f64).round() as usize).unwrap_or(drawn);
                    let text = reference_prompt_text(n_garbage, prefix, key);
                    out.push(Prompt {
                        key,
                        depth: if n_garbage == 0 { 0.0 } else { prefix as f64 / n_garbage as f64 },
                        ids: encode_reference(tokenizer, &text, c.add_bos, model.summary().bos_token_id)?,
                        max_new_tokens: c.max_new_tokens.unwrap_or(REFERENCE_NEW_TOKENS),
                        prefix_chars: Some(prefix),
                    });
                }
            }
            PasskeyMode::Tokens => {
                let bos = match c.add_bos {
                    Some(false) => None,
                    _ => model.summary().bos_token_id,
                };
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.seed.unwrap_or(0));
                for i in 0..c.samples {
                    let key: u32 = rng.random_range(1..=50_000);
                    let random_depth: f64 = rng.random_range(0.0..=1.0);
                    let depth = fixed_depth(i).unwrap_or(random_depth);
                    let answer = encode(tokenizer, &format!(" {key}."), None)?;
                    out.push(Prompt {
                        key,
                        depth,
                        ids: build_prompt(tokenizer, bos, key, depth, length)?,
                        max_new_tokens: c.max_new_tokens.unwrap_or(answer.len() + 2),
                        prefix_chars: None,
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Evaluator for Passkey {
    fn name(&self) -> &str {
        PasskeyConfig::NAME
    }

    fn evaluate(&self, model: &dyn LanguageModel, schedule: &RopeSchedule, length: usize, _data: &dyn TokenSource) -> Result<Score> {
        let _no_grad = tch::no_grad_guard();
        let c = &self.config;
        let tokenizer = model.tokenizer();
        let start = Instant::now();
        let prompts = self.prompts(model, length)?;
        let mut progress = Progress::new(c.samples as u64, &format!("passkey@{length}"));
        let mut per_item = Vec::with_capacity(c.samples);
        let mut by_depth: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut samples_json = Vec::new();
        let mut tokens = 0usize;
        for (i, p) in prompts.iter().enumerate() {
            let new_ids = greedy_generate(model, &p.ids, p.max_new_tokens, schedule, true)?;
            let text = tokenizer.decode(&new_ids, true).map_err(|e| Error::invalid("tokenizer", e.to_string()))?;
            let correct = first_number(&text) == Some(p.key as u64);
            tokens += p.ids.len() + new_ids.len();
            let entry = by_depth.entry(format!("{:.2}", p.depth)).or_default();
            entry.0 += usize::from(correct);
            entry.1 += 1;
            per_item.push(ItemScore { name: format!("sample-{i}"), value: f64::from(u8::from(correct)) });
            let mut sample = serde_json::json!({
                "key": p.key, "depth": p.depth, "prompt_tokens": p.ids.len(), "output": text, "correct": correct
            });
            if let Some(chars) = p.prefix_chars {
                sample["prefix_chars"] = chars.into();
            }
            samples_json.push(sample);
            progress.advance((p.ids.len() + new_ids.len()) as u64);
        }
        progress.finish();
        let accuracy = per_item.iter().map(|p| p.value).sum::<f64>() / per_item.len() as f64;
        let depth_acc: BTreeMap<String, f64> = by_depth.iter().map(|(k, (ok, n))| (k.clone(), *ok as f64 / *n as f64)).collect();
        let mut details = serde_json::json!({ "mode": c.mode, "accuracy_by_depth": depth_acc, "samples": samples_json });
        if c.mode == PasskeyMode::Reference {
            details["garbage_chars"] = reference_garbage_chars(length).into();
        }
        Ok(Score {
            evaluator: "passkey".into(),
            metric: "accuracy".into(),
            length,
            value: accuracy,
            lower_is_better: false,
            per_item,
            details,
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

    /// The reference's `generate_prompt` after `set_seed()`, run by scripts/fixtures/reference_golden.py: the same
    /// keys, key positions and prompt texts at 256 to 131072 tokens.
    #[test]
    fn reference_prompts_equal_the_reference_generator() {
        use sha2::Digest;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference_golden.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
        let lengths = golden["passkey"]["lengths"].as_array().unwrap();
        assert_eq!(lengths.len(), 5);
        for l in lengths {
            let length = l["length"].as_u64().unwrap() as usize;
            let n_garbage = reference_garbage_chars(length);
            assert_eq!(n_garbage as u64, l["n_garbage"].as_u64().unwrap(), "calc_str_length({length})");
            let samples = l["samples"].as_array().unwrap();
            for ((prefix, key), want) in reference_draws(n_garbage, samples.len(), REFERENCE_SEED).into_iter().zip(samples) {
                assert_eq!(key as u64, want["key"].as_u64().unwrap(), "key at {length}");
                assert_eq!(prefix as u64, want["prefix_chars"].as_u64().unwrap(), "position at {length}");
                let prompt = reference_prompt_text(n_garbage, prefix, key);
                assert_eq!(prompt.len() as u64, want["chars"].as_u64().unwrap());
                let sha: String = sha2::Sha256::digest(prompt.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(sha, want["sha256"].as_str().unwrap(), "prompt text at {length}");
                if let Some(t) = want["text"].as_str() {
                    assert_eq!(prompt, t);
                }
            }
        }
        // Another seed gives other prompts (the comparison above can fail).
        assert_ne!(reference_draws(934, 2, 43), reference_draws(934, 2, REFERENCE_SEED));
    }

    #[test]
    fn reference_prompt_cuts_garbage_by_characters() {
        let p = reference_prompt_text(100, 30, 7);
        let lines: Vec<&str> = p.split('\n').collect();
        assert_eq!(lines[1], &GARBAGE[..30]);
        assert_eq!(lines[3], format!("{GARBAGE} {GARBAGE}")[..70].to_string());
        assert_eq!(reference_garbage_chars(256), 934);
    }

    #[test]
    fn first_number_extracts_the_answer() {
        assert_eq!(first_number(" 4217. Remember"), Some(4217));
        assert_eq!(first_number("no digits"), None);
        assert_eq!(first_number(" 42 17"), Some(42));
    }
}
