//! `longrope tokenize`: text files, directories of them or JSONL -> a memory-mapped token store tied to the
//! model's tokenizer (see `longrope_data::store`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use longrope_data::corpus::{read_text_docs, tokenize_docs};
use longrope_data::store::{TokenStore, TokenizerId};

/// Arguments of `longrope tokenize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model whose tokenizer to use: a `.gguf` file, an HF directory, or a `tokenizer.json`.
    #[arg(long)]
    model: PathBuf,
    /// Inputs: text files (one document each), `.jsonl` files (`text` field per line) or directories of them.
    #[arg(long = "input", required = true, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Output store directory.
    #[arg(long)]
    out: PathBuf,
    /// Keep only documents with at least this many tokens.
    #[arg(long, default_value_t = 0)]
    min_tokens: usize,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

/// Run `longrope tokenize`.
pub fn run(args: Args) -> Result<()> {
    // Before tokenizing: a writable directory that holds no other command's outputs.
    longrope_core::files::prepare_out_dir(&args.out, longrope_core::files::OutputKind::TokenStore)
        .with_context(|| format!("--out {}", args.out.display()))?;
    let tokenizer = longrope_models::load_tokenizer(&args.model).with_context(|| format!("tokenizer of {}", args.model.display()))?;
    let mut docs = Vec::new();
    for input in &args.inputs {
        docs.extend(read_text_docs(input)?);
    }
    let tokenized = tokenize_docs(&tokenizer, &docs)?;
    let before = tokenized.len();
    let kept: Vec<(String, Vec<u32>)> = tokenized.into_iter().filter(|(_, ids)| ids.len() >= args.min_tokens).collect();
    let index = TokenStore::write(&args.out, &TokenizerId::of(&tokenizer)?, &kept)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "store": args.out.display().to_string(),
                "documents": index.docs.len(),
                "dropped_short": before - index.docs.len(),
                "total_tokens": index.total_tokens,
                "tokenizer": index.tokenizer,
                "docs": index.docs,
            }))?
        );
    } else {
        println!(
            "{}: {} documents ({} shorter than {} dropped), {} tokens",
            args.out.display(),
            index.docs.len(),
            before - index.docs.len(),
            args.min_tokens,
            index.total_tokens
        );
        for d in &index.docs {
            println!("  {:<40} {:>9} tokens", d.name, d.len);
        }
    }
    Ok(())
}
