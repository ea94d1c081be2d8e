//! `longrope bench compare --model M.gguf --lengths 8192,16384 --dtypes f32,bf16 [--rounds R] [--out F.md]`:
//! the scoring forward of ours, HF transformers (`scripts/bench_hf.py` in the reference venv, if it has
//! transformers) and llama.cpp (`llama-perplexity` from `scripts/setup.sh llamacpp`, on the GGUF's own weight
//! type) in one run, interleaved (each round runs every implementation at every length and dtype before the next
//! round), each measurement in its own process.
//!
//! Reported per implementation, length and dtype: tokens/s (median over rounds; ours and HF time the forward
//! alone, llama.cpp its "seconds per pass" over the chunk), peak RSS of the process (`wait4`'s `ru_maxrss`:
//! weights, interpreter and all), the ratios ours / peer, and achieved GFLOP/s against a ceiling measured on the
//! spot for each dtype: the best of square matmuls (2048, 3072) in libtorch with the same threads. FLOPs of
//! a forward of `n` tokens: `2 n P` for the linear layers and the LM head (`P` = their weights, read from the
//! GGUF's tensors; a tied head counted once more) plus causal attention `2 n^2 h d_head` per layer (QK^T and AV
//! over the lower triangle). llama.cpp's own work differs (it computes logits for the second half only and
//! multiplies quantised weights), so its GFLOP/s are the same count over its time: comparable as throughput,
//! not as kernel efficiency.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use longrope_models::gguf::GgufFile;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

/// Arguments of `longrope bench compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The GGUF model (HF loads it with `gguf_file`, llama.cpp runs it as is).
    #[arg(long)]
    model: PathBuf,
    /// Sequence lengths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8192,16384")]
    lengths: Vec<usize>,
    /// Compute dtypes of ours and HF, comma-separated (llama.cpp runs the file's own weight types).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    dtypes: Vec<String>,
    /// Rounds; tokens/s and peak RSS are medians over them.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Text for llama.cpp's chunk (at least twice the longest length in tokens).
    #[arg(long, default_value = ".cache/assets/corpus/austen-emma.txt")]
    data: PathBuf,
    /// Python of the reference venv (`make reference` installs transformers); HF is skipped, with the reason,
    /// when it cannot import transformers.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// llama.cpp's `llama-perplexity`; skipped, with the reason, when missing.
    #[arg(long, default_value = ".cache/llamacpp/bin/llama-perplexity")]
    llama_perplexity: PathBuf,
    /// Which implementations to run, comma-separated (ours, hf, llama.cpp).
    #[arg(long, value_delimiter = ',', default_value = "ours,hf,llama.cpp")]
    impls: Vec<String>,
    /// Also write the report (Markdown, with the machine and the command) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also plot tokens/s and peak RSS against length: `STEM-throughput.{png,svg}`, `STEM-memory.{png,svg}`.
    #[arg(long, value_name = "STEM")]
    plot: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

/// One process: what it printed on stdout and its peak RSS in MiB.
struct Child {
    stdout: String,
    peak_rss_mib: f64,
}

/// Run `cmd` to completion, stdout captured, stderr to `log`; the peak RSS from `wait4`.
fn run_child(mut cmd: Command, log: &Path, what: &str) -> Result<Child> {
    let err = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
    let mut child = cmd.stdout(Stdio::piped()).stderr(err).spawn().with_context(|| format!("starting {what}"))?;
    let mut stdout = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut stdout)?;
    let mut status = 0;
    // SAFETY: `rusage` is plain data; wait4 writes it for our own child, which `Child` has not reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        bail!("{what}: wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let tail: String = std::fs::read_to_string(log).unwrap_or_default().lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        bail!("{what} failed (status {status}); {}: {tail}", log.display());
    }
    Ok(Child { stdout, peak_rss_mib: usage.ru_maxrss as f64 / 1024.0 })
}

/// Best GFLOP/s of square matmuls in `kind` (warm-up, then ~0.5 s per size).
fn ceiling_gflops(kind: Kind) -> f64 {
    let _g = tch::no_grad_guard();
    let mut best: f64 = 0.0;
    for n in [2048i64, 3072] {
        let a = Tensor::randn([n, n], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
        let b = Tensor::randn([n, n], (Kind::Float, tch::Device::Cpu)).to_kind(kind);
        let _ = a.matmul(&b);
        let (t0, mut reps) = (Instant::now(), 0u32);
        while reps < 2 || t0.elapsed().as_secs_f64() < 0.5 {
            let _ = a.matmul(&b);
            reps += 1;
        }
        best = best.max(2.0 * (n * n * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// FLOPs of one forward of `n` tokens (see the module doc).
struct FlopModel {
    linear_params: f64,
    attn_per_token2: f64,
}

impl FlopModel {
    fn of(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?.to_string();
        let u = |k: &str| g.get(&format!("{arch}.{k}")).and_then(|v| v.as_u64()).map(|v| v as f64);
        let (layers, heads, hidden) = (u("block_count"), u("attention.head_count"), u("embedding_length"));
        let (Some(layers), Some(heads), Some(hidden)) = (layers, heads, hidden) else {
            bail!("{}: block_count / attention.head_count / embedding_length missing", g.path.display());
        };
        let head_dim = u("attention.key_length").unwrap_or(hidden / heads);
        let mut linear: f64 = g.tensors.iter().filter(|t| t.shape.len() == 2 && t.name != "token_embd.weight").map(|t| t.numel() as f64).sum();
        if g.tensor("output.weight").is_none() {
            linear += g.tensor("token_embd.weight").map(|t| t.numel() as f64).unwrap_or(0.0);
        }
        Ok(FlopModel { linear_params: linear, attn_per_token2: 2.0 * layers * heads * head_dim })
    }
    fn flops(&self, n: usize) -> f64 {
        let n = n as f64;
        2.0 * n * self.linear_params + self.attn_per_token2 * n * n
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// Why a peer cannot run here, or `None`.
fn hf_unavailable(python: &Path) -> Option<String> {
    if !python.exists() {
        return Some(format!("{} missing (`make reference`)", python.display()));
    }
    let ok = Command::new(python).args(["-c", "import transformers, gguf"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    match ok {
        Ok(s) if s.success() => None,
        _ => Some(format!("{} cannot import transformers and gguf (`make reference`)", python.display())),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map(|kb| format!("{:.0} GiB", kb / 1048576.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem}; libtorch {}; load average at start {}", longrope_core::device::env_info().libtorch_version, load.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Run `longrope bench compare`.
pub fn compare(args: CompareArgs) -> Result<()> {
    anyhow::ensure!(!args.lengths.is_empty() && !args.lengths.contains(&0), "--lengths must list positive lengths");
    anyhow::ensure!(args.rounds > 0, "--rounds must be positive");
    for l in &args.lengths {
        longrope_core::limits::context("--lengths", *l, 1)?;
    }
    for d in &args.dtypes {
        longrope_core::device::parse_dtype(d).with_context(|| format!("--dtypes {d}"))?;
    }
    let g = GgufFile::open(&args.model).with_context(|| format!("--model {}", args.model.display()))?;
    let flop_model = FlopModel::of(&g)?;
    let weights = longrope_models::llama::gguf_summary(&g)?.weight_dtype;
    drop(g);
    let threads = tch::get_num_threads();
    for i in &args.impls {
        anyhow::ensure!(["ours", "hf", "llama.cpp"].contains(&i.as_str()), "--impls: `{i}` is not one of ours, hf, llama.cpp");
    }
    let wanted = |i: &str| args.impls.iter().any(|x| x == i);
    let hf_skip = if wanted("hf") { hf_unavailable(&args.python) } else { Some("not asked for (--impls)".into()) };
    let llama_skip = if !wanted("llama.cpp") {
        Some("not asked for (--impls)".into())
    } else {
        (!args.llama_perplexity.exists()).then(|| format!("{} missing (`make llamacpp`)", args.llama_perplexity.display()))
    };
    let machine = machine();
    let ceilings: Vec<(String, f64)> = args.dtypes.iter().map(|d| (d.clone(), ceiling_gflops(longrope_core::device::parse_dtype(d).unwrap_or(Kind::Float)))).collect();
    let me = std::env::current_exe().context("the longrope binary's path")?;
    let scratch = tempfile::tempdir()?;
    // (impl, dtype, length) -> per-round (tokens/s, peak RSS)
    let mut samples: Vec<((String, String, usize), Vec<(f64, f64)>)> = Vec::new();
    let mut record = |key: (String, String, usize), v: (f64, f64)| match samples.iter_mut().find(|(k, _)| *k == key) {
        Some((_, s)) => s.push(v),
        None => samples.push((key, vec![v])),
    };
    let model = args.model.display().to_string();
    for round in 0..args.rounds {
        for &len in &args.lengths {
            let log = scratch.path().join("child.log");
            for dtype in &args.dtypes {
                if wanted("ours") {
                    eprintln!("round {}/{}: {len} tokens, {dtype}: ours", round + 1, args.rounds);
                    let mut cmd = Command::new(&me);
                    cmd.args(["bench", "forward", "--model", &model, "--lengths", &len.to_string(), "--dtypes", dtype, "--json"]);
                    let c = run_child(cmd, &log, "longrope bench forward")?;
                    let v: Value = serde_json::from_str(&c.stdout).context("longrope bench forward --json")?;
                    record(("ours".into(), dtype.clone(), len), (v[0]["tokens_per_s"].as_f64().unwrap_or(f64::NAN), c.peak_rss_mib));
                }
                if hf_skip.is_none() {
                    eprintln!("round {}/{}: {len} tokens, {dtype}: HF transformers", round + 1, args.rounds);
                    let mut cmd = Command::new(&args.python);
                    cmd.args(["scripts/bench_hf.py", "--model", &model, "--lengths", &len.to_string(), "--dtypes", dtype, "--json"]);
                    let c = run_child(cmd, &log, "scripts/bench_hf.py")?;
                    let v: Value = serde_json::from_str(&c.stdout).context("scripts/bench_hf.py --json")?;
                    record(("hf".into(), dtype.clone(), len), (v[0]["tokens_per_s"].as_f64().unwrap_or(f64::NAN), c.peak_rss_mib));
                }
            }
            if llama_skip.is_none() {
                eprintln!("round {}/{}: {len} tokens: llama.cpp", round + 1, args.rounds);
                let mut cmd = Command::new(&args.llama_perplexity);
                let data = args.data.display().to_string();
                cmd.args(["-m", &model, "-f", &data, "-c", &len.to_string(), "--chunks", "1", "-t", &threads.to_string()]);
                let c = run_child(cmd, &log, "llama-perplexity")?;
                let text = std::fs::read_to_string(&log).unwrap_or_default() + &c.stdout;
                let secs = text
                    .lines()
                    .find_map(|l| l.split(" seconds per pass").next().filter(|_| l.contains("seconds per pass")).and_then(|h| h.split_whitespace().last()).and_then(|s| s.parse::<f64>().ok()))
                    .with_context(|| format!("llama-perplexity printed no `seconds per pass` ({})", log.display()))?;
                // It prints seconds with 2 decimals: a pass under 5 ms reads 0.00 and has no throughput.
                let tps = if secs > 0.0 { len as f64 / secs } else { f64::NAN };
                record(("llama.cpp".into(), weights.clone(), len), (tps, c.peak_rss_mib));
            }
        }
    }
    let ceiling_of = |dtype: &str| ceilings.iter().find(|(d, _)| d == dtype).map(|(_, c)| *c);
    let rows: Vec<Value> = samples
        .iter()
        .map(|((imp, dtype, len), s)| {
            let tps = median(s.iter().map(|x| x.0).collect());
            let rss = median(s.iter().map(|x| x.1).collect());
            let gflops = flop_model.flops(*len) * tps / *len as f64 / 1e9;
            json!({"impl": imp, "dtype": dtype, "tokens": len, "tokens_per_s": tps, "peak_rss_mib": rss, "gflops": gflops,
                   "ceiling_fraction": ceiling_of(dtype).map(|c| gflops / c), "rounds": s.len()})
        })
        .collect();
    let find = |imp: &str, dtype: &str, len: usize| rows.iter().find(|r| r["impl"] == imp && r["dtype"] == dtype && r["tokens"] == len);
    let mut md = String::new();
    md.push_str("| tokens | impl | dtype | tok/s | GFLOP/s | % of ceiling | peak RSS MiB | ours / this (tok/s) | this / ours (RSS) |\n|---:|---|---|---:|---:|---:|---:|---:|---:|\n");
    for &len in &args.lengths {
        for r in rows.iter().filter(|r| r["tokens"] == len) {
            let (imp, dtype) = (r["impl"].as_str().unwrap_or(""), r["dtype"].as_str().unwrap_or(""));
            let ours = if imp == "llama.cpp" { args.dtypes.iter().filter_map(|d| find("ours", d, len)).max_by(|a, b| a["tokens_per_s"].as_f64().unwrap_or(0.0).total_cmp(&b["tokens_per_s"].as_f64().unwrap_or(0.0))) } else { find("ours", dtype, len) };
            let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let (speed, mem) = match ours {
                Some(o) if imp != "ours" => (format!("{:.2}x", f(o, "tokens_per_s") / f(r, "tokens_per_s")), format!("{:.2}x", f(r, "peak_rss_mib") / f(o, "peak_rss_mib"))),
                _ => ("".into(), "".into()),
            };
            let pct = r["ceiling_fraction"].as_f64().filter(|_| imp != "llama.cpp").map(|c| format!("{:.0} %", 100.0 * c)).unwrap_or_default();
            md.push_str(&format!(
                "| {len} | {imp} | {dtype} | {:.1} | {:.1} | {pct} | {:.0} | {speed} | {mem} |\n",
                f(r, "tokens_per_s"), f(r, "gflops"), f(r, "peak_rss_mib")
            ));
        }
    }
    let ceil_line = ceilings.iter().map(|(d, c)| format!("{d} {c:.1} GFLOP/s")).collect::<Vec<_>>().join(", ");
    let mut notes = vec![format!("Matmul ceiling measured on the spot ({threads} threads): {ceil_line}.")];
    if llama_skip.is_none() {
        notes.push("llama.cpp's ratio is against our fastest dtype at that length; its ratio column compares throughput only.".into());
    }
    if let Some(r) = &hf_skip {
        notes.push(format!("HF transformers skipped: {r}."));
    }
    if let Some(r) = &llama_skip {
        notes.push(format!("llama.cpp skipped: {r}."));
    }
    if let Some(stem) = &args.plot {
        let series = |key: &str| -> Vec<longrope_experiment::plots::Series> {
            let mut out: Vec<longrope_experiment::plots::Series> = Vec::new();
            for r in &rows {
                let name = format!("{} {}", r["impl"].as_str().unwrap_or(""), r["dtype"].as_str().unwrap_or(""));
                let point = (r["tokens"].as_f64().unwrap_or(0.0), r[key].as_f64().unwrap_or(f64::NAN));
                match out.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, p)) => p.push(point),
                    None => out.push((name, vec![point])),
                }
            }
            out
        };
        let with = |suffix: &str| PathBuf::from(format!("{}-{suffix}", stem.display()));
        let mut written = longrope_experiment::plots::metric_vs_length(&with("throughput"), "Scoring forward: tokens/s", "tokens/s", &series("tokens_per_s"))?;
        written.extend(longrope_experiment::plots::metric_vs_length(&with("memory"), "Scoring forward: peak RSS of the process", "peak RSS (MiB)", &series("peak_rss_mib"))?);
        notes.push(format!("Plots: {}.", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")));
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({"machine": machine, "threads": threads, "ceilings": ceilings, "runs": rows, "command": command, "notes": notes}))?);
    } else {
        println!("{md}");
        for n in &notes {
            println!("{n}");
        }
    }
    if let Some(out) = &args.out {
        let report = format!(
            "# Scoring forward: ours vs HF transformers vs llama.cpp\n\nMachine: {machine}.\n\nCommand (one run, interleaved, {} round(s)): `{command}`\n\nModel: `{}` (weights {weights}); tokens: deterministic pseudo-random ids (ours, HF), the chunk of `{}` (llama.cpp).\n\n{md}\n{}\n",
            args.rounds,
            args.model.display(),
            args.data.display(),
            notes.iter().map(|n| format!("- {n}\n")).collect::<String>()
        );
        longrope_core::files::write_atomic(out, report.as_bytes())?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
