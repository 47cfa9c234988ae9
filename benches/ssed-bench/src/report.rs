//! The results: a table for people and one JSON line for scripts, both from the same derived figures.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};

use crate::load::Outcome;

/// A one-line JSON object built field by field (the bench has no serde).
#[derive(Debug, Default)]
pub struct Json {
    text: String,
}

impl Json {
    fn key(&mut self, key: &str) {
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        push_string(&mut self.text, key);
        self.text.push(':');
    }

    /// An integer or other value whose `Display` is valid JSON.
    pub fn raw(&mut self, key: &str, value: impl Display) -> &mut Self {
        self.key(key);
        let _ = write!(self.text, "{value}");
        self
    }

    /// A float rounded to `decimals`, or `null` when absent or not finite.
    pub fn float(&mut self, key: &str, value: Option<f64>, decimals: usize) -> &mut Self {
        self.key(key);
        match value.filter(|v| v.is_finite()) {
            Some(v) => {
                let _ = write!(self.text, "{v:.decimals$}");
            }
            None => self.text.push_str("null"),
        }
        self
    }

    /// An integer, or `null`.
    pub fn opt(&mut self, key: &str, value: Option<impl Display>) -> &mut Self {
        self.key(key);
        match value {
            Some(v) => {
                let _ = write!(self.text, "{v}");
            }
            None => self.text.push_str("null"),
        }
        self
    }

    /// A string, or `null`.
    pub fn string(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        self.key(key);
        match value {
            Some(v) => push_string(&mut self.text, v),
            None => self.text.push_str("null"),
        }
        self
    }

    /// An object of counts.
    pub fn counts(&mut self, key: &str, counts: &BTreeMap<String, u64>) -> &mut Self {
        self.key(key);
        self.text.push('{');
        for (n, (name, count)) in counts.iter().enumerate() {
            if n > 0 {
                self.text.push(',');
            }
            push_string(&mut self.text, name);
            let _ = write!(self.text, ":{count}");
        }
        self.text.push('}');
        self
    }

    /// The finished object.
    pub fn finish(&mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        std::mem::take(&mut self.text)
    }
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The figures derived from an outcome, shared by the table and the JSON line.
struct Figures {
    connect_errors: u64,
    ended: u64,
    sent: u32,
    accepted: u32,
    publish_errors: u64,
    expected: u64,
    bytes_per_subscriber: Option<f64>,
    latency_us: [Option<f64>; 4],
    /// From the `--rate` schedule's slots: p50, p99, max, in µs.
    schedule_us: [Option<f64>; 3],
    /// Seconds from the first request written to the last.
    publish_s: Option<f64>,
    /// Seconds from the first request written to the last answer read.
    answered_s: Option<f64>,
    deliveries_per_s: Option<f64>,
    cpu_s: Option<f64>,
    user_s: Option<f64>,
    sched_s: Option<f64>,
    /// Time for one publish to reach every held stream, median and worst over events, in µs.
    reach_all_us: [Option<f64>; 2],
    /// Seconds the server waited for a CPU over the fan-out.
    server_wait_s: Option<f64>,
}

impl Figures {
    fn of(o: &Outcome) -> Figures {
        let accepted = o.publish.as_ref().map_or(0, |p| p.accepted_count());
        let bytes_per_subscriber = match (o.server_before, o.server_idle) {
            (Some(before), Some(idle)) if o.held_at_sample > 0 => {
                Some((idle.rss_bytes as f64 - before.rss_bytes as f64) / o.held_at_sample as f64)
            }
            _ => None,
        };
        let quantile = |q: f64| o.latency.quantile(q).map(|ns| ns as f64 / 1e3);
        let fanout = match (o.server_fanout_start, o.server_end) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        Figures {
            connect_errors: o.connect_errors.values().sum(),
            ended: o.ended.values().sum(),
            sent: o.publish.as_ref().map_or(0, |p| p.sent),
            accepted,
            publish_errors: o.publish.as_ref().map_or(0, |p| p.error_count()),
            expected: u64::from(accepted) * o.held as u64,
            bytes_per_subscriber,
            latency_us: [
                quantile(0.5),
                quantile(0.9),
                quantile(0.99),
                (o.latency.len() > 0).then(|| o.latency.max() as f64 / 1e3),
            ],
            schedule_us: [
                o.schedule_latency.quantile(0.5).map(|ns| ns as f64 / 1e3),
                o.schedule_latency.quantile(0.99).map(|ns| ns as f64 / 1e3),
                (o.schedule_latency.len() > 0).then(|| o.schedule_latency.max() as f64 / 1e3),
            ],
            publish_s: o
                .publish
                .as_ref()
                .filter(|p| p.first_sent_ns > 0)
                .map(|p| p.last_sent_ns.saturating_sub(p.first_sent_ns) as f64 / 1e9),
            answered_s: o
                .publish
                .as_ref()
                .filter(|p| p.first_sent_ns > 0 && p.last_answer_ns > 0)
                .map(|p| p.last_answer_ns.saturating_sub(p.first_sent_ns) as f64 / 1e9),
            deliveries_per_s: (o.fanout_secs > 0.0).then(|| o.deliveries as f64 / o.fanout_secs),
            cpu_s: fanout.map(|(a, b)| b.cpu_secs() - a.cpu_secs()),
            user_s: fanout.map(|(a, b)| b.user_secs - a.user_secs),
            sched_s: fanout.and_then(|(a, b)| Some(b.sched_secs? - a.sched_secs?)),
            server_wait_s: fanout.and_then(|(a, b)| Some(b.wait_secs? - a.wait_secs?)),
            reach_all_us: [
                o.reach_all_ns.get(o.reach_all_ns.len() / 2).map(|&ns| ns as f64 / 1e3),
                o.reach_all_ns.last().map(|&ns| ns as f64 / 1e3),
            ],
        }
    }

    /// Seconds per million deliveries.
    fn per_million(&self, secs: Option<f64>, deliveries: u64) -> Option<f64> {
        (deliveries > 0).then_some(secs?).map(|s| s / deliveries as f64 * 1e6)
    }
}

/// The figures of one run that a sweep compares across servers and connection counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    /// Streams open at the end.
    pub held: usize,
    /// Server RSS before any subscriber, in bytes.
    pub rss_before_bytes: Option<f64>,
    /// (RSS with every subscriber idle − RSS before) / subscribers.
    pub bytes_per_subscriber: Option<f64>,
    /// Server CPU (user + system) over the fan-out per delivery, in µs.
    pub cpu_us_per_delivery: Option<f64>,
    /// Delivery latency p50, p90, p99 and max, in ms.
    pub latency_ms: [Option<f64>; 4],
    /// Deliveries per second from the first publish to the last delivery.
    pub deliveries_per_s: Option<f64>,
    /// Events delivered.
    pub deliveries: u64,
    /// Events lost (when the run was not cut short), doubled, reordered or not expected.
    pub faults: u64,
}

/// The [`Metrics`] of a run.
pub fn metrics(o: &Outcome) -> Metrics {
    let f = Figures::of(o);
    let missing = if o.timed_out || o.interrupted { 0 } else { o.missing };
    Metrics {
        held: o.held,
        rss_before_bytes: o.server_before.map(|s| s.rss_bytes as f64),
        bytes_per_subscriber: f.bytes_per_subscriber,
        cpu_us_per_delivery: f.per_million(f.cpu_s, o.deliveries),
        latency_ms: f.latency_us.map(|v| v.map(|us| us / 1e3)),
        deliveries_per_s: f.deliveries_per_s,
        deliveries: o.deliveries,
        faults: missing + o.duplicates + o.out_of_order + o.id_regressions + o.unexpected,
    }
}

/// The URLs as one string: the URL itself when there is one, all of them space-separated otherwise.
fn url_text(urls: &[String]) -> String {
    urls.join(" ")
}

/// The JSON line. With several URLs it also has `held_per_url`, in `--url` order.
pub fn json(urls: &[String], o: &Outcome) -> String {
    let f = Figures::of(o);
    let mut j = Json::default();
    j.string("url", Some(&url_text(urls))).raw("connections", o.connections).raw("held", o.held);
    if urls.len() > 1 {
        let list: Vec<String> = o.held_per_target.iter().map(ToString::to_string).collect();
        j.raw("held_per_url", format!("[{}]", list.join(",")));
    }
    j.raw("held_at_sample", o.held_at_sample)
        .float("ramp_s", Some(o.ramp_secs), 3)
        .raw("connect_errors", f.connect_errors)
        .counts("connect_error_reasons", &o.connect_errors)
        .raw("ended", f.ended)
        .counts("ended_reasons", &o.ended)
        .string("ramp_stopped", o.ramp_stopped.as_deref())
        .opt("fd_limit", o.file_limit.map(|l| l.soft))
        .opt("rss_before_bytes", o.server_before.map(|s| s.rss_bytes))
        .opt("rss_idle_bytes", o.server_idle.map(|s| s.rss_bytes))
        .opt("rss_end_bytes", o.server_end.map(|s| s.rss_bytes))
        .float("bytes_per_subscriber", f.bytes_per_subscriber, 1)
        .raw("published", f.sent)
        .raw("accepted", f.accepted)
        .raw("publish_errors", f.publish_errors)
        .raw("deliveries", o.deliveries)
        .raw("expected_deliveries", f.expected)
        .raw("missing", o.missing)
        .raw("duplicates", o.duplicates)
        .raw("out_of_order", o.out_of_order)
        .raw("id_regressions", o.id_regressions)
        .raw("foreign", o.foreign)
        .raw("unexpected", o.unexpected)
        .float("latency_p50_us", f.latency_us[0], 1)
        .float("latency_p90_us", f.latency_us[1], 1)
        .float("latency_p99_us", f.latency_us[2], 1)
        .float("latency_max_us", f.latency_us[3], 1)
        .float("schedule_p50_us", f.schedule_us[0], 1)
        .float("schedule_p99_us", f.schedule_us[1], 1)
        .float("schedule_max_us", f.schedule_us[2], 1)
        .float("publish_s", f.publish_s, 3)
        .float("publish_answered_s", f.answered_s, 4)
        .float("reach_all_p50_us", f.reach_all_us[0], 1)
        .float("reach_all_max_us", f.reach_all_us[1], 1)
        .raw("events_reaching_some", o.reached_some)
        .float("fanout_s", (o.fanout_secs > 0.0).then_some(o.fanout_secs), 4)
        .float("deliveries_per_s", f.deliveries_per_s, 0)
        .float("server_cpu_s", f.cpu_s, 3)
        .float("server_user_s", f.user_s, 3)
        .float("server_sched_s", f.sched_s, 4)
        .float("server_cpu_s_per_million", f.per_million(f.cpu_s, o.deliveries), 3)
        .float("server_user_s_per_million", f.per_million(f.user_s, o.deliveries), 3)
        .float("server_sched_s_per_million", f.per_million(f.sched_s, o.deliveries), 3)
        .float("server_wait_s", f.server_wait_s, 3)
        .float("bench_cpu_s", o.bench_cpu_secs, 3)
        .float("bench_wait_s", o.bench_wait_secs, 3)
        .raw("timed_out", o.timed_out)
        .raw("interrupted", o.interrupted)
        .float("run_s", Some(o.run_secs), 2);
    j.finish()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10_000.0 => format!("{:.1} ms", v / 1e3),
        Some(v) if v >= 1_000.0 => format!("{:.2} ms", v / 1e3),
        Some(v) => format!("{v:.0} µs"),
        None => "-".into(),
    }
}

fn secs(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$} s"))
}

fn reasons(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return String::new();
    }
    let list: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(" ({})", list.join(", "))
}

/// The table. With several URLs, a line says how many streams each held.
pub fn table(urls: &[String], o: &Outcome) -> String {
    let f = Figures::of(o);
    let mut t = String::new();
    let _ = writeln!(t, "ssed-bench {}", url_text(urls));
    let _ = writeln!(
        t,
        "  connections   {} asked, {} held, ramp {:.2} s; {} failed{}; {} ended{}",
        o.connections,
        o.held,
        o.ramp_secs,
        f.connect_errors,
        reasons(&o.connect_errors),
        f.ended,
        reasons(&o.ended)
    );
    if urls.len() > 1 {
        let each: Vec<String> =
            urls.iter().zip(&o.held_per_target).map(|(url, held)| format!("{held} on {url}")).collect();
        let _ = writeln!(t, "  per URL       {}", each.join(", "));
    }
    if let Some(why) = &o.ramp_stopped {
        let _ = writeln!(t, "  ramp stopped  {why}");
    }
    if let (Some(before), Some(idle)) = (o.server_before, o.server_idle) {
        let _ = writeln!(
            t,
            "  server RSS    {} before, {} with {} idle subscribers: {} bytes per subscriber",
            mib(before.rss_bytes),
            mib(idle.rss_bytes),
            o.held_at_sample,
            f.bytes_per_subscriber.map_or("-".into(), |b| format!("{b:.0}"))
        );
        if let Some(end) = o.server_end {
            let _ = writeln!(t, "                {} at the end", mib(end.rss_bytes));
        }
    }
    if o.publish.is_some() {
        let _ = writeln!(
            t,
            "  publish       {} sent, {} accepted, {} errors{}; last answer {} after the first request",
            f.sent,
            f.accepted,
            f.publish_errors,
            reasons(&o.publish.as_ref().map(|p| p.errors.clone()).unwrap_or_default()),
            secs(f.answered_s, 3)
        );
        let _ = writeln!(
            t,
            "  deliveries    {} of {} expected; missing {}, duplicates {}, out of order {}, id regressions {}, \
             foreign {}, unexpected {}",
            o.deliveries, f.expected, o.missing, o.duplicates, o.out_of_order, o.id_regressions, o.foreign, o.unexpected
        );
        let [p50, p90, p99, max] = f.latency_us;
        let _ =
            writeln!(t, "  latency       p50 {}, p90 {}, p99 {}, max {}", us(p50), us(p90), us(p99), us(max));
        if let [p50, p99, Some(max)] = f.schedule_us {
            let _ = writeln!(
                t,
                "  from schedule p50 {}, p99 {}, max {}: from each event's slot in the --rate schedule, so \
                 it also counts the publisher falling behind while answers were slow (publishing took {})",
                us(p50),
                us(p99),
                us(Some(max)),
                secs(f.publish_s, 2)
            );
        }
        if !o.reach_all_ns.is_empty() {
            let _ = writeln!(
            t,
            "  reach all     {} median, {} worst: one publish to its last held stream ({} events; {} reached only some)",
            us(f.reach_all_us[0]),
            us(f.reach_all_us[1]),
            o.reach_all_ns.len(),
            o.reached_some
        );
        }
        let _ = writeln!(
            t,
            "  throughput    {} deliveries/s (first publish to last delivery: {})",
            f.deliveries_per_s.map_or("-".into(), |d| format!("{d:.0}")),
            secs((o.fanout_secs > 0.0).then_some(o.fanout_secs), 3)
        );
        if f.cpu_s.is_some() {
            let _ = writeln!(
                t,
                "  server CPU    {} (user {}, on-CPU {}) over the fan-out: {} per million deliveries (user {}, on-CPU {})",
                secs(f.cpu_s, 2),
                secs(f.user_s, 2),
                secs(f.sched_s, 3),
                secs(f.per_million(f.cpu_s, o.deliveries), 2),
                secs(f.per_million(f.user_s, o.deliveries), 2),
                secs(f.per_million(f.sched_s, o.deliveries), 3)
            );
        }
    }
    if let Some(bench) = o.bench_cpu_secs.filter(|_| o.deliveries > 0) {
        let per_delivery = (o.deliveries > 0).then(|| bench * 1e6 / o.deliveries as f64);
        let _ = writeln!(
            t,
            "  bench CPU     {bench:.2} s over the fan-out ({} per delivery); if it nears the fan-out's \
             duration, the bench, not the server, set the latencies",
            per_delivery.map_or("-".into(), |v| format!("{v:.2} µs"))
        );
    }
    if f.server_wait_s.is_some() || o.bench_wait_secs.is_some() {
        let _ = writeln!(
            t,
            "  CPU waits     server {}, bench {} runnable but waiting for a CPU over the fan-out: other \
             work on the machine stretched the times above by about that much",
            secs(f.server_wait_s, 3),
            secs(o.bench_wait_secs, 3)
        );
    }
    if o.timed_out {
        let _ = writeln!(
            t,
            "  stopped by --duration after {:.1} s: events still in flight then count as missing",
            o.run_secs
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line() {
        let mut counts = BTreeMap::new();
        counts.insert("a \"b\"\n".to_string(), 2);
        let line = Json::default()
            .raw("n", 1)
            .float("f", Some(1.25), 1)
            .float("nan", Some(f64::NAN), 1)
            .counts("c", &counts)
            .finish();
        assert_eq!(line, r#"{"n":1,"f":1.2,"nan":null,"c":{"a \"b\"\u000a":2}}"#);
        assert_eq!(Json::default().finish(), "{}");
    }
}
