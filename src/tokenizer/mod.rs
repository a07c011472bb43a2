//! Tokenizers: a Hugging Face `tokenizers` tokenizer with what lives beside it in a model folder.
//!
//! A [`Tokenizer`] wraps a Hugging Face `tokenizers` tokenizer together with the special token ids
//! (BOS, EOS, padding) and the chat template. It is built either from a Hugging Face-layout folder
//! ([`Tokenizer::from_dir`]: `tokenizer.json`, `tokenizer_config.json`, ...) or from a GGUF
//! file's `tokenizer.ggml.*` metadata ([`Tokenizer::from_gguf`], in `gguf.rs`), which is rebuilt
//! into the equivalent `tokenizer.json`. Chat templates are rendered in `chat.rs`.
//!
//! Encoding follows transformers' `AutoTokenizer` (and so mlx-lm): `encode(text, true)` adds
//! exactly the special tokens that the tokenizer's post-processor adds (for a GGUF, what its
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` flags say), and special tokens written in the
//! text (`<|im_start|>`) are always recognised. Streaming decoding is the `tokenizers` crate's own
//! `DecodeStream`.

mod chat;
mod gguf;

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
pub use chat::{ChatMessage, CHAT_TEMPLATE_FUEL};

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
        gguf::GgufTokenizerMeta::read(gguf)?.build()
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
        chat::render_chat_template(
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
            inner: self.inner.decode_stream(false),
            skip_special: false,
            ids: Vec::new(),
            emitted: String::new(),
        }
    }
}

/// Incremental decoding of generated ids (see [`Tokenizer::stream`]): the `tokenizers` crate's
/// own [`tokenizers::DecodeStream`], which emits text only once it is complete (a character whose
/// UTF-8 bytes are split over several byte-level tokens comes out with the token that finishes
/// it; SentencePiece's leading spaces survive, as each step decodes with the previous ids), plus
/// [`DecodeStream::finish`] for what is still held back at the end.
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    skip_special: bool,
    /// Every id fed so far, and the text returned for them, for [`DecodeStream::finish`] and to
    /// recover when the decoder rewrites earlier text.
    ids: Vec<u32>,
    emitted: String,
}

impl std::fmt::Debug for DecodeStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeStream")
            .field("skip_special", &self.skip_special)
            .field("ids", &self.ids)
            .field("emitted", &self.emitted)
            .finish()
    }
}

impl DecodeStream<'_> {
    /// Leave special tokens out of the text (or keep them, with `false`).
    pub fn skip_special(mut self, skip: bool) -> Self {
        self.skip_special = skip;
        self.inner = self.tokenizer.inner.decode_stream(skip);
        self
    }

    /// Feeds one id; returns the newly completed text (`None` while a character is still
    /// incomplete, or when the id adds no text).
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let piece = match self.inner.step(id) {
            Ok(piece) => piece,
            // The decoder rewrote text it had already given out: emit what follows the common
            // part, and start a fresh stream with this id as its context.
            Err(_) => {
                self.inner = self.tokenizer.inner.decode_stream(self.skip_special);
                self.inner.step(id).map_err(|e| tok_err("decode", e))?;
                let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
                let common = common_prefix(&text, &self.emitted);
                Some(text[common..].to_string()).filter(|p| !p.is_empty())
            }
        };
        if let Some(p) = &piece {
            self.emitted.push_str(p);
        }
        Ok(piece)
    }

    /// Ends the stream: returns whatever text is still held back (an incomplete character comes
    /// out as U+FFFD).
    pub fn finish(self) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let rest = &text[common_prefix(&text, &self.emitted)..];
        Ok((!rest.is_empty()).then(|| rest.to_string()))
    }
}

/// The byte length of the longest common prefix of `a` and `b`, at a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
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

#[cfg(test)]
mod tests {
    use super::gguf::tests::tiny_gguf;
    use super::*;

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
