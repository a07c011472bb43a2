//! Tensor values from scripts: arithmetic, indexing, reductions, conversions, files, and the
//! errors every operation reports.

mod common;
use common::*;

/// Evaluates `code` and returns what it printed.
fn value(code: &str) -> String {
    eval(code).ok().to_string()
}

/// Evaluates `code`, expecting an error; returns the first line of the report.
fn error(code: &str) -> String {
    let run = eval(code);
    run.failed().lines().next().unwrap_or_default().to_string()
}

#[test]
fn shape_dtype_and_display() {
    assert_eq!(value("zeros([2, 3]).shape"), "[2, 3]");
    assert_eq!(value("zeros([2, 3]).dtype"), "float32");
    assert_eq!(
        value("tensor([1, 2.5, -3])"),
        "Tensor[3] float32 [1, 2.5, -3]"
    );
    assert_eq!(
        value("`${tensor([[1, 2], [3, 4]])}`"),
        "Tensor[2, 2] float32 [[1, 2], [3, 4]]"
    );
    assert_eq!(value("tensor(2.5)"), "Tensor[] float32 2.5");
    assert_eq!(
        value("tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])"),
        "Tensor[10] float32 [0, 1, 2, ..., 7, 8, 9]"
    );
}

#[test]
fn arithmetic_with_tensors_and_numbers() {
    let t = "let a = tensor([[1, 2], [3, 4]]); let b = tensor([10, 20]);";
    assert_eq!(
        value(&format!("{t} to_array(a + b)")),
        "[[11.0, 22.0], [13.0, 24.0]]"
    );
    assert_eq!(
        value(&format!("{t} to_array(b - a)")),
        "[[9.0, 18.0], [7.0, 16.0]]"
    );
    assert_eq!(
        value(&format!("{t} to_array(a * b)")),
        "[[10.0, 40.0], [30.0, 80.0]]"
    );
    assert_eq!(
        value(&format!("{t} to_array(a / 2)")),
        "[[0.5, 1.0], [1.5, 2.0]]"
    );
    assert_eq!(value(&format!("{t} to_array(1 - a[0])")), "[0.0, -1.0]");
    assert_eq!(value(&format!("{t} to_array(0.5 * b + 1)")), "[6.0, 11.0]");
    assert_eq!(value(&format!("{t} to_array(-b)")), "[-10.0, -20.0]");
    assert_eq!(
        value(&format!("{t} let c = a; c += 1; to_array(c)")),
        "[[2.0, 3.0], [4.0, 5.0]]"
    );
}

#[test]
fn shape_mismatches_name_both_shapes() {
    assert_eq!(
        error("zeros([2, 3]) + zeros([2])"),
        "<-e>:1:15: shape mismatch: [2, 3] + [2] (shapes must be equal or broadcast)"
    );
    assert_eq!(
        error("zeros([4]) * zeros([3])"),
        "<-e>:1:12: shape mismatch: [4] * [3] (shapes must be equal or broadcast)"
    );
    assert_eq!(
        error("dot(zeros([2, 3]), zeros([2]))"),
        "<-e>:1:1: dot: shape mismatch: [2, 3] and [2] (the last axis of the first must match the length of the second)"
    );
    assert_eq!(
        error("cosine(zeros([3]), zeros([4]))"),
        "<-e>:1:1: cosine: shape mismatch: [3] and [4] (the last axes must match and the rest broadcast)"
    );
}

#[test]
fn indexing_is_bounds_checked_and_negative_counts_from_the_end() {
    let t = "let t = tensor([[1, 2], [3, 4], [5, 6]]);";
    assert_eq!(value(&format!("{t} t[-1]")), "Tensor[2] float32 [5, 6]");
    assert_eq!(value(&format!("{t} t[1][0]")), "3.0");
    assert_eq!(value(&format!("{t} t[0].len()")), "2");
    assert_eq!(
        error(&format!("{t} t[3]")),
        "<-e>:1:44: index 3 is out of bounds for a tensor of shape [3, 2]"
    );
    assert_eq!(
        error(&format!("{t} t[-4]")),
        "<-e>:1:44: index -4 is out of bounds for a tensor of shape [3, 2]"
    );
    assert_eq!(
        error("tensor(1.0)[0]"),
        "<-e>:1:12: cannot index a 0-dimensional tensor"
    );
}

#[test]
fn reductions_and_geometry() {
    let t = "let t = tensor([[1, 2], [3, 4]]);";
    assert_eq!(value("norm(tensor([3, 4]))"), "5.0");
    assert_eq!(value("to_array(normalize(tensor([3, 4])))"), "[0.6, 0.8]");
    assert_eq!(value("to_array(normalize(zeros([2])))"), "[0.0, 0.0]");
    assert_eq!(value("dot(tensor([1, 2]), tensor([3, 4]))"), "11.0");
    assert_eq!(
        value(&format!("{t} to_array(dot(t, tensor([1, -1])))")),
        "[-1.0, -1.0]"
    );
    assert_eq!(
        value(&format!("{t} to_array(t.dot(t))")),
        "[[7.0, 10.0], [15.0, 22.0]]"
    );
    assert_eq!(value("cosine(tensor([1, 0]), tensor([0, 2]))"), "0.0");
    assert_eq!(
        value("(cosine(tensor([1, 1]), tensor([2, 2])) - 1.0).abs() < 1e-6"),
        "true"
    );
    assert_eq!(
        value(&format!("{t} to_array(cosine(t, tensor([1, 0])))")),
        "[0.4472136, 0.6]"
    );
    assert_eq!(value(&format!("{t} to_array(mean(t, 0))")), "[2.0, 3.0]");
    assert_eq!(value(&format!("{t} to_array(t.sum(-1))")), "[3.0, 7.0]");
    assert_eq!(value(&format!("{t} [sum(t), mean(t)]")), "[10.0, 2.5]");
    assert_eq!(
        error(&format!("{t} sum(t, 2)")),
        "<-e>:1:35: sum: axis 2 is out of range for a tensor of shape [2, 2]"
    );
}

#[test]
fn conversions_to_and_from_arrays() {
    assert_eq!(
        value("to_array(tensor([[1, 2], [3, 4]]))"),
        "[[1.0, 2.0], [3.0, 4.0]]"
    );
    assert_eq!(value("to_array(tensor([0.1, 0.2]))"), "[0.1, 0.2]");
    assert_eq!(value("to_array(tensor(7))"), "7.0");
    assert_eq!(value("tensor([]).shape"), "[0]");
    assert_eq!(
        error("tensor([[1, 2], [3]])"),
        "<-e>:1:1: tensor: ragged array: element [1] has length 1, expected 2"
    );
    assert_eq!(
        error("tensor([[1, 2], 3])"),
        "<-e>:1:1: tensor: ragged array: element [1] should be an array of length 2, got integer 3"
    );
    assert_eq!(
        error("tensor([1, \"x\"])"),
        "<-e>:1:1: tensor: element [1] should be a number, got string \"x\""
    );
    assert_eq!(
        error("zeros([2, -1])"),
        "<-e>:1:1: zeros: a shape is an array of non-negative integers, got [2, -1]"
    );
}

#[test]
fn randn_is_seeded() {
    assert_eq!(
        value("to_array(randn([5], 3)) == to_array(randn([5], 3))"),
        "true"
    );
    assert_eq!(
        value("to_array(randn([5], 3)) == to_array(randn([5], 4))"),
        "false"
    );
    assert_eq!(value("randn([2, 3], 0).shape"), "[2, 3]");
}

#[test]
fn save_and_load_round_trip_relative_to_the_script() {
    let dir = scratch();
    write(
        dir.path(),
        "exp/save.rhai",
        r#"
        let t = randn([3, 4], 1);
        save(t, "out/t.safetensors");
        let u = load_tensor("out/t.safetensors");
        print(u.shape);
        print(to_array(u) == to_array(t));
        "#,
    );
    // Run from elsewhere: the paths resolve against the script's folder.
    let out = run_in(dir.path(), &["exp/save.rhai"]);
    assert_eq!(out.ok(), "[3, 4]\ntrue");
    assert!(dir.path().join("exp/out/t.safetensors").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("exp/out"))
        .expect("folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn loading_a_bad_file_is_an_error() {
    let dir = scratch();
    write(dir.path(), "junk.safetensors", "not a tensor file");
    write(dir.path(), "load.rhai", "load_tensor(\"junk.safetensors\")");
    let err = run_in(dir.path(), &["load.rhai"]).failed().to_string();
    assert!(err.starts_with("load.rhai:1:1: "), "{err}");
    assert!(
        err.contains("junk.safetensors: not a safetensors file"),
        "{err}"
    );
    write(
        dir.path(),
        "missing.rhai",
        "load_tensor(\"nope.safetensors\")",
    );
    let err = run_in(dir.path(), &["missing.rhai"]).failed().to_string();
    assert!(
        err.contains("nope.safetensors: No such file or directory"),
        "{err}"
    );
}

#[test]
fn save_json_writes_values_atomically() {
    let dir = scratch();
    write(
        dir.path(),
        "j.rhai",
        r#"save_json(#{acc: [0.5, 0.75], name: "probe", t: tensor([1, 2]), none: ()}, "r/out.json");"#,
    );
    run_in(dir.path(), &["j.rhai"]).ok();
    let text = std::fs::read_to_string(dir.path().join("r/out.json")).expect("written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"acc": [0.5, 0.75], "name": "probe", "t": [1.0, 2.0], "none": null})
    );
}

#[test]
fn tensors_too_large_for_memory_are_errors_not_crashes() {
    let err = error("zeros([100000000, 100000000])");
    assert!(
        err.starts_with(
            "<-e>:1:1: a tensor of shape [100000000, 100000000] has more than 2147483647 \
             elements, the most mlxi creates"
        ),
        "{err}"
    );
    let err = error("zeros([100000000, 1]) * zeros([1, 100000000])");
    assert!(err.contains("has more than 2147483647 elements"), "{err}");
    let err = error("randn([2147483647, 2147483647], 1)");
    assert!(err.contains("has more than 2147483647 elements"), "{err}");
    // 2^32 elements: refused on every machine, whatever its memory.
    let err = error("zeros([65536, 65536])");
    assert!(err.contains("has more than 2147483647 elements"), "{err}");
    let dims = format!("zeros([{}])", ["65536"; 12].join(", "));
    assert!(error(&dims).contains("has more than 2147483647 elements"));
}

#[test]
fn tensor_memory_is_counted_against_the_limit() {
    let home = scratch();
    let run = |code: &str| -> Run {
        mlxi(home.path())
            .env("MLXI_MAX_TENSOR_BYTES", "1000000")
            .args(["-e", code])
            .output()
            .expect("runs")
            .into()
    };
    assert_eq!(run("zeros([500, 500]).shape").ok(), "[500, 500]");
    let err = run("zeros([600, 500])");
    assert!(
        err.failed().starts_with(
            "<-e>:1:1: a float32 tensor of shape [600, 500] needs 1.2 MB, more than the \
             MLXI_MAX_TENSOR_BYTES limit (1.0 MB)"
        ),
        "{}",
        err.stderr
    );
    assert!(run("randn([1000, 1000], 1)")
        .failed()
        .contains("MLXI_MAX_TENSOR_BYTES"));
    assert!(run("zeros([1000, 1]) + zeros([1, 1000])")
        .failed()
        .contains("MLXI_MAX_TENSOR_BYTES"));
}

#[test]
fn empty_tensors() {
    assert_eq!(value("to_array(tensor([[], []]))"), "[[], []]");
    assert_eq!(value("zeros([0, 3]).shape"), "[0, 3]");
    assert_eq!(value("`${zeros([0])}`"), "Tensor[0] float32 []");
}
