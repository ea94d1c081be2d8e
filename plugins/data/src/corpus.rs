//! Corpus input: text files, directories of them, JSONL (`text` field) or token stores, tokenized with the
//! model's tokenizer, and the deterministic selection of evaluation documents.
//!
//! Selection follows LongRoPE's `evaluation/perplexity.py:112-115` (microsoft/LongRoPE@c9e56aa): keep the documents
//! with at least `min_tokens` tokens (`--dataset-min-tokens`; 0 keeps all), in corpus order, then take the first
//! `samples` (`--samples`). An optional seed shuffles the kept documents first (deterministically, not in the
//! reference) for users who want a random subset. `ppl` passes one fixed `min_tokens` for every length (its
//! `reference` selection) or the window length (`per_length`); checked against the reference's lines in
//! `tests/eval.rs` (fixture `tests/fixtures/reference_golden.json`).

use std::path::{Path, PathBuf};

use longrope_core::eval::TokenSource;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::{DataError, Result};
use crate::store::TokenStore;

/// A raw text document before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct TextDoc {
    /// Its name: file stem, or `file.jsonl:LINE`.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// Read text documents from a path: a text file (one document), a `.jsonl` file (one document per line, the
/// `text` field), or a directory (every `.txt` / `.jsonl` file in it, sorted by name).
pub fn read_text_docs(path: &Path) -> Result<Vec<TextDoc>> {
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if meta.is_dir() {
        let mut docs = Vec::new();
        for f in text_files(path)? {
            docs.extend(read_text_docs(&f)?);
        }
        return Ok(docs);
    }
    // Regular files only: `/dev/zero` or a FIFO would be read without bound.
    let text = longrope_core::files::read_text(path, u64::MAX)?;
    if path.extension().and_then(|e| e.to_str()) == Some("jsonl") {
        let file = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let mut docs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| DataError::Data { path: path.into(), message: format!("line {}: {e}", i + 1) })?;
            let t = value.get("text").and_then(|t| t.as_str()).ok_or_else(|| DataError::Data {
                path: path.into(),
                message: format!("line {}: no string field `text`", i + 1),
            })?;
            docs.push(TextDoc { name: format!("{file}:{}", i + 1), text: t.to_string() });
        }
        Ok(docs)
    } else {
        let name = path.file_stem().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        Ok(vec![TextDoc { name, text }])
    }
}

/// The `.txt` and `.jsonl` files of a corpus directory, sorted by name (an empty list is an error).
fn text_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DataError::Io { path: dir.into(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("txt" | "jsonl")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::Data { path: dir.into(), message: "no .txt or .jsonl files in directory".into() });
    }
    Ok(files)
}

/// The files [`Corpus::open`] reads for a corpus path, in reading order: a token store's `index.json` and
/// `tokens.bin`, a text or JSONL file itself, or a directory's `.txt` / `.jsonl` files. What a corpus's content
/// fingerprint covers (results and search checkpoints are keyed by it).
pub fn corpus_files(path: &Path) -> Result<Vec<PathBuf>> {
    if TokenStore::is_store(path) {
        return TokenStore::files(path);
    }
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if meta.is_dir() {
        text_files(path)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Tokenize documents with a tokenizer (no special tokens added, as the reference does).
pub fn tokenize_docs(tokenizer: &tokenizers::Tokenizer, docs: &[TextDoc]) -> Result<Vec<(String, Vec<u32>)>> {
    docs.iter()
        .map(|d| {
            let enc = tokenizer.encode(d.text.as_str(), false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
            Ok((d.name.clone(), enc.get_ids().to_vec()))
        })
        .collect()
}

/// Tokenized documents held in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenDocs {
    /// `(name, token ids)` per document.
    pub docs: Vec<(String, Vec<u32>)>,
}

impl TokenSource for TokenDocs {
    fn num_docs(&self) -> usize {
        self.docs.len()
    }
    fn doc_name(&self, i: usize) -> String {
        self.docs[i].0.clone()
    }
    fn doc_len(&self, i: usize) -> usize {
        self.docs[i].1.len()
    }
    fn doc(&self, i: usize) -> longrope_core::Result<Vec<u32>> {
        Ok(self.docs[i].1.clone())
    }
}

/// A corpus as the commands see it: a token store on disk, or texts tokenized on the fly.
pub enum Corpus {
    /// A memory-mapped token store (`longrope tokenize`).
    Store(TokenStore),
    /// Text documents tokenized in memory.
    Docs(TokenDocs),
}

impl Corpus {
    /// Open `--data PATH` for a model's tokenizer: a token store directory (its tokenizer must match), or
    /// text / JSONL / a directory of them (tokenized now).
    pub fn open(path: &Path, tokenizer: &tokenizers::Tokenizer) -> Result<Corpus> {
        if TokenStore::is_store(path) {
            let store = TokenStore::open(path)?;
            store.check_tokenizer(tokenizer)?;
            return Ok(Corpus::Store(store));
        }
        let docs = read_text_docs(path)?;
        Ok(Corpus::Docs(TokenDocs { docs: tokenize_docs(tokenizer, &docs)? }))
    }

    /// The corpus as a [`TokenSource`].
    pub fn source(&self) -> &dyn TokenSource {
        match self {
            Corpus::Store(s) => s,
            Corpus::Docs(d) => d,
        }
    }
}

/// Several corpora (`--data`-style paths) read as one source: their documents one after another, in order.
pub struct CorpusSet {
    parts: Vec<Corpus>,
    index: Vec<(usize, usize)>,
}

impl CorpusSet {
    /// Open every path with [`Corpus::open`] for `tokenizer`.
    pub fn open(paths: &[PathBuf], tokenizer: &tokenizers::Tokenizer) -> Result<CorpusSet> {
        let mut parts = Vec::with_capacity(paths.len());
        let mut index = Vec::new();
        for (p, path) in paths.iter().enumerate() {
            let corpus = Corpus::open(path, tokenizer)?;
            index.extend((0..corpus.source().num_docs()).map(|i| (p, i)));
            parts.push(corpus);
        }
        Ok(CorpusSet { parts, index })
    }

    fn locate(&self, i: usize) -> (&dyn TokenSource, usize) {
        let (p, j) = self.index[i];
        (self.parts[p].source(), j)
    }
}

impl TokenSource for CorpusSet {
    fn num_docs(&self) -> usize {
        self.index.len()
    }
    fn doc_name(&self, i: usize) -> String {
        let (s, j) = self.locate(i);
        s.doc_name(j)
    }
    fn doc_len(&self, i: usize) -> usize {
        let (s, j) = self.locate(i);
        s.doc_len(j)
    }
    fn doc(&self, i: usize) -> longrope_core::Result<Vec<u32>> {
        let (s, j) = self.locate(i);
        s.doc(j)
    }
}

/// Indices of the evaluation documents: those with at least `min_tokens` tokens, in corpus order (or shuffled
/// with `shuffle_seed`), the first `samples`. Errors when none qualifies.
pub fn select_docs(
    source: &dyn TokenSource,
    min_tokens: usize,
    samples: usize,
    shuffle_seed: Option<u64>,
    origin: &str,
) -> Result<Vec<usize>> {
    let mut keep: Vec<usize> = (0..source.num_docs()).filter(|&i| source.doc_len(i) >= min_tokens).collect();
    if keep.is_empty() {
        let longest = (0..source.num_docs()).map(|i| source.doc_len(i)).max().unwrap_or(0);
        return Err(DataError::NotEnoughData {
            origin: origin.to_string(),
            message: format!(
                "no document has at least {min_tokens} tokens ({} documents, the longest has {longest} tokens)",
                source.num_docs()
            ),
        });
    }
    if let Some(seed) = shuffle_seed {
        keep.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    keep.truncate(samples.max(1));
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(lens: &[usize]) -> TokenDocs {
        TokenDocs { docs: lens.iter().enumerate().map(|(i, &n)| (format!("d{i}"), vec![7; n])).collect() }
    }

    #[test]
    fn selection_filters_by_length_in_order() {
        let d = docs(&[10, 50, 5, 80, 60]);
        assert_eq!(select_docs(&d, 50, 2, None, "t").unwrap(), vec![1, 3]);
        assert_eq!(select_docs(&d, 50, 10, None, "t").unwrap(), vec![1, 3, 4]);
        let a = select_docs(&d, 0, 5, Some(3), "t").unwrap();
        assert_eq!(a, select_docs(&d, 0, 5, Some(3), "t").unwrap(), "seeded shuffle is deterministic");
        let err = select_docs(&d, 100, 1, None, "corpus.txt").unwrap_err().to_string();
        assert!(err.contains("corpus.txt") && err.contains("longest has 80"), "{err}");
    }

    #[test]
    fn reads_jsonl_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "second").unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n").unwrap();
        std::fs::write(dir.path().join("skip.bin"), "x").unwrap();
        let d = read_text_docs(dir.path()).unwrap();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["a.jsonl:1", "a.jsonl:3", "b"]);
        assert_eq!(d[1].text, "two");
        std::fs::write(dir.path().join("bad.jsonl"), "{\"txt\": 1}\n").unwrap();
        let err = read_text_docs(&dir.path().join("bad.jsonl")).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl") && err.contains("line 1"), "{err}");
    }
}
