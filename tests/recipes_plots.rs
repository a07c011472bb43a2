//! Charts, progress bars and streamed results from scripts, the model-inspection verbs, and
//! the lens, attention and anatomy recipes run end to end (their scripts in smoke mode) on
//! the default model.

mod common;
use common::*;

use std::path::Path;

use serde_json::Value;

/// `mlxi run FILE ARGS...` with the default model available.
fn run_with_model(file: &Path, args: &[&str]) -> Run {
    let home = home_with_models();
    mlxi(home.path())
        .arg("run")
        .arg(file)
        .args(args)
        .output()
        .expect("mlxi runs")
        .into()
}

/// `mlxi run` of a script written to `dir/name`.
fn run_script(dir: &Path, name: &str, code: &str) -> Run {
    let path = write(dir, name, code);
    run_in(dir, &[path.to_str().unwrap()])
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn count(s: &str, pat: &str) -> usize {
    s.matches(pat).count()
}

#[test]
fn charts_are_written_where_the_script_says() {
    let dir = scratch();
    let out = run_script(
        dir.path(),
        "charts.rhai",
        r#"
        let a = plot::line(#{train: [0.5, 0.7, 0.9], test: [0.5, 0.6, 0.8]},
            #{path: "out/line.svg", title: "Probe accuracy", x_label: "layer", hline: 0.5,
              hline_label: "chance", x: [10, 20, 30]});
        let b = plot::bars(["plain", "steered"], [0.1, 0.7],
            #{path: "out/bars.svg", title: "Rate", err: [0.02, 0.05]});
        let c = plot::heatmap([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]],
            #{path: "out/heat.svg", title: "Heat", rows: ["r0", "r1"], cols: ["a", "b", "c"],
              annotate: [["x", "y", "z"], ["u", "v", "w"]], min: 0.0, max: 1.0});
        let d = plot::heatmap(tensor([[1, 2], [3, 4]]), #{path: "out/tensor.svg"});
        print(a); print(b); print(c); print(d);
        "#,
    );
    let printed: Vec<&str> = out.ok().lines().collect();
    let base = dir.path().canonicalize().unwrap();
    assert_eq!(
        printed,
        ["line", "bars", "heat", "tensor"]
            .map(|n| base.join(format!("out/{n}.svg")).display().to_string())
    );
    let line = read(&base.join("out/line.svg"));
    assert!(line.starts_with("<svg") && line.trim_end().ends_with("</svg>"));
    for t in [
        "Probe accuracy",
        "train",
        "test",
        "chance",
        "layer",
        ">\n30\n<",
    ] {
        assert!(line.contains(t), "{t} missing from the line chart");
    }
    // One 3-point line per series, in the first two colours, and a marker per point.
    for colour in ["#1F77B4", "#FF7F0E"] {
        let lines: Vec<&str> = line
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(colour))
            .filter(|l| l.split("points=").nth(1).map(|p| p.matches(',').count()) == Some(3))
            .collect();
        assert_eq!(lines.len(), 1, "{colour}");
    }
    assert_eq!(count(&line, "<circle"), 6);
    let bars = read(&base.join("out/bars.svg"));
    assert!(bars.contains("Rate") && bars.contains("steered"));
    let heat = read(&base.join("out/heat.svg"));
    assert!(heat.contains("Heat"));
    // Background, 6 cells, a colour bar of 48 steps and its frame.
    assert_eq!(count(&heat, "<rect"), 1 + 6 + 48 + 1);
    for t in ["r0", "r1", ">\nc\n<", ">\nw\n<"] {
        assert!(heat.contains(t), "{t} missing from the heatmap");
    }
    let tensor = read(&base.join("out/tensor.svg"));
    assert_eq!(count(&tensor, "<rect"), 1 + 4 + 48 + 1);
}

#[test]
fn chart_errors_are_clear() {
    let cases = [
        (
            r#"plot::line([1, 2], #{path: "a.svg", titel: "x"})"#,
            "plot::line: unknown option 'titel' (did you mean 'title'?)",
        ),
        (
            r#"plot::line([1, 2], #{title: "x"})"#,
            "plot::line: option 'path' is required",
        ),
        (
            r#"plot::bars(["a"], [1], #{path: "a.png"})"#,
            "plot::bars: charts are written as SVG: give a path ending in .svg",
        ),
        (
            r#"plot::line([], #{path: "a.svg"})"#,
            "plot::line: the series is empty",
        ),
        (
            r#"plot::line(#{acc: [0.5, 0.0 / 0.0]}, #{path: "a.svg"})"#,
            "plot::line: series \"acc\": y[1] is NaN, not a finite number",
        ),
        (
            r#"plot::heatmap([[1, 2], [3]], #{path: "a.svg"})"#,
            "plot::heatmap: the matrix is ragged: row 0 has 2 values, row 1 has 1",
        ),
        (
            r#"plot::heatmap([], #{path: "a.svg"})"#,
            "plot::heatmap: the matrix is empty",
        ),
        (
            r#"plot::heatmap([[1, "x"]], #{path: "a.svg"})"#,
            "plot::heatmap: row 0: element [1] is \"x\" (string), not a number",
        ),
        (
            r#"plot::bars(["a", "b"], [1], #{path: "a.svg"})"#,
            "plot::bars: 2 labels for 1 values",
        ),
        (
            r#"plot::text_bars(["a"], [1], #{widht: 3})"#,
            "plot::text_bars: unknown option 'widht'",
        ),
    ];
    for (code, want) in cases {
        let dir = scratch();
        let out = run_script(dir.path(), "bad.rhai", &format!("\n{code};\n"));
        let err = out.failed();
        assert!(err.contains(want), "{code}\n{err}");
        // The error points at the call.
        assert!(err.contains("bad.rhai:2:"), "{code}\n{err}");
    }
    // A NaN heatmap cell is drawn blank, not an error.
    let dir = scratch();
    let out = run_script(
        dir.path(),
        "nan.rhai",
        r#"plot::heatmap([[1.0, 0.0 / 0.0]], #{path: "nan.svg"});"#,
    );
    out.ok();
    assert_eq!(count(&read(&dir.path().join("nan.svg")), "#EBEBEB"), 1);
}

#[test]
fn terminal_charts() {
    let dir = scratch();
    let out = run_script(
        dir.path(),
        "text.rhai",
        r#"
        print(plot::text_bars(["a", "bb"], [1.0, 0.5], #{width: 8}));
        print(plot::text_heatmap([[0.0, 1.0], [0.5, 0.25]], #{rows: ["x", "y"]}));
        print(plot::sparkline([1, 2, 3, 4, 5, 6, 7, 8]));
        "#,
    );
    assert_eq!(
        out.ok(),
        "a  ████████ 1\nbb ████     0.5\nx ··██\ny ▒▒░░\n  ·· 0 … ██ 1\n▁▂▃▄▅▆▇█"
    );
}

#[test]
fn results_stream_into_valid_json() {
    let dir = scratch();
    let out = run_script(
        dir.path(),
        "r.rhai",
        r#"
        let r = results("out/r.json");
        r.set("model", "m");
        let p = progress(5, "work");
        for i in 0..5 {
            let n = r.push("layers", #{layer: i, v: tensor([1.0, 2.0])});
            p.tick();
            print(`${n}`);
        }
        p.finish();
        print(`${r.get("layers").len()} ${r["model"]} ${keys(r)} ${p.pos}/${p.len}`);
        r.set("done", true);
        let again = results("out/r.json", #{resume: true});
        again.push("layers", 5);
        print(again.get("layers").len());
        r.push("model", 1);
        "#,
    );
    // The last line fails: "model" holds a string.
    let err = out.failed();
    assert!(
        err.contains("results.push: 'model' holds a string, not an array"),
        "{err}"
    );
    assert_eq!(
        out.stdout.trim_end(),
        "1\n2\n3\n4\n5\n5 m [\"layers\", \"model\"] 5/5\n6"
    );
    // Not a terminal: no progress bar drawn.
    assert!(!out.stderr.contains("work"), "{}", out.stderr);
    let v = json(&dir.path().join("out/r.json"));
    let layers = v["layers"].as_array().expect("an array");
    assert_eq!(layers.len(), 6);
    assert_eq!(layers[4]["v"], serde_json::json!([1.0, 2.0]));
    assert_eq!(v["done"], true);
}

#[test]
fn inspection_verbs_on_the_default_model() {
    let dir = scratch();
    let path = write(
        dir.path(),
        "inspect.rhai",
        r#"
        let m = load();
        let info = m.info();
        let ws = weights(m);
        let params = 0; let bytes = 0;
        for w in ws { params += w.params; bytes += w.bytes; }
        print(params == info.params && bytes == info.bytes);
        print(ws[0]);
        let q = ws.filter(|w| w.name == "model.layers.0.self_attn.q_proj.weight")[0];
        print(`${q.group} ${q.layer} ${q.shape} ${q.stored}`);
        print(weight(m, q.name).shape);
        print(nearest_tokens(m, " Paris", 3).map(|t| t.token));
        let e = embedding(m, [7042, 7042]);
        print(`${e.shape} ${norm(e[0] - e[1])}`);
        print(diagonal(attention(m, "The cat sat on the mat", 2), -1).shape);
        "#,
    );
    let out = run_with_model(&path, &[]);
    let lines: Vec<&str> = out.ok().lines().collect();
    assert_eq!(lines[0], "true");
    assert!(
        lines[1].contains("\"group\": \"embedding\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("\"stored\": \"8-bit group 32\""),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], "attention 0 [576, 576] 4-bit group 32");
    assert_eq!(lines[3], "[576, 576]");
    assert_eq!(lines[4], "[\"Paris\", \" London\", \" France\"]");
    assert_eq!(lines[5], "[2, 576] 0.0");
    assert_eq!(lines[6], "[9, 5]");
}

#[test]
fn a_script_importing_its_own_name_gets_the_library_module() {
    let dir = scratch();
    let out = run_script(
        dir.path(),
        "lens.rhai",
        "import \"lens\" as lens;\nprint(lens::percent(0.8127));",
    );
    assert_eq!(out.ok(), "81.3%");
}

#[test]
fn lens_script_finds_paris_in_the_last_layer() {
    let out_dir = scratch();
    let out = run_with_model(
        &repo().join("scripts/lens.rhai"),
        &[
            "--set",
            "quick=true",
            "--set",
            &format!("out={}", out_dir.path().display()),
        ],
    );
    let text = out.ok();
    assert!(text.contains("final prediction: \" Paris\""), "{text}");
    let v = json(&out_dir.path().join("lens.json"));
    let layers = v["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 30);
    let last = &layers[29];
    assert_eq!(last["top"][0]["token"], " Paris");
    assert_eq!(last["rank_final"], 1);
    assert_eq!(v["final"]["token"], " Paris");
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(5));
    // One grid column per input token, one entry per layer, the last position's = `layers`.
    let grid = v["grid"].as_array().expect("grid");
    assert_eq!(grid.len(), 5);
    assert_eq!(grid[4]["top"].as_array().map(Vec::len), Some(30));
    assert_eq!(grid[4]["top"][29]["token"], " Paris");
    // Early layers do not predict Paris yet.
    assert_ne!(layers[0]["top"][0]["token"], " Paris");
    let svg = read(&out_dir.path().join("lens.svg"));
    assert!(svg.contains("Logit lens: &quot;The capital of France is&quot;"));
    assert!(svg.contains("␣Paris"));
    // 30 layers x 5 positions.
    assert_eq!(count(&svg, "<rect"), 1 + 150 + 48 + 1);
    for f in ["lens_topk.svg", "lens_final.svg"] {
        assert!(read(&out_dir.path().join(f)).starts_with("<svg"), "{f}");
    }
}

#[test]
fn attention_script_finds_induction_heads() {
    let out_dir = scratch();
    let out = run_with_model(
        &repo().join("scripts/attention.rhai"),
        &[
            "--set",
            "quick=true",
            "--set",
            &format!("out={}", out_dir.path().display()),
        ],
    );
    out.ok();
    let v = json(&out_dir.path().join("attention.json"));
    let table = v["induction"].as_array().expect("induction");
    assert_eq!(table.len(), 30);
    let mut scores: Vec<f64> = Vec::new();
    for row in table {
        let row = row.as_array().expect("a row");
        assert_eq!(row.len(), 9);
        scores.extend(row.iter().filter_map(Value::as_f64));
    }
    assert_eq!(scores.len(), 270);
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    let best = scores.iter().cloned().fold(0.0, f64::max);
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    // SmolLM2-135M has strong induction heads in layers 17-18 (about 0.9); a typical head
    // gives the repeated token almost nothing.
    assert!(
        best > 0.5 && best > 20.0 * median,
        "best {best}, median {median}"
    );
    let top = &v["top_induction"][0];
    let (l, h) = (
        top["layer"].as_u64().unwrap(),
        top["head"].as_u64().unwrap(),
    );
    assert_eq!(table[l as usize][h as usize].as_f64(), Some(best));
    assert!((17..=18).contains(&l), "best induction head in layer {l}");
    // Previous-token heads are a different set of heads.
    let prev = &v["top_prev_token"][0];
    assert!(prev["prev_token"].as_f64().unwrap() > 0.5);
    assert!(prev["induction"].as_f64().unwrap() < 0.1);
    let svg = read(&out_dir.path().join("induction.svg"));
    assert!(svg.contains("Induction scores"));
    assert_eq!(count(&svg, "<rect"), 1 + 270 + 48 + 1);
    assert!(out_dir.path().join("induction_pattern.svg").is_file());
}

#[test]
fn anatomy_script_accounts_for_every_parameter() {
    let out_dir = scratch();
    let out = run_with_model(
        &repo().join("scripts/anatomy.rhai"),
        &[
            "--set",
            "quick=true",
            "--set",
            &format!("out={}", out_dir.path().display()),
        ],
    );
    let text = out.ok();
    assert!(
        text.contains("== Weights: 134,515,008 parameters"),
        "{text}"
    );
    let v = json(&out_dir.path().join("anatomy.json"));
    let params = v["info"]["params"].as_u64().expect("params");
    let groups = v["groups"].as_array().expect("groups");
    let sum: u64 = groups.iter().filter_map(|g| g["params"].as_u64()).sum();
    assert_eq!(sum, params);
    let names: Vec<&str> = groups.iter().filter_map(|g| g["group"].as_str()).collect();
    assert_eq!(names, ["mlp", "embedding", "attention", "norm"]);
    let block0: u64 = v["block0"]
        .as_array()
        .expect("block0")
        .iter()
        .filter_map(|w| w["params"].as_u64())
        .sum();
    // Blocks, the embedding (tied to the head) and the final norm.
    assert_eq!(block0 * 30 + 49152 * 576 + 576, params);
    // " Paris" is one token, "Paris" another; "tokenization" is two.
    let tokens = v["tokens"].as_array().expect("tokens");
    let n_of = |t: &str| {
        tokens
            .iter()
            .find(|r| r["text"] == t)
            .and_then(|r| r["n"].as_u64())
    };
    assert_eq!(n_of(" Paris"), Some(1));
    assert_eq!(n_of("tokenization"), Some(2));
    assert_eq!(v["context"]["embedding_diff"], 0.0);
    assert_eq!(v["context"]["same_token"], true);
    let q = &v["quantization"];
    assert!(q["sample"]["distinct"].as_u64().unwrap() <= 16);
    assert_eq!(v["predictions"][0]["top"][0]["token"], " Paris");
    for f in ["weights", "predictions", "neighbours", "context"] {
        assert!(
            read(&out_dir.path().join(format!("{f}.svg"))).starts_with("<svg"),
            "{f}"
        );
    }
}
