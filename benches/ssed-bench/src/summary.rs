//! A sweep's runs reduced to one point per server and connection count: medians with their range
//! over the repetitions, the floor beside them, and failures kept as failures (never as zeros).

use std::fmt::Write as _;

use crate::sweep::{Measured, Pattern, Record, SweepConfig};

/// The median and range of one figure over the runs that measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// How many runs gave a value.
    pub runs: usize,
}

impl Stat {
    /// The statistic of `values`, none when there is none (non-finite values are left out).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Stat { median, min: v[0], max: v[v.len() - 1], runs: v.len() })
    }
}

/// One server at one connection count.
#[derive(Debug, Clone, Default)]
pub struct Point {
    /// Connections asked for.
    pub connections: usize,
    /// Streams held, over every run.
    pub held: Option<Stat>,
    /// Idle RSS per subscriber, bytes, over every run (each samples it before publishing).
    pub bytes_per_subscriber: Option<Stat>,
    /// Server CPU per delivery, µs, in the latency pattern (paced when swept).
    pub cpu_us: Option<Stat>,
    /// Latency p50, p90, p99, max in ms, in the latency pattern.
    pub latency_ms: [Option<Stat>; 4],
    /// Deliveries per second in the throughput pattern (burst when swept).
    pub deliveries_per_s: Option<Stat>,
    /// Lost, doubled, reordered or unexpected deliveries, summed over the runs.
    pub faults: u64,
    /// Runs made (whatever came of them).
    pub runs: usize,
    /// Why runs failed (the server did not start, or the bench could not run), each reason once.
    pub failures: Vec<String>,
    /// Runs that failed.
    pub failed_runs: usize,
}

impl Point {
    /// Whether no run measured anything here.
    pub fn all_failed(&self) -> bool {
        self.runs > 0 && self.failed_runs == self.runs
    }
}

/// One server across the connection counts.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// Its name.
    pub name: String,
    /// Its command or URL.
    pub describe: String,
    /// One per connection count, ascending.
    pub points: Vec<Point>,
}

/// The bare-write floor at one connection count.
#[derive(Debug, Clone, Default)]
pub struct FloorPoint {
    /// Connections written to.
    pub connections: usize,
    /// Writer CPU per write, µs.
    pub cpu_us_per_write: Option<Stat>,
    /// One walk over all connections, ms.
    pub walk_ms: Option<Stat>,
    /// Why floor runs failed.
    pub failures: Vec<String>,
}

/// A sweep, summarised.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The servers, in the order given.
    pub servers: Vec<ServerRow>,
    /// The floor per connection count (empty with `--no-floor`).
    pub floor: Vec<FloorPoint>,
    /// The pattern CPU per delivery and latency come from.
    pub latency_pattern: Option<Pattern>,
    /// The pattern deliveries per second come from.
    pub throughput_pattern: Option<Pattern>,
    /// What each run published: events, rate, body size.
    pub events: u32,
    /// Events per second when paced.
    pub rate: f64,
    /// Bytes per event.
    pub body_size: usize,
    /// Repetitions asked for.
    pub reps: usize,
}

fn note_failure(failures: &mut Vec<String>, why: &str) {
    if !failures.iter().any(|f| f == why) {
        failures.push(why.to_string());
    }
}

impl Summary {
    /// Reduces `records` (possibly fewer than planned, after Ctrl-C).
    pub fn of(config: &SweepConfig, records: &[Record]) -> Summary {
        let latency_pattern = if config.patterns.contains(&Pattern::Paced) {
            Some(Pattern::Paced)
        } else {
            config.patterns.first().copied()
        };
        let throughput_pattern =
            [Pattern::Burst, Pattern::Pipelined].into_iter().find(|p| config.patterns.contains(p));
        let servers = config
            .servers
            .iter()
            .map(|spec| ServerRow {
                name: spec.name.clone(),
                describe: spec.describe(),
                points: config
                    .connections
                    .iter()
                    .map(|&n| {
                        let runs: Vec<&Record> =
                            records.iter().filter(|r| r.server == spec.name && r.connections == n).collect();
                        point(n, &runs, latency_pattern, throughput_pattern)
                    })
                    .collect(),
            })
            .collect();
        let floor = if config.floor {
            config
                .connections
                .iter()
                .map(|&n| {
                    let mut p = FloorPoint { connections: n, ..FloorPoint::default() };
                    let mut cpu = Vec::new();
                    let mut walk = Vec::new();
                    for r in records.iter().filter(|r| r.server == "floor" && r.connections == n) {
                        match &r.measured {
                            Measured::Floor { cpu_us_per_write, walk_ms } => {
                                cpu.push(*cpu_us_per_write);
                                walk.push(*walk_ms);
                            }
                            Measured::StartFailed(why) | Measured::RunFailed(why) => {
                                note_failure(&mut p.failures, why)
                            }
                            Measured::Load(_) => {}
                        }
                    }
                    p.cpu_us_per_write = Stat::of(cpu);
                    p.walk_ms = Stat::of(walk);
                    p
                })
                .collect()
        } else {
            Vec::new()
        };
        Summary {
            servers,
            floor,
            latency_pattern,
            throughput_pattern,
            events: config.events,
            rate: config.rate,
            body_size: config.body_size,
            reps: config.reps,
        }
    }

    /// The floor at `n` connections, if measured.
    pub fn floor_at(&self, n: usize) -> Option<&FloorPoint> {
        self.floor.iter().find(|f| f.connections == n)
    }

    /// What the latency pattern was, in words.
    pub fn latency_pattern_text(&self) -> String {
        match self.latency_pattern {
            Some(Pattern::Paced) => format!("paced, {} events at {}/s", self.events, self.rate),
            Some(p) => format!("{}, {} events", p.name(), self.events),
            None => "-".into(),
        }
    }

    /// What the throughput pattern was, in words.
    pub fn throughput_pattern_text(&self) -> String {
        match self.throughput_pattern {
            Some(p) => format!("{}, {} events back to back", p.name(), self.events),
            None => "not swept".into(),
        }
    }

    /// The table of medians with their ranges, one row per server and connection count, the floor first.
    pub fn markdown(&self) -> String {
        let mut t = String::new();
        let latency = self.latency_pattern.map_or("-", Pattern::name);
        let throughput = self.throughput_pattern.map_or("-", Pattern::name);
        let _ = writeln!(
            t,
            "| server | subscribers | RSS per subscriber | CPU per delivery ({latency}) | × floor | \
             latency p50 / p90 / p99 / max ({latency}) | deliveries/s ({throughput}) | faults |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---|---:|---:|");
        for f in &self.floor {
            let walk =
                f.walk_ms.map_or("-".into(), |w| format!("one walk over all: {}", stat_text(&w, "ms", 1)));
            let cpu = match (&f.cpu_us_per_write, f.failures.first()) {
                (Some(c), _) => format!("{} per write", stat_text(c, "µs", 2)),
                (None, Some(why)) => format!("failed: {}", escape(why)),
                (None, None) => "-".into(),
            };
            let _ = writeln!(
                t,
                "| floor (bare writes) | {} | - | {cpu} | 1.00 | {walk} | - | - |",
                f.connections
            );
        }
        for s in &self.servers {
            for p in &s.points {
                if p.runs == 0 {
                    continue;
                }
                if p.all_failed() {
                    let _ = writeln!(
                        t,
                        "| {} | {} | **{}** | - | - | - | - | - |",
                        s.name,
                        p.connections,
                        escape(&failure_text(p))
                    );
                    continue;
                }
                let ratio = match (p.cpu_us, self.floor_at(p.connections).and_then(|f| f.cpu_us_per_write)) {
                    (Some(c), Some(f)) if f.median > 0.0 => format!("{:.2}", c.median / f.median),
                    _ => "-".into(),
                };
                let latency = if p.latency_ms.iter().any(Option::is_some) {
                    p.latency_ms
                        .iter()
                        .map(|l| l.map_or("-".into(), |l| num(l.median, 1)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                        + " ms"
                } else {
                    "-".into()
                };
                let mut faults = p.faults.to_string();
                if p.failed_runs > 0 {
                    let _ = write!(faults, "; {}", escape(&failure_text(p)));
                }
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {ratio} | {latency} | {} | {faults} |",
                    s.name,
                    p.held.map_or(p.connections.to_string(), |h| if h.min as usize == p.connections {
                        p.connections.to_string()
                    } else {
                        format!("{} (held {})", p.connections, num(h.min, 0))
                    }),
                    p.bytes_per_subscriber.map_or("-".into(), |b| stat_text(&b, "B", 0)),
                    p.cpu_us.map_or("-".into(), |c| stat_text(&c, "µs", 2)),
                    p.deliveries_per_s.map_or("-".into(), |d| stat_text(&d, "", 0)),
                );
            }
        }
        let _ = writeln!(
            t,
            "\nMedians over {} repetition(s), [min–max] when more than one run gave a value. Latency \
             pattern: {}; throughput pattern: {}; bodies of {} B.",
            self.reps,
            self.latency_pattern_text(),
            self.throughput_pattern_text(),
            self.body_size
        );
        t
    }
}

/// "failed to start (2 of 3 runs): why" for a point with failed runs.
pub fn failure_text(p: &Point) -> String {
    let all = if p.all_failed() { "failed" } else { "some runs failed" };
    format!("{all} ({} of {} runs): {}", p.failed_runs, p.runs, p.failures.join("; "))
}

/// A cell must not break the Markdown table.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `value` with `decimals` and thousands separators.
pub fn num(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// `8.51 µs [7.90–9.02]`, or without the range for a single run.
pub fn stat_text(s: &Stat, unit: &str, decimals: usize) -> String {
    let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
    if s.runs > 1 {
        format!("{}{unit} [{}–{}]", num(s.median, decimals), num(s.min, decimals), num(s.max, decimals))
    } else {
        format!("{}{unit}", num(s.median, decimals))
    }
}

fn point(
    connections: usize,
    runs: &[&Record],
    latency_pattern: Option<Pattern>,
    throughput_pattern: Option<Pattern>,
) -> Point {
    let mut p = Point { connections, runs: runs.len(), ..Point::default() };
    let mut held = Vec::new();
    let mut bytes = Vec::new();
    let mut cpu = Vec::new();
    let mut latency: [Vec<f64>; 4] = Default::default();
    let mut dps = Vec::new();
    for r in runs {
        match &r.measured {
            Measured::Load(m) => {
                held.push(m.held as f64);
                bytes.extend(m.bytes_per_subscriber);
                p.faults += m.faults;
                if r.pattern == latency_pattern {
                    cpu.extend(m.cpu_us_per_delivery);
                    for (all, one) in latency.iter_mut().zip(m.latency_ms) {
                        all.extend(one);
                    }
                }
                if r.pattern.is_some() && r.pattern == throughput_pattern {
                    dps.extend(m.deliveries_per_s);
                }
            }
            Measured::StartFailed(why) => {
                p.failed_runs += 1;
                note_failure(&mut p.failures, &format!("failed to start: {why}"));
            }
            Measured::RunFailed(why) => {
                p.failed_runs += 1;
                note_failure(&mut p.failures, &format!("run failed: {why}"));
            }
            Measured::Floor { .. } => {}
        }
    }
    p.held = Stat::of(held);
    p.bytes_per_subscriber = Stat::of(bytes);
    p.cpu_us = Stat::of(cpu);
    p.latency_ms = latency.map(Stat::of);
    p.deliveries_per_s = Stat::of(dps);
    p
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::Metrics;
    use crate::sweep::SweepConfig;

    #[test]
    fn medians_and_ranges() {
        let s = Stat::of([3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of([4.0, 1.0]).unwrap().median, 2.5);
        assert!(Stat::of([]).is_none());
        assert_eq!(stat_text(&s, "µs", 2), "2.00 µs [1.00–3.00]");
        assert_eq!(num(1_647_018.4, 0), "1,647,018");
        assert_eq!(num(-1234.5, 1), "-1,234.5");
        assert_eq!(num(999.0, 0), "999");
    }

    /// A small config and records: two servers, two counts, one rep; `b` fails to start at 200.
    pub(crate) fn example() -> (SweepConfig, Vec<Record>) {
        let args =
            ["--server", "a=a {port}", "--server", "b=b {port}", "--connections", "100,200", "--reps", "1"];
        let config = crate::sweep::parse(
            lexopt::Parser::from_args(args.iter().copied()),
            crate::sweep::quote_command(args.iter().map(|s| s.to_string())),
        )
        .unwrap()
        .unwrap();
        let load = |server: &str, pattern, n: usize, scale: f64| Record {
            server: server.into(),
            pattern: Some(pattern),
            connections: n,
            rep: 1,
            measured: Measured::Load(Metrics {
                held: n,
                rss_before_bytes: Some(2e6),
                bytes_per_subscriber: Some(250.0 * scale),
                cpu_us_per_delivery: Some(8.0 * scale),
                latency_ms: [Some(1.0 * scale), Some(2.0 * scale), Some(3.0 * scale), Some(4.0 * scale)],
                deliveries_per_s: Some(1e6 / scale),
                deliveries: 1000,
                faults: 0,
            }),
        };
        let floor = |n: usize| Record {
            server: "floor".into(),
            pattern: None,
            connections: n,
            rep: 1,
            measured: Measured::Floor { cpu_us_per_write: 7.5, walk_ms: n as f64 / 100.0 },
        };
        let records = vec![
            floor(100),
            load("a", Pattern::Paced, 100, 1.0),
            load("b", Pattern::Paced, 100, 3.0),
            load("a", Pattern::Burst, 100, 1.0),
            load("b", Pattern::Burst, 100, 3.0),
            floor(200),
            load("a", Pattern::Paced, 200, 1.1),
            Record {
                server: "b".into(),
                pattern: Some(Pattern::Paced),
                connections: 200,
                rep: 1,
                measured: Measured::StartFailed("exited (exit status: 1) before listening".into()),
            },
            load("a", Pattern::Burst, 200, 1.1),
            Record {
                server: "b".into(),
                pattern: Some(Pattern::Burst),
                connections: 200,
                rep: 1,
                measured: Measured::StartFailed("exited (exit status: 1) before listening".into()),
            },
        ];
        (config, records)
    }

    #[test]
    fn a_failed_server_is_a_failure_not_zeros() {
        let (config, records) = example();
        let summary = Summary::of(&config, &records);
        let b = &summary.servers[1];
        assert!(!b.points[0].all_failed());
        assert!(b.points[1].all_failed());
        assert!(b.points[1].bytes_per_subscriber.is_none() && b.points[1].cpu_us.is_none());
        let table = summary.markdown();
        let row = table.lines().find(|l| l.starts_with("| b | 200 |")).unwrap();
        assert!(row.contains("failed (2 of 2 runs): failed to start: exited (exit status: 1)"), "{row}");
        assert!(!row.contains(" 0 B"), "{row}");
        let a = table.lines().find(|l| l.starts_with("| a | 100 |")).unwrap();
        assert_eq!(
            a,
            "| a | 100 | 250 B [250–250] | 8.00 µs | 1.07 | 1.0 / 2.0 / 3.0 / 4.0 ms | 1,000,000 | 0 |"
        );
        let floor = table.lines().find(|l| l.starts_with("| floor (bare writes) | 200 |")).unwrap();
        assert!(floor.contains("7.50 µs per write") && floor.contains("2.0 ms"), "{floor}");
    }
}
