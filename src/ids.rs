//! Where event ids come from, apart from the log that stores the events.
//!
//! The log ([`crate::broadcast::Broadcast`]) takes each event with an id assigned by its caller and
//! only checks that it is strictly above the newest one it holds
//! ([`crate::broadcast::Broadcast::check_id`]); it neither makes ids up nor reads the clock. The
//! server's source is [`ClockIds`]. Another source (a counter shared between servers, say) plugs in
//! at the same place: an id it hands out that is not above the log's newest is refused with an error
//! and nothing is stored.
//!
//! An id says where an event stands in the order of publishes, not when it was stored: the log keeps
//! the time of storage separately, and `--history-age` follows that time.

/// Ids that follow the wall clock in microseconds: `max(previous + 1, now)`.
///
/// A restarted server gives out ids above every id of its earlier runs without storing anything
/// (given a clock that did not go back), and they stay below 2^53 (until the year 2255), so
/// JavaScript reads them exactly. The previous id is the log's newest (or its floor, before the first
/// event), so the source keeps no state of its own.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClockIds;

impl ClockIds {
    /// The id of an event published at wall-clock time `now_micros`, after `newest` (the newest id
    /// of the log, [`crate::broadcast::Broadcast::newest_id`]).
    pub fn next(self, newest: u64, now_micros: u64) -> u64 {
        newest.saturating_add(1).max(now_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_clock_and_never_repeats() {
        assert_eq!(ClockIds.next(999, 0), 1_000, "a clock behind gives the next id");
        assert_eq!(ClockIds.next(999, 5_000), 5_000, "ids jump ahead with the clock");
        assert_eq!(ClockIds.next(5_000, 5_000), 5_001);
    }
}
