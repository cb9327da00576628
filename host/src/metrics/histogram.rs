//! Histogram buckets: counts per upper bound, a sum and a count, as
//! Prometheus' histogram type exports them.
//!
//! A hot path keeps its own [`Buckets`] (per chunk, per lane) and merges
//! them into the registry once per chunk, so observing a value takes no
//! lock.

/// Stage durations in seconds: a chunk stage takes from tens of
/// microseconds (decode of a small chunk) to seconds (a bulk write into a
/// slow cluster).
pub const STAGE_SECONDS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// Fuel per processor call: a lean Rust transform uses tens of thousands,
/// an interpreted one millions; the default limit is in the hundreds of
/// millions.
pub const FUEL: &[f64] = &[1e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 1e9];

/// Observations of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Buckets {
    /// No observations, with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// The upper bounds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Count one value.
    pub fn observe(&mut self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Add another series' observations. Buckets with other bounds are a
    /// programming error and are ignored (counted in neither).
    pub fn merge(&mut self, other: &Buckets) {
        if !std::ptr::eq(self.bounds, other.bounds) && self.bounds != other.bounds {
            debug_assert!(false, "merging histograms with different bounds");
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the observed values.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, observations <= bound)` per bucket, cumulative as
    /// Prometheus' `le` buckets are, ending with `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut running = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(move |(bound, n)| {
                running += n;
                (bound, running)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[f64] = &[1.0, 10.0];

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative() {
        let mut b = Buckets::new(B);
        for v in [0.5, 1.0, 3.0, 10.0, 11.0] {
            b.observe(v);
        }
        let cumulative: Vec<(f64, u64)> = b.cumulative().collect();
        assert_eq!(cumulative, vec![(1.0, 2), (10.0, 4), (f64::INFINITY, 5)]);
        assert_eq!(b.count(), 5);
        assert_eq!(b.sum(), 25.5);
    }

    #[test]
    fn merging_adds_counts_sums_and_buckets() {
        let mut a = Buckets::new(B);
        a.observe(0.1);
        let mut b = Buckets::new(B);
        b.observe(5.0);
        b.observe(50.0);
        a.merge(&b);
        assert_eq!(
            a.cumulative().collect::<Vec<_>>(),
            vec![(1.0, 1), (10.0, 2), (f64::INFINITY, 3)]
        );
        assert_eq!(a.count(), 3);
        assert!((a.sum() - 55.1).abs() < 1e-9, "{}", a.sum());
    }
}
