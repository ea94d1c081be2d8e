//! Test doubles: a mock language model whose NLL is a known function of the tokens, recording every call.

use std::sync::Mutex;

use longrope_core::model::{KvCache, LanguageModel, ModelSummary, NllSum};
use longrope_core::scaling::LayerTables;
use tch::{Device, Kind, Tensor};

/// A model whose per-token NLL at position `p` is `tokens[p] / 100`; it records `(len, score_from)` per call.
pub struct MockModel {
    pub summary: ModelSummary,
    pub tokenizer: tokenizers::Tokenizer,
    pub calls: Mutex<Vec<(usize, usize, usize)>>,
}

impl MockModel {
    pub fn new(bos: Option<u32>) -> Self {
        let vocab: std::collections::HashMap<String, u32> = (0..100u32).map(|i| (format!("w{i}"), i)).collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("w0".into())
            .build()
            .unwrap();
        let tokenizer = tokenizers::Tokenizer::new(model);
        MockModel {
            summary: ModelSummary {
                arch: "mock".into(),
                format: "mock".into(),
                num_layers: 2,
                hidden_size: 8,
                num_heads: 2,
                num_kv_heads: 1,
                head_dim: 4,
                vocab_size: 100,
                rope_base: 10_000.0,
                max_position_embeddings: 64,
                sliding_window: None,
                tied_embeddings: true,
                weight_dtype: "F32".into(),
                bos_token_id: bos,
                eos_token_id: None,
                checkpoint_scaling: None,
                rotary_dim: None,
            },
            tokenizer,
            calls: Mutex::new(Vec::new()),
        }
    }
}

impl LanguageModel for MockModel {
    fn summary(&self) -> &ModelSummary {
        &self.summary
    }
    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> Kind {
        Kind::Float
    }
    fn forward(&self, tokens: &Tensor, _tables: &LayerTables, _cache: Option<&mut KvCache>) -> longrope_core::Result<Tensor> {
        let (b, t) = tokens.size2()?;
        Ok(Tensor::zeros([b, t, 100], (Kind::Float, Device::Cpu)))
    }
    fn nll(&self, tokens: &[i64], tables: &LayerTables, score_from: usize) -> longrope_core::Result<NllSum> {
        assert_eq!(tables.layers.len(), 2);
        let from = score_from.max(1);
        self.calls.lock().unwrap().push((tokens.len(), score_from, tokens[0] as usize));
        let sum = tokens[from..].iter().map(|&t| t as f64 / 100.0).sum();
        Ok(NllSum { sum, count: tokens.len() - from })
    }
}
