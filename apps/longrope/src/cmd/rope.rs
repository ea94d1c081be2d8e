//! `longrope rope`: inspect a scaling method's tables for one context, and export them.
//!
//! Prints `inv_freq` (d/2 values), `attn_factor`, the start-token rule (`retained`: `n_hat` and its tables, or
//! null), the factors `lambda_i = theta_i / theta'_i`, the method name and its resolved parameters. With
//! `--hf-config OUT.json` it also writes the HF `rope_scaling` block (`type = "longrope"`) into that
//! `config.json` (merged into an existing file, other keys kept); with `--factors-csv OUT.csv` it writes the
//! method's factors as a LongRoPE CSV (one value per line, or layers x d/2 when per-layer), which seeds a search
//! or runs as `longrope` with `factors_file`.

use std::path::PathBuf;

use std::fmt::Write as _;

use anyhow::{Context, Result};
use longrope_core::scaling::load_scaling_config;
use longrope_core::RopeShape;
use longrope_scaling::factors;

/// Arguments of `longrope rope`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scaling method: a plugin name (HF defaults, s = target/original) or a TOML config file.
    #[arg(long, value_name = "CONFIG")]
    scaling: String,
    /// Attention head dimension d.
    #[arg(long, value_name = "D")]
    head_dim: usize,
    /// RoPE base b (HF `rope_theta`).
    #[arg(long, value_name = "B")]
    base: f64,
    /// The original (trained) context L.
    #[arg(long, value_name = "L")]
    original: usize,
    /// The target context L' (s = L'/L).
    #[arg(long, value_name = "L2")]
    target: usize,
    /// The current sequence length l (largest position + 1); defaults to the target.
    #[arg(long, value_name = "N")]
    seq_len: Option<usize>,
    /// The layer whose tables to print (per-layer factors).
    #[arg(long, value_name = "I", default_value_t = 0)]
    layer: usize,
    /// Number of layers of the model (must match per-layer factors).
    #[arg(long, value_name = "N", default_value_t = 1)]
    layers: usize,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the HF `rope_scaling` longrope block into this config.json (created, or updated in place).
    #[arg(long, value_name = "OUT.json")]
    hf_config: Option<PathBuf>,
    /// Also write the method's factors lambda_i = theta_i / theta'_i at --seq-len as a LongRoPE CSV.
    #[arg(long, value_name = "OUT.csv")]
    factors_csv: Option<PathBuf>,
}

/// Run `longrope rope`.
pub fn run(args: Args) -> Result<()> {
    let shape = RopeShape {
        head_dim: args.head_dim,
        rope_base: args.base,
        original_max_position_embeddings: args.original,
        max_position_embeddings: args.target,
        num_layers: args.layers,
    };
    shape.validate().context("invalid --head-dim/--base/--original/--target/--layers")?;
    anyhow::ensure!(
        args.layer < args.layers,
        "--layer {} is out of range: the model has --layers {}",
        args.layer,
        args.layers
    );
    let seq_len = args.seq_len.unwrap_or(args.target);
    anyhow::ensure!(seq_len > 0, "--seq-len must be positive");
    let config = load_scaling_config(&args.scaling).with_context(|| format!("--scaling {}", args.scaling))?;
    let method = config.build(&shape).with_context(|| {
        format!("--scaling {} for head_dim {}, {} layers (--layers)", args.scaling, args.head_dim, args.layers)
    })?;
    let tables = method.tables(&shape.at(seq_len, args.layer))?;
    tables.validate(&shape)?;
    let lambda = factors::factors_of(&tables, &shape);

    if let Some(path) = &args.factors_csv {
        let table = factors::method_factors(method.as_ref(), &shape, seq_len)?;
        factors::write_csv(path, &table)?;
    }
    if let Some(path) = &args.hf_config {
        let block = factors::hf_rope_scaling(method.as_ref(), &shape)?;
        let mut doc = if path.exists() {
            let text = longrope_core::files::read_text(path, longrope_core::files::MAX_CONFIG_BYTES)?;
            match serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))? {
                serde_json::Value::Object(map) => map,
                _ => anyhow::bail!("{}: expected a JSON object (an HF config.json)", path.display()),
            }
        } else {
            serde_json::Map::new()
        };
        factors::hf_config_update(&mut doc, block, &shape);
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(doc))? + "\n";
        // Atomic: a full disk must not leave the user's config.json truncated.
        longrope_core::files::write_atomic(path, text.as_bytes())?;
    }

    if args.json {
        let doc = serde_json::json!({
            "method": method.name(),
            "params": method.params(),
            "shape": shape,
            "scale": shape.scale(),
            "seq_len": seq_len,
            "layer": args.layer,
            "depends_on_seq_len": method.depends_on_seq_len(),
            "per_layer": method.per_layer(),
            "inv_freq": tables.inv_freq,
            "attn_factor": tables.attn_factor,
            "factors": lambda,
            "retained": tables.retained,
        });
        return print_stdout(&(serde_json::to_string_pretty(&doc)? + "\n"));
    }
    let mut out = String::new();
    writeln!(out, "method       {}", method.name())?;
    writeln!(out, "params       {}", method.params())?;
    writeln!(
        out,
        "shape        d={} b={} L={} L'={} (s={}) layers={}",
        shape.head_dim,
        shape.rope_base,
        shape.original_max_position_embeddings,
        shape.max_position_embeddings,
        shape.scale(),
        shape.num_layers
    )?;
    writeln!(
        out,
        "context      seq_len={seq_len} layer={} (depends on seq_len: {}, per layer: {})",
        args.layer,
        method.depends_on_seq_len(),
        method.per_layer()
    )?;
    writeln!(out, "attn_factor  {}", tables.attn_factor)?;
    match &tables.retained {
        Some(r) => writeln!(
            out,
            "retained     positions < {} use the original inv_freq with attn_factor {}",
            r.n_hat, r.attn_factor
        ),
        None => writeln!(out, "retained     none"),
    }?;
    let base = shape.base_inv_freq();
    writeln!(out, "{:>4}  {:>24}  {:>24}  {:>12}", "i", "theta_i", "inv_freq", "lambda_i")?;
    for (i, ((theta, f), l)) in base.iter().zip(&tables.inv_freq).zip(&lambda).enumerate() {
        writeln!(out, "{i:>4}  {theta:>24.17e}  {f:>24.17e}  {l:>12.6}")?;
    }
    print_stdout(&out)
}

/// Print to stdout; a closed pipe (`longrope rope ... | head`) ends quietly instead of panicking.
fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
