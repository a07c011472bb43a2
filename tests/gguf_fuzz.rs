//! The GGUF reader under a seeded mutation fuzzer ([`mlxi::gguf::fuzz`]): real GGUF files
//! (the fixtures and the default model's first 2 MB) mutated and fed to the same parsing,
//! validation and dequantization code a model load uses; a panic or an execution over the hang
//! limit fails. The short campaign runs with the tests; the long one is
//!
//! ```sh
//! GGUF_FUZZ_EXECS=1000000 nice cargo test --release --test gguf_fuzz -- --ignored --nocapture
//! ```
//!
//! (`GGUF_FUZZ_SEED` picks the random seed, default 1.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use mlxi::gguf::fuzz::{run, Report, Seed};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf");

fn default_model() -> PathBuf {
    std::env::var_os("MLXI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".cache/mlxi"))
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The seeds and their shares of the executions: the two fixtures (whole files, every tensor
/// small enough is dequantized) and the default model's header (its first 2 MB; parsing its
/// 49,152 tokens and 48,900 merges makes each execution slower, so it gets a smaller share).
fn seeds() -> (Vec<Seed>, Vec<f64>) {
    let mut seeds = Vec::new();
    let mut weights = Vec::new();
    for name in ["quants.gguf", "tiny_llama_kquant.gguf"] {
        let bytes = std::fs::read(Path::new(FIXTURES).join(name)).unwrap();
        assert!(mlxi::gguf::fuzz::check(&bytes), "{name} is valid");
        seeds.push(Seed::new(bytes));
        weights.push(1.0);
    }
    let path = default_model();
    assert!(path.is_file(), "the default model is missing: run ./setup");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(2 << 20);
    seeds.push(Seed::new(bytes));
    weights.push(0.1);
    (seeds, weights)
}

fn campaign(default_execs: u64) -> Report {
    let execs = std::env::var("GGUF_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_execs);
    let seed = std::env::var("GGUF_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (seeds, weights) = seeds();
    let report = run(&seeds, &weights, execs, seed, Duration::from_secs(2), |r| {
        if r.executions % 100_000 == 0 {
            eprintln!(
                "{} executions, {} accepted, {} crashes, {} hangs, {:.0} s",
                r.executions,
                r.accepted,
                r.crashes.len(),
                r.hangs,
                r.elapsed.as_secs_f64()
            );
        }
    });
    println!(
        "GGUF fuzz: seed {seed}, {} executions, {} accepted, {} crashes, {} hangs, slowest {:.1} ms, {:.1} s",
        report.executions,
        report.accepted,
        report.crashes.len(),
        report.hangs,
        report.slowest.as_secs_f64() * 1e3,
        report.elapsed.as_secs_f64()
    );
    assert!(
        report.crashes.is_empty(),
        "{} panics, first: {:?}",
        report.crashes.len(),
        report.crashes.first()
    );
    assert_eq!(report.hangs, 0, "executions over 2 s");
    // The mutations must leave some inputs valid and reject others, or the campaign is not
    // exploring anything.
    assert!(report.accepted > 0 && report.accepted < report.executions);
    report
}

#[test]
fn gguf_fuzz_short() {
    let r = campaign(3_000);
    assert!(r.elapsed < Duration::from_secs(300), "took {:?}", r.elapsed);
}

#[test]
#[ignore = "long: run with --ignored (GGUF_FUZZ_EXECS, default 1,000,000)"]
fn gguf_fuzz_long() {
    campaign(1_000_000);
}
