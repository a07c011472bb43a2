//! Chunked prefill (`Model::prefill`, what generation runs a long prompt through) against one
//! forward of the whole prompt, on every architecture's committed checkpoint: the last
//! position's logits, and the logits of the decoding step that follows from each cache, for
//! left-padded rows longer than several chunks (and, on gemma2/gemma3_text, sliding windows of
//! 4 positions that cross every chunk boundary).
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{load_fixture, max_abs_diff, mlx_lock as lock};

use mlx_rs::{Array, Dtype};
use mlxi::model::layers::KvCache;
use mlxi::model::{pad_left, PREFILL_CHUNK};

const CASES: [&str; 8] = [
    "llama",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "qwen3_moe",
    "mistral",
];

/// A deterministic id sequence of `n` tokens inside the fixtures' 320-token vocabulary.
fn ids(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % 300 + 10)
        .collect()
}

#[test]
fn chunked_prefill_equals_one_forward_on_every_architecture() {
    let _g = lock();
    common::full_f32();
    // Two chunks and a bit, and one row shorter than a chunk's worth of padding.
    let long = 2 * PREFILL_CHUNK as usize + 37;
    let rows = vec![ids(long, 1), ids(long - PREFILL_CHUNK as usize - 100, 2)];
    let (input, pads) = pad_left(&rows, 0).unwrap();
    for case in CASES {
        let mut m = load_fixture(case);
        let n = m.n_layers();

        let mut whole = KvCache::new(n);
        let a = m.run(&input, &pads, Some(&mut whole), true).unwrap();
        let mut chunked = KvCache::new(n);
        let b = m.prefill(&input, &pads, &mut chunked).unwrap();
        assert_eq!(chunked.offset, whole.offset, "{case}");
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-4, "{case}: prefill logits differ by {d}");

        let next = Array::from_slice(&[17u32 as i32, 42], &[2, 1]);
        let a = m.run(&next, &pads, Some(&mut whole), true).unwrap();
        let b = m.run(&next, &pads, Some(&mut chunked), true).unwrap();
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-4, "{case}: the next step differs by {d}");
        // Not vacuous: a different prompt gives other logits.
        let mut other = KvCache::new(n);
        let (other_in, other_pads) = pad_left(&[ids(long, 3), rows[1].clone()], 0).unwrap();
        let c = m.prefill(&other_in, &other_pads, &mut other).unwrap();
        let row0 = |x: &Array| {
            use mlx_rs::ops::indexing::TryIndexOp;
            x.try_index(0).unwrap()
        };
        assert!(max_abs_diff(&row0(&a), &row0(&c)) > 1e-3, "{case}");
    }
}

#[test]
fn prefill_refuses_a_cache_in_use() {
    let _g = lock();
    let mut m = load_fixture("llama");
    let (input, pads) = pad_left(&[ids(8, 1)], 0).unwrap();
    let mut cache = KvCache::new(m.n_layers());
    m.prefill(&input, &pads, &mut cache).unwrap();
    let err = m
        .prefill(&input, &pads, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already holds"), "{err}");
}

/// Greedy generation from a prompt of several chunks gives the same tokens as from the
/// same prompt one chunk shorter, continued: a smoke test that the generate path uses prefill
/// and that its prompt window covers the whole prompt (steering "prompt" vs "generated").
#[test]
fn generation_after_a_long_prompt_keeps_its_prompt_window() {
    use mlxi::generate::GenerateOptions;
    use mlxi::hooks::{Hook, HookName};
    use mlxi::interventions::{Intervention, Op, Window};
    let _g = lock();
    common::full_f32();
    let mut m = load_fixture("qwen3");
    let prompt = ids(PREFILL_CHUNK as usize + 200, 5);
    let opts = GenerateOptions {
        max_tokens: 5,
        ..Default::default()
    };
    let mut sink = |_: usize, _: &str| Ok(());
    let plain = m
        .generate_ids(std::slice::from_ref(&prompt), &opts, &mut sink)
        .unwrap();
    // A large addition on the generated window only: the prompt must stay untouched, which
    // changes nothing for the first token if (and only if) every prompt chunk counts as prompt.
    let d = m.info.d_model;
    let v = Array::from_slice(&vec![50.0f32; d as usize], &[d]);
    let iv = Intervention {
        point: HookName::ResidPost(0),
        op: Op::Add {
            vector: v,
            alpha: 1.0,
        },
        window: Window::Generated,
    };
    m.hooks.attach(Hook {
        name: iv.point,
        label: iv.label(),
        steering: false,
        func: iv.into_hook(),
    });
    let steered = m
        .generate_ids(std::slice::from_ref(&prompt), &opts, &mut sink)
        .unwrap();
    assert_eq!(plain[0].ids[0], steered[0].ids[0]);
    assert_ne!(plain[0].ids, steered[0].ids, "the steering had no effect");
}

/// Sliding-window layers' caches are trimmed during a long generation (the gemma2 and
/// gemma3_text checkpoints have 4-key windows): through several trims, each step's logits from
/// the cache equal those of one forward without a cache over the prompt and every generated
/// token, and the windowed layers hold at most `window - 1 + 256 + 1` positions.
#[test]
fn long_generation_with_trimmed_window_caches_matches_a_cacheless_forward() {
    use mlx_rs::ops::indexing::{argmax_axis, TryIndexOp};
    let _g = lock();
    common::full_f32();
    for case in ["gemma2", "gemma3_text"] {
        let mut m = load_fixture(case);
        let n = m.n_layers();
        let prompt = ids(10, 7);
        let (input, pads) = pad_left(std::slice::from_ref(&prompt), 0).unwrap();
        let mut cache = KvCache::new(n);
        let mut logits = m.prefill(&input, &pads, &mut cache).unwrap();
        let mut seq = prompt.clone();
        let mut steps = Vec::new();
        for _ in 0..600 {
            let tok = argmax_axis(logits.try_index((0, -1)).unwrap(), -1, false)
                .unwrap()
                .as_dtype(Dtype::Int32)
                .unwrap()
                .item_exact::<i32>() as u32;
            steps.push(logits.try_index((0, -1)).unwrap());
            seq.push(tok);
            let next = Array::from_slice(&[tok as i32], &[1, 1]);
            logits = m.run(&next, &pads, Some(&mut cache), true).unwrap();
        }
        assert!(cache.window_start > 300, "{case}: never trimmed");
        let windowed = m.windows().to_vec();
        let held: Vec<i32> = cache.layers.iter().map(|l| l.held()).collect();
        for (h, w) in held.iter().zip(&windowed) {
            match w {
                Some(w) => assert!(*h <= w - 1 + 256 + 1, "{case}: holds {h}"),
                None => assert_eq!(*h, seq.len() as i32, "{case}"),
            }
        }
        assert!(
            windowed.iter().any(|w| w.is_some()),
            "{case}: no windowed layer"
        );
        let (all, p) = pad_left(std::slice::from_ref(&seq), 0).unwrap();
        let full = m.run(&all, &p, None, false).unwrap();
        for (i, step) in steps.iter().enumerate() {
            let want = full
                .try_index((0, prompt.len() as i32 - 1 + i as i32))
                .unwrap();
            let d = max_abs_diff(step, &want);
            assert!(d < 1e-4, "{case}: step {i} differs by {d}");
        }
    }
}
