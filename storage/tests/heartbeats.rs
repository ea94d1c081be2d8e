//! A worker's heartbeat thread keeps its claimed trial alive past the study's grace period (by the database
//! clock, through its own connection); once it stops beating the trial is re-queued for another worker, and a
//! later beat for it is counted as lost.

use std::time::Duration;

use longrope_storage::{Claim, HeartbeatThread, NewTrial, OpenMode, StudyKind, StudySettings, StudySpec};
use serde_json::json;

#[test]
fn beats_keep_a_trial_and_silence_loses_it() {
    let dir = std::env::temp_dir().join(format!("longrope-storage-beats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("s.db").display());
    let mut a = longrope_storage::open(&url).unwrap();
    let mut b = longrope_storage::open(&url).unwrap();
    let spec = StudySpec {
        name: "beats".into(),
        kind: StudyKind::Search,
        config: json!({}),
        identity: json!(null),
        derived: json!(null),
        settings: StudySettings { grace_seconds: 1.0, max_attempts: 3 },
    };
    let st = a.open_study(&spec, OpenMode::Join).unwrap();
    a.insert_generation(st.id, 0, &json!({}), &[NewTrial { number: 0, generation: 0, key: "k".into(), payload: json!({}) }])
        .unwrap();
    let t = a.claim("a", Claim::Study(st.id)).unwrap().unwrap();
    let beats = HeartbeatThread::start(a.heartbeats().unwrap(), "a".into(), 0.2);
    beats.hold(std::slice::from_ref(&t));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(b.claim("b", Claim::Study(st.id)).unwrap().is_none(), "a beating worker keeps its trial past the grace period");
    beats.release();
    std::thread::sleep(Duration::from_millis(2000));
    let again = b.claim("b", Claim::Study(st.id)).unwrap().expect("re-queued after the beats stopped");
    assert_eq!((again.number, again.attempts), (0, 1));
    // The old holder beats for it again: the trial is no longer its.
    beats.hold(std::slice::from_ref(&t));
    std::thread::sleep(Duration::from_millis(800));
    assert!(beats.lost() >= 1);
    beats.stop();
    assert!(!a.complete(st.id, 0, "a", &json!({}), None, 0.0).unwrap());
    assert!(b.complete(st.id, 0, "b", &json!({}), None, 0.0).unwrap());
}
