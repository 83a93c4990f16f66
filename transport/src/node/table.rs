//! The connection table: a generational slab. A [`ConnId`] is a slot and the generation the
//! slot had when the connection took it; a slot's generation moves on when its connection
//! leaves, so a stale id (an event taken after the close, a route bound to a replaced
//! connection) is refused by a comparison, not by a failed lookup, and a lookup is an index.
//!
//! A driver keeps its own per-connection data (socket, operations in flight, send buffer) in a
//! [`Slots`] indexed by the same ids ([`Slots::insert_at`]): one slot number, two owners, no
//! hashing.

use super::ConnId;

impl ConnId {
    /// Built from a slot and its generation.
    pub const fn new(slot: u32, generation: u32) -> Self {
        ConnId(((generation as u64) << 32) | slot as u64)
    }

    /// The slot in the connection table.
    pub const fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    /// The slot's generation when this connection took it.
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Values by [`ConnId`], in a vector indexed by slot, each checked against its generation.
#[derive(Debug)]
pub struct Slots<T> {
    entries: Vec<Entry<T>>,
    /// Free slots, most recently freed last (not kept in a table that follows another's ids:
    /// that one takes the slots it is given).
    free: Vec<u32>,
    follower: bool,
    len: usize,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slots<T> {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            follower: false,
            len: 0,
        }
    }

    /// Takes a free slot (or a new one) for `value`; returns its id.
    pub fn insert(&mut self, value: T) -> ConnId {
        debug_assert!(
            !self.follower,
            "a table that follows another's ids takes no slot"
        );
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            let entry = &mut self.entries[slot as usize];
            entry.value = Some(value);
            return ConnId::new(slot, entry.generation);
        }
        let slot = self.entries.len() as u32;
        self.entries.push(Entry {
            generation: 0,
            value: Some(value),
        });
        ConnId::new(slot, 0)
    }

    /// Puts `value` in `id`'s slot (a driver's table that follows the ids of another). What the
    /// slot held, of this or an older generation, is replaced and returned.
    pub fn insert_at(&mut self, id: ConnId, value: T) -> Option<T> {
        self.follower = true;
        let slot = id.slot();
        if slot >= self.entries.len() {
            self.entries.resize_with(slot + 1, || Entry {
                generation: 0,
                value: None,
            });
        }
        let entry = &mut self.entries[slot];
        entry.generation = id.generation();
        let old = entry.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value of a live id; `None` for a stale or unknown one.
    pub fn get(&self, id: ConnId) -> Option<&T> {
        self.entries
            .get(id.slot())
            .filter(|e| e.generation == id.generation())?
            .value
            .as_ref()
    }

    /// [`Slots::get`], mutably.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        self.entries
            .get_mut(id.slot())
            .filter(|e| e.generation == id.generation())?
            .value
            .as_mut()
    }

    /// Takes a live id's value out; its slot's generation moves on (the id is stale from now
    /// on) and the slot is free for the next [`Slots::insert`].
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let entry = self
            .entries
            .get_mut(id.slot())
            .filter(|e| e.generation == id.generation())?;
        let value = entry.value.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        if !self.follower {
            self.free.push(id.slot() as u32);
        }
        self.len -= 1;
        Some(value)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live ids and values, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> + '_ {
        self.entries.iter().enumerate().filter_map(|(slot, e)| {
            let id = ConnId::new(slot as u32, e.generation);
            e.value.as_ref().map(|v| (id, v))
        })
    }

    /// Live ids and values, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnId, &mut T)> + '_ {
        self.entries.iter_mut().enumerate().filter_map(|(slot, e)| {
            let id = ConnId::new(slot as u32, e.generation);
            e.value.as_mut().map(|v| (id, v))
        })
    }

    /// Live ids.
    pub fn keys(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.iter().map(|(id, _)| id)
    }

    /// Live values.
    pub fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Live values, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.iter_mut().map(|(_, v)| v)
    }

    /// Drops every value.
    pub fn clear(&mut self) {
        for (slot, e) in self.entries.iter_mut().enumerate() {
            if e.value.take().is_some() {
                e.generation = e.generation.wrapping_add(1);
                if !self.follower {
                    self.free.push(slot as u32);
                }
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_id_is_refused_by_its_generation() {
        let mut t = Slots::new();
        let a = t.insert("a");
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b");
        assert_eq!(a.slot(), b.slot(), "the freed slot is taken again");
        assert_ne!(a, b);
        assert_eq!(
            t.get(a),
            None,
            "the old id does not reach the new connection"
        );
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_driver_table_follows_the_core_ids() {
        let mut core = Slots::new();
        let mut driver = Slots::new();
        let a = core.insert(1);
        driver.insert_at(a, "socket a");
        core.remove(a);
        let b = core.insert(2);
        assert_eq!(driver.insert_at(b, "socket b"), Some("socket a"));
        assert_eq!(driver.get(a), None);
        assert_eq!(driver.get(b), Some(&"socket b"));
        assert_eq!(driver.len(), 1);
        assert_eq!(driver.remove(b), Some("socket b"));
        assert!(driver.is_empty());
    }
}
