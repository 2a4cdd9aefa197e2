//! What CI keeps of the fuzzing, on stable: every committed fuzz input
//! (`fuzz/corpus/<target>/`: seeds and the attack files;
//! `fuzz/regressions/<target>/`: every crash the fuzzer found, fixed) run
//! through the very checks its cargo-fuzz target runs (`fuzz/targets.rs`,
//! included here), asserting that none panics.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    // A target without regressions has no folder for them.
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failed = Vec::new();
    for &(target, check) in targets::TARGETS {
        let corpus = files_in(&fuzz.join("corpus").join(target));
        // A corpus that vanished would make this test pass on nothing.
        assert!(
            corpus.len() >= 5,
            "{target}: {} committed seeds in fuzz/corpus/{target}",
            corpus.len()
        );
        let regressions = files_in(&fuzz.join("regressions").join(target));
        for path in corpus.iter().chain(&regressions) {
            let input = std::fs::read(path).unwrap();
            if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
                failed.push(path.display().to_string());
            }
        }
        println!(
            "{target}: {} seeds, {} regressions",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(failed.is_empty(), "inputs that panic: {failed:#?}");
}
