//! Whole-run median and minimum of each net on the fused kernels, and with
//! `VERBOSE=1` each layer's median (unsorted, run order), on a synthetic
//! input: `cargo run -p holistream-kernels --example layer_profile [net|all]
//! [iters]`; `ISA=portable|avx2+fma|avx512` picks the instruction set
//! (default: `HOLISTREAM_ISA`'s, else the fastest this CPU has); `SPLIT=1` also times each whole run
//! with large layers split across a two-thread pool (`Program::run_on`),
//! interleaved with the single-thread runs. No burn, so it rebuilds in seconds
//! while tuning the kernels.

use std::time::{Duration, Instant};

use holistream_kernels::{Isa, Program};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nets = [
        "pose_detection",
        "pose_landmark_full",
        "face_landmark",
        "hand_recrop",
        "hand_landmark_full",
    ];
    let only = args.get(1).cloned();
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let isa = match std::env::var("ISA") {
        Ok(name) => Isa::by_name("ISA", &name).unwrap_or_else(|e| panic!("{e}")),
        Err(_) => Isa::detect(),
    };
    println!("instruction set: {}", isa.name());
    for net in nets {
        if only.as_deref().is_some_and(|o| o != "all" && o != net) {
            continue;
        }
        let bytes = std::fs::read(dir.join(format!("{net}.onnx"))).unwrap();
        let program = Program::from_onnx(&bytes).unwrap().with_isa(isa);
        println!(
            "{net}: {:.1} M multiply-adds in layers worth splitting",
            program.split_work() as f64 / 1e6
        );
        let (h, w, c) = program.input_shape();
        let input: Vec<f32> = (0..h * w * c)
            .map(|i| ((i * 7919) % 255) as f32 / 255.0)
            .collect();
        let mut scratch = program.scratch();
        let mut whole = Vec::new();
        let mut split = Vec::new();
        let pool = std::env::var("SPLIT")
            .is_ok()
            .then(holistream_kernels::split_pool);
        for _ in 0..iters {
            let t = Instant::now();
            program.run(&input, &mut scratch).unwrap();
            whole.push(t.elapsed());
            if let Some(pool) = pool {
                let t = Instant::now();
                let out = program.run_on(&input, &mut scratch, Some(pool)).unwrap();
                split.push(t.elapsed());
                assert_eq!(out, program.run(&input, &mut scratch).unwrap());
            }
        }
        let mut per: Vec<Vec<Duration>> = Vec::new();
        let mut names = Vec::new();
        for _ in 0..iters {
            let p = program.profile(&input, &mut scratch).unwrap();
            if per.is_empty() {
                per = vec![Vec::new(); p.len()];
                names = p.iter().map(|(n, _)| n.clone()).collect();
            }
            for (i, (_, d)) in p.into_iter().enumerate() {
                per[i].push(d);
            }
        }
        let med = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let total = med(&mut whole);
        let best = whole[0];
        let mut sum = Duration::ZERO;
        let verbose = std::env::var("VERBOSE").is_ok();
        for (i, v) in per.iter_mut().enumerate() {
            let m = med(v);
            sum += m;
            if verbose {
                println!("  {:>8.3} ms  {}", m.as_secs_f64() * 1e3, names[i]);
            }
        }
        println!(
            "{net}: run median {:.3} ms (min {:.3}), layer-median sum {:.3} ms ({} layers)",
            total.as_secs_f64() * 1e3,
            best.as_secs_f64() * 1e3,
            sum.as_secs_f64() * 1e3,
            names.len()
        );
        if !split.is_empty() {
            let m = med(&mut split);
            println!(
                "{net}: split across two threads: run median {:.3} ms ({:.2}x the single-thread run)",
                m.as_secs_f64() * 1e3,
                m.as_secs_f64() / total.as_secs_f64()
            );
        }
    }
}
