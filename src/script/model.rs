//! Model verbs: `load`, `info`, tokens (`encode`, `decode`, `tokens`, `chat`), running
//! (`forward`, `top_k`, `generate`) and `hook_points`.
//!
//! A `Model` value is a shared handle: copying the variable does not copy weights.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use rhai::plugin::*;
use rhai::{Array as RhaiArray, Dynamic, Engine, FnPtr, Map, FLOAT, INT};

use super::hooks::with_call;
use super::options::Options;
use super::tensor::Tensor;
use super::{context, RhaiResult};
use crate::generate::{GenerateOptions, Sink, StepToken};
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
                "Model({}: {}, {} layers, d_model {}, {}, {}{})",
                m.info.name,
                m.info.arch,
                m.info.n_layers,
                m.info.d_model,
                m.info.dtype,
                m.info.device,
                match &m.adapter {
                    Some(a) => format!(", adapter: {}", a.describe()),
                    None => String::new(),
                }
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
    let o = Options::parse(
        "load",
        opts,
        &["dtype", "dequantize", "adapter", "fuse", "pipeline"],
    )?;
    // An adapter folder resolves as a model path does (reading it is not restricted).
    let adapter = o
        .string("adapter")?
        .map(|dir| {
            let resolved = context(ctx).permissions().resolve(&dir)?;
            if !resolved.is_dir() {
                return Err(Error::Model(format!(
                    "load: adapter {}: no such folder (a relative path is relative to the \
                     script's folder)",
                    resolved.display()
                )));
            }
            Ok(resolved)
        })
        .transpose()?;
    let lo = LoadOptions {
        dtype: o.string("dtype")?.map(|s| parse_dtype(&s)).transpose()?,
        dequantize: o
            .get("dequantize")
            .map(|_| o.bool("dequantize", true))
            .transpose()?,
        fuse: o.bool("fuse", false)?,
        adapter,
        pipeline: o.bool("pipeline", false)?,
    };
    use crate::model::source;
    let m = match source {
        None | Some("default") => Model::load_default(&lo)?,
        Some(s) => {
            let ctx = context(ctx);
            // A path resolves as every file verb's does: `~/` is the home folder, a relative
            // path is relative to the script's folder. Reading it is not restricted (models
            // load from anywhere readable); a repo id needs the network only to download.
            let local = ctx.permissions().resolve(s).ok().filter(|p| p.exists());
            match local {
                Some(path) => Model::load(&path.to_string_lossy(), &lo)?,
                None if source::looks_like_repo_id(s) => {
                    if source::needs_download(s) {
                        ctx.permissions().net(&format!(
                            "load(\"{s}\"): {s} is not in the Hugging Face cache ({}), and \
                             downloading it",
                            source::hf_cache_dir().display()
                        ))?;
                    }
                    // Named by the repo id, not by the snapshot folder (a commit hash).
                    let mut m = Model::load(s, &lo)?;
                    m.info.name = s.to_string();
                    m
                }
                None => {
                    return Err(Error::Model(format!(
                        "{}: no such file or folder (a model source is a folder with \
                         config.json, a .gguf file, or a Hugging Face repo id like \
                         \"mlx-community/Qwen3-8B-4bit\"; a relative path is relative to the \
                         script's folder)",
                        ctx.resolve_path(s).display()
                    )))
                }
            }
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

/// Prints the first row's text as it comes, stops on Ctrl-C, and calls the script's
/// `on_token` function after each token.
struct Printer {
    print: bool,
    on_token: Option<FnPtr>,
    tokenizer: crate::tokenizer::Tokenizer,
}

impl Sink for Printer {
    fn text(&mut self, row: usize, piece: &str) -> Result<()> {
        if self.print && row == 0 {
            super::print_text(piece);
        }
        interrupt::check()
    }
    fn token(&mut self, _step: usize) {}
    fn step(&mut self, row: usize, t: &StepToken) -> Result<bool> {
        let Some(f) = &self.on_token else {
            return Ok(true);
        };
        let mut map = Map::new();
        map.insert("step".into(), (t.step as INT).into());
        map.insert("row".into(), (row as INT).into());
        map.insert("id".into(), (t.id as INT).into());
        map.insert(
            "token".into(),
            self.tokenizer.decode(&[t.id], false)?.into(),
        );
        map.insert(
            "logprob".into(),
            t.logprob.map_or(Dynamic::UNIT, |x| (x as FLOAT).into()),
        );
        let out = super::hooks::call_script(f, vec![Dynamic::from_map(map)]).map_err(|e| {
            if e == "interrupted" {
                Error::Interrupted
            } else {
                Error::Invalid(format!("generate: in the on_token function: {e}"))
            }
        })?;
        Ok(out.as_bool().map_or(true, |b| b))
    }
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
    "output",
    "alternatives",
    "on_token",
    "batch_size",
];

/// A generated row as `generate(..., #{output: "full"})` gives it.
fn full_map(m: &Model, g: crate::generate::Generation) -> Result<Dynamic> {
    let int = |i: u32| Dynamic::from_int(i as INT);
    let tokens = g
        .ids
        .iter()
        .map(|&i| m.tokenizer.decode(&[i], false).map(Dynamic::from))
        .collect::<Result<RhaiArray>>()?;
    let top = g
        .top
        .iter()
        .map(|alts| {
            alts.iter()
                .map(|&(id, lp)| {
                    let mut a = Map::new();
                    a.insert("token".into(), m.tokenizer.decode(&[id], false)?.into());
                    a.insert("id".into(), int(id));
                    a.insert("logprob".into(), (lp as FLOAT).into());
                    Ok(Dynamic::from_map(a))
                })
                .collect::<Result<RhaiArray>>()
                .map(Dynamic::from_array)
        })
        .collect::<Result<RhaiArray>>()?;
    let mut map = Map::new();
    map.insert("text".into(), g.text.into());
    map.insert(
        "ids".into(),
        Dynamic::from_array(g.ids.iter().map(|&i| int(i)).collect()),
    );
    map.insert("tokens".into(), Dynamic::from_array(tokens));
    map.insert(
        "logprobs".into(),
        Dynamic::from_array(
            g.logprobs
                .iter()
                .map(|&x| Dynamic::from_float(x as FLOAT))
                .collect(),
        ),
    );
    map.insert("top".into(), Dynamic::from_array(top));
    map.insert("finish".into(), g.finish.into());
    Ok(Dynamic::from_map(map))
}

pub(super) fn generate_impl(m: &mut Model, prompt: &Dynamic, opts: &Map) -> Result<Dynamic> {
    let o = Options::parse("generate", opts, GENERATE_KEYS)?;
    let max_tokens = o.int("max_tokens", 64)?;
    if max_tokens < 0 {
        return Err(Error::Invalid("generate: max_tokens must be >= 0".into()));
    }
    let full = o.choice("output", &["text", "full"], "text")? == "full";
    let alternatives = o.int("alternatives", if full { 5 } else { 0 })?;
    if o.get("alternatives").is_some() && !full {
        return Err(Error::Invalid(
            "generate: 'alternatives' applies to output: \"full\" only".into(),
        ));
    }
    if !(0..=1000).contains(&alternatives) {
        return Err(Error::Invalid(format!(
            "generate: alternatives must be between 0 and 1000, got {alternatives}"
        )));
    }
    let on_token = match o.get("on_token") {
        None => None,
        Some(v) => Some(v.clone().try_cast::<FnPtr>().ok_or_else(|| {
            Error::Invalid(format!(
                "generate: option 'on_token' must be a function (|step| ...), got {}",
                super::display::type_name(v)
            ))
        })?),
    };
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
        logprobs: full || on_token.is_some(),
        alternatives: alternatives as usize,
        batch_size: {
            let b = o.int("batch_size", crate::generate::DEFAULT_BATCH_SIZE as INT)?;
            if !(1..=4096).contains(&b) {
                return Err(Error::Invalid(format!(
                    "generate: batch_size must be between 1 and 4096, got {b}"
                )));
            }
            b as usize
        },
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
    let mut printer = Printer {
        print: stream,
        on_token,
        tokenizer: m.tokenizer.clone(),
    };
    let out = m.generate_ids(&rows, &gopts, &mut printer)?;
    if stream {
        super::print_text("\n");
    }
    let mut values: Vec<Dynamic> = out
        .into_iter()
        .map(|g| {
            if full {
                full_map(m, g)
            } else {
                Ok(Dynamic::from(g.text))
            }
        })
        .collect::<Result<_>>()?;
    Ok(if batch {
        Dynamic::from_array(values)
    } else {
        values.pop().unwrap_or_default()
    })
}

/// Whether `v` is a batch (an array of texts or of id arrays) rather than one input.
fn is_batch(v: &Dynamic) -> bool {
    v.read_lock::<RhaiArray>()
        .is_some_and(|a| !a.is_empty() && !a.iter().all(|x| x.is_int()))
}

/// The elements of a batch, or the value itself as a batch of one.
fn items(v: &Dynamic) -> Vec<Dynamic> {
    if is_batch(v) {
        v.read_lock::<RhaiArray>()
            .map(|a| a.to_vec())
            .unwrap_or_default()
    } else {
        vec![v.clone()]
    }
}

/// One input's ids, refusing a nested batch.
fn one_input(m: &Model, v: &Dynamic, verb: &str) -> Result<Vec<u32>> {
    match input(m, v, verb)? {
        Input::One(ids) => Ok(ids),
        Input::Batch(_) => Err(Error::Invalid(format!(
            "{verb}: each prompt and continuation is text or an array of ids"
        ))),
    }
}

/// The ids of a prompt and its continuation. Ids are used as given. Texts are tokenized as
/// mlx-lm and lm-eval do for causal models: the prompt the model's default way (BOS where its
/// config says), the continuation as the tokens of `prompt + continuation` after the prompt's
/// own tokens, so scoring sees exactly the tokens of the whole text. Where no such split exists
/// (a token of the whole text spans the boundary), the continuation is tokenized on its own,
/// without special tokens.
fn pair_ids(m: &Model, prompt: &Dynamic, cont: &Dynamic) -> Result<(Vec<u32>, Vec<u32>)> {
    let p = one_input(m, prompt, "logprobs")?;
    let text = |v: &Dynamic| v.clone().into_immutable_string().ok();
    let c = match (text(prompt), text(cont)) {
        (_, None) => one_input(m, cont, "logprobs")?,
        (Some(pt), Some(ct)) => {
            let whole = m.encode(&format!("{pt}{ct}"), true)?;
            match whole.strip_prefix(p.as_slice()) {
                Some(rest) if !rest.is_empty() => rest.to_vec(),
                _ => m.encode(&ct, false)?,
            }
        }
        (None, Some(ct)) => m.encode(&ct, false)?,
    };
    if p.is_empty() {
        return Err(Error::Invalid(
            "logprobs: the prompt has no tokens (the first continuation token needs a position \
             before it)"
                .into(),
        ));
    }
    if c.is_empty() {
        return Err(Error::Invalid(
            "logprobs: the continuation has no tokens".into(),
        ));
    }
    Ok((p, c))
}

fn logprobs_impl(m: &mut Model, prompt: &Dynamic, cont: &Dynamic) -> Result<Dynamic> {
    interrupt::check()?;
    let (ps, cs) = (items(prompt), items(cont));
    let batch = is_batch(prompt) || is_batch(cont);
    let n = ps.len().max(cs.len());
    if ps.len() != cs.len() && ps.len() != 1 && cs.len() != 1 {
        return Err(Error::Invalid(format!(
            "logprobs: {} prompts and {} continuations; give as many of each, or one prompt \
             for several continuations (or one continuation for several prompts)",
            ps.len(),
            cs.len()
        )));
    }
    let pairs = (0..n)
        .map(|i| pair_ids(m, &ps[i.min(ps.len() - 1)], &cs[i.min(cs.len() - 1)]))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<Vec<u32>> = pairs
        .iter()
        .flat_map(|(p, c)| [p.clone(), c.clone()])
        .collect();
    check_vocab(m, &rows, "logprobs")?;
    let t = pairs
        .iter()
        .map(|(p, c)| p.len() + c.len())
        .max()
        .unwrap_or(0);
    crate::arrays::check_fits(&[n as i32, t as i32, m.info.vocab], mlx_rs::Dtype::Float32)?;
    let scored = m.continuation_logprobs(&pairs)?;
    let mut out = pairs
        .iter()
        .zip(scored)
        .map(|((_, c), s)| {
            let mut map = Map::new();
            let total: f64 = s.logprobs.iter().map(|&x| x as f64).sum();
            map.insert("total".into(), (total as FLOAT).into());
            map.insert(
                "per_token".into(),
                Dynamic::from_array(
                    s.logprobs
                        .iter()
                        .map(|&x| Dynamic::from_float(x as FLOAT))
                        .collect(),
                ),
            );
            let tokens = c
                .iter()
                .map(|&i| m.tokenizer.decode(&[i], false).map(Dynamic::from))
                .collect::<Result<RhaiArray>>()?;
            map.insert("tokens".into(), Dynamic::from_array(tokens));
            map.insert(
                "ids".into(),
                Dynamic::from_array(c.iter().map(|&i| Dynamic::from_int(i as INT)).collect()),
            );
            map.insert("greedy".into(), s.greedy.iter().all(|&g| g).into());
            Ok(Dynamic::from_map(map))
        })
        .collect::<Result<Vec<Dynamic>>>()?;
    Ok(if batch {
        Dynamic::from_array(out)
    } else {
        out.pop().unwrap_or_default()
    })
}

fn adapter_map(a: &crate::model::lora::Adapter) -> Map {
    let mut layers: Vec<INT> = a.modules.keys().map(|(l, _)| *l as INT).collect();
    layers.dedup();
    let mut targets: Vec<&str> = a.modules.keys().map(|(_, t)| t.short()).collect();
    targets.sort_by_key(|t| {
        crate::model::lora::Target::ALL
            .iter()
            .position(|x| x.short() == *t)
    });
    targets.dedup();
    let mut ranks: Vec<INT> = a.modules.values().map(|m| m.rank as INT).collect();
    ranks.sort();
    ranks.dedup();
    let ints = |v: Vec<INT>| Dynamic::from_array(v.into_iter().map(Dynamic::from_int).collect());
    let mut map = Map::new();
    map.insert("format".into(), a.format.name().into());
    map.insert("path".into(), a.path.display().to_string().into());
    map.insert("on".into(), (a.enabled || a.fused).into());
    map.insert("fused".into(), a.fused.into());
    map.insert("layers".into(), ints(layers));
    map.insert(
        "targets".into(),
        Dynamic::from_array(targets.into_iter().map(|t| t.into()).collect()),
    );
    map.insert("ranks".into(), ints(ranks));
    map.insert("summary".into(), a.summary.clone().into());
    map
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
    /// Hugging Face repo id (from the local Hugging Face cache, downloaded when online; the
    /// model is named by the id). A path may start with `~/`; a relative one is relative to
    /// the script's folder.
    ///
    /// Example: `let m = load("mlx-community/Qwen3-0.6B-4bit");`
    #[rhai_fn(name = "load", return_raw)]
    pub fn load_source(ctx: NativeCallContext, source: &str) -> RhaiResult<Model> {
        Ok(load_impl(&ctx, Some(source), &Map::new())?)
    }

    /// `load` with options: `dtype` ("f32", "f16", "bf16"), `dequantize` (bool; default true on
    /// the CPU backend, false on a GPU), `adapter` (a LoRA adapter folder from mlx-lm or PEFT),
    /// `fuse` (merge the adapter into the weights; default false: switchable with `adapter`),
    /// `pipeline` (bool, default false: under `mlxi launch -n N`, each rank loads only its
    /// share of the blocks and the ranks run every forward together; alone, ignored).
    ///
    /// Example: `let m = load("models/qwen3", #{dtype: "bf16"});`
    #[rhai_fn(name = "load", return_raw)]
    pub fn load_with(ctx: NativeCallContext, source: &str, opts: Map) -> RhaiResult<Model> {
        Ok(load_impl(&ctx, Some(source), &opts)?)
    }

    /// A map describing the model: name, arch, n_layers, d_model, n_heads, n_kv_heads, d_head,
    /// d_mlp, vocab, params, dtype, quantization, bytes, device, path, adapter ("none" or a
    /// description of the LoRA adapter).
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

    /// Text of an array of token ids (special tokens included); an id outside the model's
    /// vocabulary is an error.
    ///
    /// Example: `decode(m, [504, 3575])  // "The capital"`
    #[rhai_fn(return_raw, pure)]
    pub fn decode(m: &mut Model, ids: RhaiArray) -> RhaiResult<String> {
        let ids = ids_of(&ids, "decode")?;
        let g = m.get()?;
        check_vocab(&g, std::slice::from_ref(&ids), "decode")?;
        Ok(g.tokenizer.decode(&ids, false)?)
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
    /// in the chat template), `stream` (print the first prompt's text as it goes, on stdout;
    /// on in the REPL, off in scripts), `steer` (steering for this call only, as
    /// `with_steering` takes it), `output` ("text", or "full": a map `#{text, ids, tokens,
    /// logprobs, top, finish}` per prompt, `logprobs` the log-softmax of the model's logits
    /// before temperature and sampling cuts), `alternatives` (with "full": the `k` most likely
    /// tokens `#{token, id, logprob}` per step in `top`, 5), `on_token` (a function called
    /// after each token with `#{step, row, id, token, logprob}`; returning `false` ends that
    /// prompt's generation). An array of prompts gives an array, run as one batch.
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

    /// The log-probability of `continuation` after `prompt`, from one forward:
    /// `#{total, per_token, tokens, ids, greedy}` (`per_token`: the log-softmax of the logits
    /// at each continuation token; `greedy`: every token was the most likely one). Texts are
    /// tokenized as mlx-lm and lm-eval do: the prompt with BOS where the model adds one, the
    /// continuation as the tokens of `prompt + continuation` after the prompt's (put the space
    /// in the continuation: `" Paris"`); ids are used as given. Arrays of prompts and
    /// continuations (or one prompt and several continuations) give an array of maps, scored
    /// in one batched forward.
    ///
    /// Example: `logprobs(m, "The capital of France is", " Paris").total`
    #[rhai_fn(return_raw, pure)]
    pub fn logprobs(
        ctx: NativeCallContext,
        m: &mut Model,
        prompt: Dynamic,
        continuation: Dynamic,
    ) -> RhaiResult<Dynamic> {
        let mut g = m.get()?;
        Ok(with_call(&ctx, || {
            logprobs_impl(&mut g, &prompt, &continuation)
        })?)
    }

    /// Every valid hook name of the model (TransformerLens names).
    ///
    /// Example: `hook_points(m)[0]  // "hook_embed"`
    #[rhai_fn(return_raw, pure)]
    pub fn hook_points(m: &mut Model) -> RhaiResult<RhaiArray> {
        let g = m.get()?;
        let n = g.n_layers();
        let lora: Vec<HookName> = match &g.adapter {
            Some(a) => HookName::lora_points(&a.targets()),
            None => Vec::new(),
        };
        Ok(HookName::forward_order(n)
            .into_iter()
            .filter(|h| g.has_point(h))
            .filter(|h| !matches!(h, HookName::Lora(..)) || lora.contains(h))
            .map(|h| Dynamic::from(h.to_string()))
            .collect())
    }

    /// Switches the model's LoRA adapter off (`false`) or on (`true`), so the same prompts run
    /// on the base model and the fine-tune without reloading. A fused adapter cannot be
    /// switched (an error says so).
    ///
    /// Example: `adapter(m, false); let base = forward(m, "Hi"); adapter(m, true);`
    #[rhai_fn(name = "adapter", return_raw)]
    pub fn set_adapter(m: &mut Model, on: bool) -> RhaiResult<()> {
        Ok(m.get()?.set_adapter(on)?)
    }

    /// The model's LoRA adapter: `#{format, path, on, fused, layers, targets, ranks, summary}`
    /// (`layers`: the blocks adapted; `targets`: "q", "v", ...), or `()` without one.
    ///
    /// Example: `adapter(m).on  // true`
    #[rhai_fn(name = "adapter", return_raw, pure)]
    pub fn get_adapter(m: &mut Model) -> RhaiResult<Dynamic> {
        let g = m.get()?;
        let Some(a) = &g.adapter else {
            return Ok(Dynamic::UNIT);
        };
        Ok(Dynamic::from_map(adapter_map(a)))
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
