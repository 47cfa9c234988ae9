//! Who listens to what: per-topic lists of subscriber keys, so a publish wakes only its topics' streams.
//!
//! Each list is a dense `Vec` for fast iteration; a subscriber remembers its position in every list it
//! is on, and removal swaps the last entry into the hole (the caller fixes that entry's position).

use crate::broadcast::TopicId;
use crate::slab::Key;

/// A subscriber list: one topic's, or the list of every-topic streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum List {
    /// Streams that take every event.
    All,
    /// Streams of one topic.
    Topic(TopicId),
}

/// The subscriber lists, indexed by topic.
#[derive(Default)]
pub struct Registry {
    topics: Vec<Vec<Key>>,
    all: Vec<Key>,
}

impl Registry {
    /// No subscribers.
    pub fn new() -> Self {
        Registry::default()
    }

    fn list_mut(&mut self, list: List) -> &mut Vec<Key> {
        match list {
            List::All => &mut self.all,
            List::Topic(t) => {
                if self.topics.len() <= t.index() {
                    self.topics.resize_with(t.index() + 1, Vec::new);
                }
                &mut self.topics[t.index()]
            }
        }
    }

    /// The subscribers on `list`.
    pub fn subscribers(&self, list: List) -> &[Key] {
        match list {
            List::All => &self.all,
            List::Topic(t) => self.topics.get(t.index()).map_or(&[], Vec::as_slice),
        }
    }

    /// Adds `key` to `list` and returns its position there.
    pub fn add(&mut self, list: List, key: Key) -> u32 {
        let entries = self.list_mut(list);
        entries.push(key);
        u32::try_from(entries.len() - 1).expect("fewer than 2^32 subscribers")
    }

    /// Removes the entry at `position`; returns the key that moved into it, whose owner must record
    /// its new position.
    #[must_use]
    pub fn remove(&mut self, list: List, position: u32) -> Option<Key> {
        let entries = self.list_mut(list);
        let position = position as usize;
        entries.swap_remove(position);
        let moved = entries.get(position).copied();
        if entries.is_empty() {
            // Give back the memory of a topic nobody listens to any more, and the table's tail
            // once a burst of subscriptions to many topics is over (topic ids are reused lowest
            // first, so the live ones stay at the front).
            *entries = Vec::new();
            if let List::Topic(_) = list {
                while self.topics.last().is_some_and(Vec::is_empty) {
                    self.topics.pop();
                }
                if self.topics.capacity() > 4 * self.topics.len().max(16) {
                    self.topics.shrink_to(2 * self.topics.len());
                }
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32) -> Key {
        Key { slot, generation: 0 }
    }

    #[test]
    fn removal_reports_the_moved_entry() {
        let mut registry = Registry::new();
        let list = List::All;
        let positions: Vec<u32> = (0..3).map(|i| registry.add(list, key(i))).collect();
        assert_eq!(positions, vec![0, 1, 2]);
        assert_eq!(registry.remove(list, 0), Some(key(2)), "the last entry fills the hole");
        assert_eq!(registry.subscribers(list), &[key(2), key(1)]);
        assert_eq!(registry.remove(list, 1), None, "removing the last moves nothing");
        assert_eq!(registry.subscribers(list), &[key(2)]);
    }

    #[test]
    fn the_topic_table_shrinks_when_its_last_lists_empty() {
        let mut registry = Registry::new();
        let positions: Vec<u32> =
            (0..1000).map(|t| registry.add(List::Topic(TopicId::from_index(t)), key(t))).collect();
        assert_eq!(registry.topics.len(), 1000);
        for (t, &position) in positions.iter().enumerate().skip(1).rev() {
            let _ = registry.remove(List::Topic(TopicId::from_index(t as u32)), position);
        }
        assert_eq!(registry.topics.len(), 1, "topic 0 still has its subscriber");
        assert!(registry.topics.capacity() <= 64);
        assert_eq!(registry.subscribers(List::Topic(TopicId::from_index(0))), &[key(0)]);
    }
}
