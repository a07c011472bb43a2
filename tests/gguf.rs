//! mlxi's GGUF reader: dequantization of every supported type against the `gguf` Python
//! package, a K-quant llama GGUF against a float64 numpy forward pass, the default model's
//! quantized triplets against MLX's own GGUF reader, and hostile headers (each field set to a
//! bad value, truncation at every byte) giving clear errors.
//! Fixtures: tests/fixtures/gguf, made by tests/reference/gguf_fixtures.py.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxi::gguf::{GgmlType, GgufFile};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn read_f32(st: &safetensors::SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn every_supported_type_matches_gguf_py() {
    let g = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let bytes = std::fs::read(fixture("quants_expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut seen = Vec::new();
    for t in g.tensors() {
        if t.name == "iq2_xxs" {
            continue;
        }
        assert_eq!(t.ty.name().to_lowercase(), t.name, "tensor {} type", t.name);
        assert_eq!(t.shape(), vec![4, 512]);
        let got = g.dequantize(t).unwrap();
        let (shape, want) = read_f32(&expected, &t.name);
        assert_eq!(shape, vec![4, 512]);
        assert_eq!(got.len(), want.len());
        let mut worst = 0f32;
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                a.is_finite() && b.is_finite(),
                "{} [{i}]: {a} vs {b}",
                t.name
            );
            // Exact, or within 1e-6 relative to the larger magnitude.
            let d = (a - b).abs() / a.abs().max(b.abs()).max(f32::MIN_POSITIVE);
            worst = worst.max(d);
        }
        println!("{}: max relative difference {worst:e}", t.name);
        assert!(worst <= 1e-6, "{}: max relative difference {worst}", t.name);
        // Not all zeros or constant: the fixture exercises every code.
        let distinct: std::collections::BTreeSet<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert!(
            distinct.len() > 16,
            "{}: only {} distinct values",
            t.name,
            distinct.len()
        );
        seen.push(t.ty);
    }
    for ty in mlxi::gguf::quants::SUPPORTED {
        assert!(
            seen.contains(&ty),
            "no fixture tensor of type {}",
            ty.name()
        );
    }
}

#[test]
fn unsupported_type_is_named() {
    let g = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let t = g.tensors().iter().find(|t| t.name == "iq2_xxs").unwrap();
    assert_eq!(t.ty, GgmlType::IQ2_XXS);
    let err = g.dequantize(t).unwrap_err().to_string();
    for needle in [
        "quants.gguf",
        "\"iq2_xxs\"",
        "IQ2_XXS",
        "supported:",
        "Q4_K",
        "Q6_K",
        "BF16",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile headers

/// A small GGUF with the offsets of its fields, to set them one at a time.
struct Built {
    bytes: Vec<u8>,
    at: HashMap<&'static str, usize>,
}

impl Built {
    fn set_u64(&self, field: &str, v: u64) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let i = self.at[field];
        b[i..i + 8].copy_from_slice(&v.to_le_bytes());
        b
    }
    fn set_u32(&self, field: &str, v: u32) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let i = self.at[field];
        b[i..i + 4].copy_from_slice(&v.to_le_bytes());
        b
    }
    fn set_u8(&self, field: &str, v: u8) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b[self.at[field]] = v;
        b
    }
}

fn build(name0: &str) -> Built {
    let mut b = Vec::new();
    let mut at = HashMap::new();
    let mark = |at: &mut HashMap<_, _>, k: &'static str, b: &Vec<u8>| {
        at.insert(k, b.len());
    };
    let s = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(b"GGUF");
    mark(&mut at, "version", &b);
    b.extend(3u32.to_le_bytes());
    mark(&mut at, "n_tensors", &b);
    b.extend(2u64.to_le_bytes());
    mark(&mut at, "n_kv", &b);
    b.extend(4u64.to_le_bytes());
    // kv0: general.architecture = "llama"
    mark(&mut at, "key0_len", &b);
    s(&mut b, "general.architecture");
    mark(&mut at, "key0_type", &b);
    b.extend(8u32.to_le_bytes());
    mark(&mut at, "val0_len", &b);
    s(&mut b, "llama");
    // kv1: general.alignment = 32 (u32)
    s(&mut b, "general.alignment");
    b.extend(4u32.to_le_bytes());
    mark(&mut at, "align", &b);
    b.extend(32u32.to_le_bytes());
    // kv2: tokenizer.ggml.tokens = ["a", "b", "c"]
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    mark(&mut at, "arr_type", &b);
    b.extend(8u32.to_le_bytes());
    mark(&mut at, "arr_len", &b);
    b.extend(3u64.to_le_bytes());
    mark(&mut at, "arr_str0_len", &b);
    for t in ["a", "b", "c"] {
        s(&mut b, t);
    }
    // kv3: tokenizer.ggml.add_bos_token = true
    mark(&mut at, "key3", &b);
    s(&mut b, "tokenizer.ggml.add_bos_token");
    b.extend(7u32.to_le_bytes());
    mark(&mut at, "bool", &b);
    b.push(1);
    // tensor 0: F32, dims [32, 2, 1, 1], offset 0
    mark(&mut at, "t0_name_len", &b);
    s(&mut b, name0);
    mark(&mut at, "t0_ndims", &b);
    b.extend(4u32.to_le_bytes());
    for (k, d) in [
        ("t0_dim0", 32u64),
        ("t0_dim1", 2),
        ("t0_dim2", 1),
        ("t0_dim3", 1),
    ] {
        mark(&mut at, k, &b);
        b.extend(d.to_le_bytes());
    }
    mark(&mut at, "t0_type", &b);
    b.extend(0u32.to_le_bytes());
    mark(&mut at, "t0_offset", &b);
    b.extend(0u64.to_le_bytes());
    // tensor 1: Q8_0, dims [32], offset 256
    mark(&mut at, "t1_name", &b);
    s(&mut b, "b.weight");
    b.extend(1u32.to_le_bytes());
    mark(&mut at, "t1_dim0", &b);
    b.extend(32u64.to_le_bytes());
    mark(&mut at, "t1_type", &b);
    b.extend(8u32.to_le_bytes());
    mark(&mut at, "t1_offset", &b);
    b.extend(256u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    mark(&mut at, "data", &b);
    for i in 0..64 {
        b.extend((i as f32 * 0.5).to_le_bytes());
    }
    b.extend(half::f16::from_f32(0.25).to_le_bytes());
    for i in 0..32i8 {
        b.push((i - 16) as u8);
    }
    Built { bytes: b, at }
}

fn parse(bytes: Vec<u8>) -> mlxi::Result<GgufFile> {
    GgufFile::from_bytes("hostile.gguf", bytes)
}

fn rejects(bytes: Vec<u8>, needles: &[&str]) {
    let err = parse(bytes).expect_err("accepted a bad file").to_string();
    assert!(err.starts_with("hostile.gguf: "), "no file name: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

#[test]
fn the_well_formed_file_reads_back() {
    let b = build("a.weight");
    let g = parse(b.bytes.clone()).unwrap();
    assert_eq!(g.string("general.architecture").unwrap(), Some("llama"));
    assert_eq!(
        g.strings("tokenizer.ggml.tokens").unwrap(),
        Some(vec!["a", "b", "c"])
    );
    assert_eq!(g.int("tokenizer.ggml.add_bos_token").unwrap(), Some(1));
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset as usize, b.at["data"]);
    let t = &g.tensors()[0];
    assert_eq!(t.shape(), vec![1, 1, 2, 32]);
    let want: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
    assert_eq!(g.dequantize(t).unwrap(), want);
    let want: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.25).collect();
    assert_eq!(g.dequantize(&g.tensors()[1]).unwrap(), want);
    // A string where a number belongs, and the reverse, are errors naming the key.
    let err = g.number("general.architecture").unwrap_err().to_string();
    assert!(
        err.contains("general.architecture is string, expected a number"),
        "{err}"
    );
    assert!(g.string("general.alignment").is_err());
}

#[test]
fn hostile_counts_and_lengths() {
    let b = build("a.weight");
    for v in [1u64 << 62, u64::MAX, 1 << 32, 100_000] {
        rejects(b.set_u64("n_tensors", v), &["tensors", "remaining bytes"]);
        rejects(
            b.set_u64("n_kv", v),
            &["metadata entries", "remaining bytes"],
        );
        rejects(b.set_u64("key0_len", v), &["metadata key 0", "length"]);
        rejects(
            b.set_u64("val0_len", v),
            &["general.architecture", "length"],
        );
        rejects(
            b.set_u64("arr_len", v),
            &["tokenizer.ggml.tokens", "elements"],
        );
        rejects(
            b.set_u64("arr_str0_len", v),
            &["\"tokenizer.ggml.tokens\"[0]"],
        );
        rejects(b.set_u64("t0_name_len", v), &["tensor name 0"]);
    }
    // Counts smaller than the file's are errors too, just different ones.
    assert!(parse(b.set_u64("n_kv", 3)).is_err());
    assert!(parse(b.set_u64("arr_len", 2)).is_err());
}

#[test]
fn hostile_types_and_values() {
    let b = build("a.weight");
    rejects(b.set_u32("key0_type", 13), &["unknown value type id 13"]);
    rejects(b.set_u32("key0_type", u32::MAX), &["unknown value type id"]);
    rejects(b.set_u32("arr_type", 13), &["unknown element type id 13"]);
    // An array of arrays: mlxi (like llama.cpp) does not read nested arrays.
    rejects(b.set_u32("arr_type", 9), &["tokenizer.ggml.tokens"]);
    rejects(b.set_u8("bool", 2), &["bool with byte value 2"]);
    for a in [0u32, 3, 48, 0x8000_0001] {
        rejects(
            b.set_u32("align", a),
            &["general.alignment must be a positive power of two"],
        );
    }
    // A key that is not UTF-8 is shown escaped.
    let mut bad = b.bytes.clone();
    bad[b.at["key0_len"] + 8] = 0xff;
    rejects(bad, &["metadata key 0", "\\xff", "not valid UTF-8"]);
    rejects(
        b.set_u32("t1_type", 4),
        &["\"b.weight\"", "unknown type id 4"],
    );
    rejects(b.set_u32("t1_type", 1000), &["unknown type id 1000"]);
    let mut magic = b.bytes.clone();
    magic[0] = b'X';
    rejects(magic, &["not a GGUF file"]);
    rejects(b.set_u32("version", 1), &["unsupported GGUF version 1"]);
    rejects(b.set_u32("version", 3u32.swap_bytes()), &["big-endian"]);
}

#[test]
fn hostile_dimensions() {
    let b = build("a.weight");
    for n in [0u32, 5, 16, u32::MAX] {
        rejects(
            b.set_u32("t0_ndims", n),
            &["\"a.weight\"", "dimensions (valid: 1 to 4)"],
        );
    }
    rejects(b.set_u64("t0_dim1", 0), &["dimension 1 = 0"]);
    rejects(b.set_u64("t0_dim1", u64::MAX), &["dimension 1 = -1"]);
    rejects(b.set_u64("t0_dim1", 1 << 31), &["dimension 1 = 2147483648"]);
    // Each dimension fits an i32, but the product does not fit 64 bits.
    let mut big = b.set_u64("t0_dim1", i32::MAX as u64);
    for k in ["t0_dim2", "t0_dim3"] {
        let i = b.at[k];
        big[i..i + 8].copy_from_slice(&(i32::MAX as u64).to_le_bytes());
    }
    rejects(big, &["too many elements"]);
    // A large but representable shape whose data is not in the file.
    rejects(
        b.set_u64("t0_dim1", 1 << 20),
        &["extends past the end of the file"],
    );
    // Rows that are not whole blocks.
    rejects(
        b.set_u64("t1_dim0", 33),
        &["not a multiple of Q8_0's block of 32"],
    );
}

#[test]
fn hostile_offsets() {
    let b = build("a.weight");
    rejects(
        b.set_u64("t1_offset", 1 << 20),
        &["\"b.weight\"", "extends past the end"],
    );
    rejects(
        b.set_u64("t1_offset", (1 << 63) + 32 * 7),
        &["extends past the end"],
    );
    rejects(
        b.set_u64("t1_offset", u64::MAX - 31),
        &["extends past the end"],
    );
    rejects(b.set_u64("t1_offset", 0), &["overlap"]);
    rejects(b.set_u64("t1_offset", 224), &["overlap"]);
    rejects(
        b.set_u64("t1_offset", 100),
        &["not a multiple of the alignment 32"],
    );
    // A duplicated tensor name.
    let mut dup = b.bytes.clone();
    let i = b.at["t1_name"] + 8;
    dup[i] = b'a';
    rejects(dup, &["\"a.weight\" appears twice"]);
}

#[test]
fn truncation_at_every_byte() {
    let b = build("a.weight");
    for cut in 0..b.bytes.len() {
        let err = parse(b.bytes[..cut].to_vec())
            .expect_err("accepted a truncated file")
            .to_string();
        assert!(err.starts_with("hostile.gguf: "), "cut {cut}: {err}");
    }
    // The real fixtures too.
    for name in ["quants.gguf", "tiny_llama_kquant.gguf"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let g = parse(bytes.clone()).unwrap();
        // The file may end in padding after the last tensor: cuts there are still valid.
        let end = g
            .tensors()
            .iter()
            .map(|t| g.data_offset + t.offset + t.n_bytes)
            .max()
            .unwrap() as usize;
        let step = (bytes.len() / 2000).max(1);
        for cut in (0..bytes.len()).step_by(step).chain(end - 1..bytes.len()) {
            assert_eq!(
                parse(bytes[..cut].to_vec()).is_ok(),
                cut >= end,
                "{name} cut at {cut}"
            );
        }
    }
}

#[test]
fn names_in_errors_are_short_and_escaped() {
    let long = format!("evil\u{1b}[31m{}\n", "x".repeat(300));
    let b = build(&long);
    let err = parse(b.set_u32("t0_ndims", 9)).unwrap_err().to_string();
    assert!(!err.contains('\u{1b}') && !err.contains('\n'), "{err:?}");
    assert!(err.contains("evil\\u{1b}[31mxxx"), "{err:?}");
    assert!(err.contains('…') && err.len() < 200, "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Models (MLX): one test function, so MLX stays on one thread.

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn models_load_through_the_reader() {
    use mlxi::model::{LoadOptions, Model};

    // 1. A K-quant llama against a float64 numpy forward pass on the gguf package's
    //    dequantization, both with weights dequantized at load and with Q4_0/Q4_1/Q8_0 layers
    //    kept as MLX quantized triplets.
    let path = fixture("tiny_llama_kquant.gguf");
    let bytes = std::fs::read(fixture("tiny_llama_expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for dequantize in [true, false] {
        let opts = LoadOptions {
            dequantize: Some(dequantize),
            ..Default::default()
        };
        let mut m = Model::load(path.to_str().unwrap(), &opts).unwrap();
        assert_eq!(m.info.n_layers, 2);
        assert_eq!(m.info.vocab, 320);
        // Q4_0 and Q4_1 (two layers) and Q8_0 (one) arrive as MLX triplets; K-quants dense.
        assert_eq!(m.stored_quantization, Some((4, 32)));
        for p in ["prompt0", "prompt1"] {
            let ids_t = expected.tensor(&format!("{p}_ids")).unwrap();
            let ids: Vec<u32> = ids_t
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32)
                .collect();
            let logits = m.forward_ids(std::slice::from_ref(&ids)).unwrap();
            let logits = logits.as_dtype(mlx_rs::Dtype::Float32).unwrap();
            let (shape, want) = read_f32(&expected, p);
            assert_eq!(logits.shape(), &[1, shape[0] as i32, shape[1] as i32]);
            let d = max_abs_diff(logits.as_slice::<f32>(), &want);
            println!("{p} (dequantize {dequantize}): max |logit diff| {d:.2e}");
            assert!(d < 1e-4, "{p} (dequantize {dequantize}): max |diff| {d}");
        }
    }

    // 2. An unsupported tensor type in a model is an error naming the type and the tensor:
    //    blk.1.ffn_up.weight is Q4_0; IQ4_NL has the same block size, so only the type changes.
    let mut b = std::fs::read(&path).unwrap();
    let name = b"blk.1.ffn_up.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let ty = at + 4 + 2 * 8;
    assert_eq!(u32::from_le_bytes(b[ty..ty + 4].try_into().unwrap()), 2);
    b[ty..ty + 4].copy_from_slice(&20u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("iq4.gguf");
    std::fs::write(&bad, &b).unwrap();
    let err = Model::load(bad.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("an IQ4_NL tensor loaded")
        .to_string();
    for needle in [
        "iq4.gguf",
        "blk.1.ffn_up.weight",
        "IQ4_NL",
        "supported: F32",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // Config metadata that would divide by zero or allocate without bound: errors.
    let set_u32 = |key: &[u8], v: u32| {
        let mut b = std::fs::read(&path).unwrap();
        let pat = [key, &4u32.to_le_bytes()].concat();
        let at = b.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        std::fs::write(&bad, &b).unwrap();
        Model::load(bad.to_str().unwrap(), &LoadOptions::default())
            .err()
            .expect("hostile metadata loaded")
            .to_string()
    };
    let err = set_u32(b"llama.attention.head_count", 0);
    assert!(
        err.contains("llama.attention.head_count = 0 (valid"),
        "{err}"
    );
    let err = set_u32(b"llama.attention.head_count_kv", 3);
    assert!(err.contains("not a multiple of 3"), "{err}");
    let err = set_u32(b"llama.block_count", u32::MAX);
    assert!(err.contains("llama.block_count = 4294967295"), "{err}");
    let err = set_u32(b"llama.embedding_length", 0);
    assert!(
        err.contains("iq4.gguf: metadata llama.embedding_length = 0"),
        "{err}"
    );
    // A hostile header through the model loader: an error, not a crash.
    let mut h = std::fs::read(&path).unwrap();
    h[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    std::fs::write(&bad, &h).unwrap();
    let err = Model::load(bad.to_str().unwrap(), &LoadOptions::default())
        .err()
        .expect("a hostile header loaded")
        .to_string();
    assert!(
        err.contains("iq4.gguf") && err.contains("metadata entries"),
        "{err}"
    );

    // 3. The default model's quantized triplets are bit for bit what MLX's own GGUF reader
    //    made of them (Q4_1 layers, the Q8_0 embedding, F32 norms).
    let default = std::env::var_os("MLXI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".cache/mlxi"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        default.is_file(),
        "the default model is missing: run ./setup"
    );
    let ours = mlxi::model::gguf::Gguf::open(&default).unwrap();
    let heads = ours.head_counts().unwrap();
    let ours = ours.tensors(Some(heads)).unwrap();
    let mlx = mlx_rs::io::GgufFile::load(&default)
        .unwrap()
        .arrays()
        .unwrap();
    let mlx: HashMap<String, mlx_rs::Array> = mlx.into_iter().collect();
    let pairs = [
        ("blk.0.ffn_down", "model.layers.0.mlp.down_proj"),
        ("blk.29.attn_v", "model.layers.29.self_attn.v_proj"),
        ("token_embd", "model.embed_tokens"),
    ];
    for (g, hf) in pairs {
        for part in ["weight", "scales", "biases"] {
            let a = &ours[&format!("{hf}.{part}")];
            let b = &mlx[&format!("{g}.{part}")];
            assert_eq!(
                (a.dtype(), a.shape()),
                (b.dtype(), b.shape()),
                "{hf}.{part}"
            );
            assert!(
                a.eq_values(b).unwrap(),
                "{hf}.{part} differs from MLX's reader"
            );
        }
    }
    let a = &ours["model.layers.3.input_layernorm.weight"];
    let b = &mlx["blk.3.attn_norm.weight"];
    assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()));
    assert!(a.eq_values(b).unwrap());
}
