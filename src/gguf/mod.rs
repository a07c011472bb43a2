//! A validating reader for GGUF files (llama.cpp's format), in plain Rust.
//!
//! Everything in the header is checked before it is used: the counts of metadata entries and
//! tensors, string and array lengths (against the bytes that remain, before anything is
//! allocated), value types, tensor ranks (1 to 4, GGML's maximum), dimensions (positive, each fits
//! MLX's `i32` shape, the element count without overflow), tensor types, `general.alignment`
//! (a power of two), tensor data extents (aligned, inside the file, not overlapping) and each
//! tensor's byte size against its type and shape. Nothing from the file reaches MLX until it has
//! passed these checks; [`quants`] turns tensor bytes into numbers.
//!
//! Errors name the file and the problem; names read from the file are shown truncated to 64
//! characters with non-printable characters escaped ([`shown`]).

pub mod fuzz;
pub mod quants;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

pub use quants::GgmlType;

/// GGML's maximum tensor rank.
pub const MAX_DIMS: usize = 4;
/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested arrays deeper than this are refused (llama.cpp reads none at all).
const MAX_ARRAY_DEPTH: usize = 1;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements all of one type (`Value::Array` only inside an array of arrays).
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an integer (any integer type, or a bool as 0/1).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v as i64,
            Value::I8(v) => v as i64,
            Value::U16(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::U32(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            Value::Bool(v) => v as i64,
            _ => return None,
        })
    }

    /// The value as a number (any integer or float type).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::Bool(_) => None,
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// GGUF's name for the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::F32(_) => "float32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F64(_) => "float64",
        }
    }
}

/// One tensor's header entry, validated.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them, innermost first (reverse them for a row-major shape).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Elements (the product of `dims`).
    pub n_elements: u64,
    /// Bytes of data, from the type and the element count.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The row-major shape (GGUF's dimensions reversed), as MLX takes it.
    pub fn shape(&self) -> Vec<i32> {
        // Each dimension was checked to fit an i32 when the header was read.
        self.dims.iter().rev().map(|&d| d as i32).collect()
    }
}

/// Where the tensor data comes from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Bytes(Arc<[u8]>),
}

/// A parsed and validated GGUF file: metadata in memory, tensor data read on demand.
#[derive(Debug)]
pub struct GgufFile {
    /// The name errors use (the path as given).
    name: String,
    source: Source,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// The file's length in bytes.
    pub len: u64,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
}

/// A name from the file as errors show it: at most 64 characters, non-printables escaped.
pub fn shown(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 64 {
            out.push('…');
            break;
        }
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    format!("\"{out}\"")
}

/// Bytes as a name for an error message when they are not valid UTF-8.
fn shown_bytes(b: &[u8]) -> String {
    let cut = &b[..b.len().min(64)];
    let mut out: String = cut
        .iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect();
    if b.len() > 64 {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// A reader that knows how many bytes remain and refuses to read past them.
struct Reader<R> {
    r: R,
    pos: u64,
    len: u64,
}

/// Header parsing failure, turned into an `Error` with the file name by the caller.
type Parse<T> = std::result::Result<T, String>;

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Parse<Vec<u8>> {
        if n > self.remaining() {
            return Err(format!(
                "{} needs {n} bytes at offset {} but only {} remain (truncated or corrupt file)",
                what(),
                self.pos,
                self.remaining()
            ));
        }
        // Read through `take` so the buffer grows with the bytes actually read, never from the
        // claimed length alone.
        let mut buf = Vec::new();
        (&mut self.r)
            .take(n)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{}: read failed at offset {}: {e}", what(), self.pos))?;
        if buf.len() as u64 != n {
            return Err(format!(
                "{} at offset {} runs past the end of the file",
                what(),
                self.pos
            ));
        }
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Parse<[u8; N]> {
        if (N as u64) > self.remaining() {
            return Err(format!(
                "{} at offset {} runs past the end of the file ({} bytes)",
                what(),
                self.pos,
                self.len
            ));
        }
        let mut buf = [0u8; N];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| format!("{}: read failed at offset {}: {e}", what(), self.pos))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string (u64 length, then bytes), which must be UTF-8.
    fn string(&mut self, what: &dyn Fn() -> String) -> Parse<String> {
        let n = self.u64(&|| format!("the length of {}", what()))?;
        if n > self.remaining() {
            return Err(format!(
                "{} has length {n} at offset {} but only {} bytes remain",
                what(),
                self.pos,
                self.remaining()
            ));
        }
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|e| {
            let b = e.into_bytes();
            format!("{} {} is not valid UTF-8", what(), shown_bytes(&b))
        })
    }

    fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Parse<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(format!(
                        "{} is a bool with byte value {b} (not 0 or 1)",
                        what()
                    ))
                }
            },
            8 => Value::String(self.string(what)?),
            9 => {
                let ety = self.u32(&|| format!("the element type of {}", what()))?;
                let n = self.u64(&|| format!("the length of {}", what()))?;
                let min = min_value_size(ety).ok_or_else(|| {
                    format!(
                        "{} has unknown element type id {ety} (valid: 0 to 12)",
                        what()
                    )
                })?;
                if ety == 9 && depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("{} nests arrays deeper than mlxi reads", what()));
                }
                // Every element takes at least `min` bytes: bound the count by what remains
                // before allocating anything.
                if n.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    return Err(format!(
                        "{} claims {n} elements at offset {} but only {} bytes remain",
                        what(),
                        self.pos,
                        self.remaining()
                    ));
                }
                let mut items = Vec::with_capacity((n as usize).min(1 << 16));
                for i in 0..n {
                    items.push(self.value(ety, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(format!(
                    "{} has unknown value type id {other} (valid: 0 to 12)",
                    what()
                ))
            }
        })
    }
}

/// The fewest bytes a value of GGUF type `ty` can take.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// The header and tensor table, validated against a file of `len` bytes.
struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

fn parse_header<R: Read>(r: R, len: u64) -> Parse<Header> {
    let mut rd = Reader { r, pos: 0, len };
    let magic: [u8; 4] = rd.array(&|| "the magic number".to_string())?;
    if &magic != b"GGUF" {
        return Err(format!(
            "not a GGUF file (magic {} instead of \"GGUF\")",
            shown_bytes(&magic)
        ));
    }
    let version = rd.u32(&|| "the version".to_string())?;
    if !(2..=3).contains(&version) {
        let hint = if version.swap_bytes() <= 3 {
            " (a big-endian file?)"
        } else {
            ""
        };
        return Err(format!(
            "unsupported GGUF version {version}{hint} (supported: 2, 3)"
        ));
    }
    let n_tensors = rd.u64(&|| "the tensor count".to_string())?;
    let n_kv = rd.u64(&|| "the metadata count".to_string())?;
    // A metadata entry takes at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes; a
    // tensor entry 8 (name length) + 1 (name) + 4 (rank) + 8 (one dimension) + 4 (type) + 8
    // (offset).
    let rem = rd.remaining();
    if n_kv > rem / 14 {
        return Err(format!(
            "the header claims {n_kv} metadata entries, more than the {rem} remaining bytes can hold"
        ));
    }
    if n_tensors > rem / 33 {
        return Err(format!(
            "the header claims {n_tensors} tensors, more than the {rem} remaining bytes can hold"
        ));
    }

    // Capacities are capped too: an entry in memory is larger than its minimum on disk.
    let mut metadata = Vec::with_capacity((n_kv as usize).min(1 << 12));
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let key = rd.string(&|| format!("metadata key {i}"))?;
        if key.is_empty() {
            return Err(format!("metadata key {i} is empty"));
        }
        let ty = rd.u32(&|| format!("the type of metadata {}", shown(&key)))?;
        let value = rd.value(ty, 0, &|| format!("metadata {}", shown(&key)))?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key {} appears twice", shown(&key)));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_i64() {
            Some(a) if !matches!(v, Value::Bool(_)) && a > 0 && (a as u64).is_power_of_two() => {
                a as u64
            }
            _ => {
                return Err(format!(
                    "general.alignment must be a positive power of two, found {}",
                    match v {
                        Value::String(_) | Value::Array(_) => v.type_name().to_string(),
                        other => format!("{other:?}"),
                    }
                ))
            }
        },
    };

    let mut tensors = Vec::with_capacity((n_tensors as usize).min(1 << 12));
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = rd.string(&|| format!("tensor name {i}"))?;
        if name.is_empty() {
            return Err(format!("tensor {i} has an empty name"));
        }
        let what = || format!("tensor {}", shown(&name));
        let n_dims = rd.u32(&|| format!("the rank of {}", what()))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(format!(
                "{} has {n_dims} dimensions (valid: 1 to {MAX_DIMS})",
                what()
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let v = rd.u64(&|| format!("dimension {d} of {}", what()))?;
            if v == 0 || v > i32::MAX as u64 {
                return Err(format!(
                    "{} has dimension {d} = {} (valid: 1 to {})",
                    what(),
                    v as i64,
                    i32::MAX
                ));
            }
            n_elements = n_elements
                .checked_mul(v)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    format!("{} has too many elements (the product overflows)", what())
                })?;
            dims.push(v);
        }
        let ty_id = rd.u32(&|| format!("the type of {}", what()))?;
        let ty = GgmlType::from_id(ty_id)
            .ok_or_else(|| format!("{} has unknown type id {ty_id}", what()))?;
        let (block, type_size) = ty.block();
        if dims[0] % block != 0 {
            return Err(format!(
                "{} has {} elements per row, not a multiple of {}'s block of {block}",
                what(),
                dims[0],
                ty.name()
            ));
        }
        let n_bytes = (n_elements / block)
            .checked_mul(type_size)
            .ok_or_else(|| format!("{} is too large (its byte size overflows)", what()))?;
        let offset = rd.u64(&|| format!("the offset of {}", what()))?;
        if offset % alignment != 0 {
            return Err(format!(
                "{} has offset {offset}, not a multiple of the alignment {alignment}",
                what()
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!("{} appears twice", what()));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_elements,
            n_bytes,
        });
    }

    let data_offset = rd
        .pos
        .checked_next_multiple_of(alignment)
        .filter(|&o| o <= len || n_tensors == 0)
        .ok_or_else(|| {
            format!(
                "the data section (at offset {} aligned to {alignment}) starts past the end of the file ({len} bytes)",
                rd.pos
            )
        })?;
    let data_len = len.saturating_sub(data_offset);
    for t in &tensors {
        if t.offset
            .checked_add(t.n_bytes)
            .is_none_or(|end| end > data_len)
        {
            return Err(format!(
                "tensor {} ({} bytes at data offset {}) extends past the end of the file (data section of {data_len} bytes)",
                shown(&t.name),
                t.n_bytes,
                t.offset
            ));
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        // Ends were checked above, so the sum cannot overflow.
        if w[0].offset + w[0].n_bytes > w[1].offset {
            return Err(format!(
                "tensors {} and {} overlap (data offsets {} + {} bytes and {})",
                shown(&w[0].name),
                shown(&w[1].name),
                w[0].offset,
                w[0].n_bytes,
                w[1].offset
            ));
        }
    }
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

impl GgufFile {
    /// Open and validate a GGUF file. Only the header is read; tensor data is read on demand.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let name = path.display().to_string();
        let h = parse_header(BufReader::with_capacity(1 << 16, f), len)
            .map_err(|m| Error::Model(format!("{name}: {m}")))?;
        Ok(GgufFile::assemble(
            name,
            Source::File(path.to_path_buf()),
            len,
            h,
        ))
    }

    /// Validate a GGUF file held in memory (`name` is what errors call it).
    pub fn from_bytes(name: &str, bytes: impl Into<Arc<[u8]>>) -> Result<GgufFile> {
        let bytes: Arc<[u8]> = bytes.into();
        let len = bytes.len() as u64;
        let h = parse_header(&bytes[..], len).map_err(|m| Error::Model(format!("{name}: {m}")))?;
        Ok(GgufFile::assemble(
            name.to_string(),
            Source::Bytes(bytes),
            len,
            h,
        ))
    }

    fn assemble(name: String, source: Source, len: u64, h: Header) -> GgufFile {
        let index = h
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        GgufFile {
            name,
            source,
            version: h.version,
            alignment: h.alignment,
            data_offset: h.data_offset,
            len,
            metadata: h.metadata,
            index,
            tensors: h.tensors,
        }
    }

    /// The name errors use (the path as given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An error about this file.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::Model(format!("{}: {msg}", self.name))
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                self.error(format!(
                    "metadata {key} is {}, expected {want}",
                    v.type_name()
                ))
            }),
        }
    }

    /// A string value; another type is an error.
    pub fn string(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A numeric scalar (any integer or float type).
    pub fn number(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    /// An integer scalar (any integer type or a bool).
    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", Value::as_i64)
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed(key, "an array of strings", |v| match v {
            Value::Array(a) => a.iter().map(Value::as_str).collect(),
            _ => None,
        })
    }

    /// An array of numbers.
    pub fn numbers(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.typed(key, "an array of numbers", |v| match v {
            Value::Array(a) => a.iter().map(Value::as_f64).collect(),
            _ => None,
        })
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed(key, "an array of integers", |v| match v {
            Value::Array(a) => a.iter().map(Value::as_i64).collect(),
            _ => None,
        })
    }

    /// The raw bytes of a tensor's data (extents were validated when the file was opened).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        let start = self.data_offset + t.offset;
        match &self.source {
            Source::Bytes(b) => Ok(b[start as usize..(start + t.n_bytes) as usize].to_vec()),
            Source::File(path) => {
                let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
                // The file may have changed since it was validated: check again.
                let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
                if start + t.n_bytes > len {
                    return Err(self.error(format!(
                        "tensor {} lies past the end of the file, which shrank to {len} bytes",
                        shown(&t.name)
                    )));
                }
                f.seek(SeekFrom::Start(start))
                    .map_err(|e| Error::io(path, e))?;
                let mut buf = vec![0u8; t.n_bytes as usize];
                f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
                Ok(buf)
            }
        }
    }

    /// A tensor's values as f32 (dequantized when quantized); an unsupported type is an error
    /// that names it and lists the supported ones.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        if !t.ty.is_supported() {
            return Err(self.unsupported(t));
        }
        let bytes = self.tensor_bytes(t)?;
        quants::dequantize(t.ty, &bytes, t.n_elements as usize)
            .map_err(|m| self.error(format!("tensor {}: {m}", shown(&t.name))))
    }

    /// The error for a tensor whose type mlxi cannot read.
    pub fn unsupported(&self, t: &TensorInfo) -> Error {
        self.error(format!(
            "tensor {} has type {}, which mlxi cannot read (supported: {})",
            shown(&t.name),
            t.ty.name(),
            quants::SUPPORTED
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}
