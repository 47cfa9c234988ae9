//! What a sweep shows while it runs: which server, which point, connections held so far, time left.
//! A progress bar (indicatif) when stderr is a terminal, plain lines every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::load::Live;

/// How often the display is refreshed.
const TICK: Duration = Duration::from_millis(200);
/// How often a plain line is printed during a run when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);
/// Positions per expected second, so the bar moves smoothly.
const SCALE: f64 = 10.0;

/// The run under way.
struct Current {
    label: String,
    /// Connections a load run holds at most (none for a floor run, which reports no progress).
    connections: Option<usize>,
    expected_secs: f64,
    started: Instant,
}

struct State {
    current: Option<Current>,
    /// Expected seconds of the runs finished.
    done_secs: f64,
    total_secs: f64,
    started: Instant,
}

impl State {
    /// Expected seconds behind us, counting the current run up to its expected length.
    fn position(&self) -> f64 {
        let current =
            self.current.as_ref().map_or(0.0, |c| c.started.elapsed().as_secs_f64().min(c.expected_secs));
        self.done_secs + current
    }

    /// Seconds left: the expected seconds ahead, scaled by how the sweep has kept to its estimates.
    fn left_secs(&self) -> f64 {
        let position = self.position();
        let ahead = (self.total_secs - position).max(0.0);
        let elapsed = self.started.elapsed().as_secs_f64();
        let pace = if position > 5.0 { (elapsed / position).clamp(0.25, 4.0) } else { 1.0 };
        ahead * pace
    }
}

fn duration_text(secs: f64) -> String {
    let secs = secs.round() as u64;
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn status(state: &State, live: &Live) -> String {
    let left = duration_text(state.left_secs());
    match &state.current {
        Some(Current { label, connections: None, .. }) => format!("{label}; about {left} left"),
        Some(c) => format!(
            "{}: {}/{} held, {} deliveries; about {left} left",
            c.label,
            live.held.load(Ordering::Relaxed),
            c.connections.unwrap_or(0),
            live.deliveries.load(Ordering::Relaxed),
        ),
        None => format!("about {left} left"),
    }
}

/// The display; its ticker thread runs until [`ProgressDisplay::finish`].
pub struct ProgressDisplay {
    enabled: bool,
    bar: Option<ProgressBar>,
    state: Arc<Mutex<State>>,
    done: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl ProgressDisplay {
    /// Starts showing progress (nothing at all unless `enabled`) for runs expected to take
    /// `total_secs`, reading connections and deliveries from `live`.
    pub fn start(enabled: bool, total_secs: f64, live: Arc<Live>) -> ProgressDisplay {
        let now = Instant::now();
        let state = Arc::new(Mutex::new(State { current: None, done_secs: 0.0, total_secs, started: now }));
        let done = Arc::new(AtomicBool::new(false));
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new((total_secs * SCALE).ceil() as u64);
            let style = ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:20.cyan/blue} {percent:>3}% {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let ticker = enabled.then(|| {
            let (state, done, bar) = (Arc::clone(&state), Arc::clone(&done), bar.clone());
            std::thread::spawn(move || {
                let mut next_line = Instant::now() + LINE_EVERY;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    let Ok(state) = state.lock() else { return };
                    match &bar {
                        Some(bar) => {
                            bar.set_position((state.position() * SCALE) as u64);
                            bar.set_message(status(&state, &live));
                        }
                        None if Instant::now() >= next_line && state.current.is_some() => {
                            next_line = Instant::now() + LINE_EVERY;
                            eprintln!(
                                "[{}] {}",
                                duration_text(state.started.elapsed().as_secs_f64()),
                                status(&state, &live)
                            );
                        }
                        None => {}
                    }
                }
            })
        });
        ProgressDisplay { enabled, bar, state, done, ticker }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// A run begins; `connections` for a load run, whose held streams are shown.
    pub fn begin(&self, label: String, connections: Option<usize>, expected_secs: f64) {
        let Ok(mut state) = self.state.lock() else { return };
        if self.enabled && self.bar.is_none() {
            eprintln!("[{}] {label}: starting", duration_text(state.started.elapsed().as_secs_f64()));
        }
        state.current = Some(Current { label, connections, expected_secs, started: Instant::now() });
    }

    /// The current run ended; `line` says how.
    pub fn end(&self, line: &str) {
        let Ok(mut state) = self.state.lock() else { return };
        if let Some(current) = state.current.take() {
            state.done_secs += current.expected_secs;
        }
        if self.enabled {
            let at = duration_text(state.started.elapsed().as_secs_f64());
            drop(state);
            self.print(&format!("[{at}] {line}"));
        }
    }

    /// Stops the display.
    pub fn finish(mut self, interrupted: bool) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        if let Some(bar) = &self.bar {
            if interrupted {
                bar.abandon_with_message("interrupted: writing the report with what was measured");
            } else {
                bar.finish_with_message("done");
            }
        } else if self.enabled && interrupted {
            eprintln!("interrupted: writing the report with what was measured");
        }
    }
}
