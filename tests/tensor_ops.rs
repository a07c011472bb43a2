//! Tensor operations against NumPy: every case of `tests/fixtures/golden/tensor_ops.json`
//! (written by `tests/reference/tensor_golden.py`) runs as a Rhai script through the engine and
//! must match NumPy's result in shape, kind (float, int, bool) and values. Then the errors: each
//! names the shapes or values involved and is a script error, never a panic.

mod common;
use common::*;

use mlxi::script::{Context, Tensor};
use rhai::Dynamic;
use serde_json::Value;

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden/tensor_ops.json"
);

fn golden() -> Value {
    let text = std::fs::read_to_string(GOLDEN).expect("the golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

/// `let x = tensor([...], "float32");` for every input of the golden file.
fn prelude(g: &Value) -> String {
    g["inputs"]
        .as_object()
        .expect("inputs")
        .iter()
        .map(|(name, input)| {
            format!(
                "let {name} = tensor({}, {});",
                input["values"], input["dtype"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A result as NumPy's file has it: shape, kind and the values in row-major order.
#[derive(Debug)]
struct Flat {
    shape: Vec<i64>,
    kind: &'static str,
    values: Vec<f64>,
}

fn kind_of_dtype(dtype: &str) -> &'static str {
    match dtype {
        "bool" => "bool",
        d if d.starts_with("int") || d.starts_with("uint") => "int",
        _ => "float",
    }
}

fn flat(v: &Dynamic) -> Flat {
    if let Some(t) = v.read_lock::<Tensor>() {
        return Flat {
            shape: t.shape().iter().map(|&d| d as i64).collect(),
            kind: kind_of_dtype(t.dtype_name()),
            values: t
                .to_f32_vec()
                .expect("values")
                .iter()
                .map(|&x| x as f64)
                .collect(),
        };
    }
    if let Ok(x) = v.as_float() {
        return Flat {
            shape: vec![],
            kind: "float",
            values: vec![x],
        };
    }
    if let Ok(i) = v.as_int() {
        return Flat {
            shape: vec![],
            kind: "int",
            values: vec![i as f64],
        };
    }
    if let Ok(b) = v.as_bool() {
        return Flat {
            shape: vec![],
            kind: "bool",
            values: vec![f64::from(u8::from(b))],
        };
    }
    let items = v
        .clone()
        .into_array()
        .unwrap_or_else(|_| panic!("unexpected result {v:?}"));
    let parts: Vec<Flat> = items.iter().map(flat).collect();
    let mut shape = vec![parts.len() as i64];
    shape.extend(parts.first().map(|p| p.shape.clone()).unwrap_or_default());
    Flat {
        shape,
        kind: parts.first().map_or("float", |p| p.kind),
        values: parts.into_iter().flat_map(|p| p.values).collect(),
    }
}

/// Whether float32 `got` is NumPy's float64 `want` up to float32 rounding.
fn close(got: f64, want: f64) -> bool {
    (got.is_nan() && want.is_nan()) || (got - want).abs() <= 1e-5 + 1e-4 * want.abs()
}

#[test]
fn every_operation_matches_numpy() {
    full_f32();
    let _mlx = mlx_lock();
    let g = golden();
    let prelude = prelude(&g);
    let cases = g["cases"].as_array().expect("cases");
    assert!(
        cases.len() >= 200,
        "the golden file has {} cases",
        cases.len()
    );
    let ctx = Context::in_current_dir();
    let mut failures = Vec::new();
    for case in cases {
        let code = case["rhai"].as_str().expect("rhai");
        let want_shape: Vec<i64> = serde_json::from_value(case["shape"].clone()).expect("shape");
        let want_kind = case["kind"].as_str().expect("kind");
        let want: Vec<f64> = case["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|x| {
                x.as_f64()
                    .or_else(|| x.as_bool().map(|b| f64::from(u8::from(b))))
                    .expect("a value")
            })
            .collect();
        let got = match script(ctx.clone(), &format!("{prelude}\n{code}")) {
            Ok(v) => flat(&v),
            Err(e) => {
                failures.push(format!("{code}: {e}"));
                continue;
            }
        };
        let values_match = got.values.len() == want.len()
            && got.values.iter().zip(&want).all(|(&a, &b)| {
                if want_kind == "float" {
                    close(a, b)
                } else {
                    a == b
                }
            });
        if got.shape != want_shape || got.kind != want_kind || !values_match {
            failures.push(format!(
                "{code}:\n  got    {:?} {} {:?}\n  numpy  {want_shape:?} {want_kind} {want:?}",
                got.shape, got.kind, got.values
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from numpy:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Runs `code` in a fresh context.
fn run(code: &str) -> Result<Dynamic, String> {
    script(Context::in_current_dir(), code)
}

#[track_caller]
fn fails_with(code: &str, message: &str) {
    let err = expect_err(run(code));
    assert!(
        err.contains(message),
        "{code}\n  error: {err}\n  expected: {message}"
    );
}

#[test]
fn shape_errors_name_the_shapes() {
    let _mlx = mlx_lock();
    for (code, message) in [
        ("matmul(zeros([2, 3]), zeros([4, 5]))", "matmul: shape mismatch: [2, 3] @ [4, 5] (the last axis of the first must match the second-to-last of the second)"),
        ("matmul(zeros([2, 2, 3]), zeros([3, 3, 4]))", "matmul: shape mismatch: [2, 2, 3] @ [3, 3, 4] (the batch axes must broadcast)"),
        ("matmul(zeros([3]), tensor(1.0))", "matmul: takes tensors of 1 or more dimensions, got [3] @ []"),
        ("zeros([3]) > zeros([2])", "shape mismatch: [3] > [2] (shapes must be equal or broadcast)"),
        ("zeros([3]) == zeros([2])", "shape mismatch: [3] == [2]"),
        ("pow(zeros([3]), zeros([2]))", "pow: shape mismatch: [3] and [2]"),
        ("where(zeros([3]) > 0, zeros([2]), 0)", "where: shape mismatch: [3] and [2] and []"),
        ("concat([zeros([2, 3]), zeros([2, 4])], 0)", "concat: shape mismatch: [2, 3] and [2, 4] (every axis but 0 must match)"),
        ("concat([zeros([2, 3]), zeros([3])])", "concat: shape mismatch: [2, 3] and [3]"),
        ("stack([zeros([2]), zeros([3])])", "stack: shape mismatch: [2] and [3] (the tensors must have one shape)"),
        ("reshape(zeros([2, 3]), [4, -1])", "reshape: cannot reshape a tensor of shape [2, 3] (6 elements) into [4, -1]"),
        ("reshape(zeros([6]), [-1, -1])", "reshape: cannot reshape a tensor of shape [6] (6 elements) into [-1, -1]"),
        ("reshape(zeros([6]), [7])", "into [7]"),
        ("broadcast_to(zeros([3]), [2, 2])", "broadcast_to: shape mismatch: [3] to [2, 2]"),
        ("einsum(\"ij,jk->ik\", [zeros([2, 3]), zeros([4, 5])])", "einsum: shape mismatch: [2, 3] and [4, 5] (axis 'j' has lengths 3 and 4)"),
        ("einsum(\"ij\", [zeros([2])])", "einsum \"ij\": operand 0 has shape [2] but \"ij\" names 2 axes"),
        ("einsum(\"ij,jk\", [zeros([2, 3])])", "the subscripts name 2 operands, got 1 tensors"),
        ("einsum(\"i1\", [zeros([2, 3])])", "'1' is not a subscript letter"),
        ("einsum(\"i->j\", [zeros([2])])", "output axis 'j' is not in any input"),
        ("einsum(\"...i,...i\", [zeros([2, 3]), zeros([4, 3])])", "the axes under '...' must broadcast"),
        ("let t = zeros([3, 2]); t[0..2] = zeros([3]); t", "index assignment: shape mismatch: [3] into [2, 2] (the value must broadcast to the selection)"),
        ("let t = zeros([2, 3, 4]); t[\"1, :, None, 0\"] = tensor([[1, 2, 3]]); t", "index assignment: shape mismatch: [1, 3] into [3, 1]"),
    ] {
        fails_with(code, message);
    }
}

#[test]
fn axes_and_sizes_are_checked() {
    let _mlx = mlx_lock();
    for (code, message) in [
        (
            "sum(zeros([2, 3]), 2)",
            "sum: axis 2 is out of range for a tensor of shape [2, 3]",
        ),
        (
            "max(zeros([2, 3]), -3, true)",
            "max: axis -3 is out of range for a tensor of shape [2, 3]",
        ),
        (
            "sum(zeros([2, 3]), [0, -2])",
            "sum: axis -2 is named twice in [0, -2]",
        ),
        ("mean(zeros([2]), [])", "mean: the array of axes is empty"),
        (
            "std(zeros([2]), [\"a\"])",
            "std: an axis is an integer, got \"a\"",
        ),
        (
            "softmax(zeros([2]), 1)",
            "softmax: axis 1 is out of range for a tensor of shape [2]",
        ),
        ("cumsum(zeros([2]), -2)", "cumsum: axis -2 is out of range"),
        ("argmax(zeros([2, 2]), 2)", "argmax: axis 2 is out of range"),
        (
            "argmax(zeros([0]))",
            "argmax: a tensor of shape [0] has no elements",
        ),
        (
            "unsqueeze(zeros([2]), 2)",
            "unsqueeze: axis 2 is out of range for a tensor of shape [2]",
        ),
        (
            "stack([zeros([2])], 2)",
            "stack: axis 2 is out of range for a tensor of shape [2]",
        ),
        (
            "transpose(zeros([2, 3]), [0, 0])",
            "transpose: [0, 0] is not an ordering of the 2 axes of a tensor of shape [2, 3]",
        ),
        (
            "transpose(zeros([2, 3]), [0])",
            "transpose: [0] is not an ordering",
        ),
        (
            "transpose(zeros([2, 3]), 0, 5)",
            "transpose: axis 5 is out of range",
        ),
        (
            "squeeze(zeros([2, 3]), 0)",
            "squeeze: axis 0 has length 2, not 1, in a tensor of shape [2, 3]",
        ),
        (
            "flatten(zeros([2, 3, 4]), 2, 1)",
            "flatten: start axis 2 comes after end axis 1",
        ),
        (
            "split(zeros([5]), 2)",
            "split: axis 0 of length 5 does not divide into 2 equal parts",
        ),
        (
            "split(zeros([5]), 0)",
            "split: the number of parts must be at least 1",
        ),
        (
            "split(zeros([5]), [1, \"x\"])",
            "split: a cut position should be an integer",
        ),
        (
            "topk(zeros([3]), 4)",
            "topk: k = 4 is out of range for axis -1 of length 3",
        ),
        ("topk(zeros([3]), 0)", "topk: k = 0 is out of range"),
        (
            "take(zeros([3]), [3], 0)",
            "take: index 3 is out of bounds for axis 0 of a tensor of shape [3]",
        ),
        (
            "take(zeros([3]), [-4], 0)",
            "take: index -4 is out of bounds",
        ),
        (
            "take(zeros([3]), zeros([1]), 0)",
            "take: indices must be integers, got a float32 tensor",
        ),
        ("concat([])", "concat: the array of tensors is empty"),
        (
            "concat([zeros([2]), 3])",
            "concat: element [1] should be a Tensor, got integer 3",
        ),
        (
            "clamp(zeros([2]), \"a\", ())",
            "clamp: expected a Tensor or a number, got string",
        ),
        (
            "item(zeros([2]))",
            "item: expected a single value, got a tensor of shape [2]",
        ),
        (
            "tensor([300], \"int8\")",
            "tensor: 300 does not fit in int8",
        ),
        (
            "tensor([-1], \"uint8\")",
            "tensor: -1 does not fit in uint8",
        ),
        (
            "astype(zeros([2]), \"float128\")",
            "astype: unknown dtype \"float128\"; valid: bool, uint8",
        ),
        (
            "arange(0, 10, 0)",
            "arange: start, stop and step must be finite and step non-zero",
        ),
        (
            "arange(0, 1e12)",
            "arange: 1000000000000 elements is more than the most mlxi creates",
        ),
        ("arange(\"a\")", "arange: stop should be a number"),
        (
            "full([-1], 0)",
            "full: a shape is an array of non-negative integers, got [-1]",
        ),
        ("eye(-1)", "eye: the number of rows must be at least 0"),
        ("linspace(0, 1, -2)", "linspace: num must be at least 0"),
        // Sizes are refused before anything is allocated.
        (
            "ones([100000, 100000])",
            "has more than 2147483647 elements",
        ),
        ("eye(100000)", "has more than 2147483647 elements"),
        (
            "outer(zeros([100000]), zeros([100000]))",
            "has more than 2147483647 elements",
        ),
        (
            "matmul(zeros([50000, 1]), zeros([1, 50000]))",
            "has more than 2147483647 elements",
        ),
        (
            "einsum(\"i,j->ij\", [zeros([100000]), zeros([100000])])",
            "has more than 2147483647 elements",
        ),
        (
            "zeros([100000, 1]) > zeros([1, 100000])",
            "has more than 2147483647 elements",
        ),
        (
            "stack([zeros([2000000000]), zeros([2000000000])])",
            "elements",
        ),
    ] {
        fails_with(code, message);
    }
}

#[test]
fn bad_indices_are_errors() {
    let _mlx = mlx_lock();
    let t = "let t = zeros([3, 2]);";
    for (index, message) in [
        ("t[\"::0\"]", "slice step cannot be zero"),
        ("t[[(), \"1:2:0\"]]", "slice step cannot be zero"),
        (
            "t[\"1:2:3:4\"]",
            "index \"1:2:3:4\": a slice has at most start:stop:step",
        ),
        ("t[\"a\"]", "index \"a\": \"a\" is not an integer"),
        ("t[\"0,,1\"]", "index \"0,,1\": an empty entry"),
        (
            "t[\"0, 0, 0\"]",
            "too many indices (3) for a tensor of shape [3, 2]",
        ),
        (
            "t[\"..., ...\"]",
            "an index can have only one ellipsis (...)",
        ),
        (
            "t[[0, 5]]",
            "index 5 is out of bounds for axis 1 of a tensor of shape [3, 2]",
        ),
        (
            "t[3]",
            "index 3 is out of bounds for a tensor of shape [3, 2]",
        ),
        (
            "t[[0, [1]]]",
            "an index entry is an integer, a range, () or a string such as \"::2\", got array [1]",
        ),
        (
            "t[[\"0, 1\"]]",
            "one entry of an index array names one axis",
        ),
        (
            "t[5] = 1.0",
            "index 5 is out of bounds for a tensor of shape [3, 2]",
        ),
        ("t[\"::0\"] = 1.0", "slice step cannot be zero"),
        ("tensor(1.0)[0]", "cannot index a 0-dimensional tensor"),
    ] {
        fails_with(&format!("{t} {index}"), message);
    }
}

/// Every function works as `f(t, x)` and `t.f(x)`; the two give the same values.
#[test]
fn both_call_styles_agree() {
    let _mlx = mlx_lock();
    let t = "let x = tensor([[1, -2, 3], [4, 5, -6]]);";
    for (method, function) in [
        ("x.sum(0)", "sum(x, 0)"),
        ("x.mean([0, 1], true)", "mean(x, [0, 1], true)"),
        ("x.softmax(0)", "softmax(x, 0)"),
        ("x.reshape([3, -1])", "reshape(x, [3, -1])"),
        ("x.transpose()", "transpose(x)"),
        ("x.topk(2).values", "topk(x, 2).values"),
        ("x.clamp(0, ())", "clamp(x, 0, ())"),
        ("x.exp()", "exp(x)"),
        ("x.pow(2)", "pow(x, 2)"),
        ("x.matmul(x.T)", "matmul(x, transpose(x))"),
        ("x.norm(-1)", "norm(x, -1)"),
        ("x.argmax(1)", "argmax(x, 1)"),
        ("x.astype(\"int32\")", "astype(x, \"int32\")"),
        ("x.unsqueeze(0)", "unsqueeze(x, 0)"),
        ("x.flatten()", "flatten(x)"),
        ("x.take([1], 1)", "take(x, [1], 1)"),
    ] {
        let same = expect_ok(run(&format!(
            "{t} to_list({method}) == to_list({function})"
        )));
        assert!(
            same.as_bool().unwrap_or(false),
            "{method} differs from {function}"
        );
    }
}

#[test]
fn comparisons_are_tensors_and_conversions_keep_their_kind() {
    let _mlx = mlx_lock();
    let show = |code: &str| expect_ok(run(code)).to_string();
    assert_eq!(show("(tensor([1, 2]) > 1.5).dtype"), "bool");
    assert_eq!(show("type_of(tensor([1, 2]) == tensor([1, 3]))"), "Tensor");
    assert_eq!(show("to_list(tensor([1, 2], \"int32\"))"), "[1, 2]");
    assert_eq!(show("to_array(tensor([1, 2], \"int32\"))"), "[1.0, 2.0]");
    assert_eq!(show("type_of(item(tensor([[3]], \"int64\")))"), "i64");
    assert_eq!(show("arange(3)[1]"), "1");
    assert_eq!(show("(arange(3) > 0)[0]"), "false");
    assert_eq!(show("zeros([2, 3]).size + zeros([2, 3]).ndim"), "8");
    assert_eq!(show("astype(tensor([1, 2]), \"bf16\").dtype"), "bfloat16");
}

#[test]
fn summaries_show_dtype_kinds_and_elide_large_tensors() {
    let _mlx = mlx_lock();
    let show = |code: &str| expect_ok(run(&format!("`${{{code}}}`"))).to_string();
    assert_eq!(
        show("tensor([1, 0], \"bool\")"),
        "Tensor[2] bool [true, false]"
    );
    assert_eq!(
        show("tensor([123456, -7], \"int32\")"),
        "Tensor[2] int32 [123456, -7]"
    );
    assert_eq!(
        show("arange(100)"),
        "Tensor[100] int32 [0, 1, 2, ..., 97, 98, 99]"
    );
    assert_eq!(
        show("reshape(arange(64) > 31, [8, 8])[[\"1::2\", ()]]"),
        "Tensor[4, 8] bool [[false, false, false, ..., false, false, false], [false, false, false, ..., false, false, false], \
         [true, true, true, ..., true, true, true], [true, true, true, ..., true, true, true]]"
    );
    assert_eq!(
        show("zeros([1000, 1000])"),
        "Tensor[1000, 1000] float32 [[0, 0, 0, ..., 0, 0, 0], [0, 0, 0, ..., 0, 0, 0], [0, 0, 0, ..., 0, 0, 0], ..., \
         [0, 0, 0, ..., 0, 0, 0], [0, 0, 0, ..., 0, 0, 0], [0, 0, 0, ..., 0, 0, 0]]"
    );
}

/// `:help NAME` shows each Tensor function's doc comment with an example.
#[test]
fn every_tensor_function_has_help_with_an_example() {
    let _mlx = mlx_lock();
    let engine = mlxi::script::new_engine(Context::in_current_dir());
    let index = mlxi::script::help::Index::build(&engine);
    let names =
        "T ndim size to_list item astype tensor reshape transpose permute swapaxes squeeze \
        unsqueeze expand_dims flatten broadcast_to concat stack split clamp clip softmax \
        log_softmax cumsum cumprod topk sort argsort argmax argmin matmul outer einsum where take \
        zeros ones full arange linspace eye pow maximum minimum logical_and logical_or \
        logical_not exp log abs sqrt square sign floor ceil round sin cos tanh sigmoid relu isnan \
        sum mean max min prod std variance norm logsumexp any all";
    for name in names.split_whitespace() {
        let help = index
            .get(name)
            .unwrap_or_else(|| panic!("no help for {name}"))
            .render();
        assert!(help.contains("Example: `"), ":help {name}:\n{help}");
    }
    // Whole-tensor and per-axis forms are documented separately.
    let sum = index.get("sum").expect("sum").render();
    assert!(sum.contains("sum(t: Tensor) -> float"), "{sum}");
    assert!(
        sum.contains("sum(t: Tensor, axes: array, keepdims: bool) -> Tensor"),
        "{sum}"
    );
    assert!(
        sum.contains("as a number") && sum.contains("keepdims"),
        "{sum}"
    );
}
