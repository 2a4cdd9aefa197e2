//! `holistream bench --profile`: where the fused kernels' time goes, per net
//! and layer kind.
//!
//! Tooling, not the pipeline: it times the nets from the outside and changes
//! nothing in them.

use crate::model::Net;

/// Per net: the fused kernels' time by layer kind (sum of per-layer minima
/// over a few runs, so scheduling noise does not pile up).
pub(super) fn print_profile() -> anyhow::Result<()> {
    let nets = holistream_nets::FusedNets::load()?;
    println!(
        "== fused kernels, where the time goes ({})",
        nets.isa().name()
    );
    for net in Net::ALL {
        let (h, w) = net.input_size();
        let input = vec![0.5f32; h * w * 3];
        let runs = (0..10)
            .map(|_| nets.profile(net, &input))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_kind: Vec<(String, f64)> = Vec::new();
        let mut total = 0.0;
        for (i, (name, _)) in runs[0].iter().enumerate() {
            let best = runs
                .iter()
                .map(|r| r[i].1.as_secs_f64() * 1e3)
                .fold(f64::INFINITY, f64::min);
            total += best;
            // "pointwise k=24 64x64x144" -> "pointwise"; "depthwise 3x3/1 ..." -> "depthwise 3x3/1".
            let kind = name.rsplit_once(' ').map_or(name.as_str(), |(k, _)| k);
            let kind = kind.split(" k=").next().unwrap_or(kind).to_string();
            match by_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, t)) => *t += best,
                None => by_kind.push((kind, best)),
            }
        }
        by_kind.sort_by(|a, b| b.1.total_cmp(&a.1));
        let parts: Vec<String> = by_kind
            .iter()
            .take(6)
            .map(|(k, t)| format!("{k} {:.0}%", 100.0 * t / total))
            .collect();
        println!(
            "{:<28} {:6.2} ms ({} layers): {}",
            net.name(),
            total,
            runs[0].len(),
            parts.join(", ")
        );
    }
    Ok(())
}
