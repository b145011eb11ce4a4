//! `berth bench` against a real berth on a btrfs pool: every workload runs, the JSON has
//! the documented shape, the numbers are sane (berth's allocations per call among them),
//! and the benchmark leaves nothing behind.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Berth, FsImage, Scratch, berth_cmd, hostpath_config, require_root};
use serde_json::Value;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}");
    x
}

#[tokio::test]
async fn bench_runs_every_workload_and_reports_json() {
    if !require_root("bench_runs_every_workload_and_reports_json") {
        return;
    }
    let scratch = Scratch::new();
    let Some(fs) = FsImage::new(&scratch, "bench_runs_every_workload_and_reports_json", "btrfs", "2G") else {
        return;
    };
    let state = scratch.path().join("state");
    let config = hostpath_config(&state, &fs.mount, "auto");
    let mut berth = Berth::start(scratch.path(), &config, "node-1", &["--metrics-address", "127.0.0.1:0"]).await;
    let endpoint = format!("unix://{}", berth.socket.display());
    let metrics = berth.metrics_address();
    let pid = berth.pid().expect("running").to_string();
    let work = scratch.path().join("work");
    let out = berth_cmd(&[
        "bench",
        "--endpoint",
        &endpoint,
        "--workload",
        "startup,provision,attach,snapshot,scrape,stats",
        "--metrics-address",
        &metrics,
        "--scrapes",
        "3",
        "--existing",
        "10",
        "--pairs",
        "20",
        "--concurrency",
        "4",
        "--cycles",
        "5",
        "--snapshot-size",
        "4Mi",
        "--files",
        "3000",
        "--capacity",
        "16Mi",
        "--pid",
        &pid,
        "--work-dir",
        work.to_str().expect("utf8"),
        "--output",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout).expect("JSON output");

    assert_eq!(report["driver"]["name"], "local.berth.csi.io");
    let results = report["results"].as_array().expect("results");
    let kinds: Vec<&str> = results.iter().filter_map(|r| r["workload"].as_str()).collect();
    assert_eq!(kinds, ["startup", "provision", "provision", "attach", "snapshot", "scrape", "stats"]);
    positive(&results[0]["ready_ms"], "startup ready_ms");
    for (r, conc) in results[1..3].iter().zip([1, 4]) {
        assert_eq!(r["concurrency"], conc);
        assert_eq!(r["existing"], 10);
        for call in ["create", "delete"] {
            let s = &r["ops"][call];
            assert_eq!(s["count"], 20, "{call}");
            let p50 = positive(&s["p50_ms"], "p50");
            let p99 = positive(&s["p99_ms"], "p99");
            assert!(p50 <= p99 && p99 <= positive(&s["max_ms"], "max") && p99 < 10_000.0, "{s}");
            positive(&s["ops_per_s"], "ops/s");
        }
        let allocations = &r["allocations"];
        assert_eq!(allocations["calls"], 40, "{allocations}");
        positive(&allocations["per_call"], "allocations per call");
    }
    // The sequential row also tells creates and deletes apart.
    positive(&results[1]["allocations"]["by_call"]["create"], "allocations per create");
    positive(&results[1]["allocations"]["by_call"]["delete"], "allocations per delete");
    positive(&results[3]["allocations"]["by_call"]["cycle"], "allocations per attach cycle");
    positive(&results[4]["allocations"]["by_call"]["snapshot"], "allocations per snapshot");
    positive(&results[4]["allocations"]["by_call"]["restore"], "allocations per restore");
    assert_eq!(results[5]["ops"]["GET /metrics"]["count"], 3);
    positive(&results[5]["allocations"]["per_call"], "allocations per scrape");
    for step in ["stage", "publish", "unpublish", "unstage", "cycle"] {
        assert_eq!(results[3]["ops"][step]["count"], 5, "{step}");
    }
    assert_eq!(results[4]["bytes"], 4 << 20);
    positive(&results[4]["snapshot_ms"], "snapshot_ms");
    positive(&results[4]["restore_ms"], "restore_ms");
    let stats = &results[6];
    assert_eq!(stats["files"], 3000);
    for (call, count) in [("first", 1), ("later", 5), ("du -s", 3)] {
        assert_eq!(stats["ops"][call]["count"], count, "{call}: {stats}");
        positive(&stats["ops"][call]["p50_ms"], call);
    }
    // 3,000 files of 100 bytes: btrfs keeps them inline in its metadata, which the
    // volume's quota group counts; du counts a block per file.
    positive(&stats["used_bytes"], "used bytes");
    positive(&stats["du_bytes"], "du bytes");
    let f = &report["footprint"];
    let idle = positive(&f["idle_rss_kib"], "idle RSS");
    assert!(positive(&f["load_max_rss_kib"], "load RSS") >= idle && f["hwm_kib"].as_f64() >= Some(idle), "{f}");

    // Everything the benchmark created is gone.
    let listed = berth_cmd(&["csi", "--endpoint", &endpoint, "--output", "json", "controller", "list-volumes"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    assert_eq!(listed["entries"].as_array().map(Vec::len), Some(0), "{listed}");
    assert_eq!(std::fs::read_dir(&work).expect("work dir").count(), 0);
    berth.stop();
}
