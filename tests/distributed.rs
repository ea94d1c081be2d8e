//! A search run by several processes through a database (`longrope search --storage URL --study NAME`,
//! `longrope worker --storage URL`) on the tiny random Llama, against SQLite (`NAME::sqlite`) and PostgreSQL
//! (`NAME::postgres`: ignored by a plain `cargo test`; `make test` starts a server with `scripts/postgres.sh`
//! and runs them, failing when the server is missing):
//! - 3 workers finish a study with no trial evaluated twice, and the exported result equals the one-process
//!   search's (history, best factors);
//! - a worker killed with `kill -9` mid-trial has its trial re-run by another worker, nothing lost;
//! - a worker started late joins and evaluates trials;
//! - a study started with another config, a bad URL, an unreachable server: one clear error each;
//! - an experiment's cells kept in a database are computed by a `longrope worker`, and the report equals the
//!   one-process run's with files;
//! - workers racing over documents (`racing = "exact"`) end with the unraced one-process result.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::history_without_timings as history;
use common::{longrope, longrope_bin, stable, tiny_experiment};

/// A fresh directory for one test, removed when the test ends (passed or failed).
fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("longrope-distributed-{name}-")).tempdir().unwrap()
}

/// Each test `NAME(url, dir)` becomes `NAME::sqlite` (a fresh database in its directory) and `NAME::postgres`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                let dir = super::tmp(concat!(stringify!($name), "-sqlite"));
                super::$name(&format!("sqlite:{}", dir.path().join("studies.db").display()), dir.path());
            }
            #[test]
            #[ignore = "needs PostgreSQL: run by `make test` (LONGROPE_TEST_POSTGRES, --include-ignored)"]
            fn postgres() {
                let dir = super::tmp(concat!(stringify!($name), "-pg"));
                super::$name(&longrope_storage::testing::postgres_url(), dir.path());
            }
        }
    )*};
}

on_each_backend!(
    three_workers_finish_a_study_like_one_process,
    a_killed_workers_trial_is_rerun_by_another,
    a_late_worker_joins_and_finishes_work,
    another_config_or_a_missing_study_is_one_clear_error,
    an_experiment_computed_by_a_worker_equals_the_files_run,
    workers_racing_exactly_select_like_one_unraced_process,
);

/// A study name unique to this test process (a PostgreSQL database is shared by every test).
fn study_name(test: &str, url: &str) -> String {
    format!("{test}-{}-{}", if url.starts_with("sqlite") { "sqlite" } else { "pg" }, std::process::id())
}

/// The search of these tests: evolution on the tiny Llama at 512 tokens (trained 256), 6 + 3 x 4 candidates.
fn search_config(dir: &Path, seed: u64) -> PathBuf {
    let text = dir.join("doc.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(300)).unwrap();
    let cfg = dir.join(format!("search-{seed}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "seed = {seed}\ntarget_length = 512\n[model]\npath = {:?}\n[fitness]\nevaluator = \"ppl\"\ndocuments = 1\ncorpus = [{:?}]\n\
             [space]\nkind = \"dim_mono\"\nseeds = [\"pi\", \"ntk\", \"yarn\"]\n\
             [strategy]\nstrategy = \"evolution\"\npopulation_size = 6\niterations = 3\nmutation_numbers = 2\ncrossover_size = 2\nparents_size = 2\n",
            common::tiny_llama().display().to_string(),
            text.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn failed(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The one-process search with files (computed once per test binary).
fn baseline() -> &'static (PathBuf, Vec<serde_json::Value>) {
    static BASE: OnceLock<(PathBuf, Vec<serde_json::Value>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = common::process_scratch("distributed-baseline");
        let cfg = search_config(&dir, 5);
        let out = dir.join("out");
        ok(&longrope(&["search", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-progress"]));
        let h = history(&out);
        assert!(h.len() >= 12, "{} evaluations", h.len());
        (out, h)
    })
}

/// Create the study and propose its first generation, without evaluating (`--detach`).
fn create_study(cfg: &Path, url: &str, study: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["search", "--config", cfg.to_str().unwrap(), "--storage", url, "--study", study];
    args.extend(["--out", out.to_str().unwrap(), "--no-progress", "--detach"]);
    args.extend(extra);
    let text = ok(&longrope(&args));
    assert!(text.contains("waiting for workers"), "{text}");
}

fn spawn_worker(url: &str, study: &str, log: &Path, extra: &[&str]) -> Child {
    Command::new(longrope_bin())
        .args(["worker", "--storage", url, "--study", study, "--poll-ms", "50", "--idle-timeout", "120"])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn wait_ok(mut child: Child, log: &Path) -> String {
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "worker failed: {text}");
    text
}

/// The trial numbers a worker's log says it completed (`trial N of `STUDY`: ...`).
fn completed_trials(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("trial "))
        .filter(|l| !l.contains("taken away"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn status(url: &str, study: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&longrope(&["study", "status", "--storage", url, "--study", study, "--json"]))).unwrap()
}

fn export(url: &str, study: &str, out: &Path) -> String {
    ok(&longrope(&["study", "export", "--storage", url, "--study", study, "--out", out.to_str().unwrap()]))
}

fn assert_same_as_baseline(exported: &Path) {
    let (base, h) = baseline();
    assert_eq!(&history(exported), h, "the study's history differs from the one-process search");
    for f in ["best_factors.csv", "rope_scaling.json", "best_scaling.toml"] {
        assert_eq!(std::fs::read(exported.join(f)).unwrap(), std::fs::read(base.join(f)).unwrap(), "{f}");
    }
}

fn three_workers_finish_a_study_like_one_process(url: &str, dir: &Path) {
    let (_, base) = baseline();
    let cfg = search_config(dir, 5);
    let study = study_name("three", url);
    create_study(&cfg, url, &study, &dir.join("created"), &[]);
    let logs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("w{i}-{}.log", &study))).collect();
    let workers: Vec<Child> = logs.iter().map(|l| spawn_worker(url, &study, l, &["--trial-delay-ms", "500"])).collect();
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for (w, log) in workers.into_iter().zip(&logs) {
        let text = wait_ok(w, log);
        let done = completed_trials(&text);
        per_worker.push(done.len());
        all.extend(done);
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "{url}: a trial was evaluated twice: {all:?}");
    assert_eq!(all.len(), base.len(), "{url}: every trial evaluated once ({per_worker:?} per worker)");
    assert!(per_worker.iter().filter(|&&n| n > 0).count() >= 2, "{url}: the work was shared: {per_worker:?}");
    let st = status(url, &study);
    assert_eq!(st["state"], "finished", "{url}: {st}");
    assert_eq!(st["retried"], 0, "{url}: {st}");
    assert_eq!(st["complete"].as_u64(), Some(base.len() as u64));
    let exported = dir.join(format!("export-{study}"));
    export(url, &study, &exported);
    assert_same_as_baseline(&exported);
    let listed = ok(&longrope(&["study", "list", "--storage", url]));
    assert!(listed.contains(&study) && listed.contains("finished"), "{listed}");
}

fn a_killed_workers_trial_is_rerun_by_another(url: &str, dir: &Path) {
    let cfg = search_config(dir, 5);
    let study = study_name("kill", url);
    create_study(&cfg, url, &study, &dir.join("created"), &["--grace-seconds", "3"]);
    // This worker claims a trial and then sleeps in it (heart-beating) until it is killed.
    let victim_log = dir.join(format!("victim-{study}.log"));
    let mut victim = spawn_worker(url, &study, &victim_log, &["--trial-delay-ms", "600000"]);
    let start = Instant::now();
    let held = loop {
        let st = status(url, &study);
        if let Some(t) = st["running_trials"].as_array().and_then(|r| r.first()) {
            break t["number"].as_u64().unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the worker never claimed a trial: {st}");
        std::thread::sleep(Duration::from_millis(50));
    };
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let logs: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("rescue{i}-{study}.log"))).collect();
    let rescuers: Vec<Child> = logs.iter().map(|l| spawn_worker(url, &study, l, &[])).collect();
    let mut all = Vec::new();
    for (w, log) in rescuers.into_iter().zip(&logs) {
        all.extend(completed_trials(&wait_ok(w, log)));
    }
    assert!(all.contains(&held), "{url}: trial {held} of the killed worker was re-run: {all:?}");
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "{url}: {all:?}");
    let st = status(url, &study);
    assert_eq!(st["state"], "finished", "{url}: {st}");
    assert!(st["retried"].as_u64().unwrap_or(0) >= 1, "{url}: the killed worker's trial needed a second attempt: {st}");
    let exported = dir.join(format!("export-{study}"));
    export(url, &study, &exported);
    assert_same_as_baseline(&exported);
}

fn a_late_worker_joins_and_finishes_work(url: &str, dir: &Path) {
    let cfg = search_config(dir, 5);
    let study = study_name("late", url);
    create_study(&cfg, url, &study, &dir.join("created"), &[]);
    let first_log = dir.join(format!("first-{study}.log"));
    let first = spawn_worker(url, &study, &first_log, &["--trial-delay-ms", "300"]);
    let start = Instant::now();
    while status(url, &study)["complete"].as_u64().unwrap_or(0) < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let late_log = dir.join(format!("late-{study}.log"));
    let late = spawn_worker(url, &study, &late_log, &["--trial-delay-ms", "300"]);
    let a = completed_trials(&wait_ok(first, &first_log));
    let b = completed_trials(&wait_ok(late, &late_log));
    assert!(!b.is_empty(), "{url}: the late worker evaluated nothing (first: {a:?})");
    let mut all: Vec<u64> = a.iter().chain(&b).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), a.len() + b.len(), "{url}: a trial was evaluated twice");
    let exported = dir.join(format!("export-{study}"));
    export(url, &study, &exported);
    assert_same_as_baseline(&exported);
    let by_worker: BTreeMap<String, u64> = serde_json::from_value(status(url, &study)["by_worker"].clone()).unwrap();
    assert_eq!(by_worker.len(), 2, "{by_worker:?}");
}

fn another_config_or_a_missing_study_is_one_clear_error(url: &str, dir: &Path) {
    let cfg = search_config(dir, 5);
    let other = search_config(dir, 6);
    let study = study_name("errors", url);
    create_study(&cfg, url, &study, &dir.join("created"), &[]);
    let e = failed(&longrope(&[
        "search", "--config", other.to_str().unwrap(), "--storage", url, "--study", &study, "--out",
        dir.join("other").to_str().unwrap(), "--no-progress", "--detach",
    ]));
    assert!(e.contains("different config") && e.contains("seed"), "{e}");
    // A study that does not exist.
    let e = failed(&longrope(&["study", "export", "--storage", url, "--study", "no-such-study", "--out", dir.join("x").to_str().unwrap()]));
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn a_bad_url_or_no_server_is_one_clear_error() {
    let scratch = tmp("errors");
    let dir = scratch.path();
    let cfg = search_config(dir, 5);
    let e = failed(&longrope(&["worker", "--storage", "mysql://me:hunter2@db/x"]));
    assert!(e.contains("unknown scheme `mysql`") && e.contains("sqlite:PATH") && !e.contains("hunter2"), "{e}");
    let e = failed(&longrope(&["study", "list", "--storage", "postgres://me:hunter2@127.0.0.1:1/studies"]));
    assert!(e.contains("cannot connect to postgres://me:***@127.0.0.1:1/studies") && !e.contains("hunter2"), "{e}");
    let e = failed(&longrope(&[
        "search", "--config", cfg.to_str().unwrap(), "--study", "s", "--out", dir.join("nostorage").to_str().unwrap(),
    ]));
    assert!(e.contains("need --storage"), "{e}");
}

/// `longrope run EXP --storage URL --study NAME --stop-after-cells 0` runs the experiment's search step and
/// stores its cells as trials without computing one; a `longrope worker` computes every cell; running the
/// experiment again finds them complete (cached) and writes the results of the one-process run with files.
fn an_experiment_computed_by_a_worker_equals_the_files_run(url: &str, dir: &Path) {
    let exp = tiny_experiment(dir, false);
    let exp = exp.to_str().unwrap();
    let total = 26;
    let files = dir.join("files");
    ok(&longrope(&["run", exp, "--out", files.to_str().unwrap()]));
    let study = study_name("experiment", url);
    let out = dir.join("db");
    let run = ["run", exp, "--storage", url, "--study", &study, "--out", out.to_str().unwrap()];
    let text = ok(&longrope(&[&run[..], &["--stop-after-cells", "0"]].concat()));
    assert!(text.contains("stopped after 0 new cells"), "{text}");
    let log = dir.join(format!("worker-{study}.log"));
    let worker = Command::new(longrope_bin())
        .args(["worker", "--storage", url, "--study", &study, "--poll-ms", "50", "--idle-timeout", "3"])
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let text = wait_ok(worker, &log);
    let cells = text.lines().filter(|l| l.starts_with('[') && l.contains(" = ")).count();
    assert_eq!(cells, total, "{url}: the worker computed every cell:\n{text}");
    let text = ok(&longrope(&run));
    let cached = text.lines().filter(|l| l.starts_with('[') && l.ends_with("(cached)")).count();
    assert_eq!(cached, total, "{url}: the runner found every cell complete:\n{text}");
    assert_eq!(stable(&out), stable(&files), "{url}: results differ from the one-process run with files");
    let st = status(url, &study);
    assert_eq!(st["state"], "finished", "{url}: {st}");
    assert_eq!(st["complete"].as_u64(), Some(total as u64), "{url}: {st}");
}

/// Two workers race a 5-document synthetic study (`racing = "exact"`): each computes the threshold from the
/// study's finished trials when it claims one, records each document's loss (`items`), and the study ends with
/// the one-process unraced search's best factors, every finished candidate at the unraced fitness.
fn workers_racing_exactly_select_like_one_unraced_process(url: &str, dir: &Path) {
    let config = |racing: &str| {
        let cfg = dir.join(format!("race-{racing}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "seed = 2\ntarget_length = 16384\n[shape]\nhead_dim = 64\nrope_base = 100000.0\n\
                 original_max_position_embeddings = 8192\nnum_layers = 30\n[fitness]\ndocuments = 5\nracing = {racing:?}\n\
                 [space]\nmode = \"paper\"\nkind = \"dim_mono\"\n[strategy]\nstrategy = \"evolution\"\npopulation_size = 12\n\
                 iterations = 6\nmutation_numbers = 4\ncrossover_size = 4\nparents_size = 4\n"
            ),
        )
        .unwrap();
        cfg
    };
    let off = dir.join("off");
    let cfg = config("off");
    ok(&longrope(&["search", "--config", cfg.to_str().unwrap(), "--fitness", "synthetic", "--out", off.to_str().unwrap(), "--no-progress"]));
    let study = study_name("race", url);
    create_study(&config("exact"), url, &study, &dir.join("created"), &["--fitness", "synthetic"]);
    let logs: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("w{i}-{study}.log"))).collect();
    let workers: Vec<Child> = logs.iter().map(|l| spawn_worker(url, &study, l, &["--trial-delay-ms", "20"])).collect();
    for (w, log) in workers.into_iter().zip(&logs) {
        wait_ok(w, log);
    }
    let exported = dir.join(format!("export-{study}"));
    export(url, &study, &exported);
    let (plain, raced) = (history(&off), history(&exported));
    assert_eq!(plain.len(), raced.len());
    for (p, r) in plain.iter().zip(&raced) {
        assert_eq!((&p["index"], &p["candidate"]), (&r["index"], &r["candidate"]), "{url}");
        if r.get("raced").is_none() {
            assert_eq!(p["fitness"], r["fitness"], "{url}: evaluation {}", r["index"]);
            assert_eq!(r["items"].as_array().map(Vec::len), Some(5), "{url}: the worker raced ({r})");
        }
    }
    assert_eq!(std::fs::read(exported.join("best_factors.csv")).unwrap(), std::fs::read(off.join("best_factors.csv")).unwrap());
}
