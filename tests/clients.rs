//! gRPC clients other than Go's: grpc-core (here through its Python binding, grpcio)
//! sends the socket path, percent-encoded, as `:authority`, which HTTP/2 does not allow.
//! berth must serve them like any client. The interpreter comes from BERTH_TEST_PYTHON or
//! the virtualenv scripts/test makes (~/.cache/berth-grpcio-venv).

// A failed unwrap or expect in a test is the test failing: allowed here, denied in berth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use berth::csi::pb;
use common::*;

/// A Python interpreter that can `import grpc`, if this machine has one.
fn grpcio_python() -> Option<PathBuf> {
    let candidates = std::env::var_os("BERTH_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/berth-grpcio-venv/bin/python")));
    candidates
        .into_iter()
        .find(|python| Command::new(python).args(["-c", "import grpc"]).output().is_ok_and(|out| out.status.success()))
}

/// Calls each method (raw bytes in and out, so no generated code is needed) over a
/// channel to `unix://<socket>` with grpcio's default authority, and prints per call
/// `<method> OK <response as hex>` or `<method> <status code> <details>`, then the
/// authority grpcio used.
const CLIENT: &str = r#"
import sys, grpc
socket, methods = sys.argv[1], sys.argv[2:]
with grpc.insecure_channel("unix://" + socket) as channel:
    for method in methods:
        try:
            reply = channel.unary_unary(method)(b"", timeout=20)
            print(method, "OK", reply.hex())
        except grpc.RpcError as e:
            print(method, e.code().name, e.details())
"#;

#[tokio::test]
async fn a_grpc_core_client_that_sends_the_socket_path_as_authority_is_served() {
    let test = "a_grpc_core_client_that_sends_the_socket_path_as_authority_is_served";
    let Some(python) = grpcio_python() else {
        println!("SKIPPED: {test}: no Python with grpcio (set BERTH_TEST_PYTHON, or run scripts/test)");
        return;
    };
    let scratch = Scratch::new();
    let config = hostpath_config(&scratch.path().join("state"), &scratch.path().join("pool"), "none");
    let mut b = Berth::start(scratch.path(), &config, "node-a", &[]).await;
    let want = b.identity.get_plugin_info(pb::GetPluginInfoRequest {}).await.expect("info").into_inner();

    let methods = ["/csi.v1.Identity/GetPluginInfo", "/csi.v1.Identity/Probe", "/csi.v1.Node/NodeGetInfo"];
    let out = Command::new(&python)
        .args(["-c", CLIENT, b.socket.to_str().expect("utf8")])
        .args(methods)
        .env("GRPC_VERBOSITY", "ERROR")
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), methods.len(), "{text}");
    for (line, method) in lines.iter().zip(methods) {
        assert!(line.starts_with(&format!("{method} OK ")), "{line}\nberth's log:\n{}", b.logs());
    }
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(lines[0].contains(&hex(&want.name)), "GetPluginInfo names the driver: {}", lines[0]);
    assert!(lines[2].contains(&hex("node-a")), "NodeGetInfo names the node: {}", lines[2]);
    // berth saw the socket path as the authority and said so.
    let logs = b.logs();
    assert!(logs.contains("serving it as localhost") && logs.contains("%2F"), "{logs}");
    b.stop();
}
