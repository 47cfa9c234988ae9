//! Samples another process's memory and CPU time from `/proc`, summed over it and its descendants
//! (a server started through a wrapper, or one that forks workers, is measured whole).

use std::fs;
use std::io;

use crate::sys;

/// What one look at `/proc` found for a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Processes in the tree.
    pub processes: usize,
    /// Resident memory, from `VmRSS` in `/proc/PID/status`.
    pub rss_bytes: u64,
    /// `utime` from `/proc/PID/stat`, in seconds (clock-tick resolution, usually 10 ms).
    pub user_secs: f64,
    /// `stime`, likewise.
    pub system_secs: f64,
    /// Time on CPU from the threads' `schedstat`, in seconds (nanosecond resolution), when available.
    pub sched_secs: Option<f64>,
    /// Time runnable but waiting for a CPU (the second `schedstat` field), in seconds: when it grows
    /// during a measurement, other work on the machine stretched the wall-clock figures.
    pub wait_secs: Option<f64>,
}

impl Sample {
    /// User plus system time.
    pub fn cpu_secs(&self) -> f64 {
        self.user_secs + self.system_secs
    }
}

/// The fields after the command name in `/proc/PID/stat` (the name may hold spaces and parentheses,
/// so split after the last `)`): index 0 is the state, 1 the parent pid, 11 `utime`, 12 `stime`.
fn stat_fields(pid: u32) -> io::Result<Vec<u64>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = text.rsplit_once(')').map(|(_, rest)| rest).ok_or(io::ErrorKind::InvalidData)?;
    // The state is a letter: keep a placeholder so the indices stay as documented.
    Ok(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// `pid` and every process below it, found through the parent pid of each process in `/proc`.
pub fn process_tree(pid: u32) -> io::Result<Vec<u32>> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Some(child) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Ok(fields) = stat_fields(child) {
            if let Some(&ppid) = fields.get(1) {
                parents.push((child, ppid as u32));
            }
        }
    }
    let mut tree = vec![pid];
    let mut at = 0;
    while at < tree.len() {
        let parent = tree[at];
        tree.extend(parents.iter().filter(|&&(_, p)| p == parent).map(|&(c, _)| c));
        at += 1;
    }
    Ok(tree)
}

/// The first two fields of a `schedstat` file: nanoseconds on a CPU, and waiting on a run queue.
fn schedstat(path: &str) -> Option<(u64, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// Time on CPU and time waiting for one, of every live thread of `pid`, summed from
/// `/proc/PID/task/*/schedstat`, in nanoseconds. Threads that already exited are missing, unlike in
/// `utime`.
fn sched_nanos(pid: u32) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let (on, waiting) = schedstat(path.to_str()?)?;
        total = (total.0 + on, total.1 + waiting);
    }
    Some(total)
}

/// The calling thread's time on CPU and waiting for one, in seconds.
pub fn this_thread_sched() -> Option<(f64, f64)> {
    let (on, waiting) = schedstat("/proc/thread-self/schedstat")?;
    Some((on as f64 / 1e9, waiting as f64 / 1e9))
}

/// Samples the tree under `pid`. Fails if `pid` itself cannot be read (gone, or not ours to see).
pub fn sample(pid: u32) -> io::Result<Sample> {
    let ticks = sys::clock_ticks_per_second() as f64;
    let mut total = Sample { sched_secs: Some(0.0), wait_secs: Some(0.0), ..Sample::default() };
    for (n, member) in process_tree(pid)?.into_iter().enumerate() {
        let read = (|| -> io::Result<()> {
            let fields = stat_fields(member)?;
            let status = fs::read_to_string(format!("/proc/{member}/status"))?;
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0); // a zombie has no VmRSS line
            total.rss_bytes += rss_kib * 1024;
            total.user_secs += *fields.get(11).unwrap_or(&0) as f64 / ticks;
            total.system_secs += *fields.get(12).unwrap_or(&0) as f64 / ticks;
            let sched = sched_nanos(member);
            (total.sched_secs, total.wait_secs) = match (total.sched_secs, total.wait_secs, sched) {
                (Some(on), Some(wait), Some((on_ns, wait_ns))) => {
                    (Some(on + on_ns as f64 / 1e9), Some(wait + wait_ns as f64 / 1e9))
                }
                _ => (None, None),
            };
            total.processes += 1;
            Ok(())
        })();
        match read {
            Ok(()) => {}
            Err(e) if n == 0 => return Err(e),
            Err(_) => {} // a child that exited in between
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.processes >= 1);
        assert!(me.rss_bytes > 0);
        assert!(process_tree(std::process::id()).unwrap().contains(&std::process::id()));
        assert!(this_thread_sched().is_some_and(|(on, _)| on > 0.0));
    }
}
