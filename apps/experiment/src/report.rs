//! What a run writes: `results.json` (every cell and search, the machine, wall time), `results.csv` (one row per
//! cell), `report.md` (tables: perplexity by method x length, passkey by method x length, search summary, cost;
//! machine, libtorch, wall time) and the plots under `plots/`; and `longrope compare`'s merge of several runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use longrope_core::model::ModelSummary;
use serde::{Deserialize, Serialize};

use crate::error::{ExperimentError, Result};
use crate::plots;
use crate::runner::{file_stem, CellResult, FinetuneResult, SearchResult};
use longrope_core::files::write_atomic;

/// A model of the experiment, with its summary once it has been loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Name in the experiment.
    pub name: String,
    /// Checkpoint path.
    pub path: String,
    /// Compute dtype.
    pub dtype: String,
    /// Device.
    pub device: String,
    /// Architecture summary (absent if the model was never loaded, e.g. every cell came from another run).
    pub summary: Option<ModelSummary>,
}

/// The machine a run ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Host name.
    pub hostname: String,
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// Operating system.
    pub os: String,
    /// libtorch version.
    pub libtorch: String,
    /// libtorch intra-op threads.
    pub torch_threads: i32,
    /// Usable CUDA devices.
    pub cuda_devices: i64,
}

impl Machine {
    /// Describe this machine (Linux `/proc` and `/etc/os-release`; `unknown` elsewhere).
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            .unwrap_or(0.0);
        let os = read("/etc/os-release")
            .lines()
            .find(|l| l.starts_with("PRETTY_NAME="))
            .map(|l| l.trim_start_matches("PRETTY_NAME=").trim_matches('"').to_string())
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let env = longrope_core::device::env_info();
        Machine {
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            cpu,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gib,
            os,
            libtorch: env.libtorch_version,
            torch_threads: env.threads,
            cuda_devices: if env.cuda_available { env.cuda_device_count } else { 0 },
        }
    }
}

/// Everything a run produced (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Experiment name.
    pub experiment: String,
    /// Its description.
    pub description: String,
    /// SHA-256 of the experiment file's content (as parsed).
    pub config_hash: String,
    /// The models.
    pub models: Vec<ModelInfo>,
    /// Every cell, in plan order.
    pub cells: Vec<CellResult>,
    /// Every search step.
    pub searches: Vec<SearchResult>,
    /// Every fine-tune step (absent in results written before fine-tuning existed).
    #[serde(default)]
    pub finetunes: Vec<FinetuneResult>,
    /// The machine of the last invocation.
    pub machine: Machine,
    /// Wall time of the last invocation in seconds (cached cells cost nothing).
    pub wall_seconds: f64,
}

impl Results {
    /// Read a `results.json` (or the directory holding one).
    pub fn load(path: &Path) -> Result<Results> {
        let file = if path.is_dir() { path.join("results.json") } else { path.to_path_buf() };
        let text = longrope_core::files::read_text(&file, 16 * longrope_core::files::MAX_CONFIG_BYTES)?;
        serde_json::from_str(&text).map_err(|e| ExperimentError::Results { path: file, message: format!("not an experiment results.json: {e}") })
    }

    /// Compute seconds: every cell's evaluation time plus every search's wall time (across resumes).
    pub fn compute_seconds(&self) -> f64 {
        self.cells.iter().map(|c| c.score.seconds).sum::<f64>()
            + self.searches.iter().map(|s| s.cost.wall_seconds).sum::<f64>()
            + self.finetunes.iter().map(|f| f.wall_seconds).sum::<f64>()
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `results.csv`: one row per cell.
pub fn results_csv(r: &Results) -> String {
    let mut out = String::from("model,method,eval,evaluator,metric,length,seed,target,value,tokens,seconds\n");
    for c in &r.cells {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{:.3}",
            csv_field(&c.model),
            csv_field(&c.method),
            csv_field(&c.eval),
            c.evaluator,
            c.score.metric,
            c.length,
            c.seed.map(|s| s.to_string()).unwrap_or_default(),
            c.target,
            c.score.value,
            c.score.tokens,
            c.score.seconds
        );
    }
    out
}

/// Mean value of the cells of (model, evaluator plugin) by method and length, methods in first-seen order.
fn grid(r: &Results, model: &str, evaluator: &str) -> (Vec<String>, Vec<usize>, BTreeMap<(String, usize), f64>) {
    let mut methods: Vec<String> = Vec::new();
    let mut lengths = BTreeSet::new();
    let mut acc: BTreeMap<(String, usize), (f64, usize)> = BTreeMap::new();
    for c in r.cells.iter().filter(|c| c.model == model && c.evaluator == evaluator) {
        if !methods.contains(&c.method) {
            methods.push(c.method.clone());
        }
        lengths.insert(c.length);
        let e = acc.entry((c.method.clone(), c.length)).or_default();
        e.0 += c.score.value;
        e.1 += 1;
    }
    let values = acc.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect();
    (methods, lengths.into_iter().collect(), values)
}

fn fmt_value(evaluator: &str, v: f64) -> String {
    if evaluator == "passkey" {
        format!("{:.0}%", v * 100.0)
    } else if !v.is_finite() {
        "inf".into()
    } else if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn length_header(l: usize, trained: Option<usize>) -> String {
    let base = if l % 1024 == 0 { format!("{}k", l / 1024) } else { l.to_string() };
    match trained {
        Some(t) if l > t => format!("{base} ({:.3}x L)", l as f64 / t as f64).replace(".000x", "x"),
        _ => base,
    }
}

/// The header and alignment rows of a table with one column per length.
fn lengths_table_header(md: &mut String, first: &str, lengths: &[usize], trained: Option<usize>) {
    let _ = write!(md, "| {first} |");
    for &l in lengths {
        let _ = write!(md, " {} |", length_header(l, trained));
    }
    let _ = write!(md, "\n|---|");
    for _ in lengths {
        let _ = write!(md, "---:|");
    }
    let _ = writeln!(md);
}

fn trained_of(r: &Results, model: &str) -> Option<usize> {
    r.cells.iter().find(|c| c.model == model).map(|c| c.trained_context)
}

/// The evaluator plugins present, in a stable order (ppl, passkey, then the rest by name).
fn evaluators(r: &Results) -> Vec<String> {
    let mut names: Vec<String> = r.cells.iter().map(|c| c.evaluator.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    names.sort_by_key(|n| (n != "ppl", n != "passkey", n.clone()));
    names
}

fn metric_title(evaluator: &str) -> &'static str {
    match evaluator {
        "ppl" => "Perplexity (lower is better)",
        "passkey" => "Passkey retrieval accuracy",
        "needle-ppl" => "Needle perplexity (lower is better)",
        _ => "Scores",
    }
}

/// Draw every plot; returns the plot files (relative to `out`) or the reason there are none.
pub fn write_plots(out: &Path, r: &Results) -> std::result::Result<Vec<String>, String> {
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    let rel = |p: &PathBuf| p.strip_prefix(out).unwrap_or(p).display().to_string();
    for m in &r.models {
        let trained = trained_of(r, &m.name);
        for ev in evaluators(r) {
            let (methods, lengths, values) = grid(r, &m.name, &ev);
            if methods.is_empty() {
                continue;
            }
            let stem = dir.join(format!("{}-{}", file_stem(&ev), file_stem(&m.name)));
            let written = if ev == "passkey" {
                let rows: Vec<Vec<Option<f64>>> =
                    methods.iter().map(|me| lengths.iter().map(|&l| values.get(&(me.clone(), l)).copied()).collect()).collect();
                plots::heatmap(&stem, &format!("passkey accuracy, {}", m.name), &methods, &lengths, &rows)
            } else {
                let series: Vec<plots::Series> = methods
                    .iter()
                    .map(|me| (me.clone(), lengths.iter().filter_map(|&l| values.get(&(me.clone(), l)).map(|&v| (l as f64, v))).collect()))
                    .collect();
                plots::ppl_vs_length(&stem, &format!("{ev} vs context length, {}", m.name), &series, trained)
            };
            files.extend(written.map_err(|e| e.to_string())?.iter().map(rel));
        }
    }
    if !r.searches.is_empty() {
        let series: Vec<plots::Series> = r
            .searches
            .iter()
            .map(|s| (format!("{} ({})", s.name, s.strategy), s.curve.iter().map(|p| (p.evaluations as f64, p.best_fitness)).collect()))
            .collect();
        let written = plots::search_curve(&dir.join("search-fitness"), "search: best fitness vs evaluations", &series);
        files.extend(written.map_err(|e| e.to_string())?.iter().map(rel));
    }
    if !r.finetunes.is_empty() {
        let series: Vec<plots::Series> =
            r.finetunes.iter().map(|f| (format!("{} ({})", f.name, f.method), f.loss_curve.iter().map(|&(t, l)| (t as f64, l)).collect())).collect();
        let written = plots::loss_curve(&dir.join("finetune-loss"), "fine-tuning: training loss vs tokens", &series);
        files.extend(written.map_err(|e| e.to_string())?.iter().map(rel));
    }
    Ok(files)
}

/// The Markdown report. `plots` are the files written (PNG ones are embedded) or why there are none.
pub fn markdown(r: &Results, plots: &std::result::Result<Vec<String>, String>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", r.experiment);
    if !r.description.trim().is_empty() {
        let _ = writeln!(md, "{}\n", r.description.trim());
    }
    let m = &r.machine;
    let _ = writeln!(md, "## Run\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| machine | {} ({} logical CPUs, {} GiB), {} |", m.cpu, m.cpus, m.memory_gib, m.os);
    let _ = writeln!(md, "| libtorch | {} ({} threads{}) |", m.libtorch, m.torch_threads, if m.cuda_devices > 0 { format!(", {} CUDA devices", m.cuda_devices) } else { ", CPU only".into() });
    let _ = writeln!(md, "| wall time of this invocation | {:.1} min |", r.wall_seconds / 60.0);
    let _ = writeln!(md, "| compute time of all cells and searches | {:.1} min |", r.compute_seconds() / 60.0);
    for mi in &r.models {
        let detail = mi
            .summary
            .as_ref()
            .map(|s| format!("{} {} layers, head_dim {}, rope base {}, trained context {}, RoPE L {}, weights {}", s.arch, s.num_layers, s.head_dim, s.rope_base, s.max_position_embeddings, s.original_context(), s.weight_dtype))
            .unwrap_or_default();
        let _ = writeln!(md, "| model `{}` | `{}` ({}, {}) {} |", mi.name, mi.path, mi.dtype, mi.device, detail);
    }
    let _ = writeln!(md);
    for ev in evaluators(r) {
        let _ = writeln!(md, "## {}\n", metric_title(&ev));
        for mi in &r.models {
            let (methods, lengths, values) = grid(r, &mi.name, &ev);
            if methods.is_empty() {
                continue;
            }
            let trained = trained_of(r, &mi.name);
            if r.models.len() > 1 {
                let _ = writeln!(md, "### {}\n", mi.name);
            }
            lengths_table_header(&mut md, "method", &lengths, trained);
            for me in &methods {
                let _ = write!(md, "| {me} |");
                for &l in &lengths {
                    let v = values.get(&(me.clone(), l)).map(|&v| fmt_value(&ev, v)).unwrap_or_else(|| "".into());
                    let _ = write!(md, " {v} |");
                }
                let _ = writeln!(md);
            }
            let _ = writeln!(md);
            if let Ok(files) = plots {
                let stem = format!("plots/{}-{}.png", file_stem(&ev), file_stem(&mi.name));
                if files.contains(&stem) {
                    let _ = writeln!(md, "![{ev} {}]({stem})\n", mi.name);
                }
            }
        }
        if let Some(note) = eval_note(r, &ev) {
            let _ = writeln!(md, "{note}\n");
        }
    }
    if !r.searches.is_empty() {
        let _ = writeln!(md, "## Search\n");
        let _ = writeln!(md, "| search | model | strategy | fitness | target | evaluations | duplicates skipped | generations | best seed | best fitness | best n_hat | best factors (min .. max) | wall |");
        let _ = writeln!(md, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
        for s in &r.searches {
            let lo = s.best.factors.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = s.best.factors.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let best_seed = longrope_search::outputs::fittest_seed(&s.seeds)
                .map(|(name, f)| format!("{name} {f:.4}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.4} | {} | {:.3} .. {:.3} | {:.1} min |",
                s.name, s.model, s.strategy, s.evaluator, s.target_length, s.cost.evaluations, s.cost.duplicates_skipped,
                s.cost.generations, best_seed, s.best_fitness, s.best.n_hat, lo, hi, s.cost.wall_seconds / 60.0
            );
        }
        let _ = writeln!(md, "\n`best seed`: the fittest of the seeds (PI, NTK, YaRN ...) among the search's own evaluations; `-` when the strategy evaluated none of them (random, grid).");
        let _ = writeln!(md);
        if let Ok(files) = plots {
            if files.iter().any(|f| f == "plots/search-fitness.png") {
                let _ = writeln!(md, "![search fitness](plots/search-fitness.png)\n");
            }
        }
        let _ = writeln!(md, "The searched factors, HF `rope_scaling` block and history are in each search's directory (`{}`).\n", r.searches.iter().map(|s| s.dir.as_str()).collect::<Vec<_>>().join("`, `"));
    }
    if !r.finetunes.is_empty() {
        finetune_section(&mut md, r, plots);
    }
    let _ = writeln!(md, "## Cost\n");
    let _ = writeln!(md, "| model | method | cells | tokens | seconds |\n|---|---|---:|---:|---:|");
    let mut cost: Vec<((String, String), (usize, usize, f64))> = Vec::new();
    for c in &r.cells {
        let key = (c.model.clone(), c.method.clone());
        match cost.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                v.0 += 1;
                v.1 += c.score.tokens;
                v.2 += c.score.seconds;
            }
            None => cost.push((key, (1, c.score.tokens, c.score.seconds))),
        }
    }
    for ((model, method), (n, tokens, secs)) in &cost {
        let _ = writeln!(md, "| {model} | {method} | {n} | {tokens} | {secs:.1} |");
    }
    for s in &r.searches {
        let _ = writeln!(md, "| {} | search `{}` | {} evaluations | {} | {:.1} |", s.model, s.name, s.cost.evaluations, s.cost.tokens, s.cost.wall_seconds);
    }
    for f in &r.finetunes {
        let _ = writeln!(md, "| {} | fine-tune `{}` | {} steps | {} | {:.1} |", f.model, f.name, f.steps, f.tokens, f.wall_seconds);
    }
    let _ = writeln!(md);
    if let Err(why) = plots {
        let _ = writeln!(md, "No plots: {why}\n");
    }
    let _ = writeln!(md, "Every number comes from `results.json` (`results.csv` has one row per cell); `longrope compare` merges runs.");
    md
}

/// The fine-tuning section: one row per fine-tune, the loss plot, and per evaluator a before -> after table
/// (the base model under the same method vs the fine-tuned model).
fn finetune_section(md: &mut String, r: &Results, plots: &std::result::Result<Vec<String>, String>) {
    let _ = writeln!(md, "## Fine-tuning\n");
    let _ = writeln!(md, "| fine-tune | base model | method | target | steps | tokens | trainable values | loss first -> last | wall | peak RSS |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---|---:|---:|");
    for f in &r.finetunes {
        let first = f.loss_curve.first().map(|p| p.1).unwrap_or(f64::NAN);
        let last = f.loss_curve.last().map(|p| p.1).unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {}{} | {first:.3} -> {last:.3} | {:.1} min | {} |",
            f.name, f.model, f.method, f.target, f.steps, f.tokens, f.trainable_values, if f.lora { " (LoRA)" } else { "" },
            f.wall_seconds / 60.0, f.peak_rss_mib.map(|v| format!("{:.1} GB", v / 1024.0)).unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(md);
    if let Ok(files) = plots {
        if files.iter().any(|f| f == "plots/finetune-loss.png") {
            let _ = writeln!(md, "![fine-tuning loss](plots/finetune-loss.png)\n");
        }
    }
    for ev in evaluators(r) {
        let mut lengths = BTreeSet::new();
        let mut rows = Vec::new();
        for f in &r.finetunes {
            let (_, _, before) = grid(r, &f.model, &ev);
            let (_, _, after) = grid(r, &f.name, &ev);
            let pairs: BTreeMap<usize, (Option<f64>, f64)> = after
                .iter()
                .filter(|((m, _), _)| m == &f.method)
                .map(|((_, l), &v)| (*l, (before.get(&(f.method.clone(), *l)).copied(), v)))
                .collect();
            if !pairs.is_empty() {
                lengths.extend(pairs.keys().copied());
                rows.push((f, pairs));
            }
        }
        if rows.is_empty() {
            continue;
        }
        let trained = rows.first().and_then(|(f, _)| trained_of(r, &f.model));
        let _ = writeln!(md, "### {}: before -> after fine-tuning\n", metric_title(&ev));
        let lengths: Vec<usize> = lengths.into_iter().collect();
        lengths_table_header(md, "fine-tune (method)", &lengths, trained);
        for (f, pairs) in rows {
            let _ = write!(md, "| {} ({}) |", f.name, f.method);
            for l in &lengths {
                let cell = match pairs.get(l) {
                    Some((Some(b), a)) => format!("{} -> **{}**", fmt_value(&ev, *b), fmt_value(&ev, *a)),
                    Some((None, a)) => format!("**{}**", fmt_value(&ev, *a)),
                    None => String::new(),
                };
                let _ = write!(md, " {cell} |");
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "Each fine-tune's checkpoints, `train_log.jsonl` and exported HF directory (`model/`) are in `{}`.\n", r.finetunes.iter().map(|f| f.dir.as_str()).collect::<Vec<_>>().join("`, `"));
}

fn eval_note(r: &Results, evaluator: &str) -> Option<String> {
    let c = r.cells.iter().find(|c| c.evaluator == evaluator)?;
    let n = c.score.per_item.len();
    let unit = if evaluator == "passkey" { "samples" } else { "documents" };
    Some(format!("`{evaluator}`: {n} {unit} per cell (see `results.json` for per-item values); columns past the trained context `L` show `l/L`."))
}

/// Write `results.json`, `results.csv`, the plots and `report.md` into `out`.
pub fn write_all(out: &Path, r: &Results, log: &mut dyn FnMut(String)) -> Result<()> {
    write_atomic(&out.join("results.json"), (serde_json::to_string_pretty(r).expect("results serialize") + "\n").as_bytes())?;
    write_atomic(&out.join("results.csv"), results_csv(r).as_bytes())?;
    let plots = write_plots(out, r);
    if let Err(why) = &plots {
        log(format!("warning: no plots: {why}"));
    }
    write_atomic(&out.join("report.md"), markdown(r, &plots).as_bytes())?;
    log(format!("report: {}", out.join("report.md").display()));
    Ok(())
}

/// `longrope compare`: experiment runs (a `results.json` or its directory) give one Markdown table per
/// evaluator over every run, rows `run / model / method`, columns the union of lengths; search directories
/// (holding a `checkpoint.json`) give the search comparison of [`longrope_search::compare_markdown`]. With
/// `plot_stem`, the searches' best fitness vs evaluations is also drawn to `<plot_stem>-search-curve.png`
/// and `.svg` and embedded.
pub fn compare(paths: &[PathBuf], plot_stem: Option<&Path>) -> Result<String> {
    let (search_dirs, result_paths): (Vec<&PathBuf>, Vec<&PathBuf>) =
        paths.iter().partition(|p| longrope_search::SearchRun::is_search_dir(p));
    let mut md = compare_results(&result_paths)?;
    if !search_dirs.is_empty() {
        let runs = search_dirs.iter().map(|d| longrope_search::SearchRun::load(d)).collect::<std::result::Result<Vec<_>, _>>()?;
        md.push_str(&longrope_search::compare_markdown(&runs));
        if let Some(stem) = plot_stem {
            let curves: Vec<Vec<(usize, f64)>> = runs.iter().map(|r| r.running_best()).collect();
            // The first evaluations (a PI seed, early random draws) can sit far above where the searches
            // differ: cut the axis at the worst run's best after a quarter of its budget.
            let top = curves
                .iter()
                .filter_map(|c| c.get(c.len().div_ceil(4).saturating_sub(1)).map(|p| p.1))
                .filter(|v| v.is_finite())
                .fold(f64::NEG_INFINITY, f64::max);
            let cut = curves.iter().flatten().any(|p| p.1 > top);
            let series: Vec<plots::Series> = runs
                .iter()
                .zip(&curves)
                .map(|(r, c)| {
                    let label = format!("{} ({})", r.dir.display(), r.strategy);
                    (label, c.iter().map(|&(n, f)| (n as f64, if cut { f.min(top) } else { f })).collect())
                })
                .collect();
            let title = if cut {
                format!("best fitness vs evaluations (values above {top:.3} drawn at the top)")
            } else {
                "best fitness vs evaluations".to_string()
            };
            let curve_stem = stem.with_file_name(format!(
                "{}-search-curve",
                stem.file_stem().and_then(|s| s.to_str()).unwrap_or("compare")
            ));
            let written = plots::search_curve(&curve_stem, &title, &series)?;
            if let Some(png) = written.iter().find(|p| p.extension().is_some_and(|e| e == "png")) {
                let name = png.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let _ = writeln!(md, "![best fitness vs evaluations]({name})\n");
            }
        }
    }
    Ok(md)
}

/// The experiment part of [`compare`].
fn compare_results(paths: &[&PathBuf]) -> Result<String> {
    let runs: Vec<(String, Results)> = paths
        .iter()
        .map(|p| {
            let r = Results::load(p)?;
            let label = if p.is_dir() { p.display().to_string() } else { p.parent().map(|d| d.display().to_string()).unwrap_or_default() };
            Ok((if label.is_empty() { r.experiment.clone() } else { label }, r))
        })
        .collect::<Result<_>>()?;
    let mut md = String::new();
    let mut all_evaluators: Vec<String> = Vec::new();
    for (_, r) in &runs {
        for e in evaluators(r) {
            if !all_evaluators.contains(&e) {
                all_evaluators.push(e);
            }
        }
    }
    for ev in &all_evaluators {
        let lengths: BTreeSet<usize> = runs.iter().flat_map(|(_, r)| r.cells.iter().filter(|c| &c.evaluator == ev).map(|c| c.length)).collect();
        let _ = writeln!(md, "## {}\n", metric_title(ev));
        let _ = write!(md, "| run | model | method |");
        for l in &lengths {
            let _ = write!(md, " {} |", length_header(*l, None));
        }
        let _ = write!(md, "\n|---|---|---|");
        for _ in &lengths {
            let _ = write!(md, "---:|");
        }
        let _ = writeln!(md);
        for (label, r) in &runs {
            for mi in &r.models {
                let (methods, _, values) = grid(r, &mi.name, ev);
                for me in &methods {
                    let _ = write!(md, "| {label} | {} | {me} |", mi.name);
                    for l in &lengths {
                        let v = values.get(&(me.clone(), *l)).map(|&v| fmt_value(ev, v)).unwrap_or_default();
                        let _ = write!(md, " {v} |");
                    }
                    let _ = writeln!(md);
                }
            }
        }
        let _ = writeln!(md);
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use longrope_core::eval::Score;

    fn cell(method: &str, evaluator: &str, length: usize, seed: Option<u64>, value: f64) -> CellResult {
        CellResult {
            key: format!("{method}-{length}-{seed:?}"),
            model: "m".into(),
            method: method.into(),
            method_base: method.into(),
            ablation: vec![],
            eval: evaluator.into(),
            evaluator: evaluator.into(),
            length,
            seed,
            target: 16384,
            trained_context: 8192,
            scaling: method.into(),
            scaling_params: serde_json::Value::Null,
            score: Score {
                evaluator: evaluator.into(),
                metric: if evaluator == "ppl" { "ppl".into() } else { "accuracy".into() },
                length,
                value,
                lower_is_better: evaluator == "ppl",
                per_item: vec![],
                details: serde_json::Value::Null,
                tokens: length,
                seconds: 1.5,
            },
        }
    }

    fn results() -> Results {
        Results {
            experiment: "t".into(),
            description: String::new(),
            config_hash: "h".into(),
            models: vec![ModelInfo { name: "m".into(), path: "p".into(), dtype: "f32".into(), device: "cpu".into(), summary: None }],
            cells: vec![
                cell("none", "ppl", 4096, None, 10.0),
                cell("none", "ppl", 16384, None, 1234.5),
                cell("yarn", "ppl", 16384, None, 9.5),
                cell("yarn", "passkey", 16384, Some(0), 1.0),
                cell("yarn", "passkey", 16384, Some(1), 0.5),
            ],
            searches: vec![],
            finetunes: vec![],
            machine: Machine::detect(),
            wall_seconds: 3.0,
        }
    }

    #[test]
    fn tables_average_seeds_and_mark_lengths_beyond_l() {
        let md = markdown(&results(), &Err("test".into()));
        assert!(md.contains("| method | 4k | 16k (2x L) |"), "{md}");
        assert!(md.contains("| none | 10.00 | 1234 |"), "{md}");
        assert!(md.contains("| yarn |  | 9.50 |"), "{md}");
        // Passkey: the mean of the two seeds.
        assert!(md.contains("| yarn | 75% |"), "{md}");
        assert!(md.contains("No plots: test"), "{md}");
    }

    #[test]
    fn csv_has_one_row_per_cell() {
        let csv = results_csv(&results());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "model,method,eval,evaluator,metric,length,seed,target,value,tokens,seconds");
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[4], "m,yarn,passkey,passkey,accuracy,16384,0,16384,1,16384,1.500");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
