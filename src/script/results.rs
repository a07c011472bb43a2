//! `results(path)`: a JSON results file that grows as an experiment runs. Every `set` or
//! `push` rewrites the whole file atomically, so the file on disk is always valid JSON holding
//! everything finished so far, and an interrupted run keeps what it did.
//!
//! Values are converted to JSON when they are stored (Tensors as nested arrays, non-finite
//! numbers as null, as `save_json` does); `get` reads them back as script values.
//!
//! One writer per file: opening a results file takes an advisory lock (`flock`) on a lock file
//! next to it (`.NAME.mlxi-lock`), held while the Results value lives, so a second process
//! writing the same file gets an error instead of silently losing rows. Within one process a
//! file may be opened again (the REPL re-running `let r = results(..)`); the handles share the
//! lock. Opening also removes temporaries that a killed run left in the folder.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};

use rhai::plugin::*;
use rhai::{Array, Dynamic, Engine, Map, INT};
use serde_json::Value;

use super::files::to_json;
use super::options::Options;
use super::{context, RhaiResult};
use crate::arrays::{remove_stale_temporaries, write_atomic};
use crate::{Error, Result};

/// An exclusive advisory lock on a results file, released when the last handle is dropped.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

thread_local! {
    /// The locks this process holds, by the lock file's path.
    static HELD: RefCell<HashMap<PathBuf, Weak<WriterLock>>> = RefCell::default();
}

/// The lock file of the results file at `path`: `.NAME.mlxi-lock` in the same folder.
fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.mlxi-lock"))
}

/// Takes the writer lock for the results file at `path` (its folder must exist), or shares
/// the one this process already holds; another process holding it is an error naming the
/// file and that process.
pub fn lock_for_writing(path: &Path) -> Result<Rc<WriterLock>> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::AsRawFd;
    let lock = lock_path(path);
    let key = lock
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .map(|d| d.join(lock.file_name().unwrap_or_default()))
        .unwrap_or_else(|| lock.clone());
    if let Some(held) = HELD.with(|h| h.borrow().get(&key).and_then(Weak::upgrade)) {
        return Ok(held);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| Error::io(&lock, e))?;
    // SAFETY: flock on a file descriptor this function owns.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(&lock, err));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder
            .trim()
            .parse::<u32>()
            .map(|pid| format!(" (process {pid})"))
            .unwrap_or_default();
        return Err(Error::Invalid(format!(
            "results: {} is being written by another mlxi{holder}; two writers would lose each \
             other's rows, so use another file or wait for that run to end",
            path.display()
        )));
    }
    // Record the holder for the error message above; the lock is what counts.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    let held = Rc::new(WriterLock { _file: file });
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        h.retain(|_, w| w.strong_count() > 0);
        h.insert(key, Rc::downgrade(&held));
    });
    Ok(held)
}

/// The file and everything stored in it so far.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    data: serde_json::Map<String, Value>,
    _lock: Rc<WriterLock>,
}

impl ResultsFile {
    /// Starts the file at `path`: empty (replacing an old file), or with what an old file
    /// holds when `resume` is set. Writes it at once.
    pub fn create(path: &Path, resume: bool) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock_for_writing(path)?;
        remove_stale_temporaries(dir);
        let data = if resume && path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            match serde_json::from_str(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "results: {} does not hold a JSON object, so it cannot be resumed",
                        path.display()
                    )))
                }
                // The parser's position only: its message could quote the file.
                Err(e) => {
                    return Err(Error::Invalid(format!(
                        "results: {} is not valid JSON (line {}, column {}), so it cannot be \
                         resumed",
                        path.display(),
                        e.line(),
                        e.column()
                    )))
                }
            }
        } else {
            serde_json::Map::new()
        };
        let f = ResultsFile {
            path: path.to_path_buf(),
            data,
            _lock: lock,
        };
        f.write()?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self) -> Result<()> {
        let mut text = serde_json::to_string_pretty(&self.data)
            .map_err(|e| Error::Invalid(format!("results: {e}")))?;
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }

    /// Sets a top-level key and rewrites the file.
    pub fn set(&mut self, key: &str, value: Value) -> Result<()> {
        self.data.insert(key.to_string(), value);
        self.write()
    }

    /// Appends to the array at `key` (created when missing) and rewrites the file; returns the
    /// array's new length.
    pub fn push(&mut self, key: &str, value: Value) -> Result<usize> {
        let entry = self
            .data
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(items) = entry else {
            return Err(Error::Invalid(format!(
                "results.push: '{key}' holds {}, not an array",
                json_kind(entry)
            )));
        };
        items.push(value);
        let n = items.len();
        self.write()?;
        Ok(n)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.data.keys()
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

/// A JSON value as a script value: objects as maps, arrays as arrays, null as `()`.
pub fn from_json(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(a) => Dynamic::from_array(a.iter().map(from_json).collect()),
        Value::Object(o) => Dynamic::from_map(
            o.iter()
                .map(|(k, v)| (k.as_str().into(), from_json(v)))
                .collect::<Map>(),
        ),
    }
}

/// The script-side handle: a shared results file.
#[derive(Clone)]
pub struct Results(Rc<RefCell<ResultsFile>>);

impl Results {
    pub fn summary(&self) -> String {
        let f = self.0.borrow();
        let keys: Vec<&str> = f.keys().map(String::as_str).collect();
        format!("Results({}: {})", f.path.display(), keys.join(", "))
    }
}

fn open(ctx: &NativeCallContext, path: &str, opts: &Map) -> Result<Results> {
    let o = Options::parse("results", opts, &["resume"])?;
    let resume = o.bool("resume", false)?;
    let path = context(ctx).write_path("results", path)?;
    Ok(Results(Rc::new(RefCell::new(ResultsFile::create(
        &path, resume,
    )?))))
}

#[export_module]
mod results_functions {
    use super::*;

    pub type Results = super::Results;

    /// A JSON results file that is rewritten (atomically) on every `set` and `push`, so it
    /// always holds everything finished so far. Starts empty, replacing an old file. A
    /// relative path is relative to the script's folder.
    ///
    /// Example: `let r = results("out/probe.json"); r.set("model", m.info().name); r.push("layers", #{layer: 3, acc: 0.8});`
    #[rhai_fn(name = "results", return_raw)]
    pub fn results(ctx: NativeCallContext, path: &str) -> RhaiResult<Results> {
        Ok(open(&ctx, path, &Map::new())?)
    }

    /// `results` with options: `resume` (true: keep what an existing file holds and add to
    /// it).
    ///
    /// Example: `let r = results("out/sweep.json", #{resume: true});`
    #[rhai_fn(name = "results", return_raw)]
    pub fn results_with(ctx: NativeCallContext, path: &str, opts: Map) -> RhaiResult<Results> {
        Ok(open(&ctx, path, &opts)?)
    }

    /// Sets a top-level key and rewrites the file.
    ///
    /// Example: `r.set("best_layer", 12)`
    #[rhai_fn(name = "set", return_raw)]
    pub fn set(r: &mut Results, key: &str, value: Dynamic) -> RhaiResult<()> {
        let json = to_json(&value)?;
        Ok(r.0.borrow_mut().set(key, json)?)
    }

    /// Appends a value to the array at `key` (created when missing), rewrites the file and
    /// returns the array's length.
    ///
    /// Example: `r.push("layers", #{layer: l, accuracy: acc})`
    #[rhai_fn(name = "push", return_raw)]
    pub fn push(r: &mut Results, key: &str, value: Dynamic) -> RhaiResult<INT> {
        let json = to_json(&value)?;
        Ok(r.0.borrow_mut().push(key, json)? as INT)
    }

    /// The value stored at `key` (as written to JSON: Tensors come back as arrays), or `()`.
    ///
    /// Example: `r.get("layers").len()`
    #[rhai_fn(name = "get", pure)]
    pub fn get(r: &mut Results, key: &str) -> Dynamic {
        r.0.borrow()
            .get(key)
            .map(from_json)
            .unwrap_or(Dynamic::UNIT)
    }

    /// `r[key]` is `r.get(key)`.
    ///
    /// Example: `r["layers"]`
    #[rhai_fn(index_get, pure)]
    pub fn index(r: &mut Results, key: &str) -> Dynamic {
        r.0.borrow()
            .get(key)
            .map(from_json)
            .unwrap_or(Dynamic::UNIT)
    }

    /// The keys stored so far, sorted.
    ///
    /// Example: `keys(r)  // ["layers", "model"]`
    #[rhai_fn(name = "keys", pure)]
    pub fn keys(r: &mut Results) -> Array {
        r.0.borrow()
            .keys()
            .map(|k| Dynamic::from(k.clone()))
            .collect()
    }

    /// The path of the file.
    ///
    /// Example: `r.path`
    #[rhai_fn(get = "path", pure)]
    pub fn path(r: &mut Results) -> String {
        r.0.borrow().path().display().to_string()
    }

    /// `Results(path: keys)`.
    #[rhai_fn(name = "to_string", name = "to_debug", pure)]
    pub fn to_string(r: &mut Results) -> String {
        r.summary()
    }
}

/// Registers `Results` and `results(path)`.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Results>("Results");
    engine.register_global_module(exported_module!(results_functions).into());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Value {
        let text = std::fs::read_to_string(path).expect("the file exists");
        serde_json::from_str(&text).expect("valid JSON")
    }

    #[test]
    fn every_push_leaves_valid_json_with_every_entry() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("out").join("r.json");
        let mut f = ResultsFile::create(&path, false)?;
        assert_eq!(read(&path), serde_json::json!({}));
        f.set("model", Value::from("m"))?;
        for i in 0..5 {
            assert_eq!(f.push("layers", serde_json::json!({"layer": i}))?, i + 1);
            let v = read(&path);
            let layers = v["layers"].as_array().expect("an array");
            assert_eq!(layers.len(), i + 1);
            assert_eq!(layers[i]["layer"], i);
            assert_eq!(v["model"], "m");
        }
        let err = f.push("model", Value::Null).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("results.push: 'model' holds a string, not an array")
        );
        // Resuming keeps the entries; starting afresh drops them.
        let mut g = ResultsFile::create(&path, true)?;
        g.push("layers", Value::from(5))?;
        assert_eq!(read(&path)["layers"].as_array().map(Vec::len), Some(6));
        ResultsFile::create(&path, false)?;
        assert_eq!(read(&path), serde_json::json!({}));
        Ok(())
    }

    #[test]
    fn json_comes_back_as_script_values() {
        let v = serde_json::json!({"a": [1, 2.5, null, "x", true]});
        let d = from_json(&v);
        assert_eq!(
            super::super::display::inline(&d),
            "#{a: [1, 2.5, (), \"x\", true]}"
        );
    }
}
