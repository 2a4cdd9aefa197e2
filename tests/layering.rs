//! The crate's layering, checked on its source: every `crate::`/`super::`
//! path in `src/**/*.rs` (in `use` items and in code; comments skipped) must
//! run downward, and no two files may import each other, directly or round
//! a circle.
//!
//! Layers, from the top: `commands` → `http` → `actors` → `model`, with the
//! root plumbing (`config`, `metrics`, `shutdown`, `net`, `session_id`,
//! `stats`) below all of them; `main.rs` and `lib.rs` sit above everything.
//! A module may import its own layer and the ones below it.
//!
//! A module's own children are not counted as its imports (`pub use
//! pool::PoolConfig` in `config/mod.rs` is the module's façade, not a
//! dependency): a cycle is a file importing, through any chain, a file that
//! imports it back, other than a parent naming its children.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rank of a top-level module: higher may import lower, never the reverse.
fn rank(top: &str) -> Option<u8> {
    match top {
        "config" | "metrics" | "shutdown" | "net" | "session_id" | "stats" => Some(0),
        "model" => Some(1),
        "actors" => Some(2),
        "http" => Some(3),
        "commands" => Some(4),
        _ => None,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/`: `actors/remote/gateway.rs` →
/// `[actors, remote, gateway]`, `actors/remote/mod.rs` → `[actors, remote]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without comments (line comments, doc comments, and the tail
/// of a line after ` // `), so paths named in prose do not count.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else {
                l.split(" // ").next().unwrap_or("")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path that starts with `crate::` or `super::` in `code`, expanded
/// through `{…}` groups, as segments (`super` kept, resolved later).
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let at_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        if at_word && (rest.starts_with("crate::") || rest.starts_with("super::")) {
            let (paths, end) = parse_path(&chars, i, Vec::new());
            out.extend(paths);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses a path (with groups) from `i`, prefixed by `prefix`; returns the
/// expanded paths and where parsing stopped.
fn parse_path(chars: &[char], mut i: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut segs = prefix;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '{' {
            let mut all = Vec::new();
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    return (all, i + 1);
                }
                let (paths, end) = parse_path(chars, i, segs.clone());
                all.extend(paths);
                i = end;
                // Skip an `as name` and anything else up to the separator.
                while i < chars.len() && chars[i] != ',' && chars[i] != '}' {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if start == i {
            return (vec![segs], i);
        }
        segs.push(chars[start..i].iter().collect());
        if i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':' {
            i += 2;
        } else {
            return (vec![segs], i);
        }
    }
}

/// `segs` from the file at `module` as a path from the crate root.
fn absolute(module: &[String], segs: &[String]) -> Vec<String> {
    match segs.first().map(String::as_str) {
        Some("crate") => segs[1..].to_vec(),
        Some("super") => {
            let mut base = module.to_vec();
            let mut rest = segs;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            base
        }
        _ => segs.to_vec(),
    }
}

/// The file that defines the module at the longest prefix of `path`.
fn file_of(src: &Path, path: &[String], files: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    let mut found = None;
    for n in 1..=path.len() {
        let dir: PathBuf = path[..n].iter().collect();
        let as_file = src.join(&dir).with_extension("rs");
        let as_mod = src.join(&dir).join("mod.rs");
        if files.contains(&as_file) {
            found = Some(as_file);
        } else if files.contains(&as_mod) {
            found = Some(as_mod);
        } else {
            break;
        }
    }
    found
}

#[test]
fn imports_run_downward_and_no_files_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut list = Vec::new();
    rust_files(&src, &mut list);
    let files: BTreeSet<PathBuf> = list.into_iter().collect();
    assert!(files.len() > 40, "the source tree was not found");

    let mut upward = Vec::new();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = module_path(rel);
        let Some(from_rank) = module.first().and_then(|top| rank(top)) else {
            continue; // lib.rs, main.rs: above every layer
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for segs in paths_in(&code) {
            let path = absolute(&module, &segs);
            let Some(top) = path.first() else { continue };
            if let Some(to_rank) = rank(top)
                && to_rank > from_rank
            {
                upward.push(format!("{}: {}", rel.display(), path.join("::")));
            }
            if let Some(target) = file_of(&src, &path, &files) {
                let target_module = module_path(target.strip_prefix(&src).unwrap());
                let own_child = target_module.starts_with(&module);
                if &target != file && !own_child {
                    edges.entry(file.clone()).or_default().insert(target);
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run upward (commands → http → actors → model → root plumbing):\n{}",
        upward.join("\n")
    );

    // A depth-first search for a back edge: any is a cycle.
    fn visit(
        f: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(f.clone(), 1);
        stack.push(f.clone());
        for t in edges.get(f).into_iter().flatten() {
            match state.get(t).copied().unwrap_or(0) {
                0 => visit(t, edges, state, stack, cycles),
                1 => {
                    let at = stack.iter().position(|s| s == t).unwrap();
                    let names: Vec<String> = stack[at..]
                        .iter()
                        .chain(std::iter::once(t))
                        .map(|p| {
                            let n = p.components().count();
                            p.components()
                                .skip(n - 2)
                                .collect::<PathBuf>()
                                .display()
                                .to_string()
                        })
                        .collect();
                    cycles.push(names.join(" → "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(f.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for f in edges.keys() {
        if state.get(f).copied().unwrap_or(0) == 0 {
            visit(f, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between files:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_checker_sees_paths_groups_and_supers() {
    let code = code_of(
        "use crate::{config::{A, B as C}, metrics::M};\n// use crate::http::X;\nlet x = super::super::pool::f();",
    );
    let paths = paths_in(&code);
    let module = vec![
        "actors".to_string(),
        "remote".to_string(),
        "gateway".to_string(),
    ];
    let abs: Vec<String> = paths
        .iter()
        .map(|p| absolute(&module, p).join("::"))
        .collect();
    assert_eq!(
        abs,
        ["config::A", "config::B", "metrics::M", "actors::pool::f"]
    );
}
