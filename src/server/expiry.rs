//! `--history-age`: events leave memory, and with it disk, once they are older than the age, on a
//! quiet server too.
//!
//! The log records when each event was stored (wall-clock microseconds, apart from its id), in
//! order, so the oldest event's time tells when the next one expires: the loop sleeps no longer than
//! that, evicts at the turn it wakes for, and the store's retention in the same turn deletes the
//! segments (the active one included) that no longer hold a retained event.

use super::*;

impl Loop {
    /// Evicts every event older than `--history-age` from memory; called at the end of each turn,
    /// before the store's retention.
    pub(super) fn expire_history(&mut self) {
        if self.config.history_age.is_zero() {
            return;
        }
        let cutoff = wall_micros().saturating_sub(self.config.history_age.as_micros() as u64);
        self.log.evict_below(cutoff);
    }

    /// How long the loop may sleep before the oldest retained event expires (`None`: no age set, or
    /// nothing retained).
    ///
    /// At least a millisecond, so a wall clock a little behind the monotonic one cannot make the
    /// loop spin; at most the age itself, so a wall clock that jumped back delays expiry by no more
    /// than one age.
    pub(super) fn expiry_timeout(&self) -> Option<Duration> {
        let age = self.config.history_age;
        if age.is_zero() {
            return None;
        }
        let oldest = self.log.oldest_stored_at()?;
        let expires_at = oldest.saturating_add(age.as_micros() as u64).saturating_add(1);
        let wait = Duration::from_micros(expires_at.saturating_sub(wall_micros()));
        Some(wait.min(age).max(Duration::from_millis(1)))
    }
}
