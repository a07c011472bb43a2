//! Model verbs: `load`, `info`, tokens (`encode`, `decode`, `tokens`, `chat`), running
//! (`forward`, `top_k`, `generate`) and `hook_points`.
//!
//! A `Model` value is a shared handle: copying the variable does not copy weights.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, Map, FLOAT, INT};

use super::hooks::with_call;
use super::options::Options;
use super::tensor::Tensor;
use super::{context, RhaiResult};
use crate::generate::{GenerateOptions, Sink};
use crate::hooks::HookName;
use crate::model::{parse_dtype, LoadOptions, Model};
use crate::tokenizer::ChatMessage;
use crate::{interrupt, Error, Result};

/// Whether `generate` prints tokens as they come (the REPL turns this on).
static STREAM: AtomicBool = AtomicBool::new(false);

/// Stream generated text to the terminal by default (the REPL does).
pub fn set_streaming(on: bool) {
    STREAM.store(on, Ordering::Relaxed);
}

/// The script-side model: a shared, mutable handle.
#[derive(Clone)]
pub struct ModelHandle(pub Rc<RefCell<Model>>);

impl ModelHandle {
    /// Borrow the model for a verb; a hook closure calling back into the same model is an error,
    /// not a panic.
    pub fn get(&self) -> Result<RefMut<'_, Model>> {
        self.0.try_borrow_mut().map_err(|_| {
            Error::Invalid(
                "this model is busy (a hook function cannot call verbs on the model it is \
                 hooked into)"
                    .into(),
            )
        })
    }

    /// One-line description for printing.
    pub fn summary(&self) -> String {
        match self.0.try_borrow() {
            Ok(m) => format!(
                "Model({}: {}, {} layers, d_model {}, {}, {})",
                m.info.name,
                m.info.arch,
                m.info.n_layers,
                m.info.d_model,
                m.info.dtype,
                m.info.device
            ),
            Err(_) => "Model(busy)".into(),
        }
    }
}

/// What a verb was given to run: text or ids, one row or a batch.
pub enum Input {
    One(Vec<u32>),
    Batch(Vec<Vec<u32>>),
}

fn ids_of(a: &RhaiArray, verb: &str) -> Result<Vec<u32>> {
    a.iter()
        .map(|x| {
            x.as_int()
                .ok()
                .filter(|&i| i >= 0 && i <= u32::MAX as INT)
                .map(|i| i as u32)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{verb}: token ids must be non-negative integers, got {}",
                        super::display::inline(x)
                    ))
                })
        })
        .collect()
}

/// Text (tokenized the model's default way) or an array of ids, or an array of either.
pub fn input(m: &Model, value: &Dynamic, verb: &str) -> Result<Input> {
    if let Ok(s) = value.clone().into_immutable_string() {
        return Ok(Input::One(m.encode(&s, true)?));
    }
    if let Some(a) = value.read_lock::<RhaiArray>() {
        if a.is_empty() {
            return Err(Error::Invalid(format!("{verb}: empty input")));
        }
        if a.iter().all(|x| x.is_int()) {
            return Ok(Input::One(ids_of(&a, verb)?));
        }
        let rows = a
            .iter()
            .map(|x| match input(m, x, verb)? {
                Input::One(ids) => Ok(ids),
                Input::Batch(_) => Err(Error::Invalid(format!(
                    "{verb}: a batch holds texts or arrays of ids, not nested batches"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(Input::Batch(rows));
    }
    Err(Error::Invalid(format!(
        "{verb}: input must be text, an array of token ids, or an array of texts; got {}",
        super::display::type_name(value)
    )))
}

fn check_vocab(m: &Model, rows: &[Vec<u32>], verb: &str) -> Result<()> {
    let v = m.info.vocab as u32;
    for r in rows {
        if let Some(bad) = r.iter().find(|&&t| t >= v) {
            return Err(Error::Invalid(format!(
                "{verb}: token id {bad} is out of range (vocabulary of {v})"
            )));
        }
    }
    Ok(())
}

fn load_impl(ctx: &NativeCallContext, source: Option<&str>, opts: &Map) -> Result<ModelHandle> {
    let o = Options::parse("load", opts, &["dtype", "dequantize"])?;
    let lo = LoadOptions {
        dtype: o.string("dtype")?.map(|s| parse_dtype(&s)).transpose()?,
        dequantize: o
            .get("dequantize")
            .map(|_| o.bool("dequantize", true))
            .transpose()?,
    };
    let m = match source {
        None | Some("default") => Model::load_default(&lo)?,
        Some(s) => {
            if crate::model::source::needs_download(s) {
                context(ctx).permissions().net(&format!(
                    "load(\"{s}\"): {s} is not in the Hugging Face cache ({}), and downloading it",
                    crate::model::source::hf_cache_dir().display()
                ))?;
            }
            Model::load(s, &lo)?
        }
    };
    Ok(ModelHandle(Rc::new(RefCell::new(m))))
}

fn messages(value: &Dynamic) -> Result<Vec<ChatMessage>> {
    if let Ok(s) = value.clone().into_immutable_string() {
        return Ok(vec![ChatMessage::user(s.to_string())]);
    }
    let Some(a) = value.read_lock::<RhaiArray>() else {
        return Err(Error::Invalid(
            "chat: expects text or an array of #{role, content} maps".into(),
        ));
    };
    a.iter()
        .map(|m| {
            let map = m.read_lock::<Map>().ok_or_else(|| {
                Error::Invalid("chat: each message must be a map #{role, content}".into())
            })?;
            let field = |k: &str| {
                map.get(k)
                    .and_then(|v| v.clone().into_immutable_string().ok())
                    .map(|s| s.to_string())
                    .ok_or_else(|| Error::Invalid(format!("chat: a message lacks a text '{k}'")))
            };
            Ok(ChatMessage::new(field("role")?, field("content")?))
        })
        .collect()
}

fn chat_impl(m: &Model, value: &Dynamic) -> Result<String> {
    if !m.tokenizer.has_chat_template() {
        return Err(Error::Invalid(format!(
            "chat: model {} has no chat template",
            m.info.name
        )));
    }
    m.tokenizer.apply_chat_template(&messages(value)?, true)
}

fn forward_impl(m: &mut Model, value: &Dynamic) -> Result<Tensor> {
    interrupt::check()?;
    match input(m, value, "forward")? {
        Input::One(ids) => {
            check_vocab(m, std::slice::from_ref(&ids), "forward")?;
            let logits = m.forward_ids(&[ids])?;
            let t = logits.shape()[1];
            Ok(Tensor::new(logits.reshape(&[t, -1])?))
        }
        Input::Batch(rows) => {
            check_vocab(m, &rows, "forward")?;
            Ok(Tensor::new(m.forward_ids(&rows)?))
        }
    }
}

fn top_k_impl(m: &mut Model, value: &Dynamic, k: INT) -> Result<RhaiArray> {
    if k < 1 {
        return Err(Error::Invalid(format!(
            "top_k: k must be at least 1, got {k}"
        )));
    }
    let ids = match input(m, value, "top_k")? {
        Input::One(ids) => ids,
        Input::Batch(_) => {
            return Err(Error::Invalid(
                "top_k: takes one input (text or ids), not a batch".into(),
            ))
        }
    };
    check_vocab(m, std::slice::from_ref(&ids), "top_k")?;
    let rows = m.top_k(&ids, k as usize)?;
    Ok(rows
        .into_iter()
        .map(|(id, token, prob, logit)| {
            let mut map = Map::new();
            map.insert("token".into(), token.into());
            map.insert("id".into(), (id as INT).into());
            map.insert("prob".into(), (prob as FLOAT).into());
            map.insert("logit".into(), (logit as FLOAT).into());
            Dynamic::from_map(map)
        })
        .collect())
}

/// Prints the first row's text as it comes, and stops on Ctrl-C.
struct Printer {
    print: bool,
}

impl Sink for Printer {
    fn text(&mut self, row: usize, piece: &str) -> Result<()> {
        if self.print && row == 0 {
            super::print_text(piece);
        }
        interrupt::check()
    }
    fn token(&mut self, _step: usize) {}
}

const GENERATE_KEYS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "chat",
    "stream",
    "steer",
];

pub(super) fn generate_impl(m: &mut Model, prompt: &Dynamic, opts: &Map) -> Result<Dynamic> {
    let o = Options::parse("generate", opts, GENERATE_KEYS)?;
    let max_tokens = o.int("max_tokens", 64)?;
    if max_tokens < 0 {
        return Err(Error::Invalid("generate: max_tokens must be >= 0".into()));
    }
    let positive = |k: &str| -> Result<Option<f32>> { Ok(o.opt_float(k)?.map(|x| x as f32)) };
    let stop = match o.array("stop")? {
        Some(a) => a
            .iter()
            .map(|s| {
                s.clone()
                    .into_immutable_string()
                    .map(|s| s.to_string())
                    .map_err(|_| {
                        Error::Invalid("generate: stop must be an array of strings".into())
                    })
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let gopts = GenerateOptions {
        max_tokens: max_tokens as usize,
        temperature: o.float("temperature", 0.0)? as f32,
        top_p: positive("top_p")?,
        top_k: o.opt_int("top_k")?.map(|k| k.max(1) as usize),
        min_p: positive("min_p")?,
        repetition_penalty: positive("repetition_penalty")?,
        seed: o.opt_int("seed")?.map(|s| s as u64),
        stop,
    };
    let chat = o.bool("chat", false)?;
    let batch = prompt.is_array()
        && !prompt
            .read_lock::<RhaiArray>()
            .is_some_and(|a| a.iter().all(|x| x.is_int()));
    let prompts: Vec<Dynamic> = if batch {
        prompt
            .read_lock::<RhaiArray>()
            .map(|a| a.to_vec())
            .unwrap_or_default()
    } else {
        vec![prompt.clone()]
    };
    let mut rows = Vec::with_capacity(prompts.len());
    for p in &prompts {
        let p = if chat {
            if p.is_array()
                && p.read_lock::<RhaiArray>()
                    .is_some_and(|a| a.iter().all(|x| x.is_int()))
            {
                return Err(Error::Invalid(
                    "generate: chat: true needs text or messages, not token ids".into(),
                ));
            }
            Dynamic::from(chat_impl(m, p)?)
        } else {
            p.clone()
        };
        match input(m, &p, "generate")? {
            Input::One(ids) => rows.push(ids),
            Input::Batch(_) => {
                return Err(Error::Invalid(
                    "generate: a prompt must be text or ids (use an array of prompts for a batch)"
                        .into(),
                ))
            }
        }
    }
    check_vocab(m, &rows, "generate")?;
    let stream = o.bool("stream", STREAM.load(Ordering::Relaxed) && !batch)?;
    let mut printer = Printer { print: stream };
    let out = m.generate_ids(&rows, &gopts, &mut printer)?;
    if stream {
        super::print_text("\n");
    }
    let mut texts: Vec<Dynamic> = out.into_iter().map(|g| Dynamic::from(g.text)).collect();
    Ok(if batch {
        Dynamic::from_array(texts)
    } else {
        texts.pop().unwrap_or_default()
    })
}

fn info_map(m: &Model) -> Result<Map> {
    let v = serde_json::to_value(&m.info).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut map = Map::new();
    if let serde_json::Value::Object(o) = v {
        for (k, v) in o {
            let d = match v {
                serde_json::Value::Number(n) if n.is_i64() => {
                    Dynamic::from_int(n.as_i64().unwrap_or(0))
                }
                serde_json::Value::Number(n) => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
                serde_json::Value::String(s) => Dynamic::from(s),
                other => Dynamic::from(other.to_string()),
            };
            map.insert(k.into(), d);
        }
    }
    Ok(map)
}

#[export_module]
mod model_functions {
    use super::*;

    pub type Model = super::ModelHandle;

    /// The default model, SmolLM2-135M-Instruct (downloaded by `./setup`).
    ///
    /// Example: `let m = load();`
    #[rhai_fn(name = "load", return_raw)]
    pub fn load_default(ctx: NativeCallContext) -> RhaiResult<Model> {
        Ok(load_impl(&ctx, None, &Map::new())?)
    }

    /// A model from a folder (Hugging Face or mlx-community layout), a `.gguf` file, or a
    /// Hugging Face repo id (from the local Hugging Face cache, downloaded when online).
    ///
    /// Example: `let m = load("mlx-community/Qwen3-0.6B-4bit");`
    #[rhai_fn(name = "load", return_raw)]
    pub fn load_source(ctx: NativeCallContext, source: &str) -> RhaiResult<Model> {
        Ok(load_impl(&ctx, Some(source), &Map::new())?)
    }

    /// `load` with options: `dtype` ("f32", "f16", "bf16"), `dequantize` (bool; default true on
    /// the CPU backend, false on a GPU).
    ///
    /// Example: `let m = load("models/qwen3", #{dtype: "bf16"});`
    #[rhai_fn(name = "load", return_raw)]
    pub fn load_with(ctx: NativeCallContext, source: &str, opts: Map) -> RhaiResult<Model> {
        Ok(load_impl(&ctx, Some(source), &opts)?)
    }

    /// A map describing the model: name, arch, n_layers, d_model, n_heads, n_kv_heads, d_head,
    /// d_mlp, vocab, params, dtype, quantization, bytes, device, path.
    ///
    /// Example: `load().info().n_layers  // 30`
    #[rhai_fn(return_raw, pure)]
    pub fn info(m: &mut Model) -> RhaiResult<Map> {
        let g = m.get()?;
        Ok(info_map(&g)?)
    }

    /// Number of transformer blocks.
    ///
    /// Example: `m.n_layers  // 30`
    #[rhai_fn(get = "n_layers", pure)]
    pub fn n_layers(m: &mut Model) -> INT {
        m.0.try_borrow().map_or(0, |m| m.info.n_layers as INT)
    }

    /// Width of the residual stream.
    ///
    /// Example: `m.d_model  // 576`
    #[rhai_fn(get = "d_model", pure)]
    pub fn d_model(m: &mut Model) -> INT {
        m.0.try_borrow().map_or(0, |m| m.info.d_model as INT)
    }

    /// Vocabulary size (rows of the embedding).
    ///
    /// Example: `m.vocab  // 49152`
    #[rhai_fn(get = "vocab", pure)]
    pub fn vocab(m: &mut Model) -> INT {
        m.0.try_borrow().map_or(0, |m| m.info.vocab as INT)
    }

    /// Token ids of `text`, tokenized the model's default way (BOS added where its config says).
    ///
    /// Example: `encode(m, "The capital of France is")  // [504, 3575, 282, 4649, 314]`
    #[rhai_fn(name = "encode", return_raw, pure)]
    pub fn encode(m: &mut Model, text: &str) -> RhaiResult<RhaiArray> {
        let ids = m.get()?.encode(text, true)?;
        Ok(ids
            .into_iter()
            .map(|i| Dynamic::from_int(i as INT))
            .collect())
    }

    /// `encode` with options: `special` (false adds no BOS or other special tokens).
    ///
    /// Example: `encode(m, "hi", #{special: false})`
    #[rhai_fn(name = "encode", return_raw, pure)]
    pub fn encode_with(m: &mut Model, text: &str, opts: Map) -> RhaiResult<RhaiArray> {
        let o = Options::parse("encode", &opts, &["special"])?;
        let special = o.bool("special", true)?;
        let ids = m.get()?.encode(text, special)?;
        Ok(ids
            .into_iter()
            .map(|i| Dynamic::from_int(i as INT))
            .collect())
    }

    /// Text of an array of token ids (special tokens included).
    ///
    /// Example: `decode(m, [504, 3575])  // "The capital"`
    #[rhai_fn(return_raw, pure)]
    pub fn decode(m: &mut Model, ids: RhaiArray) -> RhaiResult<String> {
        let ids = ids_of(&ids, "decode")?;
        Ok(m.get()?.tokenizer.decode(&ids, false)?)
    }

    /// One string per token of `text`, as the model sees it.
    ///
    /// Example: `tokens(m, "The capital")  // ["The", " capital"]`
    #[rhai_fn(return_raw, pure)]
    pub fn tokens(m: &mut Model, text: &str) -> RhaiResult<RhaiArray> {
        let t = m.get()?.tokenizer.tokens(text, true)?;
        Ok(t.into_iter().map(Dynamic::from).collect())
    }

    /// The prompt rendered through the model's chat template with the generation prompt
    /// appended; `messages` is text (one user message) or an array of `#{role, content}`.
    ///
    /// Example: `chat(m, [#{role: "user", content: "Hi"}])`
    #[rhai_fn(return_raw, pure)]
    pub fn chat(m: &mut Model, messages: Dynamic) -> RhaiResult<String> {
        let g = m.get()?;
        Ok(chat_impl(&g, &messages)?)
    }

    /// Logits for `input` (text or ids) as a Tensor `[pos, vocab]`; an array of texts gives
    /// `[batch, pos, vocab]` (left-padded).
    ///
    /// Example: `forward(m, "Hello").shape  // [1, 49152]`
    #[rhai_fn(return_raw, pure)]
    pub fn forward(ctx: NativeCallContext, m: &mut Model, input: Dynamic) -> RhaiResult<Tensor> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || forward_impl(&mut g, &input))?)
    }

    /// The `k` most likely next tokens after `input`: `#{token, id, prob, logit}`, most likely
    /// first.
    ///
    /// Example: `top_k(m, "The capital of France is", 3)`
    #[rhai_fn(return_raw, pure)]
    pub fn top_k(
        ctx: NativeCallContext,
        m: &mut Model,
        input: Dynamic,
        k: INT,
    ) -> RhaiResult<RhaiArray> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || top_k_impl(&mut g, &input, k))?)
    }

    /// Generated text (new text only) with default options (64 tokens, greedy).
    ///
    /// Example: `generate(m, "Once upon a time")`
    #[rhai_fn(name = "generate", return_raw, pure)]
    pub fn generate(ctx: NativeCallContext, m: &mut Model, prompt: Dynamic) -> RhaiResult<Dynamic> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            generate_impl(&mut g, &prompt, &Map::new())
        })?)
    }

    /// Generated text. opts: `max_tokens` (64), `temperature` (0 = greedy), `top_p`, `top_k`,
    /// `min_p`, `repetition_penalty`, `seed`, `stop` (array of strings), `chat` (wrap the prompt
    /// in the chat template), `stream` (print as it goes; on in the REPL), `steer` (steering
    /// for this call only, as `with_steering` takes it). An array of prompts gives an array of
    /// strings, run as one batch.
    ///
    /// Example: `m.generate("Once upon a time", #{max_tokens: 20, temperature: 0.7, seed: 1})`
    #[rhai_fn(name = "generate", return_raw, pure)]
    pub fn generate_with(
        ctx: NativeCallContext,
        m: &mut Model,
        prompt: Dynamic,
        opts: Map,
    ) -> RhaiResult<Dynamic> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            crate::script::scoped::generate_steered(&mut g, &prompt, &opts)
        })?)
    }

    /// Every valid hook name of the model (TransformerLens names).
    ///
    /// Example: `hook_points(m)[0]  // "hook_embed"`
    #[rhai_fn(return_raw, pure)]
    pub fn hook_points(m: &mut Model) -> RhaiResult<RhaiArray> {
        let n = m.get()?.n_layers();
        Ok(HookName::all(n)
            .into_iter()
            .map(|h| Dynamic::from(h.to_string()))
            .collect())
    }

    /// A short description of the model.
    ///
    /// Example: `print(m)`
    #[rhai_fn(name = "to_string", pure)]
    pub fn to_string(m: &mut Model) -> String {
        m.summary()
    }

    /// A short description of the model.
    #[rhai_fn(name = "to_debug", pure)]
    pub fn to_debug(m: &mut Model) -> String {
        m.summary()
    }
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<ModelHandle>("Model");
    engine.register_global_module(exported_module!(model_functions).into());
}
