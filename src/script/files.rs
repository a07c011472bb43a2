//! Writing result files from scripts: atomic writes and `save_json`.
//!
//! Scripts reach the file system only through the listed save/load functions and `import`;
//! every path is resolved and checked by [`crate::fsaccess`] (through
//! [`super::Context::write_path`] and [`super::Context::read_path`]): relative paths resolve
//! against the script's folder.

use std::io::Write;
use std::path::Path;

use rhai::plugin::*;
use rhai::{Array, Dynamic, Engine, Map};
use serde_json::Value;

use super::tensor::{f32_to_f64, Tensor};
use super::{context, RhaiResult};
use crate::{Error, Result};

/// Temporaries of [`write_atomic`] are `.mlxi-PID-RANDOM.tmp`, next to the file they replace.
pub const TEMP_PREFIX: &str = ".mlxi-";
pub const TEMP_SUFFIX: &str = ".tmp";

/// A temporary older than this whose writer is unknown counts as stale.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether process `pid` is still running.
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the temporaries that a killed run left in `dir`: those whose writing process is no
/// longer running, and those of an unknown writer not touched for ten minutes. Returns how
/// many were removed. Errors are ignored (another process may remove the same file).
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(middle) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
        else {
            continue;
        };
        let pid = middle
            .split_once('-')
            .and_then(|(p, _)| p.parse::<i32>().ok())
            .filter(|&p| p > 0);
        let stale = match pid {
            Some(pid) => pid != std::process::id() as i32 && !process_alive(pid),
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER),
        };
        if stale
            && entry.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so the
/// file is either the old one or the complete new one. Missing parent folders are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    // tempfile creates 0600; results and tensors are ordinary files (0644 before the umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

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
        return to_json_at(&Dynamic::from_map(d.to_map()), depth + 1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("sub").join("x.json");
        write_atomic(&path, b"1")?;
        write_atomic(&path, b"22")?;
        assert_eq!(std::fs::read(&path).ok(), Some(b"22".to_vec()));
        let leftovers = std::fs::read_dir(dir.path().join("sub"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(leftovers, 1);
        Ok(())
    }

    #[test]
    fn only_stale_temporaries_are_removed() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let put = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x")
                .map(|_| p)
                .map_err(|e| Error::io(name, e))
        };
        // No process has this id (above every system's pid limit).
        let dead = put(".mlxi-999999999-abc.tmp")?;
        let mine = put(&format!(".mlxi-{}-abc.tmp", std::process::id()))?;
        let fresh_unknown = put(".mlxi-abc.tmp")?;
        let old_unknown = put(".mlxi-def.tmp")?;
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old_unknown)
            .and_then(|f| f.set_modified(hour_ago))
            .map_err(|e| Error::io(&old_unknown, e))?;
        let other = put("data.tmp")?;
        assert_eq!(remove_stale_temporaries(dir.path()), 2);
        assert!(!dead.exists() && !old_unknown.exists());
        assert!(mine.exists() && fresh_unknown.exists() && other.exists());
        Ok(())
    }
}
