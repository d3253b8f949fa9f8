//! The command queue's split ring, read and written in place.
//!
//! UML busy-waits for the answer to every read it forwards, so the worker's path from
//! a posted command to its published answer is part of every served read. virtio-queue
//! resolves each ring access (the avail index, the head, every descriptor, the used
//! element and index) through a lookup in the guest's memory regions; here the three
//! ring areas are resolved once per batch into slices of UML's memory and read and
//! written by offset. The rules are virtio-queue's (and the virtio spec's, 2.7): an
//! avail index more than a queue ahead of what was taken, a descriptor index beyond
//! the queue and a chain longer than the queue (a loop) are refused; indirect
//! descriptors are refused too, since the feature is not offered.
//!
//! A layout in which the three areas overlap, or one leaves UML's memory, is refused
//! for both queues ([`check_layout`]): neither the virtio spec's rules as virtio-queue
//! and vhost-user-backend apply them nor vm-memory refuse it, and a used ring over the
//! avail index lets each used entry published post one more command.
//!
//! The interrupt queue, which is not on a read's path, stays on virtio-queue.
//!
//! # What it saves
//!
//! Measured 2026-12-07 with callgrind on the host: 10,000 register reads (MMIO_READ
//! of 4 bytes, the e1000e test device's STATUS), one per round as a polling worker
//! finds them, served by `CommandQueue::serve` and by the same gather, parse and
//! execute behind virtio-queue's `pop_descriptor_chain`/`add_used` (test
//! `one_read_per_round_through_each_ring` in [`commands`](super::commands); release
//! build without LTO, `CARGO_PROFILE_RELEASE_LTO=off
//! CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo test --release -p vpci --lib
//! --no-run`, then `valgrind --tool=callgrind --toggle-collect='*CommandQueue*serve*'`
//! resp. `'*serve_with_virtio_queue*'` on the test binary with `--ignored --exact`):
//!
//! | per read                         | this ring | virtio-queue |
//! |----------------------------------|----------:|-------------:|
//! | instructions, whole round        |     2,433 |        3,575 |
//! | of which the device access etc. (`execute`) | 816 |      816 |
//! | of which resolving the ring areas (`Ring::new`) | 446 |    — |
//!
//! So 1,142 instructions (32%) fewer per read, and 1,588 (44%) fewer for a polling
//! window, which resolves the areas once and lends the ring to every round it serves.
//! virtio-queue spends them on a region lookup per access (avail index, head, each
//! descriptor through `DescriptorChain`, used element and index) and `read_slice`'s
//! general walk. For scale: a polled served read took 5.37 µs in the rig (TCG, fat LTO;
//! commit 295fc46), and the answer's write alone went from 200 to 166 instructions
//! when it moved to one slice of UML's memory (ad8ca7d). No A/B of the two rings was
//! run in the rig.

use std::sync::atomic::Ordering;

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// `VRING_DESC_F_NEXT`, `VRING_DESC_F_INDIRECT`.
const F_NEXT: u16 = 1;
const F_INDIRECT: u16 = 4;
const DESCRIPTOR_SIZE: usize = 16;
/// Flags and index before the ring entries, in both the avail and the used ring.
const RING_HEADER: usize = 4;
const AVAIL_ENTRY: usize = 2;
const USED_ENTRY: usize = 8;

/// Why the ring, or one chain on it, cannot be served.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RingError {
    /// A ring area not inside the memory UML registered.
    #[error("the ring areas (descriptors {desc:#x}, avail {avail:#x}, used {used:#x}, {size} entries) are not inside UML's memory")]
    Outside {
        /// UML address of the descriptor table.
        desc: u64,
        /// UML address of the avail ring.
        avail: u64,
        /// UML address of the used ring.
        used: u64,
        /// Queue size in entries.
        size: u16,
    },
    /// Two ring areas that overlap each other.
    #[error("the {first} at {first_at:#x} (+{first_len:#x}) overlaps the {second} at {second_at:#x} (+{second_len:#x})")]
    Overlap {
        /// Name of the first area ("descriptor table", "avail ring", "used ring").
        first: &'static str,
        /// Its UML address.
        first_at: u64,
        /// Its length in bytes.
        first_len: usize,
        /// Name of the second area.
        second: &'static str,
        /// Its UML address.
        second_at: u64,
        /// Its length in bytes.
        second_len: usize,
    },
    /// The driver's avail index claims more new chains than the queue holds.
    #[error("the avail index {avail} is more than the {size}-entry queue ahead of the {taken} commands taken")]
    AvailAhead {
        /// The avail ring's index as UML wrote it.
        avail: u16,
        /// Chains taken so far (free-running, wraps at 2^16).
        taken: u16,
        /// Queue size in entries.
        size: u16,
    },
    /// A descriptor index (a head or a next) past the table.
    #[error("descriptor index {index} is beyond the {size}-entry queue")]
    Index {
        /// The index found.
        index: u16,
        /// Queue size in entries.
        size: u16,
    },
    /// A chain with more descriptors than the queue has, so it loops.
    #[error("the chain at {head} is longer than the queue (a loop)")]
    Loop {
        /// The chain's head descriptor index.
        head: u16,
    },
    /// A descriptor with the INDIRECT flag, which was not negotiated.
    #[error("indirect descriptor at {index} (the feature was not offered)")]
    Indirect {
        /// The descriptor's index.
        index: u16,
    },
}

/// The three ring areas of a split virtqueue in UML's memory.
pub(super) struct Ring<'m> {
    desc: VolatileSlice<'m>,
    avail: VolatileSlice<'m>,
    used: VolatileSlice<'m>,
    size: u16,
    /// Where the areas are in UML's memory: descriptors, avail, used.
    addresses: [u64; 3],
}

/// The areas of a split queue: where UML put them and the bytes each has for a queue
/// of its size (no event index fields: the feature is not offered).
struct Layout {
    /// Descriptor table, avail ring, used ring.
    areas: [(u64, usize); 3],
    size: u16,
}

const AREA_NAMES: [&str; 3] = ["descriptor table", "avail ring", "used ring"];

impl Layout {
    fn of(queue: &Queue) -> Self {
        let n = usize::from(queue.size());
        Self {
            areas: [
                (queue.desc_table(), n * DESCRIPTOR_SIZE),
                (queue.avail_ring(), RING_HEADER + n * AVAIL_ENTRY),
                (queue.used_ring(), RING_HEADER + n * USED_ENTRY),
            ],
            size: queue.size(),
        }
    }

    /// Each area as a slice of `mem`, once the areas were found apart from each other.
    fn slices<'m>(&self, mem: &'m GuestMemoryMmap) -> Result<[VolatileSlice<'m>; 3], RingError> {
        let outside = || RingError::Outside {
            desc: self.areas[0].0,
            avail: self.areas[1].0,
            used: self.areas[2].0,
            size: self.size,
        };
        if self.size == 0 {
            return Err(outside());
        }
        let area = |(addr, len): (u64, usize)| {
            mem.get_slice(GuestAddress(addr), len)
                .map_err(|_| outside())
        };
        let slices = [
            area(self.areas[0])?,
            area(self.areas[1])?,
            area(self.areas[2])?,
        ];
        // Inside the memory, so no end overflows.
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            let ((a, a_len), (b, b_len)) = (self.areas[i], self.areas[j]);
            if a < b + b_len as u64 && b < a + a_len as u64 {
                return Err(RingError::Overlap {
                    first: AREA_NAMES[i],
                    first_at: a,
                    first_len: a_len,
                    second: AREA_NAMES[j],
                    second_at: b,
                    second_len: b_len,
                });
            }
        }
        Ok(slices)
    }
}

/// Whether `queue`'s areas lie in `mem` and apart from each other, as a queue served
/// from `mem` needs.
pub(super) fn check_layout(queue: &Queue, mem: &GuestMemoryMmap) -> Result<(), RingError> {
    Layout::of(queue).slices(mem).map(drop)
}

impl<'m> Ring<'m> {
    /// The rings of `queue` (which must be ready) in `mem`; refused unless the three
    /// areas lie in `mem` apart from each other.
    pub(super) fn new(queue: &Queue, mem: &'m GuestMemoryMmap) -> Result<Self, RingError> {
        let layout = Layout::of(queue);
        let [desc, avail, used] = layout.slices(mem)?;
        Ok(Self {
            desc,
            avail,
            used,
            size: layout.size,
            addresses: [queue.desc_table(), queue.avail_ring(), queue.used_ring()],
        })
    }

    /// Whether this is still `queue`'s ring (UML may set a queue up anew).
    pub(super) fn is_of(&self, queue: &Queue) -> bool {
        self.size == queue.size()
            && self.addresses == [queue.desc_table(), queue.avail_ring(), queue.used_ring()]
    }

    /// The avail index UML published: every entry before it is readable.
    pub(super) fn avail_idx(&self) -> u16 {
        // In bounds: `new` took at least RING_HEADER bytes.
        self.avail
            .load::<u16>(2, Ordering::Acquire)
            .map_or(0, u16::from_le)
    }

    /// How many commands wait after the `taken` first, checked against the queue size.
    pub(super) fn waiting(&self, taken: u16) -> Result<u16, RingError> {
        let avail = self.avail_idx();
        let waiting = avail.wrapping_sub(taken);
        if waiting > self.size {
            return Err(RingError::AvailAhead {
                avail,
                taken,
                size: self.size,
            });
        }
        Ok(waiting)
    }

    /// The head descriptor index of avail entry `taken` (a free-running index).
    pub(super) fn head(&self, taken: u16) -> u16 {
        let at = RING_HEADER + usize::from(taken % self.size) * AVAIL_ENTRY;
        self.avail
            .load::<u16>(at, Ordering::Relaxed)
            .map_or(u16::MAX, u16::from_le)
    }

    /// The descriptors of the chain starting at `head`, in order.
    pub(super) fn chain(&self, head: u16) -> Chain<'_, 'm> {
        Chain {
            ring: self,
            head,
            next: Some(head),
            left: self.size,
        }
    }

    /// Publish chain `head` as used entry `used` (a free-running index) with `len`
    /// bytes written; UML sees it once the used index passes it. A head beyond the
    /// queue is not published: UML would take the ring for broken.
    pub(super) fn put_used(&self, used: u16, head: u16, len: u32) -> Result<(), RingError> {
        if head >= self.size {
            return Err(RingError::Index {
                index: head,
                size: self.size,
            });
        }
        let at = RING_HEADER + usize::from(used % self.size) * USED_ENTRY;
        // In bounds: `new` took a whole used ring. The element before the index.
        let _ = self
            .used
            .store(u32::from(head).to_le(), at, Ordering::Relaxed);
        let _ = self.used.store(len.to_le(), at + 4, Ordering::Relaxed);
        let _ = self
            .used
            .store(used.wrapping_add(1).to_le(), 2, Ordering::Release);
        Ok(())
    }

    fn descriptor(&self, index: u16) -> Result<Descriptor, RingError> {
        if index >= self.size {
            return Err(RingError::Index {
                index,
                size: self.size,
            });
        }
        let at = usize::from(index) * DESCRIPTOR_SIZE;
        // Two loads where the table is 8-byte aligned (the spec asks 16), else a copy.
        let words = (
            self.desc.load::<u64>(at, Ordering::Relaxed),
            self.desc.load::<u64>(at + 8, Ordering::Relaxed),
        );
        match words {
            (Ok(addr), Ok(rest)) => {
                let rest = u64::from_le(rest);
                Ok(Descriptor::new(
                    u64::from_le(addr),
                    rest as u32,
                    (rest >> 32) as u16,
                    (rest >> 48) as u16,
                ))
            }
            _ => self
                .desc
                .read_obj::<Descriptor>(at)
                .map_err(|_| RingError::Index {
                    index,
                    size: self.size,
                }),
        }
    }
}

/// The descriptors of one chain; ends after the first error.
pub(super) struct Chain<'r, 'm> {
    ring: &'r Ring<'m>,
    head: u16,
    next: Option<u16>,
    /// Descriptors a chain may still have: no more than the queue holds.
    left: u16,
}

impl Iterator for Chain<'_, '_> {
    type Item = Result<Descriptor, RingError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next.take()?;
        if self.left == 0 {
            return Some(Err(RingError::Loop { head: self.head }));
        }
        self.left -= 1;
        let desc = match self.ring.descriptor(index) {
            Ok(desc) => desc,
            Err(e) => return Some(Err(e)),
        };
        if desc.flags() & F_INDIRECT != 0 {
            return Some(Err(RingError::Indirect { index }));
        }
        if desc.flags() & F_NEXT != 0 {
            self.next = Some(desc.next());
        }
        Some(Ok(desc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u16 = 8;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn queue(desc: u64) -> Queue {
        let mut queue = Queue::new(SIZE).unwrap();
        queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        queue
    }

    fn descriptor(mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + u64::from(index) * 16);
        mem.write_obj(Descriptor::new(addr, len, flags, next), at)
            .unwrap();
    }

    /// Post `head` as avail entry `slot` and publish `slot + 1` entries.
    fn post(mem: &GuestMemoryMmap, slot: u16, head: u16) {
        let at = AVAIL + 4 + u64::from(slot % SIZE) * 2;
        mem.write_obj(head, GuestAddress(at)).unwrap();
        mem.write_obj(slot.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    fn chain(ring: &Ring<'_>, head: u16) -> Vec<Result<(u64, u32), RingError>> {
        ring.chain(head)
            .map(|d| d.map(|d| (d.addr().0, d.len())))
            .collect()
    }

    #[test]
    fn a_posted_chain_is_read_in_order_and_its_answer_published_after_the_element() {
        let mem = memory();
        let ring = Ring::new(&queue(DESC), &mem).unwrap();
        assert_eq!(ring.waiting(0), Ok(0));
        descriptor(&mem, 3, 0x8000, 16, F_NEXT, 5);
        descriptor(&mem, 5, 0x9000, 4, 2, 0);
        post(&mem, 0, 3);
        assert_eq!(ring.waiting(0), Ok(1));
        assert_eq!(ring.head(0), 3);
        assert_eq!(chain(&ring, 3), vec![Ok((0x8000, 16)), Ok((0x9000, 4))]);

        ring.put_used(0, 3, 4).unwrap();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let element: [u32; 2] = mem.read_obj(GuestAddress(USED + 4)).unwrap();
        assert_eq!((used_idx, element), (1, [3, 4]));
        // Free-running indices wrap onto the ring.
        ring.put_used(SIZE + 1, 5, 0).unwrap();
        let element: [u32; 2] = mem.read_obj(GuestAddress(USED + 4 + 8)).unwrap();
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!((used_idx, element), (SIZE + 2, [5, 0]));
    }

    #[test]
    fn a_chain_that_loops_ends_after_a_queue_of_descriptors() {
        let mem = memory();
        let ring = Ring::new(&queue(DESC), &mem).unwrap();
        descriptor(&mem, 0, 0x8000, 16, F_NEXT, 1);
        descriptor(&mem, 1, 0x8000, 16, F_NEXT, 0);
        let read = chain(&ring, 0);
        assert_eq!(read.len(), usize::from(SIZE) + 1);
        assert_eq!(read.last(), Some(&Err(RingError::Loop { head: 0 })));
    }

    #[test]
    fn indices_beyond_the_queue_and_indirect_descriptors_are_refused() {
        let mem = memory();
        let ring = Ring::new(&queue(DESC), &mem).unwrap();
        descriptor(&mem, 0, 0x8000, 16, F_NEXT, SIZE);
        assert_eq!(
            chain(&ring, 0),
            vec![
                Ok((0x8000, 16)),
                Err(RingError::Index {
                    index: SIZE,
                    size: SIZE
                })
            ]
        );
        assert_eq!(
            chain(&ring, u16::MAX),
            vec![Err(RingError::Index {
                index: u16::MAX,
                size: SIZE
            })]
        );
        descriptor(&mem, 2, 0x8000, 32, F_INDIRECT, 0);
        assert_eq!(chain(&ring, 2), vec![Err(RingError::Indirect { index: 2 })]);
        // And nothing is published for a head beyond the queue.
        assert!(ring.put_used(0, SIZE, 0).is_err());
        let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, 0);
    }

    #[test]
    fn an_avail_index_more_than_a_queue_ahead_is_refused() {
        let mem = memory();
        let ring = Ring::new(&queue(DESC), &mem).unwrap();
        post(&mem, SIZE - 1, 0);
        assert_eq!(ring.waiting(0), Ok(SIZE));
        post(&mem, SIZE, 0);
        assert_eq!(
            ring.waiting(0),
            Err(RingError::AvailAhead {
                avail: SIZE + 1,
                taken: 0,
                size: SIZE
            })
        );
        assert_eq!(ring.waiting(1), Ok(SIZE));
    }

    #[test]
    fn rings_outside_the_memory_are_refused() {
        let mem = memory();
        // The descriptor table would run past the end of the memory.
        let desc = 0x10000 - 16;
        assert!(matches!(
            Ring::new(&queue(desc), &mem),
            Err(RingError::Outside { desc: d, .. }) if d == desc
        ));
    }

    #[test]
    fn overlapping_ring_areas_are_refused_and_adjacent_ones_taken() {
        let mem = memory();
        // The used ring over the avail ring: each used entry would move the avail index.
        let mut over = queue(DESC);
        over.set_used_ring_address(Some(AVAIL as u32), Some(0));
        assert!(matches!(
            Ring::new(&over, &mem),
            Err(RingError::Overlap {
                first: "avail ring",
                second: "used ring",
                ..
            })
        ));
        assert!(check_layout(&over, &mem).is_err());
        // The descriptor table running into the avail ring by one descriptor.
        let desc = AVAIL - u64::from(SIZE) * 16 + 16;
        assert!(matches!(
            Ring::new(&queue(desc), &mem),
            Err(RingError::Overlap {
                first: "descriptor table",
                second: "avail ring",
                ..
            })
        ));
        // Right before it: taken.
        let desc = AVAIL - u64::from(SIZE) * 16;
        assert!(Ring::new(&queue(desc), &mem).is_ok());
        assert_eq!(check_layout(&queue(desc), &mem), Ok(()));
    }
}
