//! `longrope bench profile --model M.gguf --lengths 4096,16384,32768 --dtype bf16`: where the scoring forward's
//! time goes. Each component of one decoder layer is timed on its own, on random tensors of the model's shapes
//! (read from the GGUF metadata and tensors), with the same operations the model runs (`plugins/models/src/llama.rs`:
//! RMSNorm in f32, separate q/k/v projections, RoPE as `x cos + rotate_half(x) sin`, causal SDPA with the KV
//! heads shared (`enable_gqa`), RoPE and SDPA in `longrope_core::device::upcast_kind` (f32 for bf16 on CPU);
//! the SwiGLU MLP), then multiplied by the number
//! of layers; the LM head is timed as `chunked_nll_sum` over every position. The sum is compared with a real
//! forward of the loaded model at the same length (`LanguageModel::nll`), so the table says how much of the
//! measured time it accounts for.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use longrope_core::device::{dtype_name, parse_dtype, upcast_kind};
use longrope_models::gguf::GgufFile;
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::model::{load_model, original_tables};

/// Arguments of `longrope bench profile`.
#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// A GGUF model (its shapes; the real forward it is compared with).
    #[arg(long)]
    model: PathBuf,
    /// Sequence lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4096,16384")]
    lengths: Vec<usize>,
    /// Compute dtype (f32, bf16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print one JSON array.
    #[arg(long)]
    json: bool,
}

/// Seconds of `f` (one warm-up call, then the best of two).
fn time(mut f: impl FnMut() -> Tensor) -> f64 {
    let _ = f();
    (0..2)
        .map(|_| {
            let t = Instant::now();
            let _ = f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3)
}

/// Run `longrope bench profile`.
pub fn profile(args: ProfileArgs) -> Result<()> {
    anyhow::ensure!(!args.lengths.is_empty() && !args.lengths.contains(&0), "--lengths must list positive lengths");
    for l in &args.lengths {
        longrope_core::limits::context("--lengths", *l, 1)?;
    }
    let kind = parse_dtype(&args.dtype)?;
    let g = GgufFile::open(&args.model).with_context(|| format!("--model {}", args.model.display()))?;
    let arch = g.get_str("general.architecture")?.to_string();
    let ffn = g.get(&format!("{arch}.feed_forward_length")).and_then(|v| v.as_u64()).context("feed_forward_length missing")? as i64;
    drop(g);
    let _no_grad = tch::no_grad_guard();
    let model = load_model(&args.model, "cpu", &args.dtype, None)?;
    let s = model.summary().clone();
    let (h, nh, nkv, hd, v) = (s.hidden_size as i64, s.num_heads as i64, s.num_kv_heads as i64, s.head_dim as i64, s.vocab_size as i64);
    let layers = s.num_layers as f64;
    let opts = (Kind::Float, Device::Cpu);
    let w = |o: i64, i: i64| (Tensor::randn([o, i], opts) * 0.02).to_kind(kind);
    let (wq, wk, wv, wo) = (w(nh * hd, h), w(nkv * hd, h), w(nkv * hd, h), w(h, nh * hd));
    let (wg, wu, wd, head) = (w(ffn, h), w(ffn, h), w(h, ffn), w(v, h));
    let norm_w = Tensor::ones([h], opts).to_kind(kind);
    let tables = original_tables(model.as_ref());
    let mut runs = Vec::new();
    for &len in &args.lengths {
        let n = len as i64;
        let x = Tensor::randn([1, n, h], opts).to_kind(kind);
        let attn_out = Tensor::randn([1, n, nh * hd], opts).to_kind(kind);
        // q/k/v come out of the projections in the model's dtype; RoPE (which includes the cast, as the model
        // casts right before rotating) and attention run in `upcast_kind` (f32 for bf16 on CPU), like the model.
        let ak = upcast_kind(kind, Device::Cpu);
        let q = Tensor::randn([1, nh, n, hd], opts).to_kind(kind);
        let k = Tensor::randn([1, nkv, n, hd], opts).to_kind(kind);
        let (qa, ka, va) = (q.to_kind(ak), k.to_kind(ak), Tensor::randn([1, nkv, n, hd], opts).to_kind(ak));
        let cos = Tensor::randn([1, 1, n, hd], opts).to_kind(ak);
        let sin = Tensor::randn([1, 1, n, hd], opts).to_kind(ak);
        let targets = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
        let rms = || {
            let xf = x.to_kind(Kind::Float);
            (&xf * (xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + 1e-5).rsqrt()).to_kind(kind) * &norm_w
        };
        let attend = || Tensor::scaled_dot_product_attention(&qa, &ka, &va, None::<Tensor>, 0.0, true, None, nh != nkv).to_kind(kind);
        let rope = |t: &Tensor| {
            let t = t.to_kind(ak);
            (&t * &cos + rotate_half(&t) * &sin).sum(Kind::Float)
        };
        let parts: Vec<(&str, f64)> = vec![
            ("RMSNorm (2 per layer)", 2.0 * layers * time(rms)),
            ("q/k/v projections", layers * time(|| Tensor::stack(&[x.linear(&wq, None::<Tensor>).sum(Kind::Float), x.linear(&wk, None::<Tensor>).sum(Kind::Float), x.linear(&wv, None::<Tensor>).sum(Kind::Float)], 0))),
            ("RoPE (q and k)", layers * time(|| Tensor::stack(&[rope(&q), rope(&k)], 0))),
            ("attention (causal SDPA)", layers * time(attend)),
            ("o projection", layers * time(|| attn_out.linear(&wo, None::<Tensor>))),
            ("MLP (gate, up, SiLU, down)", layers * time(|| (x.linear(&wg, None::<Tensor>).silu() * x.linear(&wu, None::<Tensor>)).linear(&wd, None::<Tensor>))),
            ("LM head + log-softmax", time(|| longrope_core::model::chunked_nll_sum(&x.squeeze_dim(0), &head, &targets, 1024))),
        ];
        let total: f64 = parts.iter().map(|p| p.1).sum();
        let tokens: Vec<i64> = (0..n).map(|i| (i * 7919) % v).collect();
        let t0 = Instant::now();
        model.nll(&tokens, &tables, 0)?;
        let real = t0.elapsed().as_secs_f64();
        let dtype = dtype_name(kind);
        if !args.json {
            println!("{len} tokens, {dtype}: real forward {real:.2} s ({:.1} tok/s); components sum to {total:.2} s ({:.0} % of it)", len as f64 / real, 100.0 * total / real);
            for (name, secs) in &parts {
                println!("  {name:<28} {secs:>8.2} s  {:>5.1} %", 100.0 * secs / total);
            }
        }
        runs.push(json!({
            "tokens": len, "dtype": dtype, "real_forward_seconds": real, "components_seconds": total,
            "components": parts.iter().map(|(n, s)| json!({"name": n, "seconds": s, "share": s / total})).collect::<Vec<_>>(),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    }
    Ok(())
}
