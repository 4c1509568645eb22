//! The GPU scale study's script (`pipelines/gpu/scale-study.sh`, issue 27)
//! run end to end on the CPU at its tiny size: the device call only changes
//! sizes, so every step it takes on the GPU has run here first.

use crate::support::*;

#[test]
fn the_scale_study_runs_end_to_end_at_tiny_size() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/gpu/scale-study.sh");
    let run = std::process::Command::new(script)
        .arg(BIN)
        .env("WC_STUDY_SIZE", "tiny")
        .env("WC_STUDY_DEVICE", "cpu")
        .env("WC_STUDY_WORK", tmp.path().join("work"))
        .env("OUT", &out)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{log}");
    let summary = std::fs::read_to_string(out.join("summary.tsv")).unwrap();
    let value = |key: &str| summary.lines().find_map(|l| l.strip_prefix(&format!("{key}\t"))).unwrap_or_else(|| panic!("no {key} in {summary}")).to_string();
    assert_eq!(value("pretrain_steps"), "6");
    assert_eq!(value("iterations_configured"), "2");
    assert_eq!(value("iterations_evaluated"), "2", "{log}");
    assert_eq!(value("rollout_dtype"), "f32");
    // Table 1 of base and the two seeds, on 2 then 4 sequences per kind, read by Polars.
    let check = r#"
import sys, polars as pl
for n in (2, 4):
    t = pl.read_parquet(f"{sys.argv[1]}/eval-{n}.parquet")
    assert t.height == 3 * 3 * 2, t
    assert (t["sequences"] == n).all(), t
    assert t["model"].n_unique() == 3 and t["model"].str.ends_with("@2").sum() == 12, t["model"].unique()
"#;
    let py = std::process::Command::new("python3").args(["-c", check]).arg(&out).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    // The reward logs of both seeds and the base's pre-training metrics come back.
    let tar = std::process::Command::new("tar").args(["-tzf"]).arg(out.join("study.tar.gz")).output().unwrap();
    let listing = String::from_utf8_lossy(&tar.stdout);
    for seed in ["20261201", "20261202"] {
        for iter in ["000000", "000001"] {
            assert!(listing.contains(&format!("runs/seed-{seed}/reward_log/iter-{iter}.parquet")), "{listing}");
        }
    }
    assert!(listing.contains("base/pretrain/step-0000006/metrics.parquet"), "{listing}");
    assert!(!listing.contains(".safetensors"), "no weights come back: {listing}");
    assert!(log.contains("scale-study: done"), "{log}");
}
