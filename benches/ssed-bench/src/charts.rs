//! The sweep's charts, drawn with plotters' SVG backend: memory per subscriber, CPU per delivery
//! against the floor, latency percentiles, deliveries per second. Every server keeps its colour in
//! every chart (the order of `--server`); medians are the points, ranges the error bars; a server
//! with no measurement at all is in the legend as failed, never drawn as zeros.

use plotters::prelude::*;

use crate::summary::{num, Point, Stat, Summary};

/// One chart, ready to embed.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File name without `.svg` (for `--svg-dir`, and the anchors of the HTML report).
    pub file: &'static str,
    /// Its heading.
    pub title: String,
    /// What it shows and how it was measured.
    pub caption: String,
    /// The SVG document.
    pub svg: String,
}

/// The colours of the servers, in order (Okabe and Ito's palette, told apart by colour-blind
/// readers too); the floor is black and dashed.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0x80, 0x80, 0x80),
];
const FLOOR_COLOUR: RGBColor = RGBColor(0x20, 0x20, 0x20);
const WIDTH: u32 = 860;
const HEIGHT: u32 = 440;
const FONT: &str = "sans-serif";

/// Server `i`'s colour, as `#rrggbb` for the HTML around the charts.
pub fn colour_hex(i: usize) -> String {
    let RGBColor(r, g, b) = PALETTE[i % PALETTE.len()];
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A series to draw: a name, a colour, points (connections → median and range).
struct Series {
    name: String,
    colour: RGBColor,
    points: Vec<(f64, Stat)>,
    dashed: bool,
    /// Said in the legend instead of drawing (nothing measured).
    note: Option<String>,
}

/// Axis numbers: 1,000 / 1.5M / 0.25.
fn axis_number(v: f64, max: f64) -> String {
    if max >= 2e6 {
        format!("{:.1}M", v / 1e6)
    } else if max >= 20_000.0 {
        num(v, 0)
    } else if max >= 20.0 {
        format!("{v:.0}")
    } else if max >= 2.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}

/// The y axis of a panel.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    /// From 0 to this, or to a little above the largest value.
    Linear(Option<f64>),
    /// Logarithmic, from a power of ten below the smallest value to one above the largest: for
    /// figures that differ between servers by orders of magnitude.
    Log,
}

/// Fills a chart built by [`draw_panel`], whichever its y coordinate: mesh, series, legend.
macro_rules! fill_chart {
    ($chart:ident, $y_desc:expr, $y_label:expr, $series:expr, $legend:expr) => {{
        $chart
            .configure_mesh()
            .x_desc("subscribers (connections held)")
            .y_desc($y_desc)
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| num(*x, 0))
            .y_label_formatter(&$y_label)
            .axis_desc_style((FONT, 14))
            .label_style((FONT, 12))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(0xe8, 0xe8, 0xe8))
            .draw()
            .map_err(err)?;
        for s in $series {
            let style = ShapeStyle::from(&s.colour).stroke_width(2);
            let line: Vec<(f64, f64)> = s.points.iter().map(|&(x, st)| (x, st.median)).collect();
            let label = match &s.note {
                Some(note) => format!("{}: {note}", s.name),
                None => s.name.clone(),
            };
            let drawn = if s.dashed {
                $chart.draw_series(DashedLineSeries::new(line.clone(), 8, 5, style)).map_err(err)?
            } else {
                $chart.draw_series(LineSeries::new(line.clone(), style)).map_err(err)?
            };
            let legend_colour = s.colour;
            let dashed = s.dashed;
            drawn.label(label).legend(move |(x, y)| {
                let style = ShapeStyle::from(&legend_colour).stroke_width(if dashed { 1 } else { 2 });
                PathElement::new(vec![(x, y), (x + 22, y)], style)
            });
            if s.dashed {
                $chart
                    .draw_series(line.iter().map(|&(x, y)| Cross::new((x, y), 4, s.colour.stroke_width(2))))
                    .map_err(err)?;
            } else {
                $chart
                    .draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 4, s.colour.filled())))
                    .map_err(err)?;
            }
            $chart
                .draw_series(s.points.iter().filter(|(_, st)| st.runs > 1).map(|&(x, st)| {
                    ErrorBar::new_vertical(x, st.min, st.median, st.max, s.colour.filled(), 10)
                }))
                .map_err(err)?;
        }
        if $legend && !$series.is_empty() {
            $chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(0xbb, 0xbb, 0xbb))
                .draw()
                .map_err(err)?;
        }
    }};
}

/// Draws `series` on `area` against connections; `y_desc` names the y axis with its unit.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    series: &[Series],
    x_max: f64,
    scale: Scale,
    legend: bool,
) -> Result<(), String> {
    let values = || series.iter().flat_map(|s| s.points.iter().flat_map(|(_, st)| [st.min, st.max]));
    let data_max = values().fold(0.0_f64, f64::max);
    let x_top = x_max * 1.06;
    let mut builder = ChartBuilder::on(area);
    builder.caption(caption, (FONT, 17)).margin(12).x_label_area_size(44).y_label_area_size(72);
    match scale {
        Scale::Linear(y_max) => {
            let y_top = y_max.unwrap_or(if data_max > 0.0 { data_max * 1.15 } else { 1.0 });
            let mut chart = builder.build_cartesian_2d(0.0..x_top, 0.0..y_top).map_err(err)?;
            fill_chart!(chart, y_desc, |y: &f64| axis_number(*y, y_top), series, legend);
        }
        Scale::Log => {
            let data_min = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
            let (low, high) = if data_min.is_finite() {
                (10f64.powf(data_min.log10().floor()), 10f64.powf((data_max * 1.01).log10().ceil()))
            } else {
                (1.0, 10.0)
            };
            let mut chart = builder.build_cartesian_2d(0.0..x_top, (low..high).log_scale()).map_err(err)?;
            let y_desc = format!("{y_desc} (log scale)");
            fill_chart!(chart, &y_desc, |y: &f64| log_axis_number(*y), series, legend);
        }
    }
    Ok(())
}

/// A log axis' numbers: 100 / 10,000 / 1.5M / 0.1.
fn log_axis_number(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", num(v / 1e6, if (v / 1e6).fract() == 0.0 { 0 } else { 1 }))
    } else if v >= 1.0 {
        num(v, 0)
    } else {
        format!("{v}")
    }
}

/// One series per server from `figure` of each point.
fn server_series(summary: &Summary, figure: impl Fn(&Point) -> Option<Stat>) -> Vec<Series> {
    summary
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let points: Vec<(f64, Stat)> =
                s.points.iter().filter_map(|p| figure(p).map(|st| (p.connections as f64, st))).collect();
            let note = if !points.is_empty() {
                None
            } else if s.points.iter().any(|p| p.all_failed()) {
                Some(
                    if s.points.iter().any(|p| p.failures.iter().any(|f| f.starts_with("failed to start"))) {
                        "failed to start, nothing measured".to_string()
                    } else {
                        "failed, nothing measured".to_string()
                    },
                )
            } else {
                Some("not measured".to_string())
            };
            Series { name: s.name.clone(), colour: colour(i), points, dashed: false, note }
        })
        .collect()
}

fn floor_series(
    summary: &Summary,
    name: &str,
    figure: impl Fn(&crate::summary::FloorPoint) -> Option<Stat>,
) -> Option<Series> {
    let points: Vec<(f64, Stat)> =
        summary.floor.iter().filter_map(|f| figure(f).map(|st| (f.connections as f64, st))).collect();
    (!points.is_empty()).then(|| Series {
        name: name.into(),
        colour: FLOOR_COLOUR,
        points,
        dashed: true,
        note: None,
    })
}

fn x_max(summary: &Summary) -> f64 {
    summary
        .servers
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.connections))
        .chain(summary.floor.iter().map(|f| f.connections))
        .max()
        .unwrap_or(1) as f64
}

fn single(
    summary: &Summary,
    title: &str,
    y_desc: &str,
    series: &[Series],
    scale: Scale,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_panel(&root, title, y_desc, series, x_max(summary), scale, true)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Memory per idle subscriber against connections.
fn rss(summary: &Summary) -> Result<Chart, String> {
    let title = "Server memory per idle subscriber";
    let series = server_series(summary, |p| p.bytes_per_subscriber);
    Ok(Chart {
        file: "rss-per-subscriber",
        title: title.into(),
        caption: "(VmRSS with every subscriber connected and idle − VmRSS before the first connection) / \
                  subscribers, summed over the server's process tree. Points: medians; bars: min–max over \
                  the repetitions; every run of every pattern samples it."
            .into(),
        svg: single(summary, title, "bytes per subscriber", &series, Scale::Log)?,
    })
}

/// CPU per delivery against connections, with the floor's CPU per write.
fn cpu(summary: &Summary) -> Result<Chart, String> {
    let title = format!("Server CPU per delivery ({})", summary.latency_pattern_text());
    let mut series = server_series(summary, |p| p.cpu_us);
    series.extend(floor_series(summary, "floor: one bare write() per subscriber", |f| f.cpu_us_per_write));
    Ok(Chart {
        file: "cpu-per-delivery",
        svg: single(summary, &title, "CPU µs per delivery (user + system)", &series, Scale::Linear(None))?,
        title,
        caption: "The server's utime + stime from just before the first publish to the last delivery, \
                  divided by the deliveries. Dashed: the floor, a bare loopback write() of the same size \
                  to each of N sockets (ssed-bench floor), which no server fanning out one event can beat."
            .into(),
    })
}

/// Latency percentiles: one panel per percentile, servers in their colours, the floor's walk
/// dashed.
fn latency(summary: &Summary) -> Result<Chart, String> {
    let title = format!("Delivery latency ({})", summary.latency_pattern_text());
    let names = ["p50", "p90", "p99", "max"];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT * 2)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&title, (FONT, 19)).map_err(err)?;
        let panels = root.split_evenly((2, 2));
        // One scale for the four panels, so they compare at a glance.
        let all: Vec<Vec<Series>> = (0..4)
            .map(|i| {
                let mut s = server_series(summary, |p| p.latency_ms[i]);
                s.extend(floor_series(summary, "floor: one walk over all", |f| f.walk_ms));
                s
            })
            .collect();
        let top = all
            .iter()
            .flat_map(|s| s.iter().flat_map(|s| s.points.iter().map(|(_, st)| st.max)))
            .fold(0.0_f64, f64::max);
        let y_max = if top > 0.0 { top * 1.15 } else { 1.0 };
        for (i, (panel, series)) in panels.iter().zip(&all).enumerate() {
            draw_panel(
                panel,
                names[i],
                "ms from publish to delivery",
                series,
                x_max(summary),
                Scale::Linear(Some(y_max)),
                i == 0,
            )?;
        }
        root.present().map_err(err)?;
    }
    Ok(Chart {
        file: "latency",
        title,
        caption: "Each delivery's latency: the bench's clock when it read the event minus the stamp written \
                  just before the publish went out; percentiles over every delivery of a run, medians over \
                  the repetitions. Dashed: the floor's time for one walk of bare writes over all N sockets, \
                  the least a fan-out to the last subscriber can take."
            .into(),
        svg,
    })
}

/// Deliveries per second under the throughput pattern.
fn throughput(summary: &Summary) -> Result<Chart, String> {
    let title = format!("Deliveries per second ({})", summary.throughput_pattern_text());
    let series = server_series(summary, |p| p.deliveries_per_s);
    Ok(Chart {
        file: "deliveries-per-second",
        svg: single(summary, &title, "deliveries per second", &series, Scale::Log)?,
        title,
        caption: "Deliveries (events × subscribers) from the first publish to the last delivery, divided by \
                  that time, with the events published back to back."
            .into(),
    })
}

/// Draws one chart.
type Maker = fn(&Summary) -> Result<Chart, String>;

/// Every chart the summary has data for; a chart that cannot be drawn becomes a note.
pub fn all(summary: &Summary) -> Vec<Chart> {
    let mut charts = Vec::new();
    let makers: [Maker; 4] = [rss, cpu, latency, throughput];
    for (i, make) in makers.into_iter().enumerate() {
        if i == 3 && summary.throughput_pattern.is_none() {
            continue;
        }
        match make(summary) {
            Ok(chart) => charts.push(chart),
            Err(e) => charts.push(Chart {
                file: "error",
                title: "A chart could not be drawn".into(),
                caption: e,
                svg: String::new(),
            }),
        }
    }
    charts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::example;

    #[test]
    fn charts_hold_every_server_in_its_colour() {
        let (config, records) = example();
        let summary = Summary::of(&config, &records);
        let charts = all(&summary);
        let files: Vec<&str> = charts.iter().map(|c| c.file).collect();
        assert_eq!(files, ["rss-per-subscriber", "cpu-per-delivery", "latency", "deliveries-per-second"]);
        for chart in &charts {
            assert!(
                chart.svg.starts_with("<svg"),
                "{}: {}",
                chart.file,
                &chart.svg[..chart.svg.len().min(80)]
            );
            assert!(chart.svg.contains(&colour_hex(0).to_uppercase()) || chart.svg.contains(&colour_hex(0)));
            assert!(chart.svg.contains("subscribers (connections held)"), "{}: x axis label", chart.file);
        }
        let cpu = &charts[1].svg;
        assert!(cpu.contains("floor: one bare write()"), "the floor is in the CPU chart");
        assert!(cpu.contains("CPU µs per delivery"));
        // b has points at 100 only: drawn, and not at 200 (it failed there).
        assert!(charts[0].svg.contains("\nb\n</text>"), "b is in the legend");
    }

    #[test]
    fn a_server_that_never_started_is_named_failed() {
        let (config, records) = example();
        let records: Vec<_> =
            records.into_iter().filter(|r| !(r.server == "b" && r.connections == 100)).collect();
        let summary = Summary::of(&config, &records);
        let charts = all(&summary);
        assert!(charts[0].svg.contains("b: failed to start, nothing measured"), "{}", charts[0].svg);
    }
}
