//! The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against mlx-lm's golden values
//! (tests/fixtures/golden/smollm2, produced by tests/reference/golden_default.py): next-token
//! logits for several prompts, and greedy continuations token for token.

mod common;
use common::{full_f32, max_abs_diff};

use mlx_rs::{Array, Dtype};
use mlxi::generate::{generate, GenerateOptions};
use mlxi::model::{LoadOptions, Model};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden/smollm2");

fn golden() -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

// One test function: the model is loaded once and MLX stays on one thread.
#[test]
fn default_model_matches_mlx_lm() {
    full_f32();
    let g = golden();
    let reference = Array::load_safetensors(format!("{DIR}/logits.safetensors")).unwrap();
    // Loaded the way the goldens were made (f32, dequantized), whatever the device's defaults
    // (a GPU keeps the checkpoint's f16 scales and the quantized kernels).
    let opts = LoadOptions {
        dtype: Some(Dtype::Float32),
        dequantize: Some(true),
        ..Default::default()
    };
    let mut model = Model::load_default(&opts).expect("run ./setup first");
    assert_eq!(model.info.n_layers, 30);
    assert_eq!(model.info.vocab, 49152);

    // Logits at every position of the first prompt, and the last position of every prompt.
    for (i, p) in g["prompts"].as_array().unwrap().iter().enumerate() {
        let input = ids(&p["input_ids"]);
        let logits = model.forward_ids(std::slice::from_ref(&input)).unwrap();
        let t = input.len() as i32;
        if i == 0 {
            let want = &reference["prompt0_all"];
            let got = logits.reshape(&[t, -1]).unwrap();
            let d = max_abs_diff(&got, want);
            assert!(d < 1e-3, "prompt 0, all positions: max |diff| {d}");
        }
        let last = logits
            .reshape(&[t, -1])
            .unwrap()
            .take_axis(Array::from_int(t - 1), 0)
            .unwrap();
        let d = max_abs_diff(&last, &reference[&format!("prompt{i}")]);
        assert!(d < 1e-3, "prompt {i} ({}): max |diff| {d}", p["name"]);
    }

    // " Paris" is the top next token after "The capital of France is".
    let first = ids(&g["prompts"][0]["input_ids"]);
    let logits = model.forward_ids(&[first]).unwrap();
    let top = mlx_rs::ops::indexing::argmax_axis(&logits, -1, false).unwrap();
    assert_eq!(*top.as_slice::<u32>().last().unwrap(), 7042);

    // Greedy continuations, token for token (ignoring EOS, 32 tokens).
    for c in g["continuations"].as_array().unwrap() {
        let prompt = ids(&c["input_ids"]);
        let want = ids(&c["generated_ids_ignore_eos"]);
        let opts = GenerateOptions {
            max_tokens: want.len(),
            ..Default::default()
        };
        let out = generate(
            &mut model,
            &[prompt],
            &opts,
            &[],
            0,
            &|_ids| Ok(String::new()),
            &mut |_r: usize, _s: &str| Ok(()),
        )
        .unwrap();
        assert_eq!(out[0].ids, want, "continuation {}", c["name"]);
    }
}

#[test]
fn left_padding_does_not_change_logits() {
    full_f32();
    let g = golden();
    // f32 as on the CPU: in a GPU's f16 default, padding moves logits by a few f16 ulps.
    let opts = LoadOptions {
        dtype: Some(Dtype::Float32),
        dequantize: Some(true),
        ..Default::default()
    };
    let mut model = Model::load_default(&opts).unwrap();
    let a = ids(&g["prompts"][0]["input_ids"]);
    let b = ids(&g["prompts"][2]["input_ids"]);
    let (la, lb) = (a.len() as i32, b.len() as i32);
    assert_ne!(la, lb, "the test needs prompts of different lengths");
    let alone_a = model.forward_ids(std::slice::from_ref(&a)).unwrap();
    let alone_b = model.forward_ids(std::slice::from_ref(&b)).unwrap();
    let both = model.forward_ids(&[a, b]).unwrap();
    let t = la.max(lb);
    let row = |i: i32, len: i32| {
        both.take_axis(Array::from_int(i), 0)
            .unwrap()
            .take_axis(Array::from_iter(t - len..t, &[len]), 0)
            .unwrap()
            .reshape(&[1, len, -1])
            .unwrap()
    };
    let da = max_abs_diff(&row(0, la), &alone_a);
    let db = max_abs_diff(&row(1, lb), &alone_b);
    assert!(da < 1e-3 && db < 1e-3, "padding changed logits: {da}, {db}");
}
