//! `mlxi bench`: load time, prefill and decode speed and peak memory of the engine, measured the
//! same way as the mlx-lm side (`tests/reference/mlxlm_bench.py`), so `bench/run.sh` can print
//! both in one table.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::generate::{generate, GenerateOptions, Sink};
use crate::model::{LoadOptions, Model};

/// The benchmark prompt, shared with `tests/reference/mlxlm_bench.py` (same text, same rule:
/// encoded without special tokens, repeated cyclically, truncated to N tokens).
pub const PROMPT_TEXT: &str =
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg \
combined movable metal type, oil-based ink, and a wooden screw press adapted from wine making. \
Within a few decades, printing shops had spread across Europe, books became cheaper, and ideas \
travelled faster than ever before. Scholars could compare identical copies of a text, errors \
could be corrected in later editions, and vernacular languages gained a standard written form. ";

/// One benchmark run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub tool: String,
    pub model: String,
    pub quantization: String,
    pub dtype: String,
    /// "cpu" or "gpu".
    pub device: String,
    /// The CPU BLAS of this build (see [`crate::BLAS`]).
    pub blas: String,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub trials: usize,
    pub load_s: f64,
    pub prefill_s: f64,
    pub prefill_tps: f64,
    pub decode_s: f64,
    pub decode_tps: f64,
    pub peak_memory_bytes: usize,
    pub max_rss_bytes: u64,
    pub generated_ids: Vec<u32>,
    /// The batched forward, when asked for (`--batch B --batch-len T`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchFigures>,
    /// Batched generation, one entry per batch size asked for (`--gen-batches 1,8,32`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gen_batches: Vec<GenBatch>,
}

/// What to measure: one generation after a prompt (the main figures), optionally a batched
/// forward and batched generation.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub trials: usize,
    /// `(rows, tokens per row)` of a batched forward.
    pub batch: Option<(usize, usize)>,
    /// Batch sizes of batched generation (each row `gen_batch_len` prompt tokens, then
    /// `gen_tokens` greedy tokens).
    pub gen_batches: Vec<usize>,
    pub gen_batch_len: usize,
}

/// Greedy generation of `gen_tokens` tokens for `batch` rows of `len` prompt tokens (rows as
/// [`batch_rows`] builds them), end-of-sequence ignored: the median wall time of the trials
/// (prefill included) and the total new tokens per second.
#[derive(Debug, Clone, Serialize)]
pub struct GenBatch {
    pub batch: usize,
    pub len: usize,
    pub gen_tokens: usize,
    pub seconds: f64,
    /// batch * gen_tokens / seconds.
    pub new_tps: f64,
    /// The ids of row 0 (the same at every batch size when batching changes nothing).
    pub row0_ids: Vec<u32>,
}

/// A `[batch, len]` forward pass (logits evaluated), and the same inputs through `capture` of
/// every `blocks.N.hook_resid_post` at every position: medians of the trials, after a warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct BatchFigures {
    pub batch: usize,
    pub len: usize,
    pub forward_s: f64,
    pub capture_s: f64,
    /// capture_s / forward_s.
    pub capture_ratio: f64,
}

/// Median, by the same rule as Python's statistics.median.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Rows `i` of the batch start `i` tokens into the benchmark prompt (so rows differ), each
/// `len` tokens long, as `tests/reference/mlxlm_bench.py --forward-batch` builds them.
pub fn batch_rows(base: &[u32], batch: usize, len: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|r| (0..len).map(|i| base[(r + i) % base.len()]).collect())
        .collect()
}

fn batch_figures(
    model: &mut Model,
    base: &[u32],
    (batch, len): (usize, usize),
    trials: usize,
) -> Result<BatchFigures> {
    use crate::capture::{capture, expand_points, Positions};
    let rows = batch_rows(base, batch, len);
    let points = expand_points(&["blocks.*.hook_resid_post".to_string()], model.n_layers())?;
    let forward = |model: &mut Model| -> Result<f64> {
        let t = Instant::now();
        let logits = model.forward_ids(&rows)?;
        logits.eval()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let captured = |model: &mut Model| -> Result<f64> {
        let t = Instant::now();
        let cache = capture(model, &rows, &points, Positions::All, batch, false)?;
        drop(cache);
        Ok(t.elapsed().as_secs_f64())
    };
    forward(model)?;
    captured(model)?;
    let mut f = Vec::new();
    let mut c = Vec::new();
    for _ in 0..trials.max(1) {
        f.push(forward(model)?);
        c.push(captured(model)?);
    }
    let (forward_s, capture_s) = (median(f), median(c));
    Ok(BatchFigures {
        batch,
        len,
        forward_s,
        capture_s,
        capture_ratio: capture_s / forward_s,
    })
}

/// This process's peak resident set size in bytes (0 when the system does not say).
pub fn max_rss_bytes() -> u64 {
    // getrusage: kilobytes on Linux, bytes on macOS.
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage struct into the pointer we pass.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } == 0;
    if !ok {
        return 0;
    }
    // SAFETY: initialised by the successful call above.
    let kb = unsafe { usage.assume_init() }.ru_maxrss as u64;
    if cfg!(target_os = "macos") {
        kb
    } else {
        kb * 1024
    }
}

/// Load `source` and time a greedy generation of `gen_tokens` after a `prompt_tokens` prompt,
/// after one short warm-up run (as the mlx-lm side does); times are the medians of `trials`
/// runs.
pub fn run(source: &str, opts: &LoadOptions, spec: &BenchSpec) -> Result<BenchResult> {
    let BenchSpec {
        prompt_tokens,
        gen_tokens,
        trials,
        batch,
        ..
    } = *spec;
    let t0 = Instant::now();
    let mut model = if source == "default" {
        Model::load_default(opts)?
    } else {
        Model::load(source, opts)?
    };
    let load_s = t0.elapsed().as_secs_f64();
    let base = model.tokenizer.encode(PROMPT_TEXT, false)?;
    let prompt: Vec<u32> = (0..prompt_tokens).map(|i| base[i % base.len()]).collect();

    timed_one(&mut model, &prompt[..prompt.len().min(16)], 2)?;
    let mut runs = Vec::new();
    for _ in 0..trials.max(1) {
        runs.push(timed_one(&mut model, &prompt, gen_tokens)?);
    }
    let prefill_s = median(runs.iter().map(|r| r.0).collect());
    let decode_s = median(runs.iter().map(|r| r.1).collect());
    let ids = runs[0].2.clone();
    let batch = batch
        .map(|b| batch_figures(&mut model, &base, b, trials))
        .transpose()?;
    let gen_batches = spec
        .gen_batches
        .iter()
        .map(|&b| gen_batch(&mut model, &base, b, spec.gen_batch_len, gen_tokens, trials))
        .collect::<Result<Vec<_>>>()?;
    Ok(BenchResult {
        tool: "mlxi".into(),
        model: model.info.path.clone(),
        quantization: model.info.quantization.clone(),
        dtype: model.info.dtype.clone(),
        device: model.info.device.clone(),
        blas: crate::BLAS.into(),
        prompt_tokens,
        gen_tokens,
        trials: runs.len(),
        load_s,
        prefill_s,
        prefill_tps: prompt_tokens as f64 / prefill_s,
        decode_s,
        decode_tps: (gen_tokens.saturating_sub(1)) as f64 / decode_s,
        peak_memory_bytes: mlx_rs::memory::peak_memory()?,
        max_rss_bytes: max_rss_bytes(),
        generated_ids: ids,
        batch,
        gen_batches,
    })
}

fn gen_batch(
    model: &mut Model,
    base: &[u32],
    batch: usize,
    len: usize,
    gen_tokens: usize,
    trials: usize,
) -> Result<GenBatch> {
    let rows = batch_rows(base, batch, len);
    let opts = GenerateOptions {
        max_tokens: gen_tokens,
        batch_size: batch.max(1),
        ..Default::default()
    };
    timed(model, &rows, &opts)?;
    let mut times = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..trials.max(1) {
        let (prefill, decode, i) = timed(model, &rows, &opts)?;
        times.push(prefill + decode);
        ids = i;
    }
    let seconds = median(times);
    Ok(GenBatch {
        batch,
        len,
        gen_tokens,
        seconds,
        new_tps: (batch * gen_tokens) as f64 / seconds,
        row0_ids: ids,
    })
}

/// Records when the first token is known.
struct Clock {
    first: Option<Instant>,
}

impl Sink for Clock {
    fn text(&mut self, _row: usize, _piece: &str) -> Result<()> {
        Ok(())
    }
    fn token(&mut self, _step: usize) {
        self.first.get_or_insert_with(Instant::now);
    }
}

/// Greedy generation of `n` tokens from `prompt`: `(prefill seconds, decode seconds, ids)`.
fn timed_one(model: &mut Model, prompt: &[u32], n: usize) -> Result<(f64, f64, Vec<u32>)> {
    let opts = GenerateOptions {
        max_tokens: n,
        ..Default::default()
    };
    timed(model, &[prompt.to_vec()], &opts)
}

/// Generation of `rows` with `opts`: `(prefill seconds, decode seconds, the first row's ids)`,
/// where prefill runs until the first token is known and decode from then until the last.
fn timed(
    model: &mut Model,
    rows: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<(f64, f64, Vec<u32>)> {
    let mut clock = Clock { first: None };
    let start = Instant::now();
    let out = generate(
        model,
        rows,
        opts,
        &[],
        0,
        &|_| Ok(String::new()),
        &mut clock,
    )?;
    let end = Instant::now();
    let first = clock.first.unwrap_or(end);
    Ok((
        (first - start).as_secs_f64(),
        (end - first).as_secs_f64(),
        out.into_iter().next().map(|g| g.ids).unwrap_or_default(),
    ))
}
