//! Tokenizers and chat templates.
//!
//! A [`Tokenizer`] wraps a Hugging Face `tokenizers` tokenizer together with what lives beside it
//! in a model folder: the special token ids (BOS, EOS, padding) and the chat template. It is built
//! either from a Hugging Face-layout folder ([`Tokenizer::from_dir`]: `tokenizer.json`,
//! `tokenizer_config.json`, ...) or from a GGUF file's `tokenizer.ggml.*` metadata
//! ([`Tokenizer::from_gguf`]), which is rebuilt into the equivalent `tokenizer.json`.
//!
//! Encoding follows transformers' `AutoTokenizer` (and so mlx-lm): `encode(text, true)` adds
//! exactly the special tokens that the tokenizer's post-processor adds (for a GGUF, what its
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` flags say), and special tokens written in the
//! text (`<|im_start|>`) are always recognised. Chat templates are rendered with MiniJinja set up
//! the way transformers sets up Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls, Python
//! string methods, `raise_exception`, `strftime_now`, a Python-compatible `tojson`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value as JinjaValue, ValueKind};
use serde_json::{json, Map, Value as Json};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// A tokenizer with its special tokens and chat template, as a model folder or GGUF file defines
/// them.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    pad_id: Option<u32>,
    /// `bos_token`, `eos_token`, `pad_token`, `unk_token` as strings, for chat templates.
    special_strings: Vec<(&'static str, String)>,
    chat_template: Option<String>,
    warnings: Vec<String>,
}

/// One message of a conversation, as chat templates see it (`message.role`, `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `"system"`, `"user"`, `"assistant"`, or whatever other role the template knows.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

fn tok_err(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {err}"))
}

impl Tokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (plus `chat_template.jinja`,
    /// `special_tokens_map.json`, `generation_config.json` and `config.json` where present) from a
    /// Hugging Face-layout folder.
    ///
    /// The chat template comes from `chat_template.jinja` if it exists, else from
    /// `tokenizer_config.json` (`chat_template`, a string or a list of named templates, of which
    /// `default` or else the first is used). EOS ids are the tokenizer's `eos_token` followed by the
    /// `eos_token_id`s of `generation_config.json` and `config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            let mut msg = format!("{}: no tokenizer.json", dir.display());
            if dir.join("tokenizer.model").is_file() {
                msg.push_str(" (only a SentencePiece tokenizer.model, which is not supported: convert it to tokenizer.json with transformers)");
            } else if dir.join("vocab.json").is_file() {
                msg.push_str(" (only vocab.json/merges.txt, which is not supported: convert them to tokenizer.json with transformers)");
            } else if !dir.is_dir() {
                msg = format!("{}: not a folder", dir.display());
            }
            return Err(Error::Tokenizer(msg));
        }
        let bytes = std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
        let inner = tokenizer_from_json(&tokenizer_path, &bytes)?;

        let config = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        let special_map =
            read_json_opt(&dir.join("special_tokens_map.json"))?.unwrap_or(Json::Null);
        let token_string = |key: &str| -> Option<String> {
            special_token_string(config.get(key))
                .or_else(|| special_token_string(special_map.get(key)))
        };

        let mut tok = Tokenizer {
            inner,
            bos_id: None,
            eos_ids: Vec::new(),
            pad_id: None,
            special_strings: Vec::new(),
            chat_template: None,
            warnings: Vec::new(),
        };
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(s) = token_string(key) {
                let id = tok.inner.token_to_id(&s);
                if id.is_none() {
                    tok.warnings.push(format!(
                        "{key} {s:?} from tokenizer_config.json is not in the vocabulary"
                    ));
                }
                match key {
                    "bos_token" => tok.bos_id = id,
                    "eos_token" => tok.eos_ids.extend(id),
                    "pad_token" => tok.pad_id = id,
                    _ => {}
                }
                tok.special_strings.push((key, s));
            }
        }
        for file in ["generation_config.json", "config.json"] {
            let path = dir.join(file);
            if let Some(value) = read_json_opt(&path)? {
                for id in json_ids(value.get("eos_token_id")) {
                    if !tok.eos_ids.contains(&id) {
                        tok.eos_ids.push(id);
                    }
                }
            }
        }

        let jinja = dir.join("chat_template.jinja");
        tok.chat_template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
        } else {
            match config.get("chat_template") {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Array(list)) => {
                    let named = |name: &str| {
                        list.iter()
                            .find(|t| t.get("name").and_then(Json::as_str) == Some(name))
                    };
                    named("default")
                        .or_else(|| list.first())
                        .and_then(|t| t.get("template"))
                        .and_then(Json::as_str)
                        .map(str::to_owned)
                }
                _ => None,
            }
        };
        Ok(tok)
    }

    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    ///
    /// Byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) get the pre-tokenizer that
    /// `tokenizer.ggml.pre` names (`smollm`/`starcoder`/`refact`: digits split one by one, then
    /// GPT-2's byte-level regex; `qwen2`: NFC and the Qwen2 split; `llama-bpe`: the Llama 3 split;
    /// `gpt-2`/`default`: GPT-2's). SentencePiece vocabularies (`"llama"`) become a byte-fallback
    /// BPE whose merges are recovered from the token scores, as transformers does, with
    /// SentencePiece's own dummy-prefix space (`tokenizer.ggml.add_space_prefix`). Tokens of
    /// type 3 (control) are special; type 4 (user-defined) are added tokens that are not special.
    /// BOS/EOS are added when `tokenizer.ggml.add_bos_token` / `add_eos_token` say so.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        GgufTokenizerMeta::read(gguf)?.build()
    }

    /// Token ids for `text`. With `add_special`, the special tokens the tokenizer adds by default
    /// (BOS for Llama 3, nothing for SmolLM2 or Qwen) are added, as transformers and mlx-lm do;
    /// without, none are. Special tokens written in the text are recognised either way.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`; with `skip_special`, special tokens are left out. Ids outside the
    /// vocabulary are skipped (as Hugging Face tokenizers does), so decoding never fails on a
    /// model whose embedding has more rows than the tokenizer has tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err("decode", e))
    }

    /// One string per token of `text`, each id decoded on its own (like TransformerLens'
    /// `to_str_tokens`): `"The capital"` gives `["The", " capital"]`. A token holding part of a
    /// multi-byte character shows as U+FFFD.
    pub fn tokens(&self, text: &str, add_special: bool) -> Result<Vec<String>> {
        self.encode(text, add_special)?
            .iter()
            .map(|&id| self.decode(&[id], false))
            .collect()
    }

    /// The vocabulary entry of `id` as the tokenizer stores it (byte-level tokens spell a space as
    /// `Ġ`), or `None` outside the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of the vocabulary entry `tok` (spelled as stored, e.g. `"Ġcapital"`), or `None`.
    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    /// Number of tokens, added tokens included (Python's `len(tokenizer)`). A model's embedding
    /// may have more rows than this.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The beginning-of-sequence token id, if the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The ids that end generation: the tokenizer's EOS token first, then any others the model's
    /// configuration lists (e.g. Llama 3's `<|eot_id|>`).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The padding token id, if the tokenizer has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether `id` is a special token (a control token such as `<|im_start|>`, or BOS/EOS).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// Whether a chat template came with the tokenizer.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The chat template's source, if there is one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Things that were odd but not fatal while loading (a special token missing from the
    /// vocabulary, an unknown GGUF pre-tokenizer name), for the caller to show.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The underlying Hugging Face `tokenizers` tokenizer (e.g. to save it as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Renders `messages` through the chat template, as transformers' `apply_chat_template(...,
    /// tokenize=False)` does; `add_generation_prompt` appends the assistant turn's opening.
    /// The template sees `messages`, `add_generation_prompt`, `bos_token`, `eos_token`,
    /// `pad_token` and `unk_token`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let source = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Tokenizer("this tokenizer has no chat template".to_string()))?;
        render_chat_template(
            source,
            messages,
            add_generation_prompt,
            &self.special_strings,
        )
    }

    /// A streaming detokenizer for generation: feed it ids one at a time with
    /// [`DecodeStream::step`] and it returns the text each one completes. Special tokens are
    /// included; use [`DecodeStream::skip_special`] to leave them out.
    pub fn stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            skip_special: false,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_len: 0,
        }
    }
}

/// Incremental decoding of generated ids (see [`Tokenizer::stream`]).
///
/// Text is only emitted once it is complete: a character whose UTF-8 bytes are split over several
/// byte-level tokens comes out with the token that finishes it, and tokenizers that drop a leading
/// space when decoding a lone token (SentencePiece) still get their spaces, because each step
/// decodes the new ids together with the previous ones.
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// The ids of the last emitted chunk (context) followed by those not emitted yet.
    ids: Vec<u32>,
    /// The decoded text of `ids[..prefix_len]`.
    prefix: String,
    prefix_len: usize,
}

/// After this many ids without completing a character, emit what there is anyway.
const STREAM_MAX_PENDING: usize = 8;

impl DecodeStream<'_> {
    /// Leave special tokens out of the text (or keep them, with `false`).
    pub fn skip_special(mut self, skip: bool) -> Self {
        self.skip_special = skip;
        self
    }

    /// Feeds one id; returns the newly completed text (`None` while a character is still
    /// incomplete, or when the id adds no text).
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let pending = self.ids.len() - self.prefix_len;
        let ready = text.len() > self.prefix.len()
            && text.starts_with(&self.prefix)
            && !text.ends_with('\u{FFFD}');
        if ready || pending >= STREAM_MAX_PENDING {
            return Ok(self.emit(text));
        }
        Ok(None)
    }

    /// Returns the text after the prefix and makes the ids just emitted the next context.
    fn emit(&mut self, text: String) -> Option<String> {
        // The text normally extends the prefix; if the decoder rewrote earlier text, emit only
        // what follows the common part.
        let common = text
            .char_indices()
            .zip(self.prefix.chars())
            .find(|((_, a), b)| a != b)
            .map(|((i, _), _)| i)
            .unwrap_or_else(|| self.prefix.len().min(text.len()));
        let new = text[common..].to_string();
        self.ids = self.ids.split_off(self.prefix_len);
        self.prefix_len = self.ids.len();
        self.prefix = self
            .tokenizer
            .decode(&self.ids, self.skip_special)
            .unwrap_or(text);
        (!new.is_empty()).then_some(new)
    }

    /// Ends the stream: returns whatever text is still held back (an incomplete character comes
    /// out as U+FFFD).
    pub fn finish(mut self) -> Result<Option<String>> {
        if self.ids.len() == self.prefix_len {
            return Ok(None);
        }
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        Ok(self.emit(text))
    }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders

fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// A special token in `tokenizer_config.json`: a string, or an `AddedToken` object.
fn special_token_string(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `eos_token_id` as an int or a list of ints.
fn json_ids(value: Option<&Json>) -> Vec<u32> {
    match value {
        Some(Json::Number(n)) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .into_iter()
            .collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF

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
    fn read(g: &GgufFile) -> Result<Self> {
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

// ---------------------------------------------------------------------------------------------
// Chat templates

/// A map that keeps its keys in insertion order, as Python dicts do (`tojson` and `items()` show
/// it).
#[derive(Debug)]
struct OrderedMap(Vec<(String, JinjaValue)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .iter()
                .map(|(k, _)| JinjaValue::from(k.as_str()))
                .collect(),
        )
    }
}

/// The most instructions a chat template may run (MiniJinja's fuel): real templates use a few
/// hundred per message, so this is over ten thousand messages' worth, yet a runaway template
/// (nested loops over `range`) stops within about a second.
pub const CHAT_TEMPLATE_FUEL: u64 = 20_000_000;

/// A tokenizer.json through the tokenizers library, which panics on some malformed files
/// (0.22 `expect`s its `decoder` section to deserialize): the JSON's syntax is checked first,
/// and a panic left inside the library becomes an error naming the file.
fn tokenizer_from_json(path: &Path, bytes: &[u8]) -> Result<tokenizers::Tokenizer> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let loaded = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes));
    std::panic::set_hook(quiet);
    match loaded {
        Ok(r) => r.map_err(|e| tok_err(path.display(), e)),
        Err(_) => Err(Error::Tokenizer(format!(
            "{}: malformed tokenizer.json (the tokenizers library cannot read it)",
            path.display()
        ))),
    }
}

fn render_chat_template(
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    special_strings: &[(&'static str, String)],
) -> Result<String> {
    let source = strip_generation_tags(source);
    let mut env = minijinja::Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))?;
    env.set_syntax(syntax);
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    let template = env
        .template_from_str(&source)
        .map_err(|e| Error::Tokenizer(format!("chat template: {}", jinja_error(&e))))?;

    let messages: Vec<JinjaValue> = messages
        .iter()
        .map(|m| {
            JinjaValue::from_object(OrderedMap(vec![
                ("role".to_string(), JinjaValue::from(m.role.as_str())),
                ("content".to_string(), JinjaValue::from(m.content.as_str())),
            ]))
        })
        .collect();
    let mut ctx: Vec<(String, JinjaValue)> = vec![
        ("messages".to_string(), JinjaValue::from(messages)),
        (
            "add_generation_prompt".to_string(),
            JinjaValue::from(add_generation_prompt),
        ),
    ];
    for (key, value) in special_strings {
        ctx.push((key.to_string(), JinjaValue::from(value.as_str())));
    }
    template
        .render(JinjaValue::from_object(OrderedMap(ctx)))
        .map_err(|e| Error::Tokenizer(format!("chat template: {}", jinja_error(&e))))
}

/// A MiniJinja error with its causes, on one line.
fn jinja_error(err: &minijinja::Error) -> String {
    if err.kind() == minijinja::ErrorKind::OutOfFuel {
        return format!(
            "stopped after {CHAT_TEMPLATE_FUEL} steps (a runaway loop in the template?)"
        );
    }
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let _ = write!(msg, ": {cause}");
        source = cause.source();
    }
    msg
}

/// transformers renders `{% generation %}...{% endgeneration %}` (its AssistantTracker extension)
/// as its body; MiniJinja has no such tag, so turn it into an always-true `if`.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open_ws, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close_ws) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => {
                let _ = write!(out, "{{%{open_ws} if true {close_ws}%}}");
            }
            "endgeneration" => {
                let _ = write!(out, "{{%{open_ws} endif {close_ws}%}}");
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(message: String) -> std::result::Result<JinjaValue, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// The current time (UTC) formatted with a `strftime` format, as transformers' `strftime_now`.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A `strftime` subset (`%Y %y %m %d %e %j %H %I %M %S %p %b %B %a %A %%`) for a UTC timestamp.
fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (tod / 3600, tod % 3600 / 60, tod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let jan1 = {
        // days from 1970-01-01 to Jan 1 of `year`
        let y = year - 1;
        365 * (y - 1969) + (y / 4 - 1969 / 4) - (y / 100 - 1969 / 100) + (y / 400 - 1969 / 400)
    };
    let yday = days - jan1 + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:>2}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", if hour % 12 == 0 { 12 } else { hour % 12 }),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('B') => write!(out, "{}", MONTHS[month as usize - 1]),
            Some('b') => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// which is what transformers installs as the `tojson` filter.
fn tojson(value: &JinjaValue, kwargs: Kwargs) -> std::result::Result<JinjaValue, minijinja::Error> {
    let indent: Option<JinjaValue> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<JinjaValue> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            // (capped: a template should not be able to ask for gigabytes of spaces)
            None => Some(" ".repeat(v.as_i64().unwrap_or(0).clamp(0, 256) as usize)),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(seps) if !seps.is_none() => {
            let a = seps.get_item_by_index(0)?;
            let b = seps.get_item_by_index(1)?;
            (
                a.as_str().unwrap_or(",").to_string(),
                b.as_str().unwrap_or(":").to_string(),
            )
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(JinjaValue::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &JinjaValue,
    opts: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let f = f64::try_from(value.clone())?;
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    let _ = write!(out, "{f:.1}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
        }
        ValueKind::String => {
            write_json_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Map => {
            let mut keys: Vec<JinjaValue> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline(out, opts, depth + 1);
                let key_str = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None | ValueKind::Undefined => "null".to_string(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
                    _ => key.to_string(),
                };
                write_json_string(out, &key_str, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, &value.get_item(key)?, opts, depth + 1)?;
            }
            write_newline(out, opts, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JinjaValue> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            write_newline(out, opts, depth);
            out.push(']');
        }
        _ => write_json_string(out, &value.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE tokenizer over a tiny vocabulary, built the way GGUF metadata is.
    fn tiny_gguf(pre: &str, add_bos: bool) -> GgufTokenizerMeta {
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

    #[test]
    fn tokenizer_stream_multibyte() {
        let tok = tiny_gguf("smollm", false).build().unwrap();
        let text = "hi 🙂 ü hi";
        let ids = tok.encode(text, false).unwrap();
        let mut stream = tok.stream();
        let mut out = String::new();
        let mut chunks = 0;
        for &id in &ids {
            if let Some(piece) = stream.step(id).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                out.push_str(&piece);
                chunks += 1;
            }
        }
        if let Some(rest) = stream.finish().unwrap() {
            out.push_str(&rest);
        }
        assert_eq!(out, text);
        assert!(chunks < ids.len(), "multi-byte characters come out whole");

        // an incomplete character at the end comes out as U+FFFD
        let mut stream = tok.stream();
        let ids = tok.encode("🙂", false).unwrap();
        assert_eq!(stream.step(ids[0]).unwrap(), None);
        assert_eq!(stream.finish().unwrap().as_deref(), Some("\u{FFFD}"));
    }

    #[test]
    fn tokenizer_decode_out_of_range_ids() {
        let tok = tiny_gguf("smollm", false).build().unwrap();
        let hi = tok.token_to_id("hi").unwrap();
        assert_eq!(tok.decode(&[hi, 1_000_000, hi], false).unwrap(), "hihi");
        assert_eq!(tok.id_to_token(1_000_000), None);
        assert_eq!(tok.token_to_id("no such token"), None);
    }

    #[test]
    fn tokenizer_stream_skip_special() {
        let tok = tiny_gguf("smollm", false).build().unwrap();
        let ids = tok.encode("<|im_start|>hi", false).unwrap();
        let mut all = tok.stream();
        let mut plain = tok.stream().skip_special(true);
        let (mut a, mut b) = (String::new(), String::new());
        for &id in &ids {
            a.extend(all.step(id).unwrap());
            b.extend(plain.step(id).unwrap());
        }
        assert_eq!(a, "<|im_start|>hi");
        assert_eq!(b, "hi");
    }

    fn render(src: &str, messages: &[ChatMessage], gen: bool) -> Result<String> {
        render_chat_template(
            src,
            messages,
            gen,
            &[("bos_token", "<s>".into()), ("eos_token", "</s>".into())],
        )
    }

    #[test]
    fn tokenizer_template_features() {
        let msgs = [
            ChatMessage::system("  Be brief.  "),
            ChatMessage::user("Hi, you"),
        ];
        // trim_blocks / lstrip_blocks, loop controls, python string methods, bos_token
        let src = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n[{{ m.role.upper() }}] {{ m.content.split(',')[0].strip() }}|{{ m['content'].startswith('Hi') }}\n{% endfor %}\n{% if add_generation_prompt %}[ASSISTANT]{% endif %}";
        assert_eq!(
            render(src, &msgs, true).unwrap(),
            "<s>\n[USER] Hi|True\n[ASSISTANT]"
        );
        assert_eq!(render(src, &msgs, false).unwrap(), "<s>\n[USER] Hi|True\n");
        // raise_exception surfaces its message
        let err = render(
            "{{ raise_exception('Only user and assistant roles!') }}",
            &msgs,
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Only user and assistant roles!"), "{err}");
        // syntax errors are errors, not panics
        assert!(render("{% for %}", &msgs, true).is_err());
        // odd tags do not trip the {% generation %} rewriting
        assert!(render("{%}", &msgs, true).is_err());
        assert!(render("a {%", &msgs, true).is_err());
        // {% generation %} blocks render their body
        assert_eq!(
            render("{%- generation -%} x {%- endgeneration %}", &msgs, true).unwrap(),
            "x"
        );
        // strftime_now exists
        let year = render("{{ strftime_now('%Y') }}", &msgs, true).unwrap();
        assert_eq!(year.len(), 4);
        // messages keep Python's key order
        assert_eq!(
            render("{{ messages[1] | tojson }}", &msgs, true).unwrap(),
            r#"{"role": "user", "content": "Hi, you"}"#
        );
    }

    #[test]
    fn tokenizer_runaway_template_stops() {
        // Nested loops of 10^15 iterations (range itself stops at 100000 items): without a
        // step limit this never returns.
        let src = "{% for i in range(100000) %}{% for j in range(100000) %}\
                   {% for k in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(render(src, &[ChatMessage::user("hi")], true));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the template stops within 30 s");
        let err = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("chat template: stopped after 20000000 steps"),
            "{err}"
        );
        // An ordinary long conversation stays well inside the limit.
        let msgs: Vec<ChatMessage> = (0..2000)
            .map(|i| ChatMessage::user(format!("m{i}")))
            .collect();
        let src = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}";
        assert!(render(src, &msgs, true).is_ok());
    }

    #[test]
    fn tokenizer_tojson_matches_python() {
        let msgs = [ChatMessage::user("x")];
        let src = r#"{{ {"b": [1, 2.5, 3.0, none, true], "a": "q\"<é>\n"} | tojson }}|{{ [] | tojson(indent=2) }}|{{ {"k": [1, {"z": 1}]} | tojson(indent=2) }}|{{ "é" | tojson(ensure_ascii=true) }}|{{ {"b": 1, "a": 2} | tojson(sort_keys=true, separators=(",", ":")) }}"#;
        // Python: json.dumps(..., ensure_ascii=False) and friends
        let expect = "{\"b\": [1, 2.5, 3.0, null, true], \"a\": \"q\\\"<é>\\n\"}|[]|{\n  \"k\": [\n    1,\n    {\n      \"z\": 1\n    }\n  ]\n}|\"\\u00e9\"|{\"a\":2,\"b\":1}";
        assert_eq!(render(src, &msgs, true).unwrap(), expect);
    }

    #[test]
    fn tokenizer_strftime() {
        // 2024-07-26 13:05:09 UTC, a Friday
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %p %I %j %%", t),
            "Friday July 26, 24 13:05:09 PM 01 208 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
    }

    #[test]
    fn tokenizer_from_dir_errors() {
        let dir = std::env::temp_dir().join(format!("mlxi-tok-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("no tokenizer.json"), "{err}");
        std::fs::write(dir.join("tokenizer.json"), "{\"model\": 5").unwrap();
        let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
