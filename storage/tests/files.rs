//! `FileStorage`, today's directories: a search directory resumes from its checkpoint, salvages the journal's
//! evaluations beyond it (a kill mid-generation) and refuses another config or a fresh start over evaluations;
//! an experiment directory's cell files are the cell cache.

use longrope_storage::{Claim, FileStorage, Inserted, NewTrial, OpenMode, Storage, StudyKind, StudySettings, StudySpec, TrialState};
use serde_json::json;

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("longrope-storage-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn search(config: serde_json::Value) -> StudySpec {
    StudySpec {
        name: String::new(),
        kind: StudyKind::Search,
        config,
        identity: json!({"model": "sha256:abc"}),
        derived: serde_json::Value::Null,
        settings: StudySettings::default(),
    }
}

fn trials() -> Vec<NewTrial> {
    (0..3).map(|i| NewTrial { number: i, generation: 0, key: format!("k{i}"), payload: json!({"factors": [i]}) }).collect()
}

#[test]
fn a_search_directory_resumes_and_salvages_its_journal() {
    let dir = tmp("search");
    let state = json!({"version": 1, "strategy": "evolution", "generation": 0, "strategy_state": {}, "curve": [], "cost": {}});
    {
        let mut s = FileStorage::new(&dir);
        let st = s.open_study(&search(json!({"seed": 1})), OpenMode::Create).unwrap();
        assert!(s.save_checkpoint(st.id, 0, &state).unwrap());
        assert_eq!(s.insert_generation(st.id, 0, &json!({}), &trials()).unwrap(), Inserted::New { recovered: 0 });
        for _ in 0..2 {
            let t = s.claim("w", Claim::Study(st.id)).unwrap().unwrap();
            let rec = json!({"index": t.number, "generation": 0, "candidate": t.payload, "fitness": 1.5, "tokens": 1, "seconds": 0.1});
            assert!(s.complete(st.id, t.number, "w", &rec, Some(1.5), 0.1).unwrap());
        }
        // Killed here: two evaluations journaled beyond checkpoint 0.
    }
    let cp: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(cp["meta"], json!({"seed": 1, "inputs": {"model": "sha256:abc"}}));
    assert_eq!(cp["history"], json!([]));
    assert_eq!(std::fs::read_to_string(dir.join("history.jsonl")).unwrap().lines().count(), 2);

    let e = FileStorage::new(&dir).open_study(&search(json!({"seed": 1})), OpenMode::Create).unwrap_err().to_string();
    assert!(e.contains("checkpoint.json") && e.contains("--resume"), "{e}");
    let e = FileStorage::new(&dir).open_study(&search(json!({"seed": 2})), OpenMode::Resume).unwrap_err().to_string();
    assert!(e.contains("different search config") && e.contains("seed"), "{e}");
    let mut other = search(json!({"seed": 1}));
    other.identity = json!({"model": "sha256:def"});
    let e = FileStorage::new(&dir).open_study(&other, OpenMode::Resume).unwrap_err().to_string();
    assert!(e.contains("the model or the corpus changed"), "{e}");

    let mut s = FileStorage::new(&dir);
    let st = s.open_study(&search(json!({"seed": 1})), OpenMode::Resume).unwrap();
    assert_eq!(s.checkpoint(st.id, None).unwrap().map(|(g, _)| g), Some(0));
    // The same generation, proposed again from the checkpoint: the journaled trials come back complete.
    assert_eq!(s.insert_generation(st.id, 0, &json!({}), &trials()).unwrap(), Inserted::New { recovered: 2 });
    let states: Vec<TrialState> = s.trials(st.id, None).unwrap().iter().map(|t| t.state).collect();
    assert_eq!(states, [TrialState::Complete, TrialState::Complete, TrialState::Waiting]);
    let t = s.claim("w", Claim::Study(st.id)).unwrap().unwrap();
    assert_eq!(t.number, 2);
    assert!(s.heartbeats().unwrap().is_none(), "files: one process, no heartbeats");
}

#[test]
fn experiment_cell_files_are_the_cell_cache() {
    let dir = tmp("experiment");
    let spec = StudySpec { kind: StudyKind::Experiment, ..search(json!({"name": "e", "config_hash": "h"})) };
    let mut s = FileStorage::new(&dir);
    let st = s.open_study(&spec, OpenMode::Join).unwrap();
    std::fs::write(dir.join("cells/a.json"), json!({"score": {"value": 3.0}}).to_string()).unwrap();
    std::fs::write(dir.join("cells/b.json"), json!({"not": "a cell"}).to_string()).unwrap();
    assert_eq!(s.add_trials(st.id, &[("a".into(), json!({})), ("b".into(), json!({})), ("c".into(), json!({}))]).unwrap(), 3);
    let t = s.trials(st.id, None).unwrap();
    assert_eq!((t[0].state, t[0].value), (TrialState::Complete, Some(3.0)));
    assert_eq!(t[1].state, TrialState::Waiting, "a file that is not a cell result is computed again");
    assert_eq!(t[2].state, TrialState::Waiting);
    let c = s.claim("w", Claim::Study(st.id)).unwrap().unwrap();
    assert!(s.complete(st.id, c.number, "w", &json!({"score": {"value": 4.0}}), Some(4.0), 0.0).unwrap());
    assert!(dir.join(format!("cells/{}.json", c.key)).exists());
    // Another version of the experiment is refused, unless adopted (`--resume`).
    let other = StudySpec { kind: StudyKind::Experiment, ..search(json!({"name": "e", "config_hash": "h2"})) };
    let e = FileStorage::new(&dir).open_study(&other, OpenMode::Join).unwrap_err().to_string();
    assert!(e.contains("another version of the experiment") && e.contains("--resume"), "{e}");
    FileStorage::new(&dir).open_study(&other, OpenMode::Adopt).unwrap();
}
