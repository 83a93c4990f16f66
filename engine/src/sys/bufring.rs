//! A provided-buffer ring: receive buffers a shard lends to the kernel as a pool, so that a
//! multishot receive takes one only when data arrives, and an idle connection holds none.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// The buffer group id of a shard's ring (one group per io_uring).
pub(crate) const GROUP: u16 = 0;

pub(crate) struct BufRing {
    /// `entries` ring slots, page-aligned, shared with the kernel.
    slots: NonNull<BufRingEntry>,
    slots_layout: Layout,
    /// The buffers, `size` bytes each, one contiguous allocation.
    memory: Box<[u8]>,
    entries: u16,
    size: usize,
    /// Our copy of the tail; published to the kernel after each batch of returns.
    tail: u16,
}

// SAFETY: the ring memory is only touched by the shard thread that owns the `BufRing` and by
// the kernel; the raw pointer does not make it shared with other threads.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Allocates `entries` (a power of two, at most 32768) buffers of `size` bytes and registers
    /// them as buffer group [`GROUP`] with `ring`.
    pub(crate) fn new(ring: &io_uring::IoUring, entries: u16, size: usize) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring size",
            ));
        }
        let slots_layout = Layout::array::<BufRingEntry>(usize::from(entries))
            .and_then(|l| l.align_to(4096))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size (entries >= 1) and a valid alignment.
        let raw = unsafe { alloc_zeroed(slots_layout) };
        let slots = NonNull::new(raw.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"))?;
        let mut this = Self {
            slots,
            slots_layout,
            memory: vec![0u8; usize::from(entries) * size].into_boxed_slice(),
            entries,
            size,
            tail: 0,
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        // SAFETY: `slots` points at `entries` zero-initialised, page-aligned ring entries that
        // live until this `BufRing` drops, which the shard only does after the io_uring it is
        // registered with has stopped using it (the ring is dropped first).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                this.slots.as_ptr() as u64,
                entries,
                GROUP,
                0,
            )?;
        }
        Ok(this)
    }

    /// The `len` bytes the kernel received into buffer `bid`.
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.size;
        let len = len.min(self.size);
        self.memory.get(start..start + len).unwrap_or(&[])
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid < self.entries {
            self.push(bid);
            self.publish();
        }
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let index = usize::from(self.tail & mask);
        // SAFETY: `index < entries`, so the entry is inside the allocation; only this thread
        // writes entries, and the kernel reads an entry only once the tail published past it.
        let entry = unsafe { &mut *self.slots.as_ptr().add(index) };
        let start = usize::from(bid) * self.size;
        entry.set_addr(self.memory[start..].as_ptr() as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives inside the first entry of our allocation (the ring's
        // layout puts it in the first entry's reserved field); the kernel reads it, we alone
        // write it, with release ordering so that the entries written before are visible.
        let tail = unsafe { &*BufRingEntry::tail(self.slots.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout, and not freed elsewhere.
        unsafe { dealloc(self.slots.as_ptr().cast(), self.slots_layout) };
    }
}
