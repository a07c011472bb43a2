//! Options maps (`#{n: 500, seed: 1}`), checked in one place.
//!
//! Every verb that takes options starts with [`Options::parse`], naming itself and its valid
//! keys; an unknown key is an error that lists them (and suggests the nearest one), and the typed
//! getters turn a wrong type into an error naming the option.
//!
//! ```ignore
//! let opts = Options::parse("stats::bootstrap_ci", &opts, &["n", "level", "seed"])?;
//! let n = opts.int("n", 1000)?;
//! let level = opts.float("level", 0.95)?;
//! ```

use rhai::plugin::*;
use rhai::{Array, Dynamic, Engine, Map, NativeCallContext, FLOAT, INT};

use super::RhaiResult;
use crate::{Error, Result};

/// A validated options map.
pub struct Options<'a> {
    verb: &'a str,
    map: &'a Map,
}

impl<'a> Options<'a> {
    /// Checks that every key of `map` is one of `valid`.
    pub fn parse(verb: &'a str, map: &'a Map, valid: &[&str]) -> Result<Self> {
        for key in map.keys() {
            if !valid.contains(&key.as_str()) {
                let hint = nearest(key, valid)
                    .map(|k| format!(" (did you mean '{k}'?)"))
                    .unwrap_or_default();
                return Err(Error::Invalid(format!(
                    "{verb}: unknown option '{key}'{hint}; valid options: {}",
                    valid.join(", ")
                )));
            }
        }
        Ok(Options { verb, map })
    }

    /// The verb these options belong to (for error messages).
    pub fn verb(&self) -> &'a str {
        self.verb
    }

    /// The raw value, if given (and not `()`).
    pub fn get(&self, key: &str) -> Option<&'a Dynamic> {
        self.map.get(key).filter(|v| !v.is_unit())
    }

    fn wrong(&self, key: &str, want: &str, got: &Dynamic) -> Error {
        Error::Invalid(format!(
            "{}: option '{key}' must be {want}, got {} ({})",
            self.verb,
            super::display::inline(got),
            super::display::type_name(got)
        ))
    }

    /// An integer option.
    pub fn int(&self, key: &str, default: INT) -> Result<INT> {
        self.opt_int(key).map(|v| v.unwrap_or(default))
    }

    /// An integer option without a default.
    pub fn opt_int(&self, key: &str) -> Result<Option<INT>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_int()
                .map(Some)
                .map_err(|_| self.wrong(key, "an integer", v)),
        }
    }

    /// A number option (an integer is accepted too).
    pub fn float(&self, key: &str, default: FLOAT) -> Result<FLOAT> {
        self.opt_float(key).map(|v| v.unwrap_or(default))
    }

    /// A number option without a default.
    pub fn opt_float(&self, key: &str) -> Result<Option<FLOAT>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match (v.as_float(), v.as_int()) {
                (Ok(f), _) => Ok(Some(f)),
                (_, Ok(i)) => Ok(Some(i as FLOAT)),
                _ => Err(self.wrong(key, "a number", v)),
            },
        }
    }

    /// A boolean option.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().map_err(|_| self.wrong(key, "true or false", v)),
        }
    }

    /// A string option.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .clone()
                .into_string()
                .map(Some)
                .map_err(|_| self.wrong(key, "a string", v)),
        }
    }

    /// A string option that must be one of `choices`.
    pub fn choice(&self, key: &str, choices: &[&str], default: &'static str) -> Result<String> {
        let Some(s) = self.string(key)? else {
            return Ok(default.to_string());
        };
        if choices.contains(&s.as_str()) {
            Ok(s)
        } else {
            let quoted: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
            Err(Error::Invalid(format!(
                "{}: option '{key}' must be one of {}, got \"{s}\"",
                self.verb,
                quoted.join(", ")
            )))
        }
    }

    /// An array option.
    pub fn array(&self, key: &str) -> Result<Option<Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .clone()
                .into_array()
                .map(Some)
                .map_err(|_| self.wrong(key, "an array", v)),
        }
    }

    /// A custom-type option (a Tensor, a Cache, ...), named `what` in errors.
    pub fn value<T: Clone + 'static>(&self, key: &str, what: &str) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .clone()
                .try_cast::<T>()
                .map(Some)
                .ok_or_else(|| self.wrong(key, what, v)),
        }
    }
}

/// `defaults` with the values of `opts` over them; a key of `opts` that `defaults` lacks is an
/// error naming `verb`, the nearest valid key and all of them (the script-side `options`).
pub fn with_defaults(verb: &str, opts: &Map, defaults: &Map) -> Result<Map> {
    let valid: Vec<&str> = defaults.keys().map(|k| k.as_str()).collect();
    Options::parse(verb, opts, &valid)?;
    let mut merged = defaults.clone();
    merged.extend(opts.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(merged)
}

/// Who called `options` without naming itself: the script it was called from (its path), or
/// the library module (`swap`).
fn caller(ctx: &NativeCallContext) -> String {
    let source = ctx.call_source().unwrap_or_default();
    if let Some(module) = source.strip_prefix(super::modules::STDLIB_PREFIX) {
        return module.strip_suffix(".rhai").unwrap_or(module).into();
    }
    if source.is_empty() || source.starts_with('<') {
        "options".into()
    } else {
        source.into()
    }
}

#[export_module]
mod option_functions {
    use super::*;

    /// A recipe's options: `defaults` with the values given in `opts` over them. A key of
    /// `opts` that `defaults` does not have is an error naming `name`, the nearest valid key
    /// ("did you mean") and all of them. A default of `()` means "no default".
    ///
    /// Example: `let o = options(opts, #{alpha: 1.5, seed: 0}, "swap::run");  // o.alpha`
    #[rhai_fn(name = "options", return_raw)]
    pub fn options_named(opts: Map, defaults: Map, name: &str) -> RhaiResult<Map> {
        Ok(with_defaults(name, &opts, &defaults)?)
    }

    /// `options` named after the script or module that calls it.
    ///
    /// Example: `let o = options(args, #{layer: 15, tokens: 24, out: ()});`
    #[rhai_fn(name = "options", return_raw)]
    pub fn options(ctx: NativeCallContext, opts: Map, defaults: Map) -> RhaiResult<Map> {
        super::super::located(&ctx, with_defaults(&caller(&ctx), &opts, &defaults))
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(option_functions).into());
}

/// The valid key closest to a mistyped one, if any is close.
fn nearest<'v>(key: &str, valid: &[&'v str]) -> Option<&'v str> {
    valid
        .iter()
        .map(|v| (edit_distance(key, v), *v))
        .filter(|(d, v)| *d <= 2.max(v.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Dynamic)]) -> Map {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect()
    }

    #[test]
    fn unknown_key_names_the_valid_ones() {
        let m = map(&[("lvl", Dynamic::from_float(0.9))]);
        let err = Options::parse("stats::bootstrap_ci", &m, &["n", "level", "seed"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "stats::bootstrap_ci: unknown option 'lvl' (did you mean 'level'?); valid options: n, level, seed"
        );
    }

    #[test]
    fn with_defaults_merges_and_names_the_nearest_key() {
        let defaults = map(&[
            ("alpha", Dynamic::from_float(1.5)),
            ("seed", Dynamic::from_int(0)),
            ("out", Dynamic::UNIT),
        ]);
        let given = map(&[("seed", Dynamic::from_int(3))]);
        let o = with_defaults("swap::run", &given, &defaults).expect("valid");
        assert_eq!(o.get("alpha").and_then(|v| v.as_float().ok()), Some(1.5));
        assert_eq!(o.get("seed").and_then(|v| v.as_int().ok()), Some(3));
        assert!(o.get("out").is_some_and(Dynamic::is_unit));
        let typo = map(&[("alpah", Dynamic::from_int(2))]);
        let err = with_defaults("swap::run", &typo, &defaults)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "swap::run: unknown option 'alpah' (did you mean 'alpha'?); valid options: \
                 alpha, out, seed"
            )
        );
    }

    #[test]
    fn typed_getters() {
        let m = map(&[("n", Dynamic::from_int(5)), ("level", Dynamic::from_int(1))]);
        let o = Options::parse("v", &m, &["n", "level", "seed"]).expect("valid");
        assert_eq!(o.int("n", 1).ok(), Some(5));
        assert_eq!(o.int("seed", 7).ok(), Some(7));
        assert_eq!(o.float("level", 0.5).ok(), Some(1.0));
        let e = o.bool("n", false).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("v: option 'n' must be true or false, got 5 (integer)")
        );
    }
}
