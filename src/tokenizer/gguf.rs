//! A tokenizer from a GGUF file's `tokenizer.ggml.*` metadata, rebuilt into the equivalent
//! `tokenizer.json` (see [`Tokenizer::from_gguf`]).

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

use super::{tok_err, Tokenizer};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// GPT-2's byte-level split (used by ByteLevel with `use_regex`), for reference in comments.
/// Llama 3's split (`llama-bpe` and relatives).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (`qwen2` and relatives): like Llama 3's, but one digit at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o's split (`gpt-4o`, `llama4`).
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The `tokenizer.*` metadata of a GGUF file, read out of it (so that building the tokenizer is
/// plain Rust, testable without MLX).
#[derive(Debug, Clone, Default)]
pub(crate) struct GgufTokenizerMeta {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub bos_id: Option<i64>,
    pub eos_id: Option<i64>,
    pub eot_id: Option<i64>,
    pub eom_id: Option<i64>,
    pub unk_id: Option<i64>,
    pub pad_id: Option<i64>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

fn gguf_err(key: &str, err: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("GGUF metadata {key}: {err}"))
}

fn meta_string(g: &GgufFile, key: &str) -> Result<Option<String>> {
    Ok(g.string(key)?.map(str::to_owned))
}

fn meta_strings(g: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    Ok(g.strings(key)?
        .map(|v| v.into_iter().map(str::to_owned).collect()))
}

fn meta_int(g: &GgufFile, key: &str) -> Result<Option<i64>> {
    g.int(key)
}

fn meta_bool(g: &GgufFile, key: &str) -> Result<Option<bool>> {
    Ok(meta_int(g, key)?.map(|v| v != 0))
}

impl GgufTokenizerMeta {
    pub(super) fn read(g: &GgufFile) -> Result<Self> {
        let model = meta_string(g, "tokenizer.ggml.model")?.ok_or_else(|| {
            Error::Tokenizer("the GGUF file has no tokenizer (no tokenizer.ggml.model)".into())
        })?;
        let tokens = meta_strings(g, "tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::Tokenizer("the GGUF file has no tokenizer.ggml.tokens".into()))?;
        let token_types = g
            .ints("tokenizer.ggml.token_type")?
            .unwrap_or_default()
            .into_iter()
            .map(|t| i32::try_from(t).map_err(|e| gguf_err("tokenizer.ggml.token_type", e)))
            .collect::<Result<Vec<i32>>>()?;
        let scores = g
            .numbers("tokenizer.ggml.scores")?
            .unwrap_or_default()
            .into_iter()
            .map(|s| s as f32)
            .collect();
        Ok(GgufTokenizerMeta {
            pre: meta_string(g, "tokenizer.ggml.pre")?,
            merges: meta_strings(g, "tokenizer.ggml.merges")?.unwrap_or_default(),
            bos_id: meta_int(g, "tokenizer.ggml.bos_token_id")?,
            eos_id: meta_int(g, "tokenizer.ggml.eos_token_id")?,
            eot_id: meta_int(g, "tokenizer.ggml.eot_token_id")?,
            eom_id: meta_int(g, "tokenizer.ggml.eom_token_id")?,
            unk_id: meta_int(g, "tokenizer.ggml.unknown_token_id")?,
            pad_id: meta_int(g, "tokenizer.ggml.padding_token_id")?,
            add_bos: meta_bool(g, "tokenizer.ggml.add_bos_token")?,
            add_eos: meta_bool(g, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: meta_bool(g, "tokenizer.ggml.add_space_prefix")?,
            chat_template: meta_string(g, "tokenizer.chat_template")?,
            model,
            tokens,
            token_types,
            scores,
        })
    }

    /// A valid token id from a metadata value, or `None` (with a warning) when it is out of range.
    fn id(&self, key: &str, value: Option<i64>, warnings: &mut Vec<String>) -> Option<u32> {
        let v = value?;
        match u32::try_from(v) {
            Ok(id) if (id as usize) < self.tokens.len() => Some(id),
            _ => {
                warnings.push(format!(
                    "tokenizer.ggml.{key} = {v} is outside the vocabulary ({} tokens); ignored",
                    self.tokens.len()
                ));
                None
            }
        }
    }

    /// Builds the `tokenizer.json` this metadata describes, and the tokenizer from it.
    pub(crate) fn build(&self) -> Result<Tokenizer> {
        let mut warnings = Vec::new();
        let n = self.tokens.len();
        if n == 0 {
            return Err(Error::Tokenizer("tokenizer.ggml.tokens is empty".into()));
        }
        if !self.token_types.is_empty() && self.token_types.len() != n {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                self.token_types.len()
            )));
        }
        let bos = self.id("bos_token_id", self.bos_id, &mut warnings);
        let eos = self.id("eos_token_id", self.eos_id, &mut warnings);
        let eot = self.id("eot_token_id", self.eot_id, &mut warnings);
        let eom = self.id("eom_token_id", self.eom_id, &mut warnings);
        let unk = self.id("unknown_token_id", self.unk_id, &mut warnings);
        let pad = self.id("padding_token_id", self.pad_id, &mut warnings);

        let (model, normalizer, pre_tokenizer, decoder, add_bos_default) = match self.model.as_str()
        {
            "gpt2" => {
                let (normalizer, pre) = self.byte_level_pre_tokenizer(&mut warnings);
                let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
                (self.bpe_model(false, None)?, normalizer, pre, decoder, false)
            }
            "llama" => {
                // SentencePiece BPE with byte fallback and merges recovered from the scores, as
                // transformers rebuilds it; but the dummy-prefix space is prepended as
                // SentencePiece and llama.cpp do (also to text that already starts with a space),
                // with a Prepend normalizer like Llama 2's own tokenizer.json.
                let prefix = self.add_space_prefix.unwrap_or(true);
                let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
                let normalizer = if prefix {
                    json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
                } else {
                    replace
                };
                let mut steps = vec![
                    json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                    json!({"type": "ByteFallback"}),
                    json!({"type": "Fuse"}),
                ];
                if prefix {
                    steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
                }
                let decoder = json!({"type": "Sequence", "decoders": steps});
                let unk_token = unk.map(|id| self.tokens[id as usize].clone());
                (self.bpe_model(true, unk_token)?, normalizer, Json::Null, decoder, true)
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "GGUF tokenizer model {other:?} is not supported (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece)"
                )))
            }
        };

        // Control tokens are special; user-defined ones are added but not special. BOS/EOS/etc.
        // are special whatever their type says.
        let named: Vec<u32> = [bos, eos, eot, eom, unk, pad]
            .into_iter()
            .flatten()
            .collect();
        let mut added = Vec::new();
        for (id, token) in self.tokens.iter().enumerate() {
            let ty = self.token_types.get(id).copied().unwrap_or(1);
            let special = ty == TOKEN_TYPE_CONTROL || named.contains(&(id as u32));
            if special || ty == TOKEN_TYPE_USER_DEFINED {
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special,
                }));
            }
        }

        let add_bos = self.add_bos.unwrap_or(add_bos_default) && bos.is_some();
        let add_eos = self.add_eos.unwrap_or(false) && eos.is_some();
        let post_processor = if add_bos || add_eos {
            let mut single = Vec::new();
            let mut pair = Vec::new();
            let mut specials = Map::new();
            for (flag, id) in [(add_bos, bos), (add_eos, eos)] {
                if let (true, Some(id)) = (flag, id) {
                    let t = &self.tokens[id as usize];
                    specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
                }
            }
            let bos_tok = bos.map(|id| self.tokens[id as usize].clone());
            let eos_tok = eos.map(|id| self.tokens[id as usize].clone());
            for (seq, type_id) in [("A", 0), ("B", 1)] {
                let target = if seq == "A" { &mut single } else { &mut pair };
                if add_bos {
                    target.push(json!({"SpecialToken": {"id": bos_tok, "type_id": type_id}}));
                }
                target.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
                if add_eos {
                    target.push(json!({"SpecialToken": {"id": eos_tok, "type_id": type_id}}));
                }
            }
            let pair: Vec<Json> = single.iter().cloned().chain(pair).collect();
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
        } else {
            Json::Null
        };

        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": model,
        });
        let bytes = serde_json::to_vec(&doc).map_err(|e| tok_err("GGUF tokenizer", e))?;
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| tok_err("GGUF tokenizer", e))?;

        let mut special_strings = Vec::new();
        for (key, id) in [
            ("bos_token", bos),
            ("eos_token", eos),
            ("pad_token", pad),
            ("unk_token", unk),
        ] {
            if let Some(id) = id {
                special_strings.push((key, self.tokens[id as usize].clone()));
            }
        }
        let mut eos_ids: Vec<u32> = Vec::new();
        for id in [eos, eot, eom].into_iter().flatten() {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        Ok(Tokenizer {
            inner,
            bos_id: bos,
            eos_ids,
            pad_id: pad,
            special_strings,
            chat_template: self.chat_template.clone(),
            warnings,
        })
    }

    /// Normalizer and pre-tokenizer of a byte-level vocabulary, by `tokenizer.ggml.pre`.
    fn byte_level_pre_tokenizer(&self, warnings: &mut Vec<String>) -> (Json, Json) {
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |pattern: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]})
        };
        let pre = self.pre.as_deref().unwrap_or("default");
        match pre {
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone"
            | "minerva-7b" => (
                Json::Null,
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level(true),
                ]}),
            ),
            "qwen2" | "deepseek-r1-qwen" | "megrez" => (json!({"type": "NFC"}), split(QWEN2_SPLIT)),
            "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
                (Json::Null, split(LLAMA3_SPLIT))
            }
            "gpt-4o" | "llama4" => (Json::Null, split(GPT4O_SPLIT)),
            "gpt-2" | "gpt2" | "default" => (Json::Null, byte_level(true)),
            other => {
                warnings.push(format!(
                    "GGUF pre-tokenizer {other:?} is not known; using GPT-2's byte-level split, which may tokenize some text differently from the original"
                ));
                (Json::Null, byte_level(true))
            }
        }
    }

    /// The BPE model: the vocabulary as stored, and the file's merges or (SentencePiece) merges
    /// recovered from the scores.
    fn bpe_model(&self, sentencepiece: bool, unk_token: Option<String>) -> Result<Json> {
        let mut vocab = Map::new();
        for (id, token) in self.tokens.iter().enumerate() {
            vocab.insert(token.clone(), json!(id));
        }
        let merges: Vec<Json> = if !self.merges.is_empty() {
            self.merges
                .iter()
                .map(|m| match m.split_once(' ') {
                    Some((a, b)) => Ok(json!([a, b])),
                    None => Err(Error::Tokenizer(format!(
                        "tokenizer.ggml.merges: {m:?} is not two tokens separated by a space"
                    ))),
                })
                .collect::<Result<_>>()?
        } else if sentencepiece {
            if self.scores.len() != self.tokens.len() {
                return Err(Error::Tokenizer(format!(
                    "a SentencePiece GGUF without merges needs tokenizer.ggml.scores for every token ({} scores, {} tokens)",
                    self.scores.len(),
                    self.tokens.len()
                )));
            }
            sentencepiece_merges(&self.tokens, &self.scores)
                .into_iter()
                .map(|(a, b)| json!([a, b]))
                .collect()
        } else {
            return Err(Error::Tokenizer(
                "a byte-level (gpt2) GGUF tokenizer needs tokenizer.ggml.merges".into(),
            ));
        };
        Ok(json!({
            "type": "BPE", "dropout": null, "unk_token": unk_token,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": sentencepiece, "byte_fallback": sentencepiece, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }))
    }
}

/// Merges implied by a SentencePiece vocabulary: every split of a token into two tokens, best
/// score first (transformers' `generate_merges`, with the same tie-breaking).
fn sentencepiece_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        index.insert(t.as_str(), i); // later duplicates win, as in a Python dict
    }
    // Python iterates `dict(zip(tokens, scores))`: first position, last score.
    let mut seen = HashMap::with_capacity(tokens.len());
    let mut order: Vec<(&str, f32)> = Vec::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        match seen.get(t.as_str()) {
            Some(&pos) => order[pos] = (t.as_str(), s),
            None => {
                seen.insert(t.as_str(), order.len());
                order.push((t.as_str(), s));
            }
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for (piece, score) in order {
        let mut local = Vec::new();
        for (pos, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(pos);
            if let (Some(&il), Some(&ir)) = (index.get(l), index.get(r)) {
                local.push((l, r, score, il, ir));
            }
        }
        local.sort_by_key(|&(_, _, _, il, ir)| (il, ir));
        merges.extend(local.into_iter().map(|(l, r, s, _, _)| (l, r, s)));
    }
    // Python: sorted(key=(score, len(l), len(r)), reverse=True), which is stable.
    merges.sort_by(|a, b| {
        let ka = (a.2, a.0.chars().count(), a.1.chars().count());
        let kb = (b.2, b.0.chars().count(), b.1.chars().count());
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A byte-level BPE tokenizer over a tiny vocabulary, built the way GGUF metadata is.
    pub(crate) fn tiny_gguf(pre: &str, add_bos: bool) -> GgufTokenizerMeta {
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<think>".into(),
        ];
        let mut types = vec![3, 3, 4];
        // the 256 byte-level symbols
        for b in 0u8..=255 {
            tokens.push(byte_level_char(b).to_string());
            types.push(1);
        }
        let merges = vec!["h i".to_string(), "Ġ hi".to_string(), "1 2".to_string()];
        for m in &merges {
            tokens.push(m.replace(' ', ""));
            types.push(1);
        }
        GgufTokenizerMeta {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            token_types: types,
            tokens,
            merges,
            bos_id: Some(1),
            eos_id: Some(0),
            add_bos: Some(add_bos),
            chat_template: Some(
                "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}".into(),
            ),
            ..Default::default()
        }
    }

    /// GPT-2's bytes_to_unicode.
    fn byte_level_char(b: u8) -> char {
        let printable = |b: u8| {
            (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
        };
        if printable(b) {
            return b as char;
        }
        let n = (0u8..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).unwrap()
    }

    #[test]
    fn tokenizer_tiny_gguf_byte_level() {
        let tok = tiny_gguf("smollm", false).build().unwrap();
        let hi = tok.token_to_id("hi").unwrap();
        let space_hi = tok.token_to_id("Ġhi").unwrap();
        assert_eq!(tok.encode("hi hi", true).unwrap(), vec![hi, space_hi]);
        // digits are split one by one even though "12" is a merge
        let one = tok.token_to_id("1").unwrap();
        let two = tok.token_to_id("2").unwrap();
        assert_eq!(tok.encode("12", false).unwrap(), vec![one, two]);
        // control and user-defined tokens are matched whole; only control ones are special
        assert_eq!(
            tok.encode("<|im_start|><think>", false).unwrap(),
            vec![1, 2]
        );
        assert!(tok.is_special(1));
        assert!(!tok.is_special(2));
        assert_eq!(tok.decode(&[1, hi], true).unwrap(), "hi");
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_ids(), &[0]);

        let with_bos = tiny_gguf("default", true).build().unwrap();
        assert_eq!(with_bos.encode("hi", true).unwrap(), vec![1, hi]);
        assert_eq!(with_bos.encode("hi", false).unwrap(), vec![hi]);
        // the "default" pre-tokenizer keeps digits together, so the merge applies
        let twelve = with_bos.token_to_id("12").unwrap();
        assert_eq!(with_bos.encode("12", false).unwrap(), vec![twelve]);
    }

    #[test]
    fn tokenizer_gguf_errors() {
        let mut meta = tiny_gguf("smollm", false);
        meta.model = "rwkv".into();
        let err = meta.build().unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");

        let mut meta = tiny_gguf("smollm", false);
        meta.merges.push("nospace".into());
        assert!(meta.build().is_err());

        let mut meta = tiny_gguf("smollm", false);
        meta.token_types.pop();
        assert!(meta.build().is_err());

        let mut meta = tiny_gguf("something-new", false);
        meta.bos_id = Some(1_000_000);
        let tok = meta.build().unwrap();
        assert_eq!(tok.bos_id(), None);
        assert_eq!(tok.warnings().len(), 2, "{:?}", tok.warnings());
    }

    #[test]
    fn tokenizer_sentencepiece_gguf() {
        // A tiny SentencePiece vocabulary: control tokens, byte fallback, pieces with scores.
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0u8..=255 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (i, piece) in [
            "▁", "h", "i", "e", "l", "o", "▁h", "he", "ll", "▁he", "llo", "▁hello",
        ]
        .iter()
        .enumerate()
        {
            tokens.push(piece.to_string());
            types.push(1);
            scores.push(-(i as f32));
        }
        let meta = GgufTokenizerMeta {
            model: "llama".into(),
            tokens,
            token_types: types,
            scores,
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            ..Default::default()
        };
        let tok = meta.build().unwrap();
        let hello = tok.token_to_id("▁hello").unwrap();
        // BOS is added by default for SentencePiece vocabularies
        assert_eq!(tok.encode("hello", true).unwrap(), vec![1, hello]);
        // an unknown character falls back to bytes
        let ids = tok.encode("hello ü", false).unwrap();
        let u_bytes: Vec<u32> = "ü"
            .bytes()
            .map(|b| tok.token_to_id(&format!("<0x{b:02X}>")).unwrap())
            .collect();
        assert_eq!(ids[ids.len() - 2..], u_bytes[..]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "hello ü");
        assert_eq!(tok.tokens("hello", false).unwrap(), vec!["hello"]);
    }

    #[test]
    fn tokenizer_sentencepiece_merge_order() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = sentencepiece_merges(&tokens, &scores);
        let expect: Vec<(String, String)> = [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(merges, expect);
    }
}
