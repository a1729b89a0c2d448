//! Median and p95 of a bench's samples, the way scripts/bench-failover always computed them:
//! linear interpolation between the closest ranks (numpy's default), so p95 of few samples lies
//! between the two largest instead of jumping to the maximum.

/// The `p`th percentile (0..=100) of `xs`; `None` when there is no sample.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let k = (v.len() - 1) as f64 * p.clamp(0.0, 100.0) / 100.0;
    let f = k.floor() as usize;
    let c = (f + 1).min(v.len() - 1);
    Some(v[f] + (v[c] - v[f]) * (k - f as f64))
}

pub fn median(xs: &[f64]) -> Option<f64> {
    percentile(xs, 50.0)
}

/// Median and p95, for the table.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub median: f64,
    pub p95: f64,
    pub n: usize,
}

pub fn summarize(xs: &[f64]) -> Option<Summary> {
    Some(Summary { median: median(xs)?, p95: percentile(xs, 95.0)?, n: xs.len() })
}

/// The largest number of `true` flags at one sample (how many members took writes at once).
pub fn most_at_once(samples: &[Vec<bool>]) -> usize {
    samples.iter().map(|s| s.iter().filter(|b| **b).count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p95_interpolate_between_ranks() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        // 5 samples: rank (5-1)*0.95 = 3.8, between 4 and 10.
        let p = percentile(&[1.0, 2.0, 3.0, 4.0, 10.0], 95.0).unwrap();
        assert!((p - 8.8).abs() < 1e-9, "{p}");
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        let s = summarize(&[1.0, 3.0]).unwrap();
        assert_eq!((s.median, s.n), (2.0, 2));
        assert!((s.p95 - 2.9).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn most_at_once_counts_the_worst_sample() {
        assert_eq!(most_at_once(&[]), 0);
        assert_eq!(most_at_once(&[vec![true, false, false], vec![true, true, false], vec![false, false, true]]), 2);
    }
}
