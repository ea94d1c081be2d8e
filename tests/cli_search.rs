//! End-to-end tests of `longrope search` on the synthetic fitness (no model): a stopped or `kill -9`ed search
//! resumed with `--resume` ends exactly like an uninterrupted one and re-runs nothing that was recorded;
//! `--strategy random|grid` spends the same budget.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::history_without_timings as history;
use common::{longrope, longrope_bin, root};

const BUDGET: usize = 16;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longrope-cli-search-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config() -> String {
    root().join("configs/search/smollm2-16k.toml").display().to_string()
}

fn search(out: &Path, extra: &[&str]) -> std::process::Output {
    let cfg = config();
    let mut args = vec!["search", "--config", &cfg, "--fitness", "synthetic", "--no-progress"];
    let out = out.display().to_string();
    args.extend(["--out", &out]);
    args.extend(extra);
    longrope(&args)
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn stopped_search_resumes_to_the_uninterrupted_result() {
    let full = out_dir("full");
    ok(&search(&full, &[]));
    assert_eq!(history(&full).len(), BUDGET);
    let cost: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full.join("cost.json")).unwrap()).unwrap();
    assert_eq!(cost["evaluations"], BUDGET);
    let rope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("rope_scaling.json")).unwrap()).unwrap();
    assert_eq!(rope["rope_type"], "longrope");
    assert_eq!(rope["long_factor"].as_array().unwrap().len(), 32);
    assert_eq!(rope["original_max_position_embeddings"], 8192);

    let split = out_dir("split");
    let text = ok(&search(&split, &["--stop-after-generations", "2"]));
    assert!(text.contains("stopped after generation 2"), "{text}");
    // Generation 0 is the population (8), generation 1 adds 2 mutations + 2 crossovers.
    assert_eq!(history(&split).len(), 12);
    // A fresh run into a directory with a checkpoint is refused.
    let refused = search(&split, &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let text = ok(&search(&split, &["--resume"]));
    assert!(text.contains("this run: 4 evaluated, 0 recovered"), "{text}");
    assert_eq!(history(&split), history(&full));
    for f in ["best_factors.csv", "rope_scaling.json", "best_scaling.toml", "best_curve.csv"] {
        assert_eq!(std::fs::read(split.join(f)).unwrap(), std::fs::read(full.join(f)).unwrap(), "{f}");
    }
}

#[test]
fn killed_search_resumes_without_rerunning_recorded_evaluations() {
    let full = out_dir("kill-full");
    ok(&search(&full, &[]));
    let killed = out_dir("killed");
    let mut child = Command::new(longrope_bin())
        .args(["search", "--config", &config(), "--fitness", "synthetic", "--no-progress", "--synthetic-delay-ms", "150"])
        .arg("--out")
        .arg(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 once some evaluations are recorded and before the end (16 x 150 ms).
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(killed.join("history.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        if n >= 5 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let recorded = history(&killed).len();
    assert!((5..BUDGET).contains(&recorded), "{recorded} evaluations recorded at the kill");
    let text = ok(&search(&killed, &["--resume"]));
    let expected = format!("this run: {} evaluated", BUDGET - recorded);
    assert!(text.contains(&expected), "{text}");
    assert_eq!(history(&killed), history(&full));
    assert_eq!(std::fs::read(killed.join("best_factors.csv")).unwrap(), std::fs::read(full.join("best_factors.csv")).unwrap());
}

#[test]
fn baselines_spend_the_same_budget_and_compare_with_the_evolution() {
    let evo = out_dir("cmp-evolution");
    let text = ok(&search(&evo, &[]));
    // The evolution evaluates its seeds (generation 0) and reports them next to its best.
    for seed in ["pi", "ntk", "yarn"] {
        assert!(text.contains(&format!("seed {seed}: fitness ")), "{text}");
    }
    let mut dirs = vec![evo.clone()];
    for strategy in ["random", "grid"] {
        let dir = out_dir(strategy);
        let text = ok(&search(&dir, &["--strategy", strategy]));
        assert!(text.contains(&format!("cost: {BUDGET} evaluations")), "{strategy}: {text}");
        assert_eq!(history(&dir).len(), BUDGET, "{strategy}");
        if strategy == "random" {
            assert!(text.contains("seeds not evaluated by this search: pi, ntk, yarn"), "{text}");
        }
        dirs.push(dir);
    }
    let bad = search(&out_dir("bad"), &["--strategy", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown search plugin `nope`"));

    // `longrope compare` on the three directories: one row each, the same budget, the best seed named.
    let md_path = out_dir("cmp-md").with_extension("md");
    let mut args: Vec<String> = vec!["compare".into()];
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    args.extend(["--out".into(), md_path.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let md = ok(&longrope(&args));
    assert_eq!(std::fs::read_to_string(&md_path).unwrap(), md);
    for (dir, strategy) in dirs.iter().zip(["evolution", "random", "grid"]) {
        let row = md.lines().find(|l| l.starts_with(&format!("| `{}` |", dir.display()))).unwrap_or_else(|| panic!("{md}"));
        assert!(row.contains(&format!("| {strategy} | dim_mono | 0 | - | {BUDGET} |")), "{row}");
    }
    assert!(md.contains("vs best seed (ntk "), "{md}");
    assert!(!md.contains("Not comparable"), "{md}");
    let png = md_path.with_file_name(format!("{}-search-curve.png", md_path.file_stem().unwrap().to_str().unwrap()));
    assert!(std::fs::metadata(&png).map(|m| m.len() > 1000).unwrap_or(false), "{}", png.display());
    assert!(md.contains(&format!("]({})", png.file_name().unwrap().to_str().unwrap())), "{md}");
}

#[test]
fn model_fitness_or_missing_shape_is_a_clear_error() {
    let dir = out_dir("noshape");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("s.toml");
    std::fs::write(&cfg, "target_length = 4096\n[strategy]\nstrategy = \"random\"\nbudget = 4\n").unwrap();
    let o = longrope(&["search", "--config", cfg.to_str().unwrap(), "--fitness", "synthetic", "--out", dir.join("o").to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("s.toml") && err.contains("[shape]"), "{err}");
    std::fs::write(&cfg, "target_length = 4096\n[strategy]\nstrategy = \"random\"\nbugdet = 4\n").unwrap();
    let o = longrope(&["search", "--config", cfg.to_str().unwrap(), "--fitness", "synthetic"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("s.toml") && err.contains("bugdet"), "{err}");
}

/// The model-backed fitness on the tiny random Llama (trained context 256, target 512): the search runs
/// through the real model and evaluator, and its exported best config reproduces its best fitness when
/// evaluated by `longrope ppl` — the search and the evaluator measure the same thing.
#[test]
fn model_fitness_matches_the_evaluator_on_the_exported_best() {
    let dir = out_dir("model");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("doc.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(300)).unwrap();
    let cfg = dir.join("search.toml");
    std::fs::write(
        &cfg,
        format!(
            "seed = 3\ntarget_length = 512\n[model]\npath = {:?}\n[fitness]\nevaluator = \"ppl\"\ndocuments = 1\ncorpus = [{:?}]\n\
             [space]\nkind = \"dim_mono\"\nseeds = [\"pi\", \"ntk\", \"yarn\"]\n\
             [strategy]\nstrategy = \"evolution\"\npopulation_size = 4\niterations = 2\nmutation_numbers = 1\ncrossover_size = 1\nparents_size = 2\n",
            common::tiny_llama().display().to_string(),
            text.display().to_string()
        ),
    )
    .unwrap();
    let out = dir.join("out");
    ok(&longrope(&["search", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-progress"]));
    let h = history(&out);
    assert_eq!(h.len(), 8, "population 4 + 2 x (1 + 1)");
    let best: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("best.json")).unwrap()).unwrap();
    let best_fitness = h.iter().map(|r| r["fitness"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    let ppl = ok(&longrope(&[
        "ppl", "--model", common::tiny_llama().to_str().unwrap(), "--data", text.to_str().unwrap(),
        "--scaling", out.join("best_scaling.toml").to_str().unwrap(), "--target", "512", "--lengths", "512",
        "--truncate", "--samples", "1", "--out", dir.join("ppl").to_str().unwrap(), "--json",
    ]));
    let doc: serde_json::Value = serde_json::from_str(&ppl).unwrap();
    let measured = doc["results"][0]["ppl"].as_f64().unwrap();
    assert!((measured - best_fitness).abs() <= 1e-9 * best_fitness, "ppl of best_scaling.toml {measured} vs best fitness {best_fitness} ({best})");
}

/// Racing over 3 documents with the tiny random Llama (trained context 256, target 512): `exact` racing
/// proposes the same candidates as the unraced search, every candidate it lets finish has the unraced fitness
/// bit for bit, and the best factors are the same; `observed` racing stops candidates (fewer tokens read).
/// Racing with an evaluator that does not split into documents is refused.
#[test]
fn racing_over_documents_keeps_the_selection_and_reads_fewer_tokens() {
    let dir = out_dir("racing");
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let text = common::corpus_text();
    let words: Vec<&str> = text.split(' ').collect();
    std::fs::write(corpus.join("a.txt"), &text).unwrap();
    std::fs::write(corpus.join("b.txt"), words.iter().rev().copied().collect::<Vec<_>>().join(" ")).unwrap();
    std::fs::write(corpus.join("c.txt"), "the quick brown fox jumps over the lazy dog. ".repeat(200)).unwrap();
    let run = |racing: &str, evaluator: &str| {
        let cfg = dir.join(format!("search-{racing}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "seed = 1\ntarget_length = 512\n[model]\npath = {:?}\n[fitness]\nevaluator = {evaluator:?}\ndocuments = 3\n\
                 racing = {racing:?}\ncorpus = [{:?}]\n[space]\nmode = \"paper\"\nkind = \"dim_mono\"\n\
                 [strategy]\nstrategy = \"evolution\"\npopulation_size = 6\niterations = 3\nmutation_numbers = 2\n\
                 crossover_size = 2\nparents_size = 2\n",
                common::tiny_llama().display().to_string(),
                corpus.display().to_string()
            ),
        )
        .unwrap();
        let out = dir.join(racing);
        let o = longrope(&["search", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-progress"]);
        (o, out)
    };
    let (o, off) = run("off", "ppl");
    ok(&o);
    let (o, exact) = run("exact", "ppl");
    ok(&o);
    let (o, observed) = run("observed", "ppl");
    let printed = ok(&o);
    let (plain, raced) = (history(&off), history(&exact));
    assert_eq!(plain.len(), 18);
    assert_eq!(raced.len(), 18);
    for (p, r) in plain.iter().zip(&raced) {
        assert_eq!((&p["index"], &p["candidate"]), (&r["index"], &r["candidate"]));
        if r.get("raced").is_none() {
            assert_eq!(p["fitness"], r["fitness"], "evaluation {}", r["index"]);
            assert_eq!(r["items"].as_array().unwrap().len(), 3);
        } else {
            assert!(r["fitness"].as_f64().unwrap() <= p["fitness"].as_f64().unwrap());
        }
    }
    let read = |d: &Path| std::fs::read_to_string(d.join("best_factors.csv")).unwrap();
    assert_eq!(read(&off), read(&exact));
    let cost = |d: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(d.join("cost.json")).unwrap()).unwrap() };
    let stopped = cost(&observed)["raced"].as_u64().unwrap_or(0);
    assert!(stopped > 0, "observed racing stopped nothing: {}", cost(&observed));
    assert!(cost(&observed)["tokens"].as_u64() < cost(&off)["tokens"].as_u64());
    assert!(printed.contains(&format!("racing: {stopped} of 18 evaluations stopped early")), "{printed}");
    let (o, paired) = run("paired", "ppl");
    ok(&o);
    println!("exact: {} stopped; observed: {stopped}; paired: {}", cost(&exact)["raced"], cost(&paired)["raced"]);
    assert!(cost(&paired)["raced"].as_u64().unwrap_or(0) > 0);
    let (o, _) = run("exact", "passkey");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fitness.racing") && err.contains("passkey"), "{err}");
}
