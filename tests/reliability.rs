//! Reliability (issue 15): a result is never lost, never stale, never computed from absurd input. One test per
//! case the issue found on main, each run through the `longrope` binary on the tiny random Llama as a user
//! would; every one failed before the fix. (Truncated plugins: `tests/plugins_dynamic.rs`; the mechanisms'
//! own unit tests: `longrope_core::{files, digest, limits}`.) See `docs/reliability.md`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{longrope_bin, tiny_llama};

/// A scratch directory with a copy of the tiny model (so tests may overwrite its weights) and a corpus, and
/// its own digest cache (tests never touch the user's).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(tiny_llama().join(f), model.join(f)).unwrap();
        }
        let s = Scratch { dir };
        s.write_corpus(7, &["the", "river", "ran", "past", "old", "mill", "and", "a", "heron", "stood", "still"]);
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `corpus.txt`: 2500 pseudo-random words (a few thousand tokens of the tiny byte-level tokenizer).
    fn write_corpus(&self, seed: u64, words: &[&str]) {
        let mut x = seed;
        let text: Vec<&str> = (0..2500)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                words[(x >> 33) as usize % words.len()]
            })
            .collect();
        std::fs::write(self.path("corpus.txt"), text.join(" ")).unwrap();
    }

    /// Run `longrope ARGS` in the scratch directory.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run longrope")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(longrope_bin());
        c.args(args).current_dir(self.dir.path()).env("LONGROPE_DIGEST_CACHE", self.path("digests.json"));
        c
    }

    /// `longrope ARGS` under a 2 KiB file-size limit: every write of a larger file fails (EFBIG), as on a full
    /// disk (SIGXFSZ is ignored so the write returns the error).
    fn run_disk_full(&self, args: &[&str]) -> Output {
        let mut c = Command::new("sh");
        c.arg("-c").arg("trap '' XFSZ; ulimit -f 2; exec \"$@\"").arg("sh").arg(longrope_bin()).args(args);
        c.current_dir(self.dir.path()).env("LONGROPE_DIGEST_CACHE", self.path("digests.json"));
        c.output().expect("run longrope under ulimit")
    }

    /// A tiny experiment on the scratch model and corpus: pi at 64 and 128 tokens.
    fn experiment(&self, extra_top: &str, lengths: &str) -> PathBuf {
        let p = self.path("exp.toml");
        std::fs::write(
            &p,
            format!(
                "name = \"e\"\n{extra_top}\n[[model]]\nname = \"m\"\npath = \"model\"\n[data]\ncorpus = [\"corpus.txt\"]\n\
                 [[method]]\nname = \"pi\"\nscaling = \"pi\"\n[[eval]]\nevaluator = \"ppl\"\nlengths = {lengths}\n\
                 [eval.config]\nsamples = 1\ntruncate = true\n"
            ),
        )
        .unwrap();
        p
    }

    /// Every file under the scratch directory whose name marks a temporary file.
    fn leftovers(&self) -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.file_name().unwrap().to_string_lossy().contains(".tmp") {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "status {:?}\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
    stdout(o)
}

/// A refusal: exit status 1 (not a signal, not a panic) and one `error:` line containing every needle.
fn refused(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected a clean refusal, got {:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
    err
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// 1. A failing `ppl`/`passkey` overwrote an earlier run's results with empty ones; now a run that computes
/// nothing writes nothing, and a run that computes something keeps the earlier results as `results-N.*`.
#[test]
fn failing_evaluations_never_replace_earlier_results() {
    let s = Scratch::new();
    // `--selection per-length` fails on a length no document holds (the reference selection would score the
    // shorter document, with a warning) and `--passkey-mode tokens` on a length no prompt fits (the reference
    // mode's prompt is sized in characters): both are the failing runs this test needs.
    let ppl = |lengths: &str| {
        s.run(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", lengths, "--selection", "per-length", "--out", "r"])
    };
    ok(&ppl("64"));
    let first = read(&s.path("r/results.csv"));
    assert!(first.contains("\nppl,64,"), "{first}");
    // No document reaches 100000 tokens: an error, and the earlier results untouched.
    let o = ppl("100000");
    assert_eq!(read(&s.path("r/results.csv")), first, "a failing ppl replaced the earlier results");
    refused(&o, &["100000", "nothing written"]);
    let o = s.run(&["passkey", "--model", "model", "--lengths", "8", "--passkey-mode", "tokens", "--out", "r"]);
    assert_eq!(read(&s.path("r/results.csv")), first, "a failing passkey replaced the earlier results");
    refused(&o, &["passkey"]);
    // One length computed, then an error: its result is written, and the earlier run's are kept beside it.
    let o = ppl("128,100000");
    assert!(read(&s.path("r/results.csv")).contains("\nppl,128,"));
    assert_eq!(read(&s.path("r/results-1.csv")), first, "the earlier results are gone");
    refused(&o, &["100000", "results so far are in r/results.json"]);
    let kept: serde_json::Value = serde_json::from_str(&read(&s.path("r/results-1.json"))).unwrap();
    assert_eq!(kept["results"][0]["length"], 64);
}

/// 1. `--out` pointing at another command's directory (an experiment's) was overwritten; now it is refused
/// before anything runs, and the directory is left as it was. Each kind refuses the others.
#[test]
fn out_dirs_of_other_commands_are_refused() {
    let s = Scratch::new();
    let exp = s.experiment("target = 512", "[64]");
    ok(&s.run(&["run", exp.to_str().unwrap(), "--out", "ex"]));
    let results = read(&s.path("ex/results.json"));
    let o = s.run(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", "64", "--out", "ex"]);
    refused(&o, &["--out ex", "an experiment run"]);
    assert!(stdout(&o).is_empty(), "nothing computed: {}", stdout(&o));
    refused(&s.run(&["passkey", "--model", "model", "--lengths", "512", "--out", "ex"]), &["an experiment run"]);
    refused(&s.run(&["tokenize", "--model", "model", "--input", "corpus.txt", "--out", "ex"]), &["an experiment run"]);
    assert_eq!(read(&s.path("ex/results.json")), results);
    ok(&s.run(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", "64", "--out", "pp"]));
    refused(&s.run(&["run", exp.to_str().unwrap(), "--out", "pp"]), &["pp", "ppl/passkey/eval"]);
    assert!(!s.path("pp/experiment.json").exists());
}

/// 1. An unwritable `--out` (under `/proc`) was found only after computing; now before the model is loaded.
#[test]
#[cfg(target_os = "linux")]
fn unwritable_out_is_found_before_computing() {
    let s = Scratch::new();
    let o = s.run(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", "64", "--out", "/proc/longrope-out"]);
    refused(&o, &["/proc/longrope-out"]);
    assert!(!stdout(&o).contains("ppl ="), "computed before finding the directory unwritable: {}", stdout(&o));
    let o = s.run(&["search", "--config", "/nonexistent.toml", "--out", "/proc/longrope-out"]);
    assert_eq!(o.status.code(), Some(1));
}

/// 2. Weights overwritten in place (same size, same config, even the old modification time) were served from
/// the cell cache ("cached", the old numbers); the cell identity now covers the weights' content.
#[test]
fn weights_changed_in_place_are_not_served_from_the_cache() {
    let s = Scratch::new();
    let exp = s.experiment("target = 512", "[64]");
    let exp = exp.to_str().unwrap();
    let first = ok(&s.run(&["run", exp, "--out", "ex"]));
    assert!(!first.contains("(cached)"), "{first}");
    let value = |text: &str| text.lines().find(|l| l.contains("ppl@64")).unwrap().split("ppl = ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let before = value(&first);
    // Overwrite model.safetensors in place: same length, every f32 weight tripled, old mtime restored.
    let st = s.path("model/model.safetensors");
    let mtime = std::fs::metadata(&st).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&st).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for chunk in bytes[8 + header..].chunks_exact_mut(4) {
        let v = f32::from_le_bytes(chunk.try_into().unwrap()) * 3.0;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
        f.write_all(&bytes).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let second = ok(&s.run(&["run", exp, "--out", "ex"]));
    assert!(!second.contains("(cached)"), "stale cell served for changed weights: {second}");
    assert_ne!(value(&second), before, "{second}");
    // Unchanged inputs: cached again.
    let third = ok(&s.run(&["run", exp, "--out", "ex"]));
    assert!(third.contains("(cached)") && value(&third) == value(&second), "{third}");
}

/// 3. A search killed, its corpus changed at the same path, then `--resume`d, exited 0 with a history mixing
/// two datasets; the checkpoint's identity now covers the corpus's and the model's content.
#[test]
fn search_resume_on_changed_inputs_is_refused() {
    let s = Scratch::new();
    std::fs::write(
        s.path("s.toml"),
        "target_length = 512\n[model]\npath = \"model\"\n[fitness]\ndocuments = 1\ncorpus = [\"corpus.txt\"]\n\
         [strategy]\nstrategy = \"evolution\"\npopulation_size = 3\niterations = 2\nmutation_numbers = 1\ncrossover_size = 0\nparents_size = 2\n",
    )
    .unwrap();
    let search = |extra: &[&str]| {
        let mut args = vec!["search", "--config", "s.toml", "--out", "so", "--no-progress"];
        args.extend(extra);
        s.run(&args)
    };
    ok(&search(&["--stop-after-generations", "1"]));
    let history = read(&s.path("so/history.jsonl"));
    s.write_corpus(11, &["alpha", "beta", "gamma", "delta", "sun", "moon", "star"]);
    let err = refused(&search(&["--resume"]), &["so/checkpoint.json", "corpus changed", "inputs.data"]);
    assert!(!err.contains("inputs.model"), "{err}");
    assert_eq!(read(&s.path("so/history.jsonl")), history, "nothing was added to the history");
    // Back to the original text: the resume is accepted and finishes.
    s.write_corpus(7, &["the", "river", "ran", "past", "old", "mill", "and", "a", "heron", "stood", "still"]);
    ok(&search(&["--resume"]));
    assert!(s.path("so/best.json").exists());
}

/// 4. Absurd values were accepted (`factor = 1e308` ran and reported a perplexity: the frequencies underflow
/// to 0 in f32) or refused without naming the file and the field; a head dimension of 1e11 aborted the
/// process; `run --check` accepted `target = 0`; duplicate lengths gave duplicate rows.
#[test]
fn absurd_values_are_refused_naming_the_file_and_the_field() {
    let s = Scratch::new();
    let cases = [
        ("pi", "factor = 1e308", "pi.factor"),
        ("yarn", "factor = 1e308", "yarn.factor"),
        ("ntk", "factor = 1e308", "ntk.factor"),
        ("llama3", "factor = 1e308", "llama3.factor"),
        ("longrope", "factors = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e308]", "longrope.factors[7]"),
        ("yarn", "beta_fast = 1e300", "yarn.beta_fast"),
    ];
    for (i, (method, field, named)) in cases.iter().enumerate() {
        let file = format!("bad{i}.toml");
        std::fs::write(s.path(&file), format!("method = \"{method}\"\n{field}\n")).unwrap();
        let o = s.run(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", "64", "--scaling", &file, "--out", "o"]);
        refused(&o, &[&file, named]);
        assert!(!stdout(&o).contains("ppl ="), "{method}: computed a perplexity from {field}");
    }
    // An allocation of 4e11 bytes aborted the process (SIGABRT).
    let o = s.run(&["rope", "--scaling", "pi", "--head-dim", "100000000000", "--base", "10000", "--original", "256", "--target", "512"]);
    refused(&o, &["head_dim", "100000000000"]);
    // The experiment file: target = 0 and duplicate lengths refused by --check, naming the file and the field.
    let exp = s.experiment("target = 0", "[64, 128]");
    refused(&s.run(&["run", exp.to_str().unwrap(), "--check"]), &["exp.toml", "target", "0 is outside"]);
    let exp = s.experiment("target = 512", "[64, 128, 64]");
    refused(&s.run(&["run", exp.to_str().unwrap(), "--check"]), &["exp.toml", "lengths", "64 appears more than once"]);
    refused(&s.run(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", "64,64", "--out", "o"]), &["--lengths", "64 appears more than once"]);
    // Counts that sized an allocation aborted the process.
    refused(&s.run(&["passkey", "--model", "model", "--lengths", "512", "--samples", "100000000000", "--out", "o"]), &["passkey.samples"]);
    refused(&s.run(&["generate", "--model", "model", "--prompt", "hi", "--max-new-tokens", "100000000000"]), &["--max-new-tokens"]);
    // A config.json with an absurd size names the file and the field instead of complaining about a tensor.
    std::fs::create_dir(s.path("hd")).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(s.path("model").join(f), s.path("hd").join(f)).unwrap();
    }
    std::fs::write(s.path("hd/config.json"), read(&s.path("model/config.json")).replace("\"head_dim\": 16", "\"head_dim\": 100000000000")).unwrap();
    refused(&s.run(&["model", "info", "hd"]), &["hd/config.json: head_dim"]);
}

/// 6. A full disk left `*.tmp` files beside the committed ones; now every failed write removes its temporary
/// file, finished cells stay cached, and a re-run with space completes from them.
#[test]
#[cfg(unix)]
fn full_disk_leaves_no_temporary_files_and_loses_no_cell() {
    let s = Scratch::new();
    let exp = s.experiment("target = 512", "[64, 128]");
    let exp = exp.to_str().unwrap();
    let o = s.run_disk_full(&["run", exp, "--out", "fx"]);
    refused(&o, &["File too large"]);
    assert_eq!(s.leftovers(), Vec::<PathBuf>::new(), "temporary files left after a failed write");
    let cells = std::fs::read_dir(s.path("fx/cells")).unwrap().count();
    assert_eq!(cells, 2, "both cells were cached before the results failed to write");
    let again = ok(&s.run(&["run", exp, "--out", "fx"]));
    assert_eq!(again.lines().filter(|l| l.ends_with("(cached)")).count(), 2, "{again}");
    assert!(s.path("fx/report.md").exists());
    // The same for ppl: the earlier results survive a full disk.
    ok(&s.run(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", "64", "--out", "r"]));
    let first = read(&s.path("r/results.csv"));
    s.run_disk_full(&["ppl", "--model", "model", "--data", "corpus.txt", "--lengths", "64,128,256,512", "--out", "r"]);
    assert_eq!(s.leftovers(), Vec::<PathBuf>::new());
    let kept: Vec<String> = std::fs::read_dir(s.path("r")).unwrap().flatten().map(|e| read(&e.path())).collect();
    assert!(kept.contains(&first), "the earlier results are gone");
}

/// 6. A search that failed before its first evaluation left a checkpoint that refused a plain re-run; a
/// checkpoint with no evaluation is now replaced (one with evaluations still needs `--resume`).
#[test]
fn search_failing_before_its_first_evaluation_can_be_rerun() {
    let s = Scratch::new();
    let config = |target: usize| {
        std::fs::write(
            s.path("s.toml"),
            format!(
                "target_length = {target}\n[model]\npath = \"model\"\n[fitness]\ndocuments = 1\ncorpus = [\"corpus.txt\"]\n\
                 [strategy]\nstrategy = \"random\"\nbudget = 2\n"
            ),
        )
        .unwrap();
    };
    config(100_000);
    refused(&s.run(&["search", "--config", "s.toml", "--out", "sf", "--no-progress"]), &["100000"]);
    config(512);
    ok(&s.run(&["search", "--config", "s.toml", "--out", "sf", "--no-progress"]));
    // With evaluations recorded, a fresh run is still refused.
    refused(&s.run(&["search", "--config", "s.toml", "--out", "sf", "--no-progress"]), &["--resume"]);
}

/// 6. `--data /dev/zero` read without bound (and a FIFO without a writer blocked forever); files that are not
/// regular are now refused at once. The FIFO is tried first so that a regression hangs (and is killed here)
/// instead of filling memory.
#[test]
#[cfg(target_os = "linux")]
fn non_regular_inputs_are_refused_at_once() {
    let s = Scratch::new();
    let fifo = s.path("fifo.txt");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let bounded = |data: &str| -> Output {
        let mut child = s
            .command(&["ppl", "--model", "model", "--data", data, "--lengths", "64", "--out", "o"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("--data {data}: still reading after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    refused(&bounded("fifo.txt"), &["fifo.txt", "not a regular file"]);
    refused(&bounded("/dev/zero"), &["/dev/zero", "not a regular file"]);
    refused(&s.run(&["run", "/dev/zero", "--check"]), &["/dev/zero", "not a regular file"]);
}

/// 7. Misleading messages: each now says what is wrong, naming the file, once.
#[test]
fn messages_say_what_is_wrong_once() {
    let s = Scratch::new();
    // A directory without weights (was: "missing tensor `model.safetensors (or its index)`").
    std::fs::create_dir(s.path("now")).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(s.path("model").join(f), s.path("now").join(f)).unwrap();
    }
    refused(&s.run(&["model", "info", "now"]), &["now: no weights: expected model.safetensors"]);
    // config.json without hidden_size / num_attention_heads (was: Llama-7B defaults, then a tensor shape error).
    for field in ["hidden_size", "num_attention_heads"] {
        let dir = format!("no-{field}");
        std::fs::create_dir(s.path(&dir)).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(s.path("model").join(f), s.path(&dir).join(f)).unwrap();
        }
        let config: String = read(&s.path("model/config.json")).lines().filter(|l| !l.contains(&format!("\"{field}\""))).collect::<Vec<_>>().join("\n");
        std::fs::write(s.path(&dir).join("config.json"), config).unwrap();
        let err = refused(&s.run(&["model", "info", &dir]), &[&format!("{dir}/config.json: {field}: missing")]);
        assert!(!err.contains("shape"), "{err}");
    }
    // A corrupt experiment.json (was: "another version of the experiment (`?`)").
    let exp = s.experiment("target = 512", "[64]");
    ok(&s.run(&["run", exp.to_str().unwrap(), "--out", "ex"]));
    std::fs::write(s.path("ex/experiment.json"), "{bad").unwrap();
    let err = refused(&s.run(&["run", exp.to_str().unwrap(), "--out", "ex"]), &["ex/experiment.json: does not parse", "--resume"]);
    assert!(!err.contains("`?`"), "{err}");
    let resumed = ok(&s.run(&["run", exp.to_str().unwrap(), "--out", "ex", "--resume"]));
    assert!(resumed.contains("(cached)"), "{resumed}");
    // A token store without index.json (was: "no .txt or .jsonl files in directory").
    ok(&s.run(&["tokenize", "--model", "model", "--input", "corpus.txt", "--out", "store"]));
    std::fs::remove_file(s.path("store/index.json")).unwrap();
    refused(&s.run(&["ppl", "--model", "model", "--data", "store", "--lengths", "64", "--out", "o"]), &["store: corrupt token store: tokens.bin without index.json"]);
    // An I/O error says its cause once (was: "...(os error 2): No such file or directory (os error 2)").
    let err = refused(&s.run(&["ppl", "--model", "model", "--data", "/nonexistent", "--lengths", "64", "--out", "o"]), &["/nonexistent: No such file or directory"]);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
