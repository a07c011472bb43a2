//! Pipeline sharding (`load(source, #{pipeline: true})` under `mlxi launch -n N`): each rank
//! holds a contiguous share of the blocks and the ranks run every forward together. The
//! reference is the same script in one process, which loads the whole model (its logits are
//! checked against mlx-lm by the parity tests): logits, captures at blocks held by either rank,
//! steered and sampled generation must come out the same, and each rank must hold only its
//! share of the blocks' weights.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::ranks::lines_of;
use common::{max_abs_diff, run_limited, scratch, write, Run};
use mlx_rs::Array;

/// A test's whole job must end within this (generous: on a GPU the first forward of each
/// fixture compiles its kernels, about 40 s a fixture on the lent H200).
const LIMIT: Duration = Duration::from_secs(600);

/// Runs `script` (its `args.out` a fresh folder) alone (`n` = 1) or as `n` ranks; returns the
/// run and the output folder.
fn launch(n: usize, script: &str, sets: &[String]) -> (Run, tempfile::TempDir) {
    let dir = scratch();
    write(dir.path(), "s.rhai", script);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let out_s = out.display().to_string();
    let n_s = n.to_string();
    let mut args: Vec<&str> = if n == 1 {
        vec!["run", "s.rhai"]
    } else {
        vec!["launch", "-n", &n_s, "s.rhai"]
    };
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(["--out", &out_s]);
    let r = run_limited(dir.path(), &args, LIMIT);
    (r, dir)
}

fn tensors(path: &Path) -> BTreeMap<String, Array> {
    Array::load_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// On the default model: logits of a padded batch, captures at blocks on both stages and at
/// the final norm, an attention pattern, steering at a block on each stage, greedy and sampled
/// generation, activation patching at a point on each stage, the logit lens.
const DEFAULT_MODEL: &str = r#"
let m = load("default", #{pipeline: true});
let w = world();
let prompts = ["The Eiffel Tower is in the city of", "Water boils at"];
let logits = forward(m, prompts);
let points = ["hook_embed", "blocks.3.hook_resid_post", "blocks.14.hook_resid_post",
              "blocks.15.hook_resid_pre", "blocks.29.hook_resid_post", "ln_final.hook_normalized"];
let c = capture(m, prompts, #{points: points});
let rc = run_with_cache(m, "The cat sat on the", #{points: ["blocks.20.attn.hook_pattern",
                                                               "blocks.2.mlp.hook_post"]});
let d = direction(m, ["I love this, it is wonderful", "What a great day"],
                     ["I hate this, it is awful", "What a terrible day"], #{layer: 12});
// A script hook runs where its block is held: block 20 is on the second stage.
hook(m, "blocks.20.hook_resid_post", |x| { print(`hook at block 20 ran on rank ${w.rank}`); () });
hook(m, "blocks.12.hook_resid_post", #{op: "add", vector: d.vector, alpha: 40.0});
hook(m, "blocks.22.hook_resid_post", #{op: "add", vector: d.vector, alpha: 40.0});
let steered = generate(m, "I think that movie was", #{max_tokens: 8});
clear_hooks(m);
let plain = generate(m, "I think that movie was", #{max_tokens: 8});
let sampled = generate(m, "Once upon a time", #{max_tokens: 10, temperature: 1.0});
let t = #{logits: logits, pattern: rc.cache["blocks.20.attn.hook_pattern"][0],
          post: rc.cache["blocks.2.mlp.hook_post"][0], rc_logits: rc.logits,
          direction: d.vector};
for p in points { t[p] = c[p]; }
save_tensors(t, `${args.out}/tensors.safetensors`);
// Activation patching at a point on each stage, and the logit lens over every block.
let grid = patch(m, "The Eiffel Tower is in", "The Colosseum is in",
                 #{metric: logit_diff(" Paris", " Rome"),
                   points: ["blocks.2.hook_resid_pre", "blocks.27.hook_attn_out"]});
let lens = logit_lens(m, "The capital of France is", 3);
save_json(#{steered: steered, plain: plain, patch: grid.raw, lens: lens},
          `${args.out}/text.json`);
print(`sampled ${sampled}`);
let tail = 0;
for p in weights(m) { if !p.name.starts_with("model.layers.") { tail += p.bytes; } }
print(`stage ${m.info().pipeline}; bytes ${m.info().bytes}; tail ${tail}`);
"#;

/// The number after `key` on rank `rank`'s `stage ...` line.
fn stage_figure(stdout: &str, rank: usize, key: &str) -> u64 {
    let line = lines_of(stdout, rank)
        .into_iter()
        .find(|l| l.starts_with("stage "))
        .unwrap_or_else(|| panic!("no stage line from rank {rank}: {stdout}"));
    line.split(key)
        .nth(1)
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
}

fn stage_bytes(stdout: &str, rank: usize) -> u64 {
    stage_figure(stdout, rank, "bytes ")
}

#[test]
fn two_stages_of_the_default_model_match_the_whole_model() {
    let (one, one_dir) = launch(1, DEFAULT_MODEL, &[]);
    one.ok();
    let (two, two_dir) = launch(2, DEFAULT_MODEL, &[]);
    two.ok();
    let a = tensors(&one_dir.path().join("out/tensors.safetensors"));
    let b = tensors(&two_dir.path().join("out/tensors.safetensors"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, x) in &a {
        let d = max_abs_diff(x, &b[k]);
        assert!(d < 1e-4, "{k}: 2 stages differ from the whole model by {d}");
    }
    // Nothing above is trivially equal: the batch has two rows of different lengths.
    assert_eq!(a["logits"].shape(), &[2, 9, 49152]);
    let text = |d: &tempfile::TempDir| -> serde_json::Value {
        let p = d.path().join("out/text.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (ta, tb) = (text(&one_dir), text(&two_dir));
    // Texts and token ids equal; numbers within float noise (one process runs its BLAS on two
    // threads, each stage on one, so sums are ordered differently).
    let d = common::json_max_diff(&ta, &tb, "text.json");
    assert!(d < 1e-4, "patching or the logit lens differ by {d}");
    assert_eq!(
        ta["lens"].as_array().map(Vec::len),
        Some(30),
        "{}",
        ta["lens"]
    );
    assert_ne!(ta["steered"], ta["plain"], "the steering changed nothing");
    // One results folder, written by rank 0 only.
    let mut files: Vec<_> = std::fs::read_dir(two_dir.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["tensors.safetensors", "text.json"]);

    // The script hook at block 20 ran on rank 1 only (once per forward there).
    let ran = |rank: usize| {
        lines_of(&two.stdout, rank)
            .iter()
            .filter(|l| l.starts_with("hook at block 20"))
            .count()
    };
    assert_eq!(ran(0), 0, "{}", two.stdout);
    assert!(ran(1) >= 8, "{}", two.stdout);
    assert!(lines_of(&two.stdout, 1)
        .iter()
        .any(|l| l == "hook at block 20 ran on rank 1"));

    // Sampling without a seed: the ranks agree on one seed, so they draw the same tokens.
    let sampled = |rank: usize| {
        lines_of(&two.stdout, rank)
            .into_iter()
            .find(|l| l.starts_with("sampled "))
            .unwrap()
            .to_string()
    };
    assert_eq!(sampled(0), sampled(1));

    // Each stage holds half of the blocks (and the tied embedding, which both need).
    let whole = stage_bytes(&one.stdout, 0);
    let (s0, s1) = (stage_bytes(&two.stdout, 0), stage_bytes(&two.stdout, 1));
    assert!(lines_of(&two.stdout, 0)
        .iter()
        .any(|l| l.starts_with("stage rank 0 of 2: blocks 0-14;")));
    assert!(lines_of(&two.stdout, 1)
        .iter()
        .any(|l| l.starts_with("stage rank 1 of 2: blocks 15-29;")));
    // Every rank keeps the embedding (tied with the head) and the final norm; the 30 blocks,
    // all the same size, split 15 and 15. (Bytes as loaded: f32 on a CPU, 4-bit on a GPU.)
    let tail = stage_figure(&one.stdout, 0, "tail ");
    assert_eq!(tail, stage_figure(&two.stdout, 0, "tail "));
    assert!(tail > 0 && tail < whole / 2, "tail {tail} of {whole}");
    for s in [s0, s1] {
        assert_eq!(s, tail + (whole - tail) / 2, "whole {whole}, stage {s}");
    }
}

/// Every architecture's fixture: logits and greedy generation (through the KV cache, sliding
/// windows included) on 2 stages equal the whole model's.
const FIXTURES: &str = r#"
let names = args.names.split(",");
let t = #{};
let texts = #{};
for name in names {
    let m = load(`${args.root}/${name}`, #{pipeline: true});
    t[name] = forward(m, "a b c d e f g h");
    texts[name] = generate(m, "a b c", #{max_tokens: 10});
    if world().rank == 0 { print(`${name}: ${m.info().pipeline}`); }
}
save_tensors(t, `${args.out}/logits.safetensors`);
save_json(texts, `${args.out}/texts.json`);
"#;

fn fixtures_on(n: usize, names: &str) -> (BTreeMap<String, Array>, serde_json::Value, Run) {
    let root = common::repo().join("tests/fixtures/models");
    let sets = [format!("root={}", root.display()), format!("names={names}")];
    let (r, dir) = launch(n, FIXTURES, &sets);
    r.ok();
    let t = tensors(&dir.path().join("out/logits.safetensors"));
    let p = dir.path().join("out/texts.json");
    let j = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    (t, j, r)
}

#[test]
fn every_architecture_splits_into_stages() {
    let names = "llama,llama-sharded,qwen3,qwen2-mixed,llama-q4,gemma2,phi3,qwen3_moe,gpt_oss,\
                 gpt_oss-mxfp4";
    let (a, ta, _) = fixtures_on(1, names);
    let (b, tb, two) = fixtures_on(2, names);
    for (k, x) in &a {
        let d = max_abs_diff(x, &b[k]);
        assert!(d < 1e-5, "{k}: 2 stages differ from the whole model by {d}");
    }
    assert_eq!(ta, tb);
    assert_eq!(a.len(), names.split(',').count());
    assert!(
        two.stdout.contains("gpt_oss: rank 0 of 2: blocks 0-0"),
        "{}",
        two.stdout
    );

    // Three stages of the three-block Gemma 3 fixture.
    let (a, ta, _) = fixtures_on(1, "gemma3_text");
    let (b, tb, three) = fixtures_on(3, "gemma3_text");
    let d = max_abs_diff(&a["gemma3_text"], &b["gemma3_text"]);
    assert!(d < 1e-5, "gemma3_text: 3 stages differ by {d}");
    assert_eq!(ta, tb);
    assert!(
        three.stdout.contains("rank 0 of 3: blocks 0-0"),
        "{}",
        three.stdout
    );
}

#[test]
fn what_a_pipeline_cannot_do_is_a_clear_error() {
    let llama = common::repo().join("tests/fixtures/models/llama");
    let model = format!("model={}", llama.display());
    // More ranks than blocks: an error (every rank finds it; the first to exit ends the job,
    // so the others may be stopped before they print it).
    let (r, _d) = launch(
        3,
        r#"load(args.model, #{pipeline: true});"#,
        std::slice::from_ref(&model),
    );
    assert_ne!(r.code, Some(0));
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains("pipeline: 2 block(s) cannot be split over 3 ranks"),
        "{said}"
    );
    // Gradients do not cross a stage boundary.
    let script = r#"
let m = load(args.model, #{pipeline: true});
try { grad(m, "a b c", logit_diff(1, 2)); print("grad ran"); }
catch (e) { print(`grad: ${e}`); }
"#;
    let (r, _d) = launch(2, script, std::slice::from_ref(&model));
    let out = r.ok();
    for rank in 0..2 {
        let lines = lines_of(out, rank);
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("grad:") && l.contains("pipeline-sharded")),
            "{out}"
        );
    }
    // A hook that throws on the stage holding its block ends the whole job, at once.
    let script = r#"
let m = load(args.model, #{pipeline: true});
hook(m, "blocks.1.hook_resid_post", |x| { throw "bad hook"; });
forward(m, "a b c");
"#;
    let started = std::time::Instant::now();
    let (r, _d) = launch(2, script, std::slice::from_ref(&model));
    assert_ne!(r.code, Some(0));
    assert!(r.stderr.contains("bad hook"), "{}", r.stderr);
    assert!(r.stderr.contains("rank 1"), "{}", r.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    let (r, _d) = launch(
        1,
        r#"let m = load(args.model, #{pipeline: true}); print(m.info().pipeline);"#,
        &[model],
    );
    assert_eq!(r.ok(), "none");
}

/// LoRA adapters on stages: each rank keeps its own blocks' updates, switchable or fused.
const ADAPTED: &str = r#"
let root = args.root;
let t = #{};
for a in ["llama-mlx", "llama-peft"] {
    let m = load(`${root}/models/llama`, #{pipeline: true, adapter: `${root}/adapters/${a}`});
    t[`${a}-on`] = forward(m, "a b c d e");
    adapter(m, false);
    t[`${a}-off`] = forward(m, "a b c d e");
    let f = load(`${root}/models/llama`, #{pipeline: true, adapter: `${root}/adapters/${a}`,
                                          fuse: true});
    t[`${a}-fused`] = forward(f, "a b c d e");
}
save_tensors(t, `${args.out}/adapted.safetensors`);
"#;

#[test]
fn adapters_split_with_their_blocks() {
    let root = format!("root={}", common::repo().join("tests/fixtures").display());
    let (one, d1) = launch(1, ADAPTED, std::slice::from_ref(&root));
    one.ok();
    let (two, d2) = launch(2, ADAPTED, std::slice::from_ref(&root));
    two.ok();
    let a = tensors(&d1.path().join("out/adapted.safetensors"));
    let b = tensors(&d2.path().join("out/adapted.safetensors"));
    assert_eq!(a.len(), 6);
    for (k, x) in &a {
        let d = max_abs_diff(x, &b[k]);
        assert!(d < 1e-5, "{k}: 2 stages differ from one process by {d}");
    }
    // The adapters change the logits (so the comparison above is not of the base alone).
    for name in ["llama-mlx", "llama-peft"] {
        let d = max_abs_diff(&a[&format!("{name}-on")], &a[&format!("{name}-off")]);
        assert!(d > 1e-3, "{name}: the adapter changes nothing ({d})");
    }
}
