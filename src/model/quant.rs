//! MLX's quantized kernels with an explicit quantization mode.
//!
//! mlx-rs 0.33 always passes mode `"affine"` to MLX (its `quantized_matmul`, `gather_qmm` and
//! `dequantize` have no mode argument), so the affine mode goes through mlx-rs and the
//! microscaling mode `"mxfp4"` (OpenAI's gpt-oss experts: groups of 32 four-bit e2m1 values
//! sharing one e8m0 power-of-two scale, no offsets) calls mlx-c directly through mlx-sys, the
//! same C functions mlx-rs wraps, with the mode given.
//!
//! Callers validate shapes before calling (the loader checks every quantized tensor against
//! its layer), so MLX's own checks are a second line, not the first.

use mlx_rs::{ops, Array, Stream};

use crate::error::{Error, Result};

/// How a quantized weight is encoded (MLX's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    /// `w = scale * q + bias` per group, scales and biases in a float type (mlx-lm's default).
    Affine,
    /// OCP microscaling FP4: e2m1 values, one uint8 e8m0 scale per 32, no biases.
    Mxfp4,
}

impl QuantMode {
    /// The mode's name in config.json and MLX.
    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Affine => "affine",
            QuantMode::Mxfp4 => "mxfp4",
        }
    }

    /// Parse a config.json `mode`.
    pub fn parse(s: &str) -> Result<QuantMode> {
        match s {
            "affine" => Ok(QuantMode::Affine),
            "mxfp4" => Ok(QuantMode::Mxfp4),
            other => Err(Error::Config {
                key: "quantization.mode".into(),
                value: format!("{other:?}"),
                why: "is not a mode mlxi runs (supported: affine, mxfp4)".into(),
            }),
        }
    }

    /// The only `(bits, group_size)` a fixed-format mode allows (`None` for affine).
    pub fn fixed_format(self) -> Option<(i32, i32)> {
        match self {
            QuantMode::Affine => None,
            QuantMode::Mxfp4 => Some((4, 32)),
        }
    }
}

fn opt_int(v: i32) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value: v,
        has_value: true,
    }
}

/// Run one mlx-c call that writes an array into `res`; `what` names it in the error.
fn call(what: &str, f: impl FnOnce(*mut mlx_sys::mlx_array) -> i32) -> Result<Array> {
    // SAFETY: `res` starts as an empty handle; on success mlx-c stores a new array in it whose
    // ownership passes to the returned `Array`; on failure it is freed here.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        if f(&mut res) != 0 {
            mlx_sys::mlx_array_free(res);
            return Err(Error::Model(format!("MLX {what} (mode mxfp4) failed")));
        }
        Ok(Array::from_ptr(res))
    }
}

/// An absent optional array argument for mlx-c (an empty handle, freed by its guard).
struct NoArray(mlx_sys::mlx_array);

impl NoArray {
    fn new() -> NoArray {
        // SAFETY: creates an empty handle, freed in Drop.
        NoArray(unsafe { mlx_sys::mlx_array_new() })
    }
}

impl Drop for NoArray {
    fn drop(&mut self) {
        // SAFETY: the handle was created by mlx_array_new and is not shared.
        unsafe { mlx_sys::mlx_array_free(self.0) };
    }
}

/// `x @ dequantize(w)^T` (`transpose` true, the layout of a linear layer's `[out, in]` weight).
pub fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
) -> Result<Array> {
    if mode == QuantMode::Affine {
        return Ok(ops::quantized_matmul(
            x, w, scales, biases, true, group_size, bits,
        )?);
    }
    let stream = Stream::thread_local_or_default();
    let none = NoArray::new();
    call("quantized_matmul", |res| unsafe {
        mlx_sys::mlx_quantized_matmul(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            none.0,
            true,
            opt_int(group_size),
            opt_int(bits),
            c"mxfp4".as_ptr(),
            stream.as_ptr(),
        )
    })
}

/// Expert-stacked `w` `[experts, out, in]` applied to `x` `[..., 1, in]` for the experts in
/// `indices` `[..., k]`: `[..., k, 1, out]` (MLX's `gather_qmm`, transposed).
#[allow(clippy::too_many_arguments)]
pub fn gather_qmm(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    indices: &Array,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
) -> Result<Array> {
    if mode == QuantMode::Affine {
        return Ok(ops::gather_qmm(
            x, w, scales, biases, None, indices, true, group_size, bits, None,
        )?);
    }
    let stream = Stream::thread_local_or_default();
    let (none_b, none_l) = (NoArray::new(), NoArray::new());
    call("gather_qmm", |res| unsafe {
        mlx_sys::mlx_gather_qmm(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            none_b.0,
            none_l.0,
            indices.as_ptr(),
            true,
            opt_int(group_size),
            opt_int(bits),
            c"mxfp4".as_ptr(),
            false,
            stream.as_ptr(),
        )
    })
}

/// The float weight of a quantized one (in the scales' dtype for affine, float32 for mxfp4,
/// whose scales are uint8).
pub fn dequantize(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
) -> Result<Array> {
    if mode == QuantMode::Affine {
        return Ok(ops::dequantize(w, scales, biases, group_size, bits)?);
    }
    let stream = Stream::thread_local_or_default();
    let (none_b, none_g) = (NoArray::new(), NoArray::new());
    let dtype = mlx_sys::mlx_optional_dtype {
        value: mlx_sys::mlx_dtype__MLX_FLOAT32,
        has_value: true,
    };
    call("dequantize", |res| unsafe {
        mlx_sys::mlx_dequantize(
            res,
            w.as_ptr(),
            scales.as_ptr(),
            none_b.0,
            opt_int(group_size),
            opt_int(bits),
            c"mxfp4".as_ptr(),
            none_g.0,
            dtype,
            stream.as_ptr(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MXFP4 by hand: e2m1 codes (sign, 2-bit exponent, 1-bit mantissa) times 2^(scale - 127),
    /// eight codes per uint32, low nibble first.
    #[test]
    fn mxfp4_dequantize_matches_the_format() {
        let e2m1 = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        let codes: Vec<u32> = (0..32u32).map(|i| (i * 7 + 3) % 16).collect();
        let words: Vec<u32> = codes
            .chunks(8)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0, |w, (j, &q)| w | (q << (4 * j)))
            })
            .collect();
        let w = Array::from_slice(&words, &[1, 4]);
        let scale = Array::from_slice(&[129u8], &[1, 1]);
        let got = dequantize(&w, &scale, None, 32, 4, QuantMode::Mxfp4).unwrap();
        let got: Vec<f32> = got.as_slice::<f32>().to_vec();
        let want: Vec<f32> = codes
            .iter()
            .map(|&q| {
                let v = e2m1[(q & 7) as usize] * 4.0;
                if q & 8 != 0 {
                    -v
                } else {
                    v
                }
            })
            .collect();
        assert_eq!(got, want);
        // quantized_matmul against the dequantized weight.
        let x = Array::from_iter((0..32).map(|i| i as f32 / 8.0 - 2.0), &[1, 32]);
        let y = quantized_matmul(&x, &w, &scale, None, 32, 4, QuantMode::Mxfp4).unwrap();
        let dense: f32 = x
            .as_slice::<f32>()
            .iter()
            .zip(&want)
            .map(|(a, b)| a * b)
            .sum();
        assert!((y.as_slice::<f32>()[0] - dense).abs() < 1e-4);
    }
}
