//! The `Tensor` value: an MLX array with arithmetic, indexing, reductions, conversions to and from
//! Rhai arrays, and safetensors files.
//!
//! Every operation checks shapes first and reports a mismatch naming both shapes, so MLX only
//! sees operations it can do. Results of whole-tensor reductions (`norm(t)`, `sum(t)`, a dot
//! product of two vectors) are plain numbers; everything else stays a `Tensor`.

use mlx_rs::{Array, Dtype};
use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, FuncRegistration, FLOAT, INT};

use super::{context, RhaiResult};
use crate::arrays::{
    broadcast_shapes, check_fits, dtype_name, fmt_number, fmt_shape, read_safetensors,
    write_safetensors,
};
use crate::{Error, Result};

/// An n-dimensional array of numbers (an MLX array). Cloning a Tensor shares its data.
#[derive(Clone)]
pub struct Tensor {
    array: Array,
}

impl Tensor {
    /// Wraps an MLX array.
    pub fn new(array: Array) -> Self {
        Tensor { array }
    }

    /// The MLX array.
    pub fn array(&self) -> &Array {
        &self.array
    }

    /// The MLX array, by value.
    pub fn into_array(self) -> Array {
        self.array
    }

    pub fn shape(&self) -> &[i32] {
        self.array.shape()
    }

    pub fn ndim(&self) -> usize {
        self.array.ndim()
    }

    /// The dtype as users write it: "float32", "bfloat16", "int32", ...
    pub fn dtype_name(&self) -> &'static str {
        dtype_name(self.array.dtype())
    }

    /// Every element as f32, in row-major order (evaluates the array).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        crate::arrays::to_f32_vec(&self.array)
    }

    /// The one value of a tensor with a single element, as f64.
    pub fn scalar(&self) -> Result<f64> {
        if self.array.size() != 1 {
            return Err(Error::Invalid(format!(
                "expected a single value, got a tensor of shape {}",
                fmt_shape(self.shape())
            )));
        }
        Ok(f32_to_f64(self.to_f32_vec()?[0]))
    }

    /// `Tensor[2, 3] float32` followed by a few values, on one line.
    pub fn summary(&self) -> String {
        self.describe(false)
    }

    /// As [`Tensor::summary`], with one row per line for 2 or more dimensions (how the REPL
    /// shows a Tensor result).
    pub fn pretty(&self) -> String {
        self.describe(true)
    }

    fn describe(&self, multiline: bool) -> String {
        let head = format!("Tensor{} {}", fmt_shape(self.shape()), self.dtype_name());
        let sep = if multiline && self.ndim() >= 2 {
            "\n"
        } else {
            " "
        };
        match self.preview(multiline) {
            Ok(values) => format!("{head}{sep}{values}"),
            Err(e) => format!("{head} <{e}>"),
        }
    }

    /// Up to 3 leading and 3 trailing values along each axis, numpy style.
    fn preview(&self, multiline: bool) -> Result<String> {
        const EDGE: i32 = 3;
        let shape = self.shape().to_vec();
        let mut a = self.array.clone();
        let mut elided = vec![false; shape.len()];
        for (axis, &d) in shape.iter().enumerate() {
            if d > 2 * EDGE {
                let idx: Vec<i32> = (0..EDGE).chain(d - EDGE..d).collect();
                a = a.take_axis(Array::from_slice(&idx, &[2 * EDGE]), axis as i32)?;
                elided[axis] = true;
            }
        }
        let values = Tensor::new(a).to_f32_vec()?;
        let kept: Vec<usize> = shape
            .iter()
            .zip(&elided)
            .map(|(&d, &e)| if e { 2 * EDGE as usize } else { d as usize })
            .collect();
        let mut out = String::new();
        let layout = Layout {
            edge: EDGE as usize,
            multiline,
        };
        layout.write(&mut out, &values, &kept, &elided, 0);
        Ok(out)
    }
}

struct Layout {
    edge: usize,
    multiline: bool,
}

impl Layout {
    fn write(
        &self,
        out: &mut String,
        values: &[f32],
        shape: &[usize],
        elided: &[bool],
        depth: usize,
    ) {
        let Some((&n, rest)) = shape.split_first() else {
            out.push_str(&fmt_number(values.first().copied().unwrap_or(f32::NAN)));
            return;
        };
        let sep = if self.multiline && !rest.is_empty() {
            format!(",\n{}", " ".repeat(depth + 1))
        } else {
            ", ".to_string()
        };
        let stride: usize = rest.iter().product();
        out.push('[');
        for i in 0..n {
            if i > 0 {
                out.push_str(&sep);
            }
            if elided[0] && i == self.edge {
                out.push_str("...");
                out.push_str(&sep);
            }
            let chunk = &values[i * stride..(i + 1) * stride];
            self.write(out, chunk, rest, &elided[1..], depth + 1);
        }
        out.push(']');
    }
}

/// The f64 a person expects from an f32: `0.1f32` becomes `0.1`, not `0.10000000149011612`.
pub fn f32_to_f64(x: f32) -> f64 {
    if x.is_finite() {
        x.to_string().parse().unwrap_or(x as f64)
    } else {
        x as f64
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::Float16 | Dtype::Float32 | Dtype::Float64 | Dtype::Bfloat16
    )
}

/// An axis given by a script (negative counts from the end), checked against `ndim`.
fn check_axis(t: &Tensor, axis: INT, verb: &str) -> Result<i32> {
    let n = t.ndim() as INT;
    let a = if axis < 0 { axis + n } else { axis };
    if n == 0 || !(0..n).contains(&a) {
        return Err(Error::Invalid(format!(
            "{verb}: axis {axis} is out of range for a tensor of shape {}",
            fmt_shape(t.shape())
        )));
    }
    Ok(a as i32)
}

/// A shape given by a script: an array of non-negative integers.
fn shape_arg(shape: &RhaiArray, verb: &str) -> Result<Vec<i32>> {
    shape
        .iter()
        .map(|d| match d.as_int() {
            Ok(n) if (0..=i32::MAX as INT).contains(&n) => Ok(n as i32),
            _ => Err(Error::Invalid(format!(
                "{verb}: a shape is an array of non-negative integers, got {}",
                super::display::inline(&Dynamic::from_array(shape.clone()))
            ))),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Arithmetic

#[derive(Clone, Copy)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    const ALL: [Op; 4] = [Op::Add, Op::Sub, Op::Mul, Op::Div];

    fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
        }
    }

    fn apply(self, a: &Array, b: &Array) -> Result<Array> {
        Ok(match self {
            Op::Add => a.add(b)?,
            Op::Sub => a.subtract(b)?,
            Op::Mul => a.multiply(b)?,
            Op::Div => a.divide(b)?,
        })
    }
}

fn tensor_op(op: Op, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let Some(shape) = broadcast_shapes(a.shape(), b.shape()) else {
        return Err(Error::Invalid(format!(
            "shape mismatch: {} {} {} (shapes must be equal or broadcast)",
            fmt_shape(a.shape()),
            op.symbol(),
            fmt_shape(b.shape())
        )));
    };
    check_fits(&shape, Dtype::Float32)?;
    Ok(Tensor::new(op.apply(&a.array, &b.array)?))
}

/// A number as a 0-d array that keeps `like`'s dtype where that loses nothing: a float tensor
/// stays in its float type, an integer tensor stays integer with an integer.
fn scalar_like(x: Dynamic, like: &Tensor) -> Result<Array> {
    let d = like.array.dtype();
    if let Ok(i) = x.as_int() {
        if !is_float(d) && i32::try_from(i).is_ok() {
            return Ok(Array::from_int(i as i32).as_dtype(d)?);
        }
        let s = Array::from_f32(i as f32);
        return Ok(if is_float(d) { s.as_dtype(d)? } else { s });
    }
    let x = x
        .as_float()
        .map_err(|t| Error::Invalid(format!("expected a number, got {t}")))?;
    let s = Array::from_f32(x as f32);
    Ok(if is_float(d) { s.as_dtype(d)? } else { s })
}

fn with_number(op: Op, t: &Tensor, x: Dynamic, number_first: bool) -> Result<Tensor> {
    let s = scalar_like(x, t)?;
    let r = if number_first {
        op.apply(&s, &t.array)?
    } else {
        op.apply(&t.array, &s)?
    };
    Ok(Tensor::new(r))
}

/// `+ - * /` between tensors (broadcasting) and with numbers in either order, and unary minus.
fn register_arithmetic(engine: &mut Engine) {
    for op in Op::ALL {
        let reg = || FuncRegistration::new(op.symbol());
        reg().register_into_engine(engine, move |a: Tensor, b: Tensor| -> RhaiResult<Tensor> {
            Ok(tensor_op(op, &a, &b)?)
        });
        reg().register_into_engine(engine, move |a: Tensor, x: INT| -> RhaiResult<Tensor> {
            Ok(with_number(op, &a, x.into(), false)?)
        });
        reg().register_into_engine(engine, move |x: INT, b: Tensor| -> RhaiResult<Tensor> {
            Ok(with_number(op, &b, x.into(), true)?)
        });
        reg().register_into_engine(engine, move |a: Tensor, x: FLOAT| -> RhaiResult<Tensor> {
            Ok(with_number(op, &a, x.into(), false)?)
        });
        reg().register_into_engine(engine, move |x: FLOAT, b: Tensor| -> RhaiResult<Tensor> {
            Ok(with_number(op, &b, x.into(), true)?)
        });
    }
    FuncRegistration::new("-").register_into_engine(engine, |a: Tensor| -> RhaiResult<Tensor> {
        Ok(Tensor::new(a.array.negative().map_err(Error::from)?))
    });
}

// ---------------------------------------------------------------------------------------------
// Conversions

/// The most dimensions `tensor(array)` accepts.
const MAX_DIMS: usize = 32;

/// Nested Rhai arrays of numbers to an f32 tensor; ragged nesting is an error.
pub fn from_rhai(value: &Dynamic) -> Result<Tensor> {
    let mut shape = Vec::new();
    let mut probe = value.clone();
    while let Some(a) = probe.clone().try_cast::<RhaiArray>() {
        if shape.len() == MAX_DIMS {
            return Err(Error::Invalid(format!(
                "tensor: arrays nested more than {MAX_DIMS} deep"
            )));
        }
        shape.push(a.len() as i32);
        match a.first() {
            Some(first) => probe = first.clone(),
            None => break,
        }
    }
    let mut data = Vec::with_capacity(shape.iter().map(|&d| d as usize).product());
    flatten(value, &shape, &mut Vec::new(), &mut data)?;
    Ok(Tensor::new(Array::from_slice(&data, &shape)))
}

fn flatten(value: &Dynamic, shape: &[i32], at: &mut Vec<usize>, out: &mut Vec<f32>) -> Result<()> {
    let where_ = || {
        if at.is_empty() {
            "the array".to_string()
        } else {
            let idx: Vec<String> = at.iter().map(|i| format!("[{i}]")).collect();
            format!("element {}", idx.join(""))
        }
    };
    match shape.split_first() {
        None => {
            let x = if let Ok(i) = value.as_int() {
                i as f32
            } else if let Ok(f) = value.as_float() {
                f as f32
            } else if value.is_array() {
                return Err(Error::Invalid(format!(
                    "tensor: ragged array: {} should be a number, got an array",
                    where_()
                )));
            } else {
                return Err(Error::Invalid(format!(
                    "tensor: {} should be a number, got {} {}",
                    where_(),
                    super::display::type_name(value),
                    super::display::inline(value)
                )));
            };
            out.push(x);
        }
        Some((&n, rest)) => {
            let Some(items) = value.read_lock::<RhaiArray>() else {
                return Err(Error::Invalid(format!(
                    "tensor: ragged array: {} should be an array of length {n}, got {} {}",
                    where_(),
                    super::display::type_name(value),
                    super::display::inline(value)
                )));
            };
            if items.len() != n as usize {
                return Err(Error::Invalid(format!(
                    "tensor: ragged array: {} has length {}, expected {n}",
                    where_(),
                    items.len()
                )));
            }
            for (i, item) in items.iter().enumerate() {
                at.push(i);
                flatten(item, rest, at, out)?;
                at.pop();
            }
        }
    }
    Ok(())
}

/// A tensor as nested Rhai arrays of floats (a 0-d tensor as a float).
pub fn to_rhai(t: &Tensor) -> Result<Dynamic> {
    let values = t.to_f32_vec()?;
    fn build(values: &[f32], shape: &[i32]) -> Dynamic {
        match shape.split_first() {
            None => Dynamic::from_float(f32_to_f64(values[0])),
            Some((&n, rest)) => {
                let stride: usize = rest.iter().map(|&d| d as usize).product();
                let items = (0..n as usize)
                    .map(|i| build(&values[i * stride..(i + 1) * stride], rest))
                    .collect::<RhaiArray>();
                Dynamic::from_array(items)
            }
        }
    }
    Ok(build(&values, t.shape()))
}

// ---------------------------------------------------------------------------------------------
// Script functions

fn reduce_all(t: &Tensor, mean: bool) -> Result<f64> {
    let a = t.array.as_dtype(Dtype::Float32)?;
    let r = if mean { a.mean(None)? } else { a.sum(None)? };
    Tensor::new(r).scalar()
}

fn l2_last_axis(a: &Array) -> Result<Array> {
    Ok(a.square()?.sum_axis(-1, true)?.sqrt()?)
}

fn normalized(t: &Tensor) -> Result<Array> {
    if t.ndim() == 0 {
        return Err(Error::Invalid(
            "normalize: a 0-dimensional tensor has no direction".into(),
        ));
    }
    let a = t.array.as_dtype(Dtype::Float32)?;
    let n = mlx_rs::ops::maximum(l2_last_axis(&a)?, Array::from_f32(1e-12))?;
    Ok(a.divide(n)?)
}

/// A Tensor result, or a number when the result has no dimensions left.
fn tensor_or_number(a: Array) -> Result<Dynamic> {
    let t = Tensor::new(a);
    if t.ndim() == 0 {
        Ok(Dynamic::from_float(t.scalar()?))
    } else {
        Ok(Dynamic::from(t))
    }
}

fn dot_impl(a: &Tensor, b: &Tensor) -> Result<Dynamic> {
    let (sa, sb) = (a.shape(), b.shape());
    let mismatch = || {
        Error::Invalid(format!(
            "dot: shape mismatch: {} and {} (the last axis of the first must match {} of the second)",
            fmt_shape(sa),
            fmt_shape(sb),
            if sb.len() == 1 { "the length" } else { "the first axis" }
        ))
    };
    if sa.is_empty() || sb.is_empty() || sb.len() > 2 {
        return Err(Error::Invalid(format!(
            "dot: takes tensors of 1 or more dimensions (the second at most 2), got {} and {}",
            fmt_shape(sa),
            fmt_shape(sb)
        )));
    }
    let inner_b = sb[0];
    if sa[sa.len() - 1] != inner_b {
        return Err(mismatch());
    }
    let out: Vec<i32> = sa[..sa.len() - 1].iter().chain(&sb[1..]).copied().collect();
    check_fits(&out, Dtype::Float32)?;
    tensor_or_number(a.array.matmul(&b.array)?)
}

pub fn cosine_impl(a: &Tensor, b: &Tensor) -> Result<Dynamic> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.is_empty()
        || sb.is_empty()
        || sa.last() != sb.last()
        || broadcast_shapes(sa, sb).is_none()
    {
        return Err(Error::Invalid(format!(
            "cosine: shape mismatch: {} and {} (the last axes must match and the rest broadcast)",
            fmt_shape(sa),
            fmt_shape(sb)
        )));
    }
    let c = normalized(a)?
        .multiply(normalized(b)?)?
        .sum_axis(-1, None)?;
    tensor_or_number(c)
}

#[export_module]
mod tensor_functions {
    use super::*;

    pub type Tensor = super::Tensor;

    /// The shape, as an array of integers.
    ///
    /// Example: `zeros([2, 3]).shape  // [2, 3]`
    #[rhai_fn(get = "shape", pure)]
    pub fn shape(t: &mut Tensor) -> RhaiArray {
        t.shape()
            .iter()
            .map(|&d| Dynamic::from_int(d as INT))
            .collect()
    }

    /// The element type, e.g. "float32", "bfloat16", "int32".
    ///
    /// Example: `zeros([2]).dtype  // "float32"`
    #[rhai_fn(get = "dtype", pure)]
    pub fn dtype(t: &mut Tensor) -> String {
        t.dtype_name().to_string()
    }

    /// The i-th entry along the first axis (negative counts from the end): a Tensor, or a
    /// number when `t` has one dimension.
    ///
    /// Example: `tensor([[1, 2], [3, 4]])[-1]  // Tensor[2] [3, 4]`
    #[rhai_fn(index_get, pure, return_raw)]
    pub fn index(t: &mut Tensor, i: INT) -> RhaiResult<Dynamic> {
        let Some(&n) = t.shape().first() else {
            return Err(Error::Invalid("cannot index a 0-dimensional tensor".into()).into());
        };
        let k = if i < 0 { i + n as INT } else { i };
        if !(0..n as INT).contains(&k) {
            return Err(Error::Invalid(format!(
                "index {i} is out of bounds for a tensor of shape {}",
                fmt_shape(t.shape())
            ))
            .into());
        }
        let row = t
            .array
            .take_axis(Array::from_int(k as i32), 0)
            .map_err(Error::from)?;
        Ok(tensor_or_number(row)?)
    }

    /// The length of the first axis.
    ///
    /// Example: `len(zeros([4, 2]))  // 4`
    #[rhai_fn(pure)]
    pub fn len(t: &mut Tensor) -> INT {
        t.shape().first().copied().unwrap_or(0) as INT
    }

    /// The L2 norm of all the elements, as a number.
    ///
    /// Example: `norm(tensor([3, 4]))  // 5.0`
    #[rhai_fn(pure, return_raw)]
    pub fn norm(t: &mut Tensor) -> RhaiResult<FLOAT> {
        let a = t.array.as_dtype(Dtype::Float32).map_err(Error::from)?;
        let n = a.square().and_then(|s| s.sum(None)).and_then(|s| s.sqrt());
        Ok(Tensor::new(n.map_err(Error::from)?).scalar()?)
    }

    /// Each vector along the last axis scaled to length 1 (zero vectors stay zero); float32.
    ///
    /// Example: `normalize(tensor([3, 4]))  // Tensor[2] float32 [0.6, 0.8]`
    #[rhai_fn(pure, return_raw)]
    pub fn normalize(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(normalized(t)?))
    }

    /// Dot product along the last axis of `a` and the first of `b`: two vectors give a number,
    /// a matrix `[n, d]` and a vector `[d]` give `[n]` (projections), two matrices a matrix.
    ///
    /// Example: `dot(tensor([1, 2]), tensor([3, 4]))  // 11.0`
    #[rhai_fn(return_raw)]
    pub fn dot(a: Tensor, b: Tensor) -> RhaiResult<Dynamic> {
        Ok(dot_impl(&a, &b)?)
    }

    /// Cosine similarity along the last axis: a number for two vectors, one value per row for
    /// a matrix `[n, d]` and a vector `[d]`.
    ///
    /// Example: `cosine(tensor([1, 0]), tensor([1, 1]))  // 0.7071`
    #[rhai_fn(name = "cosine", return_raw)]
    pub fn cosine(a: Tensor, b: Tensor) -> RhaiResult<Dynamic> {
        Ok(cosine_impl(&a, &b)?)
    }

    /// The mean over one axis (negative counts from the end), as a Tensor with that axis
    /// removed.
    ///
    /// Example: `mean(tensor([[1, 2], [3, 4]]), 0)  // Tensor[2] [2, 3]`
    #[rhai_fn(name = "mean", pure, return_raw)]
    pub fn mean_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        let ax = check_axis(t, axis, "mean")?;
        let a = t
            .array
            .as_dtype(Dtype::Float32)
            .and_then(|a| a.mean_axis(ax, None));
        Ok(Tensor::new(a.map_err(Error::from)?))
    }

    /// The mean of all the elements, as a number.
    ///
    /// Example: `mean(tensor([1, 2, 3, 4]))  // 2.5`
    #[rhai_fn(name = "mean", pure, return_raw)]
    pub fn mean_all(t: &mut Tensor) -> RhaiResult<FLOAT> {
        Ok(reduce_all(t, true)?)
    }

    /// The sum over one axis (negative counts from the end), as a Tensor with that axis removed.
    ///
    /// Example: `sum(tensor([[1, 2], [3, 4]]), -1)  // Tensor[2] [3, 7]`
    #[rhai_fn(name = "sum", pure, return_raw)]
    pub fn sum_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        let ax = check_axis(t, axis, "sum")?;
        Ok(Tensor::new(
            t.array.sum_axis(ax, None).map_err(Error::from)?,
        ))
    }

    /// The sum of all the elements, as a number.
    ///
    /// Example: `sum(tensor([1, 2, 3]))  // 6.0`
    #[rhai_fn(name = "sum", pure, return_raw)]
    pub fn sum_all(t: &mut Tensor) -> RhaiResult<FLOAT> {
        Ok(reduce_all(t, false)?)
    }

    /// The values as nested arrays of floats (a 0-d tensor as one float).
    ///
    /// Example: `to_array(zeros([2, 2]))  // [[0.0, 0.0], [0.0, 0.0]]`
    #[rhai_fn(pure, return_raw)]
    pub fn to_array(t: &mut Tensor) -> RhaiResult<Dynamic> {
        Ok(to_rhai(t)?)
    }

    /// A float32 tensor from nested arrays of numbers (every row the same length).
    ///
    /// Example: `tensor([[1, 2], [3, 4]])`
    #[rhai_fn(name = "tensor", return_raw)]
    pub fn tensor_from_array(values: RhaiArray) -> RhaiResult<Tensor> {
        Ok(from_rhai(&Dynamic::from_array(values))?)
    }

    /// A 0-dimensional float32 tensor holding one number.
    ///
    /// Example: `tensor(2.5)`
    #[rhai_fn(name = "tensor")]
    pub fn tensor_from_float(x: FLOAT) -> Tensor {
        Tensor::new(Array::from_f32(x as f32))
    }

    /// A 0-dimensional float32 tensor holding one number.
    ///
    /// Example: `tensor(3)`
    #[rhai_fn(name = "tensor")]
    pub fn tensor_from_int(x: INT) -> Tensor {
        Tensor::new(Array::from_f32(x as f32))
    }

    /// A float32 tensor of zeros.
    ///
    /// Example: `zeros([2, 768])`
    #[rhai_fn(return_raw)]
    pub fn zeros(shape: RhaiArray) -> RhaiResult<Tensor> {
        let shape = shape_arg(&shape, "zeros")?;
        check_fits(&shape, Dtype::Float32)?;
        let a = mlx_rs::ops::zeros_dtype(&shape, Dtype::Float32).map_err(Error::from)?;
        Ok(Tensor::new(a))
    }

    /// A float32 tensor of standard normal samples; the same seed gives the same values.
    ///
    /// Example: `randn([4, 768], 42)`
    #[rhai_fn(return_raw)]
    pub fn randn(shape: RhaiArray, seed: INT) -> RhaiResult<Tensor> {
        let shape = shape_arg(&shape, "randn")?;
        check_fits(&shape, Dtype::Float32)?;
        let key = mlx_rs::random::key(seed as u64).map_err(Error::from)?;
        let a = mlx_rs::random::normal::<f32>(&shape[..], None, None, &key).map_err(Error::from)?;
        Ok(Tensor::new(a))
    }

    /// Writes the tensor to a safetensors file (under the name "tensor"), atomically. A
    /// relative path is relative to the script's folder (the current folder in the REPL).
    ///
    /// Example: `save(v, "direction.safetensors")`
    #[rhai_fn(name = "save", return_raw)]
    pub fn save(ctx: NativeCallContext, t: Tensor, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("save", path)?;
        Ok(write_safetensors(&path, &[("tensor", t.array())], None)?)
    }

    /// Reads a tensor saved with `save` (or any safetensors file holding one tensor, or one
    /// named "tensor"). A relative path is relative to the script's folder.
    ///
    /// Example: `let v = load_tensor("direction.safetensors");`
    #[rhai_fn(return_raw)]
    pub fn load_tensor(ctx: NativeCallContext, path: &str) -> RhaiResult<Tensor> {
        let full = context(&ctx).read_path("load_tensor", path)?;
        let (mut tensors, _) = read_safetensors(&full)?;
        if let Some(i) = tensors.iter().position(|(n, _)| n == "tensor") {
            return Ok(Tensor::new(tensors.swap_remove(i).1));
        }
        match tensors.len() {
            1 => Ok(Tensor::new(tensors.remove(0).1)),
            0 => Err(Error::Invalid(format!("{path}: the file holds no tensor")).into()),
            _ => {
                let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
                Err(Error::Invalid(format!(
                    "{path}: the file holds several tensors ({}); load_tensor reads a file with one",
                    names.join(", ")
                ))
                .into())
            }
        }
    }

    /// `Tensor[shape] dtype` and a few values.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(t: &mut Tensor) -> String {
        t.summary()
    }
}

/// Registers `Tensor` and its functions.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Tensor>("Tensor");
    engine.register_global_module(exported_module!(tensor_functions).into());
    register_arithmetic(engine);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(f32_to_f64(0.1), 0.1);
    }
}
