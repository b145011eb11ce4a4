//! Bounds: with 10,000 volumes and 10,000 snapshots recorded, berth starts quickly, every
//! ListVolumes/ListSnapshots page stays far below gRPC's 4 MiB, memory stays bounded under
//! 1,000 concurrent calls, and oversized requests are refused before any work starts.

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::fs;
use std::time::Instant;

use berth::csi::pb;
use berth::state::{Phase, SnapshotRecord, VolumeRecord};
use common::*;
use prost::Message;

const COUNT: usize = 10_000;
const FOUR_MIB: usize = 4 << 20;

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn ten_thousand_volumes_keep_pages_small_memory_bounded_and_startup_fast() {
    let test = "ten_thousand_volumes_keep_pages_small_memory_bounded_and_startup_fast";
    if !require_root(test) {
        return;
    }
    let scratch = Scratch::new();
    let (state, pool) = (scratch.path().join("state"), scratch.path().join("pool"));
    let (vdir, sdir) = (state.join("state/volumes"), state.join("state/snapshots"));
    for d in [&vdir, &sdir, &pool.join("volumes"), &pool.join("snapshots")] {
        fs::create_dir_all(d).expect("mkdir");
    }
    // Records as berth writes them, with realistic names and parameters.
    for i in 0..COUNT {
        let key = format!("{i:032x}");
        let id = format!("vol:default:{key}");
        let name = format!("pvc-{i:08}-0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        let volume = VolumeRecord {
            phase: Phase::Ready,
            parameters: [
                ("csi.storage.k8s.io/pvc/name".to_string(), format!("data-postgres-{i}")),
                ("csi.storage.k8s.io/pvc/namespace".to_string(), "databases".to_string()),
                ("csi.storage.k8s.io/pv/name".to_string(), name.clone()),
            ]
            .into(),
            created_unix_ms: 1,
            ..VolumeRecord::intent(id.clone(), key.clone(), name, "default", "node-a".into(), 1 << 30)
        };
        fs::write(vdir.join(format!("{i}.json")), serde_json::to_vec(&volume).expect("json")).expect("write");
        fs::create_dir(pool.join("volumes").join(&key)).expect("mkdir");
        let snapshot = SnapshotRecord {
            id: format!("snap:default:{key}"),
            name: format!("snapshot-{i:08}-0a1b2c3d-4e5f-6789-abcd-ef0123456789"),
            pool: "default".into(),
            key: key.clone(),
            node: "node-a".into(),
            source_volume: id,
            phase: Phase::Ready,
            size: 1 << 20,
            method: None,
            encryption: None,
            group: None,
            copy: None,
            created_unix_ms: 1,
        };
        fs::write(sdir.join(format!("{i}.json")), serde_json::to_vec(&snapshot).expect("json")).expect("write");
        fs::create_dir(pool.join("snapshots").join(&key)).expect("mkdir");
    }

    let started = Instant::now();
    let mut b =
        Berth::start(scratch.path(), &hostpath_config(&state, &pool, "auto"), "node-a", &["--log-level", "warn"]).await;
    let ready = started.elapsed();
    let pid = b.pid().expect("pid");
    let idle_rss = status_kib(pid, "VmRSS:");

    // Default pages: small, complete, no duplicates.
    let (mut seen, mut token, mut largest, mut pages) = (HashSet::new(), String::new(), 0, 0);
    loop {
        let page = b
            .controller
            .list_volumes(pb::ListVolumesRequest { max_entries: 0, starting_token: token.clone() })
            .await
            .expect("list")
            .into_inner();
        largest = largest.max(page.encoded_len());
        pages += 1;
        for e in &page.entries {
            assert!(seen.insert(e.volume.as_ref().expect("v").volume_id.clone()), "listed twice");
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), COUNT);
    assert!(largest < FOUR_MIB / 8, "a default page is {largest} bytes");
    // Asking for everything at once still gets a bounded page.
    let huge = b
        .controller
        .list_volumes(pb::ListVolumesRequest { max_entries: i32::MAX, starting_token: String::new() })
        .await
        .expect("list")
        .into_inner();
    assert!(huge.entries.len() <= berth::engine::MAX_PAGE && !huge.next_token.is_empty());
    assert!(huge.encoded_len() < FOUR_MIB, "a maximal page is {} bytes", huge.encoded_len());
    let (mut snaps, mut token, mut largest_snap) = (0, String::new(), 0);
    loop {
        let page = b
            .controller
            .list_snapshots(pb::ListSnapshotsRequest { starting_token: token.clone(), ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        largest_snap = largest_snap.max(page.encoded_len());
        snaps += page.entries.len();
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(snaps, COUNT);
    assert!(largest_snap < FOUR_MIB / 8);

    // 1,000 concurrent maximal listings: memory stays bounded.
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let mut c = b.controller.clone();
            tokio::spawn(async move {
                c.list_volumes(pb::ListVolumesRequest { max_entries: i32::MAX, starting_token: String::new() })
                    .await
                    .map(|r| r.into_inner().entries.len())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("list"), berth::engine::MAX_PAGE);
    }
    let peak = status_kib(pid, "VmHWM:");
    assert!(peak < 300 << 10, "peak resident memory {peak} KiB under 1,000 concurrent maximal listings");

    // An oversized request is refused by the transport; nothing is created.
    let mut big = create_req("too-big", 1 << 20);
    big.parameters.insert("csi.storage.k8s.io/pvc/name".into(), "x".repeat(1 << 20));
    let err = b.controller.create_volume(big).await.expect_err("refused");
    assert!(
        matches!(err.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument),
        "{err:?}"
    );
    assert_eq!(fs::read_dir(pool.join("volumes")).expect("ls").count(), COUNT, "nothing was created");
    println!(
        "bounds: {COUNT} volumes + {COUNT} snapshots; ready in {ready:?}; idle RSS {idle_rss} KiB; {pages} default pages, largest {largest} B (snapshots {largest_snap} B); maximal page {} B; peak RSS {peak} KiB after 1,000 concurrent listings; oversized request refused ({:?})",
        huge.encoded_len(),
        err.code()
    );
}
