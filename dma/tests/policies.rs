//! Behaviour of the three mapping policies against the recording mapper.

use std::sync::Arc;
use std::time::Duration;

use dma::{
    BatchConfig, BatchedPolicy, BusSgList, DmaAccess, DmaError, DmaMapper, DmaPolicy,
    GuestMemoryRegion, GuestPhysAddr, GuestSgList, HostVirtAddr, IdentityPolicy, Iova,
    IovaAllocator, IovaRange, RawMemory, RecordingMapper, StrictPolicy,
};

const PAGE: u64 = 0x1000;
const HOST_BASE: u64 = 0x7f00_0000_0000;

fn rig_iovas() -> Arc<IovaAllocator> {
    Arc::new(
        IovaAllocator::new(&[
            IovaRange::from_inclusive(Iova(0), Iova(0xfedf_ffff)).unwrap(),
            IovaRange::from_inclusive(Iova(0xfef0_0000), Iova(0x7f_ffff_ffff)).unwrap(),
        ])
        .unwrap(),
    )
}

/// 16 MiB of guest RAM at guest-physical 0, at HOST_BASE in this process.
fn ram() -> GuestMemoryRegion {
    region(GuestPhysAddr(0), 16 << 20, HostVirtAddr(HOST_BASE))
}

/// Guest RAM at `gpa` in a made-up host address space.
fn region(gpa: GuestPhysAddr, len: u64, vaddr: HostVirtAddr) -> GuestMemoryRegion {
    // SAFETY: the recording mapper behind every policy here never touches, pins or
    // hands on a host address, so no memory needs to be there.
    let fake = unsafe { RawMemory::new(vaddr, len) };
    GuestMemoryRegion::new(gpa, Arc::new(fake))
}

fn sg(pieces: &[(u64, u64)]) -> GuestSgList {
    GuestSgList::from_pieces(pieces.iter().map(|&(a, l)| (GuestPhysAddr(a), l))).unwrap()
}

/// Every byte of `sg` is reachable through `bus` in `mapper`, at the host address the
/// guest memory says it is.
fn assert_translates(mapper: &RecordingMapper, sg: &GuestSgList, bus: &BusSgList) {
    assert_eq!(sg.total_len(), bus.total_len());
    let mut bus_bytes = bus
        .segments()
        .iter()
        .flat_map(|s| [s.addr.0, s.addr.0 + s.len - 1]);
    let _ = &mut bus_bytes;
    let mut offset_in_bus = 0u64;
    for seg in sg.segments() {
        for probe in [0, seg.len - 1] {
            let iova = iova_at(bus, offset_in_bus + probe);
            let (va, _) = mapper.translate(iova).expect("bus address not mapped");
            assert_eq!(va, HostVirtAddr(HOST_BASE + seg.addr.0 + probe));
        }
        offset_in_bus += seg.len;
    }
}

/// The IOVA of the byte `offset` bytes into `bus`.
fn iova_at(bus: &BusSgList, mut offset: u64) -> Iova {
    for s in bus.segments() {
        if offset < s.len {
            return Iova(s.addr.0 + offset);
        }
        offset -= s.len;
    }
    panic!("offset past the end of the bus list");
}

#[test]
fn identity_maps_region_once_and_map_sg_costs_nothing() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = IdentityPolicy::new(mapper.clone(), rig_iovas());
    policy.add_region(ram()).unwrap();
    assert_eq!(mapper.map_calls(), 1);
    assert_eq!(mapper.mapped_bytes(), 16 << 20);

    let req = sg(&[(0x1234, 0x100), (0x8000, 0x3000)]);
    let bus = policy.map_sg(&req, DmaAccess::DeviceReads).unwrap();
    assert_eq!(bus.segments()[0].addr, Iova(0x1234));
    assert_translates(&mapper, &req, &bus);
    policy.unmap_sg(&bus).unwrap();
    assert_eq!((mapper.map_calls(), mapper.unmap_calls()), (1, 0));

    assert!(matches!(
        policy.map_sg(&sg(&[(0xfff000, 0x2000)]), DmaAccess::ReadWrite),
        Err(DmaError::OutsideGuestMemory { .. })
    ));
    policy.remove_region(GuestPhysAddr(0)).unwrap();
    assert_eq!(mapper.mapping_count(), 0);
    assert!(policy.map_sg(&req, DmaAccess::ReadWrite).is_err());
}

#[test]
fn identity_refuses_guest_ram_over_the_msi_hole() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = IdentityPolicy::new(mapper.clone(), rig_iovas());
    let over_hole = region(
        GuestPhysAddr(0xfe00_0000),
        0x200_0000,
        HostVirtAddr(HOST_BASE),
    );
    assert!(matches!(
        policy.add_region(over_hole),
        Err(DmaError::IovaUnavailable { .. })
    ));
    assert_eq!(mapper.map_calls(), 0);
    // The failed region was not kept: the same range minus the hole can be added.
    policy
        .add_region(region(
            GuestPhysAddr(0xfe00_0000),
            0xe0_0000,
            HostVirtAddr(HOST_BASE),
        ))
        .unwrap();
}

#[test]
fn strict_maps_contiguous_pages_with_one_call() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = StrictPolicy::new(mapper.clone(), rig_iovas());
    policy.add_region(ram()).unwrap();
    assert_eq!(mapper.map_calls(), 0, "strict maps nothing up front");

    let pages: Vec<(u64, u64)> = (0..64).map(|i| (0x10_0000 + i * PAGE, PAGE)).collect();
    let req = sg(&pages);
    let bus = policy.map_sg(&req, DmaAccess::DeviceWrites).unwrap();
    assert_eq!(mapper.map_calls(), 1);
    assert_eq!(bus.len(), 1);
    assert_eq!(mapper.mapped_bytes(), 64 * PAGE);
    assert_translates(&mapper, &req, &bus);
    assert_eq!(
        mapper.translate(bus.segments()[0].addr).unwrap().1,
        DmaAccess::DeviceWrites
    );

    policy.unmap_sg(&bus).unwrap();
    assert_eq!(mapper.mapping_count(), 0, "strict unmap is done on return");
    assert_eq!(mapper.unmap_calls(), 1);
}

#[test]
fn strict_maps_exactly_the_touched_pages() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = StrictPolicy::new(mapper.clone(), rig_iovas());
    policy.add_region(ram()).unwrap();
    // Two sub-page buffers in one page, one straddling two pages, one far away.
    let req = sg(&[
        (0x3010, 0x20),
        (0x3800, 0x10),
        (0x7ff0, 0x20),
        (0x40_0000, 8),
    ]);
    let bus = policy.map_sg(&req, DmaAccess::ReadWrite).unwrap();
    assert_eq!(mapper.mapped_bytes(), 4 * PAGE);
    assert_translates(&mapper, &req, &bus);
    let host_pages: Vec<u64> = mapper
        .mappings()
        .iter()
        .map(|m| m.vaddr.0 - HOST_BASE)
        .collect();
    assert_eq!(host_pages, vec![0x3000, 0x7000, 0x40_0000]);
}

#[test]
fn strict_refuses_outside_memory_and_unknown_unmaps_without_side_effects() {
    let mapper = Arc::new(RecordingMapper::new());
    let iovas = rig_iovas();
    let free_before = iovas.free_bytes();
    let policy = StrictPolicy::new(mapper.clone(), iovas.clone());
    policy.add_region(ram()).unwrap();

    // One good segment and one past the end of guest RAM: nothing may be mapped.
    let req = sg(&[(0x1000, 0x1000), ((16 << 20) - 0x800, 0x1000)]);
    assert!(matches!(
        policy.map_sg(&req, DmaAccess::ReadWrite),
        Err(DmaError::OutsideGuestMemory { .. })
    ));
    assert_eq!(mapper.map_calls(), 0);
    assert_eq!(iovas.free_bytes(), free_before);

    let bus = policy
        .map_sg(&sg(&[(0x1000, 0x1000)]), DmaAccess::ReadWrite)
        .unwrap();
    let forged =
        BusSgList::from_pieces([(bus.segments()[0].addr, 0x1000), (Iova(0x9000_0010), 8)]).unwrap();
    assert!(matches!(
        policy.unmap_sg(&forged),
        Err(DmaError::UnknownBusAddress {
            addr: 0x9000_0010,
            ..
        })
    ));
    assert_eq!(mapper.mapping_count(), 1, "a failed unmap changes nothing");
    policy.unmap_sg(&bus).unwrap();
    assert!(matches!(
        policy.unmap_sg(&bus),
        Err(DmaError::UnknownBusAddress { .. })
    ));
    // The policy keeps a window of one-page IOVAs while it lives; all goes back after.
    drop(policy);
    assert_eq!(iovas.free_bytes(), free_before);
}

#[test]
fn strict_will_not_remove_a_region_in_use() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = StrictPolicy::new(mapper.clone(), rig_iovas());
    policy.add_region(ram()).unwrap();
    let bus = policy
        .map_sg(&sg(&[(0x5000, 0x10)]), DmaAccess::ReadWrite)
        .unwrap();
    assert!(matches!(
        policy.remove_region(GuestPhysAddr(0)),
        Err(DmaError::RegionBusy { mappings: 1, .. })
    ));
    policy.unmap_sg(&bus).unwrap();
    policy.remove_region(GuestPhysAddr(0)).unwrap();
}

/// Large scattered requests reuse the table's bookkeeping from one request to the
/// next; nothing of an earlier request (mapped, refused or unmapped) may show through
/// in a later one's mappings or in the region-in-use check.
#[test]
fn strict_large_requests_after_others_map_exactly_their_own_pages() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = StrictPolicy::new(mapper.clone(), rig_iovas());
    let small = region(
        GuestPhysAddr(0),
        0x100_0000 - 0x1000,
        HostVirtAddr(HOST_BASE),
    );
    policy.add_region(small.clone()).unwrap();
    let scattered = |first: u64, n: u64| -> Vec<(u64, u64)> {
        (0..n).map(|i| (first + 2 * i * PAGE, PAGE)).collect()
    };
    for (first, n) in [
        (0x10_0000, 40),
        (0x20_0000, 3),
        (0x30_0000, 70),
        (0x40_0000, 40),
    ] {
        // A refused request first: its last page lies past the region.
        let mut refused = scattered(first, n);
        refused.push((small.len(), PAGE));
        assert!(matches!(
            policy.map_sg(&sg(&refused), DmaAccess::ReadWrite),
            Err(DmaError::OutsideGuestMemory { .. })
        ));
        assert_eq!(mapper.mapping_count(), 0, "a refused request maps nothing");

        let list = sg(&scattered(first, n));
        let bus = policy.map_sg(&list, DmaAccess::ReadWrite).unwrap();
        assert_eq!(mapper.mapping_count(), n as usize, "one mapping per page");
        assert_eq!(mapper.mapped_bytes(), n * PAGE);
        assert_translates(&mapper, &list, &bus);
        policy.unmap_sg(&bus).unwrap();
        assert_eq!(mapper.mapping_count(), 0);
    }
    // No stale page runs claim the region.
    policy.remove_region(GuestPhysAddr(0)).unwrap();
}

/// A guest may give back the bus ranges of several requests as one list, in which
/// requests lying next to each other in IOVA space merge into one segment.
#[test]
fn strict_unmaps_a_segment_spanning_requests_next_to_each_other() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = StrictPolicy::new(mapper.clone(), rig_iovas());
    policy.add_region(ram()).unwrap();
    // One-page requests (slots) and whole-page requests of several pages.
    for shape in [[(0x1000, PAGE)], [(0x8000, 3 * PAGE)]] {
        let a = policy.map_sg(&sg(&shape), DmaAccess::ReadWrite).unwrap();
        let b = policy.map_sg(&sg(&shape), DmaAccess::ReadWrite).unwrap();
        let (a, b) = (a.segments()[0], b.segments()[0]);
        let (lo, hi) = if a.addr < b.addr { (a, b) } else { (b, a) };
        assert_eq!(
            lo.addr.0 + lo.len,
            hi.addr.0,
            "requests lie next to each other"
        );
        let both = BusSgList::from_pieces([(lo.addr, lo.len), (hi.addr, hi.len)]).unwrap();
        assert_eq!(both.len(), 1, "the list merges them");
        // A segment reaching past them is refused, with nothing unmapped.
        let past = BusSgList::from_pieces([(lo.addr, lo.len + hi.len + PAGE)]).unwrap();
        assert!(matches!(
            policy.unmap_sg(&past),
            Err(DmaError::UnknownBusAddress { .. })
        ));
        assert_eq!(mapper.mapping_count(), 2 * shape.len());
        policy.unmap_sg(&both).unwrap();
        assert_eq!(mapper.mapping_count(), 0);
        assert_eq!(policy.live_count(), 0);
    }
}

#[test]
fn strict_splits_requests_across_regions_by_host_address() {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = StrictPolicy::new(mapper.clone(), rig_iovas());
    let low = region(GuestPhysAddr(0), 0x10_0000, HostVirtAddr(HOST_BASE));
    let high = region(
        GuestPhysAddr(0x10_0000),
        0x10_0000,
        HostVirtAddr(0x5000_0000),
    );
    policy.add_region(low).unwrap();
    policy.add_region(high).unwrap();
    let bus = policy
        .map_sg(&sg(&[(0xf_f000, 0x2000)]), DmaAccess::ReadWrite)
        .unwrap();
    assert_eq!(bus.len(), 1, "one contiguous bus range for the device");
    assert_eq!(mapper.map_calls(), 2, "two host pieces, two mappings");
    let base = bus.segments()[0].addr;
    assert_eq!(
        mapper.translate(base).unwrap().0,
        HostVirtAddr(HOST_BASE + 0xf_f000)
    );
    assert_eq!(
        mapper.translate(Iova(base.0 + 0x1000)).unwrap().0,
        HostVirtAddr(0x5000_0000)
    );
}

fn batched(config: BatchConfig) -> (Arc<RecordingMapper>, BatchedPolicy<Arc<RecordingMapper>>) {
    let mapper = Arc::new(RecordingMapper::new());
    let policy = BatchedPolicy::new(mapper.clone(), rig_iovas(), config);
    policy.add_region(ram()).unwrap();
    (mapper, policy)
}

#[test]
fn batched_defers_unmaps_until_the_queue_is_full() {
    let (mapper, policy) = batched(BatchConfig {
        max_pending: 4,
        max_delay: Duration::from_secs(3600),
    });
    let buses: Vec<_> = (0..4)
        .map(|i| {
            policy
                .map_sg(&sg(&[(i * 0x10000, 0x3000)]), DmaAccess::ReadWrite)
                .unwrap()
        })
        .collect();
    for bus in &buses[..3] {
        policy.unmap_sg(bus).unwrap();
    }
    assert_eq!(policy.pending_count(), 3);
    assert_eq!(mapper.mapping_count(), 4, "deferred: still mapped");
    assert_eq!(mapper.unmap_calls(), 0);
    assert!(matches!(
        policy.unmap_sg(&buses[0]),
        Err(DmaError::UnknownBusAddress { .. })
    ));
    policy.unmap_sg(&buses[3]).unwrap();
    assert_eq!(policy.pending_count(), 0);
    assert_eq!(mapper.mapping_count(), 0);
    // The four IOVA ranges were allocated back to back, so one unmap covers them.
    assert_eq!(mapper.unmap_calls(), 1);
}

#[test]
fn batched_flushes_on_the_time_bound() {
    let (mapper, policy) = batched(BatchConfig {
        max_pending: 1000,
        max_delay: Duration::from_millis(1),
    });
    let bus = policy
        .map_sg(&sg(&[(0x1000, 0x1000)]), DmaAccess::ReadWrite)
        .unwrap();
    policy.unmap_sg(&bus).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    policy.flush_if_due().unwrap();
    assert_eq!(mapper.mapping_count(), 0);
    assert_eq!(policy.pending_count(), 0);
}

#[test]
fn batched_flushes_before_iovas_are_reused() {
    // IOVA space for exactly two 4-page requests.
    let mapper = Arc::new(RecordingMapper::new());
    let iovas = Arc::new(
        IovaAllocator::new(&[IovaRange::new(Iova(0x10_0000), 8 * PAGE).unwrap()]).unwrap(),
    );
    let policy = BatchedPolicy::new(
        mapper.clone(),
        iovas,
        BatchConfig {
            max_pending: 1000,
            max_delay: Duration::from_secs(3600),
        },
    );
    policy.add_region(ram()).unwrap();
    let a = policy
        .map_sg(&sg(&[(0x0, 4 * PAGE)]), DmaAccess::ReadWrite)
        .unwrap();
    let b = policy
        .map_sg(&sg(&[(0x10_0000, 4 * PAGE)]), DmaAccess::ReadWrite)
        .unwrap();
    policy.unmap_sg(&a).unwrap();
    assert_eq!(mapper.mapping_count(), 2);
    // Needs a's IOVAs: the queue is flushed first, then they are reused.
    let c = policy
        .map_sg(&sg(&[(0x20_0000, 4 * PAGE)]), DmaAccess::ReadWrite)
        .unwrap();
    assert_eq!(c.segments()[0].addr, a.segments()[0].addr);
    assert_eq!(
        mapper.translate(c.segments()[0].addr).unwrap().0,
        HostVirtAddr(HOST_BASE + 0x20_0000)
    );
    policy.unmap_sg(&b).unwrap();
    policy.unmap_sg(&c).unwrap();
    policy.flush().unwrap();
    assert_eq!(mapper.mapping_count(), 0);
}

#[test]
fn batched_flushes_before_removing_a_region() {
    let (mapper, policy) = batched(BatchConfig {
        max_pending: 1000,
        max_delay: Duration::from_secs(3600),
    });
    let bus = policy
        .map_sg(&sg(&[(0x1000, 0x1000)]), DmaAccess::ReadWrite)
        .unwrap();
    policy.unmap_sg(&bus).unwrap();
    assert_eq!(mapper.mapping_count(), 1);
    policy.remove_region(GuestPhysAddr(0)).unwrap();
    assert_eq!(mapper.mapping_count(), 0);
}

#[test]
fn policies_work_as_trait_objects_over_a_shared_mapper() {
    let mapper = Arc::new(RecordingMapper::new());
    let iovas = rig_iovas();
    let policies: Vec<Box<dyn DmaPolicy>> = vec![
        Box::new(IdentityPolicy::new(mapper.clone(), iovas.clone())),
        Box::new(StrictPolicy::new(mapper.clone(), iovas.clone())),
    ];
    policies[0].add_region(ram()).unwrap();
    // A second guest's memory for the strict policy, elsewhere in host memory.
    policies[1]
        .add_region(region(
            GuestPhysAddr(0),
            16 << 20,
            HostVirtAddr(0x6000_0000),
        ))
        .unwrap();
    let bus = policies[1]
        .map_sg(&sg(&[(0, PAGE)]), DmaAccess::ReadWrite)
        .unwrap();
    // The strict IOVA cannot collide with the identity window (shared allocator).
    assert!(bus.segments()[0].addr.0 >= 16 << 20);
    assert_eq!(mapper.page_size(), PAGE);
}

/// A recording mapper whose unmaps can be made to fail, as a kernel refusing would.
struct FailingUnmaps {
    inner: RecordingMapper,
    fail: std::sync::atomic::AtomicBool,
}

impl DmaMapper for FailingUnmaps {
    unsafe fn map(&self, mapping: &dma::DmaMapping) -> Result<(), DmaError> {
        self.inner.record(mapping)
    }

    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(DmaError::System {
                op: "VFIO_IOMMU_UNMAP_DMA",
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        self.inner.unmap(range)
    }
}

#[test]
fn strict_never_reuses_an_iova_whose_unmap_failed() {
    let mapper = Arc::new(FailingUnmaps {
        inner: RecordingMapper::new(),
        fail: false.into(),
    });
    let policy = StrictPolicy::new(mapper.clone(), rig_iovas());
    policy.add_region(ram()).unwrap();
    // One-page requests (slots) and a multi-page one (its own IOVAs).
    for pieces in [&[(0x1000u64, 0x10u64)][..], &[(0x8000, 3 * PAGE)][..]] {
        let lost = policy.map_sg(&sg(pieces), DmaAccess::ReadWrite).unwrap();
        mapper
            .fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(policy.unmap_sg(&lost).is_err());
        mapper
            .fail
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // Neither the slot nor the range comes back, however many requests follow.
        let lost_page = lost.segments()[0].addr.0 & !(PAGE - 1);
        let mut live = Vec::new();
        for i in 0..1100u64 {
            let bus = policy
                .map_sg(&sg(&[(0x10_0000 + i * PAGE, PAGE)]), DmaAccess::ReadWrite)
                .unwrap();
            let page = bus.segments()[0].addr.0;
            assert!(
                page + PAGE <= lost_page || page >= lost_page + lost.total_len().max(PAGE),
                "IOVA {page:#x} reused while the device may still reach it"
            );
            live.push(bus);
        }
        for bus in live {
            policy.unmap_sg(&bus).unwrap();
        }
    }
}
