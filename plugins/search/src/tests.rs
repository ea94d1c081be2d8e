//! Tests of the whole library: strategies driven end to end on the synthetic fitness (budgets,
//! deduplication, resume after a stop or a simulated kill, evolution vs. baselines), configs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use longrope_core::search::{Candidate, Scored};
use longrope_core::{RopeShape, SearchStrategy};

use crate::driver::{candidate_key, Driver, DriverOptions, Outcome, Summary};
use crate::error::{Result, SearchError};
use crate::fitness::{Evaluation, Fitness, ParallelFitness, SyntheticFitness};
use crate::outputs::Record;
use crate::seeds::Seed;
use crate::space::SpaceKind;
use crate::SearchFile;

fn smollm2() -> RopeShape {
    RopeShape {
        head_dim: 64,
        rope_base: 100_000.0,
        original_max_position_embeddings: 8192,
        max_position_embeddings: 16384,
        num_layers: 30,
    }
}

/// PI, NTK and YaRN factors by their published formulas (field survey Sec. 2): test stand-ins for the
/// scaling registry, which the library itself uses.
fn formula_seeds(shape: &RopeShape) -> Result<Vec<Seed>> {
    let d = shape.head_dim as f64;
    let h = shape.head_dim / 2;
    let s = shape.scale();
    let b = shape.rope_base;
    let l = shape.original_max_position_embeddings as f64;
    let pi = vec![s; h];
    let ntk = (0..h).map(|i| s.powf(2.0 * i as f64 / (d - 2.0))).collect();
    let dim = |rho: f64| d * (l / (2.0 * std::f64::consts::PI * rho)).ln() / (2.0 * b.ln());
    let lo = dim(32.0).floor().max(0.0);
    let hi = dim(1.0).ceil().min(d - 1.0);
    let yarn = (0..h)
        .map(|i| {
            let g = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
            1.0 / (g / s + (1.0 - g))
        })
        .collect();
    Ok(vec![
        Seed { name: "pi".into(), factors: pi, attn_factor: 1.0 },
        Seed { name: "ntk".into(), factors: ntk, attn_factor: 1.0 },
        Seed { name: "yarn".into(), factors: yarn, attn_factor: 0.1 * s.ln() + 1.0 },
    ])
}

fn file(strategy_toml: &str, space_toml: &str) -> SearchFile {
    let text = format!(
        "seed = 7\ntarget_length = 16384\n[shape]\nhead_dim = 64\nrope_base = 100000.0\n\
         original_max_position_embeddings = 8192\nnum_layers = 30\n[space]\n{space_toml}\n[strategy]\n{strategy_toml}\n"
    );
    SearchFile::parse(&text, "test config").unwrap()
}

const SMALL_EVOLUTION: &str = "strategy = \"evolution\"\npopulation_size = 8\niterations = 3\nmutation_numbers = 3\n\
                               crossover_size = 3\nparents_size = 4";

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longrope-search-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A fitness that records every candidate it evaluates and can fail after a number of evaluations
/// (a simulated kill).
struct Counting {
    inner: SyntheticFitness,
    log: Arc<Mutex<Vec<String>>>,
    fail_after: Option<usize>,
}

impl Fitness for Counting {
    fn evaluate(&mut self, batch: &[Candidate]) -> Result<Vec<Evaluation>> {
        let mut log = self.log.lock().unwrap();
        if let Some(n) = self.fail_after {
            if log.len() + batch.len() > n {
                return Err(SearchError::Fitness("simulated kill".into()));
            }
        }
        log.extend(batch.iter().map(candidate_key));
        drop(log);
        self.inner.evaluate(batch)
    }
}

fn counting(fail_after: Option<usize>) -> (Counting, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    (Counting { inner: SyntheticFitness::new(&smollm2()), log: log.clone(), fail_after }, log)
}

fn run(f: &SearchFile, fitness: &mut dyn Fitness, opts: DriverOptions) -> Result<Outcome> {
    let shape = f.shape().unwrap();
    let (strategy, _) = f.build(&shape, &formula_seeds)?;
    Driver::new(strategy, fitness, shape.clone(), f.meta(&shape), opts).run()
}

fn finished(o: Outcome) -> Summary {
    match o {
        Outcome::Finished(s) => s,
        other => panic!("not finished: {other:?}"),
    }
}

/// The history without wall times (which differ between runs).
fn trace(h: &[Record]) -> Vec<(usize, usize, String, f64)> {
    h.iter().map(|r| (r.index, r.generation, candidate_key(&r.candidate), r.fitness)).collect()
}

fn configs() -> Vec<(String, SearchFile)> {
    let mut out = Vec::new();
    for space in [
        "kind = \"dim_mono\"",
        "kind = \"dim_piece_mono\"",
        "mode = \"paper\"\nkind = \"dim_piece_mono\"",
        "search_n_hat = true\n[space.attention_factor]\nmax = 1.2",
    ] {
        for strategy in ["evolution", "random", "grid"] {
            let mut f = file(SMALL_EVOLUTION, space);
            f.switch_strategy(strategy).unwrap();
            out.push((format!("{strategy} / {}", space.replace('\n', " ")), f));
        }
    }
    out
}

#[test]
fn equal_budgets_and_no_candidate_evaluated_twice() {
    for (name, f) in configs() {
        assert_eq!(f.strategy.budget(), 8 + 3 * 6, "{name}");
        let (mut fit, log) = counting(None);
        let s = finished(run(&f, &mut fit, DriverOptions::new(tmp("budget"))).unwrap());
        let log = log.lock().unwrap();
        assert_eq!(s.history.len(), s.cost.evaluations, "{name}");
        assert_eq!(log.len(), s.cost.evaluations, "{name}: evaluations");
        assert_eq!(s.cost.evaluations + s.cost.duplicates_skipped, 26, "{name}");
        if name == "evolution / kind = \"dim_piece_mono\"" {
            // The reference tells individuals apart by alpha and beta too: it may propose the same factors again
            // (and spend an evaluation on them); the driver answers those from the history.
            assert!(s.cost.duplicates_skipped < 13, "{name}: {} duplicates", s.cost.duplicates_skipped);
        } else {
            assert_eq!(s.cost.duplicates_skipped, 0, "{name}");
        }
        assert_eq!(log.iter().collect::<HashSet<_>>().len(), log.len(), "{name}: a candidate was evaluated twice");
        assert_eq!(s.cost.tokens, s.cost.evaluations as u64 * 16384);
        assert!(s.history.iter().all(|r| r.candidate.factors.windows(2).all(|w| w[0] <= w[1])), "{name}");
    }
}

/// A strategy that proposes duplicates on purpose: the driver must evaluate each candidate once.
struct Repeats {
    left: usize,
}

impl SearchStrategy for Repeats {
    fn name(&self) -> &str {
        "repeats"
    }
    fn propose(&mut self) -> longrope_core::Result<Vec<Candidate>> {
        if self.left == 0 {
            return Ok(Vec::new());
        }
        let c = |x: f64| Candidate { factors: vec![x; 32], n_hat: 0, attn_factor: None };
        Ok(vec![c(1.0), c(2.0), c(1.0), c(1.5), c(2.0)])
    }
    fn observe(&mut self, scored: &[Scored]) -> longrope_core::Result<()> {
        assert_eq!(scored[0].fitness, scored[2].fitness);
        assert_eq!(scored[1].fitness, scored[4].fitness);
        self.left -= 1;
        Ok(())
    }
    fn budget(&self) -> usize {
        3
    }
    fn save_state(&self) -> longrope_core::Result<serde_json::Value> {
        Ok(serde_json::json!(self.left))
    }
}

#[test]
fn driver_deduplicates_within_and_across_batches() {
    let (mut fit, log) = counting(None);
    let out = tmp("dedup");
    let o = Driver::new(Box::new(Repeats { left: 2 }), &mut fit, smollm2(), serde_json::Value::Null, DriverOptions::new(&out))
        .run()
        .unwrap();
    let s = finished(o);
    assert_eq!(log.lock().unwrap().len(), 3);
    assert_eq!(s.history.len(), 3);
    assert_eq!(s.cost.duplicates_skipped, 2 + 5);
    // The history file holds the same records.
    let lines = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
}

#[test]
fn resume_after_a_stop_equals_an_uninterrupted_run() {
    for (name, f) in configs() {
        let (mut fit, _) = counting(None);
        let full = finished(run(&f, &mut fit, DriverOptions::new(tmp("full"))).unwrap());
        let generations = full.curve.len();
        assert!(generations >= 2, "{name}");
        for k in [0, 1, generations - 1] {
            let out = tmp(&format!("stop{k}"));
            let (mut fit, first_log) = counting(None);
            let o = run(&f, &mut fit, DriverOptions { stop_after_generations: Some(k), ..DriverOptions::new(&out) }).unwrap();
            assert_eq!(o, Outcome::Stopped { generation: k }, "{name}");
            let checkpointed: HashSet<String> = first_log.lock().unwrap().iter().cloned().collect();
            // Everything is dropped; a new strategy and fitness resume from the directory.
            let (mut fit, second_log) = counting(None);
            let resumed = finished(run(&f, &mut fit, DriverOptions { resume: true, ..DriverOptions::new(&out) }).unwrap());
            assert_eq!(trace(&resumed.history), trace(&full.history), "{name}, stopped after {k}");
            assert_eq!(resumed.best.candidate, full.best.candidate, "{name}");
            assert_eq!(resumed.cost.resumes, 1);
            assert_eq!(resumed.evaluated_now, second_log.lock().unwrap().len());
            assert_eq!(resumed.recovered, 0);
            let second = second_log.lock().unwrap();
            assert!(second.iter().all(|c| !checkpointed.contains(c)), "{name}: re-evaluated a checkpointed candidate");
            assert_eq!(checkpointed.len() + second.len(), full.cost.evaluations, "{name}");
            assert_eq!(
                std::fs::read_to_string(out.join("best_factors.csv")).unwrap(),
                crate::outputs::factors_csv(&full.best.candidate.factors)
            );
        }
    }
}

#[test]
fn resume_after_a_simulated_kill_mid_generation_reruns_nothing_recorded() {
    for (name, f) in configs() {
        let (mut fit, _) = counting(None);
        let full = finished(run(&f, &mut fit, DriverOptions::new(tmp("full-kill"))).unwrap());
        for kill_at in [0, 5, 12, full.cost.evaluations - 1] {
            let out = tmp(&format!("kill{kill_at}"));
            let (mut fit, first_log) = counting(Some(kill_at));
            let err = run(&f, &mut fit, DriverOptions::new(&out)).unwrap_err();
            assert!(err.to_string().contains("simulated kill"), "{err}");
            // A write torn by the kill.
            let mut journal = std::fs::OpenOptions::new().append(true).open(out.join("history.jsonl")).unwrap();
            std::io::Write::write_all(&mut journal, b"{\"index\": 99, \"genera").unwrap();
            let done: HashSet<String> = first_log.lock().unwrap().iter().cloned().collect();
            assert_eq!(done.len(), kill_at);
            let cp: crate::driver::Checkpoint =
                serde_json::from_slice(&std::fs::read(out.join("checkpoint.json")).unwrap()).unwrap();
            let checkpointed = cp.history.len();
            assert!(checkpointed <= kill_at);
            // Every journaled evaluation carries the search's wall time; stretch the tail's so that the time
            // the killed run spent after its checkpoint is visible in the resumed run's account.
            let text = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
            let mut lines: Vec<String> = Vec::new();
            for (i, line) in text.lines().enumerate() {
                match serde_json::from_str::<Record>(line) {
                    Ok(mut rec) => {
                        assert!(rec.wall_seconds.is_some_and(|w| w >= 0.0), "{line}");
                        if i >= checkpointed {
                            rec.wall_seconds = Some(1.0e6 + i as f64);
                        }
                        lines.push(serde_json::to_string(&rec).unwrap());
                    }
                    Err(_) => lines.push(line.to_string()),
                }
            }
            std::fs::write(out.join("history.jsonl"), lines.join("\n")).unwrap();
            let (mut fit, second_log) = counting(None);
            let resumed = finished(run(&f, &mut fit, DriverOptions { resume: true, ..DriverOptions::new(&out) }).unwrap());
            assert_eq!(trace(&resumed.history), trace(&full.history), "{name}, killed at {kill_at}");
            let second = second_log.lock().unwrap();
            assert!(second.iter().all(|c| !done.contains(c)), "{name}: re-evaluated a recorded candidate");
            assert_eq!(resumed.evaluated_now, second.len());
            // What the kill left beyond the checkpoint was recovered from history.jsonl, not re-run.
            assert_eq!(resumed.recovered, done.len() - checkpointed, "{name}, killed at {kill_at}");
            if kill_at > checkpointed {
                assert!(resumed.cost.wall_seconds >= 1.0e6 + (kill_at - 1) as f64, "{}", resumed.cost.wall_seconds);
            } else {
                assert!(resumed.cost.wall_seconds < 1.0e6, "{}", resumed.cost.wall_seconds);
            }
            assert_eq!(done.len() + second.len(), full.cost.evaluations, "{name}");
            let lines = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
            assert_eq!(lines.lines().count(), full.cost.evaluations);
            for line in lines.lines() {
                serde_json::from_str::<Record>(line).unwrap();
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_worker_count() {
    let f = file(SMALL_EVOLUTION, "kind = \"dim_mono\"");
    let (mut one, _) = counting(None);
    let a = finished(run(&f, &mut one, DriverOptions::new(tmp("w1"))).unwrap());
    let mut three = ParallelFitness::new(3, |_| Ok(SyntheticFitness::new(&smollm2()))).unwrap();
    let b = finished(run(&f, &mut three, DriverOptions::new(tmp("w3"))).unwrap());
    assert_eq!(trace(&a.history), trace(&b.history));
}

#[test]
fn checkpoints_protect_against_mixing_runs() {
    let f = file(SMALL_EVOLUTION, "kind = \"dim_mono\"");
    let out = tmp("mix");
    let (mut fit, _) = counting(None);
    run(&f, &mut fit, DriverOptions { stop_after_generations: Some(1), ..DriverOptions::new(&out) }).unwrap();
    let err = run(&f, &mut fit, DriverOptions::new(&out)).unwrap_err().to_string();
    assert!(err.contains("checkpoint.json") && err.contains("--resume"), "{err}");
    let mut other = file(SMALL_EVOLUTION, "kind = \"dim_mono\"");
    other.seed = 8;
    let err = run(&other, &mut fit, DriverOptions { resume: true, ..DriverOptions::new(&out) }).unwrap_err().to_string();
    assert!(err.contains("different search config"), "{err}");
    let err = run(&f, &mut fit, DriverOptions { resume: true, ..DriverOptions::new(tmp("none")) }).unwrap_err().to_string();
    assert!(err.contains("checkpoint.json") && err.contains("without --resume"), "{err}");
}

/// The reference's single seed by its formula (`evolution/search.py`: YaRN's ramp, betas 32/1, factors blended
/// linearly), a stand-in for the registry's `yarn{blend = "factor"}`.
fn reference_seed(shape: &RopeShape) -> Result<Vec<Seed>> {
    let d = shape.head_dim as f64;
    let s = shape.scale();
    let dim = |rho: f64| d * ((shape.original_max_position_embeddings as f64) / (2.0 * std::f64::consts::PI * rho)).ln() / (2.0 * shape.rope_base.ln());
    let (lo, hi) = (dim(32.0).floor().max(0.0), dim(1.0).ceil().min(d - 1.0));
    let factors = (0..shape.head_dim / 2).map(|i| 1.0 + (s - 1.0) * ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0)).collect();
    Ok(vec![Seed { name: "yarn-linear".into(), factors, attn_factor: 1.0 }])
}

/// The evolution against random and grid at the same budget on the synthetic fitness, `paper` mode (fixed
/// seeds; the numbers are printed for the report: `cargo test -p longrope-search evolution_vs -- --nocapture`).
#[test]
fn evolution_vs_random_and_grid_at_equal_budget() {
    let evo = "strategy = \"evolution\"\npopulation_size = 16\niterations = 10\nmutation_numbers = 4\n\
               crossover_size = 4\nparents_size = 8";
    for space in ["mode = \"paper\"\nkind = \"dim_mono\"", "mode = \"paper\"\nkind = \"dim_piece_mono\""] {
        let mut wins = 0;
        let seeds = 0..5u64;
        for seed in seeds.clone() {
            let mut best = Vec::new();
            for strategy in ["evolution", "random", "grid"] {
                let mut f = file(evo, space);
                f.seed = seed;
                f.switch_strategy(strategy).unwrap();
                assert_eq!(f.strategy.budget(), 96);
                let mut fit = SyntheticFitness::new(&smollm2());
                let s = finished(run(&f, &mut fit, DriverOptions::new(tmp("vs"))).unwrap());
                assert_eq!(s.history.len(), 96);
                best.push(s.best.fitness);
            }
            // The evolution improves on its best seed by at least 0.5% (the synthetic target is not a seed's curve and
            // lies inside the space, so the improvement is reachable; ending equal to the seed fails).
            let fit = SyntheticFitness::new(&smollm2());
            let space_cfg = file(evo, space);
            let built = space_cfg.build(&smollm2(), &formula_seeds).unwrap().1;
            let best_seed = built
                .seeds
                .iter()
                .map(|s| fit.value(&built.space.candidate(&built.space.genome_from_factors(&s.factors, None).unwrap())).unwrap())
                .fold(f64::INFINITY, f64::min);
            assert!(best[0] < 0.995 * best_seed, "{space} seed {seed}: evolution {} vs best seed {best_seed}", best[0]);
            println!(
                "{space} seed {seed}: best seed {best_seed:.4}  evolution {:.4}  random {:.4}  grid {:.4}",
                best[0], best[1], best[2]
            );
            wins += (best[0] < best[1]) as usize;
        }
        println!("{space}: evolution beat random in {wins} of 5 seeds");
        // Measured, not forced: in dim_mono the evolution beats random on every seed; in dim_piece_mono at
        // this small budget it does not (random's sorted draws already make ramps close to the target, the
        // evolution's boundaries move slowly from the seeds): reported in docs/search.md, not asserted.
        if space.ends_with("kind = \"dim_mono\"") {
            assert!(wins >= 4, "{space}: evolution beat random in only {wins} of 5 seeds");
        }
    }
}

/// `reference` mode (the reference's single YaRN seed, its operators, factors up to 1 + s) on the synthetic
/// fitness, 16 + 40 x 8 = 336 evaluations (`cargo test -p longrope-search reference_evolution -- --nocapture`):
/// in `dim_mono` the evolution improves on its seed by at least 5% for every RNG seed (measured 11-13%). In
/// `dim_piece_mono` it improves for most RNG seeds (measured 4 of 5, 1-9%): the reference's piece operators set
/// dimensions above `beta` to `s` wherever their coin fires, freeze the last two factors, and `beta` walks up
/// from 0 by `N(0, 2)` steps, so mutations of the seed are mostly PI-like and worse.
#[test]
fn reference_evolution_improves_on_its_seed() {
    let evo = "strategy = \"evolution\"\npopulation_size = 16\niterations = 40\nmutation_numbers = 4\n\
               crossover_size = 4\nparents_size = 8";
    for space in ["kind = \"dim_mono\"", "kind = \"dim_piece_mono\""] {
        let mut improved = 0;
        for seed in 0..5u64 {
            let mut f = file(evo, space);
            f.seed = seed;
            assert_eq!(f.space.mode, crate::SearchMode::Reference);
            let shape = f.shape().unwrap();
            let (strategy, ctx) = f.build(&shape, &reference_seed).unwrap();
            assert_eq!(ctx.space.max_factor, 3.0);
            let seed_fitness = SyntheticFitness::new(&shape)
                .value(&ctx.space.candidate(&ctx.space.genome_from_factors(&ctx.seeds[0].factors, None).unwrap()))
                .unwrap();
            let mut fit = SyntheticFitness::new(&shape);
            let out = tmp("reference-evo");
            let s = finished(Driver::new(strategy, &mut fit, shape.clone(), f.meta(&shape), DriverOptions::new(&out)).run().unwrap());
            std::fs::remove_dir_all(&out).ok();
            assert_eq!(s.history[0].fitness, seed_fitness, "the seed is evaluated first");
            println!("reference {space} seed {seed}: seed {seed_fitness:.4}  evolution {:.4}", s.best.fitness);
            if space.ends_with("\"dim_mono\"") {
                assert!(s.best.fitness < 0.95 * seed_fitness, "{space} seed {seed}: {} vs seed {seed_fitness}", s.best.fitness);
            }
            improved += usize::from(s.best.fitness < seed_fitness);
        }
        println!("reference {space}: improved on the seed for {improved} of 5 RNG seeds");
        assert!(improved >= 3, "{space}: the evolution improved on its seed for only {improved} of 5 RNG seeds");
    }
}

#[test]
fn shipped_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/search");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let f = SearchFile::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let shape = f.shape().expect("shipped configs carry a [shape]");
        crate::SearchSpace::new(&f.space, &shape).unwrap();
        n += 1;
        match path.file_name().and_then(|n| n.to_str()) {
            Some("smollm2-16k.toml") => {
                assert_eq!(f.strategy.budget(), 16);
                assert_eq!((shape.original_max_position_embeddings, shape.max_position_embeddings), (8192, 16384));
                assert_eq!(f.fitness.documents, 1);
                assert_eq!(f.space.mode, crate::SearchMode::Paper);
                assert!(f.model.as_ref().unwrap().path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
            }
            Some("smollm2-16k-8.toml") => {
                // The distributed measurement's search: smollm2-16k.toml with half the budget.
                assert_eq!(f.strategy.budget(), 8);
                assert_eq!((shape.original_max_position_embeddings, shape.max_position_embeddings), (8192, 16384));
                assert_eq!((f.seed, f.fitness.documents, f.space.mode), (0, 1, crate::SearchMode::Paper));
            }
            Some("racing-smollm2-1k.toml") => {
                // The racing measurement's search (docs/results/racing-smollm2.md): 5 documents, 256 -> 1024.
                assert_eq!(f.strategy.budget(), 44);
                assert_eq!((shape.original_max_position_embeddings, shape.max_position_embeddings), (256, 1024));
                assert_eq!((f.seed, f.fitness.documents, f.fitness.racing), (0, 5, crate::Racing::Off));
            }
            Some("longrope-paper.toml") => {
                assert_eq!(f.strategy.budget(), 1344);
                assert_eq!(f.space.step, 0.01);
                assert_eq!(f.space.mode, crate::SearchMode::Paper);
                assert_eq!(f.space.seed_specs(None), vec!["pi", "ntk", "yarn"]);
            }
            Some("longrope-reference.toml") => {
                assert_eq!(f.strategy.budget(), 1344);
                assert_eq!(f.space.mode, crate::SearchMode::Reference);
                assert_eq!(f.space.seed_specs(Some("llama")), vec!["yarn{blend = \"factor\"}"]);
                assert_eq!(f.fitness.dataset_min_tokens, Some(131072));
                assert_eq!(crate::SearchSpace::new(&f.space, &shape).unwrap().max_factor, 5.0);
            }
            _ => {}
        }
    }
    assert!(n >= 3);
}

#[test]
fn bad_search_files_are_refused_clearly() {
    let base = "target_length = 16384\n[strategy]\n";
    let err = SearchFile::parse(&format!("{base}strategy = \"nope\""), "x.toml").unwrap_err().to_string();
    assert!(err.contains("unknown search plugin `nope`") && err.contains("evolution, grid, random"), "{err}");
    let err = SearchFile::parse(&format!("{base}strategy = \"evolution\"\npopulaton_size = 3"), "x.toml").unwrap_err().to_string();
    assert!(err.starts_with("x.toml") && err.contains("populaton_size"), "{err}");
    let err = SearchFile::parse("target_lenght = 3\n[strategy]\nstrategy = \"random\"\nbudget = 3", "y.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("target_lenght"), "{err}");
    let err = SearchFile::parse("target_length = 3\n", "z.toml").unwrap_err().to_string();
    assert!(err.contains("[strategy]"), "{err}");
    let err = SearchFile::parse(&format!("{base}strategy = \"random\"\nbudget = 0"), "w.toml").unwrap_err().to_string();
    assert!(err.contains("budget"), "{err}");
    // Reference hyperparameter names are accepted as aliases.
    let f = SearchFile::parse(&format!("{base}strategy = \"evolution\"\nmax_time_budget = 2"), "a.toml").unwrap();
    assert_eq!(f.strategy.budget(), 64 + 2 * 32);
    let f = SearchFile::parse(&format!("{base}strategy = \"evolution\"\nevo_scale = 0.5"), "a.toml").unwrap();
    assert_eq!(f.strategy.budget(), 32 + 20 * 16);
    assert_eq!(f.space.kind, SpaceKind::DimMono);
}

#[test]
fn grid_points_are_distinct_and_spread() {
    let f = file("strategy = \"grid\"\nbudget = 16", "kind = \"dim_mono\"");
    let built = f.build(&smollm2(), &formula_seeds).unwrap().1;
    let pts = crate::grid::grid_points(&built.space, 16).unwrap();
    assert_eq!(pts.len(), 16);
    // The first lattice point is a = 0, b = 0, v = s: PI; a = d/2 is the original model (all 1).
    assert_eq!(built.space.candidate(&pts[0]).factors, vec![2.0; 32]);
    assert!(pts.iter().any(|g| built.space.candidate(g).factors == vec![1.0; 32]));
    // Some point ends above s (the v axis reaches max_factor = 2.5).
    assert!(pts.iter().any(|g| built.space.candidate(g).factors[31] == 2.5));
    let keys: std::collections::HashSet<_> = pts.iter().map(|g| g.key()).collect();
    assert_eq!(keys.len(), 16);
    // A tiny space: d/2 = 2, factors {1, 1.5, 2, 2.5}: the ramp family has few members.
    let tiny = RopeShape { head_dim: 4, ..smollm2() };
    let space = crate::SearchSpace::new(&crate::SpaceConfig { step: 0.5, ..Default::default() }, &tiny).unwrap();
    let all = crate::grid::grid_points(&space, 6).unwrap();
    assert_eq!(all.len(), 6);
    let err = crate::grid::grid_points(&space, 200).unwrap_err().to_string();
    assert!(err.contains("exhausted") && err.contains("fewer than the budget 200"), "{err}");
}

/// Run `f` into `out` with its seeds named (as the CLI and the experiment runner do).
fn run_named(f: &SearchFile, out: &Path) -> Summary {
    let shape = f.shape().unwrap();
    let (strategy, ctx) = f.build(&shape, &formula_seeds).unwrap();
    let seeds = ctx.seed_candidates().unwrap();
    assert_eq!(seeds.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["pi", "ntk", "yarn"]);
    let mut fit = SyntheticFitness::new(&shape);
    finished(Driver::new(strategy, &mut fit, shape.clone(), f.meta(&shape), DriverOptions::new(out)).with_seeds(seeds).run().unwrap())
}

#[test]
fn seeds_are_reported_and_search_dirs_compare() {
    use crate::compare::{best_seed, compare_markdown, SearchRun};

    // Evolution evaluates its seeds in generation 0: their fitness is the history's; the best is the history's
    // minimum, and it improves on every seed.
    let evo_dir = tmp("compare-evo");
    let evo = run_named(&file(SMALL_EVOLUTION, "kind = \"dim_mono\""), &evo_dir);
    assert_eq!(evo.seeds.len(), 3);
    assert_eq!(evo.best.fitness, evo.history.iter().map(|r| r.fitness).fold(f64::INFINITY, f64::min));
    for (k, s) in evo.seeds.iter().enumerate() {
        assert_eq!(s.index, Some(k), "seed {} is evaluated in generation 0, in order", s.name);
        assert_eq!(evo.history[k].candidate, s.candidate);
        assert_eq!(s.fitness, Some(evo.history[k].fitness));
        assert!(evo.best.fitness < s.fitness.unwrap(), "{} vs seed {:?}", evo.best.fitness, s);
    }
    // Random draws sorted uniform points: it names the same seeds but does not evaluate them.
    let mut f = file(SMALL_EVOLUTION, "kind = \"dim_mono\"");
    f.switch_strategy("random").unwrap();
    let rand_dir = tmp("compare-random");
    let rand = run_named(&f, &rand_dir);
    assert!(rand.seeds.iter().all(|s| s.fitness.is_none() && s.index.is_none()), "{:?}", rand.seeds);
    // Another target length: another fitness, flagged by the comparison.
    let mut f = file(SMALL_EVOLUTION, "kind = \"dim_mono\"");
    f.target_length = 32768;
    let other_dir = tmp("compare-other");
    run_named(&f, &other_dir);

    let runs: Vec<SearchRun> = [&evo_dir, &rand_dir, &other_dir].iter().map(|d| SearchRun::load(d).unwrap()).collect();
    assert!(SearchRun::is_search_dir(&evo_dir) && !SearchRun::is_search_dir(&evo_dir.join("history.jsonl")));
    assert_eq!(runs[0].strategy, "evolution");
    assert_eq!(runs[1].strategy, "random");
    assert_eq!(runs[0].history, evo.history);
    assert_eq!(runs[0].cost.evaluations, evo.cost.evaluations);
    assert_eq!(runs[0].seeds, evo.seeds);
    assert_eq!(runs[0].fitness_identity(), runs[1].fitness_identity());
    assert_ne!(runs[0].fitness_identity(), runs[2].fitness_identity());
    // The running best falls monotonically to the best fitness, one point per evaluation.
    let curve = runs[1].running_best();
    assert_eq!(curve.len(), rand.history.len());
    assert!(curve.windows(2).all(|w| w[1].1 <= w[0].1 && w[1].0 == w[0].0 + 1));
    assert_eq!(curve.last().unwrap().1, rand.best.fitness);
    // The best seed is the fittest evaluated seed of the comparable runs.
    let (name, f_seed) = best_seed(&runs).unwrap();
    let expect = evo.seeds.iter().map(|s| s.fitness.unwrap()).fold(f64::INFINITY, f64::min);
    assert_eq!(f_seed, expect);
    assert_eq!(evo.seeds.iter().find(|s| s.name == name).unwrap().fitness, Some(expect));

    let md = compare_markdown(&runs);
    let row = |dir: &Path| md.lines().find(|l| l.starts_with(&format!("| `{}`", dir.display()))).unwrap_or_else(|| panic!("{md}")).to_string();
    let evo_row = row(&evo_dir);
    assert!(evo_row.contains("| evolution | dim_mono | 7 |"), "{evo_row}");
    assert!(evo_row.contains(&format!("| {:.4} |", evo.best.fitness)), "{evo_row}");
    assert!(evo_row.contains(&format!("{:+.4}", evo.best.fitness - expect)), "{evo_row}");
    let rand_row = row(&rand_dir);
    assert!(rand_row.contains(&format!("{:+.4}", rand.best.fitness - expect)), "{rand_row}");
    assert!(rand_row.contains(&format!("| {} of {} |", rand.best.index + 1, rand.history.len())), "{rand_row}");
    let other_row = row(&other_dir);
    assert!(other_row.starts_with(&format!("| `{}` *", other_dir.display())), "{other_row}");
    assert!(md.contains("**Not comparable:**"), "{md}");
    assert!(md.contains(&format!("vs best seed ({name} {expect:.4})")), "{md}");
    for d in [evo_dir, rand_dir, other_dir] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn corrupt_search_dirs_are_named() {
    let dir = tmp("compare-corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("checkpoint.json"), b"{ not json").unwrap();
    let err = crate::compare::SearchRun::load(&dir).unwrap_err().to_string();
    assert!(err.contains("checkpoint.json") && err.contains("corrupt"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Three drivers in three threads, each with its own connection and fitness, share one study in an SQLite
/// database: every candidate is evaluated once, by one of them, and each ends with the history and best of
/// the one-process search with files (the study protocol of `study.rs`). A fourth driver joining the finished
/// study evaluates nothing and reads the same result; one with another seed is refused.
#[test]
fn drivers_sharing_a_database_study_equal_one_process() {
    let small = || file(SMALL_EVOLUTION, "kind = \"dim_mono\"");
    let f = small();
    let (mut fit, _) = counting(None);
    let full = finished(run(&f, &mut fit, DriverOptions::new(tmp("db-files"))).unwrap());
    let dir = tmp("db");
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("studies.db").display());
    let drive = |f: SearchFile, fit: &mut dyn Fitness, out: PathBuf| -> Result<Outcome> {
        let shape = f.shape().unwrap();
        let (strategy, ctx) = f.build(&shape, &formula_seeds)?;
        let target = crate::driver::StudyTarget {
            storage: longrope_storage::open(&url)?,
            name: "evo".into(),
            settings: longrope_storage::StudySettings::default(),
        };
        Driver::new(strategy, fit, shape.clone(), f.meta(&shape), DriverOptions::new(out))
            .with_storage(target, SearchFile::study_derived(&ctx))
            .run()
    };
    let summaries: Vec<(Summary, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (dir, drive) = (dir.clone(), &drive);
                s.spawn(move || {
                    let f = file(SMALL_EVOLUTION, "kind = \"dim_mono\"");
                    let (mut fit, log) = counting(None);
                    let summary = finished(drive(f, &mut fit, dir.join(format!("out{i}"))).unwrap());
                    let evaluated = log.lock().unwrap().clone();
                    (summary, evaluated)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<String> = Vec::new();
    for (summary, evaluated) in &summaries {
        assert_eq!(trace(&summary.history), trace(&full.history));
        assert_eq!(summary.best.candidate, full.best.candidate);
        assert_eq!(summary.evaluated_now, evaluated.len());
        all.extend(evaluated.iter().cloned());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), full.cost.evaluations, "every candidate evaluated once across the drivers");
    assert_eq!(unique.len(), all.len(), "no candidate evaluated twice");
    // Each driver exported the study in today's format.
    for i in 0..3 {
        let h = std::fs::read_to_string(dir.join(format!("out{i}/history.jsonl"))).unwrap();
        assert_eq!(h.lines().count(), full.cost.evaluations);
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("out{i}/best_factors.csv"))).unwrap(),
            crate::outputs::factors_csv(&full.best.candidate.factors)
        );
    }
    let (mut late, log) = counting(None);
    let again = finished(drive(small(), &mut late, dir.join("late")).unwrap());
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(trace(&again.history), trace(&full.history));
    let mut other = small();
    other.seed = 8;
    let err = drive(other, &mut late, dir.join("other")).unwrap_err().to_string();
    assert!(err.contains("different config") && err.contains("seed"), "{err}");
}

/// A candidate becomes its `longrope` config directly (`candidate_config`, what the fitness evaluates); the
/// config is the one `best_scaling.toml` (`candidate_to_toml`) parses back to: the same tables at every length,
/// so fitness values did not change when the TOML round trip was removed.
#[test]
fn a_candidate_is_the_config_its_toml_parses_to() {
    longrope_scaling::link();
    let shape = smollm2();
    for (n_hat, attn) in [(0, None), (4, Some(1.07))] {
        let c = Candidate { factors: (0..32).map(|i| 1.0 + i as f64 * 0.031).collect(), n_hat, attn_factor: attn };
        let direct = crate::outputs::candidate_config(&c, &shape);
        let text = crate::outputs::candidate_to_toml(&c, &shape);
        let parsed = longrope_core::scaling::parse_scaling_toml(&text, "best_scaling.toml").unwrap();
        let a = longrope_core::scaling::RopeSchedule::new(&direct, shape.clone()).unwrap();
        let b = longrope_core::scaling::RopeSchedule::new(parsed.as_ref(), shape.clone()).unwrap();
        for len in [16, 4096, 8192, 16384] {
            assert_eq!(a.tables(len).unwrap(), b.tables(len).unwrap(), "{text}");
        }
    }
}

/// Runs of the 5-document synthetic fitness with racing `racing`, all strategies' best and history.
fn raced_run(strategy: &str, seed: u64, racing: crate::Racing, out: &str) -> Summary {
    let evo = "strategy = \"evolution\"\npopulation_size = 16\niterations = 8\nmutation_numbers = 4\n\
               crossover_size = 4\nparents_size = 6";
    let mut f = file(evo, "mode = \"paper\"\nkind = \"dim_mono\"");
    f.seed = seed;
    f.switch_strategy(strategy).unwrap();
    let mut fit = SyntheticFitness::new(&smollm2()).with_documents(5, racing);
    let dir = tmp(out);
    let s = finished(run(&f, &mut fit, DriverOptions::new(&dir)).unwrap());
    std::fs::remove_dir_all(&dir).ok();
    s
}

/// Exact racing (bound: unscored documents' losses >= 0) stops some candidates and changes nothing else: every
/// candidate that finishes has the unraced fitness, the history proposes the same candidates in the same order
/// (the strategy selected the same parents), and the best is the same; each stopped candidate's recorded
/// fitness is a lower bound of its true fitness above the threshold it was stopped at.
#[test]
fn exact_racing_selects_what_the_unraced_search_selects() {
    use crate::Racing;
    let mut stopped = 0;
    for strategy in ["evolution", "random"] {
        for seed in 0..3u64 {
            let plain = raced_run(strategy, seed, Racing::Off, "race-off");
            let raced = raced_run(strategy, seed, Racing::Exact, "race-exact");
            assert_eq!(plain.history.len(), raced.history.len());
            assert_eq!(candidate_key(&plain.best.candidate), candidate_key(&raced.best.candidate), "{strategy} seed {seed}");
            assert_eq!(plain.best.fitness, raced.best.fitness);
            for (p, r) in plain.history.iter().zip(&raced.history) {
                assert_eq!((p.index, p.generation, candidate_key(&p.candidate)), (r.index, r.generation, candidate_key(&r.candidate)));
                match &r.raced {
                    None => {
                        assert_eq!(p.fitness, r.fitness, "{strategy} seed {seed} evaluation {}", r.index);
                        assert_eq!(r.items.len(), 5);
                    }
                    Some(x) => {
                        assert!(r.fitness > x.threshold && r.fitness <= p.fitness, "{r:?} vs unraced {}", p.fitness);
                        assert!(x.scored < 5 && r.items.len() == x.scored && r.tokens < p.tokens);
                    }
                }
            }
            assert_eq!(raced.cost.raced, raced.history.iter().filter(|r| r.raced.is_some()).count());
            assert!(raced.cost.tokens < plain.cost.tokens || raced.cost.raced == 0);
            stopped += raced.cost.raced;
        }
    }
    assert!(stopped > 0, "exact racing never stopped a candidate: the test would not see a wrong bound");
}

/// Observed racing (unscored documents floored at the best finished loss) stops more candidates than exact
/// racing and reads fewer documents; paired racing (floored at the threshold candidate's losses) fewer still
/// (printed with the best of each: `cargo test -p longrope-search observed_racing -- --nocapture`).
#[test]
fn observed_racing_reads_fewer_documents() {
    use crate::Racing;
    for seed in 0..3u64 {
        let plain = raced_run("evolution", seed, Racing::Off, "obs-off");
        let exact = raced_run("evolution", seed, Racing::Exact, "obs-exact");
        let observed = raced_run("evolution", seed, Racing::Observed, "obs-observed");
        let paired = raced_run("evolution", seed, Racing::Paired, "obs-paired");
        let docs = |s: &Summary| s.history.iter().map(|r| r.raced.as_ref().map_or(5, |x| x.scored)).sum::<usize>();
        println!(
            "seed {seed}: documents read off {} exact {} observed {} paired {}; best off {:.6} exact {:.6} observed {:.6} \
             paired {:.6}",
            docs(&plain),
            docs(&exact),
            docs(&observed),
            docs(&paired),
            plain.best.fitness,
            exact.best.fitness,
            observed.best.fitness,
            paired.best.fitness
        );
        assert!(observed.cost.raced >= exact.cost.raced && docs(&observed) < docs(&plain));
        assert!(docs(&paired) < docs(&observed), "paired floors are at least the observed ones");
        assert!(observed.history.iter().filter(|r| r.raced.is_none()).all(|r| r.items.len() == 5));
    }
}

/// The threshold is the `keep`-th best finished fitness; raced records never count; observed floors are the
/// lowest finished loss per document.
#[test]
fn race_threshold_and_floors_come_from_finished_trials() {
    use crate::{Race, Racing};
    use longrope_storage::{FileStorage, OpenMode, Storage, StudyKind, StudySettings, StudySpec};
    let dir = tmp("race-for");
    let mut storage = FileStorage::new(&dir);
    let spec = StudySpec {
        name: String::new(),
        kind: StudyKind::Search,
        config: serde_json::json!({"x": 1}),
        identity: serde_json::Value::Null,
        derived: serde_json::Value::Null,
        settings: StudySettings::default(),
    };
    let study = storage.open_study(&spec, OpenMode::Create).unwrap();
    let cand = |x: f64| Candidate { factors: vec![x; 4], n_hat: 0, attn_factor: None };
    let new: Vec<_> = (0..4)
        .map(|i| longrope_storage::NewTrial {
            number: i,
            generation: 0,
            key: candidate_key(&cand(i as f64 + 1.0)),
            payload: serde_json::to_value(cand(i as f64 + 1.0)).unwrap(),
        })
        .collect();
    storage.insert_generation(study.id, 0, &serde_json::json!({}), &new).unwrap();
    let records = [(20.0, vec![1.0, 2.0], None), (10.0, vec![3.0, 0.5], None), (15.0, vec![2.0, 2.5], None), (5.0, vec![0.1], Some(1))];
    for (i, (fitness, items, raced)) in records.into_iter().enumerate() {
        let t = storage.claim("w", longrope_storage::Claim::Study(study.id)).unwrap().unwrap();
        assert_eq!(t.number, i as u64);
        let rec = Record {
            index: i,
            generation: 0,
            candidate: cand(i as f64 + 1.0),
            fitness,
            tokens: 0,
            seconds: 0.0,
            wall_seconds: None,
            items,
            raced: raced.map(|scored| crate::Raced { scored, of: 2, threshold: 4.0 }),
        };
        storage.complete(study.id, t.number, "w", &serde_json::to_value(&rec).unwrap(), Some(fitness), 0.0).unwrap();
    }
    let mut race = |racing, keep| crate::study::race_for(&mut storage, study.id, racing, keep).unwrap();
    assert_eq!(race(Racing::Off, Some(2)), None);
    assert_eq!(race(Racing::Exact, None), None);
    assert_eq!(race(Racing::Exact, Some(2)), Some(Race { threshold: 15.0, floors: vec![] }));
    assert_eq!(race(Racing::Exact, Some(1)), Some(Race { threshold: 10.0, floors: vec![] }), "the raced 5.0 is no result");
    assert_eq!(race(Racing::Exact, Some(4)), Some(Race { threshold: f64::INFINITY, floors: vec![] }));
    assert_eq!(race(Racing::Observed, Some(3)), Some(Race { threshold: 20.0, floors: vec![1.0, 0.5] }));
    assert_eq!(race(Racing::Paired, Some(2)), Some(Race { threshold: 15.0, floors: vec![2.0, 2.5] }));
    std::fs::remove_dir_all(&dir).ok();
}
