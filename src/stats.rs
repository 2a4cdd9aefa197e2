//! Summary statistics of measured samples: one definition of a percentile
//! for the whole project, so that the bench, the load generator and the tests
//! report and assert the same thing.
//!
//! Plumbing below every layer: imports nothing from the crate.

/// The `q`-th quantile (`q` in `0..=1`) of `samples` by **nearest rank**: the
/// `⌈q·n⌉`-th smallest of the `n` samples (the smallest for `q = 0`), that is
/// the smallest sample with at least a `q` share of all samples at or below
/// it. It is always a value that was observed, never an interpolation between
/// two (a tail latency that no request had would be misleading), so the
/// median of an even count is the lower of the two middle samples, and the
/// p99 of fewer than 100 samples is their maximum.
///
/// Sorts `samples` in place (NaN last); NaN when there are none.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// The median, [`percentile`] at 0.5 (the lower middle of an even count).
pub fn median(samples: &mut [f64]) -> f64 {
    percentile(samples, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_samples() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.9), 90.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut v, 1.0), 100.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        // Between ranks: the next sample up, never an interpolation.
        assert_eq!(percentile(&mut v, 0.505), 51.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_lower_middle() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.0);
        assert!(median(&mut []).is_nan());
    }
}
