//! From the client's samples to the figures of a row: medians, p99, and the paired overhead
//! against the interleaved baseline.

use serde::Serialize;

/// One measured connect: which side (baseline or not), its batch, and its time.
#[derive(Clone, Copy)]
pub struct Sample {
    pub baseline: bool,
    pub batch: usize,
    pub ns: u64,
}

/// The figures of one metric of a row.
#[derive(Serialize, Clone, Copy, Default)]
pub struct Metric {
    pub median_ns: u64,
    pub p99_ns: u64,
    /// Median of the connects interleaved with these from the cgroup with no program.
    pub baseline_median_ns: u64,
    /// Median over adjacent batch pairs of (batch median / baseline batch median - 1), in
    /// percent: robust to the machine changing speed during the run.
    pub overhead_pct: f64,
    /// Half-width of the ~95 % confidence interval of `overhead_pct` (the notch of a box plot:
    /// 1.58 IQR / sqrt(pairs)): how far this run's noise leaves the figure uncertain.
    pub noise_pct: f64,
    /// Batch pairs the overhead is the median of.
    pub pairs: usize,
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn p99(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        0
    } else {
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    }
}

impl Metric {
    pub fn of(samples: &[Sample]) -> Self {
        let mut w: Vec<u64> = samples
            .iter()
            .filter(|s| !s.baseline)
            .map(|s| s.ns)
            .collect();
        let mut b: Vec<u64> = samples
            .iter()
            .filter(|s| s.baseline)
            .map(|s| s.ns)
            .collect();
        let mut ratios = paired_ratios(samples);
        ratios.sort_by(f64::total_cmp);
        let q = |f: f64| ratios.get((ratios.len() as f64 * f) as usize).copied();
        let (overhead, noise) = match (q(0.25), q(0.5), q(0.75)) {
            (Some(lo), Some(mid), Some(hi)) => (
                mid * 100.0,
                1.58 * (hi - lo) / (ratios.len() as f64).sqrt() * 100.0,
            ),
            _ => (f64::NAN, f64::NAN),
        };
        Metric {
            median_ns: median(&mut w),
            p99_ns: p99(&mut w),
            baseline_median_ns: median(&mut b),
            overhead_pct: overhead,
            noise_pct: noise,
            pairs: ratios.len(),
        }
    }
}

/// (batch median / adjacent baseline batch median - 1) for every adjacent pair of batches.
fn paired_ratios(samples: &[Sample]) -> Vec<f64> {
    let mut batches: std::collections::BTreeMap<usize, (bool, Vec<u64>)> = Default::default();
    for s in samples {
        batches
            .entry(s.batch)
            .or_insert((s.baseline, Vec::new()))
            .1
            .push(s.ns);
    }
    let medians: Vec<(bool, u64)> = batches
        .into_values()
        .map(|(b, mut ns)| (b, median(&mut ns)))
        .collect();
    // Non-overlapping pairs (0,1), (2,3), ...: each batch counts once.
    medians
        .chunks_exact(2)
        .filter(|w| w[0].0 != w[1].0 && w[0].1 > 0 && w[1].1 > 0)
        .map(|w| {
            let (prog, base) = if w[0].0 {
                (w[1].1, w[0].1)
            } else {
                (w[0].1, w[1].1)
            };
            prog as f64 / base as f64 - 1.0
        })
        .collect()
}
