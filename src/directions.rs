//! Directions in activation space from two groups of activations (`[n, d]` each): the
//! difference of means, the first principal component of paired differences, or the weights
//! of a logistic probe (see [`crate::probes`]). Each comes out as a float32 `[d]` vector oriented so that the positive
//! group projects higher.

use mlx_rs::{Array, Dtype};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::error::{Error, Result};

/// How a direction is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    MeanDiff,
    Pca,
    Probe,
}

impl Method {
    pub const NAMES: [&'static str; 3] = ["mean_diff", "pca", "probe"];

    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "mean_diff" => Ok(Method::MeanDiff),
            "pca" => Ok(Method::Pca),
            "probe" => Ok(Method::Probe),
            other => Err(Error::Invalid(format!(
                "unknown direction method {other:?} (valid: \"mean_diff\", \"pca\", \"probe\")"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::MeanDiff => "mean_diff",
            Method::Pca => "pca",
            Method::Probe => "probe",
        }
    }
}

/// Rows of a `[n, d]` array as f64 vectors.
fn rows(a: &Array) -> Result<(usize, usize, Vec<f64>)> {
    if a.ndim() != 2 {
        return Err(Error::Invalid(format!(
            "direction: expected activations [n, d], got shape {:?}",
            a.shape()
        )));
    }
    let (n, d) = (a.shape()[0] as usize, a.shape()[1] as usize);
    let a = a.as_dtype(Dtype::Float32)?;
    a.eval()?;
    let v: Vec<f64> = a.as_slice::<f32>().iter().map(|&x| x as f64).collect();
    Ok((n, d, v))
}

fn mean_rows(n: usize, d: usize, v: &[f64]) -> Vec<f64> {
    let mut m = vec![0.0; d];
    for r in 0..n {
        for (j, x) in v[r * d..(r + 1) * d].iter().enumerate() {
            m[j] += x;
        }
    }
    m.iter_mut().for_each(|x| *x /= n as f64);
    m
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The direction from `positive` and `negative` activations (`[n, d]`), not normalized.
pub fn compute(method: Method, positive: &Array, negative: &Array) -> Result<Vec<f32>> {
    let (np, d, p) = rows(positive)?;
    let (nn, dn, q) = rows(negative)?;
    if d != dn {
        return Err(Error::Invalid(format!(
            "direction: positive activations have width {d}, negative {dn}"
        )));
    }
    if np == 0 || nn == 0 {
        return Err(Error::Invalid(
            "direction: needs at least one positive and one negative example".into(),
        ));
    }
    let mp = mean_rows(np, d, &p);
    let mn = mean_rows(nn, d, &q);
    let diff: Vec<f64> = mp.iter().zip(&mn).map(|(a, b)| a - b).collect();
    let v = match method {
        Method::MeanDiff => diff,
        Method::Pca => {
            if np != nn {
                return Err(Error::Invalid(format!(
                    "direction: method \"pca\" pairs the examples, but there are {np} positive \
                     and {nn} negative ones"
                )));
            }
            let u = top_component(np, d, &paired_differences(np, d, &p, &q))?;
            // Oriented towards the positive examples, as long as the mean difference along it.
            let along = dot(&u, &diff);
            u.iter().map(|x| x * along).collect()
        }
        Method::Probe => crate::probes::binary_weights(d, &p, &q)?,
    };
    Ok(v.into_iter().map(|x| x as f32).collect())
}

fn paired_differences(n: usize, d: usize, p: &[f64], q: &[f64]) -> Vec<f64> {
    (0..n * d).map(|i| p[i] - q[i]).collect()
}

/// The first principal component (uncentered: the top right singular vector) of the rows of
/// `x` `[n, d]`, through the `[n, n]` Gram matrix, which is small when `n << d`.
fn top_component(n: usize, d: usize, x: &[f64]) -> Result<Vec<f64>> {
    let m = DMatrix::from_row_slice(n, d, x);
    let gram = &m * m.transpose();
    let eig = SymmetricEigen::new(gram);
    let (best, _) =
        eig.eigenvalues
            .iter()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, &l)| if l > b.1 { (i, l) } else { b },
            );
    let u = eig.eigenvectors.column(best);
    let v = m.transpose() * u;
    let norm = v.norm();
    if norm.is_nan() || norm <= 0.0 {
        return Err(Error::Invalid(
            "direction: the paired differences are all zero".into(),
        ));
    }
    Ok(v.iter().map(|x| x / norm).collect())
}

/// The L2 norm of a vector.
pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(rows: &[[f32; 3]]) -> Array {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Array::from_slice(&flat, &[rows.len() as i32, 3])
    }

    #[test]
    fn mean_difference() {
        let p = arr(&[[2.0, 0.0, 1.0], [4.0, 0.0, 1.0]]);
        let q = arr(&[[0.0, 1.0, 1.0]]);
        let v = compute(Method::MeanDiff, &p, &q).unwrap();
        assert_eq!(v, vec![3.0, -1.0, 0.0]);
    }

    #[test]
    fn pca_finds_the_shared_difference_with_the_positive_sign() {
        let p = arr(&[[1.0, 0.1, 0.0], [2.0, -0.1, 5.0], [3.0, 0.0, -1.0]]);
        let q = arr(&[[0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, -1.0]]);
        let v = compute(Method::Pca, &p, &q).unwrap();
        assert!(v[0] > 0.99, "{v:?}");
        assert!(compute(Method::Pca, &p, &arr(&[[0.0; 3]])).is_err());
    }

    #[test]
    fn probe_weights_separate_the_groups() {
        let p = arr(&[[1.0, 0.3, 0.0], [1.2, -0.2, 1.0], [0.9, 0.1, -1.0]]);
        let q = arr(&[[-1.0, 0.2, 0.0], [-1.1, -0.1, 1.0], [-0.8, 0.0, -1.0]]);
        let v = compute(Method::Probe, &p, &q).unwrap();
        assert!(
            v[0] > 0.0 && v[0].abs() > v[1].abs() && v[0].abs() > v[2].abs(),
            "{v:?}"
        );
    }
}
