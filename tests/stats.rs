//! `stats::...` against values computed with scipy 1.17.1 / numpy 2.4.6 by
//! tests/reference/stats_reference.py (each constant names the call that produced it).

mod common;
use common::*;

const XS: &str = "[0.61, 0.58, 0.66, 0.63, 0.59, 0.71, 0.55, 0.64]";

/// Evaluates `code`, which returns an array of numbers.
fn numbers(code: &str) -> Vec<f64> {
    let out = eval(code);
    out.ok()
        .split(|c: char| "[], \n".contains(c))
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().expect("a number"))
        .collect()
}

#[track_caller]
fn close(got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-300),
        "got {got}, want {want} (relative tolerance {rel})"
    );
}

#[test]
fn mean_and_sample_std() {
    let v = numbers(&format!("[stats::mean({XS}), stats::std({XS})]"));
    close(v[0], 0.62125, 1e-12); // np.mean(XS)
    close(v[1], 0.0502671434864337, 1e-12); // np.std(XS, ddof=1)
}

#[test]
fn binomial_test_matches_scipy() {
    // (k, n, p, scipy.stats.binomtest(k, n, p).pvalue)
    let cases = [
        (62, 100, 0.5, 0.02097873567785172),
        (3, 20, 0.3, 0.22041826738070913),
        (7, 10, 0.2, 0.0008643584000000003),
        (0, 10, 0.1, 0.6125795109999999),
        (50, 100, 0.5, 1.0),
        (13, 40, 0.6, 0.0005467634059326475),
        (1, 1000, 0.01, 0.0011310695918519608),
        (30, 1000, 0.01, 2.059988850971949e-07),
        (9, 12, 0.25, 0.0003916621208190918),
    ];
    let calls: Vec<String> = cases
        .iter()
        .map(|(k, n, p, _)| format!("stats::binomial_test({k}, {n}, {p:?})"))
        .collect();
    let got = numbers(&format!("[{}]", calls.join(", ")));
    for ((k, n, p, want), got) in cases.iter().zip(got) {
        assert!(
            (got - want).abs() <= 1e-9 * want,
            "binomial_test({k}, {n}, {p}) = {got}, scipy {want}"
        );
    }
}

#[test]
fn exact_permutation_tests_match_scipy() {
    let got = numbers(
        "[stats::permutation_test([5.1, 4.9, 5.6, 5.8], [4.2, 4.4, 4.0, 5.0, 4.7]),
          stats::permutation_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]),
          stats::permutation_test([0.2, 1.1, 0.7, 1.9, 1.4, 0.9, 1.6, 1.2],
                                  [0.1, 0.5, 0.3, 1.0, 0.8, 0.2, 0.9, 0.4], #{n: 20000})]",
    );
    close(got[0], 0.031746031746031744, 1e-12); // exact, 126 splits
    close(got[1], 0.8571428571428571, 1e-12); // exact, 35 splits, ties
    close(got[2], 0.022533022533022532, 1e-12); // exact, 12870 splits
}

#[test]
fn sampled_permutation_test_is_near_the_exact_value_and_seeded() {
    // 2000 random splits of 12870: within a few standard errors (0.0033) of scipy's exact value.
    let got = numbers(
        "let e = [0.2, 1.1, 0.7, 1.9, 1.4, 0.9, 1.6, 1.2];
         let f = [0.1, 0.5, 0.3, 1.0, 0.8, 0.2, 0.9, 0.4];
         [stats::permutation_test(e, f, #{n: 2000, seed: 1}),
          stats::permutation_test(e, f, #{n: 2000, seed: 1}),
          stats::permutation_test(e, f, #{n: 2000, seed: 2})]",
    );
    assert!((got[0] - 0.022533022533022532).abs() < 0.012, "{got:?}");
    assert_eq!(got[0], got[1]);
    assert_ne!(got[0], got[2]);
}

#[test]
fn bootstrap_interval_is_near_scipy_and_seeded() {
    let out = eval(&format!(
        "let a = stats::bootstrap_ci({XS}, #{{n: 100000, seed: 5}});
         let b = stats::bootstrap_ci({XS}, #{{n: 100000, seed: 5}});
         [a.lo, a.hi, a.mean, a == b, stats::bootstrap_ci({XS}, #{{level: 0.5}}).hi < a.hi]"
    ));
    let text = out.ok();
    let parts: Vec<&str> = text
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .collect();
    let num = |i: usize| parts[i].parse::<f64>().expect("number");
    // scipy.stats.bootstrap((XS,), np.mean, method="percentile", n_resamples=100000) gives
    // (0.59, 0.655); the resamples differ, so the bounds agree to sampling error.
    assert!((num(0) - 0.59).abs() < 0.004, "{text}");
    assert!((num(1) - 0.655).abs() < 0.004, "{text}");
    close(num(2), 0.62125, 1e-12);
    assert_eq!(&parts[3..], ["true", "true"]);
}

#[test]
fn bad_arguments_are_errors() {
    let first = |code: &str| {
        eval(code)
            .failed()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        first("stats::bootstrap_ci([1, 2], #{lvl: 0.9})"),
        "<-e>:1:8: stats::bootstrap_ci: unknown option 'lvl' (did you mean 'level'?); valid options: n, level, seed"
    );
    assert_eq!(
        first("stats::permutation_test([1], [2], #{n: \"many\"})"),
        "<-e>:1:8: stats::permutation_test: option 'n' must be an integer, got \"many\" (string)"
    );
    assert_eq!(
        first("stats::std([1])"),
        "<-e>:1:8: stats::std: needs at least 2 values, got 1"
    );
    assert_eq!(
        first("stats::mean([])"),
        "<-e>:1:8: stats::mean: needs at least 1 value, got 0"
    );
    assert_eq!(
        first("stats::mean([1, \"a\"])"),
        "<-e>:1:8: stats::mean: element [1] is \"a\" (string), not a number"
    );
    assert_eq!(
        first("stats::binomial_test(5, 3, 0.5)"),
        "<-e>:1:8: stats::binomial_test: needs 0 <= k <= n, got k = 5, n = 3"
    );
    assert_eq!(
        first("stats::binomial_test(1, 3, 1.5)"),
        "<-e>:1:8: stats::binomial_test: p must be in [0, 1], got 1.5"
    );
}
