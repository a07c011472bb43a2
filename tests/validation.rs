//! Hostile model files are refused with an error naming the file and the key, before anything
//! is allocated: impossible config values for every architecture, layer counts the checkpoint
//! does not hold, safetensors headers with overlapping or out-of-range offsets, and integer
//! data where float weights belong.

mod common;
use common::*;

use std::path::Path;

use serde_json::{json, Value};

/// A copy of the fixture checkpoint `name` in a scratch folder.
fn fixture(name: &str) -> tempfile::TempDir {
    let dir = scratch();
    let src = repo().join("tests/fixtures/models").join(name);
    for entry in std::fs::read_dir(&src).expect("fixture folder") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, dir.path().join(p.file_name().expect("name"))).expect("copy");
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    edit(v.as_object_mut().expect("an object"));
    std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
}

/// Rewrites `model.safetensors`'s header through `edit`, keeping the data.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    edit(header.as_object_mut().expect("an object"));
    let mut text = serde_json::to_vec(&header).expect("json");
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&path, out).expect("write");
}

/// `load(dir)` fails; returns the message.
fn load_error(dir: &Path) -> String {
    let code = format!("load({:?})", dir.display().to_string());
    let err = eval(&code).failed().to_string();
    // Never a dump of the file: one short message.
    assert!(err.len() < 600, "{err}");
    err
}

#[track_caller]
fn refused(fixture_name: &str, key: &str, value: Value, expect: &str) {
    let dir = fixture(fixture_name);
    edit_config(dir.path(), |c| {
        c.insert(key.into(), value);
    });
    let err = load_error(dir.path());
    let config = dir.path().join("config.json");
    assert!(
        err.contains(&format!("{}: {expect}", config.display())),
        "{fixture_name}: {err}"
    );
}

#[test]
fn impossible_llama_configs_are_refused() {
    refused(
        "llama",
        "num_attention_heads",
        json!(0),
        "num_attention_heads = 0: must be at least 1",
    );
    refused(
        "llama",
        "num_hidden_layers",
        json!(1_000_000_000_000u64),
        "num_hidden_layers = 1000000000000: is larger than the 65536 mlxi accepts",
    );
    refused(
        "llama",
        "num_hidden_layers",
        json!(40),
        "num_hidden_layers = 40: the checkpoint holds 2 layer(s)",
    );
    refused(
        "llama",
        "rope_theta",
        json!(0.0),
        "rope_theta = 0: must be a finite number above 0",
    );
    refused(
        "llama",
        "rms_norm_eps",
        json!(-1e-5),
        "rms_norm_eps = -0.00001: must be",
    );
    refused(
        "llama",
        "rms_norm_eps",
        json!(0),
        "rms_norm_eps = 0: must be",
    );
    refused(
        "llama",
        "head_dim",
        json!(0),
        "head_dim = 0: must be at least 1",
    );
    refused(
        "llama",
        "intermediate_size",
        json!(0),
        "intermediate_size = 0: must be at least 1",
    );
    refused(
        "llama",
        "vocab_size",
        json!(0),
        "vocab_size = 0: must be at least 1",
    );
    refused(
        "llama",
        "vocab_size",
        json!(2_000_000_000),
        "vocab_size = 2000000000: is larger",
    );
    refused(
        "llama",
        "num_key_value_heads",
        json!(3),
        "num_attention_heads = 4: must be a multiple of num_key_value_heads (3)",
    );
    refused(
        "llama",
        "hidden_size",
        json!(66),
        "hidden_size = 66: must be a multiple of num_attention_heads (4)",
    );
    refused(
        "llama",
        "rope_scaling",
        json!({"rope_type": "linear", "factor": 0.0}),
        "rope_scaling.factor = 0",
    );
}

#[test]
fn every_architecture_checks_its_config() {
    for arch in [
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
        "phi3",
        "qwen3_moe",
    ] {
        refused(
            arch,
            "num_attention_heads",
            json!(0),
            "num_attention_heads = 0: must be at least 1",
        );
        refused(
            arch,
            "num_hidden_layers",
            json!(1_000_000_000_000u64),
            "num_hidden_layers = 1000000000000",
        );
        refused(
            arch,
            "num_hidden_layers",
            json!(40),
            "num_hidden_layers = 40: the checkpoint holds",
        );
        refused(arch, "rms_norm_eps", json!(0), "rms_norm_eps = 0");
    }
    refused(
        "gemma2",
        "query_pre_attn_scalar",
        json!(0),
        "query_pre_attn_scalar = 0",
    );
    refused(
        "gemma3_text",
        "rope_local_base_freq",
        json!(-1),
        "rope_local_base_freq = -1",
    );
    refused(
        "gemma3_text",
        "sliding_window",
        json!(0),
        "sliding_window = 0",
    );
    refused(
        "phi3",
        "partial_rotary_factor",
        json!(0),
        "partial_rotary_factor = 0",
    );
    refused(
        "qwen3_moe",
        "num_experts_per_tok",
        json!(9),
        "num_experts_per_tok = 9: is larger",
    );
    refused(
        "qwen3_moe",
        "num_experts",
        json!(1_000_000_000),
        "num_experts = 1000000000",
    );
    // gpt_oss: its config lists one `layer_types` entry per layer, so more layers than the
    // checkpoint holds is first a layer_types mismatch.
    refused(
        "gpt_oss",
        "num_attention_heads",
        json!(0),
        "num_attention_heads = 0: must be at least 1",
    );
    refused(
        "gpt_oss",
        "num_hidden_layers",
        json!(1_000_000_000_000u64),
        "num_hidden_layers = 1000000000000",
    );
    refused(
        "gpt_oss",
        "num_hidden_layers",
        json!(40),
        "layer_types = 2 entries: must have one per layer (40)",
    );
    refused("gpt_oss", "rms_norm_eps", json!(0), "rms_norm_eps = 0");
    refused(
        "gpt_oss",
        "num_experts_per_tok",
        json!(5),
        "num_experts_per_tok = 5: is larger",
    );
    refused("gpt_oss", "sliding_window", json!(0), "sliding_window = 0");
    refused(
        "gpt_oss",
        "layer_types",
        json!(["sliding_attention"]),
        "layer_types = 1 entries: must have one per layer (2)",
    );
    refused(
        "gpt_oss",
        "rope_scaling",
        json!({"rope_type": "yarn", "factor": 32.0, "beta_fast": 0.0}),
        "rope_scaling.beta_fast = 0",
    );
}

#[test]
fn the_fixtures_still_load() {
    for arch in [
        "llama",
        "gemma2",
        "qwen3_moe",
        "llama-sharded",
        "qwen3-q8",
        "gpt_oss-mxfp4",
    ] {
        let dir = fixture(arch);
        let code = format!(
            "load({:?}).info().n_layers",
            dir.path().display().to_string()
        );
        assert_eq!(eval(&code).ok(), "2", "{arch}");
    }
}

#[test]
fn overlapping_safetensors_offsets_are_refused() {
    let dir = fixture("llama");
    edit_header(dir.path(), |h| {
        // The second tensor starts inside the first.
        h["model.layers.0.input_layernorm.weight"]["data_offsets"] = json!([81664, 81920]);
    });
    let err = load_error(dir.path());
    let file = dir.path().join("model.safetensors");
    assert!(
        err.contains(&format!(
            "{}: malformed safetensors header: invalid offset",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn out_of_range_safetensors_offsets_are_refused() {
    let dir = fixture("llama");
    edit_header(dir.path(), |h| {
        // Past the end of the file, with a shape to match.
        let last = h
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.get("data_offsets")?[1].as_u64()?)))
            .max_by_key(|(_, end)| *end)
            .expect("tensors");
        let start = h[&last.0]["data_offsets"][0].as_u64().expect("start");
        let len = 1u64 << 40;
        h[&last.0]["data_offsets"] = json!([start, start + len]);
        h[&last.0]["shape"] = json!([len / 4]);
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors: truncated: the header describes"),
        "{err}"
    );
}

#[test]
fn integer_data_in_a_float_slot_is_refused() {
    let dir = fixture("llama");
    edit_header(dir.path(), |h| {
        h["model.layers.1.mlp.up_proj.weight"]["dtype"] = json!("I32");
    });
    let err = load_error(dir.path());
    let file = dir.path().join("model.safetensors");
    assert!(
        err.contains(&format!(
            "{}: tensor model.layers.1.mlp.up_proj.weight is stored as int32, but a float type \
             is expected",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn a_malformed_tokenizer_is_an_error_not_a_crash() {
    // tokenizers 0.22 panics (an `expect`) when the `decoder` section does not deserialize.
    for (what, edit) in [
        ("a decoder of the wrong type", r#""decoder": 5,"#),
        ("a truncated decoder", r#""decoder": {"type": "#),
    ] {
        let dir = fixture("llama");
        let path = dir.path().join("tokenizer.json");
        let text = std::fs::read_to_string(&path).expect("read");
        let at = text.find("\"decoder\"").expect("a decoder section");
        let end = at
            + text[at..]
                .find("\"model\"")
                .expect("the model after the decoder");
        let broken = format!("{}{edit}\n  {}", &text[..at], &text[end..]);
        std::fs::write(&path, broken).expect("write");
        let err = load_error(dir.path());
        assert!(err.contains(&path.display().to_string()), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}
