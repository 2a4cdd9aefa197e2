//! The feature pins of `models/Cargo.toml` still do their job: a `wgpu`
//! build turns on features only in burn's own crates, so CI's second build
//! (`.ci/run`'s last step, in the same target folder) reuses every other
//! crate. When a dependency update makes the GPU build turn on a feature of
//! a shared crate, this names the crate and the feature to pin.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every package of the workspace's graph (normal, build and dev edges) with
/// the features it is built with, from `cargo tree` (which downloads the
/// GPU crates' manifests on a machine that has not built them yet).
fn features(extra: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--locked",
            "--workspace",
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "-f",
            "{p}|{f}",
        ])
        .args(extra)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let Some((package, feats)) = line.split_once('|') else {
            continue;
        };
        let package = package.trim_end_matches(" (*)").to_string();
        let feats = feats.trim_end_matches(" (*)");
        map.entry(package)
            .or_default()
            .extend(feats.split(',').filter(|f| !f.is_empty()).map(String::from));
    }
    map
}

#[test]
fn a_wgpu_build_changes_features_only_in_burn() {
    let cpu = features(&[]);
    let gpu = features(&["--features", "holistream/wgpu"]);
    // Burn's crates and ours carry the `wgpu` feature itself.
    let burn_side =
        |package: &str| package.starts_with("burn") || package.starts_with("holistream");
    let drift: Vec<String> = cpu
        .iter()
        .filter(|(package, _)| !burn_side(package))
        .filter_map(|(package, feats)| {
            let extra: Vec<&String> = gpu.get(package)?.difference(feats).collect();
            (!extra.is_empty()).then(|| format!("{package}: {extra:?}"))
        })
        .collect();
    assert!(
        drift.is_empty(),
        "the wgpu build turns on features of shared crates; pin them in models/Cargo.toml:\n{}",
        drift.join("\n")
    );
    assert!(
        gpu.keys().any(|p| p.starts_with("wgpu ")),
        "the wgpu build has wgpu in its graph"
    );
}
