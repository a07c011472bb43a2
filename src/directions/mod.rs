//! Directions in activation space: a [`Direction`] (a float32 `[d]` vector with the layer and
//! point it was read at) computed from two groups of activations (`[n, d]` each) by the
//! difference of means, the first principal component of paired differences, or the weights
//! of a logistic probe (see [`crate::probes`]), oriented so that the positive group projects
//! higher; steering a model along one ([`steer`]); and their files ([`files`]: one direction,
//! a named library, a llama.cpp control vector).

use mlx_rs::{Array, Dtype};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::arrays::{fmt_number, to_f32_vec};
use crate::capture::{capture, Captured, Positions};
use crate::error::{Error, Result};
use crate::hooks::{Hook, HookName};
use crate::interventions::{point_widths, Intervention, Op, Window};
use crate::model::Model;

pub mod files;

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

/// A direction in activation space at one layer and point.
#[derive(Clone)]
pub struct Direction {
    /// float32 `[d]`
    pub vector: Array,
    pub layer: usize,
    /// The point within the block, e.g. "hook_resid_post".
    pub point: String,
    pub method: String,
    /// Number of examples it was computed from (positive + negative).
    pub n: usize,
    /// The model it was computed on, and its architecture.
    pub model: String,
    pub arch: String,
    /// Length of the vector before normalizing.
    pub norm: f64,
}

impl Direction {
    /// One line for printing.
    pub fn summary(&self) -> String {
        format!(
            "Direction({} at blocks.{}.{}, d={}, n={}, norm {})",
            self.method,
            self.layer,
            self.point,
            self.vector.shape().first().copied().unwrap_or(0),
            self.n,
            fmt_number(self.norm as f32)
        )
    }

    /// The hook point at `layer`.
    pub fn hook_at(&self, layer: usize, n_layers: usize) -> Result<HookName> {
        HookName::parse(&format!("blocks.{layer}.{}", self.point), n_layers)
    }

    /// A random direction (normal, seeded) at the same layer and point, with the same norm.
    pub fn random_like(&self, seed: u64) -> Result<Direction> {
        let d = self.vector.shape()[0];
        let key = mlx_rs::random::key(seed)?;
        let r = mlx_rs::random::normal::<f32>(&[d], None, None, &key)?;
        let target = norm(&to_f32_vec(&self.vector)?);
        let scale = target / norm(&to_f32_vec(&r)?).max(1e-12);
        Ok(Direction {
            vector: r.multiply(Array::from_f32(scale))?,
            layer: self.layer,
            point: self.point.clone(),
            method: "random".into(),
            n: 0,
            model: self.model.clone(),
            arch: self.arch.clone(),
            norm: target as f64,
        })
    }
}

/// How a Direction is computed: the method, which positions of each input, the capture's
/// batch size, and whether the vector is normalized to length 1.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    pub method: Method,
    pub positions: Positions,
    pub batch_size: usize,
    pub normalize: bool,
}

impl Default for Recipe {
    /// The difference of means at the last token, batches of 32, normalized.
    fn default() -> Self {
        Recipe {
            method: Method::MeanDiff,
            positions: Positions::Last,
            batch_size: 32,
            normalize: true,
        }
    }
}

impl Recipe {
    /// The Direction separating `p` from `q` (activations `[n, ...]` each, of `m`) at `layer`
    /// and `point`.
    pub fn build(
        &self,
        m: &Model,
        p: &Array,
        q: &Array,
        layer: usize,
        point: &str,
    ) -> Result<Direction> {
        let n = (p.shape()[0] + q.shape()[0]) as usize;
        let (v, raw) = self.vector(p, q)?;
        Ok(self.assemble(m, v, raw, n, layer, point))
    }

    /// The vector separating `p` from `q` (normalized if the recipe says so) and its length
    /// before normalizing.
    fn vector(&self, p: &Array, q: &Array) -> Result<(Vec<f32>, f64)> {
        let flat = |a: &Array| -> Result<Array> { Ok(a.reshape(&[a.shape()[0], -1])?) };
        let (p, q) = (flat(p)?, flat(q)?);
        let v = compute(self.method, &p, &q)?;
        let raw = norm(&v) as f64;
        let v = if self.normalize && raw > 0.0 {
            v.iter().map(|x| x / raw as f32).collect()
        } else {
            v
        };
        Ok((v, raw))
    }

    /// The Direction of vector `v` (of length `raw` before normalizing) from `n` examples.
    fn assemble(
        &self,
        m: &Model,
        v: Vec<f32>,
        raw: f64,
        n: usize,
        layer: usize,
        point: &str,
    ) -> Direction {
        Direction {
            vector: Array::from_slice(&v, &[v.len() as i32]),
            layer,
            point: point.to_string(),
            method: self.method.name().into(),
            n,
            model: m.info.name.clone(),
            arch: m.info.arch.clone(),
            norm: raw,
        }
    }

    /// The Direction at `blocks.{layer}.{point}` separating the `positive` inputs (token ids)
    /// from the `negative` ones, each group captured on its own.
    pub fn direction(
        &self,
        m: &mut Model,
        positive: &[Vec<u32>],
        negative: &[Vec<u32>],
        layer: usize,
        point: &str,
    ) -> Result<Direction> {
        let hook = HookName::parse(&format!("blocks.{layer}.{point}"), m.n_layers())?;
        let p = self.activations(m, positive, hook)?;
        let q = self.activations(m, negative, hook)?;
        self.build(m, &p, &q, layer, point)
    }

    /// One Direction per layer at `point`, from a single capture of both groups.
    pub fn directions(
        &self,
        m: &mut Model,
        positive: &[Vec<u32>],
        negative: &[Vec<u32>],
        layers: &[usize],
        point: &str,
    ) -> Result<Vec<Direction>> {
        let n_layers = m.n_layers();
        let hooks = layers
            .iter()
            .map(|l| HookName::parse(&format!("blocks.{l}.{point}"), n_layers))
            .collect::<Result<Vec<_>>>()?;
        let rows: Vec<Vec<u32>> = positive.iter().chain(negative).cloned().collect();
        let c = capture(m, &rows, &hooks, self.positions, self.batch_size, true)?;
        let idx = |r: std::ops::Range<i32>| {
            let v: Vec<i32> = r.collect();
            Array::from_slice(&v, &[v.len() as i32])
        };
        let (np, n) = (positive.len() as i32, rows.len() as i32);
        let vector_at = |i: usize| -> Result<(Vec<f32>, f64)> {
            let h = &hooks[i];
            let Some(Captured::Stacked(a)) = c.entries.get(h) else {
                return Err(Error::Invalid(format!("directions: {h} was not captured")));
            };
            let p = a.take_axis(idx(0..np), 0)?;
            let q = a.take_axis(idx(np..n), 0)?;
            self.vector(&p, &q)
        };
        // In a group every rank holds the whole capture: each computes its share of the layers
        // and the ranks exchange the vectors.
        let vectors = match crate::distributed::data_parallel()? {
            Some(world) => shared_vectors(&world, layers.len(), vector_at)?,
            None => (0..layers.len())
                .map(vector_at)
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(vectors
            .into_iter()
            .zip(layers)
            .map(|((v, raw), &layer)| self.assemble(m, v, raw, n as usize, layer, point))
            .collect())
    }

    /// Activations `[n, ...]` of `rows` at `point`.
    fn activations(&self, m: &mut Model, rows: &[Vec<u32>], point: HookName) -> Result<Array> {
        let c = capture(m, rows, &[point], self.positions, self.batch_size, true)?;
        match c.entries.get(&point) {
            Some(Captured::Stacked(a)) => Ok(a.clone()),
            _ => Err(Error::Invalid(format!(
                "direction: {point} was not captured"
            ))),
        }
    }
}

/// `vector_at(i)` for every `i` in `0..n`, each rank of `world` computing its share of them
/// ([`crate::distributed::World::share`]) and the ranks exchanging the results bit for bit. A
/// rank whose computation fails still takes part, so every rank stops with the first error.
fn shared_vectors(
    world: &crate::distributed::World,
    n: usize,
    vector_at: impl Fn(usize) -> Result<(Vec<f32>, f64)>,
) -> Result<Vec<(Vec<f32>, f64)>> {
    let mine = world.share(n);
    let local = mine.map(&vector_at).collect::<Result<Vec<_>>>();
    // Postcard bytes, every number bit for bit: the vectors, or the rank's first error.
    let msg: std::result::Result<&[(Vec<f32>, f64)], String> =
        local.as_deref().map_err(|e| e.to_string());
    let msg = postcard::to_stdvec(&msg)
        .map_err(|e| Error::Invalid(format!("directions: cannot send the vectors: {e}")))?;
    let parts = world.all_gather_bytes(&msg)?;
    let mut out = Vec::with_capacity(n);
    for (rank, bytes) in parts.iter().enumerate() {
        // Truncated or garbled bytes are an error; postcard allocates no more than they hold.
        let theirs: std::result::Result<Vec<(Vec<f32>, f64)>, String> = postcard::from_bytes(bytes)
            .map_err(|e| {
                Error::Invalid(format!(
                    "directions: rank {rank}'s vectors did not arrive whole ({e})"
                ))
            })?;
        let theirs = match theirs {
            Ok(theirs) => theirs,
            Err(message) => {
                return Err(match local {
                    Err(e) if rank == world.rank() => e,
                    _ => Error::Invalid(message),
                })
            }
        };
        let want = world.share_of(rank, n).len();
        if theirs.len() != want {
            return Err(Error::Invalid(format!(
                "directions: rank {rank} did not send its share of {want} layers"
            )));
        }
        out.extend(theirs);
    }
    Ok(out)
}

/// What steering does along a direction (see [`crate::interventions::Op`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerMode {
    /// Adds `alpha` times the vector.
    Add,
    /// Removes the component along the vector.
    ProjectOut,
    /// Reflects the component along the vector, scaled by `alpha`.
    Reflect,
    /// Caps the projection on the vector at `tau`.
    Cap,
}

impl SteerMode {
    pub const NAMES: [&'static str; 4] = ["add", "project_out", "reflect", "cap"];

    pub fn parse(s: &str) -> Result<SteerMode> {
        match s {
            "add" => Ok(SteerMode::Add),
            "project_out" => Ok(SteerMode::ProjectOut),
            "reflect" => Ok(SteerMode::Reflect),
            "cap" => Ok(SteerMode::Cap),
            other => Err(Error::Invalid(format!(
                "unknown steering mode {other:?} (valid: \"add\", \"project_out\", \"reflect\", \"cap\")"
            ))),
        }
    }
}

/// How [`steer`] attaches a direction.
#[derive(Debug, Clone)]
pub struct Steering {
    pub alpha: f32,
    pub mode: SteerMode,
    /// The cap of mode `Cap`.
    pub tau: f32,
    /// The layers to steer at (negative from the end); `None` is the direction's own layer.
    pub layers: Option<Vec<i64>>,
    pub window: Window,
}

impl Default for Steering {
    /// Adds the direction once (alpha 1) at its own layer, at every position.
    fn default() -> Self {
        Steering {
            alpha: 1.0,
            mode: SteerMode::Add,
            tau: 0.0,
            layers: None,
            window: Window::All,
        }
    }
}

/// Attaches a steering intervention along `d` at its point, at each layer of `s`, on every
/// forward and generation step; nothing is attached unless every layer is valid. The hooks
/// count as steering: `m.hooks.clear_steering()` removes them.
pub fn steer(m: &mut Model, d: &Direction, s: &Steering) -> Result<()> {
    let n_layers = m.n_layers();
    let layers = s.layers.clone().unwrap_or_else(|| vec![d.layer as i64]);
    let mut ivs = Vec::new();
    for l in layers {
        let li = if l < 0 { l + n_layers as i64 } else { l };
        if !(0..n_layers as i64).contains(&li) {
            return Err(Error::Invalid(format!(
                "steer: layer {l} is out of range for a model with {n_layers} layers"
            )));
        }
        let point = d.hook_at(li as usize, n_layers)?;
        // A router point on a dense block would never fire: refuse it, naming the blocks that
        // have a router.
        m.check_point(&point).map_err(|e| match e {
            Error::Invalid(msg) => Error::Invalid(format!("steer: {msg}")),
            e => e,
        })?;
        let vector = d.vector.clone();
        let alpha = s.alpha;
        let op = match s.mode {
            SteerMode::Add => Op::Add { vector, alpha },
            SteerMode::ProjectOut => Op::ProjectOut { vector },
            SteerMode::Reflect => Op::Reflect { vector, alpha },
            SteerMode::Cap => Op::Cap { vector, tau: s.tau },
        };
        let iv = Intervention {
            point,
            op,
            window: s.window.clone(),
        };
        iv.check(&point_widths(&m.info, &point))
            .map_err(|e| match e {
                Error::Invalid(msg) => {
                    Error::Invalid(format!("steer: {msg} (model {})", m.info.name))
                }
                e => e,
            })?;
        ivs.push(iv);
    }
    for iv in ivs {
        let label = format!("steer {} ({} direction)", iv.label(), d.method);
        m.hooks.attach(Hook {
            name: iv.point,
            label,
            steering: true,
            func: iv.into_hook(),
        });
    }
    Ok(())
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
