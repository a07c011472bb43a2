//! Checks on a config's numbers, made before anything is allocated: every architecture's
//! `Config::validate` is built from these, and each architecture's `load` calls it first, so a
//! config from config.json and one built from GGUF metadata pass the same checks.
//!
//! A failed check is [`Error::Config`] naming the key; the loader adds the file's path.

use crate::error::{Error, Result};

/// The largest model dimension accepted (hidden size, head width, MLP width): far above any
/// released model, low enough that products of two dimensions stay exact.
pub const MAX_DIM: i64 = 1 << 20;
/// The largest vocabulary accepted (released models have up to ~262k tokens).
pub const MAX_VOCAB: i64 = 1 << 24;
/// The most attention heads accepted.
pub const MAX_HEADS: i64 = 1 << 14;
/// The most layers accepted (checked again against the layers the checkpoint holds).
pub const MAX_LAYERS: i64 = 1 << 16;
/// The most experts accepted in a mixture-of-experts layer.
pub const MAX_EXPERTS: i64 = 1 << 16;

fn invalid(key: &str, value: impl std::fmt::Display, why: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// An integer setting in `1..=max`.
pub fn count(key: &str, value: impl Into<i64>, max: i64) -> Result<()> {
    let v = value.into();
    if v < 1 {
        return Err(invalid(key, v, "must be at least 1"));
    }
    if v > max {
        return Err(invalid(
            key,
            v,
            format!("is larger than the {max} mlxi accepts"),
        ));
    }
    Ok(())
}

/// A float setting that must be finite and above zero (norm epsilons, RoPE bases, scales).
pub fn positive(key: &str, value: f32) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(key, value, "must be a finite number above 0"))
    }
}

/// An optional float setting: when present, finite and above zero.
pub fn positive_opt(key: &str, value: Option<f32>) -> Result<()> {
    value.map_or(Ok(()), |v| positive(key, v))
}

/// `value` must be a multiple of `by` (named `by_key`), e.g. hidden size by heads.
pub fn divisible(key: &str, value: i64, by_key: &str, by: i64) -> Result<()> {
    if by > 0 && value % by == 0 {
        Ok(())
    } else {
        Err(invalid(
            key,
            value,
            format!("must be a multiple of {by_key} ({by})"),
        ))
    }
}

/// A product of settings (a projection's width) must fit a tensor dimension.
pub fn product(what: &str, factors: &[i64]) -> Result<()> {
    let p = factors
        .iter()
        .try_fold(1i64, |acc, &f| acc.checked_mul(f))
        .filter(|&p| p <= i32::MAX as i64);
    match p {
        Some(_) => Ok(()),
        None => Err(invalid(
            what,
            factors
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(" x "),
            "is too large for a tensor dimension",
        )),
    }
}

/// The shared attention checks: sizes in range, kv heads dividing heads, and the projection
/// widths representable.
pub struct Attention {
    pub hidden: i32,
    pub heads: i32,
    pub kv_heads: i32,
    /// The head width and whether config.json gave it (else it is hidden / heads).
    pub head_dim: Option<i32>,
}

impl Attention {
    pub fn check(&self) -> Result<()> {
        count("hidden_size", self.hidden, MAX_DIM)?;
        count("num_attention_heads", self.heads, MAX_HEADS)?;
        count("num_key_value_heads", self.kv_heads, MAX_HEADS)?;
        divisible(
            "num_attention_heads",
            self.heads.into(),
            "num_key_value_heads",
            self.kv_heads.into(),
        )?;
        let hd = match self.head_dim {
            Some(hd) => {
                count("head_dim", hd, MAX_DIM)?;
                hd
            }
            None => {
                divisible(
                    "hidden_size",
                    self.hidden.into(),
                    "num_attention_heads",
                    self.heads.into(),
                )?;
                self.hidden / self.heads
            }
        };
        product(
            "num_attention_heads x head_dim",
            &[self.heads.into(), hd.into()],
        )?;
        product(
            "(num_attention_heads + 2 x num_key_value_heads) x head_dim",
            &[(self.heads as i64 + 2 * self.kv_heads as i64), hd.into()],
        )
    }
}

/// Checks shared by every architecture: layers, MLP width, vocabulary, epsilon, RoPE base.
pub fn common(layers: usize, intermediate: i32, vocab: i32, eps: f32, theta: f32) -> Result<()> {
    count(
        "num_hidden_layers",
        i64::try_from(layers).unwrap_or(i64::MAX),
        MAX_LAYERS,
    )?;
    count("intermediate_size", intermediate, MAX_DIM)?;
    product("2 x intermediate_size", &[2, intermediate.into()])?;
    count("vocab_size", vocab, MAX_VOCAB)?;
    positive("rms_norm_eps", eps)?;
    positive("rope_theta", theta)
}

/// `rope_scaling.factor`, when given, must be finite and above zero.
pub fn rope_scaling(s: Option<&super::layers::RopeScaling>) -> Result<()> {
    let Some(s) = s else { return Ok(()) };
    positive_opt("rope_scaling.factor", s.factor)?;
    positive_opt("rope_scaling.low_freq_factor", s.low_freq_factor)?;
    positive_opt("rope_scaling.high_freq_factor", s.high_freq_factor)?;
    positive_opt(
        "rope_scaling.original_max_position_embeddings",
        s.original_max_position_embeddings,
    )?;
    positive_opt("rope_scaling.beta_fast", s.beta_fast)?;
    positive_opt("rope_scaling.beta_slow", s.beta_slow)?;
    for (key, v) in [
        ("rope_scaling.mscale", s.mscale),
        ("rope_scaling.mscale_all_dim", s.mscale_all_dim),
    ] {
        if let Some(v) = v.filter(|v| !v.is_finite()) {
            return Err(invalid(key, v, "must be a finite number"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<()>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn attention_checks_name_the_key() {
        let ok = Attention {
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: None,
        };
        assert!(ok.check().is_ok());
        let zero = Attention { heads: 0, ..ok };
        assert_eq!(
            msg(zero.check()),
            "num_attention_heads = 0: must be at least 1"
        );
        let uneven = Attention { heads: 3, ..ok };
        assert!(msg(uneven.check())
            .starts_with("num_attention_heads = 3: must be a multiple of num_key_value_heads"));
        let kv = Attention {
            heads: 6,
            kv_heads: 4,
            head_dim: Some(8),
            ..ok
        };
        assert!(msg(kv.check()).contains("multiple of num_key_value_heads (4)"));
        let hd = Attention {
            head_dim: Some(0),
            ..ok
        };
        assert_eq!(msg(hd.check()), "head_dim = 0: must be at least 1");
        let wide = Attention {
            heads: 16384,
            kv_heads: 16384,
            head_dim: Some(1 << 20),
            ..ok
        };
        assert!(msg(wide.check()).contains("too large"));
    }

    #[test]
    fn common_checks() {
        assert!(common(2, 128, 100, 1e-5, 10000.0).is_ok());
        assert_eq!(
            msg(common(1_000_000_000_000, 128, 100, 1e-5, 1e4)),
            "num_hidden_layers = 1000000000000: is larger than the 65536 mlxi accepts"
        );
        assert!(msg(common(2, 0, 100, 1e-5, 1e4)).starts_with("intermediate_size = 0"));
        assert!(msg(common(2, 8, 0, 1e-5, 1e4)).starts_with("vocab_size = 0"));
        assert!(msg(common(2, 8, i32::MAX, 1e-5, 1e4)).starts_with("vocab_size"));
        assert!(msg(common(2, 8, 10, 0.0, 1e4)).starts_with("rms_norm_eps = 0"));
        assert!(msg(common(2, 8, 10, -1e-6, 1e4)).starts_with("rms_norm_eps"));
        assert!(msg(common(2, 8, 10, f32::NAN, 1e4)).starts_with("rms_norm_eps = NaN"));
        assert!(msg(common(2, 8, 10, 1e-6, 0.0)).starts_with("rope_theta = 0"));
    }
}
