//! Probes, directions and statistics as scripts use them, on the default model: a sentiment
//! probe that must find the (well-known, easy) sentiment signal, its report, directions and
//! predictions, multi-class and regression probes, probes from a Cache, cosine matrices,
//! reproducibility (the same script twice writes identical JSON) and clear errors.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{expect_err, expect_ok, floats, mlx_lock as lock};

use mlxi::script::Context;
use rhai::{Dynamic, Map};

fn eval(code: &str) -> Result<Dynamic, String> {
    let code = format!("import \"datasets\" as data;\nlet m = load();\n{code}");
    common::script(Context::in_current_dir(), &code)
}

#[track_caller]
fn ok(code: &str) -> Map {
    expect_ok(eval(code)).cast::<Map>()
}

#[track_caller]
fn err(code: &str) -> String {
    expect_err(eval(code))
}

fn f(m: &Map, k: &str) -> f64 {
    let v = &m[k];
    v.as_float()
        .or_else(|_| v.as_int().map(|i| i as f64))
        .unwrap_or_else(|_| panic!("{k} is not a number: {v:?}"))
}

#[test]
fn a_sentiment_probe_finds_the_signal() {
    let _mlx = lock();
    let r = ok(r#"
        let s = data::sentiment();
        let p = probe(m, s.positive, s.negative);
        let best = p.best_layer;
        let d = direction(p, best);
        let md = direction(m, s.positive, s.negative, #{layer: best});
        #{
            acc: p.accuracy, std: p.std, layers: p.layers, best: best, best_acc: p.best_accuracy,
            chance: p.chance, n: p.n, per_class: p.n_per_class, kind: p.kind, report: report(p),
            summary: `${p}`, method: d.method, d_layer: d.layer, d_norm: norm(d.vector),
            cos_mean_diff: cosine(d, md),
            happy: predict(p, "What a wonderful, happy surprise. I love it!"),
            sad: predict(p, "This was a horrible, miserable experience."),
            both: predict(p, ["What a lovely day.", "What an awful day."], best),
            folds: p.fold_of, json_keys: keys(to_map(p)),
        }
    "#);
    let acc = floats(&r["acc"]);
    assert_eq!(acc.len(), 30);
    assert_eq!(
        floats(&r["layers"]),
        (0..30).map(f64::from).collect::<Vec<_>>()
    );
    // Sentiment of these sentences is linearly readable in the middle of the network.
    assert!(f(&r, "best_acc") >= 0.95, "{acc:?}");
    let best = f(&r, "best") as usize;
    assert!((5..30).contains(&best), "best layer {best}");
    assert_eq!(acc[best], f(&r, "best_acc"));
    assert!(acc.iter().all(|&a| a <= acc[best]));
    assert!(floats(&r["std"]).iter().all(|s| s.is_finite() && *s >= 0.0));
    assert_eq!((f(&r, "chance"), f(&r, "n")), (0.5, 120.0));
    let per_class = r["per_class"].clone().cast::<Map>();
    assert_eq!(per_class["positive"].as_int().unwrap(), 60);
    assert_eq!(per_class["negative"].as_int().unwrap(), 60);
    assert_eq!(r["kind"].to_string(), "logistic");
    let report = r["report"].to_string();
    assert_eq!(report.matches("  layer ").count(), 30, "{report}");
    for want in [
        "logistic probe on SmolLM2-135M-Instruct",
        "(negative 60, positive 60)",
        "5-fold stratified cross-validation, seed 0",
        "chance 0.500",
        "← best",
        &format!("best: layer {best} accuracy"),
    ] {
        assert!(report.contains(want), "missing {want:?} in\n{report}");
    }
    assert!(r["summary"]
        .to_string()
        .starts_with("Probe(logistic, 30 layers, best blocks."));
    assert_eq!(r["method"].to_string(), "probe");
    assert_eq!(f(&r, "d_layer") as usize, best);
    assert!((f(&r, "d_norm") - 1.0).abs() < 1e-5);
    // The probe's direction and the difference of means agree in sign and broadly in angle.
    assert!(f(&r, "cos_mean_diff") > 0.2, "{}", f(&r, "cos_mean_diff"));
    assert!(
        f(&r, "happy") > 0.9 && f(&r, "sad") < 0.1,
        "{} {}",
        f(&r, "happy"),
        f(&r, "sad")
    );
    let both = floats(&r["both"]);
    assert!(both[0] > 0.5 && both[1] < 0.5, "{both:?}");
    // Stratified: each of the 5 folds holds 12 positives (first 60) and 12 negatives.
    let folds = floats(&r["folds"]);
    for k in 0..5 {
        let pos = folds[..60].iter().filter(|&&x| x == k as f64).count();
        let neg = folds[60..].iter().filter(|&&x| x == k as f64).count();
        assert_eq!((pos, neg), (12, 12), "fold {k}");
    }
    let keys: Vec<String> = r["json_keys"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(|k| k.to_string())
        .collect();
    for k in [
        "model",
        "point",
        "n",
        "seed",
        "folds",
        "layers",
        "score",
        "std",
        "best_layer",
        "n_per_class",
        "fold_of",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} missing from {keys:?}");
    }
}

#[test]
fn multi_class_regression_and_cache_probes() {
    let _mlx = lock();
    let r = ok(r#"
        let topics = [
            ["The striker scored a goal in the final minute.", "The tennis match went to five sets.",
             "Our team won the basketball game.", "The runner broke the marathon record.",
             "The goalkeeper saved a penalty.", "The cyclists raced up the mountain.",
             "He hit a home run in the ninth inning.", "The swimmer won gold in the relay."],
            ["I baked bread with flour and butter.", "The soup needs more salt and pepper.",
             "She fried the onions and garlic.", "We ate pasta with tomato sauce.",
             "The chef grilled the fish with lemon.", "Add sugar and eggs to the batter.",
             "The curry was spicy and full of rice.", "He chopped carrots for the stew."],
            ["It will rain heavily tomorrow morning.", "A cold wind blew snow across the hills.",
             "The forecast says sunny skies all week.", "Thunderstorms are expected tonight.",
             "Fog covered the valley at dawn.", "The temperature dropped below freezing.",
             "A heatwave is coming this weekend.", "Hail fell during the afternoon storm."]
        ];
        let texts = topics[0] + topics[1] + topics[2];
        let labels = topics[0].map(|x| 0) + topics[1].map(|x| 1) + topics[2].map(|x| 2);
        let mc = probe(m, texts, labels, #{layers: [8, 16], folds: 4,
                                           classes: ["sports", "food", "weather"]});
        let nums = [];
        let values = [];
        for i in 0..24 { let v = 1 + i * 4; nums.push(`I counted ${v} birds.`); values.push(v * 1.0); }
        let rg = probe(m, nums, values, #{layers: [10], folds: 4, c: [0.01, 0.1, 1.0]});
        let cache = capture(m, texts, #{points: ["blocks.8.hook_resid_post", "blocks.16.hook_resid_post"]});
        let mc2 = probe(m, cache, labels, #{layers: [8, 16], folds: 4});
        #{
            mc_kind: mc.kind, mc_acc: mc.accuracy, mc_classes: mc.classes, mc_chance: mc.chance,
            mc_pred: predict(mc, "The chef baked a cake with cream.", 16),
            mc_dir: direction(mc, 16, "food").method,
            rg_kind: rg.kind, rg_metric: rg.metric, rg_score: rg.best_score, rg_c: rg.c,
            rg_pred: predict(rg, "I counted 50 birds."),
            cache_same: mc2.score == mc.score,
        }
    "#);
    assert_eq!(r["mc_kind"].to_string(), "multinomial");
    let acc = floats(&r["mc_acc"]);
    assert!(acc[1] >= 0.85, "topic accuracy {acc:?}");
    assert!((f(&r, "mc_chance") - 1.0 / 3.0).abs() < 1e-12);
    let pred = r["mc_pred"].clone().cast::<Map>();
    let p = |k: &str| pred[k].as_float().unwrap();
    assert!((p("sports") + p("food") + p("weather") - 1.0).abs() < 1e-9);
    assert!(
        p("food") > p("sports") && p("food") > p("weather"),
        "{pred:?}"
    );
    assert_eq!(r["mc_dir"].to_string(), "probe");
    assert_eq!(r["rg_kind"].to_string(), "ridge");
    assert_eq!(r["rg_metric"].to_string(), "r2");
    assert!(f(&r, "rg_score") > 0.5, "R² {}", f(&r, "rg_score"));
    assert!([0.01, 0.1, 1.0].contains(&floats(&r["rg_c"])[0]));
    assert!(
        (f(&r, "rg_pred") - 50.0).abs() < 30.0,
        "{}",
        f(&r, "rg_pred")
    );
    assert!(r["cache_same"].as_bool().unwrap());
}

#[test]
fn directions_across_layers_and_cosine_matrices() {
    let _mlx = lock();
    let r = ok(r#"
        let s = data::sentiment();
        let pos = s.positive.extract(0, 12);
        let neg = s.negative.extract(0, 12);
        let ds = directions(m, pos, neg, #{layers: [5, 10, -1]});
        let one = direction(m, pos, neg, #{layer: 10});
        let pca = direction(m, pos, neg, #{layer: 10, method: "pca"});
        let c = capture(m, pos + neg, #{points: ["blocks.10.hook_resid_post"]});
        let x = c["blocks.10.hook_resid_post"];
        let proj = to_array(dot(x, pca.vector));
        #{
            layers: ds.map(|d| d.layer), cm: cosine_matrix(ds), same: cosine(ds[1], one),
            mixed: cosine_matrix([one, pca, one.vector]), proj: proj,
        }
    "#);
    assert_eq!(floats(&r["layers"]), vec![5.0, 10.0, 29.0]);
    let cm: Vec<Vec<f64>> = r["cm"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    for (i, row) in cm.iter().enumerate() {
        assert!((row[i] - 1.0).abs() < 1e-5);
        for (j, x) in row.iter().enumerate() {
            assert!((x - cm[j][i]).abs() < 1e-9);
        }
    }
    assert!((f(&r, "same") - 1.0).abs() < 1e-5);
    let mixed: Vec<Vec<f64>> = r["mixed"]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    assert!((mixed[0][2] - 1.0).abs() < 1e-5);
    // PCA's sign: positives project higher than negatives on average.
    let proj = floats(&r["proj"]);
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    assert!(mean(&proj[..12]) > mean(&proj[12..]), "{proj:?}");
}

#[test]
fn probe_errors_are_clear() {
    let _mlx = lock();
    let cases = [
        (
            r#"probe(m, ["a", "b", "c"], [1, 1, 1])"#,
            "every label is \"1\"; a probe needs at least two classes",
        ),
        (
            r#"probe(m, ["a", "b", "c", "d"], [0, 1, 0, 1])"#,
            "class \"0\" has 2 examples, fewer than the 5 folds",
        ),
        (
            r#"probe(m, ["a", "b", "c", "d"], [0, 1, 0, 1, 1], #{folds: 2})"#,
            "4 inputs but 5 labels",
        ),
        (
            r#"probe(m, ["a", "b"], ["c", "d"], #{fold: 2})"#,
            "unknown option 'fold' (did you mean 'folds'?)",
        ),
        (
            r#"probe(m, ["a", "b"], ["c", "d"], #{folds: 2, layers: [40]})"#,
            "layer 40 is out of range",
        ),
        (
            r#"probe(m, ["a", "b"], ["c", "d"], #{folds: 2, c: -1})"#,
            "c must be a positive number",
        ),
        (
            r#"probe(m, ["a", "b"], ["c", "d"], #{folds: 2, point: "hook_nope"})"#,
            "not a per-layer hook point",
        ),
        (
            r#"probe(m, ["a", "b"], ["c", "d"], #{folds: 1})"#,
            "folds must be at least 2",
        ),
        (
            r#"probe(m, ["a", "b", "c", "d"], [0.5, 1.5, 2.5, 3.5], #{folds: 2, layers: [1]}).accuracy"#,
            "regression probe has no accuracy",
        ),
        (
            r#"direction(probe(m, ["a", "b"], ["c", "d"], #{folds: 2, layers: [1]}), 2)"#,
            "no layer 2; it was trained at layers 1",
        ),
        (
            r#"probe(m, ["a", "b"], 5)"#,
            "got integer as the second argument",
        ),
    ];
    for (code, want) in cases {
        let e = err(code);
        assert!(e.contains(want), "{code}\n  wanted {want:?}\n  got {e}");
    }
}

#[test]
fn the_same_script_twice_writes_identical_json() {
    let dir = common::scratch();
    let script = dir.path().join("study.rhai");
    std::fs::write(
        &script,
        r#"
        import "datasets" as data;
        let m = load();
        let s = data::sentiment();
        let p = probe(m, s.positive.extract(0, 20), s.negative.extract(0, 20),
                      #{layers: [3, 9, 15], seed: args.seed, c: [0.1, 1.0]});
        let d = direction(m, s.positive.extract(0, 20), s.negative.extract(0, 20), #{layer: 9, method: "pca"});
        save_json(#{probe: p, direction: d, ci: stats::bootstrap_ci(p.fold_scores[1], #{seed: args.seed}),
                    perm: stats::permutation(p.fold_scores[2], p.fold_scores[0], #{seed: args.seed}),
                    binom: stats::binomial(17, 20, 0.5)}, `${args.out}.json`);
        "#,
    )
    .unwrap();
    let run = |seed: &str, out: &str| {
        common::run_with_models(
            dir.path(),
            &[
                "study.rhai",
                "--set",
                &format!("seed={seed}"),
                "--set",
                &format!("out={out}"),
            ],
        )
        .ok()
        .to_string();
        std::fs::read_to_string(dir.path().join(format!("{out}.json"))).unwrap()
    };
    let a = run("7", "a");
    let b = run("7", "b");
    let c = run("8", "c");
    assert_eq!(a, b, "same seed, same inputs: the JSON must be identical");
    assert_ne!(a, c, "another seed must shuffle the folds differently");
    let v: serde_json::Value = serde_json::from_str(&a).unwrap();
    assert_eq!(v["probe"]["seed"], 7);
    assert_eq!(v["probe"]["layers"], serde_json::json!([3, 9, 15]));
    assert_eq!(v["direction"]["method"], "pca");
    assert_eq!(v["direction"]["vector"].as_array().unwrap().len(), 576);
    assert_eq!(v["ci"]["seed"], 7);
    assert_eq!(v["binom"]["k"], 17);
    // scipy.stats.binomtest(17, 20, 0.5).pvalue
    assert!((v["binom"]["p_value"].as_f64().unwrap() - 0.0025768280029296875).abs() < 1e-12);
}
