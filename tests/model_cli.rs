//! Model verbs from scripts and the REPL, through the real binary, on the default model:
//! `load`, `info`, `encode`/`decode`/`tokens`/`chat`, `forward`, `top_k`, `generate` (streamed,
//! batched, interrupted), and the errors users meet.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

fn eval(home: &Path, code: &str) -> Run {
    mlxi(home).args(["-e", code]).output().unwrap().into()
}

#[test]
fn top_k_lists_paris_first() {
    let home = home_with_models();
    let out = eval(
        home.path(),
        r#"top_k(load(), "The capital of France is", 3)"#,
    );
    let text = out.ok();
    let first_row = text.lines().nth(1).unwrap_or_default();
    assert!(
        first_row.contains("\" Paris\"") && first_row.contains("7042"),
        "{text}"
    );
}

#[test]
fn tokens_and_info_in_both_call_styles() {
    let home = home_with_models();
    let code = r#"
        let m = load();
        let a = encode(m, "The capital of France is");
        let b = m.encode("The capital of France is");
        let i = m.info();
        [a == b, a, m.decode(a), tokens(m, "The capital"), i.n_layers, i.d_model, i.vocab,
         m.n_layers, i.arch, i.quantization, chat(m, "Hi").contains("<|im_start|>user\nHi<|im_end|>"),
         i.device]
    "#;
    // Long arrays print one element per line: compare without the layout.
    let text = eval(home.path(), code)
        .ok()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let text = text
        .replace("[ ", "[")
        .replace(", ]", "]")
        .replace(" ]", "]");
    // A GPU keeps the quantized weights by default; the CPU dequantizes them at load.
    let (quantization, device) = if text.ends_with("\"gpu\"]") {
        ("4-bit group 32", "gpu")
    } else {
        ("4-bit group 32 (dequantized at load)", "cpu")
    };
    let want = format!("[true, [504, 3575, 282, 4649, 314], \"The capital of France is\", [\"The\", \" capital\"], 30, 576, 49152, 30, \"llama\", \"{quantization}\", true, \"{device}\"]");
    assert!(text.starts_with(&want), "{text}");
}

#[test]
fn forward_shapes_and_greedy_generation() {
    let home = home_with_models();
    let code = r#"
        let m = load();
        let one = forward(m, "The capital of France is");
        let two = m.forward(["The capital of France is", "Hello"]);
        let g = m.generate("The capital of France is", #{max_tokens: 8});
        let batch = generate(m, ["The capital of France is", "Hello"], #{max_tokens: 8});
        [one.shape, two.shape, g, batch[0] == g, batch.len()]
    "#;
    let text = eval(home.path(), code).ok().to_string();
    // The golden continuation (mlx-lm): " Paris.\n\nThe answer is:".
    assert!(
        text.starts_with("[[5, 49152], [2, 5, 49152], \" Paris.\\n\\nThe answer is:\", true, 2]"),
        "{text}"
    );
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let home = home_with_models();
    let code = r#"
        let m = load();
        let o = #{max_tokens: 12, temperature: 0.9, top_p: 0.95, seed: 7};
        let a = m.generate("Once upon a time", o);
        let b = m.generate("Once upon a time", o);
        let c = m.generate("Once upon a time", #{max_tokens: 12, temperature: 0.9, top_p: 0.95, seed: 8});
        [a == b, a != c]
    "#;
    assert_eq!(eval(home.path(), code).ok(), "[true, true]");
}

#[test]
fn stop_strings_end_generation() {
    let home = home_with_models();
    let code = r#"load().generate("The capital of France is", #{max_tokens: 20, stop: ["\n"]})"#;
    assert_eq!(eval(home.path(), code).ok(), " Paris.");
}

#[test]
fn bad_input_gives_clear_errors() {
    let home = home_with_models();
    let err = eval(home.path(), r#"load("no/such/place/at/all")"#)
        .failed()
        .to_string();
    assert!(
        err.contains("<-e>:1:1") && err.contains("no such file or folder"),
        "{err}"
    );

    let err = eval(home.path(), r#"load().generate("x", #{max_token: 3})"#)
        .failed()
        .to_string();
    assert!(
        err.contains("max_tokens") && err.contains("valid options"),
        "{err}"
    );

    let err = eval(home.path(), r#"forward(load(), [1, 2, 99999999])"#)
        .failed()
        .to_string();
    assert!(err.contains("out of range"), "{err}");

    // A truncated GGUF and a file that is not a model at all.
    let bad = home.path().join("bad.gguf");
    let real = home.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let head = std::fs::read(&real).unwrap()[..1_000_000].to_vec();
    std::fs::write(&bad, head).unwrap();
    let err = eval(
        home.path(),
        &format!("load({:?})", bad.display().to_string()),
    )
    .failed()
    .to_string();
    assert!(err.contains("bad.gguf"), "{err}");
    std::fs::write(&bad, b"hello").unwrap();
    let err = eval(
        home.path(),
        &format!("load({:?})", bad.display().to_string()),
    )
    .failed()
    .to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
}

#[test]
fn models_lists_the_default_model() {
    let home = home_with_models();
    let out: Run = mlxi(home.path())
        .env("HF_HOME", home.path().join("hf"))
        .arg("models")
        .output()
        .unwrap()
        .into();
    assert!(out.ok().starts_with("default"), "{}", out.stdout);
}

#[test]
fn ctrl_c_stops_a_generation_in_the_repl_and_the_model_stays_usable() {
    use rexpect::session::spawn_command;
    let home = home_with_models();
    let mut cmd = mlxi(home.path());
    cmd.env("TERM", "xterm");
    let mut p = spawn_command(cmd, Some(60_000)).unwrap();
    p.exp_string("mlxi> ").unwrap();
    p.send_line("let m = load();").unwrap();
    p.exp_string("mlxi> ").unwrap();
    p.send_line(r#"m.generate("Once upon a time", #{max_tokens: 5000})"#)
        .unwrap();
    // Streams: the first words arrive before the end.
    p.exp_string(", ").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    p.send_control('c').unwrap();
    p.exp_string("interrupted").unwrap();
    p.exp_string("mlxi> ").unwrap();
    p.send_line(r#"top_k(m, "The capital of France is", 1)[0].token"#)
        .unwrap();
    p.exp_string("Paris").unwrap();
    p.exp_string("mlxi> ").unwrap();
}
