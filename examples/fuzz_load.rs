//! A long fuzzing campaign over mlxi's loaders (see `mlxi::fuzz`): config.json parsing and
//! validation, safetensors header validation, tokenizer and chat template loading, seeded from
//! the fixture checkpoints in `tests/fixtures/models`.
//!
//! ```sh
//! nice cargo run --release --example fuzz_load -- --executions 1000000
//! nice cargo run --release --example fuzz_load -- --target config --executions 100000 --seed 7
//! ```
//!
//! Prints one line per target: executions, accepted inputs, crashes, hangs, the slowest
//! execution and the time taken. Crashing and hanging inputs are saved under `--out`. Exits
//! with status 1 if any crash or hang was found.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use mlxi::fuzz::{self, Campaign, Target};

#[derive(Parser)]
struct Args {
    /// Executions per target
    #[arg(long, default_value_t = 100_000)]
    executions: u64,
    /// Only this target: config, safetensors or tokenizer (default: all three)
    #[arg(long)]
    target: Option<String>,
    /// The random seed (the same seed replays the same campaign)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An execution slower than this many milliseconds counts as a hang
    #[arg(long, default_value_t = 2000)]
    hang_ms: u64,
    /// Where crashing and hanging inputs are saved (default: a temporary folder, kept only
    /// when something was found)
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let targets: Vec<Target> = match &args.target {
        Some(t) => vec![t.parse()?],
        None => Target::ALL.to_vec(),
    };
    let tmp = tempfile::tempdir()?;
    let out = args.out.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out)?;
    let mut found = 0;
    for target in targets {
        let seeds = fuzz::seeds(target, &models)?;
        let started = Instant::now();
        let report = fuzz::run(&Campaign {
            target,
            seeds: &seeds,
            executions: args.executions,
            time_limit: None,
            seed: args.seed,
            hang_after: Duration::from_millis(args.hang_ms),
            work_dir: &out,
        })?;
        println!(
            "{:<12} executions {:>9}  accepted {:>8}  crashes {}  hangs {}  slowest {:.1} ms  \
             took {:.0} s  ({} seeds, seed {})",
            target.name(),
            report.executions,
            report.accepted,
            report.crashes,
            report.hangs,
            report.slowest.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64(),
            seeds.len(),
            args.seed
        );
        for p in &report.saved {
            println!("  saved {}", p.display());
        }
        for m in &report.panics {
            println!("  panic: {m}");
        }
        found += report.crashes + report.hangs;
    }
    if found > 0 {
        if args.out.is_none() {
            // Keep the inputs for inspection.
            let kept = tmp.keep();
            println!("inputs kept in {}", kept.display());
        }
        std::process::exit(1);
    }
    Ok(())
}
