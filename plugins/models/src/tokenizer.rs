//! Tokenizers: from an HF directory's `tokenizer.json`, or rebuilt from GGUF metadata with the `tokenizers`
//! crate.
//!
//! GGUF (`tokenizer.ggml.model = "gpt2"`) stores a byte-level BPE: `tokenizer.ggml.tokens` (already written in
//! the GPT-2 byte alphabet), `tokenizer.ggml.merges` (`"a b"` pairs, best first) and `tokenizer.ggml.token_type`
//! (3 = control, added as special tokens; 4 = user-defined, added as plain added tokens). The text split comes
//! from `tokenizer.ggml.pre`, mirroring llama.cpp's pre-tokenizer types:
//! - `smollm`: digits split one by one, then the GPT-2 regex (SmolLM2's own `tokenizer.json`);
//! - `gpt2` / `default` / absent: the GPT-2 regex;
//! - `llama-bpe` / `llama3` / `llama-v3`: the Llama-3 regex; `qwen2`: the same with single digits.
//! No prefix space is added; `tokenizer.ggml.add_bos_token` adds the BOS token in front.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, Value};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`): the Llama-3 regex with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Load an HF `tokenizer.json`.
pub fn from_file(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let arr = g
        .get(key)
        .ok_or_else(|| ModelError::config(&g.path, key, "missing metadata key"))?
        .as_array()
        .ok_or_else(|| ModelError::config(&g.path, key, "expected an array"))?;
    arr.iter().map(|v| v.as_str().ok_or_else(|| ModelError::config(&g.path, key, "expected strings"))).collect()
}

/// Rebuild the tokenizer a GGUF file describes.
pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let err = |message: String| ModelError::Tokenizer { path: g.path.clone(), message };
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model `{model}` is not supported (supported: gpt2, byte-level BPE); use an HF directory \
             with tokenizer.json"
        )));
    }
    let tokens = string_array(g, "tokenizer.ggml.tokens")?;
    let merges_raw = string_array(g, "tokenizer.ggml.merges")?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| err(format!("merge {i} `{m}` is not two tokens")))?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| err(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);

    let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        "llama-bpe" | "llama3" | "llama-v3" | "qwen2" => {
            let regex = if pre == "qwen2" { QWEN2_SPLIT } else { LLAMA3_SPLIT };
            let split = Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| err(e.to_string()))?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        other => {
            return Err(err(format!(
                "tokenizer.ggml.pre `{other}` is not supported (supported: smollm, gpt2, default, llama-bpe, qwen2)"
            )))
        }
    };
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    if let Some(types) = g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (i, t) in types.iter().enumerate() {
            match (t.as_u64().or_else(|| t.as_f64().map(|f| f as u64)), tokens.get(i)) {
                (Some(3), Some(s)) => special.push(AddedToken::from(s.to_string(), true).normalized(false)),
                (Some(4), Some(s)) => user.push(AddedToken::from(s.to_string(), false).normalized(false)),
                _ => {}
            }
        }
        tok.add_special_tokens(&special);
        tok.add_tokens(&user);
    }
    if g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool) == Some(true) {
        if let Some(bos) = g.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64) {
            let name = tokens.get(bos as usize).ok_or_else(|| err(format!("bos_token_id {bos} out of range")))?;
            let post = TemplateProcessing::builder()
                .try_single(format!("{name} $A"))
                .and_then(|b| b.try_pair(format!("{name} $A $B")))
                .map_err(|e| err(e.to_string()))?
                .special_tokens(vec![(name.to_string(), bos as u32)])
                .build()
                .map_err(|e| err(e.to_string()))?;
            tok.with_post_processor(Some(post));
        }
    }
    Ok(tok)
}
