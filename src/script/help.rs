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
                if let Some(sig) = f["signature"].as_str() {
                    e.signatures.push(format!("{prefix}{sig}"));
                }
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
    Some(raw.to_string())
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
