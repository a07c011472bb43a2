//! A seeded mutation fuzzer for the GGUF reader that runs on stable Rust, in-process: it mutates
//! real GGUF files (bit flips, bytes set to 0/0xff, huge counts and lengths written over header
//! fields, truncation, splices, insertions and deletions) and drives [`check`], the same parsing,
//! validation and dequantization that loading a model uses. A panic is a crash; an execution
//! slower than the hang limit is a hang. `tests/gguf_fuzz.rs` runs a short campaign and, with
//! `--ignored`, a long one.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::GgufFile;

/// Tensors larger than this are not dequantized by [`check`] (the time goes to parsing and small tensors).
const MAX_DEQUANT: u64 = 1 << 14;

/// Parse and validate `bytes`, read the metadata a model load reads, and dequantize every
/// supported tensor of at most 16,384 elements. Returns whether the file was accepted.
pub fn check(bytes: &[u8]) -> bool {
    let Ok(g) = GgufFile::from_bytes("fuzz.gguf", bytes.to_vec()) else {
        return false;
    };
    let _ = g.string("general.architecture");
    let _ = g.strings("tokenizer.ggml.tokens");
    let _ = g.ints("tokenizer.ggml.token_type");
    let _ = g.numbers("tokenizer.ggml.scores");
    for (k, _) in g.metadata() {
        let _ = g.number(k);
    }
    for t in g.tensors() {
        let _ = t.shape();
        if t.n_elements <= MAX_DEQUANT {
            if let Ok(v) = g.dequantize(t) {
                assert_eq!(v.len() as u64, t.n_elements, "dequantized length");
            }
        }
    }
    true
}

/// A seed file and the byte ranges worth mutating more often (the fixed header and the
/// tensor table).
pub struct Seed {
    pub bytes: Vec<u8>,
    pub hot: Vec<Range<usize>>,
}

impl Seed {
    /// A seed from a GGUF file's bytes (which may be cut short: only the header is needed).
    pub fn new(bytes: Vec<u8>) -> Seed {
        let len = bytes.len();
        let mut hot = Vec::with_capacity(2);
        hot.push(0..len.min(512));
        // The tensor table ends at the data section; entries are about 40 to 80 bytes.
        if let Some(data) = header_end(&bytes) {
            let data = data.min(len);
            hot.push(data.saturating_sub(80 * 300)..data);
        }
        Seed { bytes, hot }
    }
}

/// Where the data section starts, if the header parses when the file's length is ignored.
fn header_end(bytes: &[u8]) -> Option<usize> {
    // Parse against a pretend length so that a header cut from a larger file still parses.
    let h = super::parse_header(bytes, u64::MAX / 2).ok()?;
    usize::try_from(h.data_offset).ok()
}

/// What a campaign found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub executions: u64,
    /// Inputs that parsed and validated.
    pub accepted: u64,
    /// Panics, with the execution index and the message.
    pub crashes: Vec<(u64, String)>,
    /// Executions slower than the hang limit.
    pub hangs: u64,
    pub slowest: Duration,
    pub elapsed: Duration,
}

const U64S: [u64; 12] = [
    0,
    1,
    2,
    1 << 31,
    1 << 32,
    (1 << 32) - 1,
    1 << 62,
    1 << 63,
    u64::MAX,
    u64::MAX - 7,
    i32::MAX as u64 + 1,
    0x7fff_ffff_ffff_ffff,
];
const U32S: [u32; 14] = [
    0,
    1,
    2,
    3,
    4,
    5,
    8,
    9,
    12,
    13,
    16,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
];

fn pick_pos(rng: &mut ChaCha8Rng, seed: &Seed, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    if rng.random_bool(0.5) {
        let r = &seed.hot[rng.random_range(0..seed.hot.len())];
        if r.start < r.end.min(len) {
            return rng.random_range(r.start..r.end.min(len));
        }
    }
    rng.random_range(0..len)
}

/// One mutated copy of a seed (1 to 4 stacked mutations).
pub fn mutate(rng: &mut ChaCha8Rng, seeds: &[Seed], which: usize) -> Vec<u8> {
    let seed = &seeds[which];
    let mut b = seed.bytes.clone();
    for _ in 0..rng.random_range(1..=4) {
        let pos = pick_pos(rng, seed, b.len());
        match rng.random_range(0..9) {
            0 if !b.is_empty() => b[pos] ^= 1 << rng.random_range(0..8),
            1 if !b.is_empty() => b[pos] = 0,
            2 if !b.is_empty() => b[pos] = 0xff,
            3 if !b.is_empty() => b[pos] = rng.random(),
            4 if pos + 8 <= b.len() => {
                let v = U64S[rng.random_range(0..U64S.len())];
                b[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
            }
            5 if pos + 4 <= b.len() => {
                let v = U32S[rng.random_range(0..U32S.len())];
                b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
            }
            6 => b.truncate(pos),
            7 => {
                // Splice: a chunk of any seed written over this position.
                let other = &seeds[rng.random_range(0..seeds.len())].bytes;
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let n = rng.random_range(1..=64).min(other.len() - from);
                    let end = (pos + n).min(b.len());
                    b.splice(pos..end, other[from..from + n].iter().copied());
                }
            }
            _ => {
                // Insert or delete a few bytes, shifting everything after.
                let n = rng.random_range(1..=16);
                if rng.random_bool(0.5) {
                    let fill: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    b.splice(pos..pos, fill);
                } else {
                    let end = (pos + n).min(b.len());
                    b.drain(pos..end);
                }
            }
        }
    }
    b
}

/// Run `executions` mutated inputs from `seeds` (with the unmutated seeds first), seeded by
/// `rng_seed`. `weights` gives each seed's share of the executions. Panics are caught and
/// recorded; the panic message hook is silenced while the campaign runs.
pub fn run(
    seeds: &[Seed],
    weights: &[f64],
    executions: u64,
    rng_seed: u64,
    hang: Duration,
    mut progress: impl FnMut(&Report),
) -> Report {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let total: f64 = weights.iter().sum();
    let mut report = Report::default();
    let start = Instant::now();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..executions {
        let input = if (i as usize) < seeds.len() {
            seeds[i as usize].bytes.clone()
        } else {
            let mut x = rng.random_range(0.0..total);
            let mut which = 0;
            while which + 1 < weights.len() && x >= weights[which] {
                x -= weights[which];
                which += 1;
            }
            mutate(&mut rng, seeds, which)
        };
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(true) => report.accepted += 1,
            Ok(false) => {}
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.crashes.push((i, msg));
            }
        }
        let dt = t.elapsed();
        report.slowest = report.slowest.max(dt);
        if dt > hang {
            report.hangs += 1;
        }
        report.executions += 1;
        if report.executions % 10_000 == 0 {
            report.elapsed = start.elapsed();
            progress(&report);
        }
    }
    std::panic::set_hook(hook);
    report.elapsed = start.elapsed();
    report
}
