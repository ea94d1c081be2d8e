//! Plots with `plotters`, each written as PNG and SVG: perplexity vs context length per method (log-x and
//! log-y axes, the trained context marked), a cost (tokens/s, memory) vs context length, a passkey accuracy heatmap (method x length), the search
//! fitness curve (best fitness vs evaluations), and fine-tune loss curves (loss vs tokens). Text needs a TrueType font: the first of [`FONT_PATHS`] that
//! exists (Debian's `fonts-dejavu-core`), or the file named by `LONGROPE_PLOT_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{ExperimentError, Result};

/// Where the plot font is looked for.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// A named series of `(x, y)` points.
pub type Series = (String, Vec<(f64, f64)>);

/// Register the plot font once; an error says where fonts were looked for.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("LONGROPE_PLOT_FONT").map(PathBuf::from).into_iter().collect();
        candidates.extend(FONT_PATHS.iter().map(PathBuf::from));
        let path = candidates.iter().find(|p| p.exists()).ok_or_else(|| {
            format!("no TrueType font found (looked at {}; install fonts-dejavu-core or set LONGROPE_PLOT_FONT)", FONT_PATHS.join(", "))
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(|message| ExperimentError::Plot { path: PathBuf::from("(font)"), message })
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Plot { path: path.to_path_buf(), message: e.to_string() }
}

/// Colour of series `i`.
fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 10] = [
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
    C[i % C.len()]
}

/// Draw `$body` with both backends (`$root` bound to each drawing area): `stem.png` and `stem.svg`, each
/// written atomically (`longrope_core::files`), so a full disk leaves neither a half image nor a temporary file.
macro_rules! both {
    ($stem:expr, $size:expr, |$root:ident| $body:block) => {{
        ensure_font()?;
        let png = $stem.with_extension("png");
        let svg = $stem.with_extension("svg");
        longrope_core::files::write_atomic_path(&png, |tmp: &Path| -> Result<()> {
            let $root = BitMapBackend::new(tmp, $size).into_drawing_area();
            let r: std::result::Result<(), String> = (|| $body)();
            r.map_err(|e| plot_err(&png, e))?;
            $root.present().map_err(|e| plot_err(&png, e))?;
            Ok(())
        })?;
        {
            let mut text = String::new();
            {
                let $root = SVGBackend::with_string(&mut text, $size).into_drawing_area();
                let r: std::result::Result<(), String> = (|| $body)();
                r.map_err(|e| plot_err(&svg, e))?;
                $root.present().map_err(|e| plot_err(&svg, e))?;
            }
            longrope_core::files::write_atomic(&svg, text.as_bytes())?;
        }
        Ok(vec![png, svg])
    }};
}

fn span(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite() && *v > 0.0).fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    if hi <= lo {
        return (lo / pad, hi * pad);
    }
    (lo / pad, hi * pad)
}

fn length_label(x: f64) -> String {
    let x = x.round() as u64;
    if x >= 1024 && x % 1024 == 0 {
        format!("{}k", x / 1024)
    } else {
        format!("{x}")
    }
}

/// The mesh, series and legend of a line chart (any coordinate types over `f64`).
macro_rules! chart_body {
    ($chart:expr, $xdesc:expr, $ydesc:expr, $series:expr, $yr:expr, $vline:expr, $xfmt:expr) => {{
        let mut chart = $chart;
        chart
            .configure_mesh()
            .x_desc($xdesc)
            .y_desc($ydesc)
            .x_label_formatter(&$xfmt)
            .y_label_formatter(&|y: &f64| format!("{:.4}", y).trim_end_matches('0').trim_end_matches('.').to_string())
            .draw()
            .map_err(|e| e.to_string())?;
        if let Some(v) = $vline {
            let (ylo, yhi): (f64, f64) = $yr;
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(v, ylo), (v, yhi)], RGBColor(60, 60, 60).stroke_width(3))))
                .map_err(|e| e.to_string())?
                .label("trained context")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(60, 60, 60).stroke_width(3)));
        }
        for (i, (name, pts)) in $series.iter().enumerate() {
            let c = color(i);
            let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(_, y)| y.is_finite() && *y > 0.0).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }};
}

/// A line chart on a linear axis over `x` (callers pass `log2(length)` for a log-x axis) and a log or linear y.
macro_rules! line_chart {
    ($root:expr, $title:expr, $xdesc:expr, $ydesc:expr, $series:expr, $xr:expr, $yr:expr, $logy:expr, $vline:expr, $xfmt:expr) => {{
        let root = $root;
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut builder = ChartBuilder::on(root);
        builder.caption($title, ("sans-serif", 22)).margin(15).x_label_area_size(45).y_label_area_size(70);
        let (xlo, xhi): (f64, f64) = $xr;
        let (ylo, yhi): (f64, f64) = $yr;
        if $logy {
            chart_body!(
                builder.build_cartesian_2d(xlo..xhi, (ylo..yhi).log_scale()).map_err(|e| e.to_string())?,
                $xdesc, $ydesc, $series, $yr, $vline, $xfmt
            );
        } else {
            chart_body!(
                builder.build_cartesian_2d(xlo..xhi, ylo..yhi).map_err(|e| e.to_string())?,
                $xdesc, $ydesc, $series, $yr, $vline, $xfmt
            );
        }
        Ok(())
    }};
}

/// Linear range around values, padded by `pad` of the span (at least `min_pad`).
fn lin_span(values: impl Iterator<Item = f64>, pad: f64, min_pad: f64) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let p = ((hi - lo) * pad).max(min_pad);
    (lo - p, hi + p)
}

/// The label of a `log2(length)` axis point: the length at integer points, nothing between.
fn log2_label(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        length_label(2f64.powf(x.round()))
    } else {
        String::new()
    }
}

/// Perplexity vs context length, one line per method: log2 x axis (labelled with lengths), y on a log axis
/// when the values span more than a factor 20 (a method that breaks down beyond `L`), else linear; a vertical
/// line marks the trained context `trained`.
pub fn ppl_vs_length(stem: &Path, title: &str, series: &[Series], trained: Option<usize>) -> Result<Vec<PathBuf>> {
    let series: Vec<Series> = series.iter().map(|(n, p)| (n.clone(), p.iter().map(|&(x, y)| (x.log2(), y)).collect())).collect();
    let xr = lin_span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).chain(trained.map(|t| (t as f64).log2())), 0.05, 0.3);
    let (lo, hi) = span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)), 1.0);
    let logy = hi / lo > 20.0;
    let yr = if logy { (lo / 1.3, hi * 1.3) } else { lin_span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)), 0.08, 0.01 * hi.max(1e-9)) };
    let yr = if logy { yr } else { (yr.0.max(0.0), yr.1) };
    let vline = trained.map(|t| (t as f64).log2());
    let ydesc = if logy { "perplexity (log scale)" } else { "perplexity" };
    both!(stem, (960, 620), |root| {
        line_chart!(&root, title, "context length (tokens, log scale)", ydesc, series, xr, yr, logy, vline, |x: &f64| log2_label(*x))
    })
}

/// A cost vs context length (tokens/s, peak memory), one line per series: log2 x axis labelled with lengths,
/// linear y from 0.
pub fn metric_vs_length(stem: &Path, title: &str, ydesc: &str, series: &[Series]) -> Result<Vec<PathBuf>> {
    let series: Vec<Series> = series.iter().map(|(n, p)| (n.clone(), p.iter().map(|&(x, y)| (x.log2(), y)).collect())).collect();
    let xr = lin_span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)), 0.05, 0.3);
    let top = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).filter(|v| v.is_finite()).fold(0f64, f64::max);
    let yr = (0.0, (top * 1.1).max(1e-9));
    both!(stem, (960, 620), |root| {
        line_chart!(&root, title, "context length (tokens, log scale)", ydesc, series, xr, yr, false, None::<f64>, |x: &f64| log2_label(*x))
    })
}

/// Best fitness vs number of evaluations, one line per search.
pub fn search_curve(stem: &Path, title: &str, series: &[Series]) -> Result<Vec<PathBuf>> {
    let xr = lin_span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)), 0.05, 0.5);
    let top = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1.abs())).filter(|v| v.is_finite()).fold(0f64, f64::max);
    let yr = lin_span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)), 0.1, 0.01 * top.max(1e-6));
    both!(stem, (960, 620), |root| {
        line_chart!(&root, title, "evaluations", "best fitness so far (lower is better)", series, xr, yr, false, None::<f64>, |x: &f64| if (x - x.round()).abs() < 1e-6 { format!("{}", x.round()) } else { String::new() })
    })
}

/// Training loss vs tokens trained on, one line per fine-tune (linear axes).
pub fn loss_curve(stem: &Path, title: &str, series: &[Series]) -> Result<Vec<PathBuf>> {
    let xr = lin_span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)), 0.03, 1.0);
    let top = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1.abs())).filter(|v| v.is_finite()).fold(0f64, f64::max);
    let yr = lin_span(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)), 0.08, 0.01 * top.max(1e-6));
    let yr = (yr.0.max(0.0), yr.1);
    both!(stem, (960, 620), |root| {
        line_chart!(&root, title, "tokens trained on", "training loss (mean NLL, nats)", series, xr, yr, false, None::<f64>, |x: &f64| {
            if *x >= 1e6 { format!("{:.1}M", x / 1e6) } else if *x >= 1e3 { format!("{:.0}k", x / 1e3) } else { format!("{x:.0}") }
        })
    })
}

/// Heatmap of values in [0, 1] (passkey accuracy): rows = methods, columns = lengths; empty cells blank.
pub fn heatmap(stem: &Path, title: &str, rows: &[String], cols: &[usize], values: &[Vec<Option<f64>>]) -> Result<Vec<PathBuf>> {
    let nc = cols.len().max(1);
    let nr = rows.len().max(1);
    let label_width = 30 + 9 * rows.iter().map(|r| r.len()).max().unwrap_or(4) as u32;
    let size = ((label_width + 60 + 110 * nc as u32).max(label_width + 420), 150 + 50 * nr as u32);
    both!(stem, size, |root| {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .margin_left(label_width as i32)
            .margin_bottom(60)
            .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)
            .map_err(|e| e.to_string())?;
        let label = ("sans-serif", 16).into_font().color(&BLACK);
        for (r, row) in values.iter().enumerate() {
            let y = (nr - 1 - r) as f64;
            for (c, v) in row.iter().enumerate() {
                let Some(v) = v else { continue };
                let t = v.clamp(0.0, 1.0);
                let fill = RGBColor((215.0 * (1.0 - t) + 40.0 * t) as u8, (48.0 * (1.0 - t) + 160.0 * t) as u8, (39.0 * (1.0 - t) + 70.0 * t) as u8);
                let x = c as f64;
                chart
                    .draw_series(std::iter::once(Rectangle::new([(x + 0.02, y + 0.04), (x + 0.98, y + 0.96)], fill.filled())))
                    .map_err(|e| e.to_string())?;
                let (px, py) = chart.backend_coord(&(x + 0.5, y + 0.5));
                let style = ("sans-serif", 18).into_font().color(&WHITE).pos(Pos::new(HPos::Center, VPos::Center));
                root.draw(&Text::new(format!("{:.0}%", v * 100.0), (px, py), style)).map_err(|e| e.to_string())?;
            }
        }
        for (r, name) in rows.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, (nr - 1 - r) as f64 + 0.5));
            root.draw(&Text::new(name.clone(), (px - 10, py), label.clone().pos(Pos::new(HPos::Right, VPos::Center))))
                .map_err(|e| e.to_string())?;
        }
        for (c, &l) in cols.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(c as f64 + 0.5, 0.0));
            root.draw(&Text::new(length_label(l as f64), (px, py + 8), label.clone().pos(Pos::new(HPos::Center, VPos::Top))))
                .map_err(|e| e.to_string())?;
        }
        let (px, py) = chart.backend_coord(&(nc as f64 / 2.0, 0.0));
        root.draw(&Text::new("context length (tokens)", (px, py + 34), label.clone().pos(Pos::new(HPos::Center, VPos::Top))))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}
