//! The run store and the commit protocol against a real S3-compatible server
//! (moto, on loopback), beside memory:// and file://: one conformance suite
//! for every backend, SIGKILL resume, racing workers, credential hygiene.

use bytes::Bytes;
use crate::support::*;
use wc_store::{CommitOutcome, CommittedSet, ManifestState, PendingCommit, RunStore, StoreError};

/// What every backend must do; run on memory://, file:// and s3://.
fn conformance(store: &RunStore) {
    // put / get / list / delete
    store.put("a/b/one.bin", Bytes::from_static(b"one")).unwrap();
    store.put("a/two.bin", Bytes::from_static(b"two")).unwrap();
    assert_eq!(&store.get("a/b/one.bin").unwrap()[..], b"one");
    assert_eq!(store.list("a").unwrap(), vec!["a/b/one.bin", "a/two.bin"]);
    assert!(matches!(store.get("a/missing"), Err(StoreError::NotFound { .. })));
    assert!(store.get_opt("a/missing").unwrap().is_none());
    store.delete("a/two.bin").unwrap();
    assert_eq!(store.list("a").unwrap(), vec!["a/b/one.bin"]);
    // create-only put
    assert!(store.put_if_absent("c/x", Bytes::from_static(b"1")).unwrap());
    assert!(!store.put_if_absent("c/x", Bytes::from_static(b"2")).unwrap());
    assert_eq!(&store.get("c/x").unwrap()[..], b"1");
    // commit lifecycle, a race decided by the store, verified reads
    let mut a = PendingCommit::begin(store, "s/shard-0", "prefix", Some(0), None, "fp");
    let mut b = PendingCommit::begin(store, "s/shard-0", "prefix", Some(0), None, "fp");
    assert_eq!(a.check(false).unwrap(), ManifestState::Absent);
    assert_eq!(b.check(false).unwrap(), ManifestState::Absent);
    b.write("s/shard-0/data.bin", Bytes::from_static(b"payload")).unwrap();
    let mut a = a;
    a.write("s/shard-0/data.bin", Bytes::from_static(b"payload")).unwrap();
    assert!(matches!(a.commit().unwrap(), CommitOutcome::Committed { .. }));
    assert!(matches!(b.commit().unwrap(), CommitOutcome::LostRace { .. }));
    let set = CommittedSet::open(store, "s/shard-0/_manifest.json").unwrap();
    assert_eq!(&set.read("s/shard-0/data.bin").unwrap()[..], b"payload");
    store.put("s/shard-0/data.bin", Bytes::from_static(b"PAYLOAD")).unwrap();
    assert!(matches!(set.read("s/shard-0/data.bin"), Err(StoreError::ChecksumMismatch { .. })));
    let mut other = PendingCommit::begin(store, "s/shard-0", "prefix", Some(0), None, "other");
    assert!(matches!(other.check(false), Err(StoreError::FingerprintMismatch { .. })));
}

#[test]
fn conformance_memory() {
    conformance(&RunStore::open("memory://conformance/run").unwrap());
}

#[test]
fn conformance_file() {
    let tmp = tempfile::tempdir().unwrap();
    conformance(&RunStore::open(&format!("file://{}/run", tmp.path().display())).unwrap());
}

/// All S3 scenarios share one server (each under its own prefix) so the
/// process environment is set once.
#[test]
fn s3_backend_scenarios() {
    let moto = MotoServer::start();
    moto.create_bucket("wc-runs");
    moto.set_env();
    let env = moto.env();

    // 1. the conformance suite
    conformance(&RunStore::open("s3://wc-runs/conformance").unwrap());

    // 2. concurrent create-only puts from many threads: exactly one wins
    let store = RunStore::open("s3://wc-runs/race-threads").unwrap();
    let winners: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                s.spawn(move || store.put_if_absent("m/_manifest.json", Bytes::from(format!("{i}"))).unwrap() as usize)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(winners, 1);

    // 3. two worker processes racing on one shard: one commit, both exit 0
    for round in 0..3 {
        let run = format!("s3://wc-runs/race-procs-{round}");
        wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &env);
        let children: Vec<_> = (0..2)
            .map(|_| spawn(&["stage", "prefix", "--run", &run, "--iter", "0", "--shard", "0/2"], &env))
            .collect();
        let outs: Vec<String> = children
            .into_iter()
            .map(|c| {
                let o = c.wait_with_output().unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                String::from_utf8(o.stdout).unwrap()
            })
            .collect();
        let committed = outs.iter().filter(|o| o.contains(": committed")).count();
        let other = outs.iter().filter(|o| o.contains("lost the race") || o.contains("already committed")).count();
        assert_eq!((committed, other), (1, 1), "{outs:?}");
    }

    // 4. SIGKILL at random points while writing to S3, then resume
    let tmp = tempfile::tempdir().unwrap();
    let heavy = heavy_pipeline(tmp.path());
    kill_stage_and_resume(&|i| format!("s3://wc-runs/kill-{i}"), &env, &heavy, 6, 23);

    // 5. credentials never appear in errors or logs
    let mut logged = env.clone();
    logged.push(("WORLDCOMPASS_LOG", "trace".to_string()));
    let outputs = [
        wc(&["status", "--run", "s3://no-such-bucket/run"], &logged),
        wc(&["init", "--run", "s3://no-such-bucket/run", "--pipeline", &pipeline()], &logged),
        wc(&["train", "--run", "s3://wc-runs/creds", "--pipeline", &pipeline(), "--iters", "1"], &logged),
    ];
    assert!(!outputs[0].status.success() && !outputs[1].status.success() && outputs[2].status.success());
    let init_err = String::from_utf8_lossy(&outputs[1].stderr).to_string();
    assert!(init_err.contains("no-such-bucket"), "the error should name the bucket: {init_err}");
    for o in &outputs {
        for text in [String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)] {
            assert!(!text.contains(SECRET_KEY), "secret key leaked: {text}");
            assert!(!text.contains(ACCESS_KEY), "access key id leaked: {text}");
        }
    }
}

/// The fault-injection test of issue 28: one iteration on S3 through a
/// loopback proxy that fails a share of the requests (503s, and responses
/// cut after the server acted, create-only manifest puts included) commits
/// the same checkpoint as the same iteration on file://. CI runs it at 10%;
/// `WC_FAULT_SHARE=0.3` runs it at 30%.
#[test]
fn an_iteration_through_a_faulty_network_commits_the_same_checkpoint_as_file() {
    let share: f64 = std::env::var("WC_FAULT_SHARE").ok().and_then(|s| s.parse().ok()).unwrap_or(0.10);
    let moto = MotoServer::start();
    moto.create_bucket("wc-faults");
    let seed: u64 = std::env::var("WC_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(28);
    let proxy = crate::support::fault_proxy::FaultProxy::start(moto.port, share, seed);
    let env: Vec<(&str, String)> = moto.env().into_iter().map(|(k, v)| if k == "AWS_ENDPOINT_URL" { (k, proxy.endpoint.clone()) } else { (k, v) }).collect();
    let tmp = tempfile::tempdir().unwrap();
    let local = format!("file://{}/run", tmp.path().display());
    wc_ok(&["train", "--run", &local, "--pipeline", &pipeline(), "--iters", "1"], &[]);
    wc_ok(&["train", "--run", "s3://wc-faults/run", "--pipeline", &pipeline(), "--iters", "1"], &env);
    let (forwarded, failed_503, cut, cut_create_only) = proxy.counts.snapshot();
    eprintln!("fault proxy at {share}: {forwarded} forwarded, {failed_503} answered 503, {cut} cut after the server acted ({cut_create_only} of them create-only puts)");
    assert!(failed_503 > 0 && cut > 0 && cut_create_only > 0, "no fault was injected ({forwarded} requests)");
    // Compared through the server directly, not through the proxy.
    moto.set_env();
    let (s3, file) = (RunStore::open("s3://wc-faults/run").unwrap(), RunStore::open(&local).unwrap());
    for name in ["policy", "old_policy", "optimizer"] {
        let path = format!("checkpoints/000001/{name}.safetensors");
        assert_eq!(s3.get(&path).unwrap(), file.get(&path).unwrap(), "{path}");
    }
    let status = wc_ok(&["status", "--run", "s3://wc-faults/run"], &moto.env());
    let stage_lines: Vec<&str> = status.lines().filter(|l| l.trim_start().starts_with("0 ")).collect();
    assert!(stage_lines.len() == 5 && stage_lines.iter().all(|l| l.contains(" committed")), "{status}");
}
