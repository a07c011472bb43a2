//! Runs that return what analysis needs, on the default model (SmolLM2-135M-Instruct):
//! `logprobs` and `generate(..., #{output: "full"})` against log-softmax computed here by hand
//! (in f64) from `forward`'s logits, batches against single runs, the `on_token` callback and
//! its early stop; `run_with_cache` against `forward` and `capture`; Directions from Tensors;
//! what a Cache records of its inputs; `decode`'s range check.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds the lock while it runs.

mod common;
use common::{expect_err, expect_ok, floats, full_f32, mlx_lock as lock};

use mlxi::fsaccess::{Grants, Permissions};
use mlxi::script::{Context, Tensor};
use rhai::{Dynamic, Map};

/// Evaluates a script with the default model in f32 as `m` in front.
fn eval(code: &str) -> Result<Dynamic, String> {
    let grants = Grants {
        write: vec![std::env::temp_dir()],
        ..Grants::default()
    };
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let perms = Permissions::interactive(&cwd, &grants).map_err(|e| e.to_string())?;
    full_f32();
    let code = format!("let m = load(\"default\", #{{dtype: \"f32\", dequantize: true}});\n{code}");
    common::script(Context::with_permissions(perms), &code)
}

#[track_caller]
fn ok(code: &str) -> Map {
    expect_ok(eval(code)).try_cast::<Map>().expect("a map")
}

#[track_caller]
fn err(code: &str) -> String {
    expect_err(eval(code))
}

fn ints(v: &Dynamic) -> Vec<i64> {
    v.clone()
        .into_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_int().expect("an integer"))
        .collect()
}

fn map(v: &Dynamic) -> Map {
    v.clone().try_cast::<Map>().expect("a map")
}

fn array(v: &Dynamic) -> Vec<Dynamic> {
    v.clone().into_array().expect("an array")
}

/// Log-softmax of row `pos` of logits `[pos, vocab]`, at `id`, computed in f64.
fn log_softmax_at(logits: &Dynamic, pos: usize, id: usize) -> f64 {
    let t = logits.clone().try_cast::<Tensor>().expect("a Tensor");
    let v = t.shape()[1] as usize;
    let all = t.to_f32_vec().expect("values");
    let row: Vec<f64> = all[pos * v..(pos + 1) * v]
        .iter()
        .map(|&x| x as f64)
        .collect();
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row[id] - lse
}

#[test]
fn logprobs_are_the_log_softmax_of_the_forward_logits() {
    let _mlx = lock();
    let v = ok(r#"
        let p = "The capital of France is";
        let c = " Paris, of course.";
        let r = logprobs(m, p, c);
        let pids = encode(m, p);
        #{r: r, pids: pids, whole: encode(m, p + c), logits: forward(m, pids + r.ids),
          method: m.logprobs(p, c)}
    "#);
    let r = map(&v["r"]);
    let pids = ints(&v["pids"]);
    let ids = ints(&r["ids"]);
    // The continuation's tokens are those of the whole text after the prompt's.
    let whole = ints(&v["whole"]);
    assert_eq!(&whole[..pids.len()], &pids[..]);
    assert_eq!(&whole[pids.len()..], &ids[..]);
    assert_eq!(array(&r["tokens"]).len(), ids.len());
    let per = floats(&r["per_token"]);
    assert_eq!(per.len(), ids.len());
    for (j, (&id, &lp)) in ids.iter().zip(&per).enumerate() {
        let want = log_softmax_at(&v["logits"], pids.len() + j - 1, id as usize);
        assert!((lp - want).abs() < 2e-5, "token {j}: {lp} vs {want}");
        assert!(lp < 0.0);
    }
    let total = r["total"].as_float().unwrap();
    assert!((total - per.iter().sum::<f64>()).abs() < 1e-9);
    // The method form gives the same.
    assert_eq!(floats(&map(&v["method"])["per_token"]), per);
}

#[test]
fn batched_logprobs_equal_single_ones() {
    let _mlx = lock();
    let v = ok(r#"
        let ps = ["The capital of France is", "Hi", "def add(a, b):\n    return"];
        let cs = [" Paris", " there, how are you?", " a + b"];
        let batch = logprobs(m, ps, cs);
        let single = [];
        for i in 0..3 { single.push(logprobs(m, ps[i], cs[i])); }
        let choices = logprobs(m, "The capital of France is", [" Paris", " London", " a city"]);
        let one_by_one = [];
        for c in [" Paris", " London", " a city"] {
            one_by_one.push(logprobs(m, "The capital of France is", c));
        }
        let ids = logprobs(m, encode(m, "Hi"), [1, 2, 3]);
        #{batch: batch, single: single, choices: choices, one_by_one: one_by_one, ids: ids}
    "#);
    let compare = |a: &Dynamic, b: &Dynamic| {
        let (a, b) = (array(a), array(b));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            let (x, y) = (map(x), map(y));
            assert_eq!(ints(&x["ids"]), ints(&y["ids"]));
            for (p, q) in floats(&x["per_token"]).iter().zip(floats(&y["per_token"])) {
                assert!((p - q).abs() < 2e-4, "{p} vs {q}");
            }
        }
    };
    compare(&v["batch"], &v["single"]);
    compare(&v["choices"], &v["one_by_one"]);
    // Paris is the likeliest of the three.
    let totals: Vec<f64> = array(&v["choices"])
        .iter()
        .map(|c| map(c)["total"].as_float().unwrap())
        .collect();
    assert!(totals[0] > totals[1] && totals[0] > totals[2], "{totals:?}");
    // Ids are used as given.
    assert_eq!(ints(&map(&v["ids"])["ids"]), vec![1, 2, 3]);
}

#[test]
fn logprobs_refuses_what_it_cannot_score() {
    let _mlx = lock();
    let e = err(r#"logprobs(m, ["a", "b"], ["x", "y", "z"])"#);
    assert!(e.contains("2 prompts and 3 continuations"), "{e}");
    let e = err(r#"logprobs(m, "Hello", [5, 999999])"#);
    assert!(
        e.contains("token id 999999 is out of range (vocabulary of 49152)"),
        "{e}"
    );
    let e = err(r#"logprobs(m, "Hello", "")"#);
    assert!(e.contains("the continuation has no tokens"), "{e}");
    let e = err(r#"logprobs(m, [], " x")"#);
    assert!(e.contains("empty input"), "{e}");
}

#[test]
fn full_generation_gives_ids_logprobs_and_alternatives() {
    let _mlx = lock();
    let v = ok(r#"
        let p = "The capital of France is";
        let full = generate(m, p, #{output: "full", max_tokens: 8, alternatives: 3});
        let text = generate(m, p, #{max_tokens: 8});
        let sampled = m.generate(p, #{output: "full", max_tokens: 6, temperature: 0.8, seed: 3});
        let pids = encode(m, p);
        #{full: full, text: text, sampled: sampled, pids: pids,
          logits: forward(m, pids + full.ids), sampled_logits: forward(m, pids + sampled.ids),
          decoded: decode(m, full.ids)}
    "#);
    let full = map(&v["full"]);
    let pids = ints(&v["pids"]);
    assert_eq!(
        full["text"].clone().into_string().unwrap(),
        v["text"].clone().into_string().unwrap()
    );
    assert_eq!(
        v["decoded"].clone().into_string().unwrap(),
        v["text"].clone().into_string().unwrap()
    );
    let ids = ints(&full["ids"]);
    assert_eq!(ids.len(), 8);
    assert_eq!(array(&full["tokens"]).len(), 8);
    assert_eq!(full["finish"].clone().into_string().unwrap(), "length");
    let lps = floats(&full["logprobs"]);
    let top = array(&full["top"]);
    assert_eq!(top.len(), 8);
    for (i, (&id, &lp)) in ids.iter().zip(&lps).enumerate() {
        let want = log_softmax_at(&v["logits"], pids.len() + i - 1, id as usize);
        assert!((lp - want).abs() < 2e-4, "step {i}: {lp} vs {want}");
        // Greedy: the chosen token is the first alternative; alternatives are in order.
        let alts = array(&top[i]);
        assert_eq!(alts.len(), 3);
        let first = map(&alts[0]);
        assert_eq!(first["id"].as_int().unwrap(), id);
        assert!((first["logprob"].as_float().unwrap() - lp).abs() < 1e-6);
        let alt_lps: Vec<f64> = alts
            .iter()
            .map(|a| map(a)["logprob"].as_float().unwrap())
            .collect();
        assert!(alt_lps.windows(2).all(|w| w[0] >= w[1]), "{alt_lps:?}");
        for a in &alts {
            let a = map(a);
            let want = log_softmax_at(
                &v["logits"],
                pids.len() + i - 1,
                a["id"].as_int().unwrap() as usize,
            );
            assert!((a["logprob"].as_float().unwrap() - want).abs() < 1e-3);
        }
    }
    // Sampled at temperature 0.8: the log-probabilities are still the model's own (before
    // temperature).
    let s = map(&v["sampled"]);
    for (i, (&id, &lp)) in ints(&s["ids"])
        .iter()
        .zip(floats(&s["logprobs"]).iter())
        .enumerate()
    {
        let want = log_softmax_at(&v["sampled_logits"], pids.len() + i - 1, id as usize);
        assert!((lp - want).abs() < 1e-3, "sampled step {i}: {lp} vs {want}");
    }
    assert_eq!(array(&array(&s["top"])[0]).len(), 5);
}

#[test]
fn on_token_sees_every_token_and_can_stop_a_row() {
    let _mlx = lock();
    let v = ok(r#"
        let ps = ["Once upon a time", "The capital of France is"];
        let seen = [];
        let batch = generate(m, ps, #{output: "full", max_tokens: 6,
            on_token: |s| { seen.push(s); }});
        let stopped = generate(m, ps, #{output: "full", max_tokens: 6,
            on_token: |s| !(s.row == 0 && s.step >= 2)});
        let one = generate(m, ps[1], #{max_tokens: 6, on_token: |s| s.step < 3});
        #{batch: batch, seen: seen, stopped: stopped, one: one,
          plain: generate(m, ps, #{max_tokens: 6})}
    "#);
    let batch = array(&v["batch"]);
    assert_eq!(batch.len(), 2);
    let seen = array(&v["seen"]);
    for (r, row) in batch.iter().enumerate() {
        let row = map(row);
        let mine: Vec<Map> = seen
            .iter()
            .map(map)
            .filter(|s| s["row"].as_int().unwrap() == r as i64)
            .collect();
        let ids: Vec<i64> = mine.iter().map(|s| s["id"].as_int().unwrap()).collect();
        assert_eq!(ids, ints(&row["ids"]), "row {r}");
        let steps: Vec<i64> = mine.iter().map(|s| s["step"].as_int().unwrap()).collect();
        assert_eq!(steps, (0..ids.len() as i64).collect::<Vec<_>>());
        let lps: Vec<f64> = mine
            .iter()
            .map(|s| s["logprob"].as_float().unwrap())
            .collect();
        assert_eq!(lps, floats(&row["logprobs"]));
        let tokens: Vec<String> = mine
            .iter()
            .map(|s| s["token"].clone().into_string().unwrap())
            .collect();
        let want: Vec<String> = array(&row["tokens"])
            .iter()
            .map(|t| t.clone().into_string().unwrap())
            .collect();
        assert_eq!(tokens, want);
    }
    // Returning false ends that row only.
    let stopped = array(&v["stopped"]);
    let (r0, r1) = (map(&stopped[0]), map(&stopped[1]));
    assert_eq!(ints(&r0["ids"]).len(), 3);
    assert_eq!(r0["finish"].clone().into_string().unwrap(), "callback");
    assert_eq!(ints(&r1["ids"]), ints(&map(&batch[1])["ids"]));
    let plain = array(&v["plain"]);
    assert_eq!(
        r1["text"].clone().into_string().unwrap(),
        plain[1].clone().into_string().unwrap()
    );
    // One prompt: the text of the 4 tokens made before the stop.
    let one = v["one"].clone().into_string().unwrap();
    let whole = plain[1].clone().into_string().unwrap();
    assert!(
        whole.starts_with(&one) && one.len() < whole.len(),
        "{one:?} / {whole:?}"
    );
}

#[test]
fn generate_checks_its_new_options() {
    let _mlx = lock();
    let e = err(r#"generate(m, "Hi", #{outptu: "full"})"#);
    assert!(e.contains("did you mean 'output'"), "{e}");
    let e = err(r#"generate(m, "Hi", #{output: "all"})"#);
    assert!(e.contains("\"text\", \"full\""), "{e}");
    let e = err(r#"generate(m, "Hi", #{alternatives: 3})"#);
    assert!(e.contains("output: \"full\" only"), "{e}");
    let e = err(r#"generate(m, "Hi", #{on_token: 3})"#);
    assert!(e.contains("'on_token' must be a function"), "{e}");
    let e = err(r#"generate(m, "Hi", #{max_tokens: 3, on_token: |s| throw "no more"})"#);
    assert!(
        e.contains("in the on_token function") && e.contains("no more"),
        "{e}"
    );
}

#[test]
fn decode_refuses_ids_outside_the_vocabulary() {
    let _mlx = lock();
    let e = err("decode(m, [504, 49152])");
    assert!(
        e.contains("decode: token id 49152 is out of range (vocabulary of 49152)"),
        "{e}"
    );
    let e = err("m.decode([-1])");
    assert!(e.contains("non-negative"), "{e}");
    let v = ok(r#"#{text: decode(m, [504, 3575])}"#);
    assert_eq!(v["text"].clone().into_string().unwrap(), "The capital");
}

#[test]
fn run_with_cache_is_one_forward_giving_forward_and_capture() {
    let _mlx = lock();
    let v = ok(r#"
        let text = "The capital of France is";
        let calls = [];
        hook(m, "hook_embed", |x| { calls.push(1); });
        let r = run_with_cache(m, text);
        let n_calls = calls.len();
        clear_hooks(m);
        let f = forward(m, text);
        let c = capture(m, text, #{positions: "all"});
        let diff = 0.0;
        for k in keys(c) { diff += norm(r.cache[k][0] - c[k][0]); }
        let ps = ["Hello there", "The capital of France is"];
        let rb = m.run_with_cache(ps, #{points: ["blocks.*.hook_resid_post", "hook_embed"],
                                        positions: "last"});
        let cb = capture(m, ps, #{points: ["blocks.*.hook_resid_post", "hook_embed"]});
        let diff_b = 0.0;
        for k in keys(cb) { diff_b += norm(rb.cache[k] - cb[k]); }
        let all = run_with_cache(m, "Hi", #{points: "all"});
        #{n_calls: n_calls, logits_diff: norm(r.logits - f), logits_shape: r.logits.shape,
          keys: keys(r.cache), cache_keys: keys(c), diff: diff,
          shape0: r.cache["blocks.0.hook_resid_post"][0].shape, n_pos: encode(m, text).len(),
          prompts: r.cache.prompts, ids: r.cache.ids, enc: encode(m, text),
          batch_logits_diff: norm(rb.logits - forward(m, ps)), batch_shape: rb.logits.shape,
          diff_b: diff_b, batch_keys: keys(rb.cache).len(), n_layers: m.n_layers,
          all_keys: keys(all.cache).len(), hook_points: hook_points(m).len(),
          pattern_shape: all.cache["blocks.0.attn.hook_pattern"][0].shape}
    "#);
    assert_eq!(v["n_calls"].as_int().unwrap(), 1, "one forward");
    assert_eq!(v["logits_diff"].as_float().unwrap(), 0.0);
    let n_pos = v["n_pos"].as_int().unwrap();
    assert_eq!(ints(&v["logits_shape"]), vec![n_pos, 49152]);
    let n_layers = v["n_layers"].as_int().unwrap();
    assert_eq!(array(&v["keys"]).len() as i64, n_layers);
    assert_eq!(format!("{:?}", v["keys"]), format!("{:?}", v["cache_keys"]));
    assert_eq!(v["diff"].as_float().unwrap(), 0.0);
    assert_eq!(ints(&v["shape0"]), vec![n_pos, 576]);
    assert_eq!(
        format!("{:?}", v["prompts"]),
        r#"["The capital of France is"]"#
    );
    assert_eq!(ints(&array(&v["ids"])[0]), ints(&v["enc"]));
    assert_eq!(v["batch_logits_diff"].as_float().unwrap(), 0.0);
    assert_eq!(ints(&v["batch_shape"]), vec![2, n_pos, 49152]);
    assert!(v["diff_b"].as_float().unwrap() < 1e-3, "{:?}", v["diff_b"]);
    assert_eq!(v["batch_keys"].as_int().unwrap(), n_layers + 1);
    // "all": every hook point, as TransformerLens caches them.
    assert_eq!(v["all_keys"].as_int(), v["hook_points"].as_int());
    let p = ints(&v["pattern_shape"]);
    assert_eq!((p.len(), p[1], p[2]), (3, 1, 1));
}

#[test]
fn run_with_cache_checks_its_options() {
    let _mlx = lock();
    let e = err(r#"run_with_cache(m, "Hi", #{point: "hook_embed"})"#);
    assert!(e.contains("did you mean 'points'"), "{e}");
    let e = err(r#"run_with_cache(m, "Hi", #{points: "blocks.99.hook_resid_post"})"#);
    assert!(e.contains("99"), "{e}");
    let e = err(r#"run_with_cache(m, [1, 2, 49152])"#);
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn a_direction_from_a_tensor_steers_like_the_original() {
    let _mlx = lock();
    let dir = common::scratch();
    let path = dir.path().display().to_string();
    let v = ok(&format!(
        r#"
        let d = direction(m, ["I feel so happy today!", "What a joyful day"],
                             ["I feel so sad today.", "What a miserable day"], #{{layer: 15}});
        let copy = direction(d.vector, #{{layer: d.layer, point: d.point}});
        let text = "Today I feel";
        steer(m, d, #{{alpha: 6.0}});
        let a = forward(m, text);
        let ga = generate(m, text, #{{max_tokens: 8}});
        unsteer(m);
        steer(m, copy, #{{alpha: 6.0}});
        let b = forward(m, text);
        let gb = generate(m, text, #{{max_tokens: 8}});
        unsteer(m);
        let plain = forward(m, text);
        save(copy, "{path}/copy.safetensors");
        let back = load_direction("{path}/copy.safetensors");
        export_control_vector(copy, "{path}/copy.gguf");
        let owned = d.vector.direction(#{{layer: -15, model: m, method: "mine"}});
        let scaled = direction(d.vector * 3.0, #{{layer: 15, normalize: true}});
        #{{same: norm(a - b), changed: norm(a - plain), ga: ga, gb: gb,
          back_diff: norm(back.vector - d.vector), back_layer: back.layer,
          back_method: back.method, method: copy.method, owned_layer: owned.layer,
          owned_method: owned.method,
          scaled_norm: norm(scaled.vector), scaled_cos: cosine(scaled, d)}}
    "#
    ));
    assert_eq!(v["same"].as_float().unwrap(), 0.0);
    assert!(v["changed"].as_float().unwrap() > 1.0);
    assert_eq!(
        v["ga"].clone().into_string().unwrap(),
        v["gb"].clone().into_string().unwrap()
    );
    assert_eq!(v["back_diff"].as_float().unwrap(), 0.0);
    assert_eq!(v["back_layer"].as_int().unwrap(), 15);
    assert_eq!(v["back_method"].clone().into_string().unwrap(), "custom");
    assert_eq!(v["owned_layer"].as_int().unwrap(), 15);
    assert_eq!(v["owned_method"].clone().into_string().unwrap(), "mine");
    assert!((v["scaled_norm"].as_float().unwrap() - 1.0).abs() < 1e-5);
    assert!((v["scaled_cos"].as_float().unwrap() - 1.0).abs() < 1e-5);
    assert!(dir.path().join("copy.gguf").is_file());
}

#[test]
fn a_direction_from_a_tensor_is_checked() {
    let _mlx = lock();
    let e = err("steer(m, direction(zeros([10]), #{layer: 3}))");
    assert!(
        e.contains("the vector has 10 entries; this point takes 576"),
        "{e}"
    );
    let e = err("direction(zeros([10]), #{layer: 3, model: m})");
    assert!(
        e.contains("the vector has 10 entries") && e.contains("576"),
        "{e}"
    );
    let e = err("direction(zeros([2, 576]), #{layer: 3})");
    assert!(e.contains("1-dimensional"), "{e}");
    let e = err("direction(zeros([576]), #{point: \"hook_resid_post\"})");
    assert!(e.contains("needs its layer"), "{e}");
    let e = err("direction(zeros([576]), #{layer: -1})");
    assert!(e.contains("#{model: m}"), "{e}");
    let e = err("direction(zeros([576]), #{layer: 2, point: \"hook_nothing\"})");
    assert!(e.contains("not a per-layer hook point"), "{e}");
    let e = err("direction(zeros([576]), #{layer: 2, alpha: 1})");
    assert!(e.contains("unknown option 'alpha'"), "{e}");
}

#[test]
fn a_cache_records_its_inputs_and_keeps_them_in_its_file() {
    let _mlx = lock();
    let dir = common::scratch();
    let path = dir.path().display().to_string();
    let v = ok(&format!(
        r#"
        let texts = ["I love it", "I hate this movie"];
        let c = capture(m, texts);
        save(c, "{path}/c.safetensors");
        let back = load_cache("{path}/c.safetensors");
        let by_ids = capture(m, [encode(m, "Hello"), [1, 2, 3]], #{{positions: "all"}});
        save(by_ids, "{path}/ids.safetensors");
        let back_ids = load_cache("{path}/ids.safetensors");
        #{{prompts: c.prompts, ids: c.ids, back_prompts: back.prompts, back_ids: back.ids,
          enc0: encode(m, texts[0]), enc1: encode(m, texts[1]),
          by_ids_prompts: by_ids.prompts, by_ids: back_ids.ids, no_prompts: back_ids.prompts,
          diff: norm(back["blocks.3.hook_resid_post"] - c["blocks.3.hook_resid_post"])}}
    "#
    ));
    assert_eq!(
        format!("{:?}", v["prompts"]),
        r#"["I love it", "I hate this movie"]"#
    );
    assert_eq!(
        format!("{:?}", v["back_prompts"]),
        format!("{:?}", v["prompts"])
    );
    let ids = array(&v["ids"]);
    assert_eq!(ints(&ids[0]), ints(&v["enc0"]));
    assert_eq!(ints(&ids[1]), ints(&v["enc1"]));
    assert_eq!(format!("{:?}", v["back_ids"]), format!("{:?}", v["ids"]));
    assert!(v["by_ids_prompts"].is_unit());
    assert!(v["no_prompts"].is_unit());
    assert_eq!(ints(&array(&v["by_ids"])[1]), vec![1, 2, 3]);
    assert_eq!(v["diff"].as_float().unwrap(), 0.0);
}

#[test]
fn a_cache_file_from_before_ids_were_recorded_still_loads() {
    let _mlx = lock();
    let dir = common::scratch();
    let file = dir.path().join("old.safetensors");
    let meta: std::collections::HashMap<String, String> = [
        ("format", "mlxi.cache"),
        ("model", "SmolLM2-135M-Instruct.Q4_1"),
        ("n_layers", "30"),
        ("points", r#"["hook_embed"]"#),
        ("positions", "last"),
        ("n", "2"),
        ("prompts_hash", "0123456789abcdef"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let a = mlx_rs::Array::from_slice(&[1.0f32; 2 * 576], &[2, 576]);
    mlxi::arrays::write_safetensors(&file, &[("hook_embed", &a)], Some(meta)).unwrap();
    let v = ok(&format!(
        r#"let c = load_cache("{}"); #{{prompts: c.prompts, ids: c.ids, n: c.n, shape: c["hook_embed"].shape}}"#,
        file.display()
    ));
    assert!(v["prompts"].is_unit() && v["ids"].is_unit());
    assert_eq!(v["n"].as_int().unwrap(), 2);
    assert_eq!(ints(&v["shape"]), vec![2, 576]);
}

/// Batching changes no answer: chat questions of different lengths generated in one batch, in
/// batches of 3 and one at a time give the same texts, greedy and sampled (each row samples
/// from its own seeded stream, numbered by its place among all the prompts).
#[test]
fn batch_size_changes_no_answer() {
    let _g = lock();
    let r = ok(r#"
        let qs = ["What color is grass? Answer with one word.",
                  "What color is a ripe tomato? Answer with one word.",
                  "What color is the sky?",
                  "Name a fruit.",
                  "What color is a fire engine on a sunny afternoon? Answer with one word.",
                  "Say hello.",
                  "What color is snow? Answer with one word."];
        let g = #{chat: true, max_tokens: 10};
        let s = #{chat: true, max_tokens: 10, temperature: 0.9, seed: 11};
        #{greedy: [generate(m, qs, g + #{batch_size: 7}), generate(m, qs, g + #{batch_size: 3}),
                   generate(m, qs, g + #{batch_size: 1})],
          sampled: [generate(m, qs, s + #{batch_size: 7}), generate(m, qs, s + #{batch_size: 1})],
          resampled: generate(m, qs, s + #{seed: 12})}
    "#);
    let texts = |v: &Dynamic| -> Vec<String> {
        array(v)
            .iter()
            .map(|t| t.clone().into_string().expect("text"))
            .collect()
    };
    let greedy: Vec<Vec<String>> = array(&r["greedy"]).iter().map(texts).collect();
    assert_eq!(greedy[0].len(), 7);
    assert_eq!(greedy[0], greedy[1]);
    assert_eq!(greedy[0], greedy[2]);
    let sampled: Vec<Vec<String>> = array(&r["sampled"]).iter().map(texts).collect();
    assert_eq!(sampled[0], sampled[1]);
    // Not vacuous: sampling differs from greedy decoding and from another seed.
    assert_ne!(sampled[0], greedy[0]);
    assert_ne!(sampled[0], texts(&r["resampled"]));
    assert!(err("generate(m, [\"a\"], #{batch_size: 0})").contains("batch_size"));
}
