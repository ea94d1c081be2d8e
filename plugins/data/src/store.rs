//! Token stores: tokenized corpora on disk, memory-mapped, tied to the tokenizer that made them.
//!
//! Layout of a store directory:
//! - `tokens.bin`: every document's token ids, concatenated, little-endian `u32`;
//! - `index.json`: format tag and version, the tokenizer's identity (SHA-256 of its canonical JSON and its
//!   vocabulary size), one entry per document (`name`, `offset`, `len` in tokens), the total, and the SHA-256
//!   of `tokens.bin`. Opening checks sizes, offsets and the checksum; evaluation refuses a store whose
//!   tokenizer differs from the model's.

use std::path::{Path, PathBuf};

use longrope_core::eval::TokenSource;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

const FORMAT: &str = "longrope-token-store";
const VERSION: u32 = 1;

/// The identity of a tokenizer: a hash of its canonical serialization plus its vocabulary size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerId {
    /// SHA-256 (hex) of the tokenizer's JSON serialization.
    pub sha256: String,
    /// Vocabulary size including added tokens.
    pub vocab_size: usize,
}

impl TokenizerId {
    /// Identify a tokenizer.
    pub fn of(tokenizer: &tokenizers::Tokenizer) -> Result<Self> {
        let json = tokenizer.to_string(false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(TokenizerId { sha256: hex(&Sha256::digest(json.as_bytes())), vocab_size: tokenizer.get_vocab_size(true) })
    }
}

impl std::fmt::Display for TokenizerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256 {}.. vocab {}", &self.sha256[..12.min(self.sha256.len())], self.vocab_size)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One document of a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreDoc {
    /// Document name.
    pub name: String,
    /// Offset of its first token in `tokens.bin`, in tokens.
    pub offset: usize,
    /// Its length in tokens.
    pub len: usize,
}

/// `index.json` of a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreIndex {
    /// Always `longrope-token-store`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The tokenizer that made the store.
    pub tokenizer: TokenizerId,
    /// The documents, in order.
    pub docs: Vec<StoreDoc>,
    /// Total tokens.
    pub total_tokens: usize,
    /// SHA-256 (hex) of `tokens.bin`.
    pub tokens_sha256: String,
}

/// A memory-mapped token store.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    index: StoreIndex,
    tokens: Option<memmap2::Mmap>,
}

impl TokenStore {
    /// Whether `path` looks like a store directory (has `index.json` or `tokens.bin`; [`TokenStore::open`]
    /// then refuses one that lacks the other, naming it).
    pub fn is_store(path: &Path) -> bool {
        path.is_dir() && (path.join("index.json").is_file() || path.join("tokens.bin").is_file())
    }

    /// Write a store of `docs` (name, ids) made with `tokenizer` into directory `path` (created if needed).
    /// Each file is replaced atomically (`longrope_core::files`), so a crash or a full disk leaves no half file
    /// and no temporary one; the index is written last and checksums `tokens.bin`.
    pub fn write(path: &Path, tokenizer: &TokenizerId, docs: &[(String, Vec<u32>)]) -> Result<StoreIndex> {
        longrope_core::files::prepare_out_dir(path, longrope_core::files::OutputKind::TokenStore)?;
        let bin = path.join("tokens.bin");
        let mut hasher = Sha256::new();
        let mut entries = Vec::with_capacity(docs.len());
        let mut offset = 0usize;
        longrope_core::files::write_atomic_stream(&bin, |w| {
            for (name, ids) in docs {
                let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_le_bytes()).collect();
                hasher.update(&bytes);
                w.write_all(&bytes)?;
                entries.push(StoreDoc { name: name.clone(), offset, len: ids.len() });
                offset += ids.len();
            }
            Ok(())
        })?;
        let index = StoreIndex {
            format: FORMAT.into(),
            version: VERSION,
            tokenizer: tokenizer.clone(),
            docs: entries,
            total_tokens: offset,
            tokens_sha256: hex(&hasher.finalize()),
        };
        let idx = path.join("index.json");
        let text = serde_json::to_string_pretty(&index).map_err(|e| DataError::Data { path: idx.clone(), message: e.to_string() })?;
        longrope_core::files::write_atomic(&idx, text.as_bytes())?;
        Ok(index)
    }

    /// The files of the store at `path` (`index.json`, `tokens.bin`); one missing is a corrupt store.
    pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
        let files = vec![path.join("index.json"), path.join("tokens.bin")];
        if !files[0].exists() {
            return Err(DataError::CorruptStore {
                path: path.into(),
                message: "tokens.bin without index.json (an interrupted `longrope tokenize`?): tokenize again".into(),
            });
        }
        if !files[1].exists() {
            return Err(DataError::CorruptStore { path: path.into(), message: "index.json without tokens.bin: tokenize again".into() });
        }
        Ok(files)
    }

    /// Open and verify a store: index format, sizes, contiguous offsets, checksum of `tokens.bin`.
    pub fn open(path: &Path) -> Result<TokenStore> {
        let corrupt = |message: String| DataError::CorruptStore { path: path.into(), message };
        Self::files(path)?;
        let idx_path = path.join("index.json");
        let text = longrope_core::files::read_text(&idx_path, 1 << 32)?;
        let index: StoreIndex =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("index.json does not parse: {e}")))?;
        if index.format != FORMAT || index.version != VERSION {
            return Err(corrupt(format!("unknown format {} v{}", index.format, index.version)));
        }
        let mut expect = 0usize;
        for d in &index.docs {
            if d.offset != expect {
                return Err(corrupt(format!("document `{}` starts at {} instead of {expect}", d.name, d.offset)));
            }
            expect += d.len;
        }
        if expect != index.total_tokens {
            return Err(corrupt(format!("documents hold {expect} tokens, index says {}", index.total_tokens)));
        }
        let bin = path.join("tokens.bin");
        let file = std::fs::File::open(&bin).map_err(|source| DataError::Io { path: bin.clone(), source })?;
        let len = file.metadata().map_err(|source| DataError::Io { path: bin.clone(), source })?.len() as usize;
        if len != index.total_tokens * 4 {
            return Err(corrupt(format!(
                "tokens.bin has {len} bytes, the index needs {} ({} tokens)",
                index.total_tokens * 4,
                index.total_tokens
            )));
        }
        let tokens = if len == 0 {
            None
        } else {
            // SAFETY: the file is opened read-only; a store is not modified while in use.
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(|source| DataError::Io { path: bin.clone(), source })?)
        };
        let digest = hex(&Sha256::digest(tokens.as_deref().unwrap_or(&[])));
        if digest != index.tokens_sha256 {
            return Err(corrupt("tokens.bin checksum does not match the index".into()));
        }
        let store = TokenStore { path: path.into(), index, tokens };
        let vocab = store.index.tokenizer.vocab_size as u32;
        if let Some(t) = Self::ids(store.tokens.as_deref().unwrap_or(&[])).position(|t| t >= vocab) {
            return Err(corrupt(format!("token id at {t} exceeds the vocabulary ({vocab})")));
        }
        Ok(store)
    }

    /// The token ids of `tokens.bin` bytes (little-endian `u32`).
    fn ids(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The store's index.
    pub fn index(&self) -> &StoreIndex {
        &self.index
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuse the store unless it was made with `tokenizer`.
    pub fn check_tokenizer(&self, tokenizer: &tokenizers::Tokenizer) -> Result<()> {
        let model = TokenizerId::of(tokenizer)?;
        if model != self.index.tokenizer {
            return Err(DataError::TokenizerMismatch {
                path: self.path.clone(),
                store: self.index.tokenizer.to_string(),
                model: model.to_string(),
            });
        }
        Ok(())
    }
}

impl TokenSource for TokenStore {
    fn num_docs(&self) -> usize {
        self.index.docs.len()
    }
    fn doc_name(&self, i: usize) -> String {
        self.index.docs[i].name.clone()
    }
    fn doc_len(&self, i: usize) -> usize {
        self.index.docs[i].len
    }
    fn doc(&self, i: usize) -> longrope_core::Result<Vec<u32>> {
        let d = &self.index.docs[i];
        let bytes = &self.tokens.as_deref().unwrap_or(&[])[d.offset * 4..(d.offset + d.len) * 4];
        Ok(Self::ids(bytes).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TokenizerId {
        TokenizerId { sha256: "ab".repeat(32), vocab_size: 100 }
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let docs = vec![("a".to_string(), vec![1, 2, 3]), ("b".to_string(), vec![]), ("c".to_string(), vec![99, 0])];
        TokenStore::write(dir.path(), &id(), &docs).unwrap();
        assert!(TokenStore::is_store(dir.path()));
        let s = TokenStore::open(dir.path()).unwrap();
        assert_eq!(s.num_docs(), 3);
        assert_eq!(s.doc(0).unwrap(), vec![1, 2, 3]);
        assert_eq!(s.doc(2).unwrap(), vec![99, 0]);
        assert_eq!(s.doc_name(1), "b");

        // Flip one byte: checksum mismatch.
        let bin = dir.path().join("tokens.bin");
        let mut bytes = std::fs::read(&bin).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&bin, &bytes).unwrap();
        let err = TokenStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt token store") && err.contains("checksum"), "{err}");
        // Truncate: size mismatch.
        std::fs::write(&bin, &bytes[..7]).unwrap();
        let err = TokenStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tokens.bin has 7 bytes"), "{err}");
        // Garbage index.
        std::fs::write(dir.path().join("index.json"), "{").unwrap();
        let err = TokenStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("index.json does not parse"), "{err}");
    }

    #[test]
    fn out_of_vocabulary_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        TokenStore::write(dir.path(), &id(), &[("a".to_string(), vec![100])]).unwrap();
        let err = TokenStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("exceeds the vocabulary"), "{err}");
    }
}
