//! Direction files: one direction (`save`, `load`), a named library of them in one file
//! (`save_library`, `load_library`), both safetensors with the metadata in the header, and a
//! llama.cpp control vector (`export_control_vector`, GGUF).

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::{Array, Dtype};

use super::Direction;
use crate::arrays::{read_safetensors, write_safetensors};
use crate::error::{Error, Result};

/// A direction's metadata as safetensors metadata entries (all but its vector).
fn meta_of(d: &Direction) -> Vec<(&'static str, String)> {
    vec![
        ("layer", d.layer.to_string()),
        ("point", d.point.clone()),
        ("method", d.method.clone()),
        ("n", d.n.to_string()),
        ("model", d.model.clone()),
        ("arch", d.arch.clone()),
        ("norm", d.norm.to_string()),
    ]
}

/// A direction from its vector and the metadata entries `field` reads (the inverse of
/// [`meta_of`]); `bad` names what is missing or malformed.
fn direction_from_meta(
    vector: Array,
    field: impl Fn(&str) -> Option<String>,
    bad: impl Fn(&str) -> Error,
) -> Result<Direction> {
    let get = |k: &str| field(k).ok_or_else(|| bad(&format!("no {k}")));
    Ok(Direction {
        vector: vector.as_dtype(Dtype::Float32)?,
        layer: get("layer")?.parse().map_err(|_| bad("layer"))?,
        point: get("point")?,
        method: get("method")?,
        n: get("n")?.parse().map_err(|_| bad("n"))?,
        model: get("model")?,
        arch: field("arch").unwrap_or_default(),
        norm: get("norm")?.parse().map_err(|_| bad("norm"))?,
    })
}

/// Writes `d` as safetensors: tensor `vector`, metadata `format` "mlxi.direction" and its
/// fields. Atomic.
pub fn save(d: &Direction, path: &Path) -> Result<()> {
    let meta: HashMap<String, String> = std::iter::once(("format", "mlxi.direction".to_string()))
        .chain(meta_of(d))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    write_safetensors(path, &[("vector", &d.vector)], Some(meta))
}

/// Reads a direction written by [`save`].
pub fn load(path: &Path) -> Result<Direction> {
    let (tensors, meta) = read_safetensors(path)?;
    let bad = |what: &str| {
        Error::Invalid(format!(
            "{}: not a direction saved by mlxi ({what})",
            path.display()
        ))
    };
    if meta.get("format").map(String::as_str) != Some("mlxi.direction") {
        return Err(bad("no mlxi.direction format tag"));
    }
    let vector = tensors
        .into_iter()
        .find(|(n, _)| n == "vector")
        .ok_or_else(|| bad("no vector"))?
        .1;
    direction_from_meta(vector, |k| meta.get(k).cloned(), bad)
}

/// A named set of Directions in one safetensors file: tensor `NAME` per direction, metadata
/// `NAME.layer`, `NAME.point`, ... and `format` "mlxi.directions". Atomic.
pub fn save_library(lib: &[(String, Direction)], path: &Path) -> Result<()> {
    if lib.is_empty() {
        return Err(Error::Invalid("save_library: the library is empty".into()));
    }
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), "mlxi.directions".into());
    for (name, d) in lib {
        if name.contains('.') {
            return Err(Error::Invalid(format!(
                "save_library: names cannot contain '.', got {name:?}"
            )));
        }
        for (k, val) in meta_of(d) {
            meta.insert(format!("{name}.{k}"), val);
        }
    }
    let refs: Vec<(&str, &Array)> = lib.iter().map(|(n, d)| (n.as_str(), &d.vector)).collect();
    write_safetensors(path, &refs, Some(meta))
}

/// Reads a library written by [`save_library`], in name order.
pub fn load_library(path: &Path) -> Result<Vec<(String, Direction)>> {
    let (tensors, meta) = read_safetensors(path)?;
    let bad = |what: String| {
        Error::Invalid(format!(
            "{}: not a direction library saved by mlxi ({what})",
            path.display()
        ))
    };
    if meta.get("format").map(String::as_str) != Some("mlxi.directions") {
        return Err(bad("no mlxi.directions format tag".into()));
    }
    tensors
        .into_iter()
        .map(|(name, t)| {
            let d = direction_from_meta(
                t,
                |k| meta.get(&format!("{name}.{k}")).cloned(),
                |what| bad(format!("{name}: {what}")),
            )?;
            Ok((name, d))
        })
        .collect()
}

/// Directions as a llama.cpp control vector: tensors `direction.{L}` (llama.cpp adds tensor L
/// to the output of block L, which is `blocks.{L}.hook_resid_post`; it cannot steer block 0),
/// `general.architecture` "controlvector", `controlvector.model_hint` and
/// `controlvector.layer_count`. Written to a temporary file, then renamed.
pub fn export_control_vector(ds: &[Direction], path: &Path) -> Result<()> {
    use mlx_rs::io::GgufFile;
    let gg = |e: mlx_rs::io::GgufError| Error::Invalid(format!("export_control_vector: {e}"));
    if ds.is_empty() {
        return Err(Error::Invalid(
            "export_control_vector: no directions given".into(),
        ));
    }
    if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
        return Err(Error::Invalid(format!(
            "export_control_vector: {}: the file name must end in .gguf",
            path.display()
        )));
    }
    let mut file = GgufFile::new().map_err(gg)?;
    let mut seen = Vec::new();
    for d in ds {
        if d.point != "hook_resid_post" {
            return Err(Error::Invalid(format!(
                "export_control_vector: llama.cpp adds control vectors to block outputs; a \
                 direction at {} cannot be exported (use point \"hook_resid_post\")",
                d.point
            )));
        }
        if d.layer == 0 {
            return Err(Error::Invalid(
                "export_control_vector: llama.cpp control vectors start at layer 1".into(),
            ));
        }
        if seen.contains(&d.layer) {
            return Err(Error::Invalid(format!(
                "export_control_vector: two directions at layer {}",
                d.layer
            )));
        }
        seen.push(d.layer);
        let v = d.vector.as_dtype(Dtype::Float32)?;
        file.insert_array(format!("direction.{}", d.layer), &v)
            .map_err(gg)?;
    }
    file.insert_metadata("general.architecture", "controlvector")
        .map_err(gg)?;
    file.insert_metadata("controlvector.model_hint", ds[0].arch.as_str())
        .map_err(gg)?;
    file.insert_metadata(
        "controlvector.layer_count",
        Array::from_int(ds.len() as i32),
    )
    .map_err(gg)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp.gguf", std::process::id()));
    file.save(&tmp).map_err(gg)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
