//! Per-net forward time on the default CPU backend (flex): median of N runs on
//! a constant input, after one warm-up run.
//!
//! `cargo run -p holistream-nets --release --example net_timing -- [runs]`

use holistream_nets::{BurnNets, Net};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("runs: a number"))
        .unwrap_or(20);
    let start = std::time::Instant::now();
    let nets = BurnNets::load().expect("shipped weights load");
    println!("load: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    for net in Net::ALL {
        let (h, w) = net.input_size();
        // A mid-grey image: the cost of these nets does not depend on the pixels.
        let input = vec![0.5f32; h * w * 3];
        nets.run_timed(net, &input).expect("warm-up");
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                nets.run_timed(net, &input)
                    .expect("forward")
                    .1
                    .as_secs_f64()
                    * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{:28} {h}x{w}: median {:7.2} ms  min {:7.2} ms  max {:7.2} ms  ({runs} runs)",
            net.name(),
            times[runs / 2],
            times[0],
            times[runs - 1]
        );
    }
}
