//! Experiments: every config under `configs/` validates, typos name the field, and a tiny experiment on the
//! tiny random Llama runs end to end through `longrope run`, is interrupted (cleanly after N cells, and by
//! `kill -9`), resumes, and ends with the same `results.json` as an uninterrupted run (timing fields aside).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{corpus_text, longrope, longrope_bin, root, stable, tiny_experiment};
use longrope_experiment::Experiment;

fn link() {
    longrope_scaling::link();
    longrope_eval::link();
    longrope_search::link();
    longrope_models::link();
}

fn tomls(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tomls(&p));
        } else if p.extension().and_then(|e| e.to_str()) == Some("toml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_config_under_configs_validates() {
    link();
    let all = tomls(&root().join("configs"));
    let mut experiments = 0;
    for p in &all {
        let kind = p.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()).unwrap_or_default().to_string();
        match kind.as_str() {
            "experiments" => {
                // Model and corpus paths of the full-scale configs are the user's to provide.
                let exp = Experiment::load_with(p, false).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(!exp.methods.is_empty() && !exp.evals.is_empty(), "{}", p.display());
                let uses_assets = exp.models.iter().all(|m| m.path.to_string_lossy().contains(".cache/assets"));
                if uses_assets {
                    common::smollm2();
                    Experiment::load(p).unwrap_or_else(|e| panic!("{} (files checked): {e}", p.display()));
                }
                experiments += 1;
            }
            "scaling" => {
                longrope_core::scaling::load_scaling_config(p.to_str().unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            "search" => {
                longrope_search::SearchFile::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            "finetune" => {
                longrope_train::Finetune::load(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
            other => panic!("{}: no validation for configs/{other}/: add it to this test", p.display()),
        }
    }
    assert!(experiments >= 4, "demo, ablation and the two full-scale configs: found {experiments}");
    // The ablation example expands to 1 + 3 x 2 methods from `longrope-yarn` and 1 + 2 searched ones.
    let ab = Experiment::load_with(&root().join("configs/experiments/ablation-nhat.toml"), false).unwrap();
    let names: Vec<&str> = ab.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "longrope-yarn",
            "longrope-yarn[attention_policy=su,n_hat=0]",
            "longrope-yarn[attention_policy=su,n_hat=4]",
            "longrope-yarn[attention_policy=su,n_hat=64]",
            "longrope-yarn[attention_policy=yarn,n_hat=0]",
            "longrope-yarn[attention_policy=yarn,n_hat=4]",
            "longrope-yarn[attention_policy=yarn,n_hat=64]",
            "searched",
            "searched[space.kind=dim_mono]",
            "searched[space.kind=dim_piece_mono]",
        ]
    );
    assert_eq!(ab.searches.len(), 3);
}

fn parse_demo_with(from: &str, to: &str) -> String {
    link();
    let path = root().join("configs/experiments/demo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "demo.toml no longer contains {from:?}");
    let text = text.replacen(from, to, 1);
    Experiment::parse_with(&text, &path, false).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn a_typo_names_the_field_and_the_file() {
    // A top-level field of an [[eval]] entry.
    let err = parse_demo_with("lengths = [2048", "lenghts = [2048");
    assert!(err.contains("demo.toml") && err.contains("unknown field `lenghts`") && err.contains("`lengths`"), "{err}");
    // A field inside the evaluator's own table.
    let err = parse_demo_with("truncate = true", "truncat = true");
    assert!(err.contains("unknown field `truncat`") && err.contains("ppl"), "{err}");
    // A field of [[model]].
    let err = parse_demo_with("dtype = \"bf16\"", "dtyp = \"bf16\"");
    assert!(err.contains("unknown field `dtyp`"), "{err}");
    // A field of the inline search config.
    let err = parse_demo_with("population_size = 3", "populaton_size = 3");
    assert!(err.contains("populaton_size"), "{err}");
    // Unknown plugins list the known ones.
    let err = parse_demo_with("scaling = \"yarn\"", "scaling = \"yarnn\"");
    assert!(err.contains("yarnn") && err.contains("longrope, none, ntk, pi, yarn"), "{err}");
    let err = parse_demo_with("evaluator = \"passkey\"", "evaluator = \"passkee\"");
    assert!(err.contains("passkee") && err.contains("needle-ppl, passkey, ppl"), "{err}");
    // References between tables are checked.
    let err = parse_demo_with("from_search = \"longrope-16k\"", "from_search = \"longrope-8k\"");
    assert!(err.contains("longrope-8k") && err.contains("known searches: longrope-16k"), "{err}");
}

fn run_ok(args: &[&str]) -> String {
    let out = longrope(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "longrope {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn cached_lines(stdout: &str) -> usize {
    stdout.lines().filter(|l| l.ends_with("(cached)") && l.starts_with('[')).count()
}

#[test]
fn tiny_experiment_resumes_to_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let exp = tiny_experiment(dir.path(), false);
    let exp_s = exp.to_str().unwrap();
    // 6 methods x 4 ppl lengths + 2 passkey cells.
    let total = 26;

    // Uninterrupted.
    let a = dir.path().join("a");
    let out = run_ok(&["run", exp_s, "--out", a.to_str().unwrap()]);
    assert!(out.contains(&format!("[{total:>3}/{total}]")), "{out}");
    let results_a = stable(&a);
    let cells = results_a["cells"].as_array().unwrap();
    assert_eq!(cells.len(), total);
    let methods: Vec<&str> = cells.iter().filter(|c| c["length"] == 64).map(|c| c["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["none", "pi", "yarn", "yarn[beta_slow=0.25]", "yarn[beta_slow=4.0]", "longrope"]);
    assert_eq!(results_a["searches"][0]["cost"]["evaluations"], 4);
    // The search's fitness (EvaluatorFitness: ppl of one truncated window at L' = 512) is exactly the ppl cell
    // of the method built from its best candidate at 512.
    let searched = cells.iter().find(|c| c["method"] == "longrope" && c["length"] == 512 && c["evaluator"] == "ppl").unwrap();
    assert_eq!(results_a["searches"][0]["best_fitness"], searched["score"]["value"]);
    assert_eq!(searched["scaling"], "longrope");
    // Reference mode (the default): one seed, the reference's YaRN factors, evaluated first; the reported best is
    // the minimum of the search's own history, and the seed's fitness is its history record.
    let search = &results_a["searches"][0];
    let seeds = search["seeds"].as_array().unwrap();
    let names: Vec<&str> = seeds.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["yarn{blend = \"factor\"}"]);
    let history: Vec<serde_json::Value> = std::fs::read_to_string(a.join(search["dir"].as_str().unwrap()).join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(history.len(), 4);
    let fitness: Vec<f64> = history.iter().map(|r| r["fitness"].as_f64().unwrap()).collect();
    let best = search["best_fitness"].as_f64().unwrap();
    assert_eq!(best, fitness.iter().copied().fold(f64::INFINITY, f64::min), "{fitness:?}");
    assert_eq!(seeds[0]["index"], 0);
    assert_eq!(seeds[0]["fitness"].as_f64().unwrap(), fitness[0]);
    assert_eq!(seeds[0]["candidate"], history[0]["candidate"]);
    let seed_fitness = vec![fitness[0]];
    for f in ["results.json", "results.csv", "report.md"] {
        assert!(a.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(a.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), total + 1);
    let md = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(md.contains("## Perplexity") && md.contains("## Passkey") && md.contains("## Search") && md.contains("## Cost"), "{md}");
    let (i, f) = seed_fitness.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap();
    assert!(md.contains(&format!("| {} {f:.4} |", names[i])), "the best seed in the search table: {md}");
    if longrope_experiment::plots::FONT_PATHS.iter().any(|p| Path::new(p).exists()) {
        for f in ["ppl-tiny-llama", "passkey-tiny-llama", "search-fitness"] {
            for ext in ["png", "svg"] {
                let p = a.join("plots").join(format!("{f}.{ext}"));
                assert!(std::fs::metadata(&p).map(|m| m.len() > 1000).unwrap_or(false), "{} missing or empty", p.display());
            }
        }
    }

    // A re-run computes nothing.
    let again = run_ok(&["run", exp_s, "--out", a.to_str().unwrap()]);
    assert_eq!(cached_lines(&again), total, "{again}");
    assert_eq!(stable(&a), results_a);

    // Stopped after 5 new cells, then resumed.
    let b = dir.path().join("b");
    let out = run_ok(&["run", exp_s, "--out", b.to_str().unwrap(), "--stop-after-cells", "5"]);
    assert!(out.contains("stopped after 5 new cells"), "{out}");
    assert!(!b.join("results.json").exists());
    let cached = std::fs::read_dir(b.join("cells")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count();
    assert_eq!(cached, 5);
    let out = run_ok(&["run", exp_s, "--out", b.to_str().unwrap(), "--resume"]);
    assert_eq!(cached_lines(&out), 5, "{out}");
    assert_eq!(stable(&b), results_a, "resumed results differ from the uninterrupted run's");

    // Killed with SIGKILL once the first cells are cached, then resumed.
    let c = dir.path().join("c");
    let mut child = Command::new(longrope_bin())
        .args(["run", exp_s, "--out", c.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let n = std::fs::read_dir(c.join("cells")).map(|d| d.count()).unwrap_or(0);
        if n >= 3 || start.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    run_ok(&["run", exp_s, "--out", c.to_str().unwrap()]);
    assert_eq!(stable(&c), results_a, "results after kill -9 and resume differ");

    // Another version of the experiment refuses the directory without --resume, and reuses its cells with it.
    let exp2 = tiny_experiment(dir.path(), true);
    let out = longrope(&["run", exp2.to_str().unwrap(), "--out", a.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--resume"), "{err}");
    let out = run_ok(&["run", exp2.to_str().unwrap(), "--out", a.to_str().unwrap(), "--resume"]);
    assert_eq!(cached_lines(&out), total, "only the 6 cells of the new length are computed:\n{out}");
    assert!(out.contains(&format!("[{0:>3}/{0}]", total + 6)), "{out}");
    assert!(out.contains("(cached)") && out.contains("search s: best fitness"), "{out}");

    // compare merges runs.
    let table = run_ok(&["compare", a.to_str().unwrap(), b.join("results.json").to_str().unwrap()]);
    assert!(table.contains("| run | model | method |") && table.contains("yarn[beta_slow=0.25]"), "{table}");
    assert_eq!(table.lines().filter(|l| l.contains("| tiny-llama | longrope |")).count(), 4, "{table}");
}

/// `plugins = [...]` in an experiment loads dynamic plugins before the methods are parsed, so a method can
/// name one like a built-in; a missing library is an error naming it.
#[test]
fn experiment_plugins_are_loaded_before_methods_are_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, corpus_text()).unwrap();
    let write = |lib: &str| {
        let text = format!(
            "name = \"dyn\"\ntarget = 512\nplugins = [{lib:?}]\n[[model]]\nname = \"m\"\npath = {:?}\n[data]\ncorpus = [{:?}]\n\
             [[method]]\nname = \"pow\"\nscaling = \"powerlaw\"\n[[eval]]\nevaluator = \"ppl\"\nlengths = [512]\n[eval.config]\nsamples = 1\ntruncate = true\n",
            common::tiny_llama().display().to_string(),
            corpus.display().to_string()
        );
        let p = dir.path().join("dyn.toml");
        std::fs::write(&p, text).unwrap();
        p
    };
    let lib = common::cdylib("longrope_plugin_powerlaw");
    let exp = write(lib.to_str().unwrap());
    let out = run_ok(&["run", exp.to_str().unwrap(), "--out", dir.path().join("out").to_str().unwrap()]);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/results.json")).unwrap()).unwrap();
    assert!(results.to_string().contains("\"pow\""), "{out}\n{results}");
    let exp = write("no-such-lib.so");
    let o = longrope(&["run", exp.to_str().unwrap(), "--check"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("plugins") && err.contains("no-such-lib.so"), "{err}");
}

/// `[[finetune]]` steps: a base model, a fine-tune under PI and one under the factors of a search, a search
/// again on a fine-tuned model; the fine-tuned models are evaluated under their method (before -> after in the
/// report), cached on a re-run, and a training set holding an evaluation document is refused before training.
#[test]
fn finetune_steps_produce_models_that_later_steps_evaluate_and_search() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("corpus.txt"), corpus_text()).unwrap();
    std::fs::write(dir.path().join("train.txt"), corpus_text().replace("heron", "swan").replace("mill", "bridge")).unwrap();
    let search = |name: &str, model: &str| {
        format!(
            "[[search]]\nname = \"{name}\"\nmodel = \"{model}\"\n[search.config]\ntarget_length = 512\n[search.config.fitness]\ndocuments = 1\n\
             [search.config.strategy]\nstrategy = \"evolution\"\npopulation_size = 3\niterations = 1\nmutation_numbers = 1\ncrossover_size = 0\nparents_size = 2\n"
        )
    };
    let text = format!(
        r#"name = "tiny-finetune"
target = 512
[[model]]
name = "tiny"
path = {model:?}
[data]
corpus = ["corpus.txt"]
{s1}
{s2}
[[method]]
name = "none"
scaling = "none"
[[method]]
name = "pi"
scaling = "pi"
[[method]]
name = "searched"
from_search = "s"
[[method]]
name = "searched-again"
from_search = "s2"
[[finetune]]
name = "ft-pi"
method = "pi"
[finetune.config]
data = {{ train = ["train.txt"], seq_len = 64, batch_size = 2 }}
optim = {{ lr = 1e-3 }}
train = {{ steps = 4, checkpoint_every = 2 }}
[[finetune]]
name = "ft-searched"
method = "searched"
[finetune.config]
data = {{ train = ["train.txt"], seq_len = 64, batch_size = 1, pose = {{ target = 512 }} }}
train = {{ steps = 3 }}
lora = {{ rank = 2, alpha = 4.0 }}
[[eval]]
evaluator = "ppl"
lengths = [64, 512]
[eval.config]
samples = 1
truncate = true
"#,
        model = common::tiny_llama().display().to_string(),
        s1 = search("s", "tiny"),
        s2 = search("s2", "ft-pi"),
    );
    let exp = dir.path().join("exp.toml");
    std::fs::write(&exp, &text).unwrap();
    let out = dir.path().join("out");
    let stdout = run_ok(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let cells: Vec<(String, String, u64)> = results["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["model"].as_str().unwrap().to_string(), c["method"].as_str().unwrap().to_string(), c["length"].as_u64().unwrap()))
        .collect();
    let expect = |m: &str, me: &str| [(m.to_string(), me.to_string(), 64), (m.to_string(), me.to_string(), 512)];
    let expected: Vec<(String, String, u64)> = [
        expect("tiny", "none"),
        expect("tiny", "pi"),
        expect("tiny", "searched"),
        expect("ft-pi", "pi"),
        expect("ft-pi", "searched-again"),
        expect("ft-searched", "searched"),
    ]
    .concat();
    assert_eq!(cells, expected, "{stdout}");
    let fts = results["finetunes"].as_array().unwrap();
    assert_eq!(fts.len(), 2);
    assert_eq!((fts[0]["steps"].as_u64(), fts[0]["lora"].as_bool()), (Some(4), Some(false)));
    assert_eq!((fts[1]["steps"].as_u64(), fts[1]["lora"].as_bool()), (Some(3), Some(true)));
    assert_eq!(fts[0]["tokens"].as_u64(), Some(4 * 2 * 64));
    assert_eq!(results["searches"][1]["model"], "ft-pi", "the second search runs on the fine-tuned model");
    // The fine-tuned model is a different model: its PI perplexity differs from the base model's.
    let value = |m: &str, me: &str, l: u64| {
        results["cells"].as_array().unwrap().iter().find(|c| c["model"] == m && c["method"] == me && c["length"] == l).unwrap()["score"]["value"].as_f64().unwrap()
    };
    assert_ne!(value("tiny", "pi", 512), value("ft-pi", "pi", 512));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Fine-tuning") && md.contains("before -> after") && md.contains("| ft-pi (pi) |"), "{md}");
    for f in fts {
        let model_dir = out.join(f["dir"].as_str().unwrap()).join("model");
        assert!(model_dir.join("config.json").exists() && model_dir.join("model.safetensors").exists());
    }
    // A re-run trains nothing and computes no cell.
    let again = run_ok(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(cached_lines(&again), 12, "{again}");
    assert_eq!(again.lines().filter(|l| l.starts_with("finetune ") && l.ends_with("(cached)")).count(), 2, "{again}");
    // Training on an evaluation document is refused before training.
    std::fs::write(&exp, text.replace("train = [\"train.txt\"], seq_len = 64, batch_size = 2", "train = [\"corpus.txt\"], seq_len = 64, batch_size = 2")).unwrap();
    let bad = longrope(&["run", exp.to_str().unwrap(), "--out", dir.path().join("bad").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("evaluation document `corpus` is in the training data") && err.contains("held_out"), "{err}");
}
