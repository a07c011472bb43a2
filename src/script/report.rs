//! Script errors as people read them: `FILE:LINE:COL: message`, the line with a caret under the
//! spot, and the chain of calls and imports that led there.

use rhai::{Engine, EvalAltResult, ParseError, Position};

use super::Context;

/// Formats a runtime (or module) error. `main` names the top-level script in the message.
pub fn runtime(err: &EvalAltResult, engine: &Engine, ctx: &Context, main: &str) -> String {
    let mut file = main.to_string();
    let mut trail = Vec::new();
    let mut e = err;
    loop {
        match e {
            EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                let what = if name.starts_with("anon$") {
                    "in a closure".to_string()
                } else {
                    format!("in {name}()")
                };
                trail.push(format!("{what}, called at {}", location(&file, *pos)));
                file = if src.is_empty() {
                    main.to_string()
                } else {
                    src.clone()
                };
                e = inner;
            }
            EvalAltResult::ErrorInModule(name, inner, pos) => {
                trail.push(format!(
                    "in module {name}, imported at {}",
                    location(&file, *pos)
                ));
                file = name.clone();
                e = inner;
            }
            _ => break,
        }
    }
    let mut out = at(&file, e.position(), &message(e, engine), ctx);
    // Innermost call first; a deep recursion shows its two ends.
    trail.reverse();
    if trail.len() > 8 {
        let hidden = trail.len() - 6;
        trail.splice(4..trail.len() - 2, [format!("... {hidden} more calls")]);
    }
    for line in &trail {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}

/// Formats a syntax error in `file`.
pub fn parse(err: &ParseError, file: &str, ctx: &Context) -> String {
    at(file, err.position(), &err.err_type().to_string(), ctx)
}

/// The message of an error without its position.
pub fn message(err: &EvalAltResult, engine: &Engine) -> String {
    match err {
        EvalAltResult::ErrorRuntime(value, _) => match value.clone().into_immutable_string() {
            Ok(s) => s.to_string(),
            Err(_) => super::display::inline(value),
        },
        EvalAltResult::ErrorTerminated(..) => "interrupted".into(),
        EvalAltResult::ErrorTooManyOperations(_) => format!(
            "stopped after {} operations (runaway loop?); set MLXI_MAX_OPERATIONS to change \
             the limit, 0 for none",
            engine.max_operations()
        ),
        EvalAltResult::ErrorStackOverflow(_) => format!(
            "more than {} nested function calls (runaway recursion?)",
            engine.max_call_levels()
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            let what = what.to_lowercase();
            let (kind, max, unit, var) = if what.contains("string") {
                (
                    "a string",
                    engine.max_string_size(),
                    "bytes",
                    "MLXI_MAX_STRING_SIZE",
                )
            } else if what.contains("map") {
                (
                    "a map",
                    engine.max_map_size(),
                    "entries",
                    "MLXI_MAX_MAP_SIZE",
                )
            } else {
                (
                    "an array",
                    engine.max_array_size(),
                    "elements",
                    "MLXI_MAX_ARRAY_SIZE",
                )
            };
            format!(
                "{kind} would grow past the limit of {max} {unit}; set {var} to change it, 0 \
                 for none"
            )
        }
        EvalAltResult::ErrorParsing(p, _) => p.to_string(),
        other => {
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            text.strip_suffix(&suffix).unwrap_or(&text).to_string()
        }
    }
}

fn location(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}

/// `file:line:col: message`, then the source line and a caret when the source is known.
fn at(file: &str, pos: Position, msg: &str, ctx: &Context) -> String {
    let mut out = format!("{}: {msg}", location(file, pos));
    let Some(line_no) = pos.line() else {
        return out;
    };
    let Some(text) = ctx.source(file) else {
        return out;
    };
    let Some(line) = text.lines().nth(line_no - 1) else {
        return out;
    };
    let gutter = format!("{line_no:>4} | ");
    out.push('\n');
    out.push_str(&gutter);
    out.push_str(line);
    if let Some(col) = pos.position() {
        // Copy tabs so the caret lines up under the same characters.
        let pad: String = line
            .chars()
            .take(col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push('\n');
        out.push_str(&" ".repeat(gutter.len() - 2));
        out.push_str("| ");
        out.push_str(&pad);
        out.push('^');
    }
    out
}
