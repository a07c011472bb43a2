//! Chat templates, rendered with MiniJinja set up the way transformers sets up Jinja2
//! (`trim_blocks`, `lstrip_blocks`, loop controls, Python string methods, `raise_exception`,
//! `strftime_now`, a Python-compatible `tojson`).

use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value as JinjaValue, ValueKind};

use crate::error::{Error, Result};

/// One message of a conversation, as chat templates see it (`message.role`, `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `"system"`, `"user"`, `"assistant"`, or whatever other role the template knows.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A map that keeps its keys in insertion order, as Python dicts do (`tojson` and `items()` show
/// it).
#[derive(Debug)]
struct OrderedMap(Vec<(String, JinjaValue)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let key = key.as_str()?;
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .iter()
                .map(|(k, _)| JinjaValue::from(k.as_str()))
                .collect(),
        )
    }
}

/// The most instructions a chat template may run (MiniJinja's fuel): real templates use a few
/// hundred per message, so this is over ten thousand messages' worth, yet a runaway template
/// (nested loops over `range`) stops within about a second.
pub const CHAT_TEMPLATE_FUEL: u64 = 20_000_000;

/// Renders `messages` through the template `source` (see [`super::Tokenizer::apply_chat_template`]).
pub(super) fn render_chat_template(
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    special_strings: &[(&'static str, String)],
) -> Result<String> {
    let source = strip_generation_tags(source);
    let mut env = minijinja::Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))?;
    env.set_syntax(syntax);
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    let template = env
        .template_from_str(&source)
        .map_err(|e| Error::Tokenizer(format!("chat template: {}", jinja_error(&e))))?;

    let messages: Vec<JinjaValue> = messages
        .iter()
        .map(|m| {
            JinjaValue::from_object(OrderedMap(vec![
                ("role".to_string(), JinjaValue::from(m.role.as_str())),
                ("content".to_string(), JinjaValue::from(m.content.as_str())),
            ]))
        })
        .collect();
    let mut ctx: Vec<(String, JinjaValue)> = vec![
        ("messages".to_string(), JinjaValue::from(messages)),
        (
            "add_generation_prompt".to_string(),
            JinjaValue::from(add_generation_prompt),
        ),
    ];
    for (key, value) in special_strings {
        ctx.push((key.to_string(), JinjaValue::from(value.as_str())));
    }
    template
        .render(JinjaValue::from_object(OrderedMap(ctx)))
        .map_err(|e| Error::Tokenizer(format!("chat template: {}", jinja_error(&e))))
}

/// A MiniJinja error with its causes, on one line.
fn jinja_error(err: &minijinja::Error) -> String {
    if err.kind() == minijinja::ErrorKind::OutOfFuel {
        return format!(
            "stopped after {CHAT_TEMPLATE_FUEL} steps (a runaway loop in the template?)"
        );
    }
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let _ = write!(msg, ": {cause}");
        source = cause.source();
    }
    msg
}

/// transformers renders `{% generation %}...{% endgeneration %}` (its AssistantTracker extension)
/// as its body; MiniJinja has no such tag, so turn it into an always-true `if`.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open_ws, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close_ws) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => {
                let _ = write!(out, "{{%{open_ws} if true {close_ws}%}}");
            }
            "endgeneration" => {
                let _ = write!(out, "{{%{open_ws} endif {close_ws}%}}");
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(message: String) -> std::result::Result<JinjaValue, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// The current time (UTC) formatted with a `strftime` format, as transformers' `strftime_now`.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A `strftime` subset (`%Y %y %m %d %e %j %H %I %M %S %p %b %B %a %A %%`) for a UTC timestamp.
fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (tod / 3600, tod % 3600 / 60, tod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let jan1 = {
        // days from 1970-01-01 to Jan 1 of `year`
        let y = year - 1;
        365 * (y - 1969) + (y / 4 - 1969 / 4) - (y / 100 - 1969 / 100) + (y / 400 - 1969 / 400)
    };
    let yday = days - jan1 + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('Y') => write!(out, "{year}"),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)),
            Some('m') => write!(out, "{month:02}"),
            Some('d') => write!(out, "{day:02}"),
            Some('e') => write!(out, "{day:>2}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('H') => write!(out, "{hour:02}"),
            Some('I') => write!(out, "{:02}", if hour % 12 == 0 { 12 } else { hour % 12 }),
            Some('M') => write!(out, "{minute:02}"),
            Some('S') => write!(out, "{second:02}"),
            Some('p') => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            Some('B') => write!(out, "{}", MONTHS[month as usize - 1]),
            Some('b') => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// which is what transformers installs as the `tojson` filter.
fn tojson(value: &JinjaValue, kwargs: Kwargs) -> std::result::Result<JinjaValue, minijinja::Error> {
    let indent: Option<JinjaValue> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<JinjaValue> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            // (capped: a template should not be able to ask for gigabytes of spaces)
            None => Some(" ".repeat(v.as_i64().unwrap_or(0).clamp(0, 256) as usize)),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(seps) if !seps.is_none() => {
            let a = seps.get_item_by_index(0)?;
            let b = seps.get_item_by_index(1)?;
            (
                a.as_str().unwrap_or(",").to_string(),
                b.as_str().unwrap_or(":").to_string(),
            )
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(JinjaValue::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &JinjaValue,
    opts: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let f = f64::try_from(value.clone())?;
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    let _ = write!(out, "{f:.1}");
                } else {
                    let _ = write!(out, "{f}");
                }
            }
        }
        ValueKind::String => {
            write_json_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Map => {
            let mut keys: Vec<JinjaValue> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline(out, opts, depth + 1);
                let key_str = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None | ValueKind::Undefined => "null".to_string(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
                    _ => key.to_string(),
                };
                write_json_string(out, &key_str, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, &value.get_item(key)?, opts, depth + 1)?;
            }
            write_newline(out, opts, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<JinjaValue> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            write_newline(out, opts, depth);
            out.push(']');
        }
        _ => write_json_string(out, &value.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, messages: &[ChatMessage], gen: bool) -> Result<String> {
        render_chat_template(
            src,
            messages,
            gen,
            &[("bos_token", "<s>".into()), ("eos_token", "</s>".into())],
        )
    }

    #[test]
    fn tokenizer_template_features() {
        let msgs = [
            ChatMessage::system("  Be brief.  "),
            ChatMessage::user("Hi, you"),
        ];
        // trim_blocks / lstrip_blocks, loop controls, python string methods, bos_token
        let src = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n[{{ m.role.upper() }}] {{ m.content.split(',')[0].strip() }}|{{ m['content'].startswith('Hi') }}\n{% endfor %}\n{% if add_generation_prompt %}[ASSISTANT]{% endif %}";
        assert_eq!(
            render(src, &msgs, true).unwrap(),
            "<s>\n[USER] Hi|True\n[ASSISTANT]"
        );
        assert_eq!(render(src, &msgs, false).unwrap(), "<s>\n[USER] Hi|True\n");
        // raise_exception surfaces its message
        let err = render(
            "{{ raise_exception('Only user and assistant roles!') }}",
            &msgs,
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Only user and assistant roles!"), "{err}");
        // syntax errors are errors, not panics
        assert!(render("{% for %}", &msgs, true).is_err());
        // odd tags do not trip the {% generation %} rewriting
        assert!(render("{%}", &msgs, true).is_err());
        assert!(render("a {%", &msgs, true).is_err());
        // {% generation %} blocks render their body
        assert_eq!(
            render("{%- generation -%} x {%- endgeneration %}", &msgs, true).unwrap(),
            "x"
        );
        // strftime_now exists
        let year = render("{{ strftime_now('%Y') }}", &msgs, true).unwrap();
        assert_eq!(year.len(), 4);
        // messages keep Python's key order
        assert_eq!(
            render("{{ messages[1] | tojson }}", &msgs, true).unwrap(),
            r#"{"role": "user", "content": "Hi, you"}"#
        );
    }

    #[test]
    fn tokenizer_runaway_template_stops() {
        // Nested loops of 10^15 iterations (range itself stops at 100000 items): without a
        // step limit this never returns.
        let src = "{% for i in range(100000) %}{% for j in range(100000) %}\
                   {% for k in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(render(src, &[ChatMessage::user("hi")], true));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the template stops within 30 s");
        let err = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("chat template: stopped after 20000000 steps"),
            "{err}"
        );
        // An ordinary long conversation stays well inside the limit.
        let msgs: Vec<ChatMessage> = (0..2000)
            .map(|i| ChatMessage::user(format!("m{i}")))
            .collect();
        let src = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}";
        assert!(render(src, &msgs, true).is_ok());
    }

    #[test]
    fn tokenizer_tojson_matches_python() {
        let msgs = [ChatMessage::user("x")];
        let src = r#"{{ {"b": [1, 2.5, 3.0, none, true], "a": "q\"<é>\n"} | tojson }}|{{ [] | tojson(indent=2) }}|{{ {"k": [1, {"z": 1}]} | tojson(indent=2) }}|{{ "é" | tojson(ensure_ascii=true) }}|{{ {"b": 1, "a": 2} | tojson(sort_keys=true, separators=(",", ":")) }}"#;
        // Python: json.dumps(..., ensure_ascii=False) and friends
        let expect = "{\"b\": [1, 2.5, 3.0, null, true], \"a\": \"q\\\"<é>\\n\"}|[]|{\n  \"k\": [\n    1,\n    {\n      \"z\": 1\n    }\n  ]\n}|\"\\u00e9\"|{\"a\":2,\"b\":1}";
        assert_eq!(render(src, &msgs, true).unwrap(), expect);
    }

    #[test]
    fn tokenizer_strftime() {
        // 2024-07-26 13:05:09 UTC, a Friday
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %p %I %j %%", t),
            "Friday July 26, 24 13:05:09 PM 01 208 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d %a", 951_782_400), "2000-02-29 Tue");
    }
}
