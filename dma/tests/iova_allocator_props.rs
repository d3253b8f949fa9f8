//! Property tests for `IovaAllocator`: whatever the sequence of allocations and frees
//! (plain allocations and leases mixed), live ranges are disjoint, inside the usable
//! windows and aligned, and freeing everything gives all the space back.

use dma::{Iova, IovaAllocator, IovaLease, IovaRange};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Allocate `pages` 4 KiB pages aligned to `1 << align_shift`, as a lease or not.
    Alloc {
        pages: u64,
        align_shift: u32,
        lease: bool,
    },
    /// Free the live allocation at this index (modulo the count).
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..64, 0u32..24, any::<bool>())
            .prop_map(|(pages, align_shift, lease)| Op::Alloc { pages, align_shift, lease }),
        2 => any::<usize>().prop_map(Op::Free),
    ]
}

/// 1 to 4 disjoint windows, with gaps between them, each 16 KiB to 4 MiB, at arbitrary
/// (not necessarily page-aligned) offsets.
fn windows() -> impl Strategy<Value = Vec<IovaRange>> {
    prop::collection::vec((0u64..0x40_0000, 0x4000u64..0x40_0000), 1..5).prop_map(|parts| {
        let mut base = 0u64;
        parts
            .into_iter()
            .map(|(gap, len)| {
                let r = IovaRange::new(Iova(base + gap + 1), len).unwrap();
                base = r.last().0 + 1;
                r
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn allocations_are_disjoint_aligned_and_inside(ranges in windows(), ops in prop::collection::vec(op(), 1..200)) {
        let alloc = IovaAllocator::new(&ranges).unwrap();
        let usable = alloc.usable_ranges().to_vec();
        let total: u64 = usable.iter().map(|r| r.len()).sum();
        let mut live: Vec<(IovaRange, Option<IovaLease>)> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { pages, align_shift, lease } => {
                    let align = 0x1000u64.max(1 << align_shift);
                    let got = if lease {
                        alloc.lease(pages * 0x1000, 1 << align_shift).map(|l| (l.range(), Some(l)))
                    } else {
                        alloc.alloc(pages * 0x1000, 1 << align_shift).map(|r| (r, None))
                    };
                    if let Ok((r, lease)) = got {
                        prop_assert_eq!(r.len(), pages * 0x1000);
                        prop_assert!(r.start().is_aligned(align), "{} not aligned to {:#x}", r, align);
                        prop_assert!(usable.iter().any(|u| u.contains_range(&r)), "{} outside {:?}", r, usable);
                        for (other, _) in &live {
                            prop_assert!(!other.overlaps(&r), "{} overlaps live {}", r, other);
                        }
                        // Also inside one of the caller's original ranges.
                        prop_assert!(ranges.iter().any(|u| u.contains_range(&r)));
                        live.push((r, lease));
                    }
                }
                Op::Free(i) if !live.is_empty() => {
                    let (r, lease) = live.swap_remove(i % live.len());
                    match lease {
                        Some(lease) => {
                            prop_assert!(alloc.free(r).is_err(), "a leased range freed as plain");
                            alloc.free_lease(lease).unwrap();
                        }
                        None => alloc.free(r).unwrap(),
                    }
                    prop_assert!(alloc.free(r).is_err(), "double free accepted");
                }
                Op::Free(_) => {}
            }
            let used: u64 = live.iter().map(|(r, _)| r.len()).sum();
            prop_assert_eq!(alloc.free_bytes() + used, total);
            prop_assert_eq!(alloc.allocation_count(), live.len());
        }
        for (r, lease) in live.drain(..) {
            match lease {
                Some(lease) => alloc.free_lease(lease).unwrap(),
                None => alloc.free(r).unwrap(),
            }
        }
        prop_assert_eq!(alloc.free_bytes(), total);
        prop_assert_eq!(alloc.free_block_count(), usable.len());
        // The largest window can be allocated whole again.
        let biggest = usable.iter().map(|r| r.len()).max().unwrap();
        let r = alloc.alloc(biggest, 0x1000).unwrap();
        prop_assert_eq!(r.len(), biggest);
    }

    #[test]
    fn alloc_fails_only_when_no_block_fits(pages in 1u64..2048, align_shift in 12u32..24) {
        // A single fresh window: any request no larger than the window minus the worst
        // alignment padding must succeed.
        let window = IovaRange::new(Iova(0x1000), 0x800_0000).unwrap();
        let alloc = IovaAllocator::new(&[window]).unwrap();
        let align = 1u64 << align_shift;
        let size = pages * 0x1000;
        let r = alloc.alloc(size, align).unwrap();
        prop_assert!(r.start().is_aligned(align));
        prop_assert!(window.contains_range(&r));
    }
}
