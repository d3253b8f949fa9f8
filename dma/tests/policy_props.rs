//! Model-based property tests for the mapping policies: after any sequence of
//! `map_sg`/`unmap_sg`/`flush`, the mapper holds exactly the mappings that should exist,
//! each translating to the right host page, and never anything outside the memory the
//! guest registered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dma::{
    BatchConfig, BatchedPolicy, BusSgList, DmaAccess, DmaPolicy, GuestMemoryRegion, GuestPhysAddr,
    GuestSgList, HostVirtAddr, IdentityPolicy, Iova, IovaAllocator, IovaRange, RawMemory,
    RecordingMapper, StrictPolicy,
};
use proptest::prelude::*;

const PAGE: u64 = 0x1000;

/// Two regions with a hole between them; requests are drawn from [0, 0x20_0000), which
/// also covers unregistered memory.
fn regions() -> [GuestMemoryRegion; 2] {
    let region = |gpa: u64, len: u64, vaddr: u64| {
        // SAFETY: the recording mapper behind every policy here never touches, pins or
        // hands on a host address, so no memory needs to be there.
        let fake = unsafe { RawMemory::new(HostVirtAddr(vaddr), len) };
        GuestMemoryRegion::new(GuestPhysAddr(gpa), Arc::new(fake))
    };
    [
        region(0, 0x8_0000, 0x7f00_0000_0000),
        region(0x10_0000, 0x4_0000, 0x5000_0000),
    ]
}

fn host_of(gpa: u64) -> Option<u64> {
    regions()
        .iter()
        .find(|r| gpa >= r.gpa().0 && gpa < r.gpa().0 + r.len())
        .map(|r| r.vaddr().0 + (gpa - r.gpa().0))
}

fn inside(gpa: u64, len: u64) -> bool {
    (gpa..gpa + len)
        .step_by(1)
        .filter(|a| a % PAGE == 0 || *a == gpa || *a == gpa + len - 1)
        .all(|a| host_of(a).is_some())
}

#[derive(Clone, Debug)]
enum Op {
    Map(Vec<(u64, u64)>, DmaAccess),
    Unmap(usize),
    /// Unmap two live lists with one call, their bus segments concatenated.
    UnmapPair(usize, usize),
    UnmapForged(u64, u64),
    Flush,
}

fn access() -> impl Strategy<Value = DmaAccess> {
    prop_oneof![
        Just(DmaAccess::DeviceReads),
        Just(DmaAccess::DeviceWrites),
        Just(DmaAccess::ReadWrite)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let segment = (0u64..0x200, 0u64..PAGE, 1u64..0x3000)
        .prop_map(|(page, off, len)| (page * PAGE + off, len));
    // Mostly requests inside the first region, some anywhere.
    let near = (0u64..0x70, 0u64..PAGE, 1u64..0x2000)
        .prop_map(|(page, off, len)| (page * PAGE + off, len));
    // Whole pages, the usual shape of a guest's buffers (mapped in one pass), running
    // into the hole and across region ends; lists of them repeat, overlap and abut.
    let whole = (0u64..0x148, 1u64..4).prop_map(|(page, n)| (page * PAGE, n * PAGE));
    prop_oneof![
        4 => (prop::collection::vec(prop_oneof![4 => near, 1 => segment], 1..8), access())
            .prop_map(|(s, a)| Op::Map(s, a)),
        2 => (prop::collection::vec(whole, 1..8), access()).prop_map(|(s, a)| Op::Map(s, a)),
        3 => any::<usize>().prop_map(Op::Unmap),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Op::UnmapPair(i, j)),
        1 => (0u64..0x1_0000_0000, 1u64..0x2000).prop_map(|(a, l)| Op::UnmapForged(a, l)),
        1 => Just(Op::Flush),
    ]
}

type PageSet = BTreeMap<u64, (u64, DmaAccess)>;

/// IOVA page -> (host page, access) as the mapper holds them.
fn mapper_pages(mapper: &RecordingMapper) -> PageSet {
    let mut set = PageSet::new();
    for m in mapper.mappings() {
        for i in 0..m.len() / PAGE {
            set.insert(m.iova().0 + i * PAGE, (m.vaddr.0 + i * PAGE, m.access));
        }
    }
    set
}

/// The pages a mapped request must make reachable: walks the guest list and the bus
/// list side by side and maps every touched IOVA page to its host page.
fn expected_pages(sg: &GuestSgList, bus: &BusSgList, access: DmaAccess, set: &mut PageSet) {
    assert_eq!(sg.total_len(), bus.total_len());
    let mut bus_segs = bus.segments().iter().map(|s| (s.addr.0, s.len));
    let mut cur = bus_segs.next().unwrap();
    for seg in sg.segments() {
        let (mut gpa, mut left) = (seg.addr.0, seg.len);
        while left > 0 {
            if cur.1 == 0 {
                cur = bus_segs.next().unwrap();
            }
            let n = left.min(cur.1);
            let iova = cur.0;
            assert_eq!(iova % PAGE, gpa % PAGE, "page offset not preserved");
            let first = iova / PAGE;
            let last = (iova + n - 1) / PAGE;
            for p in first..=last {
                let g = gpa / PAGE * PAGE + (p - first) * PAGE;
                let host = host_of(g).expect("mapped outside registered memory");
                let prev = set.insert(p * PAGE, (host, access));
                assert!(
                    prev.is_none() || prev == Some((host, access)),
                    "IOVA page {:#x} expected twice with different targets",
                    p * PAGE
                );
            }
            gpa += n;
            left -= n;
            cur = (cur.0 + n, cur.1 - n);
        }
    }
}

fn guest_list(pieces: &[(u64, u64)]) -> GuestSgList {
    GuestSgList::from_pieces(pieces.iter().map(|&(a, l)| (GuestPhysAddr(a), l))).unwrap()
}

fn iovas() -> Arc<IovaAllocator> {
    Arc::new(
        IovaAllocator::new(&[
            IovaRange::from_inclusive(Iova(0), Iova(0xfedf_ffff)).unwrap(),
            IovaRange::from_inclusive(Iova(0xfef0_0000), Iova(0x7f_ffff_ffff)).unwrap(),
        ])
        .unwrap(),
    )
}

fn host_inside_registered(mapper: &RecordingMapper) -> bool {
    mapper.mappings().iter().all(|m| {
        regions()
            .iter()
            .any(|r| m.vaddr.0 >= r.vaddr().0 && m.vaddr.0 + m.len() <= r.vaddr().0 + r.len())
    })
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Strict,
    Batched,
}

fn run_per_request(kind: Kind, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mapper = Arc::new(RecordingMapper::new());
    let config = BatchConfig {
        max_pending: 3,
        max_delay: Duration::from_secs(3600),
    };
    let (policy, batched): (Box<dyn DmaPolicy>, Option<Arc<BatchedPolicy<_>>>) = match kind {
        Kind::Strict => (Box::new(StrictPolicy::new(mapper.clone(), iovas())), None),
        Kind::Batched => {
            let p = Arc::new(BatchedPolicy::new(mapper.clone(), iovas(), config));
            (Box::new(p.clone()), Some(p))
        }
    };
    for r in regions() {
        policy.add_region(r).unwrap();
    }
    let mut live: Vec<(GuestSgList, BusSgList, DmaAccess)> = Vec::new();
    let mut pending: Vec<(GuestSgList, BusSgList, DmaAccess)> = Vec::new();
    for op in ops {
        let before = mapper.mappings();
        match op {
            Op::Map(pieces, access) => {
                let sg = guest_list(&pieces);
                let allowed = sg.segments().iter().all(|s| inside(s.addr.0, s.len));
                match policy.map_sg(&sg, access) {
                    Ok(bus) => {
                        prop_assert!(allowed, "mapped a request outside registered memory");
                        live.push((sg, bus, access));
                    }
                    Err(_) => {
                        prop_assert!(!allowed, "refused a valid request");
                        // A refused request may still have flushed the queue, but it
                        // never adds a mapping.
                        let after = mapper.mappings();
                        prop_assert!(after.iter().all(|m| before.contains(m)));
                    }
                }
            }
            Op::Unmap(i) if !live.is_empty() => {
                let entry = live.swap_remove(i % live.len());
                policy.unmap_sg(&entry.1).unwrap();
                pending.push(entry);
            }
            Op::UnmapPair(i, j) if live.len() >= 2 => {
                let a = live.swap_remove(i % live.len());
                let b = live.swap_remove(j % live.len());
                let both = BusSgList::from_pieces(
                    a.1.segments()
                        .iter()
                        .chain(b.1.segments())
                        .map(|s| (s.addr, s.len)),
                )
                .unwrap();
                policy.unmap_sg(&both).unwrap();
                pending.push(a);
                pending.push(b);
            }
            Op::Unmap(_) | Op::UnmapPair(..) => {}
            Op::UnmapForged(addr, len) => {
                let bus = BusSgList::from_pieces([(Iova(addr), len)]).unwrap();
                let covered = live.iter().any(|(_, b, _)| {
                    b.segments()
                        .iter()
                        .any(|s| s.addr.0 <= addr && addr < s.addr.0 + s.len)
                });
                if !covered {
                    prop_assert!(policy.unmap_sg(&bus).is_err());
                    prop_assert_eq!(mapper.mappings(), before);
                }
            }
            Op::Flush => {
                policy.flush().unwrap();
                pending.clear();
            }
        }
        let actual = mapper_pages(&mapper);
        let mut want = PageSet::new();
        for (sg, bus, access) in &live {
            expected_pages(sg, bus, *access, &mut want);
        }
        prop_assert!(host_inside_registered(&mapper));
        match &batched {
            None => prop_assert_eq!(&actual, &want),
            Some(b) => {
                prop_assert!(b.pending_count() < config.max_pending);
                // Everything live is mapped; anything else mapped is awaiting unmap.
                for (iova, target) in &want {
                    prop_assert_eq!(actual.get(iova), Some(target));
                }
                let mut may = want.clone();
                for (sg, bus, access) in &pending {
                    expected_pages(sg, bus, *access, &mut may);
                }
                for (iova, target) in &actual {
                    prop_assert_eq!(may.get(iova), Some(target));
                }
                if b.pending_count() == 0 {
                    pending.clear();
                    prop_assert_eq!(&actual, &want);
                }
            }
        }
    }
    // Unmapping everything leaves nothing mapped.
    for (_, bus, _) in live.drain(..) {
        policy.unmap_sg(&bus).unwrap();
    }
    policy.flush().unwrap();
    prop_assert_eq!(mapper.mapping_count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn strict_mapper_holds_exactly_the_live_requests(ops in prop::collection::vec(op(), 1..40)) {
        run_per_request(Kind::Strict, ops)?;
    }

    #[test]
    fn batched_mapper_holds_live_requests_plus_bounded_pending(ops in prop::collection::vec(op(), 1..40)) {
        run_per_request(Kind::Batched, ops)?;
    }

    #[test]
    fn identity_maps_only_registered_memory(ops in prop::collection::vec(op(), 1..40)) {
        let mapper = Arc::new(RecordingMapper::new());
        let policy = IdentityPolicy::new(mapper.clone(), iovas());
        for r in regions() {
            policy.add_region(r).unwrap();
        }
        let initial = mapper.mappings();
        prop_assert_eq!(initial.len(), 2);
        let mut live: Vec<BusSgList> = Vec::new();
        for op in ops {
            match op {
                Op::Map(pieces, access) => {
                    let sg = guest_list(&pieces);
                    let allowed = sg.segments().iter().all(|s| inside(s.addr.0, s.len));
                    match policy.map_sg(&sg, access) {
                        Ok(bus) => {
                            prop_assert!(allowed);
                            let gpas: Vec<_> = sg.segments().iter().map(|s| (s.addr.0, s.len)).collect();
                            let iovas: Vec<_> = bus.segments().iter().map(|s| (s.addr.0, s.len)).collect();
                            prop_assert_eq!(gpas, iovas, "identity: bus address = guest-physical");
                            live.push(bus);
                        }
                        Err(_) => prop_assert!(!allowed),
                    }
                }
                Op::Unmap(i) if !live.is_empty() => {
                    let bus = live.swap_remove(i % live.len());
                    policy.unmap_sg(&bus).unwrap();
                }
                Op::Unmap(_) | Op::UnmapPair(..) | Op::Flush => policy.flush().unwrap(),
                Op::UnmapForged(addr, len) => {
                    let bus = BusSgList::from_pieces([(Iova(addr), len)]).unwrap();
                    prop_assert_eq!(policy.unmap_sg(&bus).is_ok(), inside(addr, len));
                }
            }
            prop_assert_eq!(&mapper.mappings(), &initial);
        }
        for r in regions() {
            policy.remove_region(r.gpa()).unwrap();
        }
        prop_assert_eq!(mapper.mapping_count(), 0);
    }
}
