//! Arrays and their files, for the engine and the script layer alike: dtype names, shape
//! helpers, the size check every script-chosen shape passes before MLX allocates it,
//! safetensors reading and writing, and atomic file writes.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use mlx_rs::{Array, Dtype};

use crate::error::{Error, Result};

/// A number the way a person reads it: 4 significant decimals, scientific when tiny or huge.
pub fn fmt_number(x: f32) -> String {
    let a = x.abs();
    if x == 0.0 {
        "0".into()
    } else if !x.is_finite() {
        format!("{x}")
    } else if !(1e-3..1e5).contains(&a) {
        format!("{x:.3e}")
    } else {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// `[2, 3]`
pub fn fmt_shape(shape: &[i32]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// Every element as f32, in row-major order (evaluates the array).
pub fn to_f32_vec(a: &Array) -> Result<Vec<f32>> {
    if a.size() == 0 {
        return Ok(Vec::new());
    }
    let a = a.as_dtype(Dtype::Float32)?.contiguous()?;
    a.eval()?;
    a.to_vec_exact::<f32>()
        .map_err(|e| Error::Invalid(format!("cannot read tensor values: {e}")))
}

/// The dtype as users write it: "float32", "bfloat16", "int32", ...
pub fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Bool => "bool",
        Dtype::Uint8 => "uint8",
        Dtype::Uint16 => "uint16",
        Dtype::Uint32 => "uint32",
        Dtype::Uint64 => "uint64",
        Dtype::Int8 => "int8",
        Dtype::Int16 => "int16",
        Dtype::Int32 => "int32",
        Dtype::Int64 => "int64",
        Dtype::Float16 => "float16",
        Dtype::Float32 => "float32",
        Dtype::Float64 => "float64",
        Dtype::Bfloat16 => "bfloat16",
        Dtype::Complex64 => "complex64",
    }
}

fn dtype_bytes(d: Dtype) -> u128 {
    match d {
        Dtype::Bool | Dtype::Uint8 | Dtype::Int8 => 1,
        Dtype::Uint16 | Dtype::Int16 | Dtype::Float16 | Dtype::Bfloat16 => 2,
        Dtype::Uint32 | Dtype::Int32 | Dtype::Float32 => 4,
        Dtype::Uint64 | Dtype::Int64 | Dtype::Float64 | Dtype::Complex64 => 8,
    }
}

/// The shape both operands broadcast to, numpy rules.
pub fn broadcast_shapes(a: &[i32], b: &[i32]) -> Option<Vec<i32>> {
    let n = a.len().max(b.len());
    let dim = |s: &[i32], i: usize| {
        let pad = n - s.len();
        if i < pad {
            1
        } else {
            s[i - pad]
        }
    };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// The machine's physical memory in bytes (None if unknown).
fn physical_memory() -> Option<u128> {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u128 * page as u128)
}

/// The most bytes a new tensor may take: `MLXI_MAX_TENSOR_BYTES` when set, else the
/// machine's physical memory less what MLX already holds. None when unknown.
fn tensor_byte_limit() -> Option<(u128, &'static str)> {
    if let Some(n) = std::env::var("MLXI_MAX_TENSOR_BYTES")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse::<u128>().ok())
        .filter(|&n| n > 0)
    {
        return Some((n, "the MLXI_MAX_TENSOR_BYTES limit"));
    }
    let held = mlx_rs::memory::active_memory().unwrap_or(0) as u128;
    physical_memory().map(|p| (p.saturating_sub(held), "this machine's free memory"))
}

/// The most elements one tensor made by a script may have (8 GiB of float32): a fixed cap, so
/// that an accidental shape such as `zeros([65536, 65536])` is refused on every machine and
/// backend, whatever its memory, rather than left to the allocator.
pub const MAX_ELEMENTS: u128 = i32::MAX as u128;

/// Refuses a result that cannot be made, before MLX tries to allocate it (MLX's CPU
/// allocator does not survive a failed allocation): more than [`MAX_ELEMENTS`] elements, or
/// more bytes than memory holds (physical memory less what MLX already uses, or
/// `MLXI_MAX_TENSOR_BYTES`). Call it before creating a tensor whose shape a script chose.
pub fn check_fits(shape: &[i32], dtype: Dtype) -> Result<()> {
    let elements = shape
        .iter()
        .try_fold(1u128, |n, &d| n.checked_mul(d.max(0) as u128));
    let too_many = || {
        Error::Invalid(format!(
            "a tensor of shape {} has more than {MAX_ELEMENTS} elements, the most mlxi creates",
            fmt_shape(shape)
        ))
    };
    let elements = elements.ok_or_else(too_many)?;
    if elements > MAX_ELEMENTS {
        return Err(too_many());
    }
    let bytes = elements * dtype_bytes(dtype);
    match tensor_byte_limit() {
        Some((limit, what)) if bytes > limit => Err(Error::Invalid(format!(
            "a {} tensor of shape {} needs {}, more than {what} ({})",
            dtype_name(dtype),
            fmt_shape(shape),
            fmt_bytes(bytes),
            fmt_bytes(limit)
        ))),
        _ => Ok(()),
    }
}

/// Bytes for people: `17.2 GB`, `512.0 MB`, `96 bytes`.
fn fmt_bytes(b: u128) -> String {
    match b {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} bytes"),
    }
}

/// Writes `tensors` as a safetensors file, atomically: a temporary file in the same folder, then
/// a rename, so a reader never sees half a file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Array)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let arrays = tensors
        .iter()
        .map(|(name, array)| {
            let a = array.contiguous()?;
            a.eval()?;
            Ok((name.to_string(), a))
        })
        .collect::<Result<Vec<_>>>()?;
    let views = arrays
        .iter()
        .map(|(name, a)| {
            let view = safetensors::tensor::TensorView::try_from(a)
                .map_err(|e| Error::Invalid(format!("cannot save this tensor: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::Invalid(format!("cannot save this tensor: {e}")))?;
    write_atomic(path, &bytes)
}

/// What is wrong with a file that is not safetensors, in words that never quote the file: a
/// script may point `load_tensor` at any file it can read, and its text must not end up in
/// an error message (the JSON parser's messages can quote the header, tensor names are
/// quoted by others).
fn header_problem(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidHeader(_) => "the header is not UTF-8 text".into(),
        E::InvalidHeaderDeserialization(j) | E::JsonError(j) => format!(
            "the header is not safetensors JSON (line {}, column {})",
            j.line(),
            j.column()
        ),
        E::HeaderTooLarge | E::HeaderTooSmall | E::InvalidHeaderLength => {
            "the header length does not fit the file".into()
        }
        E::TensorNotFound(_) | E::InvalidOffset(_) | E::TensorInvalidInfo => {
            "a tensor's offsets, shape or type are invalid".into()
        }
        E::IoError(io) => format!("cannot read it ({})", io.kind()),
        _ => "the header does not describe the data".into(),
    }
}

/// Reads every tensor of a safetensors file, with its metadata.
#[allow(clippy::type_complexity)]
pub fn read_safetensors(path: &Path) -> Result<(Vec<(String, Array)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let invalid = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("{}: not a safetensors file: {e}", path.display()))
    };
    let unsafe_invalid = |e: safetensors::SafeTensorError| invalid(&header_problem(&e));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(unsafe_invalid)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(unsafe_invalid)?;
    let mut tensors = Vec::new();
    for (name, view) in st.iter() {
        let array = Array::try_from(view).map_err(|e| invalid(&e))?;
        tensors.push((name.to_string(), array));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_rules() {
        assert_eq!(broadcast_shapes(&[2, 3], &[3]), Some(vec![2, 3]));
        assert_eq!(broadcast_shapes(&[2, 1], &[1, 4]), Some(vec![2, 4]));
        assert_eq!(broadcast_shapes(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast_shapes(&[2, 3], &[2]), None);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_number(0.5), "0.5");
        assert_eq!(fmt_number(2.0), "2");
        assert_eq!(fmt_number(1.0e-5), "1.000e-5");
    }

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
