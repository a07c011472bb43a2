//! NumPy-named operations on Tensors, each one MLX operation (or a few): operators and
//! comparisons, elementwise math, reductions over axes, shapes, linear algebra, sorting, and
//! creation. Shapes and sizes from a script are checked before MLX sees them; errors name the
//! shapes involved.
//!
//! Families that share a signature (operators, elementwise functions, reductions) are tables
//! registered in a loop; the rest are ordinary plugin functions.

use std::collections::BTreeMap;

use mlx_rs::error::Result as MlxResult;
use mlx_rs::ops;
use mlx_rs::ops::indexing::{argmax, argmax_axis, argmin, argmin_axis, take_along_axis};
use mlx_rs::{Array, Dtype};
use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, FuncRegistration, Map, FLOAT, INT};

use super::index::slice_axis;
use super::{
    broadcast, check_axis, from_rhai_as, is_float, leaves, mismatch, parse_dtype, resolve_axis,
    scalar_like, shape_arg, tensor_or_number, Tensor,
};
use crate::arrays::{broadcast_shapes, check_fits, fmt_shape};
use crate::script::RhaiResult;
use crate::{Error, Result};

/// `///` doc-comment lines from a plain text, for functions registered from a table.
fn comments(text: &str) -> String {
    text.lines()
        .map(|l| format!("/// {l}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A registration with parameter names (the last entry is the return type) and a doc comment.
fn reg(name: &str, params: &[&str], doc: &str) -> FuncRegistration {
    let r = FuncRegistration::new(name).with_params_info(params);
    if doc.is_empty() {
        r
    } else {
        r.with_comments([comments(doc)])
    }
}

// ---------------------------------------------------------------------------------------------
// Operators and binary functions: tensors broadcast, numbers in either place

type BinaryFn = fn(&Array, &Array) -> MlxResult<Array>;

struct Binary {
    name: &'static str,
    apply: BinaryFn,
    doc: &'static str,
}

const BINARY: &[Binary] = &[
    Binary { name: "+", apply: |a, b| a.add(b), doc: "" },
    Binary { name: "-", apply: |a, b| a.subtract(b), doc: "" },
    Binary { name: "*", apply: |a, b| a.multiply(b), doc: "" },
    Binary { name: "/", apply: |a, b| a.divide(b), doc: "" },
    Binary { name: "%", apply: |a, b| a.remainder(b), doc: "" },
    Binary { name: "**", apply: |a, b| a.power(b), doc: "" },
    Binary { name: ">", apply: |a, b| a.gt(b), doc: "" },
    Binary { name: "<", apply: |a, b| a.lt(b), doc: "" },
    Binary { name: ">=", apply: |a, b| a.ge(b), doc: "" },
    Binary { name: "<=", apply: |a, b| a.le(b), doc: "" },
    Binary { name: "==", apply: |a, b| a.eq(b), doc: "" },
    Binary { name: "!=", apply: |a, b| a.ne(b), doc: "" },
    Binary { name: "&", apply: |a, b| a.logical_and(b), doc: "" },
    Binary { name: "|", apply: |a, b| a.logical_or(b), doc: "" },
    Binary {
        name: "pow",
        apply: |a, b| a.power(b),
        doc: "Elementwise power (also `t ** x`); tensors broadcast, numbers work on either side.\n\nExample: `pow(tensor([1, 2, 3]), 2)  // [1, 4, 9]`",
    },
    Binary {
        name: "maximum",
        apply: |a, b| ops::maximum(a, b),
        doc: "The elementwise larger of two tensors (or a tensor and a number), broadcasting.\n\nExample: `maximum(tensor([1, 5]), 3)  // [3, 5]`",
    },
    Binary {
        name: "minimum",
        apply: |a, b| ops::minimum(a, b),
        doc: "The elementwise smaller of two tensors (or a tensor and a number), broadcasting.\n\nExample: `minimum(tensor([1, 5]), 3)  // [1, 3]`",
    },
    Binary {
        name: "logical_and",
        apply: |a, b| a.logical_and(b),
        doc: "Elementwise and of two boolean tensors (also `a & b`), broadcasting.\n\nExample: `logical_and(t > 0, t < 1)`",
    },
    Binary {
        name: "logical_or",
        apply: |a, b| a.logical_or(b),
        doc: "Elementwise or of two boolean tensors (also `a | b`), broadcasting.\n\nExample: `logical_or(t < -1, t > 1)`",
    },
];

impl Binary {
    fn is_operator(&self) -> bool {
        !self.name.starts_with(|c: char| c.is_alphabetic())
    }

    fn run(&self, a: &Array, b: &Array) -> Result<Tensor> {
        let (verb, joiner) = if self.is_operator() {
            ("", self.name)
        } else {
            (self.name, "and")
        };
        broadcast(verb, &[a.shape(), b.shape()], joiner)?;
        Ok(Tensor::new((self.apply)(a, b)?))
    }

    /// `t op x` (or `x op t` when `number_first`).
    fn with_number(&self, t: &Tensor, x: Dynamic, number_first: bool) -> Result<Tensor> {
        let s = scalar_like(x, t.array.dtype())?;
        if number_first {
            self.run(&s, &t.array)
        } else {
            self.run(&t.array, &s)
        }
    }
}

fn register_binary(engine: &mut Engine, op: &'static Binary) {
    let r = |params: [&str; 3]| reg(op.name, &params, op.doc);
    r(["a: Tensor", "b: Tensor", "Tensor"])
        .register_into_engine(engine, move |a: Tensor, b: Tensor| -> RhaiResult<Tensor> {
            Ok(op.run(&a.array, &b.array)?)
        });
    r(["t: Tensor", "x: int", "Tensor"])
        .register_into_engine(engine, move |t: Tensor, x: INT| -> RhaiResult<Tensor> {
            Ok(op.with_number(&t, x.into(), false)?)
        });
    r(["x: int", "t: Tensor", "Tensor"])
        .register_into_engine(engine, move |x: INT, t: Tensor| -> RhaiResult<Tensor> {
            Ok(op.with_number(&t, x.into(), true)?)
        });
    r(["t: Tensor", "x: float", "Tensor"]).register_into_engine(
        engine,
        move |t: Tensor, x: FLOAT| -> RhaiResult<Tensor> {
            Ok(op.with_number(&t, x.into(), false)?)
        },
    );
    r(["x: float", "t: Tensor", "Tensor"]).register_into_engine(
        engine,
        move |x: FLOAT, t: Tensor| -> RhaiResult<Tensor> {
            Ok(op.with_number(&t, x.into(), true)?)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Elementwise functions of one tensor

type UnaryFn = fn(&Array) -> MlxResult<Array>;

struct Unary {
    name: &'static str,
    apply: UnaryFn,
    doc: &'static str,
}

const UNARY: &[Unary] = &[
    Unary { name: "-", apply: |a| a.negative(), doc: "" },
    Unary { name: "!", apply: |a| a.logical_not(), doc: "" },
    Unary {
        name: "exp",
        apply: |a| a.exp(),
        doc: "e to the power of each element.\n\nExample: `exp(tensor([0, 1]))  // [1, 2.718]`",
    },
    Unary {
        name: "log",
        apply: |a| a.log(),
        doc: "The natural logarithm of each element (numpy's `log`; Rhai's `log(x)` of a number is base 10).\n\nExample: `log(tensor([1, 100]))  // [0, 4.605]`",
    },
    Unary {
        name: "abs",
        apply: |a| a.abs(),
        doc: "The absolute value of each element.\n\nExample: `abs(tensor([-2, 3]))  // [2, 3]`",
    },
    Unary {
        name: "sqrt",
        apply: |a| a.sqrt(),
        doc: "The square root of each element.\n\nExample: `sqrt(tensor([4, 9]))  // [2, 3]`",
    },
    Unary {
        name: "square",
        apply: |a| a.square(),
        doc: "Each element squared.\n\nExample: `square(tensor([-2, 3]))  // [4, 9]`",
    },
    Unary {
        name: "sign",
        apply: |a| ops::sign(a),
        doc: "-1, 0 or 1 by the sign of each element.\n\nExample: `sign(tensor([-2, 0, 3]))  // [-1, 0, 1]`",
    },
    Unary {
        name: "floor",
        apply: |a| a.floor(),
        doc: "Each element rounded down.\n\nExample: `floor(tensor([1.5, -1.5]))  // [1, -2]`",
    },
    Unary {
        name: "ceil",
        apply: |a| ops::ceil(a),
        doc: "Each element rounded up.\n\nExample: `ceil(tensor([1.5, -1.5]))  // [2, -1]`",
    },
    Unary {
        name: "round",
        apply: |a| a.round(None),
        doc: "Each element rounded to the nearest integer, halves to even (numpy's `round`).\n\nExample: `round(tensor([0.4, 2.5]))  // [0, 2]`",
    },
    Unary {
        name: "sin",
        apply: |a| a.sin(),
        doc: "The sine of each element (radians).\n\nExample: `sin(tensor([0]))  // [0]`",
    },
    Unary {
        name: "cos",
        apply: |a| a.cos(),
        doc: "The cosine of each element (radians).\n\nExample: `cos(tensor([0]))  // [1]`",
    },
    Unary {
        name: "tanh",
        apply: |a| ops::tanh(a),
        doc: "The hyperbolic tangent of each element.\n\nExample: `tanh(tensor([0, 1]))  // [0, 0.7616]`",
    },
    Unary {
        name: "sigmoid",
        apply: |a| ops::sigmoid(a),
        doc: "1 / (1 + exp(-x)) of each element.\n\nExample: `sigmoid(tensor([0]))  // [0.5]`",
    },
    Unary {
        name: "relu",
        apply: |a| ops::maximum(a, Array::from_int(0)),
        doc: "max(x, 0) of each element.\n\nExample: `relu(tensor([-1, 2]))  // [0, 2]`",
    },
    Unary {
        name: "logical_not",
        apply: |a| a.logical_not(),
        doc: "Elementwise not of a boolean tensor (also `!t`).\n\nExample: `logical_not(t > 0)`",
    },
    Unary {
        name: "isnan",
        apply: |a| ops::is_nan(a),
        doc: "Whether each element is NaN, as a bool tensor.\n\nExample: `any(isnan(t))`",
    },
];

fn register_unary(engine: &mut Engine, op: &'static Unary) {
    reg(op.name, &["t: Tensor", "Tensor"], op.doc).register_into_engine(
        engine,
        move |t: Tensor| -> RhaiResult<Tensor> {
            Ok(Tensor::new((op.apply)(&t.array).map_err(Error::from)?))
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Reductions: whole tensor (a number), one axis, or an array of axes, with or without keepdims

type ReduceFn = fn(&Array, &[i32], bool) -> MlxResult<Array>;

struct Reduction {
    name: &'static str,
    /// Reduces over distinct, in-range axes, keeping them as length 1 when asked.
    apply: ReduceFn,
    /// Cast to float32 first (means, spreads, norms).
    float: bool,
    /// A whole-tensor result is a bool (`any`, `all`) rather than a number.
    logical: bool,
    whole_doc: &'static str,
    axis_doc: &'static str,
}

const REDUCTIONS: &[Reduction] = &[
    Reduction {
        name: "sum",
        apply: |a, ax, k| a.sum_axes(ax, k),
        float: false,
        logical: false,
        whole_doc: "The sum of all the elements, as a number.\n\nExample: `sum(tensor([1, 2, 3]))  // 6.0`",
        axis_doc: "The sum over an axis or an array of axes (negative counts from the end), as a Tensor with those axes removed, or kept as length 1 with `keepdims` true.\n\nExample: `sum(tensor([[1, 2], [3, 4]]), -1)  // Tensor[2] [3, 7]`",
    },
    Reduction {
        name: "mean",
        apply: |a, ax, k| a.mean_axes(ax, k),
        float: true,
        logical: false,
        whole_doc: "The mean of all the elements, as a number.\n\nExample: `mean(tensor([1, 2, 3, 4]))  // 2.5`",
        axis_doc: "The mean over an axis or an array of axes (negative counts from the end), as a float32 Tensor with those axes removed (kept as length 1 with `keepdims` true).\n\nExample: `mean(tensor([[1, 2], [3, 4]]), 0)  // Tensor[2] [2, 3]`",
    },
    Reduction {
        name: "max",
        apply: |a, ax, k| a.max_axes(ax, k),
        float: false,
        logical: false,
        whole_doc: "The largest element, as a number.\n\nExample: `max(tensor([1, 5, 2]))  // 5.0`",
        axis_doc: "The largest values over an axis or axes (values only: `argmax` gives the positions).\n\nExample: `max(tensor([[1, 5], [7, 2]]), 1)  // [5, 7]`",
    },
    Reduction {
        name: "min",
        apply: |a, ax, k| a.min_axes(ax, k),
        float: false,
        logical: false,
        whole_doc: "The smallest element, as a number.\n\nExample: `min(tensor([1, 5, 2]))  // 1.0`",
        axis_doc: "The smallest values over an axis or axes.\n\nExample: `min(tensor([[1, 5], [7, 2]]), 0)  // [1, 2]`",
    },
    Reduction {
        name: "prod",
        apply: |a, ax, k| a.prod_axes(ax, k),
        float: false,
        logical: false,
        whole_doc: "The product of all the elements, as a number.\n\nExample: `prod(tensor([2, 3, 4]))  // 24.0`",
        axis_doc: "The product over an axis or axes.\n\nExample: `prod(tensor([[1, 2], [3, 4]]), 1)  // [2, 12]`",
    },
    Reduction {
        name: "std",
        apply: |a, ax, k| ops::std_axes(a, ax, k, 0),
        float: true,
        logical: false,
        whole_doc: "The standard deviation of all the elements (population, ddof 0, as numpy; torch divides by n - 1), as a number.\n\nExample: `std(tensor([1, 3]))  // 1.0`",
        axis_doc: "The standard deviation (ddof 0) over an axis or axes.\n\nExample: `std(tensor([[1, 3], [2, 2]]), 1)  // [1, 0]`",
    },
    Reduction {
        name: "variance",
        apply: |a, ax, k| a.var_axes(ax, k, 0),
        float: true,
        logical: false,
        whole_doc: "The variance of all the elements (population, ddof 0), as a number: numpy's `var`, a name Rhai reserves.\n\nExample: `variance(tensor([1, 3]))  // 1.0`",
        axis_doc: "The variance (ddof 0) over an axis or axes.\n\nExample: `variance(tensor([[1, 3], [2, 2]]), 1)  // [1, 0]`",
    },
    Reduction {
        name: "norm",
        apply: |a, ax, k| a.square()?.sum_axes(ax, k)?.sqrt(),
        float: true,
        logical: false,
        whole_doc: "The L2 norm of all the elements, as a number.\n\nExample: `norm(tensor([3, 4]))  // 5.0`",
        axis_doc: "The L2 norm over an axis or axes: one norm per row with `norm(t, -1)`.\n\nExample: `norm(tensor([[3, 4], [6, 8]]), -1)  // [5, 10]`",
    },
    Reduction {
        name: "logsumexp",
        apply: |a, ax, k| a.logsumexp_axes(ax, k),
        float: true,
        logical: false,
        whole_doc: "log(sum(exp(t))) of all the elements, computed stably, as a number.\n\nExample: `logsumexp(tensor([0, 0]))  // 0.6931`",
        axis_doc: "log(sum(exp(t))) over an axis or axes, computed stably.\n\nExample: `logsumexp(logits, -1)`",
    },
    Reduction {
        name: "any",
        apply: |a, ax, k| a.any_axes(ax, k),
        float: false,
        logical: true,
        whole_doc: "Whether any element is true (non-zero).\n\nExample: `any(tensor([1, 2]) > 1)  // true`",
        axis_doc: "Whether any element is true over an axis or axes, as a bool Tensor.\n\nExample: `any(t > 0, -1)`",
    },
    Reduction {
        name: "all",
        apply: |a, ax, k| a.all_axes(ax, k),
        float: false,
        logical: true,
        whole_doc: "Whether every element is true (non-zero).\n\nExample: `all(tensor([1, 2]) > 1)  // false`",
        axis_doc: "Whether every element is true over an axis or axes, as a bool Tensor.\n\nExample: `all(t > 0, -1)`",
    },
];

/// An array of axes from a script: integers, in range, each named once.
fn axes_arg(t: &Tensor, axes: &RhaiArray, verb: &str) -> Result<Vec<i32>> {
    if axes.is_empty() {
        return Err(Error::Invalid(format!(
            "{verb}: the array of axes is empty"
        )));
    }
    let mut out = Vec::with_capacity(axes.len());
    for a in axes {
        let axis = a.as_int().map_err(|_| {
            Error::Invalid(format!(
                "{verb}: an axis is an integer, got {}",
                crate::script::display::inline(a)
            ))
        })?;
        let ax = check_axis(t, axis, verb)?;
        if out.contains(&ax) {
            return Err(Error::Invalid(format!(
                "{verb}: axis {axis} is named twice in {}",
                crate::script::display::inline(&Dynamic::from_array(axes.clone()))
            )));
        }
        out.push(ax);
    }
    Ok(out)
}

impl Reduction {
    fn input(&self, t: &Tensor) -> Result<Array> {
        let d = t.array.dtype();
        Ok(if self.float {
            t.array.as_dtype(Dtype::Float32)?
        } else if d == Dtype::Bool && !self.logical {
            t.array.as_dtype(Dtype::Int32)?
        } else {
            t.array.clone()
        })
    }

    fn over(&self, t: &Tensor, axes: &[i32], keepdims: bool) -> Result<Tensor> {
        Ok(Tensor::new((self.apply)(&self.input(t)?, axes, keepdims)?))
    }

    fn whole(&self, t: &Tensor) -> Result<Dynamic> {
        let all: Vec<i32> = (0..t.ndim() as i32).collect();
        let r = Tensor::new((self.apply)(&self.input(t)?, &all, false)?);
        if super::keep_scalars() && !self.logical {
            Ok(Dynamic::from(r))
        } else if self.logical {
            super::item_impl(&r)
        } else {
            Ok(Dynamic::from_float(r.scalar()?))
        }
    }
}

fn register_reduction(engine: &mut Engine, r: &'static Reduction) {
    let out = if r.logical { "bool" } else { "float" };
    reg(r.name, &["t: Tensor", out], r.whole_doc)
        .register_into_engine(engine, move |t: Tensor| -> RhaiResult<Dynamic> {
            Ok(r.whole(&t)?)
        });
    let axis = |params: &[&str]| reg(r.name, params, r.axis_doc);
    axis(&["t: Tensor", "axis: int", "Tensor"]).register_into_engine(
        engine,
        move |t: Tensor, a: INT| -> RhaiResult<Tensor> {
            Ok(r.over(&t, &[check_axis(&t, a, r.name)?], false)?)
        },
    );
    axis(&["t: Tensor", "axis: int", "keepdims: bool", "Tensor"]).register_into_engine(
        engine,
        move |t: Tensor, a: INT, keep: bool| -> RhaiResult<Tensor> {
            Ok(r.over(&t, &[check_axis(&t, a, r.name)?], keep)?)
        },
    );
    axis(&["t: Tensor", "axes: array", "Tensor"]).register_into_engine(
        engine,
        move |t: Tensor, axes: RhaiArray| -> RhaiResult<Tensor> {
            Ok(r.over(&t, &axes_arg(&t, &axes, r.name)?, false)?)
        },
    );
    axis(&["t: Tensor", "axes: array", "keepdims: bool", "Tensor"]).register_into_engine(
        engine,
        move |t: Tensor, axes: RhaiArray, keep: bool| -> RhaiResult<Tensor> {
            Ok(r.over(&t, &axes_arg(&t, &axes, r.name)?, keep)?)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers for the plugin functions below

/// An array of Tensors from a script (concat, stack, einsum); never empty.
fn tensors_arg(items: &RhaiArray, verb: &str) -> Result<Vec<Array>> {
    if items.is_empty() {
        return Err(Error::Invalid(format!(
            "{verb}: the array of tensors is empty"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.read_lock::<Tensor>()
                .map(|t| t.array.clone())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{verb}: element [{i}] should be a Tensor, got {} {}",
                        crate::script::display::type_name(x),
                        crate::script::display::inline(x)
                    ))
                })
        })
        .collect()
}

/// A Tensor or a number as an array; a number takes `like`'s dtype where it can.
fn operand(x: Dynamic, like: Dtype, verb: &str) -> Result<Array> {
    if let Some(t) = x.read_lock::<Tensor>() {
        return Ok(t.array.clone());
    }
    if x.is_int() || x.is_float() || x.is_bool() {
        return scalar_like(x, like);
    }
    Err(Error::Invalid(format!(
        "{verb}: expected a Tensor or a number, got {}",
        crate::script::display::type_name(&x)
    )))
}

fn int_arg(x: &Dynamic, what: &str, verb: &str) -> Result<INT> {
    x.as_int().map_err(|_| {
        Error::Invalid(format!(
            "{verb}: {what} should be an integer, got {}",
            crate::script::display::inline(x)
        ))
    })
}

fn number_arg(x: &Dynamic, what: &str, verb: &str) -> Result<f64> {
    x.as_float()
        .or_else(|_| x.as_int().map(|i| i as f64))
        .map_err(|_| {
            Error::Invalid(format!(
                "{verb}: {what} should be a number, got {}",
                crate::script::display::inline(x)
            ))
        })
}

/// A count from a script (a length, a number of parts) as i32, checked to be in `lo..=i32::MAX`.
fn count_arg(n: INT, lo: INT, what: &str, verb: &str) -> Result<i32> {
    if n < lo || n > i32::MAX as INT {
        return Err(Error::Invalid(format!(
            "{verb}: {what} must be at least {lo} (and at most {}), got {n}",
            i32::MAX
        )));
    }
    Ok(n as i32)
}

/// `reshape`'s shape: non-negative lengths and at most one -1, the product equal to `size`.
fn reshape_arg(t: &Tensor, shape: &RhaiArray) -> Result<Vec<i32>> {
    let bad = || {
        Error::Invalid(format!(
            "reshape: cannot reshape a tensor of shape {} ({} elements) into {}",
            fmt_shape(t.shape()),
            t.array.size(),
            crate::script::display::inline(&Dynamic::from_array(shape.clone()))
        ))
    };
    let mut dims = Vec::with_capacity(shape.len());
    let mut unknown = None;
    for (i, d) in shape.iter().enumerate() {
        match d.as_int() {
            Ok(-1) if unknown.is_none() => {
                unknown = Some(i);
                dims.push(1);
            }
            Ok(n) if (0..=i32::MAX as INT).contains(&n) => dims.push(n as i32),
            _ => return Err(bad()),
        }
    }
    let known: u128 = dims.iter().map(|&d| d as u128).product();
    let size = t.array.size() as u128;
    match unknown {
        Some(i) if known > 0 && size % known == 0 => dims[i] = (size / known) as i32,
        None if known == size => {}
        _ => return Err(bad()),
    }
    Ok(dims)
}

/// Whether `axes` name every axis of an `ndim`-dimensional tensor exactly once.
fn permutation(t: &Tensor, axes: &RhaiArray, verb: &str) -> Result<Vec<i32>> {
    let resolved = axes
        .iter()
        .map(|a| int_arg(a, "an axis", verb).and_then(|a| check_axis(t, a, verb)))
        .collect::<Result<Vec<i32>>>()?;
    let mut sorted = resolved.clone();
    sorted.sort_unstable();
    if sorted != (0..t.ndim() as i32).collect::<Vec<_>>() {
        return Err(Error::Invalid(format!(
            "{verb}: {} is not an ordering of the {} axes of a tensor of shape {}",
            crate::script::display::inline(&Dynamic::from_array(axes.clone())),
            t.ndim(),
            fmt_shape(t.shape())
        )));
    }
    Ok(resolved)
}

fn squeeze_axes(t: &Tensor, axes: &[i32]) -> Result<Tensor> {
    for &ax in axes {
        let n = t.shape()[ax as usize];
        if n != 1 {
            return Err(Error::Invalid(format!(
                "squeeze: axis {ax} has length {n}, not 1, in a tensor of shape {}",
                fmt_shape(t.shape())
            )));
        }
    }
    Ok(Tensor::new(t.array.squeeze_axes(axes)?))
}

fn concat_impl(items: &RhaiArray, axis: INT) -> Result<Tensor> {
    let arrays = tensors_arg(items, "concat")?;
    let first = arrays[0].shape();
    let ax = resolve_axis("concat", axis, first.len(), first)? as usize;
    let fits = |s: &[i32]| {
        s.len() == first.len()
            && s.iter()
                .zip(first)
                .enumerate()
                .all(|(i, (a, b))| i == ax || a == b)
    };
    if !arrays.iter().all(|a| fits(a.shape())) {
        let shapes: Vec<&[i32]> = arrays.iter().map(|a| a.shape()).collect();
        return Err(mismatch(
            "concat",
            &shapes,
            "and",
            &format!("every axis but {axis} must match"),
        ));
    }
    let mut out = first.to_vec();
    out[ax] = arrays.iter().map(|a| a.shape()[ax]).sum();
    check_fits(&out, Dtype::Float32)?;
    Ok(Tensor::new(ops::concatenate(&arrays, ax as i32)?))
}

fn stack_impl(items: &RhaiArray, axis: INT) -> Result<Tensor> {
    let arrays = tensors_arg(items, "stack")?;
    let first = arrays[0].shape();
    let ax = resolve_axis("stack", axis, first.len() + 1, first)?;
    if !arrays.iter().all(|a| a.shape() == first) {
        let shapes: Vec<&[i32]> = arrays.iter().map(|a| a.shape()).collect();
        return Err(mismatch(
            "stack",
            &shapes,
            "and",
            "the tensors must have one shape",
        ));
    }
    let mut out = first.to_vec();
    out.insert(ax as usize, arrays.len() as i32);
    check_fits(&out, Dtype::Float32)?;
    Ok(Tensor::new(ops::stack(&arrays, ax)?))
}

/// `split` at `cuts` along `axis` (numpy's `split`: pieces `[0:c0]`, `[c0:c1]`, ..., `[ck:]`).
fn split_at(t: &Tensor, cuts: &[INT], axis: INT) -> Result<RhaiArray> {
    let ax = check_axis(t, axis, "split")? as usize;
    let n = t.shape()[ax] as INT;
    let bounds: Vec<INT> = std::iter::once(0)
        .chain(cuts.iter().copied())
        .chain([n])
        .collect();
    bounds
        .windows(2)
        .map(|w| {
            Ok(Dynamic::from(Tensor::new(slice_axis(
                &t.array, ax, w[0], w[1],
            )?)))
        })
        .collect()
}

fn split_parts(t: &Tensor, parts: INT, axis: INT) -> Result<RhaiArray> {
    let ax = check_axis(t, axis, "split")? as usize;
    let n = t.shape()[ax] as INT;
    let parts = count_arg(parts, 1, "the number of parts", "split")? as INT;
    if n % parts != 0 {
        return Err(Error::Invalid(format!(
            "split: axis {axis} of length {n} does not divide into {parts} equal parts \
             (a tensor of shape {}); give the cut positions as an array instead",
            fmt_shape(t.shape())
        )));
    }
    let cuts: Vec<INT> = (1..parts).map(|k| k * n / parts).collect();
    split_at(t, &cuts, axis)
}

fn flatten_impl(t: &Tensor, start: INT, end: INT) -> Result<Tensor> {
    if t.ndim() == 0 {
        return Ok(Tensor::new(t.array.reshape(&[1])?));
    }
    let s = check_axis(t, start, "flatten")?;
    let e = check_axis(t, end, "flatten")?;
    if s > e {
        return Err(Error::Invalid(format!(
            "flatten: start axis {start} comes after end axis {end} in a tensor of shape {}",
            fmt_shape(t.shape())
        )));
    }
    Ok(Tensor::new(t.array.flatten(s, e)?))
}

fn softmax_impl(t: &Tensor, axis: INT, log: bool) -> Result<Tensor> {
    let verb = if log { "log_softmax" } else { "softmax" };
    let ax = check_axis(t, axis, verb)?;
    let a = if is_float(t.array.dtype()) {
        t.array.clone()
    } else {
        t.array.as_dtype(Dtype::Float32)?
    };
    Ok(Tensor::new(if log {
        a.subtract(a.logsumexp_axes(&[ax], true)?)?
    } else {
        ops::softmax_axis(&a, ax, true)?
    }))
}

/// `cumsum` / `cumprod`; without an axis, over the flattened tensor (numpy).
fn cumulative(t: &Tensor, axis: Option<INT>, prod: bool) -> Result<Tensor> {
    let verb = if prod { "cumprod" } else { "cumsum" };
    let (a, ax) = match axis {
        Some(axis) => (t.array.clone(), check_axis(t, axis, verb)?),
        None => (t.array.reshape(&[-1])?, 0),
    };
    let a = if a.dtype() == Dtype::Bool {
        a.as_dtype(Dtype::Int32)?
    } else {
        a
    };
    Ok(Tensor::new(if prod {
        a.cumprod(ax, None, None)?
    } else {
        a.cumsum(ax, None, None)?
    }))
}

/// The sort key: values as they are, bools and unsigned integers as float32 so they can be
/// negated for a descending order.
fn sort_key(a: &Array, descending: bool) -> Result<Array> {
    let a = match a.dtype() {
        Dtype::Bool | Dtype::Uint8 | Dtype::Uint16 | Dtype::Uint32 | Dtype::Uint64 => {
            a.as_dtype(Dtype::Float32)?
        }
        _ => a.clone(),
    };
    Ok(if descending { a.negative()? } else { a })
}

fn topk_impl(t: &Tensor, k: INT, axis: INT) -> Result<Map> {
    let ax = check_axis(t, axis, "topk")?;
    let n = t.shape()[ax as usize] as INT;
    if !(1..=n).contains(&k) {
        return Err(Error::Invalid(format!(
            "topk: k = {k} is out of range for axis {axis} of length {n} in a tensor of shape {}",
            fmt_shape(t.shape())
        )));
    }
    let order = ops::argsort_axis(sort_key(&t.array, true)?, ax)?;
    let indices = slice_axis(&order, ax as usize, 0, k)?.as_dtype(Dtype::Int32)?;
    let values = take_along_axis(&t.array, &indices, ax)?;
    let mut m = Map::new();
    m.insert("values".into(), Dynamic::from(Tensor::new(values)));
    m.insert("indices".into(), Dynamic::from(Tensor::new(indices)));
    Ok(m)
}

fn sort_impl(t: &Tensor, axis: INT, indices: bool) -> Result<Tensor> {
    let verb = if indices { "argsort" } else { "sort" };
    let ax = check_axis(t, axis, verb)?;
    Ok(Tensor::new(if indices {
        ops::argsort_axis(sort_key(&t.array, false)?, ax)?.as_dtype(Dtype::Int32)?
    } else {
        ops::sort_axis(&t.array, ax)?
    }))
}

fn arg_extreme(t: &Tensor, axis: Option<(INT, bool)>, max: bool) -> Result<Dynamic> {
    let verb = if max { "argmax" } else { "argmin" };
    if t.array.size() == 0 {
        return Err(Error::Invalid(format!(
            "{verb}: a tensor of shape {} has no elements",
            fmt_shape(t.shape())
        )));
    }
    let a = sort_key(&t.array, false)?;
    Ok(match axis {
        None => {
            let i = if max {
                argmax(&a, false)?
            } else {
                argmin(&a, false)?
            };
            Dynamic::from_int(Tensor::new(i).scalar()? as INT)
        }
        Some((axis, keep)) => {
            let ax = check_axis(t, axis, verb)?;
            let i = if max {
                argmax_axis(&a, ax, keep)?
            } else {
                argmin_axis(&a, ax, keep)?
            };
            Dynamic::from(Tensor::new(i.as_dtype(Dtype::Int32)?))
        }
    })
}

/// numpy's `matmul` shape rules, checked before MLX: 1-d operands are promoted and the
/// promoted axis removed, batch axes broadcast.
fn matmul_impl(a: &Tensor, b: &Tensor) -> Result<Dynamic> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.is_empty() || sb.is_empty() {
        return Err(Error::Invalid(format!(
            "matmul: takes tensors of 1 or more dimensions, got {} @ {}",
            fmt_shape(sa),
            fmt_shape(sb)
        )));
    }
    let inner_a = sa[sa.len() - 1];
    let inner_b = if sb.len() == 1 {
        sb[0]
    } else {
        sb[sb.len() - 2]
    };
    if inner_a != inner_b {
        return Err(mismatch(
            "matmul",
            &[sa, sb],
            "@",
            "the last axis of the first must match the second-to-last of the second",
        ));
    }
    let batch_a = &sa[..sa.len().saturating_sub(2)];
    let batch_b = &sb[..sb.len().saturating_sub(2)];
    let Some(mut out) = broadcast_shapes(batch_a, batch_b) else {
        return Err(mismatch(
            "matmul",
            &[sa, sb],
            "@",
            "the batch axes must broadcast",
        ));
    };
    if sa.len() > 1 {
        out.push(sa[sa.len() - 2]);
    }
    if sb.len() > 1 {
        out.push(sb[sb.len() - 1]);
    }
    check_fits(&out, Dtype::Float32)?;
    tensor_or_number(a.array.matmul(&b.array)?)
}

/// The output shape of an einsum, checked against the operands before MLX sees them.
fn einsum_shape(spec: &str, arrays: &[Array]) -> Result<Vec<i32>> {
    let bad = |why: String| Error::Invalid(format!("einsum \"{spec}\": {why}"));
    let compact: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    let (inputs, output) = match compact.split_once("->") {
        Some((i, o)) => (i, Some(o)),
        None => (compact.as_str(), None),
    };
    let terms: Vec<&str> = inputs.split(',').collect();
    if terms.len() != arrays.len() {
        return Err(bad(format!(
            "the subscripts name {} operands, got {} tensors",
            terms.len(),
            arrays.len()
        )));
    }
    let mut sizes: BTreeMap<char, (i32, usize)> = BTreeMap::new();
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    let mut ellipsis: Vec<i32> = Vec::new();
    for (k, (term, a)) in terms.iter().zip(arrays).enumerate() {
        let (before, after, has_ellipsis) = match term.split_once("...") {
            Some((b, a)) => (b, a, true),
            None => (*term, "", false),
        };
        let letters: Vec<char> = before.chars().chain(after.chars()).collect();
        if let Some(c) = letters.iter().find(|c| !c.is_ascii_alphabetic()) {
            return Err(bad(format!("'{c}' is not a subscript letter")));
        }
        let shape = a.shape();
        if letters.len() > shape.len() || (!has_ellipsis && letters.len() != shape.len()) {
            return Err(bad(format!(
                "operand {k} has shape {} but \"{term}\" names {} axes",
                fmt_shape(shape),
                letters.len()
            )));
        }
        let skip = shape.len() - letters.len();
        let nb = before.chars().count();
        let dims = shape[..nb].iter().chain(&shape[nb + skip..]);
        for (&c, &d) in letters.iter().zip(dims) {
            *counts.entry(c).or_default() += 1;
            match sizes.get(&c) {
                Some(&(n, other)) if n != d => {
                    return Err(mismatch(
                        "einsum",
                        &[arrays[other].shape(), shape],
                        "and",
                        &format!("axis '{c}' has lengths {n} and {d}"),
                    ))
                }
                _ => {
                    sizes.insert(c, (d, k));
                }
            }
        }
        let mid = &shape[nb..nb + skip];
        ellipsis = broadcast_shapes(&ellipsis, mid).ok_or_else(|| {
            let shapes: Vec<&[i32]> = arrays.iter().map(|a| a.shape()).collect();
            mismatch(
                "einsum",
                &shapes,
                "and",
                "the axes under '...' must broadcast",
            )
        })?;
    }
    let size_of = |c: char| -> Result<i32> {
        sizes
            .get(&c)
            .map(|&(n, _)| n)
            .ok_or_else(|| bad(format!("output axis '{c}' is not in any input")))
    };
    let mut out = Vec::new();
    match output {
        Some(o) => {
            let (before, after) = o.split_once("...").unwrap_or((o, ""));
            for c in before.chars() {
                out.push(size_of(c)?);
            }
            if o.contains("...") {
                out.extend(&ellipsis);
            }
            for c in after.chars() {
                out.push(size_of(c)?);
            }
        }
        None => {
            out.extend(&ellipsis);
            for (&c, _) in counts.iter().filter(|(_, &n)| n == 1) {
                out.push(size_of(c)?);
            }
        }
    }
    Ok(out)
}

/// A shape argument, checked to fit in memory as `dtype`.
fn new_shape(shape: &RhaiArray, dtype: Dtype, verb: &str) -> Result<Vec<i32>> {
    let shape = shape_arg(shape, verb)?;
    check_fits(&shape, dtype)?;
    Ok(shape)
}

fn full_impl(shape: &RhaiArray, value: f64, dtype: Dtype, verb: &str) -> Result<Tensor> {
    let shape = new_shape(shape, dtype, verb)?;
    let a = ops::full::<f32>(&shape, Array::from_f32(value as f32))?;
    Ok(Tensor::new(a.as_dtype(dtype)?))
}

/// numpy's `arange`: integers give int32, any float gives float32.
fn arange_impl(start: Dynamic, stop: Dynamic, step: Dynamic) -> Result<Tensor> {
    let ints = start.is_int() && stop.is_int() && step.is_int();
    let (a, b, s) = (
        number_arg(&start, "start", "arange")?,
        number_arg(&stop, "stop", "arange")?,
        number_arg(&step, "step", "arange")?,
    );
    if s == 0.0 || !s.is_finite() || !a.is_finite() || !b.is_finite() {
        return Err(Error::Invalid(format!(
            "arange: start, stop and step must be finite and step non-zero, got {a}, {b}, {s}"
        )));
    }
    let n = ((b - a) / s).ceil().max(0.0);
    if n > i32::MAX as f64 {
        return Err(Error::Invalid(format!(
            "arange: {n} elements is more than the most mlxi creates ({})",
            i32::MAX
        )));
    }
    let dtype = if ints { Dtype::Int32 } else { Dtype::Float32 };
    check_fits(&[n as i32], dtype)?;
    Ok(Tensor::new(if ints {
        ops::arange::<f64, i32>(a, b, s)?
    } else {
        ops::arange::<f64, f32>(a, b, s)?
    }))
}

#[export_module]
mod op_functions {
    use super::*;

    pub type Tensor = super::Tensor;

    /// The tensor with its axes reversed (numpy's `.T`).
    ///
    /// Example: `zeros([2, 3]).T.shape  // [3, 2]`
    #[rhai_fn(get = "T", pure, return_raw)]
    pub fn t_property(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(t.array.transpose().map_err(Error::from)?))
    }

    /// The same elements in a new shape; one length may be -1 (worked out from the rest).
    ///
    /// Example: `reshape(arange(6), [2, -1])  // Tensor[2, 3]`
    #[rhai_fn(pure, return_raw)]
    pub fn reshape(t: &mut Tensor, shape: RhaiArray) -> RhaiResult<Tensor> {
        let dims = reshape_arg(t, &shape)?;
        Ok(Tensor::new(t.array.reshape(&dims).map_err(Error::from)?))
    }

    /// The tensor with its axes reversed (a matrix transposed).
    ///
    /// Example: `transpose(zeros([2, 3])).shape  // [3, 2]`
    #[rhai_fn(name = "transpose", pure, return_raw)]
    pub fn transpose_all(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(Tensor::new(t.array.transpose().map_err(Error::from)?))
    }

    /// The axes in the given order (numpy's `transpose(t, axes)`, torch's `permute`).
    ///
    /// Example: `transpose(zeros([2, 3, 4]), [2, 0, 1]).shape  // [4, 2, 3]`
    #[rhai_fn(name = "transpose", name = "permute", pure, return_raw)]
    pub fn transpose_axes(t: &mut Tensor, axes: RhaiArray) -> RhaiResult<Tensor> {
        let order = permutation(t, &axes, "transpose")?;
        Ok(Tensor::new(
            t.array.transpose_axes(&order).map_err(Error::from)?,
        ))
    }

    /// Two axes swapped (torch's `transpose(t, a, b)`, numpy's `swapaxes`).
    ///
    /// Example: `transpose(zeros([2, 3, 4]), 0, -1).shape  // [4, 3, 2]`
    #[rhai_fn(name = "transpose", name = "swapaxes", pure, return_raw)]
    pub fn swap_axes(t: &mut Tensor, a: INT, b: INT) -> RhaiResult<Tensor> {
        let a = check_axis(t, a, "transpose")?;
        let b = check_axis(t, b, "transpose")?;
        Ok(Tensor::new(t.array.swap_axes(a, b).map_err(Error::from)?))
    }

    /// The tensor without its axes of length 1.
    ///
    /// Example: `squeeze(zeros([1, 3, 1])).shape  // [3]`
    #[rhai_fn(name = "squeeze", pure, return_raw)]
    pub fn squeeze_all(t: &mut Tensor) -> RhaiResult<Tensor> {
        let ones: Vec<i32> = (0..t.ndim() as i32)
            .filter(|&i| t.shape()[i as usize] == 1)
            .collect();
        Ok(squeeze_axes(t, &ones)?)
    }

    /// The tensor without one axis (or an array of axes), each of length 1.
    ///
    /// Example: `squeeze(zeros([1, 3]), 0).shape  // [3]`
    #[rhai_fn(name = "squeeze", pure, return_raw)]
    pub fn squeeze_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        let ax = check_axis(t, axis, "squeeze")?;
        Ok(squeeze_axes(t, &[ax])?)
    }

    #[rhai_fn(name = "squeeze", pure, return_raw)]
    pub fn squeeze_many(t: &mut Tensor, axes: RhaiArray) -> RhaiResult<Tensor> {
        let axes = axes_arg(t, &axes, "squeeze")?;
        Ok(squeeze_axes(t, &axes)?)
    }

    /// A new axis of length 1 at `axis` (torch's `unsqueeze`, numpy's `expand_dims`); -1 adds
    /// it last.
    ///
    /// Example: `unsqueeze(zeros([3]), 0).shape  // [1, 3]`
    #[rhai_fn(name = "unsqueeze", name = "expand_dims", pure, return_raw)]
    pub fn unsqueeze(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        let ax = resolve_axis("unsqueeze", axis, t.ndim() + 1, t.shape())?;
        Ok(Tensor::new(t.array.expand_dims(ax).map_err(Error::from)?))
    }

    /// The tensor as one axis.
    ///
    /// Example: `flatten(zeros([2, 3])).shape  // [6]`
    #[rhai_fn(name = "flatten", pure, return_raw)]
    pub fn flatten_all(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(flatten_impl(t, 0, -1)?)
    }

    /// Axes `start` to `end` (both included, as torch) merged into one.
    ///
    /// Example: `flatten(zeros([2, 3, 4]), 1, 2).shape  // [2, 12]`
    #[rhai_fn(name = "flatten", pure, return_raw)]
    pub fn flatten_range(t: &mut Tensor, start: INT, end: INT) -> RhaiResult<Tensor> {
        Ok(flatten_impl(t, start, end)?)
    }

    /// The tensor broadcast to a shape (numpy rules).
    ///
    /// Example: `broadcast_to(tensor([1, 2]), [3, 2]).shape  // [3, 2]`
    #[rhai_fn(pure, return_raw)]
    pub fn broadcast_to(t: &mut Tensor, shape: RhaiArray) -> RhaiResult<Tensor> {
        let target = new_shape(&shape, t.array.dtype(), "broadcast_to")?;
        if broadcast_shapes(t.shape(), &target).as_deref() != Some(&target[..]) {
            return Err(mismatch(
                "broadcast_to",
                &[t.shape(), &target],
                "to",
                "lengths must match or be 1",
            )
            .into());
        }
        let a = ops::broadcast_to(&t.array, &target).map_err(Error::from)?;
        Ok(Tensor::new(a))
    }

    /// Tensors joined along an existing axis (0 when not given); the other axes must match.
    ///
    /// Example: `concat([zeros([2, 3]), ones([1, 3])], 0).shape  // [3, 3]`
    #[rhai_fn(name = "concat", return_raw)]
    pub fn concat_axis(tensors: RhaiArray, axis: INT) -> RhaiResult<Tensor> {
        Ok(concat_impl(&tensors, axis)?)
    }

    #[rhai_fn(name = "concat", return_raw)]
    pub fn concat_first(tensors: RhaiArray) -> RhaiResult<Tensor> {
        Ok(concat_impl(&tensors, 0)?)
    }

    /// Tensors of one shape stacked along a new axis (0 when not given).
    ///
    /// Example: `stack([zeros([3]), ones([3])], 1).shape  // [3, 2]`
    #[rhai_fn(name = "stack", return_raw)]
    pub fn stack_axis(tensors: RhaiArray, axis: INT) -> RhaiResult<Tensor> {
        Ok(stack_impl(&tensors, axis)?)
    }

    #[rhai_fn(name = "stack", return_raw)]
    pub fn stack_first(tensors: RhaiArray) -> RhaiResult<Tensor> {
        Ok(stack_impl(&tensors, 0)?)
    }

    /// An array of Tensors cut along `axis` (0 when not given), numpy's `split`: an integer n
    /// gives n equal parts (the length must divide), an array of positions cuts there.
    ///
    /// Example: `split(arange(6), [2, 5])  // [Tensor[2], Tensor[3], Tensor[1]]`
    #[rhai_fn(name = "split", pure, return_raw)]
    pub fn split_n(t: &mut Tensor, parts: INT) -> RhaiResult<RhaiArray> {
        Ok(split_parts(t, parts, 0)?)
    }

    #[rhai_fn(name = "split", pure, return_raw)]
    pub fn split_n_axis(t: &mut Tensor, parts: INT, axis: INT) -> RhaiResult<RhaiArray> {
        Ok(split_parts(t, parts, axis)?)
    }

    #[rhai_fn(name = "split", pure, return_raw)]
    pub fn split_cuts(t: &mut Tensor, cuts: RhaiArray) -> RhaiResult<RhaiArray> {
        split_cuts_axis(t, cuts, 0)
    }

    #[rhai_fn(name = "split", pure, return_raw)]
    pub fn split_cuts_axis(t: &mut Tensor, cuts: RhaiArray, axis: INT) -> RhaiResult<RhaiArray> {
        let cuts = cuts
            .iter()
            .map(|c| int_arg(c, "a cut position", "split"))
            .collect::<Result<Vec<INT>>>()?;
        Ok(split_at(t, &cuts, axis)?)
    }

    /// Each element limited to `[min, max]`; either bound may be `()` for none.
    ///
    /// Example: `clamp(tensor([-2, 0.5, 3]), 0, 1)  // [0, 0.5, 1]`
    #[rhai_fn(name = "clamp", name = "clip", pure, return_raw)]
    pub fn clamp(t: &mut Tensor, min: Dynamic, max: Dynamic) -> RhaiResult<Tensor> {
        let mut a = t.array.clone();
        let d = a.dtype();
        if !min.is_unit() {
            a = ops::maximum(&a, operand(min, d, "clamp")?).map_err(Error::from)?;
        }
        if !max.is_unit() {
            a = ops::minimum(&a, operand(max, d, "clamp")?).map_err(Error::from)?;
        }
        Ok(Tensor::new(a))
    }

    /// Softmax over an axis (the last when not given), computed in at least float32 precision.
    ///
    /// Example: `softmax(tensor([1, 2, 3]))  // [0.09, 0.2447, 0.6652]`
    #[rhai_fn(name = "softmax", pure, return_raw)]
    pub fn softmax_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        Ok(softmax_impl(t, axis, false)?)
    }

    #[rhai_fn(name = "softmax", pure, return_raw)]
    pub fn softmax_last(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(softmax_impl(t, -1, false)?)
    }

    /// log(softmax(t)) over an axis (the last when not given), computed stably.
    ///
    /// Example: `log_softmax(logits)[-1]`
    #[rhai_fn(name = "log_softmax", pure, return_raw)]
    pub fn log_softmax_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        Ok(softmax_impl(t, axis, true)?)
    }

    #[rhai_fn(name = "log_softmax", pure, return_raw)]
    pub fn log_softmax_last(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(softmax_impl(t, -1, true)?)
    }

    /// Running sums along an axis; without one, over the flattened tensor (numpy).
    ///
    /// Example: `cumsum(tensor([1, 2, 3]))  // [1, 3, 6]`
    #[rhai_fn(name = "cumsum", pure, return_raw)]
    pub fn cumsum_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        Ok(cumulative(t, Some(axis), false)?)
    }

    #[rhai_fn(name = "cumsum", pure, return_raw)]
    pub fn cumsum_flat(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(cumulative(t, None, false)?)
    }

    /// Running products along an axis; without one, over the flattened tensor (numpy).
    ///
    /// Example: `cumprod(tensor([1, 2, 3]))  // [1, 2, 6]`
    #[rhai_fn(name = "cumprod", pure, return_raw)]
    pub fn cumprod_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        Ok(cumulative(t, Some(axis), true)?)
    }

    #[rhai_fn(name = "cumprod", pure, return_raw)]
    pub fn cumprod_flat(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(cumulative(t, None, true)?)
    }

    /// The k largest values along an axis (the last when not given), largest first, as
    /// `#{values, indices}` (both Tensors with that axis of length k; indices int32). Ties come
    /// in no particular order.
    ///
    /// Example: `topk(softmax(logits[-1]), 5).indices`
    #[rhai_fn(name = "topk", pure, return_raw)]
    pub fn topk_axis(t: &mut Tensor, k: INT, axis: INT) -> RhaiResult<Map> {
        Ok(topk_impl(t, k, axis)?)
    }

    #[rhai_fn(name = "topk", pure, return_raw)]
    pub fn topk_last(t: &mut Tensor, k: INT) -> RhaiResult<Map> {
        Ok(topk_impl(t, k, -1)?)
    }

    /// The values sorted ascending along an axis (the last when not given).
    ///
    /// Example: `sort(tensor([3, 1, 2]))  // [1, 2, 3]`
    #[rhai_fn(name = "sort", pure, return_raw)]
    pub fn sort_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        Ok(sort_impl(t, axis, false)?)
    }

    #[rhai_fn(name = "sort", pure, return_raw)]
    pub fn sort_last(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(sort_impl(t, -1, false)?)
    }

    /// The int32 positions that sort the values ascending along an axis (the last when not
    /// given).
    ///
    /// Example: `argsort(tensor([3, 1, 2]))  // [1, 2, 0]`
    #[rhai_fn(name = "argsort", pure, return_raw)]
    pub fn argsort_axis(t: &mut Tensor, axis: INT) -> RhaiResult<Tensor> {
        Ok(sort_impl(t, axis, true)?)
    }

    #[rhai_fn(name = "argsort", pure, return_raw)]
    pub fn argsort_last(t: &mut Tensor) -> RhaiResult<Tensor> {
        Ok(sort_impl(t, -1, true)?)
    }

    /// The position of the largest element of the flattened tensor, as an integer.
    ///
    /// Example: `argmax(tensor([1, 5, 2]))  // 1`
    #[rhai_fn(name = "argmax", pure, return_raw)]
    pub fn argmax_all(t: &mut Tensor) -> RhaiResult<Dynamic> {
        Ok(arg_extreme(t, None, true)?)
    }

    /// The positions of the largest values along an axis, as an int32 Tensor (the axis kept
    /// as length 1 with `keepdims` true).
    ///
    /// Example: `argmax(logits, -1)`
    #[rhai_fn(name = "argmax", pure, return_raw)]
    pub fn argmax_along(t: &mut Tensor, axis: INT) -> RhaiResult<Dynamic> {
        Ok(arg_extreme(t, Some((axis, false)), true)?)
    }

    #[rhai_fn(name = "argmax", pure, return_raw)]
    pub fn argmax_keep(t: &mut Tensor, axis: INT, keepdims: bool) -> RhaiResult<Dynamic> {
        Ok(arg_extreme(t, Some((axis, keepdims)), true)?)
    }

    /// The position of the smallest element of the flattened tensor, as an integer.
    ///
    /// Example: `argmin(tensor([1, 5, 2]))  // 0`
    #[rhai_fn(name = "argmin", pure, return_raw)]
    pub fn argmin_all(t: &mut Tensor) -> RhaiResult<Dynamic> {
        Ok(arg_extreme(t, None, false)?)
    }

    /// The positions of the smallest values along an axis, as an int32 Tensor.
    ///
    /// Example: `argmin(t, 0)`
    #[rhai_fn(name = "argmin", pure, return_raw)]
    pub fn argmin_along(t: &mut Tensor, axis: INT) -> RhaiResult<Dynamic> {
        Ok(arg_extreme(t, Some((axis, false)), false)?)
    }

    #[rhai_fn(name = "argmin", pure, return_raw)]
    pub fn argmin_keep(t: &mut Tensor, axis: INT, keepdims: bool) -> RhaiResult<Dynamic> {
        Ok(arg_extreme(t, Some((axis, keepdims)), false)?)
    }

    /// Matrix product with numpy's rules: a 1-d operand is a row (first) or a column (second)
    /// vector, leading axes broadcast as batches; two vectors give a number.
    ///
    /// Example: `matmul(zeros([4, 2, 3]), zeros([3, 5])).shape  // [4, 2, 5]`
    #[rhai_fn(return_raw)]
    pub fn matmul(a: Tensor, b: Tensor) -> RhaiResult<Dynamic> {
        Ok(matmul_impl(&a, &b)?)
    }

    /// The outer product of two tensors (each flattened): `[a.size, b.size]`.
    ///
    /// Example: `outer(tensor([1, 2]), tensor([1, 10, 100]))  // Tensor[2, 3]`
    #[rhai_fn(return_raw)]
    pub fn outer(a: Tensor, b: Tensor) -> RhaiResult<Tensor> {
        let out = [a.array.size() as i32, b.array.size() as i32];
        check_fits(&out, Dtype::Float32)?;
        Ok(Tensor::new(
            ops::outer(&a.array, &b.array).map_err(Error::from)?,
        ))
    }

    /// Einstein summation over an array of Tensors, numpy's subscripts (`"ij,jk->ik"`,
    /// `"...d,d->..."`; without `->`, the letters used once, in order).
    ///
    /// Example: `einsum("bpd,d->bp", [acts, direction])`
    #[rhai_fn(return_raw)]
    pub fn einsum(spec: &str, tensors: RhaiArray) -> RhaiResult<Dynamic> {
        let arrays = tensors_arg(&tensors, "einsum")?;
        let out = einsum_shape(spec, &arrays)?;
        check_fits(&out, Dtype::Float32)?;
        Ok(tensor_or_number(
            ops::einsum(spec, &arrays).map_err(Error::from)?,
        )?)
    }

    /// Elements of `a` where `cond` is true, of `b` elsewhere; `a` and `b` are Tensors or
    /// numbers, and all three broadcast.
    ///
    /// Example: `where(t > 0, t, 0.0)`
    #[rhai_fn(name = "where", return_raw)]
    pub fn where_(cond: Tensor, a: Dynamic, b: Dynamic) -> RhaiResult<Tensor> {
        let like = [&a, &b]
            .iter()
            .find_map(|x| x.read_lock::<Tensor>().map(|t| t.array.dtype()))
            .unwrap_or(Dtype::Float32);
        let a = operand(a, like, "where")?;
        let b = operand(b, like, "where")?;
        broadcast("where", &[cond.shape(), a.shape(), b.shape()], "and")?;
        let c = cond.array.as_dtype(Dtype::Bool).map_err(Error::from)?;
        Ok(Tensor::new(ops::select(&c, &a, &b).map_err(Error::from)?))
    }

    /// The entries at integer `indices` (an array or an integer Tensor; negative counts from
    /// the end) along `axis`: numpy's `take`.
    ///
    /// Example: `take(acts, [0, -1], 1)  // the first and last positions`
    #[rhai_fn(pure, return_raw)]
    pub fn take(t: &mut Tensor, indices: Dynamic, axis: INT) -> RhaiResult<Tensor> {
        let ax = check_axis(t, axis, "take")?;
        let idx = match indices.read_lock::<Tensor>() {
            Some(i) if !is_float(i.array.dtype()) && i.array.dtype() != Dtype::Bool => {
                i.array.clone()
            }
            Some(i) => {
                return Err(Error::Invalid(format!(
                    "take: indices must be integers, got a {} tensor",
                    i.dtype_name()
                ))
                .into())
            }
            None => match indices.read_lock::<RhaiArray>() {
                Some(items) => {
                    from_rhai_as(&Dynamic::from_array(items.clone()), Dtype::Int64)?.into_array()
                }
                None => {
                    return Err(Error::Invalid(
                        "take: indices are an array of integers or an integer Tensor".into(),
                    )
                    .into())
                }
            },
        };
        let n = t.shape()[ax as usize] as i64;
        let values = leaves(&idx)?;
        if let Some(bad) = values
            .iter()
            .filter_map(|v| v.as_int().ok())
            .find(|&i| !(-n..n).contains(&i))
        {
            return Err(Error::Invalid(format!(
                "take: index {bad} is out of bounds for axis {axis} of a tensor of shape {}",
                fmt_shape(t.shape())
            ))
            .into());
        }
        let idx = idx.as_dtype(Dtype::Int64).map_err(Error::from)?;
        let idx = ops::select(
            &idx.lt(Array::from_int(0)).map_err(Error::from)?,
            &idx.add(Array::from_slice(&[n], &[])).map_err(Error::from)?,
            &idx,
        )
        .map_err(Error::from)?;
        let mut out = t.shape().to_vec();
        out.splice(ax as usize..=ax as usize, idx.shape().iter().copied());
        check_fits(&out, t.array.dtype())?;
        Ok(Tensor::new(
            t.array.take_axis(&idx, ax).map_err(Error::from)?,
        ))
    }

    /// A float32 tensor of zeros (or of the given dtype).
    ///
    /// Example: `zeros([2, 768])`
    #[rhai_fn(name = "zeros", return_raw)]
    pub fn zeros(shape: RhaiArray) -> RhaiResult<Tensor> {
        Ok(full_impl(&shape, 0.0, Dtype::Float32, "zeros")?)
    }

    #[rhai_fn(name = "zeros", return_raw)]
    pub fn zeros_dtype(shape: RhaiArray, dtype: &str) -> RhaiResult<Tensor> {
        let d = parse_dtype(dtype, "zeros")?;
        Ok(full_impl(&shape, 0.0, d, "zeros")?)
    }

    /// A float32 tensor of ones (or of the given dtype).
    ///
    /// Example: `ones([2, 3])`
    #[rhai_fn(name = "ones", return_raw)]
    pub fn ones(shape: RhaiArray) -> RhaiResult<Tensor> {
        Ok(full_impl(&shape, 1.0, Dtype::Float32, "ones")?)
    }

    #[rhai_fn(name = "ones", return_raw)]
    pub fn ones_dtype(shape: RhaiArray, dtype: &str) -> RhaiResult<Tensor> {
        let d = parse_dtype(dtype, "ones")?;
        Ok(full_impl(&shape, 1.0, d, "ones")?)
    }

    /// A float32 tensor (or of the given dtype) with every element `value`.
    ///
    /// Example: `full([2, 2], -1e9)`
    #[rhai_fn(name = "full", return_raw)]
    pub fn full(shape: RhaiArray, value: Dynamic) -> RhaiResult<Tensor> {
        let v = number_arg(&value, "value", "full")?;
        Ok(full_impl(&shape, v, Dtype::Float32, "full")?)
    }

    #[rhai_fn(name = "full", return_raw)]
    pub fn full_dtype(shape: RhaiArray, value: Dynamic, dtype: &str) -> RhaiResult<Tensor> {
        let v = number_arg(&value, "value", "full")?;
        let d = parse_dtype(dtype, "full")?;
        Ok(full_impl(&shape, v, d, "full")?)
    }

    /// `0, 1, ..., stop - 1`; with `start` and `step` as numpy's `arange`. Integers give int32,
    /// any float gives float32.
    ///
    /// Example: `arange(5)  // [0, 1, 2, 3, 4]`
    #[rhai_fn(name = "arange", return_raw)]
    pub fn arange_stop(stop: Dynamic) -> RhaiResult<Tensor> {
        Ok(arange_impl(
            Dynamic::from_int(0),
            stop,
            Dynamic::from_int(1),
        )?)
    }

    #[rhai_fn(name = "arange", return_raw)]
    pub fn arange_range(start: Dynamic, stop: Dynamic) -> RhaiResult<Tensor> {
        Ok(arange_impl(start, stop, Dynamic::from_int(1))?)
    }

    #[rhai_fn(name = "arange", return_raw)]
    pub fn arange_step(start: Dynamic, stop: Dynamic, step: Dynamic) -> RhaiResult<Tensor> {
        Ok(arange_impl(start, stop, step)?)
    }

    /// `num` evenly spaced float32 values from `start` to `stop`, both included.
    ///
    /// Example: `linspace(0, 1, 5)  // [0, 0.25, 0.5, 0.75, 1]`
    #[rhai_fn(return_raw)]
    pub fn linspace(start: Dynamic, stop: Dynamic, num: INT) -> RhaiResult<Tensor> {
        let a = number_arg(&start, "start", "linspace")?;
        let b = number_arg(&stop, "stop", "linspace")?;
        let n = count_arg(num, 0, "num", "linspace")?;
        check_fits(&[n], Dtype::Float32)?;
        let opts = ops::LinspaceOptions {
            count: n,
            endpoint: true,
        };
        Ok(Tensor::new(
            ops::linspace::<f64, f32>(a, b, opts).map_err(Error::from)?,
        ))
    }

    /// The float32 identity matrix `[n, n]`, or `[n, m]` with ones on the diagonal.
    ///
    /// Example: `eye(3)`
    #[rhai_fn(name = "eye", return_raw)]
    pub fn eye(n: INT) -> RhaiResult<Tensor> {
        eye_rect(n, n)
    }

    #[rhai_fn(name = "eye", return_raw)]
    pub fn eye_rect(n: INT, m: INT) -> RhaiResult<Tensor> {
        let n = count_arg(n, 0, "the number of rows", "eye")?;
        let m = count_arg(m, 0, "the number of columns", "eye")?;
        check_fits(&[n, m], Dtype::Float32)?;
        Ok(Tensor::new(
            ops::eye::<f32>(n, Some(m), None).map_err(Error::from)?,
        ))
    }
}

/// Registers the operators, the function tables and the plugin functions.
pub fn register(engine: &mut Engine) {
    for op in BINARY {
        register_binary(engine, op);
    }
    for op in UNARY {
        register_unary(engine, op);
    }
    for r in REDUCTIONS {
        register_reduction(engine, r);
    }
    engine.register_global_module(exported_module!(op_functions).into());
}
