//! Every experiment in scripts/ runs end to end on the default model in its quick mode
//! (`--set quick=true`), writes its results and plots, and the results say what the recipe
//! promises. Also: every script in scripts/ is covered by some test (a new script without one
//! fails here), and the swap recipe's judging helpers on hand-written cases.

mod common;

use std::path::Path;

use serde_json::Value;

/// Runs scripts/NAME.rhai in quick mode with `out` in a scratch folder; returns the folder.
/// One script at a time across the file: each MLX process already uses every core through its
/// BLAS threads, and two at once on CI's two cores only compete (as tests/docs_run.rs found).
fn run_script(name: &str) -> tempfile::TempDir {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = common::scratch();
    let script = common::repo().join("scripts").join(format!("{name}.rhai"));
    let r = common::run_with_models(
        &common::repo(),
        &[
            script.to_str().unwrap(),
            "--set",
            "quick=true",
            "--set",
            &format!("out={}", out.path().display()),
        ],
    );
    r.ok();
    out
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[track_caller]
fn svg(path: &Path, title_part: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains("<svg"), "{} is not SVG", path.display());
    assert!(
        text.contains(title_part),
        "{} lacks {title_part:?}",
        path.display()
    );
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn every_script_is_tested() {
    let tested = [
        "sentiment",
        "swap",
        "sycophancy",
        "introspection",
        "concepts",
        "sweep", // here
        "lens",
        "attention",
        "anatomy", // tests/recipes_plots.rs
        "steering",
        "tensors",  // tests/cli.rs, tests/hooks.rs
        "patching", // here
        "finetune", // here
        "experts",  // here
        "sae",      // here
    ];
    for entry in std::fs::read_dir(common::repo().join("scripts")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".rhai") {
            assert!(tested.contains(&stem), "scripts/{name} has no test");
        }
    }
}

#[test]
fn sentiment_probes_and_steers() {
    let out = run_script("sentiment");
    let v = json(&out.path().join("sentiment.json"));
    let p = &v["probe"];
    assert_eq!(p["kind"], "logistic");
    assert!(f(&p["best_score"]) >= 0.95, "{}", p["best_score"]);
    // Adding the positive-minus-negative direction makes the outputs read more positive.
    let cells = v["steering"]["cells"].as_array().unwrap();
    let at = |a: f64| f(&cells.iter().find(|c| f(&c["alpha"]) == a).unwrap()["value"]);
    assert!(
        at(1.0) > at(0.0) + 0.1,
        "steered {} vs plain {}",
        at(1.0),
        at(0.0)
    );
    svg(
        &out.path().join("accuracy.svg"),
        "Sentiment probe accuracy by layer",
    );
    svg(&out.path().join("steer/sweep.svg"), "sentiment direction");
    assert!(out.path().join("random/sweep.json").is_file());
}

#[test]
fn swap_counts_only_real_swaps() {
    let out = run_script("swap");
    let v = json(&out.path().join("swap.json"));
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 12);
    let kept = items
        .iter()
        .filter(|i| i["baseline_judged"] == "expected")
        .count();
    assert_eq!(v["summary"]["kept"].as_u64().unwrap() as usize, kept);
    let swapped = items
        .iter()
        .filter(|i| i["baseline_judged"] == "expected" && i["steered_judged"] == "swapped")
        .count();
    assert_eq!(v["summary"]["swapped"].as_u64().unwrap() as usize, swapped);
    if kept < 6 {
        assert!(
            v["warning"].as_str().unwrap().contains("QUESTIONS")
                || v["warning"].as_str().unwrap().contains("NO SWAP")
        );
    }
    assert_eq!(v["layers"].as_array().unwrap().len(), 3);
    assert_eq!(v["random"].as_array().unwrap().len(), 2);
    // "The capital of France is Paris." is a control the model gets right.
    assert_eq!(
        v["controls"][0]["baseline_ok"], true,
        "{}",
        v["controls"][0]
    );
    if kept > 0 {
        svg(&out.path().join("swap.svg"), "swap on SmolLM2");
        let p = f(&v["summary"]["test"]["p_value"]);
        assert!((0.0..=1.0).contains(&p));
    }
}

#[test]
fn swap_judging_needs_the_other_concept() {
    let r = common::eval(
        r#"import "swap" as swap;
        [swap::names("The answer is Green.", "green"), swap::names("greenish", "green"),
         swap::names("8 legs", "8|eight"), swap::judge("It is red.", "green", "red"),
         swap::judge("It is a colour.", "green", "red"), swap::judge("green or red", "green", "red"),
         swap::judge("Grass is green", "green", "red")]"#,
    );
    assert_eq!(
        r.ok(),
        r#"[true, false, true, "swapped", "neither", "both", "expected"]"#
    );
}

#[test]
fn sycophancy_probes_and_controls() {
    let out = run_script("sycophancy");
    let v = json(&out.path().join("sycophancy.json"));
    for key in ["sya_vs_ga", "sya_vs_neutral", "ga_vs_neutral"] {
        let p = &v[format!("probe_{key}")];
        assert_eq!(p["n"], 24, "{key}");
        assert_eq!(p["folds"], 3);
        assert!(f(&p["best_score"]) > 0.5, "{key}");
    }
    let layers = v["cosine_sya_ga"]["layers"].as_array().unwrap().len();
    assert_eq!(
        v["cosine_sya_ga"]["cosine"].as_array().unwrap().len(),
        layers
    );
    for k in ["third_party", "clinical", "irrelevant", "bare"] {
        let rate = f(&v["controls"][k]["rate"]);
        assert!((0.0..=1.0).contains(&rate), "{k}");
    }
    svg(&out.path().join("sycophancy.svg"), "Sycophancy conditions");
    svg(&out.path().join("cosine.svg"), "one direction");
}

#[test]
fn introspection_records_windows_and_controls() {
    let out = run_script("introspection");
    let v = json(&out.path().join("introspection.json"));
    assert_eq!(v["controls"]["n"], 2);
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 4); // 2 concepts x 1 strength x 2 windows
    let windows: Vec<&str> = trials
        .iter()
        .map(|t| t["window"].as_str().unwrap())
        .collect();
    assert_eq!(windows, ["prompt", "generated", "prompt", "generated"]);
    for t in trials {
        assert_eq!(t["answers"].as_array().unwrap().len(), 2);
        assert!(t["detected"].as_u64().unwrap() <= 2);
    }
    assert!(v["summary"]["by_window"]["prompt"]["vs_false_positives"]["p_value"].is_number());
    svg(&out.path().join("introspection.svg"), "injected thought");
}

#[test]
fn concepts_library_round_trips() {
    let out = run_script("concepts");
    let v = json(&out.path().join("concepts.json"));
    let lib = v["library"].as_object().unwrap();
    assert_eq!(lib.len(), 3);
    for (name, d) in lib {
        assert_eq!(d["layer"], 15, "{name}");
        assert_eq!(d["vector"].as_array().unwrap().len(), 576);
    }
    let m = v["cosine"]["matrix"].as_array().unwrap();
    for (i, row) in m.iter().enumerate() {
        assert!((f(&row[i]) - 1.0).abs() < 1e-5);
    }
    assert!(out.path().join("concepts.safetensors").is_file());
    svg(&out.path().join("cosine.svg"), "cosine similarity");
}

#[test]
fn sweep_streams_cells() {
    let out = run_script("sweep");
    let v = json(&out.path().join("sweep.json"));
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0]["layer"], 6);
    assert_eq!(cells[1]["alpha"], 6.0);
    assert!(v["best"]["value"].is_number());
    assert_eq!(v["settings"]["direction"]["layer"], 6);
    assert_eq!(v["settings"]["window"], "all");
    svg(
        &out.path().join("sweep.svg"),
        "add along mean_diff direction",
    );
}

#[test]
fn patching_finds_the_fact_at_the_subject_then_the_last_token() {
    let out = run_script("patching");
    let j = json(&out.path().join("patching.json"));
    let g = &j["grids"][0];
    assert_eq!(g["point"], "hook_resid_pre");
    let grid = g["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 30);
    assert!(grid.iter().all(|r| r.as_array().unwrap().len() == 6));
    assert!(f(&g["clean"]) - f(&g["corrupted"]) > 5.0, "{g}");
    // The subject's tokens (positions 1-3: " E" "iffel" " Tower") carry the fact in the early and
    // middle layers, the last token (5) in the late ones; the last token restores nothing
    // before block 0 and everything before the last block.
    let best: Vec<i64> = g["best_position"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(best[..12].iter().all(|p| (1..=3).contains(p)), "{best:?}");
    assert!(best[26..].iter().all(|&p| p == 5), "{best:?}");
    let at = |l: usize, p: usize| f(&grid[l][p]);
    assert!(at(0, 5).abs() < 0.05 && at(29, 5) > 0.9, "{g}");
    svg(
        &out.path().join("hook_resid_pre.svg"),
        "share of logit_diff",
    );
    // The attribution half: the estimated grid, its correlation with the real one (recomputed
    // here from the two grids in the results file), and its plots.
    let est = g["attribution_grid"].as_array().unwrap();
    assert_eq!(est.len(), 30);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (r, e) in grid.iter().zip(est) {
        for (x, y) in r.as_array().unwrap().iter().zip(e.as_array().unwrap()) {
            xs.push(f(x));
            ys.push(f(y));
        }
    }
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let r = cov / (vx * vy).sqrt();
    assert!(
        (f(&g["pearson"]) - r).abs() < 1e-9,
        "{r} vs {}",
        g["pearson"]
    );
    assert!(r > 0.6, "{r}");
    // The last token's late-layer cells, where patching restores nearly all, are estimated so.
    assert!(f(&est[29][5]) > 0.6, "{}", est[29][5]);
    svg(
        &out.path().join("hook_resid_pre_attribution.svg"),
        "attribution patching",
    );
    svg(
        &out.path().join("hook_resid_pre_scatter.svg"),
        "attribution vs activation patching",
    );
}

/// The finetune recipe on the default model with the test adapter (tests/fixtures/adapters/
/// smollm2-peft): a change at every layer, concept cosines, plots, and the KL of the first
/// prompt's next token equal to one computed here from the model's logits with the adapter off
/// and on (through the Rust API, not the recipe's tensor code).
#[test]
fn finetune_compares_base_and_adapter() {
    let out = run_script("finetune");
    let v = json(&out.path().join("finetune.json"));
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    for l in layers {
        assert!(f(&l["relative"]) > 0.01, "{l}");
        let c = f(&l["cosines"]["positive"]);
        assert!((-1.0..=1.0).contains(&c), "{l}");
        assert!((-1.0..=1.0).contains(&f(&l["consistency"])), "{l}");
    }
    let kl = v["kl"]["per_prompt"].as_array().unwrap();
    assert_eq!(kl.len(), 3);
    assert!(v["adapter"].as_str().unwrap().contains("peft LoRA, rank 4"));
    svg(&out.path().join("finetune.svg"), "What the adapter changes");
    svg(&out.path().join("concepts.svg"), "Concept directions");

    let dir = common::repo().join("tests/fixtures/adapters/smollm2-peft");
    let opts = mlxi::model::LoadOptions {
        dtype: Some(mlx_rs::Dtype::Float32),
        dequantize: Some(true),
        adapter: Some(dir),
        ..Default::default()
    };
    let mut m = mlxi::model::Model::load_default(&opts).unwrap();
    let ids = m.encode("Tell me about your day.", true).unwrap();
    let last = |m: &mut mlxi::model::Model| -> Vec<f64> {
        let logits = m.forward_ids(std::slice::from_ref(&ids)).unwrap();
        let all = logits.as_slice::<f32>();
        let row = &all[all.len() - m.info.vocab as usize..];
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row.iter().map(|&x| x as f64 - max - z.ln()).collect()
    };
    let tuned = last(&mut m);
    m.set_adapter(false).unwrap();
    let base = last(&mut m);
    let want: f64 = tuned
        .iter()
        .zip(&base)
        .map(|(t, b)| t.exp() * (t - b))
        .sum();
    let got = f(&kl[0]);
    assert!(
        (got - want).abs() < 1e-3 * want.max(1.0),
        "recipe {got}, Rust {want}"
    );
}

/// The experts recipe on the tiny Qwen3-MoE fixture, against mlx-lm
/// (tests/fixtures/models/qwen3_moe/experts_golden.json, from
/// tests/reference/moe_router_golden.py): the same token counts per expert, the same most
/// used and control experts, the same losses with and without the bans.
#[test]
fn experts_usage_and_bans_match_mlx_lm() {
    let out = run_script("experts");
    let v = json(&out.path().join("experts.json"));
    let g = json(&common::repo().join("tests/fixtures/models/qwen3_moe/experts_golden.json"));
    let u = &v["usage"];
    assert_eq!(u["n_tokens"], g["n_tokens"]);
    assert_eq!(u["layers"], serde_json::json!([0, 1]));
    let close = |a: &Value, b: &Value, what: &str| {
        assert!((f(a) - f(b)).abs() < 1e-4, "{what}: {a} vs mlx-lm {b}");
    };
    close(&v["ban"]["base"], &g["base_loss"], "base loss");
    for (i, gl) in g["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(u["counts"][i], gl["counts"], "layer {i} counts");
        assert_eq!(u["most_used"][i], gl["most_used"], "layer {i}");
        let share: f64 = u["share"][i].as_array().unwrap().iter().map(f).sum();
        assert!(
            (share - 2.0).abs() < 1e-5,
            "layer {i}: shares sum to {share}, not k"
        );
        let row = &v["ban"]["rows"][i];
        assert_eq!(row["expert"], gl["most_used"]);
        assert_eq!(row["control_expert"], gl["control_expert"]);
        close(&row["loss"], &gl["loss"], "banned loss");
        close(&row["control_loss"], &gl["control_loss"], "control loss");
    }
    // Preferred tokens: per expert, as many routings as usage counted at that layer.
    let p = &v["prefers"];
    let layer = p["layer"].as_u64().unwrap() as usize;
    for (e, x) in p["experts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(x["count"], u["counts"][layer][e], "expert {e}");
        let tokens = x["tokens"].as_array().unwrap();
        assert!(!tokens.is_empty() && tokens.len() <= 5);
        assert!(tokens
            .windows(2)
            .all(|w| f(&w[0]["count"]) >= f(&w[1]["count"])));
    }
    svg(&out.path().join("usage.svg"), "Expert usage");
    svg(&out.path().join("ban.svg"), "expert is banned");
}

/// The sparse-autoencoder recipe in quick mode on the default model: a TopK SAE trained at
/// `blocks.15.hook_resid_post` (150 steps) reconstructs the test texts with L0 = k, its loss
/// curve falls, the saved SAE loads back, and the plots and feature lists are written.
#[test]
fn sae_trains_measures_and_saves() {
    let out = run_script("sae");
    let v = json(&out.path().join("sae.json"));
    assert_eq!(v["point"], "blocks.15.hook_resid_post");
    let t = &v["training"];
    assert!(f(&t["last_loss"]) < 0.1 * f(&t["first_loss"]), "{t}");
    assert!(f(&t["heldout_explained_variance"]) > 0.5, "{t}");
    let q = &v["quality"];
    assert!((f(&q["l0"]) - 32.0).abs() < 1e-3, "{q}");
    assert!(f(&q["explained_variance"]) > 0.4, "{q}");
    assert!(
        f(&q["loss_spliced"]).is_finite() && f(&q["loss"]).is_finite(),
        "{q}"
    );
    let counts: f64 = v["density"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .sum();
    assert_eq!(counts, 576.0);
    let feats = v["features"].as_array().unwrap();
    assert_eq!(feats.len(), 3);
    for ft in feats {
        let top = ft["top"].as_array().unwrap();
        assert!(!top.is_empty());
        assert!(top[0]["context"].as_str().unwrap().contains("[["), "{ft}");
    }
    svg(&out.path().join("loss.svg"), "SAE training loss");
    svg(&out.path().join("density.svg"), "Feature density");
    let cfg = json(&out.path().join("sae/cfg.json"));
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["k"], 32);
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.15.hook_resid_post");
}
