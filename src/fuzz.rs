//! A seeded mutation fuzzer for the loaders, on stable Rust: it mutates real files (bit flips,
//! bytes set to 0 or 0xff, huge numbers in JSON fields and in the safetensors header length,
//! truncation, chunk deletion and duplication) and feeds them, in-process, to the same code
//! that loading a model runs:
//!
//! - [`Target::Config`]: config.json, parsed and validated as `load` does ([`ArchConfig`]);
//! - [`Target::Safetensors`]: the start of a safetensors file (length and JSON header) with
//!   the file's size ([`check_safetensors_start`]);
//! - [`Target::Tokenizer`]: tokenizer.json and tokenizer_config.json, loaded with
//!   [`Tokenizer::from_dir`], then a chat rendered through the template and a text encoded.
//!
//! A panic is a crash and an execution slower than the hang threshold a hang; both are
//! counted and their inputs saved. Nothing here touches MLX, so it runs on any thread.
//! `tests/fuzz.rs` runs a short campaign, `examples/fuzz_load.rs` a long one.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::source::check_safetensors_start;
use crate::model::ArchConfig;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// Which loader a campaign drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Config,
    Safetensors,
    Tokenizer,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Config, Target::Safetensors, Target::Tokenizer];

    pub fn name(self) -> &'static str {
        match self {
            Target::Config => "config",
            Target::Safetensors => "safetensors",
            Target::Tokenizer => "tokenizer",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown fuzz target {s:?} (valid: config, safetensors, tokenizer)"
                ))
            })
    }
}

/// One starting input: the files of one fixture that the target reads.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The fixture it came from, for reports.
    pub name: String,
    /// Config: config.json. Safetensors: the file's first 8 + header bytes. Tokenizer:
    /// tokenizer.json.
    pub main: Vec<u8>,
    /// Safetensors: nothing (the size is `file_size`). Tokenizer: tokenizer_config.json.
    pub extra: Vec<u8>,
    /// Safetensors: the whole file's size.
    pub file_size: u64,
}

/// The seeds for `target` from every fixture checkpoint under `models` (each a folder with
/// config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
pub fn seeds(target: Target, models: &Path) -> Result<Vec<Seed>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(models)
        .map_err(|e| Error::io(models, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| Error::io(p, e));
    let mut out = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seed = match target {
            Target::Config => Seed {
                name,
                main: read(dir.join("config.json"))?,
                extra: Vec::new(),
                file_size: 0,
            },
            Target::Safetensors => {
                let path = dir.join("model.safetensors");
                if !path.is_file() {
                    continue;
                }
                let bytes = read(path)?;
                let n = bytes
                    .get(..8)
                    .map(|b| b.iter().rev().fold(0u64, |acc, &x| acc << 8 | x as u64))
                    .unwrap_or(0) as usize;
                Seed {
                    name,
                    main: bytes[..(8 + n).min(bytes.len())].to_vec(),
                    extra: Vec::new(),
                    file_size: bytes.len() as u64,
                }
            }
            Target::Tokenizer => Seed {
                name,
                main: read(dir.join("tokenizer.json"))?,
                extra: read(dir.join("tokenizer_config.json"))?,
                file_size: 0,
            },
        };
        out.push(seed);
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "no fuzz seeds for {} under {}",
            target.name(),
            models.display()
        )));
    }
    Ok(out)
}

/// Numbers that break naive code: zero, negatives, powers of two around integer widths,
/// floats at the edge of their range.
const HUGE: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "1e-320",
    "2147483647",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "1000000000000",
    "99999999999999999999999999",
    "NaN",
    "null",
    "\"x\"",
    "[]",
    "{}",
];

/// Mutates `input` in place with one to four random mutations.
pub fn mutate(input: &mut Vec<u8>, rng: &mut ChaCha8Rng, is_safetensors: bool) {
    for _ in 0..rng.random_range(1..=4) {
        if input.is_empty() {
            input.push(rng.random());
            continue;
        }
        let len = input.len();
        match rng.random_range(0..9) {
            0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..len);
                input[i] = 0;
            }
            2 => {
                let i = rng.random_range(0..len);
                input[i] = 0xff;
            }
            3 | 4 => replace_number(input, rng),
            5 => input.truncate(rng.random_range(0..len)),
            6 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                input.drain(a..b);
            }
            7 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, chunk);
            }
            _ if is_safetensors && len >= 8 => {
                // A huge or random header length.
                let n: u64 = match rng.random_range(0..4) {
                    0 => u64::MAX,
                    1 => 1 << rng.random_range(0..64),
                    2 => (len as u64).saturating_sub(8) + rng.random_range(0..16),
                    _ => rng.random(),
                };
                input[..8].copy_from_slice(&n.to_le_bytes());
            }
            _ => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
        }
    }
}

/// Replaces a run of digits (a JSON number) with one of [`HUGE`].
fn replace_number(input: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    let start = rng.random_range(0..input.len());
    let Some(off) = input[start..].iter().position(u8::is_ascii_digit) else {
        return;
    };
    let a = start + off;
    let b = a + input[a..]
        .iter()
        .position(|c| !(c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+')))
        .unwrap_or(input.len() - a);
    let with = HUGE[rng.random_range(0..HUGE.len())].as_bytes();
    input.splice(a..b, with.iter().copied());
}

/// What one campaign saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub executions: u64,
    /// Inputs the loader accepted (the rest were refused with an error, as they should be).
    pub accepted: u64,
    pub crashes: u64,
    pub hangs: u64,
    pub slowest: Duration,
    /// Where the crashing and hanging inputs were saved.
    pub saved: Vec<PathBuf>,
    /// The distinct panic messages (with their source locations), at most 20.
    pub panics: Vec<String>,
}

thread_local! {
    /// The message of the last panic on this thread, set by the campaign's panic hook.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A campaign's settings.
pub struct Campaign<'a> {
    pub target: Target,
    pub seeds: &'a [Seed],
    /// Stop after this many executions...
    pub executions: u64,
    /// ...or after this long, whichever comes first.
    pub time_limit: Option<Duration>,
    pub seed: u64,
    /// An execution slower than this counts as a hang.
    pub hang_after: Duration,
    /// A scratch folder (tokenizer files are written there) where crashing inputs are saved.
    pub work_dir: &'a Path,
}

/// Runs one input through the target's loader; `Ok(true)` when it was accepted.
pub fn execute(
    target: Target,
    main: &[u8],
    extra: &[u8],
    file_size: u64,
    dir: &Path,
) -> Result<bool> {
    match target {
        Target::Config => {
            let v: serde_json::Value = serde_json::from_slice(main).map_err(|e| Error::Json {
                path: "config.json".into(),
                source: e,
            })?;
            ArchConfig::from_json(&v, Path::new("config.json"))?;
            Ok(true)
        }
        Target::Safetensors => check_safetensors_start(main, file_size)
            .map(|_| true)
            .map_err(Error::Model),
        Target::Tokenizer => {
            let write = |name: &str, bytes: &[u8]| {
                let p = dir.join(name);
                std::fs::write(&p, bytes).map_err(|e| Error::io(p, e))
            };
            write("tokenizer.json", main)?;
            write("tokenizer_config.json", extra)?;
            let tok = Tokenizer::from_dir(dir)?;
            if tok.has_chat_template() {
                let msgs = [
                    ChatMessage::system("Be brief."),
                    ChatMessage::user("Hello, world"),
                ];
                let _ = tok.apply_chat_template(&msgs, true)?;
            }
            let _ = tok.encode("Hello, world! 12345 ünïcödé", true)?;
            Ok(true)
        }
    }
}

/// Runs a campaign: mutated seeds through [`execute`], panics caught and counted.
pub fn run(c: &Campaign) -> Result<Report> {
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let tok_dir = c.work_dir.join(format!("{}-input", c.target.name()));
    std::fs::create_dir_all(&tok_dir).map_err(|e| Error::io(&tok_dir, e))?;
    let started = Instant::now();
    let mut report = Report::default();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
    while report.executions < c.executions
        && c.time_limit.is_none_or(|limit| started.elapsed() < limit)
    {
        let seed = &c.seeds[rng.random_range(0..c.seeds.len())];
        let (mut main, mut extra) = (seed.main.clone(), seed.extra.clone());
        let mut file_size = seed.file_size;
        match c.target {
            Target::Tokenizer if rng.random_bool(0.5) => mutate(&mut extra, &mut rng, false),
            Target::Safetensors => {
                mutate(&mut main, &mut rng, true);
                if rng.random_bool(0.2) {
                    file_size = rng.random_range(0..=file_size);
                }
            }
            _ => mutate(&mut main, &mut rng, false),
        }
        let t0 = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            execute(c.target, &main, &extra, file_size, &tok_dir)
        }));
        let took = t0.elapsed();
        report.executions += 1;
        report.slowest = report.slowest.max(took);
        let kind = match outcome {
            Err(_) => {
                report.crashes += 1;
                let msg = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "a panic".into());
                if report.panics.len() < 20 && !report.panics.contains(&msg) {
                    report.panics.push(msg);
                }
                Some("crash")
            }
            Ok(_) if took > c.hang_after => {
                report.hangs += 1;
                Some("hang")
            }
            Ok(Ok(true)) => {
                report.accepted += 1;
                None
            }
            Ok(_) => None,
        };
        if let Some(kind) = kind {
            let p = c.work_dir.join(format!(
                "{kind}-{}-{}-{}",
                c.target.name(),
                seed.name,
                report.executions
            ));
            let mut bytes = main.clone();
            if !extra.is_empty() {
                bytes.extend_from_slice(b"\n--- tokenizer_config.json ---\n");
                bytes.extend_from_slice(&extra);
            }
            if std::fs::write(&p, bytes).is_ok() {
                report.saved.push(p);
            }
        }
    }
    std::panic::set_hook(quiet);
    Ok(report)
}
