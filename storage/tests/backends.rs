//! The storage contract, run against SQLite (`NAME::sqlite`) and PostgreSQL (`NAME::postgres`: ignored by a
//! plain `cargo test`; `make test` starts a server with `scripts/postgres.sh` and runs them, failing when the
//! server is missing): studies refuse other configs,
//! generations and checkpoints are stored once, concurrent claims never hand one trial to two workers, a trial
//! whose worker stops heart-beating is re-queued (and its late result dropped), a trial failing twice with the
//! same error fails for good.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use longrope_storage::{
    Claim, Failure, HeartbeatThread, Inserted, NewTrial, OpenMode, StudyKind, StudySettings, StudySpec, TrialState,
};
use serde_json::json;

/// A fresh SQLite database for `test`.
fn sqlite_url(test: &str) -> String {
    let dir = std::env::temp_dir().join(format!("longrope-storage-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite:{}", dir.join("s.db").display())
}

/// Each contract test `NAME(url)` becomes `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(&super::sqlite_url(stringify!($name)));
            }
            #[test]
            #[ignore = "needs PostgreSQL: run by `make test` (LONGROPE_TEST_POSTGRES, --include-ignored)"]
            fn postgres() {
                super::$name(&longrope_storage::testing::postgres_url());
            }
        }
    )*};
}

on_each_backend!(
    studies_refuse_another_config_kind_or_inputs,
    generations_and_checkpoints_are_stored_once,
    concurrent_claims_never_share_a_trial,
    a_silent_worker_loses_its_trial_and_a_repeated_error_fails_it,
    finished_studies_are_not_claimed_and_statuses_count_trials,
    heartbeats_keep_a_trial_and_silence_loses_it,
);

/// A study name unique to this process and test (PostgreSQL databases are shared by the test run).
fn name(test: &str) -> String {
    format!("{test}-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

fn spec(name: &str, config: serde_json::Value, grace: f64, attempts: u32) -> StudySpec {
    StudySpec {
        name: name.to_string(),
        kind: StudyKind::Search,
        config,
        identity: json!({"model": "sha256:abc"}),
        derived: json!({"seeds": []}),
        settings: StudySettings { grace_seconds: grace, max_attempts: attempts },
    }
}

fn trials(n: u64) -> Vec<NewTrial> {
    (0..n).map(|i| NewTrial { number: i, generation: 0, key: format!("k{i}"), payload: json!({"i": i}) }).collect()
}

fn studies_refuse_another_config_kind_or_inputs(url: &str) {
    let mut s = longrope_storage::open(&url).unwrap();
    let n = name("refuse");
    let a = s.open_study(&spec(&n, json!({"seed": 1, "strategy": {"population_size": 4}}), 60.0, 3), OpenMode::Join).unwrap();
    // Joining with the same spec finds the same study.
    let again = s.open_study(&spec(&n, json!({"seed": 1, "strategy": {"population_size": 4}}), 60.0, 3), OpenMode::Join).unwrap();
    assert_eq!(a.id, again.id);
    let e = s
        .open_study(&spec(&n, json!({"seed": 1, "strategy": {"population_size": 8}}), 60.0, 3), OpenMode::Join)
        .unwrap_err()
        .to_string();
    assert!(e.contains("different config") && e.contains("strategy.population_size"), "{url}: {e}");
    let mut other_inputs = spec(&n, json!({"seed": 1, "strategy": {"population_size": 4}}), 60.0, 3);
    other_inputs.identity = json!({"model": "sha256:def"});
    let e = s.open_study(&other_inputs, OpenMode::Join).unwrap_err().to_string();
    assert!(e.contains("other inputs") && e.contains("model"), "{url}: {e}");
    let mut exp = spec(&n, json!({}), 60.0, 3);
    exp.kind = StudyKind::Experiment;
    let e = s.open_study(&exp, OpenMode::Join).unwrap_err().to_string();
    assert!(e.contains("is a search study"), "{url}: {e}");
    let e = s.open_study(&spec(&name("missing"), json!({}), 60.0, 3), OpenMode::Resume).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{url}: {e}");
    let e = s.open_study(&spec(&n, json!({}), 60.0, 3), OpenMode::Create).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{url}: {e}");
}

fn generations_and_checkpoints_are_stored_once(url: &str) {
    let mut a = longrope_storage::open(&url).unwrap();
    let mut b = longrope_storage::open(&url).unwrap();
    let n = name("once");
    let sa = a.open_study(&spec(&n, json!({"x": 1}), 60.0, 3), OpenMode::Join).unwrap();
    let sb = b.open_study(&spec(&n, json!({"x": 1}), 60.0, 3), OpenMode::Join).unwrap();
    assert_eq!(sa.id, sb.id);
    let p = json!({"candidates": [1, 2, 3]});
    assert_eq!(a.insert_generation(sa.id, 0, &p, &trials(3)).unwrap(), Inserted::New { recovered: 0 });
    // The second process stores nothing and gets the stored proposal back.
    assert_eq!(b.insert_generation(sb.id, 0, &json!({"candidates": [9]}), &trials(1)).unwrap(), Inserted::Existing(p));
    assert_eq!(b.trials(sb.id, Some(0)).unwrap().len(), 3);
    assert_eq!(b.last_generation(sb.id).unwrap(), Some(0));
    assert!(a.save_checkpoint(sa.id, 1, &json!({"state": "a"})).unwrap());
    assert!(!b.save_checkpoint(sb.id, 1, &json!({"state": "b"})).unwrap());
    assert_eq!(b.checkpoint(sb.id, None).unwrap(), Some((1, json!({"state": "a"}))));
    assert_eq!(b.checkpoint(sb.id, Some(0)).unwrap(), None);
}

fn concurrent_claims_never_share_a_trial(url: &str) {
    let n = name("claims");
    let study = {
        let mut s = longrope_storage::open(&url).unwrap();
        let st = s.open_study(&spec(&n, json!({}), 60.0, 3), OpenMode::Join).unwrap();
        s.insert_generation(st.id, 0, &json!({}), &trials(60)).unwrap();
        st.id
    };
    let claimed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (url, claimed) = (url.to_string(), claimed.clone());
            std::thread::spawn(move || {
                let mut s = longrope_storage::open(&url).unwrap();
                let worker = format!("w{w}");
                while let Some(t) = s.claim(&worker, Claim::Study(study)).unwrap() {
                    assert!(s.complete(study, t.number, &worker, &json!({"by": worker}), Some(1.0), 0.0).unwrap());
                    claimed.lock().unwrap().push(t.number);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let claimed = claimed.lock().unwrap().clone();
    let unique: HashSet<u64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 60, "{url}: every trial claimed once");
    assert_eq!(unique.len(), 60, "{url}: no trial claimed twice");
    let mut s = longrope_storage::open(&url).unwrap();
    assert!(s.trials(study, None).unwrap().iter().all(|t| t.state == TrialState::Complete));
}

fn a_silent_worker_loses_its_trial_and_a_repeated_error_fails_it(url: &str) {
    let mut a = longrope_storage::open(&url).unwrap();
    let mut b = longrope_storage::open(&url).unwrap();
    let n = name("stale");
    let st = a.open_study(&spec(&n, json!({}), 2.0, 3), OpenMode::Join).unwrap();
    a.insert_generation(st.id, 0, &json!({}), &trials(2)).unwrap();
    let t = a.claim("dead", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!(t.number, 0);
    // While the heartbeat is fresh, nobody else gets it.
    let other = b.claim("alive", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!(other.number, 1);
    assert!(b.release(st.id, 1, "alive").unwrap());
    std::thread::sleep(std::time::Duration::from_millis(3000));
    // Trial 0 went stale: re-queued (attempt 1), and claimed before trial 1 (lowest number first).
    let again = b.claim("alive", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!((again.number, again.attempts), (0, 1), "{url}");
    assert!(again.error.as_deref().unwrap_or("").contains("stopped heart-beating"), "{url}: {:?}", again.error);
    // The silent worker's late result is dropped.
    assert!(!a.complete(st.id, 0, "dead", &json!({"late": true}), Some(1.0), 0.0).unwrap());
    assert_eq!(a.fail(st.id, 0, "dead", "late error").unwrap(), Failure::Lost);
    // A heartbeat through another connection keeps the trial.
    let mut hb = b.heartbeats().unwrap().expect("databases have heartbeats");
    assert!(hb.beat(st.id, 0, "alive").unwrap());
    assert!(!hb.beat(st.id, 0, "dead").unwrap());
    // The same error twice: failed for good.
    assert_eq!(b.fail(st.id, 0, "alive", "CUDA out of memory").unwrap(), Failure::Requeued);
    let t = b.claim("alive", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!(t.number, 0);
    assert_eq!(b.fail(st.id, 0, "alive", "CUDA out of memory").unwrap(), Failure::Final);
    let t0 = b.trials(st.id, None).unwrap().into_iter().find(|t| t.number == 0).unwrap();
    assert_eq!(t0.state, TrialState::Failed);
    assert_eq!(t0.error.as_deref(), Some("CUDA out of memory"));
    // Different errors: re-queued until the attempts are used up.
    let t = b.claim("alive", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!(t.number, 1);
    assert_eq!(b.fail(st.id, 1, "alive", "e1").unwrap(), Failure::Requeued);
    b.claim("alive", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!(b.fail(st.id, 1, "alive", "e2").unwrap(), Failure::Requeued);
    b.claim("alive", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!(b.fail(st.id, 1, "alive", "e3").unwrap(), Failure::Final);
    assert!(b.claim("alive", Claim::Study(st.id)).unwrap().is_none());
}

fn finished_studies_are_not_claimed_and_statuses_count_trials(url: &str) {
    let mut s = longrope_storage::open(&url).unwrap();
    let n = name("status");
    let st = s.open_study(&spec(&n, json!({}), 60.0, 3), OpenMode::Join).unwrap();
    s.insert_generation(st.id, 0, &json!({}), &trials(3)).unwrap();
    let t = s.claim("w", Claim::Study(st.id)).unwrap().unwrap();
    s.complete(st.id, t.number, "w", &json!({"fitness": 2.5}), Some(2.5), 0.1).unwrap();
    let t = s.claim("w", Claim::Study(st.id)).unwrap().unwrap();
    let stored = s.study(&n).unwrap().unwrap();
    let status = longrope_storage::status::status(s.as_mut(), &stored).unwrap();
    assert_eq!((status.waiting, status.running, status.complete, status.failed), (1, 1, 1, 0), "{url}");
    assert_eq!(status.running_trials[0].worker.as_deref(), Some("w"));
    assert_eq!(status.best, Some((0, 2.5)));
    assert_eq!(status.by_worker.get("w"), Some(&1));
    s.release(st.id, t.number, "w").unwrap();
    s.finish_study(st.id, None).unwrap();
    assert!(s.claim("w", Claim::Study(st.id)).unwrap().is_none());
    assert!(s.studies().unwrap().iter().any(|x| x.name == n && x.state == longrope_storage::StudyState::Finished));
}

#[test]
fn bad_urls_and_unreachable_servers_are_one_clear_error() {
    let e = longrope_storage::open("mysql://me:pw@h/db").err().unwrap().to_string();
    assert!(e.contains("unknown scheme `mysql`") && e.contains("sqlite:PATH") && !e.contains("pw@"), "{e}");
    let e = longrope_storage::open("sqlite:/nonexistent-dir-longrope/s.db").err().unwrap().to_string();
    assert!(e.contains("cannot connect") && e.contains("does not exist"), "{e}");
    // Port 1 on the loopback: nothing listens there, the connection is refused at once.
    let e = longrope_storage::open("postgres://longrope:secret@127.0.0.1:1/studies?connect_timeout=5").err().unwrap().to_string();
    assert!(e.contains("cannot connect to postgres://longrope:***@127.0.0.1:1/studies"), "{e}");
    assert!(!e.contains("secret"), "{e}");
}

#[test]
fn a_database_of_a_newer_schema_is_refused() {
    let dir = std::env::temp_dir().join(format!("longrope-storage-{}-schema", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("s.db");
    drop(longrope_storage::open(&format!("sqlite:{}", db.display())).unwrap());
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE longrope_schema SET version = 99", []).unwrap();
    drop(conn);
    let e = longrope_storage::open(&format!("sqlite:{}", db.display())).err().unwrap().to_string();
    assert!(e.contains("schema is version 99") && e.contains("upgrade"), "{e}");
    // A file that is not a database.
    let junk = dir.join("junk.db");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let e = longrope_storage::open(&format!("sqlite:{}", junk.display())).err().unwrap().to_string();
    assert!(e.contains("junk.db"), "{e}");
}

/// A worker's heartbeat thread keeps its claimed trial alive past the study's grace period (by the database
/// clock, through its own connection); once it stops beating the trial is re-queued for another worker, and a
/// later beat for it is counted as lost.
fn heartbeats_keep_a_trial_and_silence_loses_it(url: &str) {
    use std::time::Duration;
    let mut a = longrope_storage::open(url).unwrap();
    let mut b = longrope_storage::open(url).unwrap();
    let st = a.open_study(&spec(&name("beats"), json!({}), 1.0, 3), OpenMode::Join).unwrap();
    a.insert_generation(st.id, 0, &json!({}), &trials(1)).unwrap();
    let t = a.claim("a", Claim::Study(st.id)).unwrap().unwrap();
    let beats = HeartbeatThread::start(a.heartbeats().unwrap(), "a".into(), 0.2);
    beats.hold(std::slice::from_ref(&t));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(b.claim("b", Claim::Study(st.id)).unwrap().is_none(), "{url}: a beating worker keeps its trial past the grace period");
    beats.release();
    std::thread::sleep(Duration::from_millis(2000));
    let again = b.claim("b", Claim::Study(st.id)).unwrap().expect("re-queued after the beats stopped");
    assert_eq!((again.number, again.attempts), (0, 1), "{url}");
    // The old holder beats for it again: the trial is no longer its.
    beats.hold(std::slice::from_ref(&t));
    std::thread::sleep(Duration::from_millis(800));
    assert!(beats.lost() >= 1, "{url}");
    beats.stop();
    assert!(!a.complete(st.id, 0, "a", &json!({}), None, 0.0).unwrap(), "{url}");
    assert!(b.complete(st.id, 0, "b", &json!({}), None, 0.0).unwrap(), "{url}");
}
