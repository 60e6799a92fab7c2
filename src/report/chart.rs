//! Grouped bar chart of test-set recall per class, one bar per stage (SVG and PNG).
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Report, ReportError};

/// Chart size in pixels (width, height) of both `recall.svg` and `recall.png`.
pub const CHART_WIDTH: u32 = 1000;
/// See [`CHART_WIDTH`].
pub const CHART_HEIGHT: u32 = 560;
/// The chart's title.
pub const CHART_TITLE: &str = "true-positive rate (recall) per class, test set";
/// Bar colours by stage (matplotlib's "tab10"): stage 1 blue, stage 2 orange, ...; they repeat
/// after ten stages.
pub const STAGE_COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

const FONT: &str = "sans-serif";
/// Fraction of a class slot covered by its group of bars.
const GROUP_WIDTH: f64 = 0.8;

/// Register DejaVu Sans (embedded) as plotters' "sans-serif" once per process.
fn ensure_fonts() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let regular = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok();
        let bold = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok();
        regular && bold
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Chart("cannot load the embedded DejaVu Sans font".into()))
    }
}

fn chart_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

fn stage_color(k: usize) -> RGBColor {
    STAGE_COLORS[k % STAGE_COLORS.len()]
}

fn darker(c: RGBColor) -> RGBColor {
    let f = |v: u8| (f64::from(v) * 0.6) as u8;
    RGBColor(f(c.0), f(c.1), f(c.2))
}

/// `recall.svg` as a string.
pub(super) fn render_svg(report: &Report) -> Result<String, ReportError> {
    ensure_fonts()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
        draw(&root, report)?;
        root.present().map_err(chart_err)?;
    }
    if !report.run_id.is_empty() {
        // The run id as an XML comment after the declaration / before the root element.
        let at = svg.find("<svg").unwrap_or(0);
        svg.insert_str(at, &format!("<!-- evenclass run id: {} -->\n", report.run_id.replace("--", "-")));
    }
    Ok(svg)
}

/// `recall.png` as encoded PNG bytes (8-bit RGB).
pub(super) fn render_png(report: &Report) -> Result<Vec<u8>, ReportError> {
    ensure_fonts()?;
    let (w, h) = (CHART_WIDTH, CHART_HEIGHT);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, report)?;
        root.present().map_err(chart_err)?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if !report.run_id.is_empty() {
        encoder.add_text_chunk("evenclass-run-id".into(), report.run_id.clone())?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(out)
}

/// The chart's title: [`CHART_TITLE`], and a warning when the data were synthetic.
pub(super) fn chart_title(report: &Report) -> String {
    if report.synthetic {
        format!("{CHART_TITLE}: SYNTHETIC data, not CIFAR-10")
    } else {
        CHART_TITLE.to_string()
    }
}

/// Most lines a class label is wrapped into.
const LABEL_LINES: usize = 3;

/// `name` wrapped at spaces into at most [`LABEL_LINES`] lines of at most `max_px` pixels each;
/// a word too long for a line is shortened with "…".
fn wrap_label<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    style: &TextStyle,
    max_px: u32,
) -> Result<Vec<String>, ReportError> {
    let width = |s: &str| area.estimate_text_size(s, style).map(|(w, _)| w).map_err(chart_err);
    // Break at spaces and after hyphens ("synthetic-stripes-" | "coarse").
    let mut words: Vec<(String, &str)> = Vec::new(); // (word, separator before it)
    for (i, w) in name.split_whitespace().enumerate() {
        let mut first = true;
        for part in w.split_inclusive('-') {
            words.push((part.to_string(), if first && i > 0 { " " } else { "" }));
            first = false;
        }
    }
    let mut lines: Vec<String> = Vec::new();
    for (word, sep) in words {
        match lines.last_mut() {
            Some(last) if width(&format!("{last}{sep}{word}"))? <= max_px => {
                last.push_str(sep);
                last.push_str(&word);
            }
            _ => lines.push(word),
        }
    }
    if lines.len() > LABEL_LINES {
        let rest = lines.split_off(LABEL_LINES - 1).concat();
        lines.push(rest);
    }
    lines.iter().map(|l| fit_label(area, l, style, max_px)).collect()
}

/// Class labels as lines: wrapped ([`wrap_label`]); if shortening still made two of them equal,
/// every label is prefixed with its class index, so no two classes ever look the same.
pub(super) fn class_labels<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    names: &[String],
    style: &TextStyle,
    max_px: u32,
) -> Result<Vec<Vec<String>>, ReportError> {
    let labels = names.iter().map(|n| wrap_label(area, n, style, max_px)).collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    if labels.iter().all(|l| seen.insert(l.clone())) {
        return Ok(labels);
    }
    names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let mut lines = wrap_label(
                area,
                n,
                style,
                max_px.saturating_sub(area.estimate_text_size(&format!("{k}: "), style).map_err(chart_err)?.0),
            )?;
            lines[0] = format!("{k}: {}", lines[0]);
            Ok(lines)
        })
        .collect()
}

/// Shorten `name` with a trailing "…" until it fits in `max_px` pixels.
fn fit_label<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    name: &str,
    style: &TextStyle,
    max_px: u32,
) -> Result<String, ReportError> {
    let width = |s: &str| area.estimate_text_size(s, style).map(|(w, _)| w).map_err(chart_err);
    if width(name)? <= max_px {
        return Ok(name.to_string());
    }
    let chars: Vec<char> = name.chars().collect();
    for keep in (1..chars.len()).rev() {
        let s: String = chars[..keep].iter().chain(std::iter::once(&'…')).collect();
        if width(&s)? <= max_px {
            return Ok(s);
        }
    }
    Ok("…".to_string())
}

/// Draws the chart; returns the class labels as drawn (lines per class).
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &Report) -> Result<Vec<Vec<String>>, ReportError> {
    let classes = report.class_names.len();
    let stages = report.stages.len();
    let (w, _) = root.dim_in_pixel();
    root.fill(&WHITE).map_err(chart_err)?;

    // Legend below the plot, wrapped into rows: swatch, "name (mean recall 0.xxx)".
    let legend_style: TextStyle = (FONT, 15).into_font().color(&BLACK);
    let legend_texts: Vec<String> =
        report.stages.iter().map(|s| format!("{} (mean recall {:.3})", s.name, s.test.mean_recall())).collect();
    let (swatch, gap, row_h) = (16i32, 28i32, 24i32);
    let mut rows: Vec<Vec<(usize, i32)>> = vec![Vec::new()];
    let mut row_w = 0i32;
    let max_row_w = w as i32 - 40;
    for (k, text) in legend_texts.iter().enumerate() {
        let (tw, _) = root.estimate_text_size(text, &legend_style).map_err(chart_err)?;
        let item_w = swatch + 6 + tw as i32;
        let last = rows.last_mut().expect("rows is never empty");
        if !last.is_empty() && row_w + gap + item_w > max_row_w {
            rows.push(vec![(k, item_w)]);
            row_w = item_w;
        } else {
            row_w += if last.is_empty() { item_w } else { gap + item_w };
            last.push((k, item_w));
        }
    }
    let legend_h = rows.len() as i32 * row_h + 12;
    let (plot_area, legend_area) = root.split_vertically(CHART_HEIGHT as i32 - legend_h);

    for (r, row) in rows.iter().enumerate() {
        let total: i32 = row.iter().map(|&(_, iw)| iw).sum::<i32>() + gap * (row.len() as i32 - 1);
        let mut x = (w as i32 - total) / 2;
        let y = r as i32 * row_h + row_h / 2;
        for &(k, item_w) in row {
            let color = stage_color(k);
            legend_area
                .draw(&Rectangle::new([(x, y - swatch / 2), (x + swatch, y + swatch / 2)], color.filled()))
                .map_err(chart_err)?;
            legend_area
                .draw(&Text::new(
                    legend_texts[k].as_str(),
                    (x + swatch + 6, y),
                    legend_style.pos(Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(chart_err)?;
            x += item_w + gap;
        }
    }

    let title = chart_title(report);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title.as_str(), (FONT, if report.synthetic { 19 } else { 22 }).into_font())
        .margin_top(10)
        .margin_right(20)
        .margin_left(10)
        .x_label_area_size(22 + 17 * LABEL_LINES as u32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..classes as f64, 0f64..1f64)
        .map_err(chart_err)?;

    let slot_px = chart.plotting_area().dim_in_pixel().0 / classes as u32;
    let label_style: TextStyle = (FONT, 14).into_font().color(&BLACK);
    let labels = class_labels(root, &report.class_names, &label_style, slot_px.saturating_sub(4))?;
    // Class names are drawn by hand, centred under each group of bars (the mesh's own x labels
    // would sit at round numbers, not at the group centres).
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .x_labels(0)
        .y_labels(11)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .y_label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .y_desc("recall")
        .x_desc("class")
        .draw()
        .map_err(chart_err)?;

    let centred = label_style.pos(Pos::new(HPos::Center, VPos::Top));
    for (k, lines) in labels.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(k as f64 + 0.5, 0.0));
        for (i, line) in lines.iter().enumerate() {
            root.draw(&Text::new(line.as_str(), (x, y + 6 + 16 * i as i32), centred.clone())).map_err(chart_err)?;
        }
    }

    let bar_w = GROUP_WIDTH / stages as f64;
    // Bar values are written only where they fit across a bar (few stages and classes).
    let value_style: TextStyle = (FONT, if stages <= 2 { 12 } else { 10 }).into_font().color(&WHITE);
    let bar_px = f64::from(slot_px) * bar_w;
    let (value_px, value_h) = root.estimate_text_size("0.00", &value_style).map_err(chart_err)?;
    let show_values = f64::from(value_px) + 2.0 <= bar_px;
    let value_above: TextStyle = value_style.color(&BLACK);
    // Mean-recall lines first: the bars, and the value labels inside them, are drawn over them,
    // so a line never runs through a value.
    for (s, stage) in report.stages.iter().enumerate() {
        let mean = stage.test.mean_recall();
        if mean.is_finite() {
            let line = DashedPathElement::new(
                vec![(0.0, mean.clamp(0.0, 1.0)), (classes as f64, mean.clamp(0.0, 1.0))],
                8,
                5,
                darker(stage_color(s)).stroke_width(2),
            );
            chart.draw_series(std::iter::once(line)).map_err(chart_err)?;
        }
    }
    for (s, stage) in report.stages.iter().enumerate() {
        let color = stage_color(s);
        let bars = stage.test.recall.iter().enumerate().filter(|(_, r)| r.is_finite()).map(|(k, &r)| {
            let x0 = k as f64 + (1.0 - GROUP_WIDTH) / 2.0 + s as f64 * bar_w;
            let mut bar = Rectangle::new([(x0, 0.0), (x0 + bar_w, r.clamp(0.0, 1.0))], color.filled());
            bar.set_margin(0, 0, 1, 1);
            bar
        });
        chart.draw_series(bars).map_err(chart_err)?;
    }
    if show_values {
        for (s, stage) in report.stages.iter().enumerate() {
            let labels = stage.test.recall.iter().enumerate().filter(|(_, r)| r.is_finite()).map(|(k, &r)| {
                let xc = k as f64 + (1.0 - GROUP_WIDTH) / 2.0 + (s as f64 + 0.5) * bar_w;
                let r = r.clamp(0.0, 1.0);
                let text = format!("{r:.2}");
                // Inside the top of the bar when it is tall enough, else just above it on a white
                // box (which hides a mean-recall line passing there).
                let (style, dy, bg) = if r >= 0.08 {
                    (value_style.pos(Pos::new(HPos::Center, VPos::Top)), 3, TRANSPARENT)
                } else {
                    (value_above.pos(Pos::new(HPos::Center, VPos::Bottom)), -2, WHITE.to_rgba())
                };
                let (hw, h) = (value_px as i32 / 2 + 1, value_h as i32 + 2);
                EmptyElement::at((xc, r))
                    + Rectangle::new([(-hw, dy - h), (hw, dy)], bg.filled())
                    + Text::new(text, (0, dy), style)
            });
            chart.draw_series(labels).map_err(chart_err)?;
        }
    }
    Ok(labels)
}

/// The class labels as the chart draws them (one list of lines per class), for checks that no
/// two classes get the same label.
pub fn chart_class_labels(report: &Report) -> Result<Vec<Vec<String>>, ReportError> {
    ensure_fonts()?;
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
    draw(&root, report)
}
