//! How values look at the REPL and from `mlxi -e`: a Tensor as its summary, an array of maps
//! with the same keys (top_k results, per-layer reports) as an aligned table, strings as they
//! are, long arrays shortened.

use rhai::{Array, Dynamic, Map};

use super::tensor::Tensor;

/// Rows of a table shown before "... N more rows".
const MAX_ROWS: usize = 50;
/// Table columns shown first, in this order; the others follow alphabetically.
const FIRST_COLUMNS: [&str; 6] = ["layer", "token", "text", "id", "prob", "logit"];
/// Elements of an array shown inline before "... N more".
const MAX_INLINE: usize = 20;

/// A value as the REPL shows a result; `None` for `()`, which shows nothing.
pub fn show(value: &Dynamic) -> Option<String> {
    if value.is_unit() {
        return None;
    }
    if let Ok(s) = value.clone().into_immutable_string() {
        return Some(s.to_string());
    }
    if let Some(t) = value.read_lock::<Tensor>() {
        return Some(t.pretty());
    }
    if let Some(m) = value.read_lock::<super::model::ModelHandle>() {
        return Some(m.summary());
    }
    if let Some(c) = value.read_lock::<super::capture::Cache>() {
        return Some(c.summary());
    }
    if let Some(d) = value.read_lock::<super::steer::Direction>() {
        return Some(d.summary());
    }
    // A probe shown at the REPL is its report: the table and bars by layer.
    if let Some(p) = value.read_lock::<super::probe::Probe>() {
        return Some(p.report());
    }
    if let Some(a) = value.read_lock::<Array>() {
        if let Some(table) = table(&a) {
            return Some(table);
        }
        let line = inline(value);
        if line.len() > 100 && !a.is_empty() {
            return Some(vertical(&a));
        }
        return Some(line);
    }
    if let Some(m) = value.read_lock::<Map>() {
        let line = inline(value);
        if line.len() > 100 {
            let width = m.keys().map(|k| k.len()).max().unwrap_or(0);
            let lines: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("  {k:width$}: {}", inline(v)))
                .collect();
            return Some(format!("#{{\n{}\n}}", lines.join(",\n")));
        }
        return Some(line);
    }
    Some(inline(value))
}

/// One line: strings quoted, floats as Rhai writes them, long arrays cut.
pub fn inline(value: &Dynamic) -> String {
    inline_at(value, 0)
}

/// Nesting shown before `[...]`.
const MAX_DEPTH: usize = 12;

fn inline_at(value: &Dynamic, depth: usize) -> String {
    if value.is_unit() {
        return "()".into();
    }
    if let Ok(f) = value.as_float() {
        return float(f);
    }
    if let Ok(s) = value.clone().into_immutable_string() {
        return format!("{:?}", s.as_str());
    }
    if let Ok(c) = value.as_char() {
        return format!("{c:?}");
    }
    if let Some(a) = value.read_lock::<Array>() {
        if depth >= MAX_DEPTH {
            return "[...]".into();
        }
        let mut items: Vec<String> = a
            .iter()
            .take(MAX_INLINE)
            .map(|v| inline_at(v, depth + 1))
            .collect();
        if a.len() > MAX_INLINE {
            items.push(format!("... {} more", a.len() - MAX_INLINE));
        }
        return format!("[{}]", items.join(", "));
    }
    if let Some(m) = value.read_lock::<Map>() {
        let items: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{k}: {}", inline(v)))
            .collect();
        return format!("#{{{}}}", items.join(", "));
    }
    if let Some(t) = value.read_lock::<Tensor>() {
        return t.summary();
    }
    if let Some(m) = value.read_lock::<super::model::ModelHandle>() {
        return m.summary();
    }
    if let Some(c) = value.read_lock::<super::capture::Cache>() {
        return c.summary();
    }
    if let Some(d) = value.read_lock::<super::steer::Direction>() {
        return d.summary();
    }
    if let Some(r) = value.read_lock::<super::results::Results>() {
        return r.summary();
    }
    if let Some(p) = value.read_lock::<super::probe::Probe>() {
        return p.summary();
    }
    if let Some(p) = value.read_lock::<super::progress::Progress>() {
        return p.summary();
    }
    value.to_string()
}

/// A float the way Rhai writes it (`1.0`, not `1`).
pub fn float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// The type of a value as users know it: integer, float, string, array, map, Tensor, ...
pub fn type_name(value: &Dynamic) -> String {
    if value.is_int() {
        "integer".into()
    } else if value.is_float() {
        "float".into()
    } else if value.is_string() {
        "string".into()
    } else if value.is_array() {
        "array".into()
    } else if value.is_map() {
        "map".into()
    } else if value.is_unit() {
        "()".into()
    } else if value.is_bool() {
        "bool".into()
    } else {
        let name = value.type_name();
        name.rsplit("::").next().unwrap_or(name).to_string()
    }
}

fn vertical(a: &Array) -> String {
    let mut lines: Vec<String> = a
        .iter()
        .take(MAX_ROWS)
        .map(|v| format!("  {},", inline(v)))
        .collect();
    if a.len() > MAX_ROWS {
        lines.push(format!("  ... {} more", a.len() - MAX_ROWS));
    }
    format!("[\n{}\n]", lines.join("\n"))
}

/// An aligned table for a non-empty array of maps that all have the same keys.
fn table(rows: &Array) -> Option<String> {
    let first = rows.first()?.read_lock::<Map>()?;
    let mut keys: Vec<String> = first.keys().map(|k| k.to_string()).collect();
    drop(first);
    // Rhai maps are sorted by key; the columns people scan first go first.
    keys.sort_by_key(|k| {
        FIRST_COLUMNS
            .iter()
            .position(|c| c == k)
            .unwrap_or(usize::MAX)
    });
    if keys.is_empty() {
        return None;
    }
    let mut cells: Vec<Vec<(String, bool)>> = Vec::new();
    for row in rows.iter().take(MAX_ROWS) {
        let m = row.read_lock::<Map>()?;
        if m.len() != keys.len() {
            return None;
        }
        let mut line = Vec::new();
        for k in &keys {
            let v = m.get(k.as_str())?;
            let numeric = v.is_int() || v.is_float();
            let text = if let Ok(f) = v.as_float() {
                crate::arrays::fmt_number(f as f32)
            } else {
                inline(v)
            };
            line.push((text, numeric));
        }
        cells.push(line);
    }
    let widths: Vec<usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            cells
                .iter()
                .map(|r| r[i].0.chars().count())
                .chain([k.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric: Vec<bool> = (0..keys.len())
        .map(|i| cells.iter().all(|r| r[i].1))
        .collect();
    let pad = |text: &str, i: usize| {
        let fill = " ".repeat(widths[i].saturating_sub(text.chars().count()));
        if numeric[i] {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let mut out = Vec::new();
    let header: Vec<String> = keys.iter().enumerate().map(|(i, k)| pad(k, i)).collect();
    out.push(header.join("  ").trim_end().to_string());
    for r in &cells {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| pad(&c.0, i)).collect();
        out.push(line.join("  ").trim_end().to_string());
    }
    if rows.len() > MAX_ROWS {
        out.push(format!("... {} more rows", rows.len() - MAX_ROWS));
    }
    Some(out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(token: &str, prob: f64) -> Dynamic {
        let mut m = Map::new();
        m.insert("token".into(), token.into());
        m.insert("prob".into(), Dynamic::from_float(prob));
        Dynamic::from_map(m)
    }

    #[test]
    fn arrays_of_maps_are_tables() {
        let rows: Array = vec![row(" Paris", 0.5), row(" the", 0.125)];
        let shown = show(&Dynamic::from_array(rows)).unwrap_or_default();
        assert_eq!(
            shown,
            "token      prob\n\" Paris\"    0.5\n\" the\"    0.125"
        );
    }

    #[test]
    fn scalars_and_strings() {
        assert_eq!(show(&Dynamic::UNIT), None);
        assert_eq!(show(&"hi".into()).as_deref(), Some("hi"));
        assert_eq!(inline(&Dynamic::from_float(2.0)), "2.0");
        assert_eq!(inline(&"a\"b".into()), "\"a\\\"b\"");
    }
}
