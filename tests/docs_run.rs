//! Docs that run: every ```rhai block in README.md, docs/SHELL.md and docs/script-api.md is run
//! as written, as a script file of its own (`mlxi run block.rhai`, the default model available,
//! the block's folder a scratch folder that sees the repository's `tests/fixtures`, as a script
//! run from the repository root does: the mixture-of-experts examples load the tiny
//! `tests/fixtures/models/qwen3_moe`), and must succeed. A block that uses a variable it does
//! not define, a renamed function or a wrong option fails here, with the file and line.
//!
//! Blocks run in separate processes, one at a time across the whole file (each MLX process
//! already uses every core through its BLAS threads; six at once on CI's two cores made this
//! file take 8 minutes for about 2 minutes of work).

mod common;

use std::path::Path;

/// The ```rhai blocks of a Markdown file: (line of the opening fence, code).
fn rhai_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match &mut current {
            None if fence && line.trim_start().trim_start_matches('`').trim() == "rhai" => {
                current = Some((i + 1, String::new()));
            }
            Some(_) if fence => blocks.push(current.take().expect("open block")),
            Some((_, code)) => {
                code.push_str(line);
                code.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an unclosed ```rhai block");
    blocks
}

/// Runs every block of `doc` (relative to the repository); returns the failures.
fn run_doc(doc: &str) -> Vec<String> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let text = std::fs::read_to_string(common::repo().join(doc)).expect("the doc");
    rhai_blocks(&text)
        .iter()
        .filter_map(|(line, code)| {
            let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
            run_block(doc, *line, code)
        })
        .collect()
}

fn run_block(doc: &str, line: usize, code: &str) -> Option<String> {
    let dir = common::scratch();
    std::fs::create_dir(dir.path().join("tests")).expect("a tests folder");
    std::os::unix::fs::symlink(
        common::repo().join("tests/fixtures"),
        dir.path().join("tests/fixtures"),
    )
    .expect("link the fixtures");
    let file = common::write(dir.path(), "block.rhai", code);
    let r = common::run_with_models(dir.path(), &[file.to_str().expect("a UTF-8 path")]);
    (r.code != Some(0)).then(|| {
        format!(
            "{doc}:{line}: the block fails:\n{}\n{}",
            last_lines(&r.stderr, 12),
            last_lines(&r.stdout, 5)
        )
    })
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[track_caller]
fn check(doc: &str, at_least: usize) {
    let n = rhai_blocks(&std::fs::read_to_string(common::repo().join(doc)).unwrap()).len();
    assert!(
        n >= at_least,
        "{doc} has {n} rhai blocks; expected at least {at_least}"
    );
    let failures = run_doc(doc);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn blocks_are_found_as_written() {
    let md = "text\n```rhai\nlet a = 1;\n```\n```sh\nls\n```\n  ```rhai\nlet b = 2;\n  ```\n";
    assert_eq!(
        rhai_blocks(md),
        [
            (2, "let a = 1;\n".to_string()),
            (8, "let b = 2;\n".to_string())
        ]
    );
    assert!(Path::new(&common::repo().join("README.md")).is_file());
}

#[test]
fn readme_blocks_run() {
    check("README.md", 10);
}

#[test]
fn shell_guide_blocks_run() {
    check("docs/SHELL.md", 6);
}

#[test]
fn script_api_blocks_run() {
    check("docs/script-api.md", 1);
}
