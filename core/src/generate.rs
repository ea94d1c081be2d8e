//! Greedy decoding with a KV cache whose RoPE tables follow the current sequence length.
//!
//! Each step asks the schedule for the tables of the sequence length the step's forward covers
//! (`schedule.tables(len)`, `len` = tokens so far). When they differ from the tables the cache was built
//! with (dynamic methods such as dynamic NTK, LongRoPE's short/long switch at the original context), the
//! cached keys were rotated with stale frequencies, so the cache is dropped and the whole sequence is
//! re-prefilled under the new tables. Reusing the stale cache is a known bug of other runtimes. Decoding runs
//! without gradient tracking.

use tch::{Kind, Tensor};

use crate::model::{KvCache, LanguageModel};
use crate::scaling::RopeSchedule;
use crate::{Error, Result};

/// Greedily decode up to `max_new_tokens` tokens after `prompt`; returns only the new tokens.
/// With `stop_at_eos`, stops after emitting the model's EOS token (which is included).
pub fn greedy_generate(
    model: &dyn LanguageModel,
    prompt: &[u32],
    max_new_tokens: usize,
    schedule: &RopeSchedule,
    stop_at_eos: bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::invalid("prompt", "greedy generation needs at least one prompt token"));
    }
    let _no_grad = tch::no_grad_guard();
    let eos = model.summary().eos_token_id;
    let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let mut new = Vec::with_capacity(max_new_tokens);
    let mut cache = KvCache::default();
    let static_tables = if schedule.method.depends_on_seq_len() { None } else { Some(schedule.tables(seq.len())?) };
    for _ in 0..max_new_tokens {
        let tables = match &static_tables {
            Some(t) => t.clone(),
            None => schedule.tables(seq.len())?,
        };
        if cache.len == 0 || cache.tables.as_ref() != Some(&tables) {
            cache = KvCache::default();
        }
        let feed = Tensor::from_slice(&seq[cache.len..]).unsqueeze(0);
        let logits = model.forward_last(&feed, &tables, Some(&mut cache))?;
        let next = logits.argmax(-1, false).to_kind(Kind::Int64).int64_value(&[0]);
        seq.push(next);
        new.push(next as u32);
        if stop_at_eos && eos == Some(next as u32) {
            break;
        }
    }
    Ok(new)
}
