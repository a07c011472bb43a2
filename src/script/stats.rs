//! `stats::...`: the small statistics experiments need, matching scipy's definitions.
//!
//! `stats::std` is the sample standard deviation (ddof = 1, as `numpy.std(xs, ddof=1)` and
//! `statistics.stdev`). `binomial_test` is scipy's exact two-sided test; `permutation_test` is
//! scipy's `permutation_test` for a difference in means (independent samples, two-sided),
//! exact when the number of distinct splits is at most `n`. Random draws use ChaCha8 seeded with
//! `seed` (default 0), so a script gives the same numbers every run.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rhai::plugin::*;
use rhai::{Array, Dynamic, Engine, Map, FLOAT, INT};
use statrs::distribution::{Binomial, Discrete, DiscreteCDF};

use super::options::Options;
use super::{located, RhaiResult};
use crate::{interrupt, Error, Result};

/// The numbers of a script array (integers or floats), or an error naming `verb`.
pub fn numbers(xs: &Array, verb: &str) -> Result<Vec<f64>> {
    xs.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_float()
                .or_else(|_| x.as_int().map(|i| i as f64))
                .map_err(|_| {
                    Error::Invalid(format!(
                        "{verb}: element [{i}] is {} ({}), not a number",
                        super::display::inline(x),
                        super::display::type_name(x)
                    ))
                })
        })
        .collect()
}

fn nonempty(xs: &Array, verb: &str, at_least: usize) -> Result<Vec<f64>> {
    let v = numbers(xs, verb)?;
    if v.len() < at_least {
        return Err(Error::Invalid(format!(
            "{verb}: needs at least {at_least} value{}, got {}",
            if at_least == 1 { "" } else { "s" },
            v.len()
        )));
    }
    Ok(v)
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (ddof = 1).
pub fn sample_std(xs: &[f64]) -> f64 {
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (xs.len() as f64 - 1.0)).sqrt()
}

/// numpy's default (linear) percentile of sorted data, q in [0, 1].
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentile bootstrap of the mean: `(lo, hi)`. Stops early on Ctrl-C.
pub fn bootstrap_ci(xs: &[f64], n: usize, level: f64, seed: u64) -> Result<(f64, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means = Vec::with_capacity(n);
    for i in 0..n {
        if i % 1024 == 0 {
            interrupt::check()?;
        }
        let s: f64 = (0..xs.len())
            .map(|_| xs[rng.random_range(0..xs.len())])
            .sum();
        means.push(s / xs.len() as f64);
    }
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Ok((percentile(&means, alpha), percentile(&means, 1.0 - alpha)))
}

/// scipy.stats.binomtest(k, n, p).pvalue (two-sided): the probability of every outcome no more
/// likely than `k`.
pub fn binomial_test(k: u64, n: u64, p: f64) -> Result<f64> {
    let dist = Binomial::new(p, n).map_err(|e| Error::Invalid(format!("binomial: {e}")))?;
    let pmf = |x: i64| {
        if x < 0 || x as u64 > n {
            0.0
        } else {
            dist.pmf(x as u64)
        }
    };
    let cdf = |x: i64| if x < 0 { 0.0 } else { dist.cdf(x as u64) };
    let sf = |x: i64| if x < 0 { 1.0 } else { dist.sf(x as u64) };
    // The first x in [lo, hi] where a(x) <= d, a being monotone there (scipy's search).
    let search = |a: &dyn Fn(i64) -> f64, d: f64, mut lo: i64, mut hi: i64| {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let v = a(mid);
            if v < d {
                lo = mid + 1;
            } else if v > d {
                hi = mid - 1;
            } else {
                return mid;
            }
        }
        if a(lo) <= d {
            lo
        } else {
            lo - 1
        }
    };
    let (k, n) = (k as i64, n as i64);
    let d = pmf(k);
    let rerr = 1.0 + 1e-7;
    let pn = p * n as f64;
    let pval = if k as f64 == pn {
        1.0
    } else if (k as f64) < pn {
        let ix = search(&|x| -pmf(x), -d * rerr, pn.ceil() as i64, n);
        let y = n - ix + i64::from(d * rerr == pmf(ix));
        cdf(k) + sf(n - y)
    } else {
        let ix = search(&pmf, d * rerr, 0, pn.floor() as i64);
        let y = ix + 1;
        cdf(y - 1) + sf(k - 1)
    };
    Ok(pval.min(1.0))
}

/// Number of ways to choose k of n, saturating at u64::MAX.
fn choose(n: usize, k: usize) -> u64 {
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for i in 0..k {
        c = c * (n - i) as u128 / (i + 1) as u128;
        if c > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    c as u64
}

/// scipy.stats.permutation_test for mean(a) - mean(b), independent samples, two-sided. Stops
/// early on Ctrl-C.
pub fn permutation_test(a: &[f64], b: &[f64], n: usize, seed: u64) -> Result<f64> {
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let total: f64 = pooled.iter().sum();
    let (na, nb) = (a.len(), b.len());
    let stat = |sum_a: f64| sum_a / na as f64 - (total - sum_a) / nb as f64;
    let observed = mean(a) - mean(b);
    let gamma = (f64::EPSILON * 100.0 * observed).abs();
    let (mut less, mut greater) = (0usize, 0usize);
    let mut count = |s: f64| {
        less += usize::from(s <= observed + gamma);
        greater += usize::from(s >= observed - gamma);
    };
    let exact = choose(na + nb, na) <= n as u64;
    let resamples = if exact {
        // Every split of the pooled values into groups of na and nb, once.
        let mut idx: Vec<usize> = (0..na).collect();
        let mut m = 0;
        loop {
            if m % 1024 == 0 {
                interrupt::check()?;
            }
            count(stat(idx.iter().map(|&i| pooled[i]).sum()));
            m += 1;
            let Some(i) = (0..na).rev().find(|&i| idx[i] != i + nb) else {
                break;
            };
            idx[i] += 1;
            for j in i + 1..na {
                idx[j] = idx[j - 1] + 1;
            }
        }
        m
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut shuffled = pooled.clone();
        for i in 0..n {
            if i % 1024 == 0 {
                interrupt::check()?;
            }
            let (head, _) = shuffled.partial_shuffle(&mut rng, na);
            count(stat(head.iter().sum()));
        }
        n
    };
    // scipy counts the observed split once more when the distribution is sampled.
    let adjust = if exact { 0.0 } else { 1.0 };
    let p = |c: usize| (c as f64 + adjust) / (resamples as f64 + adjust);
    Ok((2.0 * p(less).min(p(greater))).min(1.0))
}

fn bootstrap_verb(xs: &Array, opts: &Map) -> Result<Map> {
    let verb = "stats::bootstrap_ci";
    let o = Options::parse(verb, opts, &["n", "level", "seed"])?;
    let n = o.int("n", 1000)?;
    let level = o.float("level", 0.95)?;
    let seed = o.int("seed", 0)?;
    if !(1..=100_000_000).contains(&n) {
        return Err(Error::Invalid(format!(
            "{verb}: n must be from 1 to 1e8, got {n}"
        )));
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::Invalid(format!(
            "{verb}: level must be between 0 and 1, got {level}"
        )));
    }
    let xs = nonempty(xs, verb, 1)?;
    let (lo, hi) = bootstrap_ci(&xs, n as usize, level, seed as u64)?;
    let mut m = Map::new();
    m.insert("lo".into(), Dynamic::from_float(lo));
    m.insert("hi".into(), Dynamic::from_float(hi));
    m.insert("mean".into(), Dynamic::from_float(mean(&xs)));
    m.insert("level".into(), Dynamic::from_float(level));
    m.insert("n".into(), Dynamic::from_int(xs.len() as INT));
    m.insert("resamples".into(), Dynamic::from_int(n));
    m.insert("seed".into(), Dynamic::from_int(seed));
    Ok(m)
}

fn binomial_map(k: INT, n: INT, p: FLOAT) -> Result<Map> {
    let p_value = binomial_verb(k, n, p)?;
    let mut m = Map::new();
    m.insert("p_value".into(), Dynamic::from_float(p_value));
    m.insert("k".into(), Dynamic::from_int(k));
    m.insert("n".into(), Dynamic::from_int(n));
    m.insert("p".into(), Dynamic::from_float(p));
    m.insert(
        "rate".into(),
        Dynamic::from_float(if n > 0 { k as FLOAT / n as FLOAT } else { 0.0 }),
    );
    m.insert("test".into(), "exact two-sided binomial".into());
    Ok(m)
}

fn permutation_map(a: &Array, b: &Array, opts: &Map) -> Result<Map> {
    let i = permutation_inputs(a, b, opts, "stats::permutation")?;
    let p_value = permutation_test(&i.a, &i.b, i.n as usize, i.seed as u64)?;
    let (mean_a, mean_b) = (mean(&i.a), mean(&i.b));
    let mut m = Map::new();
    m.insert("p_value".into(), Dynamic::from_float(p_value));
    m.insert("n_a".into(), Dynamic::from_int(i.a.len() as INT));
    m.insert("n_b".into(), Dynamic::from_int(i.b.len() as INT));
    m.insert("mean_a".into(), Dynamic::from_float(mean_a));
    m.insert("mean_b".into(), Dynamic::from_float(mean_b));
    m.insert("difference".into(), Dynamic::from_float(mean_a - mean_b));
    m.insert("resamples".into(), Dynamic::from_int(i.n));
    m.insert("seed".into(), Dynamic::from_int(i.seed));
    m.insert(
        "test".into(),
        "two-sided permutation, difference in means".into(),
    );
    Ok(m)
}

fn binomial_verb(k: INT, n: INT, p: FLOAT) -> Result<FLOAT> {
    let verb = "stats::binomial_test";
    if n < 0 || k < 0 || k > n {
        return Err(Error::Invalid(format!(
            "{verb}: needs 0 <= k <= n, got k = {k}, n = {n}"
        )));
    }
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Invalid(format!(
            "{verb}: p must be in [0, 1], got {p}"
        )));
    }
    binomial_test(k as u64, n as u64, p)
}

/// The checked inputs of a permutation test: the two samples, resamples and seed.
struct PermutationInputs {
    a: Vec<f64>,
    b: Vec<f64>,
    n: INT,
    seed: INT,
}

fn permutation_inputs(a: &Array, b: &Array, opts: &Map, verb: &str) -> Result<PermutationInputs> {
    let o = Options::parse(verb, opts, &["n", "seed"])?;
    let n = o.int("n", 10_000)?;
    let seed = o.int("seed", 0)?;
    if !(1..=100_000_000).contains(&n) {
        return Err(Error::Invalid(format!(
            "{verb}: n must be from 1 to 1e8, got {n}"
        )));
    }
    Ok(PermutationInputs {
        a: nonempty(a, verb, 1)?,
        b: nonempty(b, verb, 1)?,
        n,
        seed,
    })
}

fn permutation_verb(a: &Array, b: &Array, opts: &Map) -> Result<FLOAT> {
    let i = permutation_inputs(a, b, opts, "stats::permutation_test")?;
    permutation_test(&i.a, &i.b, i.n as usize, i.seed as u64)
}

// Functions of a static module take the call context to place their errors: Rhai does not add
// the position to errors from qualified (`stats::...`) native calls.
#[export_module]
mod stats_functions {
    use super::*;

    /// The mean of an array of numbers.
    ///
    /// Example: `stats::mean([1, 2, 3, 4])  // 2.5`
    #[rhai_fn(name = "mean", return_raw)]
    pub fn mean_of(ctx: NativeCallContext, xs: Array) -> RhaiResult<FLOAT> {
        located(&ctx, nonempty(&xs, "stats::mean", 1).map(|v| mean(&v)))
    }

    /// The sample standard deviation (ddof = 1, like numpy.std(xs, ddof=1)); needs 2 values.
    ///
    /// Example: `stats::std([1, 2, 3, 4])  // 1.291`
    #[rhai_fn(name = "std", return_raw)]
    pub fn std_of(ctx: NativeCallContext, xs: Array) -> RhaiResult<FLOAT> {
        located(&ctx, nonempty(&xs, "stats::std", 2).map(|v| sample_std(&v)))
    }

    /// Percentile-bootstrap confidence interval of the mean: `#{lo, hi, mean}`, plus the
    /// inputs that reproduce it (`level, n, resamples, seed`).
    /// Options: `n` (resamples, 1000), `level` (0.95), `seed` (0).
    ///
    /// Example: `stats::bootstrap_ci(accuracies, #{n: 5000, level: 0.99, seed: 1})`
    #[rhai_fn(name = "bootstrap_ci", return_raw)]
    pub fn bootstrap_ci_opts(ctx: NativeCallContext, xs: Array, opts: Map) -> RhaiResult<Map> {
        located(&ctx, bootstrap_verb(&xs, &opts))
    }

    /// Percentile-bootstrap 95% confidence interval of the mean, 1000 resamples, seed 0.
    ///
    /// Example: `stats::bootstrap_ci([0.61, 0.58, 0.66, 0.63])`
    #[rhai_fn(name = "bootstrap_ci", return_raw)]
    pub fn bootstrap_ci_default(ctx: NativeCallContext, xs: Array) -> RhaiResult<Map> {
        located(&ctx, bootstrap_verb(&xs, &Map::new()))
    }

    /// Exact two-sided binomial test (scipy.stats.binomtest): the p-value of `k` successes in
    /// `n` trials with success probability `p`.
    ///
    /// Example: `stats::binomial_test(62, 100, 0.5)  // 0.0210`
    #[rhai_fn(name = "binomial_test", return_raw)]
    pub fn binomial_test_fn(ctx: NativeCallContext, k: INT, n: INT, p: FLOAT) -> RhaiResult<FLOAT> {
        located(&ctx, binomial_verb(k, n, p))
    }

    /// Permutation test for a difference in means between two samples (two-sided p-value,
    /// as scipy.stats.permutation_test). Options: `n` (resamples, 10000; the test is exact when
    /// there are no more distinct splits than that), `seed` (0).
    ///
    /// Example: `stats::permutation_test(steered, baseline, #{n: 20000, seed: 1})`
    #[rhai_fn(name = "permutation_test", return_raw)]
    pub fn permutation_test_opts(
        ctx: NativeCallContext,
        a: Array,
        b: Array,
        opts: Map,
    ) -> RhaiResult<FLOAT> {
        located(&ctx, permutation_verb(&a, &b, &opts))
    }

    /// Permutation test for a difference in means, 10000 resamples, seed 0.
    ///
    /// Example: `stats::permutation_test([5.1, 4.9, 5.6], [4.2, 4.4, 4.0])`
    #[rhai_fn(name = "permutation_test", return_raw)]
    pub fn permutation_test_default(
        ctx: NativeCallContext,
        a: Array,
        b: Array,
    ) -> RhaiResult<FLOAT> {
        located(&ctx, permutation_verb(&a, &b, &Map::new()))
    }
}

#[export_module]
mod stats_records {
    use super::*;

    /// `binomial_test` with its inputs, for results files: `#{p_value, k, n, p, rate, test}`.
    ///
    /// Example: `stats::binomial(14, 20, 0.5).p_value  // 0.115`
    #[rhai_fn(name = "binomial", return_raw)]
    pub fn binomial(ctx: NativeCallContext, k: INT, n: INT, p: FLOAT) -> RhaiResult<Map> {
        located(&ctx, binomial_map(k, n, p))
    }

    /// `permutation_test` with its inputs: `#{p_value, n_a, n_b, mean_a, mean_b, difference,
    /// resamples, seed, test}`. Options as for `permutation_test`.
    ///
    /// Example: `stats::permutation(steered, baseline, #{seed: 1}).p_value`
    #[rhai_fn(name = "permutation", return_raw)]
    pub fn permutation_opts(
        ctx: NativeCallContext,
        a: Array,
        b: Array,
        opts: Map,
    ) -> RhaiResult<Map> {
        located(&ctx, permutation_map(&a, &b, &opts))
    }

    /// `permutation` with 10000 resamples, seed 0.
    ///
    /// Example: `stats::permutation([5.1, 4.9, 5.6], [4.2, 4.4, 4.0])`
    #[rhai_fn(name = "permutation", return_raw)]
    pub fn permutation(ctx: NativeCallContext, a: Array, b: Array) -> RhaiResult<Map> {
        located(&ctx, permutation_map(&a, &b, &Map::new()))
    }
}

/// Registers the `stats` module (`stats::mean(xs)`).
pub fn register(engine: &mut Engine) {
    let mut module = exported_module!(stats_functions);
    module.combine_flatten(exported_module!(stats_records));
    module.set_doc("//! Statistics for experiments: means, intervals, tests.");
    engine.register_static_module("stats", module.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_std_uses_ddof_1() {
        assert!((sample_std(&[1.0, 2.0, 3.0, 4.0]) - 1.2909944487358056).abs() < 1e-15);
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&xs, 0.5), 2.5);
        assert_eq!(percentile(&xs, 0.0), 1.0);
        assert_eq!(percentile(&xs, 1.0), 4.0);
    }

    #[test]
    fn choose_counts() {
        assert_eq!(choose(10, 5), 252);
        assert_eq!(choose(200, 100), u64::MAX);
    }
}
