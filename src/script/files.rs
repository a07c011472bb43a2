//! `save_json`: script values as JSON files, written atomically
//! ([`crate::arrays::write_atomic`]).
//!
//! Scripts reach the file system only through the listed save/load functions and `import`;
//! every path is resolved and checked by [`crate::fsaccess`] (through
//! [`super::Context::write_path`] and [`super::Context::read_path`]): relative paths resolve
//! against the script's folder.

use rhai::plugin::*;
use rhai::{Array, Dynamic, Engine, Map};
use serde_json::Value;

use super::tensor::{f32_to_f64, Tensor};
use super::{context, RhaiResult};
use crate::arrays::write_atomic;
use crate::{Error, Result};

/// A script value as JSON: numbers, strings, booleans, arrays, maps, `()` as null, a Tensor as
/// nested arrays, a Probe or Direction as a map of its results and metadata. Non-finite floats become null (JSON has no NaN).
pub fn to_json(value: &Dynamic) -> Result<Value> {
    to_json_at(value, 0)
}

fn to_json_at(value: &Dynamic, depth: usize) -> Result<Value> {
    if depth > 128 {
        return Err(Error::Invalid(
            "save_json: values nested more than 128 deep".into(),
        ));
    }
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number));
    }
    if let Ok(s) = value.clone().into_immutable_string() {
        return Ok(Value::String(s.to_string()));
    }
    if let Ok(c) = value.as_char() {
        return Ok(Value::String(c.to_string()));
    }
    if let Some(a) = value.read_lock::<Array>() {
        return a
            .iter()
            .map(|v| to_json_at(v, depth + 1))
            .collect::<Result<Vec<_>>>()
            .map(Value::Array);
    }
    if let Some(m) = value.read_lock::<Map>() {
        let mut out = serde_json::Map::new();
        for (k, v) in m.iter() {
            out.insert(k.to_string(), to_json_at(v, depth + 1)?);
        }
        return Ok(Value::Object(out));
    }
    if let Some(t) = value.read_lock::<Tensor>() {
        let values = t.to_f32_vec()?;
        return Ok(nested_json(&values, t.shape()));
    }
    if let Some(p) = value.read_lock::<super::probe::Probe>() {
        return to_json_at(&Dynamic::from_map(p.to_map()), depth + 1);
    }
    if let Some(d) = value.read_lock::<super::steer::Direction>() {
        return to_json_at(
            &Dynamic::from_map(super::steer::direction_map(&d)),
            depth + 1,
        );
    }
    Err(Error::Invalid(format!(
        "save_json: cannot write a {} as JSON",
        super::display::type_name(value)
    )))
}

fn nested_json(values: &[f32], shape: &[i32]) -> Value {
    match shape.split_first() {
        None => {
            serde_json::Number::from_f64(f32_to_f64(values[0])).map_or(Value::Null, Value::Number)
        }
        Some((&n, rest)) => {
            let stride: usize = rest.iter().map(|&d| d as usize).product();
            Value::Array(
                (0..n as usize)
                    .map(|i| nested_json(&values[i * stride..(i + 1) * stride], rest))
                    .collect(),
            )
        }
    }
}

#[export_module]
mod file_functions {
    use super::*;

    /// Writes any value (numbers, strings, arrays, maps, Tensors) as pretty JSON, atomically
    /// (a temporary file, then a rename). A relative path is relative to the script's folder.
    ///
    /// Example: `save_json(#{accuracy: acc, layer: 12}, "results/probe.json")`
    #[rhai_fn(return_raw)]
    pub fn save_json(ctx: NativeCallContext, value: Dynamic, path: &str) -> RhaiResult<()> {
        let json = to_json(&value)?;
        let mut text = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::Invalid(format!("save_json: {e}")))?;
        text.push('\n');
        let path = context(&ctx).write_path("save_json", path)?;
        Ok(write_atomic(&path, text.as_bytes())?)
    }
}

/// Registers `save_json`.
pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(file_functions).into());
}
