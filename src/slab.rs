//! A slab of connections addressed by slot plus generation, so a stale token never reaches a reused slot.

/// The address of a value in a [`Slab`]: its slot and the generation the slot had when it was filled.
///
/// It packs into a `mio::Token` (generation in the high half), so a readiness event or timer that
/// outlives its connection is recognised as stale instead of acting on the next occupant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub slot: u32,
    pub generation: u32,
}

impl Key {
    /// Packs the key into a `usize` token value.
    pub fn to_token(self) -> usize {
        ((self.generation as usize) << 32) | self.slot as usize
    }

    /// Unpacks a value made by [`Key::to_token`].
    pub fn from_token(token: usize) -> Key {
        Key { slot: token as u32, generation: (token >> 32) as u32 }
    }
}

enum Entry<T> {
    Occupied(T),
    Vacant { next_free: u32 },
}

struct Slot<T> {
    generation: u32,
    entry: Entry<T>,
}

/// Values in reusable slots with O(1) insert, remove and lookup.
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free_head: u32,
    len: usize,
}

const NO_FREE: u32 = u32::MAX;

impl<T> Slab<T> {
    /// An empty slab.
    pub fn new() -> Self {
        Slab { slots: Vec::new(), free_head: NO_FREE, len: 0 }
    }

    /// Number of occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if self.free_head != NO_FREE {
            let slot_index = self.free_head;
            let slot = &mut self.slots[slot_index as usize];
            let Entry::Vacant { next_free } = slot.entry else {
                unreachable!("free list points at a vacant slot")
            };
            self.free_head = next_free;
            slot.entry = Entry::Occupied(value);
            return Key { slot: slot_index, generation: slot.generation };
        }
        let slot_index = u32::try_from(self.slots.len()).expect("fewer than 2^32 connections");
        self.slots.push(Slot { generation: 0, entry: Entry::Occupied(value) });
        Key { slot: slot_index, generation: 0 }
    }

    /// The value at `key`, if the slot still holds the same generation.
    pub fn get(&self, key: Key) -> Option<&T> {
        match self.slots.get(key.slot as usize) {
            Some(Slot { generation, entry: Entry::Occupied(value) }) if *generation == key.generation => {
                Some(value)
            }
            _ => None,
        }
    }

    /// The value at `key`, mutably, if the slot still holds the same generation.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.slot as usize) {
            Some(Slot { generation, entry: Entry::Occupied(value) }) if *generation == key.generation => {
                Some(value)
            }
            _ => None,
        }
    }

    /// Removes and returns the value at `key`; the slot's generation moves on so old keys go stale.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self.slots.get_mut(key.slot as usize)?;
        if slot.generation != key.generation || !matches!(slot.entry, Entry::Occupied(_)) {
            return None;
        }
        let entry = std::mem::replace(&mut slot.entry, Entry::Vacant { next_free: self.free_head });
        slot.generation = slot.generation.wrapping_add(1);
        self.free_head = key.slot;
        self.len -= 1;
        match entry {
            Entry::Occupied(value) => Some(value),
            Entry::Vacant { .. } => unreachable!("checked occupied above"),
        }
    }

    /// Keys of every occupied slot; used only on shutdown, never per loop turn.
    pub fn keys(&self) -> Vec<Key> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.entry, Entry::Occupied(_)))
            .map(|(i, s)| Key { slot: i as u32, generation: s.generation })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_miss_reused_slots() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b");
        assert_eq!(a.slot, b.slot, "the slot is reused");
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(Key::from_token(b.to_token()), b);
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn keys_lists_the_occupied() {
        let mut slab = Slab::new();
        let a = slab.insert(1);
        let b = slab.insert(2);
        let c = slab.insert(3);
        slab.remove(b);
        assert_eq!(slab.keys(), vec![a, c]);
    }
}
