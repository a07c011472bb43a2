//! Charts: SVG files drawn with plotters' SVG backend (line charts with error bars and a dashed
//! reference line, bar charts, heatmaps with cell annotations and a colour bar), and compact
//! terminal charts as strings (bars, shaded heatmaps, sparklines).
//!
//! SVG only: plotters' bitmap backend needs a font rasterizer and font files, and SVG text is
//! plain `<text>` elements that the viewer renders. Every chart checks its data first: empty
//! data, mismatched lengths and non-finite values in lines and bars are errors; a NaN cell of a
//! heatmap is drawn blank (light grey), so masked entries can be shown as missing.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Error, Result};

/// Tableau's ten categorical colours, the series colours in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const GREY: RGBColor = RGBColor(110, 110, 110);
/// Fill of a heatmap cell without a value (NaN).
const BLANK: RGBColor = RGBColor(235, 235, 235);
const FONT: &str = "sans-serif";

/// The most cells a heatmap draws (an SVG of a million rectangles is no use to anyone).
pub const MAX_CELLS: usize = 250_000;

/// Text shared by every SVG chart.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
}

/// A dashed horizontal reference line (chance level, a baseline).
#[derive(Debug, Clone)]
pub struct HLine {
    pub y: f64,
    pub label: Option<String>,
}

/// One line of a line chart. `x` defaults to 0, 1, 2, ...; `err` are error-bar half-widths.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub x: Option<Vec<f64>>,
    pub y: Vec<f64>,
    pub err: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Default)]
pub struct LineChart {
    pub labels: Labels,
    pub series: Vec<Series>,
    pub hline: Option<HLine>,
    pub y_min: Option<f64>,
    pub y_max: Option<f64>,
    pub size: Option<(u32, u32)>,
}

#[derive(Debug, Clone, Default)]
pub struct BarChart {
    pub labels: Labels,
    pub names: Vec<String>,
    pub values: Vec<f64>,
    pub err: Option<Vec<f64>>,
    pub hline: Option<HLine>,
    pub y_min: Option<f64>,
    pub y_max: Option<f64>,
    pub size: Option<(u32, u32)>,
}

/// A matrix drawn as coloured cells, row 0 at the top.
#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    pub labels: Labels,
    pub cells: Vec<Vec<f64>>,
    pub rows: Option<Vec<String>>,
    pub cols: Option<Vec<String>>,
    /// Text drawn in each cell (same shape as `cells`).
    pub annotate: Option<Vec<Vec<String>>>,
    /// The colour scale; default: the finite values' range.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

type DrawResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn invalid(verb: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{verb}: {msg}"))
}

fn drawing_failed(verb: &str, e: Box<dyn std::error::Error>) -> Error {
    invalid(verb, format!("drawing failed: {e}"))
}

/// Text safe for a chart: control characters shown as visible escapes (`\n` as `↵`).
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => "↵".to_string(),
            '\t' => "⇥".to_string(),
            '\r' => "␍".to_string(),
            c if c.is_control() => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn check_finite(verb: &str, what: &str, xs: &[f64]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(invalid(
            verb,
            format!("{what}[{i}] is {}, not a finite number", xs[i]),
        )),
        None => Ok(()),
    }
}

/// A tick label: integers without decimals, other numbers with up to 4 significant digits.
pub fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.fract() == 0.0 && v.abs() < 1e7 {
        return format!("{v:.0}");
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `lo..hi` widened by 5% each side (a flat range gets a unit of room), then overridden by
/// the user's bounds.
fn value_range(lo: f64, hi: f64, user_lo: Option<f64>, user_hi: Option<f64>) -> (f64, f64) {
    let (mut lo, mut hi) = if hi > lo {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    } else {
        (lo - 0.5, hi + 0.5)
    };
    if let Some(v) = user_lo {
        lo = v;
    }
    if let Some(v) = user_hi {
        hi = v;
    }
    (lo, hi)
}

fn check_bounds(verb: &str, lo: f64, hi: f64) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(invalid(
            verb,
            format!("the value axis runs from {lo} to {hi}: y_min must be below y_max"),
        ));
    }
    Ok(())
}

fn min_max(xs: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    xs.into_iter()
        .filter(|x| x.is_finite())
        .fold(None, |acc, x| match acc {
            None => Some((x, x)),
            Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
        })
}

/// A line chart as SVG text.
pub fn line_svg(c: &LineChart) -> Result<String> {
    xy_svg(c, "plot::line", true)
}

/// A scatter plot: each series' points as markers, unjoined (x values required).
pub fn scatter_svg(c: &LineChart) -> Result<String> {
    xy_svg(c, "plot::scatter", false)
}

fn xy_svg(c: &LineChart, verb: &str, lines: bool) -> Result<String> {
    if c.series.is_empty() {
        return Err(invalid(verb, "no series to draw"));
    }
    let mut xs: Vec<Vec<f64>> = Vec::with_capacity(c.series.len());
    for s in &c.series {
        let what = if s.name.is_empty() {
            "the series".to_string()
        } else {
            format!("series \"{}\"", s.name)
        };
        if s.y.is_empty() {
            return Err(invalid(verb, format!("{what} is empty")));
        }
        check_finite(verb, &format!("{what}: y"), &s.y)?;
        let x = match &s.x {
            Some(x) if x.len() != s.y.len() => {
                return Err(invalid(
                    verb,
                    format!("{what} has {} y values but {} x values", s.y.len(), x.len()),
                ))
            }
            Some(x) => x.clone(),
            None => (0..s.y.len()).map(|i| i as f64).collect(),
        };
        check_finite(verb, &format!("{what}: x"), &x)?;
        if let Some(e) = &s.err {
            if e.len() != s.y.len() {
                return Err(invalid(
                    verb,
                    format!(
                        "{what} has {} y values but {} err values",
                        s.y.len(),
                        e.len()
                    ),
                ));
            }
            check_finite(verb, &format!("{what}: err"), e)?;
        }
        xs.push(x);
    }
    let (x_lo, x_hi) = min_max(xs.iter().flatten().copied()).unwrap_or((0.0, 1.0));
    // A little room each side, so the end markers are not cut in half.
    let (x_lo, x_hi) = if x_hi > x_lo {
        let pad = (x_hi - x_lo) * 0.02;
        (x_lo - pad, x_hi + pad)
    } else {
        (x_lo - 0.5, x_hi + 0.5)
    };
    let ys = c.series.iter().flat_map(|s| {
        let err = s.err.clone().unwrap_or_else(|| vec![0.0; s.y.len()]);
        s.y.iter()
            .zip(err)
            .flat_map(|(y, e)| [y - e.abs(), y + e.abs()])
            .collect::<Vec<_>>()
    });
    let hline_y = c.hline.as_ref().map(|h| h.y);
    let (y_lo, y_hi) = min_max(ys.chain(hline_y)).unwrap_or((0.0, 1.0));
    let (y_lo, y_hi) = value_range(y_lo, y_hi, c.y_min, c.y_max);
    check_bounds(verb, y_lo, y_hi)?;
    let all_integer_x = xs.iter().flatten().all(|x| x.fract() == 0.0);
    let n_points = xs.iter().map(Vec::len).max().unwrap_or(1);
    let (w, h) = c.size.unwrap_or((800, 500));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        let draw = || -> DrawResult {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(clean(&c.labels.title), (FONT, 20))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(65)
                .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
            let x_ticks = if all_integer_x {
                n_points.clamp(2, 12)
            } else {
                10
            };
            chart
                .configure_mesh()
                .x_desc(clean(&c.labels.x_label))
                .y_desc(clean(&c.labels.y_label))
                .x_labels(x_ticks)
                .y_labels(8)
                .x_label_formatter(&|v| fmt_tick(*v))
                .y_label_formatter(&|v| fmt_tick(*v))
                .light_line_style(RGBColor(240, 240, 240))
                .bold_line_style(RGBColor(225, 225, 225))
                .draw()?;
            let mut legend = false;
            for (i, (s, x)) in c.series.iter().zip(&xs).enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let points: Vec<(f64, f64)> = x.iter().copied().zip(s.y.iter().copied()).collect();
                if lines {
                    let line = chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
                    if !s.name.is_empty() {
                        legend = true;
                        line.label(clean(&s.name)).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                    }
                    if points.len() <= 200 {
                        chart.draw_series(
                            points.iter().map(|&p| Circle::new(p, 3, color.filled())),
                        )?;
                    }
                } else {
                    let dots = chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                    if !s.name.is_empty() {
                        legend = true;
                        dots.label(clean(&s.name))
                            .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
                    }
                }
                if let Some(err) = &s.err {
                    chart.draw_series(points.iter().zip(err).map(|(&(x, y), e)| {
                        let e = e.abs();
                        ErrorBar::new_vertical(x, y - e, y, y + e, color.stroke_width(1), 6)
                    }))?;
                }
            }
            if let Some(hl) = &c.hline {
                let dashed = chart.draw_series(DashedLineSeries::new(
                    vec![(x_lo, hl.y), (x_hi, hl.y)],
                    6,
                    4,
                    GREY.stroke_width(1),
                ))?;
                if let Some(label) = &hl.label {
                    legend = true;
                    dashed.label(clean(label)).legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(1))
                    });
                }
            }
            if legend {
                let entries = c.series.iter().filter(|s| !s.name.is_empty()).count()
                    + usize::from(c.hline.as_ref().is_some_and(|h| h.label.is_some()));
                // The points, samples along the lines between them, and the reference line.
                let mut points: Vec<(f64, f64)> = Vec::new();
                for (s, x) in c.series.iter().zip(&xs) {
                    let p: Vec<(f64, f64)> = x.iter().copied().zip(s.y.iter().copied()).collect();
                    points.extend(&p);
                    for w in p.windows(2) {
                        points.extend((1..8).map(|k| {
                            let t = k as f64 / 8.0;
                            (
                                w[0].0 + t * (w[1].0 - w[0].0),
                                w[0].1 + t * (w[1].1 - w[0].1),
                            )
                        }));
                    }
                }
                if let Some(hl) = &c.hline {
                    points.extend((0..=40).map(|k| (x_lo + (x_hi - x_lo) * k as f64 / 40.0, hl.y)));
                }
                let corner = emptiest_corner(
                    points.into_iter(),
                    ((x_lo, x_hi), (y_lo, y_hi)),
                    // The legend's size over the plotting area's (the figure less axes,
                    // labels and title).
                    (
                        200.0 / (w as f64 - 110.0).max(100.0),
                        (22 * entries + 30) as f64 / (h as f64 - 120.0).max(100.0),
                    ),
                );
                chart
                    .configure_series_labels()
                    .position(corner)
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .label_font((FONT, 13))
                    .draw()?;
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| drawing_failed(verb, e))?;
    }
    Ok(svg)
}

/// The corner of the plot where a legend of `size` (fractions of the plot) covers the fewest
/// data points: upper right unless that hides data.
fn emptiest_corner(
    points: impl Iterator<Item = (f64, f64)>,
    ((x_lo, x_hi), (y_lo, y_hi)): ((f64, f64), (f64, f64)),
    (fw, fh): (f64, f64),
) -> SeriesLabelPosition {
    let mut counts = [0usize; 4];
    for (x, y) in points {
        let fx = (x - x_lo) / (x_hi - x_lo);
        let fy = (y - y_lo) / (y_hi - y_lo);
        let (left, right) = (fx <= fw, fx >= 1.0 - fw);
        let (low, high) = (fy <= fh, fy >= 1.0 - fh);
        counts[0] += usize::from(right && high);
        counts[1] += usize::from(left && high);
        counts[2] += usize::from(right && low);
        counts[3] += usize::from(left && low);
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ][best]
        .clone()
}

/// A bar chart as SVG text: one bar per value, its label under it.
pub fn bars_svg(c: &BarChart) -> Result<String> {
    let verb = "plot::bars";
    let n = c.values.len();
    if n == 0 {
        return Err(invalid(verb, "no values to draw"));
    }
    if c.names.len() != n {
        return Err(invalid(
            verb,
            format!("{} labels for {n} values", c.names.len()),
        ));
    }
    check_finite(verb, "values", &c.values)?;
    if let Some(e) = &c.err {
        if e.len() != n {
            return Err(invalid(
                verb,
                format!("{} err values for {n} values", e.len()),
            ));
        }
        check_finite(verb, "err", e)?;
    }
    let err = c.err.clone().unwrap_or_else(|| vec![0.0; n]);
    let ys = c
        .values
        .iter()
        .zip(&err)
        .flat_map(|(v, e)| [v - e.abs(), v + e.abs()])
        .chain([0.0])
        .chain(c.hline.as_ref().map(|h| h.y));
    let (lo, hi) = min_max(ys).unwrap_or((0.0, 1.0));
    // Bars start at zero: no padding below a non-negative chart.
    let (y_lo, y_hi) = value_range(lo, hi, c.y_min, c.y_max);
    let y_lo = if lo >= 0.0 && c.y_min.is_none() {
        0.0
    } else {
        y_lo
    };
    check_bounds(verb, y_lo, y_hi)?;
    let longest = c.names.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    let rotate = n > 1 && longest * 7 > (700 / n).max(1);
    let label_area = if rotate {
        (longest.min(40) * 7 + 30) as u32
    } else {
        45
    };
    let default_w = (n as u32 * 40 + 150).clamp(500, 1600);
    let (w, h) = c.size.unwrap_or((default_w, 460 + label_area));
    let names: Vec<String> = c.names.iter().map(|s| clean(s)).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        let draw = || -> DrawResult {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(clean(&c.labels.title), (FONT, 20))
                .margin(15)
                .x_label_area_size(label_area)
                .y_label_area_size(65)
                .build_cartesian_2d((0..n as i32 - 1).into_segmented(), y_lo..y_hi)?;
            let label_style = if rotate {
                TextStyle::from((FONT, 12).into_font())
                    .transform(FontTransform::Rotate90)
                    .pos(Pos::new(HPos::Left, VPos::Center))
            } else {
                TextStyle::from((FONT, 12).into_font())
            };
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc(clean(&c.labels.x_label))
                .y_desc(clean(&c.labels.y_label))
                .x_labels(n + 1)
                .x_label_style(label_style)
                .x_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                        names.get(*i as usize).cloned().unwrap_or_default()
                    }
                    SegmentValue::Last => String::new(),
                })
                .y_labels(8)
                .y_label_formatter(&|v| fmt_tick(*v))
                .light_line_style(RGBColor(240, 240, 240))
                .bold_line_style(RGBColor(225, 225, 225))
                .draw()?;
            let base = 0f64.clamp(y_lo, y_hi);
            chart.draw_series(c.values.iter().enumerate().map(|(i, &v)| {
                let i = i as i32;
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), base),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    PALETTE[0].filled(),
                );
                bar.set_margin(0, 0, 4, 4);
                bar
            }))?;
            if c.err.is_some() {
                chart.draw_series(c.values.iter().zip(&err).enumerate().map(|(i, (&v, e))| {
                    let e = e.abs();
                    ErrorBar::new_vertical(
                        SegmentValue::CenterOf(i as i32),
                        v - e,
                        v,
                        v + e,
                        BLACK.stroke_width(1),
                        8,
                    )
                }))?;
            }
            if let Some(hl) = &c.hline {
                let ends = [(SegmentValue::Exact(0), hl.y), (SegmentValue::Last, hl.y)];
                let dashed =
                    chart.draw_series(DashedLineSeries::new(ends, 6, 4, GREY.stroke_width(1)))?;
                if let Some(label) = &hl.label {
                    dashed.label(clean(label)).legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(1))
                    });
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .background_style(WHITE.mix(0.85))
                        .border_style(RGBColor(200, 200, 200))
                        .label_font((FONT, 13))
                        .draw()?;
                }
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| drawing_failed(verb, e))?;
    }
    Ok(svg)
}

/// The colour of `v` on the viridis scale from `lo` to `hi` (clamped).
fn viridis(v: f64, lo: f64, hi: f64) -> RGBColor {
    let t = if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.5
    };
    ViridisRGB.get_color(t as f32)
}

/// Black text on light cells, white on dark ones.
fn text_color_on(c: &RGBColor) -> RGBColor {
    let luminance = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if luminance > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

fn check_labels(verb: &str, what: &str, labels: &Option<Vec<String>>, n: usize) -> Result<()> {
    match labels {
        Some(l) if l.len() != n => Err(invalid(
            verb,
            format!("{} {what} labels for {n} {what}s", l.len()),
        )),
        _ => Ok(()),
    }
}

/// Checks a heatmap's matrix (non-empty, rectangular, not too big) and its labels; returns
/// `(rows, cols)`.
fn check_matrix(verb: &str, h: &Heatmap) -> Result<(usize, usize)> {
    let rows = h.cells.len();
    let cols = h.cells.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 {
        return Err(invalid(verb, "the matrix is empty"));
    }
    if let Some((i, r)) = h.cells.iter().enumerate().find(|(_, r)| r.len() != cols) {
        return Err(invalid(
            verb,
            format!(
                "the matrix is ragged: row 0 has {cols} values, row {i} has {}",
                r.len()
            ),
        ));
    }
    if rows * cols > MAX_CELLS {
        return Err(invalid(
            verb,
            format!(
                "{rows} x {cols} cells is more than {MAX_CELLS}; plot a slice or average blocks"
            ),
        ));
    }
    if let Some((i, j, v)) = h
        .cells
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.iter().position(|v| v.is_infinite()).map(|j| (i, j, r[j])))
    {
        return Err(invalid(
            verb,
            format!("cell [{i}][{j}] is {v} (NaN is drawn blank, infinity is an error)"),
        ));
    }
    check_labels(verb, "row", &h.rows, rows)?;
    check_labels(verb, "column", &h.cols, cols)?;
    if let Some(a) = &h.annotate {
        if a.len() != rows || a.iter().any(|r| r.len() != cols) {
            return Err(invalid(
                verb,
                format!("annotate must have the matrix's shape, {rows} rows of {cols} strings"),
            ));
        }
    }
    Ok((rows, cols))
}

/// The colour scale of a heatmap: the user's bounds, else the finite values' range.
fn scale(verb: &str, h: &Heatmap) -> Result<(f64, f64)> {
    let (lo, hi) = min_max(h.cells.iter().flatten().copied()).unwrap_or((0.0, 1.0));
    let lo = h.min.unwrap_or(lo);
    let hi = h.max.unwrap_or(hi);
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return Err(invalid(
            verb,
            format!("the colour scale runs from {lo} to {hi}: min must not exceed max"),
        ));
    }
    Ok((lo, hi))
}

/// A heatmap as SVG text: cells coloured on the viridis scale, row labels on the left, column
/// labels below (turned when long), optional text in each cell, a colour bar on the right.
pub fn heatmap_svg(h: &Heatmap) -> Result<String> {
    let verb = "plot::heatmap";
    let (rows, cols) = check_matrix(verb, h)?;
    let (lo, hi) = scale(verb, h)?;
    let chars = |v: &Option<Vec<String>>| {
        v.iter()
            .flatten()
            .map(|s| clean(s).chars().count())
            .max()
            .unwrap_or(0)
    };
    let ann_chars = h
        .annotate
        .iter()
        .flatten()
        .flatten()
        .map(|s| clean(s).chars().count())
        .max()
        .unwrap_or(0);
    // Cell size: wide enough for the annotations, else square and filling about 700 x 500.
    let (mut cw, mut ch) = if h.annotate.is_some() {
        ((ann_chars as u32 * 7 + 10).clamp(36, 120), 22u32)
    } else {
        let side = (700 / cols as u32).min(500 / rows as u32).clamp(4, 40);
        (side, side)
    };
    // Keep the drawing within 4000 pixels a side.
    cw = cw.min((3600 / cols as u32).max(1));
    ch = ch.min((3600 / rows as u32).max(1));
    // Without labels, rows and columns are numbered (every k-th where cells are small).
    let numbered = |n: usize, cell: u32| {
        let every = (18 / cell.max(1) + 1) as usize;
        let every = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
            .into_iter()
            .find(|&k| k >= every)
            .unwrap_or(every);
        (0..n)
            .map(|i| {
                if i % every == 0 {
                    i.to_string()
                } else {
                    String::new()
                }
            })
            .collect::<Vec<_>>()
    };
    let row_labels = h.rows.clone().unwrap_or_else(|| numbered(rows, ch));
    let col_labels = h.cols.clone().unwrap_or_else(|| numbered(cols, cw));
    let (row_labels, col_labels) = (Some(row_labels), Some(col_labels));
    let row_label_w = (chars(&row_labels).min(40) as u32) * 7 + 10;
    let col_chars = chars(&col_labels).min(40) as u32;
    let rotate_cols = col_chars * 7 > cw && h.cols.is_some();
    let col_label_h = match (&col_labels, rotate_cols) {
        (None, _) => 0,
        (Some(_), true) => col_chars * 7 + 12,
        (Some(_), false) => 22,
    };
    let title_h = if h.labels.title.is_empty() { 10 } else { 40 };
    let y_desc_w = if h.labels.y_label.is_empty() { 0 } else { 24 };
    let x_desc_h = if h.labels.x_label.is_empty() { 0 } else { 26 };
    let margin = 15;
    let left = margin + y_desc_w + row_label_w;
    let top = title_h;
    let grid_w = cw * cols as u32;
    let grid_h = ch * rows as u32;
    let bar_w = 16;
    let bar_gap = 20;
    let bar_label_w = 70;
    let title_w = clean(&h.labels.title).chars().count() as u32 * 11 + 2 * margin;
    let width = (left + grid_w + bar_gap + bar_w + bar_label_w + margin)
        .max(300)
        .max(title_w);
    let height = (top + grid_h.max(120) + col_label_h + x_desc_h + margin).max(160);
    let font_size = (ch as f64 * 0.6).clamp(6.0, 13.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let draw = || -> DrawResult {
            root.fill(&WHITE)?;
            let (left, top, cw, ch) = (left as i32, top as i32, cw as i32, ch as i32);
            let style = |size: f64, pos: Pos| {
                TextStyle::from((FONT, size).into_font())
                    .color(&BLACK)
                    .pos(pos)
            };
            if !h.labels.title.is_empty() {
                root.draw(&Text::new(
                    clean(&h.labels.title),
                    (width as i32 / 2, 12),
                    style(20.0, Pos::new(HPos::Center, VPos::Top)),
                ))?;
            }
            for (i, row) in h.cells.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let (x0, y0) = (left + j as i32 * cw, top + i as i32 * ch);
                    let fill = if v.is_nan() {
                        BLANK
                    } else {
                        viridis(v, lo, hi)
                    };
                    root.draw(&Rectangle::new(
                        [(x0, y0), (x0 + cw, y0 + ch)],
                        fill.filled(),
                    ))?;
                    if let Some(text) = h.annotate.as_ref().map(|a| clean(&a[i][j])) {
                        if !text.is_empty() {
                            let color = text_color_on(&fill);
                            root.draw(&Text::new(
                                text,
                                (x0 + cw / 2, y0 + ch / 2),
                                style(font_size, Pos::new(HPos::Center, VPos::Center))
                                    .color(&color),
                            ))?;
                        }
                    }
                }
            }
            let label_size = (ch as f64 * 0.7).clamp(8.0, 12.0);
            for (i, label) in row_labels.iter().flatten().enumerate() {
                if label.is_empty() {
                    continue;
                }
                root.draw(&Text::new(
                    clean(label),
                    (left - 6, top + i as i32 * ch + ch / 2),
                    style(label_size, Pos::new(HPos::Right, VPos::Center)),
                ))?;
            }
            let grid_bottom = top + rows as i32 * ch;
            let col_size = (cw as f64 * 0.7).clamp(8.0, 12.0);
            for (j, label) in col_labels.iter().flatten().enumerate() {
                if label.is_empty() {
                    continue;
                }
                let x = left + j as i32 * cw + cw / 2;
                let s = if rotate_cols {
                    style(col_size, Pos::new(HPos::Left, VPos::Center))
                        .transform(FontTransform::Rotate90)
                } else {
                    style(col_size, Pos::new(HPos::Center, VPos::Top))
                };
                root.draw(&Text::new(clean(label), (x, grid_bottom + 6), s))?;
            }
            if !h.labels.x_label.is_empty() {
                root.draw(&Text::new(
                    clean(&h.labels.x_label),
                    (
                        left + grid_w as i32 / 2,
                        grid_bottom + col_label_h as i32 + 6,
                    ),
                    style(14.0, Pos::new(HPos::Center, VPos::Top)),
                ))?;
            }
            if !h.labels.y_label.is_empty() {
                root.draw(&Text::new(
                    clean(&h.labels.y_label),
                    (margin as i32 + 6, top + grid_h as i32 / 2),
                    style(14.0, Pos::new(HPos::Center, VPos::Center))
                        .transform(FontTransform::Rotate270),
                ))?;
            }
            draw_colour_bar(
                &root,
                (left + grid_w as i32 + bar_gap as i32, top),
                (bar_w as i32, grid_h.max(120) as i32),
                (lo, hi),
            )?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| drawing_failed(verb, e))?;
    }
    Ok(svg)
}

/// A vertical colour bar at `at` of `size`, `hi` at the top, with min, middle and max labels.
fn draw_colour_bar(
    root: &DrawingArea<SVGBackend, Shift>,
    at: (i32, i32),
    size: (i32, i32),
    (lo, hi): (f64, f64),
) -> DrawResult {
    let steps = 48;
    let (x, y) = at;
    let (w, h) = size;
    for k in 0..steps {
        let t = 1.0 - (k as f64 + 0.5) / steps as f64;
        let y0 = y + h * k / steps;
        let y1 = y + h * (k + 1) / steps;
        root.draw(&Rectangle::new(
            [(x, y0), (x + w, y1)],
            viridis(lo + t * (hi - lo), lo, hi).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(x, y), (x + w, y + h)],
        RGBColor(160, 160, 160).stroke_width(1),
    ))?;
    let style = TextStyle::from((FONT, 11).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (frac, v) in [(0.0, hi), (0.5, (lo + hi) / 2.0), (1.0, lo)] {
        let ty = y + (h as f64 * frac) as i32;
        root.draw(&Text::new(fmt_tick(v), (x + w + 5, ty), style.clone()))?;
    }
    Ok(())
}

/// Eighths of a block, for bar ends.
const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];

/// A bar `frac` (0..=1) of `width` cells long, to the eighth of a cell.
pub(crate) fn bar(frac: f64, width: usize) -> String {
    let eighths = (frac.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        s.push(EIGHTHS[eighths % 8 - 1]);
    }
    s
}

fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(width.saturating_sub(n)))
}

/// Horizontal bars as text, one line per value: `label  ██████▍ 0.81`. Bars are scaled to the
/// largest absolute value (or `max`); a negative value's number keeps its sign.
pub fn text_bars(
    names: &[String],
    values: &[f64],
    width: usize,
    max: Option<f64>,
) -> Result<String> {
    let verb = "plot::text_bars";
    if values.is_empty() {
        return Err(invalid(verb, "no values to draw"));
    }
    if names.len() != values.len() {
        return Err(invalid(
            verb,
            format!("{} labels for {} values", names.len(), values.len()),
        ));
    }
    check_finite(verb, "values", values)?;
    let top = max.unwrap_or_else(|| values.iter().fold(0.0f64, |m, v| m.max(v.abs())));
    if !(top.is_finite() && top >= 0.0) {
        return Err(invalid(
            verb,
            format!("max must be a positive number, got {top}"),
        ));
    }
    let names: Vec<String> = names.iter().map(|s| clean(s)).collect();
    let label_w = names
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    let width = width.clamp(1, 200);
    let lines: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(name, &v)| {
            let frac = if top > 0.0 { v.abs() / top } else { 0.0 };
            format!(
                "{} {} {}",
                pad(name, label_w),
                pad(&bar(frac, width), width),
                fmt_tick(v)
            )
            .trim_end()
            .to_string()
        })
        .collect();
    Ok(lines.join("\n"))
}

/// Shades from low to high; a NaN cell is blank.
const SHADES: [&str; 5] = ["··", "░░", "▒▒", "▓▓", "██"];

/// A matrix as shaded text, two characters a cell, row labels on the left and a scale line
/// below.
pub fn text_heatmap(h: &Heatmap) -> Result<String> {
    let verb = "plot::text_heatmap";
    let (rows, _) = check_matrix(verb, h)?;
    let (lo, hi) = scale(verb, h)?;
    let labels: Vec<String> = match &h.rows {
        Some(r) => r.iter().map(|s| clean(s)).collect(),
        None => (0..rows).map(|i| i.to_string()).collect(),
    };
    let label_w = labels
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    let mut out = Vec::with_capacity(rows + 2);
    if !h.labels.title.is_empty() {
        out.push(clean(&h.labels.title));
    }
    for (label, row) in labels.iter().zip(&h.cells) {
        let cells: String = row
            .iter()
            .map(|&v| {
                if v.is_nan() {
                    "  "
                } else {
                    let t = if hi > lo {
                        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
                    } else {
                        0.5
                    };
                    SHADES[((t * SHADES.len() as f64) as usize).min(SHADES.len() - 1)]
                }
            })
            .collect();
        out.push(format!("{} {cells}", pad(label, label_w)));
    }
    out.push(format!(
        "{} {} {} … {} {}",
        pad("", label_w),
        SHADES[0],
        fmt_tick(lo),
        SHADES[SHADES.len() - 1],
        fmt_tick(hi)
    ));
    Ok(out.join("\n"))
}

/// Numbers as a one-line sparkline, `▁` the smallest and `█` the largest; NaN is a space.
pub fn sparkline(values: &[f64]) -> Result<String> {
    const TICKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() {
        return Err(invalid("plot::sparkline", "no values to draw"));
    }
    if let Some(i) = values.iter().position(|v| v.is_infinite()) {
        return Err(invalid(
            "plot::sparkline",
            format!("values[{i}] is {}", values[i]),
        ));
    }
    let (lo, hi) = min_max(values.iter().copied()).unwrap_or((0.0, 0.0));
    Ok(values
        .iter()
        .map(|&v| {
            if v.is_nan() {
                ' '
            } else if hi > lo {
                TICKS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            } else {
                TICKS[3]
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(s: &str, pat: &str) -> usize {
        s.matches(pat).count()
    }

    fn labels(title: &str) -> Labels {
        Labels {
            title: title.into(),
            x_label: "layer".into(),
            y_label: "accuracy".into(),
        }
    }

    #[test]
    fn line_chart_draws_every_series() {
        let c = LineChart {
            labels: labels("Probe <accuracy> & chance"),
            series: vec![
                Series {
                    name: "train".into(),
                    y: vec![0.5, 0.7, 0.9],
                    ..Series::default()
                },
                Series {
                    name: "test".into(),
                    x: Some(vec![0.0, 1.0, 2.0]),
                    y: vec![0.5, 0.6, 0.8],
                    err: Some(vec![0.05, 0.04, 0.03]),
                },
            ],
            hline: Some(HLine {
                y: 0.5,
                label: Some("chance".into()),
            }),
            ..LineChart::default()
        };
        let svg = line_svg(&c).expect("drawn");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Probe &lt;accuracy&gt; &amp; chance"));
        for text in ["train", "test", "chance", "layer", "accuracy"] {
            assert!(
                svg.contains(&format!(">\n{text}\n<")) || svg.contains(text),
                "{text}"
            );
        }
        // One polyline per series, the dashed line as segments; 6 markers and a circle at the
        // centre of each of the 3 error bars.
        assert!(count(&svg, "<polyline") >= 2);
        assert_eq!(count(&svg, "<circle"), 6 + 3);
    }

    #[test]
    fn line_chart_errors() {
        let one = |s: Series| LineChart {
            series: vec![s],
            ..LineChart::default()
        };
        let err = |c: &LineChart| line_svg(c).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err(&LineChart::default()), "plot::line: no series to draw");
        assert!(err(&one(Series::default())).contains("is empty"));
        let nan = one(Series {
            name: "acc".into(),
            y: vec![1.0, f64::NAN],
            ..Series::default()
        });
        assert_eq!(
            err(&nan),
            "plot::line: series \"acc\": y[1] is NaN, not a finite number"
        );
        let short_x = one(Series {
            y: vec![1.0, 2.0],
            x: Some(vec![1.0]),
            ..Series::default()
        });
        assert!(err(&short_x).contains("2 y values but 1 x values"));
        let mut flipped = one(Series {
            y: vec![1.0, 2.0],
            ..Series::default()
        });
        flipped.y_min = Some(3.0);
        flipped.y_max = Some(1.0);
        assert!(err(&flipped).contains("y_min must be below y_max"));
    }

    #[test]
    fn bar_chart_draws_one_bar_per_value() {
        let c = BarChart {
            labels: labels("Bars"),
            names: vec!["a".into(), "b".into(), "c".into()],
            values: vec![1.0, -2.0, 3.0],
            err: Some(vec![0.1, 0.2, 0.3]),
            hline: Some(HLine {
                y: 1.5,
                label: None,
            }),
            ..BarChart::default()
        };
        let svg = bars_svg(&c).expect("drawn");
        assert!(svg.contains("Bars"));
        for l in ["a", "b", "c"] {
            assert!(svg.contains(&format!("\n{l}\n")), "label {l}");
        }
        // The background, the plotting area's background and three bars.
        let filled = svg
            .lines()
            .filter(|l| l.contains("<rect") && l.contains("fill=\"#1F77B4\""))
            .count();
        assert_eq!(filled, 3, "{svg}");
        let err = bars_svg(&BarChart {
            names: vec!["a".into()],
            values: vec![1.0, 2.0],
            ..BarChart::default()
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("plot::bars: 1 labels for 2 values"));
    }

    #[test]
    fn heatmap_draws_every_cell_and_annotation() {
        let h = Heatmap {
            labels: labels("Lens"),
            cells: vec![vec![0.1, 0.2, 0.3], vec![0.4, f64::NAN, 0.6]],
            rows: Some(vec!["L0".into(), "L1".into()]),
            cols: Some(vec!["The".into(), " capital".into(), "\n".into()]),
            annotate: Some(vec![
                vec!["x".into(), "<y>".into(), "z".into()],
                vec!["u".into(), "".into(), "w".into()],
            ]),
            ..Heatmap::default()
        };
        let svg = heatmap_svg(&h).expect("drawn");
        assert!(svg.contains("Lens"));
        assert!(svg.contains("&lt;y&gt;"));
        assert!(svg.contains("↵"));
        // Background + 6 cells + 48 colour-bar steps + its frame.
        assert_eq!(count(&svg, "<rect"), 1 + 6 + 48 + 1);
        // The NaN cell is blank.
        assert_eq!(count(&svg, "fill=\"#EBEBEB\""), 1);
        for t in ["L0", "L1", "The", "capital", "0.6", "0.1"] {
            assert!(svg.contains(t), "{t}");
        }
    }

    #[test]
    fn heatmap_errors() {
        let err = |cells: Vec<Vec<f64>>| {
            heatmap_svg(&Heatmap {
                cells,
                ..Heatmap::default()
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert_eq!(err(vec![]), "plot::heatmap: the matrix is empty");
        assert_eq!(
            err(vec![vec![1.0, 2.0], vec![3.0]]),
            "plot::heatmap: the matrix is ragged: row 0 has 2 values, row 1 has 1"
        );
        assert!(err(vec![vec![f64::INFINITY]]).contains("infinity is an error"));
        let bad_labels = heatmap_svg(&Heatmap {
            cells: vec![vec![1.0, 2.0]],
            cols: Some(vec!["a".into()]),
            ..Heatmap::default()
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            bad_labels.as_deref(),
            Some("plot::heatmap: 1 column labels for 2 columns")
        );
    }

    #[test]
    fn text_charts() {
        let bars = text_bars(&["a".into(), "long".into()], &[1.0, 0.5], 8, None).expect("bars");
        assert_eq!(bars, "a    ████████ 1\nlong ████     0.5");
        let h = Heatmap {
            cells: vec![vec![0.0, 1.0], vec![f64::NAN, 0.5]],
            ..Heatmap::default()
        };
        assert_eq!(
            text_heatmap(&h).expect("heatmap"),
            "0 ··██\n1   ▒▒\n  ·· 0 … ██ 1"
        );
        assert_eq!(
            sparkline(&[0.0, 0.5, 1.0, f64::NAN]).ok().as_deref(),
            Some("▁▅█ ")
        );
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(12.0), "12");
        assert_eq!(fmt_tick(1234.5678), "1235");
        assert_eq!(fmt_tick(0.000_012), "1.20e-5");
    }
}
