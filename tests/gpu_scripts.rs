//! The prepared GPU bench's parts that run without a GPU: its summary on committed results
//! (`make gpu-summary-check`: python3's standard library) and `onnx/gpu/travel.sh`'s stash and
//! restore round trip (`make gpu-travel-check`: a temporary git repository). Both scripts fail
//! with a message when a check does not hold; this runs them in the test suite.

use std::process::Command;

fn make(target: &str) {
    let out = Command::new("make")
        .args(["-s", target])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("make {target}: {e}"));
    assert!(
        out.status.success(),
        "make {target}: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_gpu_summary_renders_the_committed_results_and_flags_a_missed_target() {
    make("gpu-summary-check");
}

#[test]
fn travel_moves_the_unneeded_tracked_files_out_and_back_unchanged() {
    make("gpu-travel-check");
}
