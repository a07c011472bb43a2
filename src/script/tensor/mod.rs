//! The `Tensor` value: an MLX array with arithmetic, indexing, reductions, conversions to and from
//! Rhai arrays, and safetensors files.
//!
//! Every operation checks shapes first and reports a mismatch naming the shapes, so MLX only
//! sees operations it can do. Results of whole-tensor reductions (`norm(t)`, `sum(t)`, a dot
//! product of two vectors) are plain numbers; everything else stays a `Tensor`.
//!
//! `index.rs` holds indexing and slice assignment, `ops.rs` the NumPy-named operations (math,
//! comparisons, reductions, shapes, linear algebra, creation).

mod index;
mod ops;

use mlx_rs::{Array, Dtype};
use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, FLOAT, INT};

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
        let values: Vec<String> = leaves(&a)?.iter().map(fmt_leaf).collect();
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

/// One element as the summary shows it: `true`, `42`, `0.5`.
fn fmt_leaf(x: &Dynamic) -> String {
    if let Ok(f) = x.as_float() {
        fmt_number(f as f32)
    } else {
        x.to_string()
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
        values: &[String],
        shape: &[usize],
        elided: &[bool],
        depth: usize,
    ) {
        let Some((&n, rest)) = shape.split_first() else {
            out.push_str(values.first().map_or("nan", String::as_str));
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

/// The dtypes a script may ask for, by name (numpy's names, and mlxi's short float names).
const DTYPES: [(&str, Dtype); 14] = [
    ("bool", Dtype::Bool),
    ("uint8", Dtype::Uint8),
    ("uint16", Dtype::Uint16),
    ("uint32", Dtype::Uint32),
    ("uint64", Dtype::Uint64),
    ("int8", Dtype::Int8),
    ("int16", Dtype::Int16),
    ("int32", Dtype::Int32),
    ("int64", Dtype::Int64),
    ("float16", Dtype::Float16),
    ("float32", Dtype::Float32),
    ("bfloat16", Dtype::Bfloat16),
    ("f16", Dtype::Float16),
    ("f32", Dtype::Float32),
];

/// A dtype named by a script; an unknown name is an error listing the valid ones.
fn parse_dtype(name: &str, verb: &str) -> Result<Dtype> {
    let name = name.trim();
    if name == "bf16" {
        return Ok(Dtype::Bfloat16);
    }
    DTYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, d)| d)
        .ok_or_else(|| {
            let names: Vec<&str> = DTYPES.iter().map(|(n, _)| *n).collect();
            Error::Invalid(format!(
                "{verb}: unknown dtype \"{name}\"; valid: {}, bf16",
                names.join(", ")
            ))
        })
}

/// An axis given by a script (negative counts from the end), checked against `ndim` axes of a
/// tensor of shape `shape` (`ndim` is one more than its rank for verbs that insert an axis).
fn resolve_axis(verb: &str, axis: INT, ndim: usize, shape: &[i32]) -> Result<i32> {
    let n = ndim as INT;
    let a = if axis < 0 { axis + n } else { axis };
    if n == 0 || !(0..n).contains(&a) {
        return Err(Error::Invalid(format!(
            "{verb}: axis {axis} is out of range for a tensor of shape {}",
            fmt_shape(shape)
        )));
    }
    Ok(a as i32)
}

/// [`resolve_axis`] for an axis of `t`.
fn check_axis(t: &Tensor, axis: INT, verb: &str) -> Result<i32> {
    resolve_axis(verb, axis, t.ndim(), t.shape())
}

/// A shape mismatch, the one form every such error takes: `verb: shape mismatch: [2, 3] @ [4, 5]
/// (why)`. Operators (`+`, `>`, ...) have no verb; `joiner` goes between the shapes.
fn mismatch(verb: &str, shapes: &[&[i32]], joiner: &str, why: &str) -> Error {
    let shapes: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
    let verb = if verb.is_empty() {
        String::new()
    } else {
        format!("{verb}: ")
    };
    Error::Invalid(format!(
        "{verb}shape mismatch: {} ({why})",
        shapes.join(&format!(" {joiner} "))
    ))
}

/// The shape `shapes` broadcast to, checked to fit in memory; a mismatch names them all.
fn broadcast(verb: &str, shapes: &[&[i32]], joiner: &str) -> Result<Vec<i32>> {
    let mut out: Vec<i32> = Vec::new();
    for s in shapes {
        out = broadcast_shapes(&out, s)
            .ok_or_else(|| mismatch(verb, shapes, joiner, "shapes must be equal or broadcast"))?;
    }
    check_fits(&out, Dtype::Float32)?;
    Ok(out)
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

/// A number as a 0-d array that keeps `like`'s dtype where that loses nothing: a float tensor
/// stays in its float type, an integer tensor stays integer with an integer.
fn scalar_like(x: Dynamic, like: Dtype) -> Result<Array> {
    if let Ok(i) = x.as_int() {
        if !is_float(like) && like != Dtype::Bool && i32::try_from(i).is_ok() {
            return Ok(Array::from_int(i as i32).as_dtype(like)?);
        }
        let s = Array::from_f32(i as f32);
        return Ok(if is_float(like) { s.as_dtype(like)? } else { s });
    }
    if let Ok(b) = x.as_bool() {
        return Ok(Array::from_bool(b));
    }
    let x = x
        .as_float()
        .map_err(|t| Error::Invalid(format!("expected a number, got {t}")))?;
    let s = Array::from_f32(x as f32);
    Ok(if is_float(like) { s.as_dtype(like)? } else { s })
}

// ---------------------------------------------------------------------------------------------
// Conversions

/// The most dimensions `tensor(array)` accepts.
const MAX_DIMS: usize = 32;

/// Nested Rhai arrays of numbers to an f32 tensor; ragged nesting is an error.
pub fn from_rhai(value: &Dynamic) -> Result<Tensor> {
    from_rhai_as(value, Dtype::Float32)
}

/// Nested Rhai arrays of numbers (or bools) to a tensor of `dtype`; ragged nesting is an error,
/// and so is an integer that `dtype` cannot hold. Floats become integers by truncation, as in
/// numpy.
fn from_rhai_as(value: &Dynamic, dtype: Dtype) -> Result<Tensor> {
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
    let array = if is_float(dtype) {
        let data: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        Array::from_slice(&data, &shape)
    } else if dtype == Dtype::Bool {
        let data: Vec<bool> = data.iter().map(|&x| x != 0.0).collect();
        Array::from_slice(&data, &shape)
    } else {
        let (lo, hi) = int_range(dtype);
        let data = data
            .iter()
            .map(|&x| {
                let i = x.trunc();
                if i.is_finite() && (lo..=hi).contains(&i) {
                    Ok(i as i64)
                } else {
                    Err(Error::Invalid(format!(
                        "tensor: {x} does not fit in {}",
                        dtype_name(dtype)
                    )))
                }
            })
            .collect::<Result<Vec<i64>>>()?;
        Array::from_slice(&data, &shape)
    };
    Ok(Tensor::new(array.as_dtype(dtype)?))
}

/// The integers an integer dtype holds, as f64 bounds (int64 and uint64 as far as i64 goes).
fn int_range(d: Dtype) -> (f64, f64) {
    match d {
        Dtype::Uint8 => (0.0, u8::MAX as f64),
        Dtype::Uint16 => (0.0, u16::MAX as f64),
        Dtype::Uint32 => (0.0, u32::MAX as f64),
        Dtype::Uint64 => (0.0, i64::MAX as f64),
        Dtype::Int8 => (i8::MIN as f64, i8::MAX as f64),
        Dtype::Int16 => (i16::MIN as f64, i16::MAX as f64),
        Dtype::Int32 => (i32::MIN as f64, i32::MAX as f64),
        _ => (i64::MIN as f64, i64::MAX as f64),
    }
}

fn flatten(value: &Dynamic, shape: &[i32], at: &mut Vec<usize>, out: &mut Vec<f64>) -> Result<()> {
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
                i as f64
            } else if let Ok(f) = value.as_float() {
                f
            } else if let Ok(b) = value.as_bool() {
                f64::from(u8::from(b))
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

/// Every element as a script value, in row-major order: bools for a bool tensor, integers for
/// an integer one, floats otherwise (evaluates the array).
fn leaves(a: &Array) -> Result<Vec<Dynamic>> {
    if a.size() == 0 {
        return Ok(Vec::new());
    }
    let d = a.dtype();
    let read =
        |e: &dyn std::fmt::Display| Error::Invalid(format!("cannot read tensor values: {e}"));
    if is_float(d) {
        let v = crate::arrays::to_f32_vec(a)?;
        return Ok(v
            .iter()
            .map(|&x| Dynamic::from_float(f32_to_f64(x)))
            .collect());
    }
    let want = if d == Dtype::Bool { d } else { Dtype::Int64 };
    let a = a.as_dtype(want)?.contiguous()?;
    a.eval()?;
    if d == Dtype::Bool {
        let v = a.to_vec_exact::<bool>().map_err(|e| read(&e))?;
        Ok(v.into_iter().map(Dynamic::from_bool).collect())
    } else {
        let v = a.to_vec_exact::<i64>().map_err(|e| read(&e))?;
        Ok(v.into_iter().map(Dynamic::from_int).collect())
    }
}

/// Flat values as nested Rhai arrays of `shape` (a 0-d tensor as its one value).
fn nest(values: &[Dynamic], shape: &[i32]) -> Dynamic {
    match shape.split_first() {
        None => values.first().cloned().unwrap_or(Dynamic::UNIT),
        Some((&n, rest)) => {
            let stride: usize = rest.iter().map(|&d| d as usize).product();
            let items = (0..n as usize)
                .map(|i| nest(&values[i * stride..(i + 1) * stride], rest))
                .collect::<RhaiArray>();
            Dynamic::from_array(items)
        }
    }
}

/// A tensor as nested Rhai arrays of floats (a 0-d tensor as a float).
pub fn to_rhai(t: &Tensor) -> Result<Dynamic> {
    let values: Vec<Dynamic> = t
        .to_f32_vec()?
        .into_iter()
        .map(|x| Dynamic::from_float(f32_to_f64(x)))
        .collect();
    Ok(nest(&values, t.shape()))
}

/// A tensor as nested Rhai arrays of its own kind of value (bools, integers or floats).
fn to_list_impl(t: &Tensor) -> Result<Dynamic> {
    Ok(nest(&leaves(&t.array)?, t.shape()))
}

/// The one value of a single-element tensor as a bool, integer or float.
fn item_impl(t: &Tensor) -> Result<Dynamic> {
    if t.array.size() != 1 {
        return Err(Error::Invalid(format!(
            "item: expected a single value, got a tensor of shape {}",
            fmt_shape(t.shape())
        )));
    }
    Ok(leaves(&t.array)?.remove(0))
}

thread_local! {
    /// Set while a metric that autodiff goes through runs (see [`keeping_scalars`]).
    static KEEP_SCALARS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with results that have no axes left (`t[1][2]`, `sum(t)`) kept as 0-d Tensors
/// instead of numbers: inside a metric that gradients flow through, a number read to the host
/// would carry no gradient. `item(t)` still gives a number.
pub fn keeping_scalars<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEEP_SCALARS.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(KEEP_SCALARS.with(|k| k.replace(true)));
    f()
}

/// True inside [`keeping_scalars`].
pub(super) fn keep_scalars() -> bool {
    KEEP_SCALARS.with(|k| k.get())
}

/// A Tensor result, or a number (bool, integer or float, by dtype) when the result has no
/// dimensions left (a 0-d Tensor inside [`keeping_scalars`]).
fn tensor_or_number(a: Array) -> Result<Dynamic> {
    let t = Tensor::new(a);
    if t.ndim() == 0 && !keep_scalars() {
        item_impl(&t)
    } else {
        Ok(Dynamic::from(t))
    }
}

// ---------------------------------------------------------------------------------------------
// Script functions

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

fn dot_impl(a: &Tensor, b: &Tensor) -> Result<Dynamic> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.is_empty() || sb.is_empty() || sb.len() > 2 {
        return Err(Error::Invalid(format!(
            "dot: takes tensors of 1 or more dimensions (the second at most 2), got {} and {}",
            fmt_shape(sa),
            fmt_shape(sb)
        )));
    }
    if sa[sa.len() - 1] != sb[0] {
        let why = if sb.len() == 1 {
            "the last axis of the first must match the length of the second"
        } else {
            "the last axis of the first must match the first axis of the second"
        };
        return Err(mismatch("dot", &[sa, sb], "and", why));
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
        return Err(mismatch(
            "cosine",
            &[sa, sb],
            "and",
            "the last axes must match and the rest broadcast",
        ));
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

    /// The element type, e.g. "float32", "bfloat16", "int32", "bool".
    ///
    /// Example: `zeros([2]).dtype  // "float32"`
    #[rhai_fn(get = "dtype", pure)]
    pub fn dtype(t: &mut Tensor) -> String {
        t.dtype_name().to_string()
    }

    /// The number of dimensions.
    ///
    /// Example: `zeros([2, 3]).ndim  // 2`
    #[rhai_fn(get = "ndim", pure)]
    pub fn ndim(t: &mut Tensor) -> INT {
        t.ndim() as INT
    }

    /// The number of elements (numpy's `size`, torch's `numel()`).
    ///
    /// Example: `zeros([2, 3]).size  // 6`
    #[rhai_fn(get = "size", pure)]
    pub fn size(t: &mut Tensor) -> INT {
        t.array.size() as INT
    }

    /// The length of the first axis.
    ///
    /// Example: `len(zeros([4, 2]))  // 4`
    #[rhai_fn(pure)]
    pub fn len(t: &mut Tensor) -> INT {
        t.shape().first().copied().unwrap_or(0) as INT
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

    /// The values as nested arrays of floats (a 0-d tensor as one float), whatever the dtype.
    ///
    /// Example: `to_array(zeros([2, 2]))  // [[0.0, 0.0], [0.0, 0.0]]`
    #[rhai_fn(pure, return_raw)]
    pub fn to_array(t: &mut Tensor) -> RhaiResult<Dynamic> {
        Ok(to_rhai(t)?)
    }

    /// The values as nested arrays of the tensor's own kind: integers for an integer tensor,
    /// bools for a bool tensor, floats otherwise (torch's `tolist`).
    ///
    /// Example: `to_list(arange(3))  // [0, 1, 2]`
    #[rhai_fn(pure, return_raw)]
    pub fn to_list(t: &mut Tensor) -> RhaiResult<Dynamic> {
        Ok(to_list_impl(t)?)
    }

    /// The one value of a single-element tensor (any shape), as a bool, integer or float.
    ///
    /// Example: `item(tensor([[2.5]]))  // 2.5`
    #[rhai_fn(pure, return_raw)]
    pub fn item(t: &mut Tensor) -> RhaiResult<Dynamic> {
        Ok(item_impl(t)?)
    }

    /// The tensor converted to another dtype ("float32", "float16", "bfloat16", "int32",
    /// "int64", "bool", ...); floats become integers by truncation toward zero.
    ///
    /// Example: `astype(tensor([1.7, -1.7]), "int32")  // Tensor[2] int32 [1, -1]`
    #[rhai_fn(pure, return_raw)]
    pub fn astype(t: &mut Tensor, dtype: &str) -> RhaiResult<Tensor> {
        let d = parse_dtype(dtype, "astype")?;
        check_fits(t.shape(), d)?;
        Ok(Tensor::new(t.array.as_dtype(d).map_err(Error::from)?))
    }

    /// A float32 tensor from nested arrays of numbers (every row the same length).
    ///
    /// Example: `tensor([[1, 2], [3, 4]])`
    #[rhai_fn(name = "tensor", return_raw)]
    pub fn tensor_from_array(values: RhaiArray) -> RhaiResult<Tensor> {
        Ok(from_rhai(&Dynamic::from_array(values))?)
    }

    /// A tensor of the given dtype from nested arrays of numbers or bools; an integer that
    /// does not fit the dtype is an error.
    ///
    /// Example: `tensor([1, 2, 3], "int32")`
    #[rhai_fn(name = "tensor", return_raw)]
    pub fn tensor_with_dtype(values: RhaiArray, dtype: &str) -> RhaiResult<Tensor> {
        let d = parse_dtype(dtype, "tensor")?;
        Ok(from_rhai_as(&Dynamic::from_array(values), d)?)
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

    /// Writes several named tensors (a map name -> Tensor) to one safetensors file, atomically:
    /// e.g. an adapter's matrices. A relative path is relative to the script's folder.
    ///
    /// Example: `save_tensors(#{a: zeros([2, 3]), b: ones([3])}, "two.safetensors")`
    #[rhai_fn(return_raw)]
    pub fn save_tensors(ctx: NativeCallContext, tensors: rhai::Map, path: &str) -> RhaiResult<()> {
        let path = context(&ctx).write_path("save_tensors", path)?;
        let mut named = Vec::with_capacity(tensors.len());
        for (k, v) in &tensors {
            let t = v.clone().try_cast::<Tensor>().ok_or_else(|| {
                Error::Invalid(format!("save_tensors: the value for {k:?} is not a Tensor"))
            })?;
            named.push((k.to_string(), t.array().clone()));
        }
        let refs: Vec<(&str, &Array)> = named.iter().map(|(k, a)| (k.as_str(), a)).collect();
        Ok(write_safetensors(&path, &refs, None)?)
    }

    /// Every tensor of a safetensors file, as a map name -> Tensor (e.g. an adapter's
    /// matrices). A relative path is relative to the script's folder.
    ///
    /// Example: `let w = load_tensors("adapters.safetensors"); keys(w)`
    #[rhai_fn(return_raw)]
    pub fn load_tensors(ctx: NativeCallContext, path: &str) -> RhaiResult<rhai::Map> {
        let full = context(&ctx).read_path("load_tensors", path)?;
        let (tensors, _) = read_safetensors(&full)?;
        Ok(tensors
            .into_iter()
            .map(|(k, a)| (k.into(), Dynamic::from(Tensor::new(a))))
            .collect())
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
    index::register(engine);
    ops::register(engine);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(f32_to_f64(0.1), 0.1);
    }

    #[test]
    fn dtype_names_round_trip() {
        for (name, d) in DTYPES {
            assert_eq!(parse_dtype(name, "t").ok(), Some(d));
        }
        assert!(parse_dtype("float128", "t").is_err());
    }
}
