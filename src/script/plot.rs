//! `plot::...`: charts from scripts. SVG files (`plot::line`, `plot::bars`, `plot::heatmap`)
//! and terminal charts as strings (`plot::text_bars`, `plot::text_heatmap`,
//! `plot::sparkline`). The drawing itself is in [`crate::plot`]; this file turns script values
//! into its chart descriptions.
//!
//! Every SVG function takes an options map with a required `path` (ending in `.svg`, relative
//! to the script's folder), writes the file atomically and returns the path written.

use rhai::plugin::*;
use rhai::{Array, Dynamic, Engine, Map};

use super::options::Options;
use super::stats::numbers;
use super::tensor::Tensor;
use super::{context, located, RhaiResult};
use crate::arrays::write_atomic;
use crate::plot::{self, BarChart, HLine, Heatmap, Labels, LineChart, Series};
use crate::{Error, Result};

const LINE_KEYS: &[&str] = &[
    "path",
    "title",
    "x_label",
    "y_label",
    "x",
    "hline",
    "hline_label",
    "y_min",
    "y_max",
    "width",
    "height",
];

const BAR_KEYS: &[&str] = &[
    "path",
    "title",
    "x_label",
    "y_label",
    "err",
    "hline",
    "hline_label",
    "y_min",
    "y_max",
    "width",
    "height",
];

const HEATMAP_KEYS: &[&str] = &[
    "path", "title", "rows", "cols", "x_label", "y_label", "annotate", "min", "max",
];

const TEXT_HEATMAP_KEYS: &[&str] = &["title", "rows", "min", "max"];

const TEXT_BAR_KEYS: &[&str] = &["width", "max"];

fn invalid(verb: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{verb}: {msg}"))
}

/// Numbers from an array of numbers or a 1-d Tensor.
fn vector(value: &Dynamic, verb: &str, what: &str) -> Result<Vec<f64>> {
    if let Some(a) = value.read_lock::<Array>() {
        return numbers(&a, &format!("{verb}: {what}"));
    }
    if let Some(t) = value.read_lock::<Tensor>() {
        if t.ndim() != 1 {
            return Err(invalid(
                verb,
                format!(
                    "{what} must be a 1-d Tensor, got shape {}",
                    crate::arrays::fmt_shape(t.shape())
                ),
            ));
        }
        return Ok(t.to_f32_vec()?.into_iter().map(f64::from).collect());
    }
    Err(invalid(
        verb,
        format!(
            "{what} must be an array of numbers or a Tensor, got {}",
            super::display::type_name(value)
        ),
    ))
}

/// Rows of numbers from an array of arrays or a 2-d Tensor.
fn matrix(value: &Dynamic, verb: &str) -> Result<Vec<Vec<f64>>> {
    if let Some(t) = value.read_lock::<Tensor>() {
        if t.ndim() != 2 {
            return Err(invalid(
                verb,
                format!(
                    "the matrix must be a 2-d Tensor, got shape {}",
                    crate::arrays::fmt_shape(t.shape())
                ),
            ));
        }
        let cols = t.shape()[1] as usize;
        let values = t.to_f32_vec()?;
        return Ok(values
            .chunks(cols.max(1))
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect());
    }
    if let Some(a) = value.read_lock::<Array>() {
        return a
            .iter()
            .enumerate()
            .map(|(i, row)| vector(row, verb, &format!("row {i}")))
            .collect();
    }
    Err(invalid(
        verb,
        format!(
            "the matrix must be an array of arrays of numbers or a 2-d Tensor, got {}",
            super::display::type_name(value)
        ),
    ))
}

/// A label as text: strings as they are, anything else as it prints.
fn label_text(v: &Dynamic) -> String {
    match v.clone().into_immutable_string() {
        Ok(s) => s.to_string(),
        Err(_) => super::display::inline(v),
    }
}

fn labels_of(a: &Array) -> Vec<String> {
    a.iter().map(label_text).collect()
}

fn text(o: &Options, key: &str) -> Result<String> {
    Ok(o.string(key)?.unwrap_or_default())
}

fn chart_labels(o: &Options) -> Result<Labels> {
    Ok(Labels {
        title: text(o, "title")?,
        x_label: text(o, "x_label")?,
        y_label: text(o, "y_label")?,
    })
}

fn hline(o: &Options) -> Result<Option<HLine>> {
    let label = o.string("hline_label")?;
    Ok(o.opt_float("hline")?.map(|y| HLine { y, label }))
}

fn size(o: &Options, verb: &str) -> Result<Option<(u32, u32)>> {
    let (w, h) = (o.opt_int("width")?, o.opt_int("height")?);
    if w.is_none() && h.is_none() {
        return Ok(None);
    }
    let (w, h) = (w.unwrap_or(800), h.unwrap_or(500));
    if !(100..=8000).contains(&w) || !(100..=8000).contains(&h) {
        return Err(invalid(
            verb,
            format!("width and height must be from 100 to 8000 pixels, got {w} x {h}"),
        ));
    }
    Ok(Some((w as u32, h as u32)))
}

/// Writes the SVG to the `path` option (required, `.svg`) and returns the path written.
fn write_svg(ctx: &NativeCallContext, o: &Options, verb: &str, svg: &str) -> Result<String> {
    let path = o.string("path")?.ok_or_else(|| {
        invalid(
            verb,
            "option 'path' is required: where to write the chart, e.g. #{path: \"out/chart.svg\"}",
        )
    })?;
    if !path.to_lowercase().ends_with(".svg") {
        return Err(invalid(
            verb,
            format!("charts are written as SVG: give a path ending in .svg, got \"{path}\""),
        ));
    }
    write_svg_to(ctx, verb, &path, svg)
}

/// Writes `svg` to `path` (resolved and checked as every script path is), atomically; returns
/// the path written.
pub(super) fn write_svg_to(
    ctx: &NativeCallContext,
    verb: &str,
    path: &str,
    svg: &str,
) -> Result<String> {
    if !path.to_lowercase().ends_with(".svg") {
        return Err(invalid(
            verb,
            format!("charts are written as SVG: give a path ending in .svg, got \"{path}\""),
        ));
    }
    let resolved = context(ctx).write_path(verb, path)?;
    write_atomic(&resolved, svg.as_bytes())?;
    Ok(resolved.display().to_string())
}

/// One series from a `#{name, y, x, err}` map.
fn series_of_map(m: &Map, i: usize, verb: &str) -> Result<Series> {
    let what = format!("series [{i}]");
    for k in m.keys() {
        if !["name", "y", "x", "err"].contains(&k.as_str()) {
            return Err(invalid(
                verb,
                format!("{what} has an unknown key '{k}'; a series is #{{name, y, x, err}}"),
            ));
        }
    }
    let y = m
        .get("y")
        .ok_or_else(|| invalid(verb, format!("{what} has no 'y' values")))?;
    let name = m.get("name").map(label_text).unwrap_or_default();
    let opt = |k: &str| -> Result<Option<Vec<f64>>> {
        m.get(k)
            .filter(|v| !v.is_unit())
            .map(|v| vector(v, verb, &format!("{what}.{k}")))
            .transpose()
    };
    Ok(Series {
        name,
        y: vector(y, verb, &format!("{what}.y"))?,
        x: opt("x")?,
        err: opt("err")?,
    })
}

/// Series from a map `name -> numbers`, an array of `#{name, y, x, err}` maps, or one array
/// of numbers (or a 1-d Tensor).
fn series_of(value: &Dynamic, verb: &str) -> Result<Vec<Series>> {
    if let Some(m) = value.read_lock::<Map>() {
        return m
            .iter()
            .map(|(name, ys)| {
                Ok(Series {
                    name: name.to_string(),
                    y: vector(ys, verb, &format!("series \"{name}\""))?,
                    ..Series::default()
                })
            })
            .collect();
    }
    if let Some(a) = value.read_lock::<Array>() {
        if !a.is_empty() && a.iter().all(|v| v.is_map()) {
            return a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let m = v.read_lock::<Map>().map(|m| m.clone()).unwrap_or_default();
                    series_of_map(&m, i, verb)
                })
                .collect();
        }
    }
    if value.is_array() || value.is::<Tensor>() {
        return Ok(vec![Series {
            y: vector(value, verb, "the series")?,
            ..Series::default()
        }]);
    }
    Err(invalid(
        verb,
        format!(
            "series must be a map name -> numbers, an array of #{{name, y, x, err}} maps, or an \
             array of numbers; got {}",
            super::display::type_name(value)
        ),
    ))
}

/// The chart `plot::line` and `plot::scatter` draw: `series` with the options both take
/// (title and axis labels, `hline`, `y_min`, `y_max`, `width`, `height`).
fn chart_from(o: &Options, verb: &str, series: Vec<Series>) -> Result<LineChart> {
    Ok(LineChart {
        labels: chart_labels(o)?,
        series,
        hline: hline(o)?,
        y_min: o.opt_float("y_min")?,
        y_max: o.opt_float("y_max")?,
        size: size(o, verb)?,
    })
}

fn line_verb(ctx: &NativeCallContext, series: &Dynamic, opts: &Map) -> Result<String> {
    let verb = "plot::line";
    let o = Options::parse(verb, opts, LINE_KEYS)?;
    let mut series = series_of(series, verb)?;
    if let Some(x) = o.get("x") {
        let x = vector(x, verb, "option 'x'")?;
        for s in series.iter_mut().filter(|s| s.x.is_none()) {
            s.x = Some(x.clone());
        }
    }
    let svg = plot::line_svg(&chart_from(&o, verb, series)?)?;
    write_svg(ctx, &o, verb, &svg)
}

const SCATTER_KEYS: &[&str] = &[
    "path",
    "title",
    "x_label",
    "y_label",
    "name",
    "hline",
    "hline_label",
    "y_min",
    "y_max",
    "width",
    "height",
];

fn scatter_verb(ctx: &NativeCallContext, x: &Dynamic, y: &Dynamic, opts: &Map) -> Result<String> {
    let verb = "plot::scatter";
    let o = Options::parse(verb, opts, SCATTER_KEYS)?;
    let series = vec![Series {
        name: o.string("name")?.unwrap_or_default(),
        x: Some(vector(x, verb, "x")?),
        y: vector(y, verb, "y")?,
        err: None,
    }];
    let svg = plot::scatter_svg(&chart_from(&o, verb, series)?)?;
    write_svg(ctx, &o, verb, &svg)
}

fn bars_verb(
    ctx: &NativeCallContext,
    labels: &Array,
    values: &Dynamic,
    opts: &Map,
) -> Result<String> {
    let verb = "plot::bars";
    let o = Options::parse(verb, opts, BAR_KEYS)?;
    let chart = BarChart {
        labels: chart_labels(&o)?,
        names: labels_of(labels),
        values: vector(values, verb, "values")?,
        err: o
            .get("err")
            .map(|e| vector(e, verb, "option 'err'"))
            .transpose()?,
        hline: hline(&o)?,
        y_min: o.opt_float("y_min")?,
        y_max: o.opt_float("y_max")?,
        size: size(&o, verb)?,
    };
    let svg = plot::bars_svg(&chart)?;
    write_svg(ctx, &o, verb, &svg)
}

fn string_rows(value: &Dynamic, verb: &str) -> Result<Vec<Vec<String>>> {
    let bad = || {
        invalid(
            verb,
            "option 'annotate' must be an array of arrays of strings",
        )
    };
    let a = value.read_lock::<Array>().ok_or_else(bad)?;
    a.iter()
        .map(|row| {
            row.read_lock::<Array>()
                .map(|r| labels_of(&r))
                .ok_or_else(bad)
        })
        .collect()
}

fn heatmap_of(value: &Dynamic, o: &Options, verb: &str) -> Result<Heatmap> {
    Ok(Heatmap {
        labels: chart_labels(o)?,
        cells: matrix(value, verb)?,
        rows: o.array("rows")?.map(|a| labels_of(&a)),
        cols: o.array("cols")?.map(|a| labels_of(&a)),
        annotate: o
            .get("annotate")
            .map(|a| string_rows(a, verb))
            .transpose()?,
        min: o.opt_float("min")?,
        max: o.opt_float("max")?,
    })
}

fn heatmap_verb(ctx: &NativeCallContext, value: &Dynamic, opts: &Map) -> Result<String> {
    let verb = "plot::heatmap";
    let o = Options::parse(verb, opts, HEATMAP_KEYS)?;
    let svg = plot::heatmap_svg(&heatmap_of(value, &o, verb)?)?;
    write_svg(ctx, &o, verb, &svg)
}

fn text_heatmap_verb(value: &Dynamic, opts: &Map) -> Result<String> {
    let verb = "plot::text_heatmap";
    let o = Options::parse(verb, opts, TEXT_HEATMAP_KEYS)?;
    plot::text_heatmap(&heatmap_of(value, &o, verb)?)
}

fn text_bars_verb(labels: &Array, values: &Dynamic, opts: &Map) -> Result<String> {
    let verb = "plot::text_bars";
    let o = Options::parse(verb, opts, TEXT_BAR_KEYS)?;
    let width = o.int("width", 40)?;
    if !(1..=200).contains(&width) {
        return Err(invalid(
            verb,
            format!("width must be from 1 to 200, got {width}"),
        ));
    }
    plot::text_bars(
        &labels_of(labels),
        &vector(values, verb, "values")?,
        width as usize,
        o.opt_float("max")?,
    )
}

// Functions of a static module take the call context to place their errors (see stats.rs).
#[export_module]
mod plot_functions {
    use super::*;

    /// Writes a line chart as SVG and returns the path written. `series`: a map
    /// `name -> numbers`, an array of `#{name, y, x, err}` maps (`err`: error-bar half-widths),
    /// or one array of numbers. Options: `path` (required, `.svg`, relative to the script's
    /// folder), `title`, `x_label`, `y_label`, `x` (shared x values; default 0, 1, 2, ...),
    /// `hline` (a dashed reference line, e.g. chance), `hline_label`, `y_min`, `y_max`,
    /// `width`, `height` (pixels).
    ///
    /// Example: `plot::line(#{probe: accs}, #{path: "out/acc.svg", x_label: "layer", hline: 0.5, hline_label: "chance"})`
    #[rhai_fn(name = "line", return_raw)]
    pub fn line(ctx: NativeCallContext, series: Dynamic, opts: Map) -> RhaiResult<String> {
        located(&ctx, line_verb(&ctx, &series, &opts))
    }

    /// Writes a scatter plot as SVG and returns the path written: one marker per `(x[i],
    /// y[i])` (numbers or 1-d Tensors of one length). Options: `path` (required), `title`,
    /// `x_label`, `y_label`, `name` (a legend entry), `hline`, `hline_label`, `y_min`, `y_max`,
    /// `width`, `height`.
    ///
    /// Example: `plot::scatter([0.1, 0.5, 0.9], [0.2, 0.4, 1.0], #{path: "out/scatter.svg", x_label: "patching"})`
    #[rhai_fn(name = "scatter", return_raw)]
    pub fn scatter(
        ctx: NativeCallContext,
        x: Dynamic,
        y: Dynamic,
        opts: Map,
    ) -> RhaiResult<String> {
        located(&ctx, scatter_verb(&ctx, &x, &y, &opts))
    }

    /// Writes a bar chart as SVG and returns the path written: one bar per value, labelled.
    /// Options: `path` (required), `title`, `x_label`, `y_label`, `err` (error-bar half-widths),
    /// `hline`, `hline_label`, `y_min`, `y_max`, `width`, `height`.
    ///
    /// Example: `plot::bars(["plain", "steered"], [0.12, 0.71], #{path: "out/rate.svg", err: [0.03, 0.04]})`
    #[rhai_fn(name = "bars", return_raw)]
    pub fn bars(
        ctx: NativeCallContext,
        labels: Array,
        values: Dynamic,
        opts: Map,
    ) -> RhaiResult<String> {
        located(&ctx, bars_verb(&ctx, &labels, &values, &opts))
    }

    /// Writes a heatmap as SVG and returns the path written. `matrix`: an array of rows of
    /// numbers or a 2-d Tensor, row 0 drawn at the top; a NaN cell is drawn blank. Options:
    /// `path` (required), `title`, `rows`, `cols` (labels), `x_label`, `y_label`, `annotate`
    /// (rows of strings drawn in the cells), `min`, `max` (the colour scale; default the
    /// data's range). A colour bar shows the scale.
    ///
    /// Example: `plot::heatmap(attention(m, text, 3)[0], #{path: "out/attn.svg", rows: toks, cols: toks})`
    #[rhai_fn(name = "heatmap", return_raw)]
    pub fn heatmap(ctx: NativeCallContext, matrix: Dynamic, opts: Map) -> RhaiResult<String> {
        located(&ctx, heatmap_verb(&ctx, &matrix, &opts))
    }

    /// Horizontal bars as text, one line per value, scaled to the largest absolute value.
    ///
    /// Example: `print(plot::text_bars(["a", "b"], [0.9, 0.4]))`
    #[rhai_fn(name = "text_bars", return_raw)]
    pub fn text_bars(ctx: NativeCallContext, labels: Array, values: Dynamic) -> RhaiResult<String> {
        located(&ctx, text_bars_verb(&labels, &values, &Map::new()))
    }

    /// `text_bars` with options: `width` (characters of the longest bar, 40), `max` (the value
    /// of a full bar; default the largest absolute value).
    ///
    /// Example: `print(plot::text_bars(layers, accs, #{width: 30, max: 1.0}))`
    #[rhai_fn(name = "text_bars", return_raw)]
    pub fn text_bars_with(
        ctx: NativeCallContext,
        labels: Array,
        values: Dynamic,
        opts: Map,
    ) -> RhaiResult<String> {
        located(&ctx, text_bars_verb(&labels, &values, &opts))
    }

    /// A matrix as shaded text (`··` low to `██` high, NaN blank), row labels on the left
    /// and the scale below.
    ///
    /// Example: `print(plot::text_heatmap(scores))`
    #[rhai_fn(name = "text_heatmap", return_raw)]
    pub fn text_heatmap(ctx: NativeCallContext, matrix: Dynamic) -> RhaiResult<String> {
        located(&ctx, text_heatmap_verb(&matrix, &Map::new()))
    }

    /// `text_heatmap` with options: `title`, `rows` (labels), `min`, `max`.
    ///
    /// Example: `print(plot::text_heatmap(scores, #{rows: names, min: 0.0, max: 1.0}))`
    #[rhai_fn(name = "text_heatmap", return_raw)]
    pub fn text_heatmap_with(
        ctx: NativeCallContext,
        matrix: Dynamic,
        opts: Map,
    ) -> RhaiResult<String> {
        located(&ctx, text_heatmap_verb(&matrix, &opts))
    }

    /// Numbers as a one-line sparkline, `▁` the smallest to `█` the largest.
    ///
    /// Example: `plot::sparkline([0.5, 0.6, 0.9, 0.8])  // "▁▃█▆"`
    #[rhai_fn(name = "sparkline", return_raw)]
    pub fn sparkline(ctx: NativeCallContext, values: Dynamic) -> RhaiResult<String> {
        located(
            &ctx,
            vector(&values, "plot::sparkline", "values").and_then(|v| plot::sparkline(&v)),
        )
    }
}

/// Registers the `plot` module (`plot::line(series, opts)`).
pub fn register(engine: &mut Engine) {
    let mut module = exported_module!(plot_functions);
    module.set_doc("//! Charts: SVG files (line, bars, heatmap) and terminal charts.");
    engine.register_static_module("plot", module.into());
}
