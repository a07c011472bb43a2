//! `:help` from the registered functions' own doc comments (Rhai's `metadata` feature), so the
//! help can never drift from the code.

use std::collections::BTreeMap;

use rhai::Engine;
use serde_json::Value;

/// One function (all its overloads) as `:help NAME` shows it.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// `norm`, `stats::mean`, or `.shape` for a property.
    pub name: String,
    /// One per overload: `norm(t: Tensor) -> float`.
    pub signatures: Vec<String>,
    /// The doc comments, `///` removed; one block per overload that has one.
    pub docs: Vec<String>,
}

/// The functions that mlxi adds (not Rhai's standard library), by name.
#[derive(Debug, Default)]
pub struct Index {
    entries: BTreeMap<String, Entry>,
    /// Names of every callable function, standard library included (for completion).
    all_names: Vec<String>,
}

impl Index {
    pub fn build(engine: &Engine) -> Self {
        let mut index = Index::default();
        let ours = metadata(engine, false);
        let mut add = |prefix: &str, functions: &Value| {
            for f in functions.as_array().into_iter().flatten() {
                let Some(name) = f["name"].as_str() else {
                    continue;
                };
                let Some(name) = display_name(name) else {
                    continue;
                };
                let name = format!("{prefix}{name}");
                let e = index.entries.entry(name.clone()).or_insert_with(|| Entry {
                    name,
                    ..Entry::default()
                });
                e.signatures.push(signature(prefix, f));
                let doc = doc_text(&f["docComments"]);
                if !doc.is_empty() && !e.docs.contains(&doc) {
                    e.docs.push(doc);
                }
            }
        };
        add("", &ours["functions"]);
        for (module, m) in ours["modules"].as_object().into_iter().flatten() {
            add(&format!("{module}::"), &m["functions"]);
        }
        let all = metadata(engine, true);
        let mut names: Vec<String> = all["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| display_name(f["name"].as_str()?))
            .map(|n| n.trim_start_matches('.').to_string())
            .chain(index.entries.keys().filter(|k| k.contains("::")).cloned())
            .collect();
        names.sort();
        names.dedup();
        index.all_names = names;
        index
    }

    /// The entry for `name` (`norm`, `stats::mean`, `shape` or `.shape`).
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name).or_else(|| {
            self.entries
                .get(&format!(".{}", name.trim_start_matches('.')))
        })
    }

    /// Every documented name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Every callable name, the standard library's included.
    pub fn all_names(&self) -> &[String] {
        &self.all_names
    }
}

impl Entry {
    /// The text `:help NAME` prints.
    pub fn render(&self) -> String {
        let mut out = self.signatures.join("\n");
        for d in &self.docs {
            out.push_str("\n\n");
            out.push_str(d);
        }
        out
    }
}

fn metadata(engine: &Engine, std: bool) -> Value {
    engine
        .gen_fn_metadata_to_json(std)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// The name users type: operators and indexers are left out, `get$shape` becomes `.shape`.
fn display_name(raw: &str) -> Option<String> {
    if let Some(prop) = raw.strip_prefix("get$") {
        return Some(format!(".{prop}"));
    }
    let first = raw.chars().next()?;
    if raw.contains('$') || !(first.is_alphabetic() || first == '_') {
        return None;
    }
    if raw == "to_string" || raw == "to_debug" {
        return None;
    }
    Some(raw.to_string())
}

/// `norm(t: Tensor) -> float`, `t.shape -> array`, in the types scripts see.
fn signature(prefix: &str, f: &Value) -> String {
    let name = f["name"].as_str().unwrap_or_default();
    let params: Vec<(String, String)> = f["params"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("_").to_string();
            (
                name,
                p["type"].as_str().map(script_type).unwrap_or_default(),
            )
        })
        .collect();
    let ret = script_type(f["returnType"].as_str().unwrap_or(""));
    let ret = match ret.as_str() {
        "" | "()" | "value" => String::new(),
        r => format!(" -> {r}"),
    };
    if let Some(prop) = name.strip_prefix("get$") {
        let target = params.first().map_or("x", |p| p.0.as_str());
        return format!("{target}.{prop}{ret}");
    }
    let list: Vec<String> = params
        .iter()
        .map(|(n, t)| match t.as_str() {
            "" | "value" => n.clone(),
            t => format!("{n}: {t}"),
        })
        .collect();
    format!("{prefix}{name}({}){ret}", list.join(", "))
}

/// A Rust type from the metadata as scripts know it: `RhaiResult<FLOAT>` is `float`.
fn script_type(rust: &str) -> String {
    let t = rust
        .trim()
        .trim_start_matches("&mut ")
        .trim_start_matches('&')
        .trim();
    for wrapper in ["RhaiResult<", "Result<"] {
        if let Some(inner) = t.strip_prefix(wrapper).and_then(|r| r.strip_suffix('>')) {
            let inner = inner.split_once(", Box<").map_or(inner, |(ok, _)| ok);
            return script_type(inner);
        }
    }
    let last = t.rsplit("::").next().unwrap_or(t);
    match last {
        "i64" | "INT" | "int" => "int",
        "f64" | "FLOAT" | "float" => "float",
        "bool" => "bool",
        "str" | "String" | "ImmutableString" | "string" => "string",
        "Array" | "RhaiArray" | "array" => "array",
        "Map" | "map" => "map",
        "Dynamic" | "?" => "value",
        other => other,
    }
    .to_string()
}

fn doc_text(comments: &Value) -> String {
    let lines: Vec<&str> = comments
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .flat_map(str::lines)
        .map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("///")
                .or_else(|| l.strip_prefix("//!"))
                .unwrap_or(l);
            l.strip_prefix(' ').unwrap_or(l)
        })
        .collect();
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_read_as_script_types() {
        let engine = crate::script::new_engine(crate::script::Context::in_current_dir());
        let index = Index::build(&engine);
        let all: Vec<String> = index
            .names()
            .filter_map(|n| index.get(n))
            .flat_map(|e| e.signatures.clone())
            .collect();
        for s in &all {
            // Rust wrappers must not leak ("Results" is a script type, not a wrapper).
            assert!(
                !s.contains("Result<") && !s.contains("Rhai") && !s.contains('&'),
                "{s}"
            );
        }
        let sigs = |n: &str| index.get(n).map(|e| e.signatures.join(" | "));
        let norm = sigs("norm").unwrap_or_default();
        assert!(
            norm.contains("norm(t: Tensor) -> float")
                && norm.contains("norm(t: Tensor, axis: int) -> Tensor"),
            "{norm}"
        );
        assert_eq!(sigs("shape").as_deref(), Some("t.shape -> array"));
        assert_eq!(
            sigs("stats::binomial_test").as_deref(),
            Some("stats::binomial_test(k: int, n: int, p: float) -> float")
        );
        assert_eq!(sigs("dot").as_deref(), Some("dot(a: Tensor, b: Tensor)"));
    }
}
