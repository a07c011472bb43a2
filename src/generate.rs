//! Text generation with a KV cache: greedy decoding and sampling (temperature, top-k, top-p,
//! min-p, repetition penalty), stop strings and end-of-sequence tokens, batched over prompts.
//!
//! Greedy decoding takes the argmax on the device; sampling copies each step's logits to the
//! host and samples there with a seeded ChaCha generator, so a seed reproduces a run exactly.
//!
//! When asked, each step also records the chosen token's log-probability and the most likely
//! alternatives: the log-softmax of the model's logits at that step (after hooks and steering,
//! before temperature, repetition penalty and the top-k/top-p/min-p cuts), computed on the
//! device so that only `k + 1` numbers per row reach the host.
//!
//! Scoring ([`Model::continuation_logprobs`]) gives the log-probability of given continuation
//! tokens after their prompts, from one batched forward.

use mlx_rs::ops::indexing::{argmax_axis, TryIndexOp};
use mlx_rs::{Array, Dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::arrays::to_f32_vec;
use crate::error::{Error, Result};
use crate::model::layers::KvCache;
use crate::model::{pad_left, Model};

/// Options of `generate` (the script API's names).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Record each generated token's log-probability ([`Generation::logprobs`]).
    pub logprobs: bool,
    /// Record this many most likely tokens at each step ([`Generation::top`]); needs
    /// `logprobs`.
    pub alternatives: usize,
    /// Prompts generated together in one batch (at least 1); more prompts run in several
    /// batches, one after the other, with the same results (each row samples from its own
    /// random stream, numbered by its place among all the prompts).
    pub batch_size: usize,
}

/// Rows generated together unless asked otherwise: batch 32 gives most of the throughput a
/// larger batch would (BENCHMARKS.md) and bounds the memory of a long list of prompts.
pub const DEFAULT_BATCH_SIZE: usize = 32;

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 64,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            seed: None,
            stop: Vec::new(),
            logprobs: false,
            alternatives: 0,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// Tokens considered by the repetition penalty (as mlx-lm's default context size).
const REPETITION_CONTEXT: usize = 20;

/// One generated row.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// The generated ids (an end-of-sequence token is not included; the token that completed a
    /// stop string is).
    pub ids: Vec<u32>,
    pub text: String,
    /// Why it stopped: "eos", "stop", "length", or "callback" (the sink's `step` said stop).
    pub finish: String,
    /// With `logprobs`: the log-probability of each of `ids` (log-softmax of the model's logits
    /// at that step, before temperature and the sampling cuts).
    pub logprobs: Vec<f32>,
    /// With `alternatives`: for each of `ids`, the most likely tokens at that step as
    /// `(id, log-probability)`, most likely first.
    pub top: Vec<Vec<(u32, f32)>>,
}

/// A token just appended to a row, as [`Sink::step`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct StepToken {
    /// The step (from 0).
    pub step: usize,
    pub id: u32,
    /// The token's log-probability, when the generation records them.
    pub logprob: Option<f32>,
}

/// What the caller learns after every step, to stream text or stop early.
pub trait Sink {
    /// New text for `row`. Returning an error (e.g. `Error::Interrupted`) stops generation.
    fn text(&mut self, row: usize, piece: &str) -> Result<()>;
    /// Called once per step, right after the step's tokens are known (`step` counts from 0).
    fn token(&mut self, _step: usize) {}
    /// Called for each token appended to `row` (after its text was handed to [`Sink::text`]);
    /// returning `false` ends that row (finish "callback"), an error ends generation.
    fn step(&mut self, _row: usize, _token: &StepToken) -> Result<bool> {
        Ok(true)
    }
}

impl<F: FnMut(usize, &str) -> Result<()>> Sink for F {
    fn text(&mut self, row: usize, piece: &str) -> Result<()> {
        self(row, piece)
    }
}

struct Row {
    /// This row's random stream (sampling only).
    rng: ChaCha8Rng,
    prompt_tail: Vec<u32>,
    out: Generation,
    /// Text already handed to the sink.
    emitted: usize,
    done: bool,
}

impl Model {
    /// Generate from token-id prompts (batched), stopping at the model's end-of-sequence
    /// tokens. (Written here, with the generation loop, so that the model does not depend on
    /// generation.)
    pub fn generate_ids(
        &mut self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        sink: &mut dyn Sink,
    ) -> Result<Vec<Generation>> {
        let eos = self.tokenizer.eos_ids().to_vec();
        let pad = self.pad_id();
        let tokenizer = self.tokenizer.clone();
        let decode = move |ids: &[u32]| tokenizer.decode(ids, true);
        generate(self, prompts, opts, &eos, pad, &decode, sink)
    }
}

/// The score of one continuation after its prompt.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// The log-probability of each continuation token given everything before it.
    pub logprobs: Vec<f32>,
    /// Whether each continuation token was the most likely one (greedy decoding would pick it).
    pub greedy: Vec<bool>,
}

impl Model {
    /// The log-probability of each `continuation` token after its `prompt` (token ids), for
    /// every pair, from one batched forward of `prompt ++ continuation` (rows left-padded):
    /// the log-softmax of the logits (after hooks and steering) at the position before each
    /// continuation token, taken at that token. Every prompt and continuation needs a token.
    pub fn continuation_logprobs(&mut self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Scored>> {
        if pairs.is_empty() {
            return Err(Error::Invalid("logprobs: no inputs".into()));
        }
        if pairs.iter().any(|(p, c)| p.is_empty() || c.is_empty()) {
            return Err(Error::Invalid(
                "logprobs: a prompt and a continuation each need at least one token".into(),
            ));
        }
        let rows: Vec<Vec<u32>> = pairs
            .iter()
            .map(|(p, c)| p.iter().chain(c).copied().collect())
            .collect();
        let (ids, pads) = pad_left(&rows, 0)?;
        let t = ids.shape()[1];
        let b = ids.shape()[0];
        let pad = |r: usize| pads.get(r).copied().unwrap_or(0);
        // Only the positions that predict a continuation token are scored: from the earliest
        // row's last prompt token on.
        let first = (0..pairs.len())
            .map(|r| pad(r) + pairs[r].0.len() as i32 - 1)
            .min()
            .unwrap_or(0);
        let logits = self.run(&ids, &pads, None, false)?;
        let lf = logits
            .try_index((.., first..t - 1, ..))?
            .as_dtype(Dtype::Float32)?;
        let targets = ids.try_index((.., first + 1..))?.as_dtype(Dtype::Int32)?;
        let n = t - 1 - first;
        let picked = lf
            .take_along_axis(targets.reshape(&[b, n, 1])?, -1)?
            .reshape(&[b, n])?
            .subtract(logsumexp_rows(&lf)?.reshape(&[b, n])?)?;
        let best = argmax_axis(&lf, -1, false)?
            .as_dtype(Dtype::Int32)?
            .eq(&targets)?;
        mlx_rs::transforms::eval([&picked, &best])?;
        let (picked, best) = (to_f32_vec(&picked)?, to_f32_vec(&best)?);
        Ok(pairs
            .iter()
            .enumerate()
            .map(|(r, (p, c))| {
                // Continuation token j sits at padded position pad + |p| + j and is predicted
                // from the position before it.
                let start = (pad(r) + p.len() as i32 - 1 - first) as usize;
                let at = r * n as usize + start;
                Scored {
                    logprobs: picked[at..at + c.len()].to_vec(),
                    greedy: best[at..at + c.len()].iter().map(|&x| x > 0.5).collect(),
                }
            })
            .collect())
    }
}

/// Generate from already tokenized prompts, `opts.batch_size` rows at a time. `decode` turns
/// generated ids into text; `eos` ids end a row; `pad_id` fills left padding.
pub fn generate(
    model: &mut Model,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    eos: &[u32],
    pad_id: u32,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    sink: &mut dyn Sink,
) -> Result<Vec<Generation>> {
    if let Some(p) = opts.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Invalid(format!("top_p must be in [0, 1], got {p}")));
        }
    }
    if opts.temperature < 0.0 {
        return Err(Error::Invalid("temperature must be >= 0".into()));
    }
    if opts.batch_size == 0 {
        return Err(Error::Invalid("batch_size must be at least 1".into()));
    }
    let seed = match opts.seed {
        Some(s) => s,
        None => model.agree_seed(rand::random())?,
    };
    if let Some(world) = model.data_parallel()? {
        if prompts.len() >= world.size() {
            return generate_shared(
                &world, model, prompts, seed, opts, eos, pad_id, decode, sink,
            );
        }
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (i, chunk) in prompts.chunks(opts.batch_size).enumerate() {
        let first = i * opts.batch_size;
        let mut sink = Offset { sink, first };
        out.extend(generate_batch(
            model, chunk, first, seed, opts, eos, pad_id, decode, &mut sink,
        )?);
    }
    Ok(out)
}

/// [`generate`] in a group of processes: each rank generates its share of the rows (row `i`
/// samples from the same random stream as alone; `seed` is the same on every rank), then
/// the ranks exchange their rows, so every rank returns every row in order.
#[allow(clippy::too_many_arguments)]
fn generate_shared(
    world: &crate::distributed::World,
    model: &mut Model,
    prompts: &[Vec<u32>],
    seed: u64,
    opts: &GenerateOptions,
    eos: &[u32],
    pad_id: u32,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    sink: &mut dyn Sink,
) -> Result<Vec<Generation>> {
    let range = world.share(prompts.len());
    let mut mine = Vec::with_capacity(range.len());
    for (i, chunk) in prompts[range.clone()].chunks(opts.batch_size).enumerate() {
        let first = range.start + i * opts.batch_size;
        let mut sink = Offset { sink, first };
        mine.extend(generate_batch(
            model, chunk, first, seed, opts, eos, pad_id, decode, &mut sink,
        )?);
    }
    let bytes = serde_json::to_vec(&mine).map_err(|e| Error::Invalid(format!("generate: {e}")))?;
    let mut out = Vec::with_capacity(prompts.len());
    for (rank, part) in world.all_gather_bytes(&bytes)?.iter().enumerate() {
        let rows: Vec<Generation> = serde_json::from_slice(part).map_err(|_| {
            Error::Invalid(format!("generate: rank {rank}'s rows did not arrive whole"))
        })?;
        out.extend(rows);
    }
    if out.len() != prompts.len() {
        return Err(Error::Invalid(format!(
            "generate: {} rows came back for {} prompts",
            out.len(),
            prompts.len()
        )));
    }
    Ok(out)
}

/// A sink that sees rows numbered from `first` (the rows of one batch among all prompts).
struct Offset<'a> {
    sink: &'a mut dyn Sink,
    first: usize,
}

impl Sink for Offset<'_> {
    fn text(&mut self, row: usize, piece: &str) -> Result<()> {
        self.sink.text(self.first + row, piece)
    }
    fn token(&mut self, step: usize) {
        self.sink.token(step)
    }
    fn step(&mut self, row: usize, token: &StepToken) -> Result<bool> {
        self.sink.step(self.first + row, token)
    }
}

/// One batch of [`generate`]: `prompts` are rows `first..` of all the prompts.
#[allow(clippy::too_many_arguments)]
fn generate_batch(
    model: &mut Model,
    prompts: &[Vec<u32>],
    first: usize,
    seed: u64,
    opts: &GenerateOptions,
    eos: &[u32],
    pad_id: u32,
    decode: &dyn Fn(&[u32]) -> Result<String>,
    sink: &mut dyn Sink,
) -> Result<Vec<Generation>> {
    let (ids, pads) = pad_left(prompts, pad_id)?;
    let mut rows: Vec<Row> = prompts
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream((first + r) as u64);
            Row {
                rng,
                prompt_tail: p[p.len().saturating_sub(REPETITION_CONTEXT)..].to_vec(),
                out: Generation::default(),
                emitted: 0,
                done: false,
            }
        })
        .collect();
    let mut cache = KvCache::new(model.n_layers());
    let batch = prompts.len() as i32;
    // Greedy decoding never needs the host between steps: each step's forward is queued before
    // the previous step's tokens are read (as mlx-lm does), so graph building overlaps compute.
    let pipelined = opts.temperature == 0.0 && opts.repetition_penalty.is_none();
    let logits = model.prefill(&ids, &pads, &mut cache)?;
    let mut pending = next_tokens(&logits, &mut rows, opts)?;
    for step_no in 0..opts.max_tokens {
        let more = step_no + 1 < opts.max_tokens;
        let queued = if pipelined && more {
            let logits = model.run(
                &pending.tokens.reshape(&[batch, 1])?,
                &pads,
                Some(&mut cache),
                true,
            )?;
            let n = next_tokens(&logits, &mut rows, opts)?;
            mlx_rs::transforms::async_eval(n.arrays())?;
            Some(n)
        } else {
            None
        };
        let next: Vec<u32> = pending
            .tokens
            .as_dtype(Dtype::Int32)?
            .as_slice::<i32>()
            .iter()
            .map(|&i| i as u32)
            .collect();
        let (logprobs, top) = pending.host()?;
        sink.token(step_no);
        for (r, row) in rows.iter_mut().enumerate() {
            if row.done {
                continue;
            }
            let tok = next[r];
            if eos.contains(&tok) {
                row.done = true;
                row.out.finish = "eos".into();
                continue;
            }
            row.out.ids.push(tok);
            if let Some(lp) = &logprobs {
                row.out.logprobs.push(lp[r]);
            }
            if let Some(top) = &top {
                row.out.top.push(top[r].clone());
            }
            let text = decode(&row.out.ids)?;
            // Hold back an incomplete UTF-8 sequence (decoded as U+FFFD) until it completes.
            let stable = text.trim_end_matches('\u{FFFD}');
            let mut end = stable.len();
            if let Some(pos) = opts
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| stable.find(s.as_str()))
                .min()
            {
                end = pos;
                row.done = true;
                row.out.finish = "stop".into();
            } else {
                // Do not emit a prefix of a stop string yet.
                let held = opts
                    .stop
                    .iter()
                    .filter_map(|s| partial_suffix(stable, s))
                    .max()
                    .unwrap_or(0);
                end -= held;
            }
            if end > row.emitted && stable.is_char_boundary(end) {
                sink.text(r, &stable[row.emitted..end])?;
                row.emitted = end;
            }
            row.out.text = stable[..end.max(row.emitted).min(stable.len())].to_string();
            if row.done {
                row.out.text = stable[..end].to_string();
            }
            let token = StepToken {
                step: step_no,
                id: tok,
                logprob: logprobs.as_ref().map(|lp| lp[r]),
            };
            if !sink.step(r, &token)? && !row.done {
                row.done = true;
                row.out.finish = "callback".into();
            }
        }
        if rows.iter().all(|r| r.done) || !more {
            break;
        }
        pending = match queued {
            Some(n) => n,
            None => {
                let step: Vec<i32> = next.iter().map(|&t| t as i32).collect();
                let input = Array::from_slice(&step, &[batch, 1]);
                let logits = model.run(&input, &pads, Some(&mut cache), true)?;
                next_tokens(&logits, &mut rows, opts)?
            }
        };
    }
    let mut out = Vec::with_capacity(rows.len());
    for (r, mut row) in rows.into_iter().enumerate() {
        if !row.done {
            row.out.finish = "length".into();
            let text = decode(&row.out.ids)?;
            if text.len() > row.emitted && text.is_char_boundary(row.emitted) {
                sink.text(r, &text[row.emitted..])?;
            }
            row.out.text = text;
        } else if row.out.finish == "callback" {
            // Stopped by the caller: its text is everything decoded so far.
            let text = decode(&row.out.ids)?;
            if text.len() > row.emitted && text.is_char_boundary(row.emitted) {
                sink.text(r, &text[row.emitted..])?;
            }
            row.out.text = text;
        }
        out.push(row.out);
    }
    Ok(out)
}

/// The log-sum-exp of every row of `x` (over its last axis), flat: `[rows]`, float32. The
/// exponentials are summed in blocks of 256, then the blocks: MLX's f32 sum over a whole
/// vocabulary row on the CPU accumulates in sequence and is off by about 1e-4 relative for
/// 50k entries (so is `logsumexp`), the blocks keep it near f32 precision.
fn logsumexp_rows(x: &Array) -> Result<Array> {
    const BLOCK: i32 = 256;
    let v = *x.shape().last().unwrap_or(&1);
    let x = x.as_dtype(Dtype::Float32)?.reshape(&[-1, v])?;
    let rows = x.shape()[0];
    let max = x.max_axis(-1, true)?;
    let e = x.subtract(&max)?.exp()?;
    let full = v / BLOCK * BLOCK;
    let mut total = Array::zeros::<f32>(&[rows])?;
    if full > 0 {
        let head = e
            .try_index((.., ..full))?
            .reshape(&[rows, full / BLOCK, BLOCK])?
            .sum_axis(-1, false)?
            .sum_axis(-1, false)?;
        total = total.add(&head)?;
    }
    if full < v {
        total = total.add(e.try_index((.., full..))?.sum_axis(-1, false)?)?;
    }
    Ok(total.log()?.add(max.reshape(&[rows])?)?)
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn partial_suffix(text: &str, stop: &str) -> Option<usize> {
    (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n))
        .find(|&n| text.ends_with(&stop[..n]))
}

/// One step's choice for every row: the tokens `[batch]` (int32) and, when the generation
/// records them, their log-probabilities `[batch]` and the top alternatives (ids and
/// log-probabilities, `[batch, k]`, unordered).
struct Next {
    tokens: Array,
    logprobs: Option<Array>,
    top: Option<(Array, Array)>,
}

impl Next {
    /// The arrays to evaluate.
    fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.tokens];
        v.extend(&self.logprobs);
        if let Some((i, l)) = &self.top {
            v.push(i);
            v.push(l);
        }
        v
    }

    /// The log-probabilities per row and the alternatives per row (most likely first), on the
    /// host.
    #[allow(clippy::type_complexity)]
    fn host(&self) -> Result<(Option<Vec<f32>>, Option<Vec<Vec<(u32, f32)>>>)> {
        let lps = match &self.logprobs {
            Some(a) => Some(to_f32_vec(a)?),
            None => None,
        };
        let top = match &self.top {
            Some((ids, lps)) => {
                let k = ids.shape()[1] as usize;
                // Ids are exact in f32 (vocabularies are far below 2^24).
                let (ids, lps) = (to_f32_vec(ids)?, to_f32_vec(lps)?);
                Some(
                    ids.chunks(k)
                        .zip(lps.chunks(k))
                        .map(|(i, l)| {
                            let mut row: Vec<(u32, f32)> =
                                i.iter().zip(l).map(|(&i, &l)| (i as u32, l)).collect();
                            row.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                            row
                        })
                        .collect(),
                )
            }
            None => None,
        };
        Ok((lps, top))
    }
}

/// Next token for every row from logits `[batch, 1, vocab]`: computed lazily on the device for
/// greedy decoding, sampled on the host otherwise; with `opts.logprobs`, its log-probability
/// (and the top alternatives) from the log-softmax of the logits, on the device.
fn next_tokens(logits: &Array, rows: &mut [Row], opts: &GenerateOptions) -> Result<Next> {
    let b = logits.shape()[0];
    let v = logits.shape()[2];
    let last = logits.try_index((.., -1, ..))?;
    let tokens = choose(&last, b, v, rows, opts)?;
    if !opts.logprobs {
        return Ok(Next {
            tokens,
            logprobs: None,
            top: None,
        });
    }
    let lf = last.as_dtype(Dtype::Float32)?;
    let logp = lf.subtract(logsumexp_rows(&lf)?.reshape(&[b, 1])?)?;
    let chosen = logp
        .take_along_axis(tokens.reshape(&[b, 1])?, -1)?
        .reshape(&[b])?;
    let top = if opts.alternatives > 0 {
        let k = (opts.alternatives as i32).min(v);
        let idx = mlx_rs::ops::argpartition_axis(logp.negative()?, k - 1, -1)?
            .try_index((.., ..k))?
            .as_dtype(Dtype::Int32)?;
        let vals = logp.take_along_axis(&idx, -1)?;
        Some((idx, vals))
    } else {
        None
    };
    Ok(Next {
        tokens,
        logprobs: Some(chosen),
        top,
    })
}

/// The tokens `[b]` (int32) chosen from the last position's logits `[b, v]`.
fn choose(last: &Array, b: i32, v: i32, rows: &mut [Row], opts: &GenerateOptions) -> Result<Array> {
    let greedy = opts.temperature == 0.0 && opts.repetition_penalty.is_none();
    if greedy {
        return Ok(argmax_axis(last, -1, false)?.as_dtype(Dtype::Int32)?);
    }
    let host = last.as_dtype(Dtype::Float32)?;
    let all = host.as_slice::<f32>();
    let mut out = Vec::with_capacity(b as usize);
    for r in 0..b as usize {
        let mut row: Vec<f32> = all[r * v as usize..(r + 1) * v as usize].to_vec();
        if let Some(penalty) = opts.repetition_penalty {
            let ctx: Vec<u32> = rows[r]
                .prompt_tail
                .iter()
                .chain(rows[r].out.ids.iter())
                .copied()
                .collect();
            for &t in &ctx[ctx.len().saturating_sub(REPETITION_CONTEXT)..] {
                if let Some(x) = row.get_mut(t as usize) {
                    *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
                }
            }
        }
        out.push(sample_row(&mut row, opts, &mut rows[r].rng) as i32);
    }
    Ok(Array::from_slice(&out, &[b]))
}

/// Sample one token from a row of logits.
fn sample_row(logits: &mut [f32], opts: &GenerateOptions, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = |xs: &[f32]| {
        xs.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if opts.temperature == 0.0 {
        return argmax(logits);
    }
    let inv_t = 1.0 / opts.temperature;
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((x - max) * inv_t).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f32 = probs.iter().map(|p| p.1).sum();
    for p in probs.iter_mut() {
        p.1 /= total;
    }
    let mut keep = probs.len();
    if let Some(k) = opts.top_k {
        keep = keep.min(k.max(1));
    }
    if let Some(min_p) = opts.min_p {
        let threshold = probs[0].1 * min_p;
        keep = keep.min(probs.iter().take_while(|p| p.1 >= threshold).count().max(1));
    }
    if let Some(top_p) = opts.top_p {
        let mut cum = 0.0;
        let mut n = 0;
        for p in &probs[..keep] {
            cum += p.1;
            n += 1;
            if cum >= top_p {
                break;
            }
        }
        keep = n.max(1);
    }
    let kept = &probs[..keep];
    let z: f32 = kept.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f32>() * z;
    for p in kept {
        if u < p.1 {
            return p.0 as u32;
        }
        u -= p.1;
    }
    kept[kept.len() - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_stop_strings_are_held_back() {
        assert_eq!(partial_suffix("hello wor", "world"), Some(3));
        assert_eq!(partial_suffix("hello", "world"), None);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let opts = GenerateOptions {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample_row(&mut [0.1, 3.0, 2.9, -1.0], &opts, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // logits ln(1), ln(3): probabilities 0.25 / 0.75.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let opts = GenerateOptions {
            temperature: 1.0,
            ..Default::default()
        };
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| sample_row(&mut [0.0, 3f32.ln()], &opts, &mut rng) == 1)
            .count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.015, "{frac}");
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // probabilities ~ 0.5, 0.3, 0.2 (after softmax of logs)
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let top_p = GenerateOptions {
            temperature: 1.0,
            top_p: Some(0.5),
            ..Default::default()
        };
        let min_p = GenerateOptions {
            temperature: 1.0,
            min_p: Some(0.5),
            ..Default::default()
        };
        for _ in 0..200 {
            assert_eq!(sample_row(&mut logits.clone(), &top_p, &mut rng), 0);
            assert!(sample_row(&mut logits.clone(), &min_p, &mut rng) < 2);
        }
    }
}
