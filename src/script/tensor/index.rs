//! Indexing and slice assignment, numpy semantics (negative indices count from the end, slices
//! clip to the axis, steps may be negative):
//!
//! | Rhai | numpy |
//! |---|---|
//! | `t[2]`, `t[-1]` | `t[2]`, `t[-1]` |
//! | `t[1..3]`, `t[1..=3]` | `t[1:3]`, `t[1:4]` |
//! | `t[[(), -1, 0..64]]` (one entry per axis: int, range, `()` for the whole axis, or a string such as `"::2"`, `"..."`, `"None"`) | `t[:, -1, 0:64]` |
//! | `t[":, -1, 0:64:2"]`, `t["..., None"]` | `t[:, -1, 0:64:2]`, `t[..., None]` |
//!
//! A selection with no axes left is a number (like `t[i]` of a vector). `t[...] = value` (a
//! Tensor broadcast to the selection, or a number) is an MLX slice update that puts a new array
//! in the variable: other Tensors that shared the old data keep it (unlike PyTorch views).

use mlx_rs::ops::indexing::{ArrayIndex, ArrayIndexOp, IntoStrideBy, TryIndexOp, TryIndexUpdateOp};
use mlx_rs::ops::indexing::{IndexUpdateError, UpdateMode};
use mlx_rs::Array;
use rhai::{Array as RhaiArray, Dynamic, Engine, ImmutableString, FLOAT, INT};

use super::{mismatch, scalar_like, tensor_or_number, Tensor};
use crate::arrays::{broadcast_shapes, fmt_shape};
use crate::script::RhaiResult;
use crate::{Error, Result};

/// One entry of an index, as a script wrote it.
#[derive(Debug, Clone, PartialEq)]
enum Spec {
    /// One position; the axis goes away.
    At(INT),
    /// `start:stop:step`; `None` for a bound left out.
    Slice {
        start: Option<INT>,
        stop: Option<INT>,
        step: INT,
    },
    /// `None` / `newaxis`: a new axis of length 1.
    NewAxis,
    /// `...`: as many whole axes as the other entries leave.
    Ellipsis,
}

const WHOLE: Spec = Spec::Slice {
    start: None,
    stop: None,
    step: 1,
};

impl Spec {
    fn takes_an_axis(&self) -> bool {
        matches!(self, Spec::At(_) | Spec::Slice { .. })
    }
}

fn bad_index(text: &str, why: &str) -> Error {
    Error::Invalid(format!("index \"{text}\": {why}"))
}

/// One entry of the string form: `3`, `-1`, `1:3`, `::2`, `...`, `None`.
fn parse_part(part: &str, whole: &str) -> Result<Spec> {
    let part = part.trim();
    match part {
        "..." => return Ok(Spec::Ellipsis),
        "None" | "newaxis" => return Ok(Spec::NewAxis),
        "" => return Err(bad_index(whole, "an empty entry")),
        _ => {}
    }
    let int = |s: &str| -> Result<Option<INT>> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<INT>()
            .map(Some)
            .map_err(|_| bad_index(whole, &format!("\"{s}\" is not an integer")))
    };
    let fields: Vec<&str> = part.split(':').collect();
    match fields[..] {
        [i] => Ok(Spec::At(int(i)?.unwrap_or_default())),
        [start, stop] => Ok(Spec::Slice {
            start: int(start)?,
            stop: int(stop)?,
            step: 1,
        }),
        [start, stop, step] => Ok(Spec::Slice {
            start: int(start)?,
            stop: int(stop)?,
            step: int(step)?.unwrap_or(1),
        }),
        _ => Err(bad_index(whole, "a slice has at most start:stop:step")),
    }
}

/// The string form: entries separated by commas (a trailing comma is allowed, as in numpy).
fn parse_str(text: &str) -> Result<Vec<Spec>> {
    let mut parts: Vec<&str> = text.split(',').collect();
    if parts.len() > 1 && parts.last().is_some_and(|p| p.trim().is_empty()) {
        parts.pop();
    }
    parts.iter().map(|p| parse_part(p, text)).collect()
}

/// An inclusive range as a slice: `a..=-1` runs to the end.
fn inclusive(start: INT, end: INT) -> Spec {
    Spec::Slice {
        start: Some(start),
        stop: (end != -1).then(|| end.saturating_add(1)),
        step: 1,
    }
}

/// One entry of the array form: an int, a range, `()` for the whole axis, or a string entry.
fn from_dynamic(d: &Dynamic) -> Result<Spec> {
    if let Ok(i) = d.as_int() {
        return Ok(Spec::At(i));
    }
    if d.is_unit() {
        return Ok(WHOLE);
    }
    if let Some(r) = d.read_lock::<std::ops::Range<INT>>() {
        return Ok(Spec::Slice {
            start: Some(r.start),
            stop: Some(r.end),
            step: 1,
        });
    }
    if let Some(r) = d.read_lock::<std::ops::RangeInclusive<INT>>() {
        return Ok(inclusive(*r.start(), *r.end()));
    }
    if let Some(s) = d.read_lock::<ImmutableString>() {
        let mut specs = parse_str(s.as_str())?;
        if specs.len() == 1 {
            return Ok(specs.remove(0));
        }
        return Err(bad_index(
            s.as_str(),
            "one entry of an index array names one axis",
        ));
    }
    Err(Error::Invalid(format!(
        "an index entry is an integer, a range, () or a string such as \"::2\", got {} {}",
        crate::script::display::type_name(d),
        crate::script::display::inline(d)
    )))
}

/// What an index selects: one slice per axis of the source, and the result's shape.
struct Plan {
    /// `(start, stop, step, length)` per source axis, numpy-normalized.
    slices: Vec<(i32, i32, i32, i32)>,
    /// The result's shape: integer entries removed, new axes added.
    shape: Vec<i32>,
    /// The selection's shape with one entry per source axis (integer entries as 1).
    kept: Vec<i32>,
}

/// numpy's `slice.indices(n)`: start and stop clipped to the axis, and the length selected.
fn normalize(start: Option<INT>, stop: Option<INT>, step: INT, n: INT) -> (INT, INT, INT) {
    let (lo, hi) = if step > 0 { (0, n) } else { (-1, n - 1) };
    let clip = |x: Option<INT>, default: INT| match x {
        None => default,
        Some(x) if x < 0 => x.saturating_add(n).max(lo),
        Some(x) => x.min(hi),
    };
    let (first, last) = if step > 0 { (lo, hi) } else { (hi, lo) };
    let (s, e) = (clip(start, first), clip(stop, last));
    let len = if step > 0 && e > s {
        (e - s + step - 1) / step
    } else if step < 0 && s > e {
        (s - e - step - 1) / -step
    } else {
        0
    };
    (s, e, len)
}

fn plan(specs: &[Spec], shape: &[i32]) -> Result<Plan> {
    let ndim = shape.len();
    if specs.iter().filter(|s| **s == Spec::Ellipsis).count() > 1 {
        return Err(Error::Invalid(
            "an index can have only one ellipsis (...)".into(),
        ));
    }
    let taken = specs.iter().filter(|s| s.takes_an_axis()).count();
    if taken > 0 && ndim == 0 {
        return Err(Error::Invalid("cannot index a 0-dimensional tensor".into()));
    }
    if taken > ndim {
        return Err(Error::Invalid(format!(
            "too many indices ({taken}) for a tensor of shape {}",
            fmt_shape(shape)
        )));
    }
    let mut expanded = Vec::with_capacity(ndim + specs.len());
    for s in specs {
        if *s == Spec::Ellipsis {
            expanded.extend(std::iter::repeat_n(WHOLE, ndim - taken));
        } else {
            expanded.push(s.clone());
        }
    }
    if !specs.contains(&Spec::Ellipsis) {
        expanded.extend(std::iter::repeat_n(WHOLE, ndim - taken));
    }
    let mut p = Plan {
        slices: Vec::with_capacity(ndim),
        shape: Vec::new(),
        kept: Vec::with_capacity(ndim),
    };
    for spec in expanded {
        let axis = p.slices.len();
        let n = shape.get(axis).copied().unwrap_or(0) as INT;
        match spec {
            Spec::NewAxis => p.shape.push(1),
            Spec::At(i) => {
                let k = if i < 0 { i.saturating_add(n) } else { i };
                if !(0..n).contains(&k) {
                    let which = if axis == 0 {
                        String::new()
                    } else {
                        format!("axis {axis} of ")
                    };
                    return Err(Error::Invalid(format!(
                        "index {i} is out of bounds for {which}a tensor of shape {}",
                        fmt_shape(shape)
                    )));
                }
                p.slices.push((k as i32, k as i32 + 1, 1, 1));
                p.kept.push(1);
            }
            Spec::Slice { start, stop, step } => {
                if step == 0 {
                    return Err(Error::Invalid("slice step cannot be zero".into()));
                }
                // Any step at least as long as the axis selects at most one element.
                let step = step.clamp(-n.max(1), n.max(1));
                let (s, e, len) = normalize(start, stop, step, n);
                p.slices.push((s as i32, e as i32, step as i32, len as i32));
                p.kept.push(len as i32);
                p.shape.push(len as i32);
            }
            Spec::Ellipsis => unreachable!("expanded above"),
        }
    }
    Ok(p)
}

impl Plan {
    /// The MLX slice of every source axis.
    fn ops(&self) -> Vec<ArrayIndexOp<'static>> {
        self.slices
            .iter()
            .map(|&(s, e, step, len)| {
                if len == 0 {
                    (0..0).index_op()
                } else if step < 0 && e < 0 {
                    // Down to the first element: MLX reads an open end as "past the start".
                    (s..).stride_by(step).index_op()
                } else {
                    (s..e).stride_by(step).index_op()
                }
            })
            .collect()
    }
}

fn update_error(e: IndexUpdateError) -> Error {
    match e {
        IndexUpdateError::Exception(x) => Error::Mlx(x),
        other => Error::Invalid(other.to_string()),
    }
}

/// `t[specs]`: a Tensor, or a number when no axes are left.
fn get(t: &Tensor, specs: &[Spec]) -> Result<Dynamic> {
    let p = plan(specs, t.shape())?;
    let a = if t.ndim() == 0 {
        t.array().clone()
    } else {
        t.array().try_index(&p.ops()[..])?
    };
    tensor_or_number(a.reshape(&p.shape)?)
}

/// `t[specs] = value`: a new array in `t` with the selection replaced (value broadcast to it).
fn set(t: &mut Tensor, specs: &[Spec], value: Dynamic) -> Result<()> {
    let p = plan(specs, t.shape())?;
    let dtype = t.array().dtype();
    if !value.is::<Tensor>() {
        return set_number(t, &p, value);
    }
    let mut v = value.cast::<Tensor>().into_array();
    while v.ndim() > p.shape.len() && v.shape()[0] == 1 {
        v = v.reshape(&v.shape()[1..])?;
    }
    if broadcast_shapes(v.shape(), &p.shape).as_deref() != Some(&p.shape[..]) {
        return Err(mismatch(
            "index assignment",
            &[v.shape(), &p.shape],
            "into",
            "the value must broadcast to the selection",
        ));
    }
    let v = mlx_rs::ops::broadcast_to(v.as_dtype(dtype)?, &p.shape)?.reshape(&p.kept)?;
    replace(t, &p, v)
}

fn set_number(t: &mut Tensor, p: &Plan, x: Dynamic) -> Result<()> {
    let dtype = t.array().dtype();
    let v = scalar_like(x, dtype)?.as_dtype(dtype)?;
    let v = mlx_rs::ops::broadcast_to(v, &p.kept)?;
    replace(t, p, v)
}

fn replace(t: &mut Tensor, p: &Plan, v: Array) -> Result<()> {
    let new = if t.ndim() == 0 {
        v.reshape(&[])?
    } else {
        t.array()
            .try_index_update(&p.ops()[..], &v, UpdateMode::Replace)
            .map_err(update_error)?
    };
    *t = Tensor::new(new);
    Ok(())
}

/// Registers `t[index]` and `t[index] = value` for one Rhai index type.
fn register_index<I: std::any::Any + Clone>(
    engine: &mut Engine,
    specs: fn(&I) -> Result<Vec<Spec>>,
) {
    engine.register_indexer_get(move |t: &mut Tensor, i: I| -> RhaiResult<Dynamic> {
        Ok(get(t, &specs(&i)?)?)
    });
    engine.register_indexer_set(move |t: &mut Tensor, i: I, v: Tensor| -> RhaiResult<()> {
        Ok(set(t, &specs(&i)?, Dynamic::from(v))?)
    });
    engine.register_indexer_set(move |t: &mut Tensor, i: I, v: INT| -> RhaiResult<()> {
        Ok(set(t, &specs(&i)?, v.into())?)
    });
    engine.register_indexer_set(move |t: &mut Tensor, i: I, v: FLOAT| -> RhaiResult<()> {
        Ok(set(t, &specs(&i)?, v.into())?)
    });
    engine.register_indexer_set(move |t: &mut Tensor, i: I, v: bool| -> RhaiResult<()> {
        Ok(set(t, &specs(&i)?, v.into())?)
    });
}

pub fn register(engine: &mut Engine) {
    register_index::<INT>(engine, |&i| Ok(vec![Spec::At(i)]));
    register_index::<std::ops::Range<INT>>(engine, |r| {
        Ok(vec![Spec::Slice {
            start: Some(r.start),
            stop: Some(r.end),
            step: 1,
        }])
    });
    register_index::<std::ops::RangeInclusive<INT>>(engine, |r| {
        Ok(vec![inclusive(*r.start(), *r.end())])
    });
    register_index::<RhaiArray>(engine, |a| a.iter().map(from_dynamic).collect());
    register_index::<ImmutableString>(engine, |s| parse_str(s.as_str()));
}

/// `t[start:stop]` along one axis (numpy slice bounds): what `split` cuts with.
pub(super) fn slice_axis(t: &Array, axis: usize, start: INT, stop: INT) -> Result<Array> {
    let mut specs = vec![WHOLE; axis];
    specs.push(Spec::Slice {
        start: Some(start),
        stop: Some(stop),
        step: 1,
    });
    let p = plan(&specs, t.shape())?;
    Ok(t.try_index(&p.ops()[..])?.reshape(&p.shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_normalize_like_python() {
        // Python: slice(start, stop, step).indices(5) and len(range(...)).
        assert_eq!(normalize(None, None, 1, 5), (0, 5, 5));
        assert_eq!(normalize(None, None, -1, 5), (4, -1, 5));
        assert_eq!(normalize(Some(-2), None, 1, 5), (3, 5, 2));
        assert_eq!(normalize(Some(10), None, 1, 5), (5, 5, 0));
        assert_eq!(normalize(Some(-10), Some(3), 2, 5), (0, 3, 2));
        assert_eq!(normalize(Some(3), Some(0), -2, 5), (3, 0, 2));
        assert_eq!(normalize(Some(1), Some(3), -1, 5), (1, 3, 0));
    }

    #[test]
    fn the_string_form_parses() {
        let s = parse_str(":, -1, 0:64:2, ..., None,").unwrap();
        assert_eq!(
            s,
            vec![
                WHOLE,
                Spec::At(-1),
                Spec::Slice {
                    start: Some(0),
                    stop: Some(64),
                    step: 2
                },
                Spec::Ellipsis,
                Spec::NewAxis
            ]
        );
        assert!(parse_str("1:2:3:4").is_err());
        assert!(parse_str("x").is_err());
        assert!(parse_str("1,,2").is_err());
    }
}
