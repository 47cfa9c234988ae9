//! Connection deadlines: one min-heap for heartbeats, header and keep-alive timeouts and lifetimes.
//!
//! Each connection has at most one *live* entry: the deadline it stored when scheduling. When a
//! connection's next deadline moves later (a heartbeat postponed by a write) nothing is touched; the
//! old entry fires, the shell sees the connection is not due yet, and schedules the new deadline. When it
//! moves earlier a second entry is pushed and the later one goes stale. So the work is proportional to
//! deadlines that come due, never to the number of connections, and nothing scans them per loop turn.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::slab::Key;

/// `now + wait`, or the latest instant that can be represented when that would overflow.
///
/// Every deadline computed from a setting goes through here: `Instant + Duration` panics on overflow,
/// and a deadline too far away to represent may as well be never. Halving the wait until it fits
/// finds a representable instant in at most ~100 steps (a zero wait always fits), and only on that
/// overflowing path.
pub fn deadline_after(now: Instant, wait: Duration) -> Instant {
    let mut wait = wait;
    loop {
        if let Some(at) = now.checked_add(wait) {
            return at;
        }
        wait /= 2;
    }
}

/// The deadlines of every connection, earliest first.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    /// An empty set of deadlines.
    pub fn new() -> Self {
        Timers::default()
    }

    /// Records that `key` wants to be woken at `at`.
    pub fn schedule(&mut self, key: Key, at: Instant) {
        self.heap.push(Reverse((at, key.to_token())));
    }

    /// How long `Poll` may sleep before the earliest deadline; `None` when there is none.
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// Pops one entry that is due at `now`, with the deadline it was scheduled for.
    ///
    /// The caller decides whether it is still live (the connection exists and still wants `at`).
    #[must_use]
    pub fn poll_expired(&mut self, now: Instant) -> Option<(Key, Instant)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                let Reverse((at, token)) = self.heap.pop().expect("peeked");
                Some((Key::from_token(token), at))
            }
            _ => None,
        }
    }

    /// Number of entries, live and stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops the entries for which `live` says no; the shell calls it when stale entries pile up
    /// (many connections closed before their deadline), which keeps the heap O(live connections).
    pub fn retain(&mut self, mut live: impl FnMut(Key, Instant) -> bool) {
        self.heap.retain(|Reverse((at, token))| live(Key::from_token(*token), *at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32) -> Key {
        Key { slot, generation: 0 }
    }

    #[test]
    fn fires_in_deadline_order_and_only_when_due() {
        let start = Instant::now();
        let mut timers = Timers::new();
        timers.schedule(key(1), start + Duration::from_secs(3));
        timers.schedule(key(2), start + Duration::from_secs(1));
        timers.schedule(key(3), start + Duration::from_secs(2));
        assert_eq!(timers.poll_timeout(start), Some(Duration::from_secs(1)));
        assert_eq!(timers.poll_expired(start), None);
        let later = start + Duration::from_millis(2500);
        assert_eq!(timers.poll_expired(later), Some((key(2), start + Duration::from_secs(1))));
        assert_eq!(timers.poll_expired(later), Some((key(3), start + Duration::from_secs(2))));
        assert_eq!(timers.poll_expired(later), None);
        assert_eq!(timers.poll_timeout(later), Some(Duration::from_millis(500)));
    }

    #[test]
    fn deadlines_saturate_instead_of_overflowing() {
        let now = Instant::now();
        let far = deadline_after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(100 * 365 * 24 * 3600), "{:?}", far - now);
        assert!(deadline_after(far, Duration::MAX) >= far);
        assert_eq!(deadline_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        let mut timers = Timers::new();
        timers.schedule(key(1), far);
        assert_eq!(timers.poll_expired(now), None);
        assert!(timers.poll_timeout(now).unwrap() > Duration::from_secs(100 * 365 * 24 * 3600));
    }

    #[test]
    fn overdue_deadline_means_no_sleep() {
        let start = Instant::now();
        let mut timers = Timers::new();
        timers.schedule(key(1), start);
        assert_eq!(timers.poll_timeout(start + Duration::from_secs(1)), Some(Duration::ZERO));
    }

    #[test]
    fn retain_drops_stale_entries() {
        let start = Instant::now();
        let mut timers = Timers::new();
        for slot in 0..10 {
            timers.schedule(key(slot), start + Duration::from_secs(u64::from(slot)));
        }
        timers.retain(|k, _| k.slot % 2 == 0);
        assert_eq!(timers.len(), 5);
        let mut fired = Vec::new();
        while let Some((k, _)) = timers.poll_expired(start + Duration::from_secs(100)) {
            fired.push(k.slot);
        }
        assert_eq!(fired, vec![0, 2, 4, 6, 8]);
    }
}
