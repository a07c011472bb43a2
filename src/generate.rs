//! Text generation with a KV cache: greedy decoding and sampling (temperature, top-k, top-p,
//! min-p, repetition penalty), stop strings and end-of-sequence tokens, batched over prompts.
//!
//! Greedy decoding takes the argmax on the device; sampling copies each step's logits to the
//! host and samples there with a seeded ChaCha generator, so a seed reproduces a run exactly.

use mlx_rs::{ops::indexing::TryIndexOp, Array, Dtype};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
}

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
        }
    }
}

/// Tokens considered by the repetition penalty (as mlx-lm's default context size).
const REPETITION_CONTEXT: usize = 20;

/// One generated row.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    /// Why it stopped: "eos", "stop", or "length".
    pub finish: String,
}

/// What the caller learns after every step, to stream text or stop early.
pub trait Sink {
    /// New text for `row`. Returning an error (e.g. `Error::Interrupted`) stops generation.
    fn text(&mut self, row: usize, piece: &str) -> Result<()>;
    /// Called once per step, right after the step's tokens are known (`step` counts from 0).
    fn token(&mut self, _step: usize) {}
}

impl<F: FnMut(usize, &str) -> Result<()>> Sink for F {
    fn text(&mut self, row: usize, piece: &str) -> Result<()> {
        self(row, piece)
    }
}

struct Row {
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

/// Generate from already tokenized prompts. `decode` turns generated ids into text; `eos` ids
/// end a row; `pad_id` fills left padding.
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
    let (ids, pads) = pad_left(prompts, pad_id)?;
    let mut rows: Vec<Row> = prompts
        .iter()
        .map(|p| Row {
            prompt_tail: p[p.len().saturating_sub(REPETITION_CONTEXT)..].to_vec(),
            out: Generation::default(),
            emitted: 0,
            done: false,
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.unwrap_or_else(rand::random));
    let mut cache = KvCache::new(model.n_layers());
    let batch = prompts.len() as i32;
    // Greedy decoding never needs the host between steps: each step's forward is queued before
    // the previous step's tokens are read (as mlx-lm does), so graph building overlaps compute.
    let pipelined = opts.temperature == 0.0 && opts.repetition_penalty.is_none();
    let logits = model.run(&ids, &pads, Some(&mut cache), true)?;
    let mut pending = next_tokens(&logits, &rows, opts, &mut rng)?;
    for step_no in 0..opts.max_tokens {
        let more = step_no + 1 < opts.max_tokens;
        let queued = if pipelined && more {
            let logits = model.run(
                &pending.reshape(&[batch, 1])?,
                &pads,
                Some(&mut cache),
                true,
            )?;
            let n = next_tokens(&logits, &rows, opts, &mut rng)?;
            mlx_rs::transforms::async_eval([&n])?;
            Some(n)
        } else {
            None
        };
        let next: Vec<u32> = pending
            .as_dtype(Dtype::Int32)?
            .as_slice::<i32>()
            .iter()
            .map(|&i| i as u32)
            .collect();
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
                next_tokens(&logits, &rows, opts, &mut rng)?
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
        }
        out.push(row.out);
    }
    Ok(out)
}

/// Length of the longest proper prefix of `stop` that `text` ends with.
fn partial_suffix(text: &str, stop: &str) -> Option<usize> {
    (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n))
        .find(|&n| text.ends_with(&stop[..n]))
}

/// Next token for every row from logits `[batch, 1, vocab]`, as an int32 array `[batch]`:
/// computed lazily on the device for greedy decoding, sampled on the host otherwise.
fn next_tokens(
    logits: &Array,
    rows: &[Row],
    opts: &GenerateOptions,
    rng: &mut ChaCha8Rng,
) -> Result<Array> {
    let b = logits.shape()[0];
    let v = logits.shape()[2];
    let last = logits.try_index((.., -1, ..))?;
    let greedy = opts.temperature == 0.0 && opts.repetition_penalty.is_none();
    if greedy {
        return Ok(mlx_rs::ops::indexing::argmax_axis(&last, -1, false)?.as_dtype(Dtype::Int32)?);
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
        out.push(sample_row(&mut row, opts, rng) as i32);
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
