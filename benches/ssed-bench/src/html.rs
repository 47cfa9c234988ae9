//! The sweep's HTML report: one self-contained page (inline CSS and SVG, no script, nothing fetched)
//! with the machine, the exact command, the servers in their chart colours, the charts and the
//! table of medians.

use std::fmt::Write as _;

use crate::charts::{colour_hex, Chart};
use crate::summary::{failure_text, Summary};
use crate::sweep::{Machine, SweepConfig};

const STYLE: &str = "
body { font-family: sans-serif; margin: 2em auto; max-width: 980px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.4em; }
pre { background: #f4f4f4; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; white-space: nowrap; }
figure { margin: 1em 0 2em; }
figure svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
.swatch { display: inline-block; width: 1.6em; height: 0.8em; margin-right: 0.4em; vertical-align: middle; }
.failed { color: #a00; font-weight: bold; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; }
";

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The Markdown table of [`Summary::markdown`] as an HTML table (the first line is the header).
fn table(markdown: &str) -> String {
    let mut out = String::from("<table>\n");
    let rows: Vec<&str> = markdown.lines().filter(|l| l.starts_with('|')).collect();
    for (i, row) in rows.iter().enumerate() {
        if i == 1 {
            continue; // the alignment row
        }
        let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
        // Cells are split on `|` not escaped as `\|`.
        let mut cells = Vec::new();
        let mut cell = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'|') => {
                    cell.push('|');
                    chars.next();
                }
                '|' => cells.push(std::mem::take(&mut cell)),
                c => cell.push(c),
            }
        }
        cells.push(cell);
        out.push_str("<tr>");
        for (j, cell) in cells.iter().enumerate() {
            let text = cell.trim();
            let (tag, class) = if i == 0 {
                ("th", "")
            } else if j == 1 || j == 6 || j == 7 {
                ("td", " class=\"num\"")
            } else {
                ("td", "")
            };
            let body = match text.strip_prefix("**").and_then(|t| t.strip_suffix("**")) {
                Some(bold) => format!("<span class=\"failed\">{}</span>", escape(bold)),
                None => escape(text),
            };
            let _ = write!(out, "<{tag}{class}>{body}</{tag}>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// The whole page.
pub fn page(
    config: &SweepConfig,
    machine: &Machine,
    summary: &Summary,
    charts: &[Chart],
    interrupted: bool,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>ssed-bench sweep: connection density</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Connection density sweep</h1>\n<p>{} · {} server(s) · subscribers {} · {} repetition(s)</p>\n",
        escape(&machine.started),
        summary.servers.len(),
        escape(
            &config
                .connections
                .iter()
                .map(|n| crate::summary::num(*n as f64, 0))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        config.reps
    );
    if interrupted {
        h.push_str(
            "<p class=\"banner\">Interrupted (Ctrl-C): this report holds the runs finished before then; \
             the run under way was dropped.</p>\n",
        );
    }
    h.push_str("<h2>Machine</h2>\n<dl>\n");
    let nofile = machine.nofile.map_or("?".into(), |(soft, hard)| format!("soft {soft}, hard {hard}"));
    let pins = match (config.bench_cpu, config.server_cpu) {
        (None, None) => "none".to_string(),
        (bench, server) => format!(
            "bench on CPU {}, servers and the floor's writer on CPU {}",
            bench.map_or("any".into(), |c| c.to_string()),
            server.map_or("any".into(), |c| c.to_string())
        ),
    };
    for (term, value) in [
        ("CPU", machine.cpu.clone()),
        ("cores", machine.cores.to_string()),
        ("kernel", machine.kernel.clone()),
        ("RLIMIT_NOFILE", nofile),
        ("pinning", pins),
        (
            "runs",
            format!(
                "latency and CPU: {}; throughput: {}; bodies of {} B; ramp {}/s, settle {:.0} s",
                summary.latency_pattern_text(),
                summary.throughput_pattern_text(),
                config.body_size,
                config.ramp,
                config.settle.as_secs_f64()
            ),
        ),
    ] {
        let _ = writeln!(h, "<dt>{}</dt><dd>{}</dd>", escape(term), escape(&value));
    }
    h.push_str("</dl>\n<h2>Command</h2>\n");
    let _ = writeln!(h, "<pre>{}</pre>", escape(&config.command_line));
    h.push_str(
        "<p>CPU figures (per delivery, per write) hold up on a busy machine; wall-clock figures (latency, \
         deliveries per second, walk time) stretch with whatever else runs there and are upper bounds.</p>\n",
    );

    h.push_str("<h2>Servers</h2>\n<table>\n<tr><th>server</th><th>how it ran</th><th>status</th></tr>\n");
    for (i, s) in summary.servers.iter().enumerate() {
        let failed: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.failed_runs > 0)
            .map(|p| format!("at {}: {}", p.connections, failure_text(p)))
            .collect();
        let status = if failed.is_empty() {
            let runs: usize = s.points.iter().map(|p| p.runs).sum();
            format!("{runs} runs measured")
        } else {
            format!("<span class=\"failed\">{}</span>", escape(&failed.join("; ")))
        };
        let _ = writeln!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td><code>{}</code></td><td>{status}</td></tr>",
            colour_hex(i),
            escape(&s.name),
            escape(&s.describe)
        );
    }
    if !summary.floor.is_empty() {
        h.push_str(
            "<tr><td><span class=\"swatch\" style=\"background:#202020\"></span>floor</td>\
             <td><code>ssed-bench floor</code>: a bare loopback write() to each of N sockets, no server</td>\
             <td>dashed in the charts</td></tr>\n",
        );
    }
    h.push_str("</table>\n");

    for chart in charts {
        let _ = write!(h, "<figure id=\"{}\">\n<h2>{}</h2>\n", chart.file, escape(&chart.title));
        if chart.svg.is_empty() {
            let _ = writeln!(h, "<p class=\"failed\">{}</p>", escape(&chart.caption));
        } else {
            // The SVG comes from plotters, with every text it holds escaped there.
            h.push_str(
                chart
                    .svg
                    .trim_start_matches(|c| c != '<')
                    .trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
            );
            let _ = writeln!(h, "\n<figcaption>{}</figcaption>", escape(&chart.caption));
        }
        h.push_str("</figure>\n");
    }
    h.push_str("<h2>Medians and ranges</h2>\n");
    h.push_str(&table(&summary.markdown()));
    let notes = summary.markdown();
    if let Some(note) = notes.lines().rev().find(|l| !l.is_empty() && !l.starts_with('|')) {
        let _ = writeln!(h, "<p>{}</p>", escape(note));
    }
    h.push_str("<p>One JSON line per run is in the <code>.jsonl</code> file beside this page.</p>\n</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::example;

    #[test]
    fn the_page_is_self_contained_and_says_what_failed() {
        let (config, records) = example();
        let summary = Summary::of(&config, &records);
        let machine = Machine {
            cpu: "Some CPU".into(),
            cores: 2,
            kernel: "6.1".into(),
            nofile: Some((20000, 20000)),
            started: "now".into(),
        };
        let page = page(&config, &machine, &summary, &crate::charts::all(&summary), false);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 4, "four charts inline");
        for needle in [
            "Some CPU",
            "6.1",
            "soft 20000, hard 20000",
            "'a=a {port}'",
            "failed to start: exited (exit status: 1)",
        ] {
            assert!(page.contains(&escape(needle)), "the page names {needle:?}");
        }
        for outside in ["<script", "https://", "src=", "href=", "@import", "url("] {
            assert!(!page.contains(outside), "{outside} in the page: it must need nothing from elsewhere");
        }
        // The only http:// is the SVG namespace plotters names (an identifier, never fetched).
        assert_eq!(
            page.matches("http://").count(),
            page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        assert!(page.contains("<td>b</td>") || page.contains("</span>b</td>"));
    }

    #[test]
    fn markdown_table_to_html() {
        let html = table("| a | b |\n|---|---|\n| x \\| y | **failed** |\n\nnote\n");
        assert_eq!(html, "<table>\n<tr><th>a</th><th>b</th></tr>\n<tr><td>x | y</td><td class=\"num\"><span class=\"failed\">failed</span></td></tr>\n</table>\n");
    }
}
