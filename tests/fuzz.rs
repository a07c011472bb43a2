//! A short fuzzing campaign per loader (the long one is `examples/fuzz_load.rs`): mutated
//! fixture files never panic and never hang the config, safetensors-header and tokenizer
//! loaders, and the unmutated fixtures are accepted.

use std::path::PathBuf;
use std::time::Duration;

use mlxi::fuzz::{self, Campaign, Target};

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn campaign(target: Target, executions: u64) {
    let seeds = fuzz::seeds(target, &models()).expect("seeds");
    let dir = tempfile::tempdir().expect("scratch");
    // The seeds themselves load: the harness drives the real path, not only its errors.
    for s in &seeds {
        let ok = fuzz::execute(target, &s.main, &s.extra, s.file_size, dir.path());
        assert!(
            matches!(ok, Ok(true)),
            "{} {}: {ok:?}",
            target.name(),
            s.name
        );
    }
    let report = fuzz::run(&Campaign {
        target,
        seeds: &seeds,
        executions,
        time_limit: Some(Duration::from_secs(20)),
        seed: 1,
        hang_after: Duration::from_secs(2),
        work_dir: dir.path(),
    })
    .expect("runs");
    assert!(report.executions >= 200, "{report:?}");
    assert_eq!((report.crashes, report.hangs), (0, 0), "{report:?}");
    // Mutations mostly produce inputs that are refused, but not all of them.
    assert!(
        report.accepted > 0 && report.accepted < report.executions,
        "{report:?}"
    );
}

#[test]
fn fuzz_config() {
    campaign(Target::Config, 20_000);
}

#[test]
fn fuzz_safetensors_header() {
    campaign(Target::Safetensors, 20_000);
}

#[test]
fn fuzz_tokenizer() {
    campaign(Target::Tokenizer, 2_000);
}

#[test]
fn mutations_are_seeded() {
    use rand::SeedableRng;
    let base = b"{\"num_attention_heads\": 4, \"vocab_size\": 320}".to_vec();
    let run = |seed| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut x = base.clone();
        fuzz::mutate(&mut x, &mut rng, false);
        x
    };
    assert_eq!(run(3), run(3));
    assert!((0..20).any(|s| run(s) != base));
}
