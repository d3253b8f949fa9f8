//! DMA policies (`dma::policy`) over a real VFIO container: an e1000 transmits a frame
//! whose buffer a policy mapped and the other e1000 receives it intact; once a strict
//! mapping is gone the same transmit reaches nothing and the IOMMU reports the fault.
//! The benchmarks compare per-request mapping with plain VFIO map/unmap ioctls and
//! count the ioctls a 64-page list costs with and without coalescing and batching.
//!
//! "Guest memory" is an anonymous mapping registered as a [`GuestMemoryRegion`], as a
//! VMM shares a guest's RAM. Everything the NICs touch — rings, receive buffers,
//! payloads — lives in it and reaches the devices only through the policy under test.
//! The e1000 programming is the least that moves one frame (legacy descriptors,
//! polled): udrv-examples has no e1000 driver yet, and a driver would own its buffers
//! rather than take bus addresses from a policy.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dma::{
    Address, BatchConfig, BatchedPolicy, BusSgList, DmaAccess, DmaError, DmaMapper, DmaMapping,
    DmaMemory, DmaPolicy, GuestMemoryRegion, GuestPhysAddr, GuestSgList, IdentityPolicy, Iova,
    IovaAllocator, IovaRange, PagePreference, SgList, StrictPolicy,
};
use udriver::vfio::{Bar, VfioContainer, VfioDevice, VfioGroup};

use crate::harness::RigTest;
use crate::rig::{self, poll_until};
use udrv_examples::e1000::regs as e1000_regs;

pub fn tests() -> Vec<RigTest> {
    vec![
        RigTest::new("dma_identity_e1000_frame", identity_e1000_frame).with_timeout(240),
        RigTest::new(
            "dma_strict_e1000_frame_then_unmap_faults",
            strict_e1000_frame_then_unmap_faults,
        )
        .with_timeout(240),
        RigTest::new(
            "dma_batched_e1000_frame_then_flush_faults",
            batched_e1000_frame_then_flush_faults,
        )
        .with_timeout(240),
    ]
}

pub fn benches() -> Vec<RigTest> {
    vec![
        RigTest::new("dma_map_sg_vs_raw_ioctl", map_sg_vs_raw_ioctl).with_timeout(900),
        RigTest::new("dma_map_sg_list_vs_raw_ioctls", map_sg_list_vs_raw_ioctls).with_timeout(900),
        RigTest::new("dma_ioctls_for_64_page_sg", ioctls_for_64_page_sg).with_timeout(900),
    ]
}

const PAGE: u64 = 4096;

// ------------------------------------------------------------- guest memory

/// Where the guest's RAM sits in guest-physical space: inside the IOMMU's first window,
/// so that the identity policy can use it as IOVAs too.
const GUEST_RAM_GPA: u64 = 0x4000_0000;

/// A guest's RAM: anonymous memory of this process, registered under a guest-physical
/// base. The tests read and write it by guest-physical address, as a guest would.
struct GuestRam {
    memory: Arc<DmaMemory>,
    region: GuestMemoryRegion,
}

impl GuestRam {
    fn new(len: usize) -> Result<GuestRam> {
        let memory = Arc::new(DmaMemory::allocate_with(len, PagePreference::SmallOnly)?);
        let region = GuestMemoryRegion::new(GuestPhysAddr(GUEST_RAM_GPA), memory.clone());
        Ok(GuestRam { memory, region })
    }

    fn gpa(&self, offset: u64) -> GuestPhysAddr {
        GuestPhysAddr(GUEST_RAM_GPA + offset)
    }

    /// Keeps the memory from ever being freed, for benchmarks that map it straight
    /// through a mapper: a mapping an error path leaves behind then never reaches
    /// memory put to another use.
    fn keep_forever(&self) {
        std::mem::forget(Arc::clone(&self.memory));
    }
}

// ---------------------------------------------------------------- two e1000s

/// Guest RAM layout, as offsets.
const TX_RING: u64 = 0x0000;
const RX_RING: u64 = 0x1000;
const RX_BUFS: u64 = 0x2000;
/// A frame's first piece ends at the end of this page...
const PAYLOAD_HEAD_PAGE: u64 = 0x2_0000;
/// ...and its second starts on this page, three pages further on: the pieces are not
/// contiguous in guest memory.
const PAYLOAD_TAIL_PAGE: u64 = 0x2_4000;
const MARKER: u64 = 0x3_0000;
const GUEST_RAM_LEN: usize = 0x4_0000;

const TX_SLOTS: u64 = 8;
const RX_SLOTS: u64 = 32;
const RX_BUF_LEN: u64 = 2048;

/// RCTL: EN | UPE | MPE | BAM | SECRC (2 KiB buffers).
const RCTL_RECEIVE_ALL: u32 = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 15) | (1 << 26);
/// TCTL: EN | PSP | CT 0x10 | COLD 0x40.
const TCTL_TRANSMIT: u32 = (1 << 1) | (1 << 3) | (0x10 << 4) | (0x40 << 12);
/// Legacy TX descriptor command bits.
const TXD_EOP: u32 = 0x01;
const TXD_IFCS: u32 = 0x02;
const TXD_RS: u32 = 0x08;
/// The ethertype of the tests' frames (local experimental).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// e1000 A (transmits) and B (receives), their groups in one container.
struct Nics {
    container: VfioContainer,
    a: VfioDevice,
    b: VfioDevice,
    bar_a: Bar,
    bar_b: Bar,
}

fn open_nics() -> Result<Nics> {
    let (container, devices) = rig::open_in_one_container(&[rig::E1000_A, rig::E1000_B])?;
    let [a, b]: [VfioDevice; 2] = devices.try_into().expect("two devices asked for");
    let bar_a = a.bar(0)?;
    let bar_b = b.bar(0)?;
    Ok(Nics {
        container,
        a,
        b,
        bar_a,
        bar_b,
    })
}

/// A's transmit ring and B's receive ring running on guest RAM mapped by `policy`.
struct Link<'a> {
    nics: &'a Nics,
    ram: &'a GuestRam,
    policy: &'a dyn DmaPolicy,
    /// The rings' and receive buffers' bus lists, unmapped by `stop`.
    rings: Vec<BusSgList>,
    tx_next: u64,
}

/// `[addr+len, ...]` in hex, for messages.
fn segments<A: Address>(list: &SgList<A>) -> String {
    let parts: Vec<String> = list
        .segments()
        .iter()
        .map(|s| format!("{:#x}+{:#x}", s.addr.to_raw(), s.len))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The bus address of a list that must be one segment (a ring or a buffer array the
/// device addresses by base + offset).
fn single_bus_address(bus: &BusSgList, what: &str) -> Result<u64> {
    ensure!(
        bus.len() == 1,
        "{what}: {} bus segments, the device needs one contiguous range: {}",
        bus.len(),
        segments(bus)
    );
    Ok(bus.segments()[0].addr.0)
}

impl<'a> Link<'a> {
    /// Maps the rings and receive buffers through `policy` and starts both NICs.
    fn start(nics: &'a Nics, ram: &'a GuestRam, policy: &'a dyn DmaPolicy) -> Result<Link<'a>> {
        let map = |offset: u64, len: u64, access, what: &str| -> Result<(BusSgList, u64)> {
            let sg = GuestSgList::from_pieces([(ram.gpa(offset), len)])?;
            let bus = policy
                .map_sg(&sg, access)
                .with_context(|| format!("mapping the {what}"))?;
            let base = single_bus_address(&bus, what)?;
            Ok((bus, base))
        };
        // The TX ring is written back too (DD on RS descriptors).
        let (tx_bus, tx_ring) = map(TX_RING, TX_SLOTS * 16, DmaAccess::ReadWrite, "TX ring")?;
        let (rx_bus, rx_ring) = map(RX_RING, RX_SLOTS * 16, DmaAccess::ReadWrite, "RX ring")?;
        let (bufs_bus, rx_bufs) = map(
            RX_BUFS,
            RX_SLOTS * RX_BUF_LEN,
            DmaAccess::DeviceWrites,
            "RX buffers",
        )?;
        let link = Link {
            nics,
            ram,
            policy,
            rings: vec![tx_bus, rx_bus, bufs_bus],
            tx_next: 0,
        };
        println!(
            "bus addresses: TX ring {tx_ring:#x}, RX ring {rx_ring:#x}, RX buffers {rx_bufs:#x}"
        );

        let mem = &ram.memory;
        mem.fill(TX_RING as usize, (TX_SLOTS * 16) as usize, 0)?;
        for i in 0..RX_SLOTS {
            let d = (RX_RING + i * 16) as usize;
            mem.write::<u64>(d, rx_bufs + i * RX_BUF_LEN)?;
            mem.write::<u64>(d + 8, 0)?;
        }
        let (a, b) = (&nics.bar_a, &nics.bar_b);
        for bar in [a, b] {
            bar.write32(e1000_regs::IMC, u32::MAX)?;
        }
        b.write32(e1000_regs::RCTL, 0)?;
        b.write32(e1000_regs::RDBAL, rx_ring as u32)?;
        b.write32(e1000_regs::RDBAH, (rx_ring >> 32) as u32)?;
        b.write32(e1000_regs::RDLEN, (RX_SLOTS * 16) as u32)?;
        b.write32(e1000_regs::RDH, 0)?;
        b.write32(e1000_regs::RDT, (RX_SLOTS - 1) as u32)?;
        b.write32(e1000_regs::RCTL, RCTL_RECEIVE_ALL)?;
        nics.b.set_bus_master(true)?;
        a.write32(e1000_regs::TCTL, 0)?;
        a.write32(e1000_regs::TDBAL, tx_ring as u32)?;
        a.write32(e1000_regs::TDBAH, (tx_ring >> 32) as u32)?;
        a.write32(e1000_regs::TDLEN, (TX_SLOTS * 16) as u32)?;
        a.write32(e1000_regs::TDH, 0)?;
        a.write32(e1000_regs::TDT, 0)?;
        a.write32(e1000_regs::TCTL, TCTL_TRANSMIT)?;
        nics.a.set_bus_master(true)?;
        Ok(link)
    }

    /// Transmits one frame made of the bus segments of `bus` (one descriptor each) and
    /// waits until A has processed every descriptor.
    fn send(&mut self, bus: &BusSgList) -> Result<()> {
        ensure!(
            !bus.is_empty() && (bus.len() as u64) < TX_SLOTS,
            "a frame of {} segments does not fit the TX ring",
            bus.len()
        );
        let mem = &self.ram.memory;
        for (i, seg) in bus.segments().iter().enumerate() {
            let last = i + 1 == bus.len();
            let d = (TX_RING + self.tx_next * 16) as usize;
            let cmd = TXD_IFCS | TXD_RS | if last { TXD_EOP } else { 0 };
            mem.write::<u64>(d, seg.addr.0)?;
            mem.write::<u32>(d + 8, seg.len as u32 | (cmd << 24))?;
            mem.write::<u32>(d + 12, 0)?;
            self.tx_next = (self.tx_next + 1) % TX_SLOTS;
        }
        let tail = self.tx_next as u32;
        self.nics.bar_a.write32(e1000_regs::TDT, tail)?;
        poll_until(Duration::from_secs(10), "A's TDH to reach TDT", || {
            Ok((self.nics.bar_a.read32(e1000_regs::TDH)? == tail).then_some(()))
        })
    }

    /// Every frame B has received so far, in ring order.
    fn received(&self) -> Result<Vec<Vec<u8>>> {
        let mem = &self.ram.memory;
        let mut frames = Vec::new();
        for i in 0..RX_SLOTS {
            let d = (RX_RING + i * 16) as usize;
            if mem.read::<u8>(d + 12)? & 1 == 0 {
                continue;
            }
            let len = u64::from(mem.read::<u16>(d + 8)?).min(RX_BUF_LEN);
            let mut f = vec![0u8; len as usize];
            mem.copy_to((RX_BUFS + i * RX_BUF_LEN) as usize, &mut f)?;
            frames.push(f);
        }
        Ok(frames)
    }

    /// Waits until B has received `frame`, and returns everything received.
    fn wait_for(&self, frame: &[u8], what: &str) -> Result<Vec<Vec<u8>>> {
        poll_until(Duration::from_secs(10), what, || {
            let frames = self.received()?;
            Ok(frames.iter().any(|f| f == frame).then_some(frames))
        })
    }

    /// Stops both NICs' DMA and unmaps the rings.
    fn stop(self) -> Result<()> {
        self.nics.bar_a.write32(e1000_regs::TCTL, 0)?;
        self.nics.bar_b.write32(e1000_regs::RCTL, 0)?;
        self.nics.a.quiesce()?;
        self.nics.b.quiesce()?;
        for bus in &self.rings {
            self.policy.unmap_sg(bus)?;
        }
        self.policy.flush()?;
        Ok(())
    }
}

/// A frame from A's MAC to B's, of this tests' ethertype, whose payload names `tag`.
fn frame(tag: &str) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 0x03, 0x52, 0x54, 0, 0, 0, 0x02];
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(format!("udrv dma rig test: {tag}").as_bytes());
    // Ends the text for `describe`.
    f.push(0);
    let seed = tag
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let pad = 300 - f.len();
    f.extend((0..pad).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    f
}

/// Writes `frame` into guest RAM in two pieces that are not contiguous in guest memory
/// (the last 100 bytes of one page, the rest at the start of another) and returns the
/// guest's scatter-gather list for it.
fn place_split_frame(ram: &GuestRam, frame: &[u8]) -> Result<GuestSgList> {
    let (head, tail) = frame.split_at(100);
    let head_at = PAYLOAD_HEAD_PAGE + PAGE - head.len() as u64;
    ram.memory.copy_from(head_at as usize, head)?;
    ram.memory.copy_from(PAYLOAD_TAIL_PAGE as usize, tail)?;
    Ok(GuestSgList::from_pieces([
        (ram.gpa(head_at), head.len() as u64),
        (ram.gpa(PAYLOAD_TAIL_PAGE), tail.len() as u64),
    ])?)
}

fn count_of(frames: &[Vec<u8>], frame: &[u8]) -> usize {
    frames.iter().filter(|f| f.as_slice() == frame).count()
}

/// What B received, for the log: test frames by tag, anything else by length and
/// whether it is all zeros.
fn describe(frames: &[Vec<u8>]) -> String {
    frames
        .iter()
        .map(|f| {
            if f.get(12..14) == Some(&ETHERTYPE[..]) {
                let text: String = f[14..]
                    .iter()
                    .take_while(|b| b.is_ascii_graphic() || **b == b' ')
                    .map(|b| *b as char)
                    .collect();
                format!("[{}: {text}]", f.len())
            } else if f.iter().all(|b| *b == 0) {
                format!("[{} zero bytes]", f.len())
            } else {
                format!("[{} bytes, ethertype {:02x?}]", f.len(), f.get(12..14))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------- IOMMU faults

/// The guest kernel's log, one entry a line.
fn kernel_log() -> Result<Vec<String>> {
    Ok(rig::sh("dmesg")?.lines().map(str::to_owned).collect())
}

/// The kernel prints DMAR faults under one rate limit (10 lines per 5 s, and a fault
/// takes two), so faults from earlier tests in the same boot can hide this test's.
/// Waits until 5 s have passed since the last DMAR line, which starts a fresh window.
fn wait_out_dmar_rate_limit() -> Result<()> {
    const WINDOW: f64 = 5.0;
    let stamp = |line: &str| -> Option<f64> {
        let inner = line.strip_prefix('[')?.split(']').next()?;
        inner.trim().parse().ok()
    };
    let last = kernel_log()?
        .iter()
        .filter(|l| l.contains("DMAR:"))
        .filter_map(|l| stamp(l))
        .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
    let Some(last) = last else { return Ok(()) };
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .context("reading /proc/uptime")?;
    let wait = last + WINDOW + 0.1 - uptime;
    if wait > 0.0 {
        println!("waiting {wait:.1} s for the kernel's DMAR message rate limit");
        std::thread::sleep(Duration::from_secs_f64(wait.min(WINDOW + 0.1)));
    }
    Ok(())
}

/// Waits for a DMAR fault by e1000 A at the page of `iova` logged after the first
/// `seen` lines, and returns it.
fn wait_for_dmar_fault(seen: usize, iova: u64) -> Result<String> {
    // "DMAR: [DMA Read NO_PASID] Request device [00:02.0] fault addr 0x... [fault
    // reason 0x06] PTE Read access is not set": the fault register holds the page.
    let device = format!("[{}]", &rig::E1000_A[5..]);
    let addr = format!("fault addr {:#x} ", iova & !(PAGE - 1));
    poll_until(Duration::from_secs(5), "a DMAR fault in dmesg", || {
        Ok(kernel_log()?
            .into_iter()
            .skip(seen)
            .find(|l| l.contains("DMAR") && l.contains(&device) && l.contains(&addr)))
    })
    .with_context(|| format!("no DMAR fault by {device} at {addr}in the kernel log"))
}

/// Whether any live container mapping covers an IOVA of `bus`.
fn container_reaches(container: &VfioContainer, bus: &BusSgList) -> bool {
    container.mappings().iter().any(|m| {
        bus.segments()
            .iter()
            .any(|s| IovaRange::new(s.addr, s.len).is_ok_and(|r| r.overlaps(&m.range)))
    })
}

/// After `bus` has been unmapped: transmitting from it again sends nothing from the
/// payload and logs a DMAR fault, while a fresh mapping still works (so the silence is
/// the IOMMU's doing, not a dead NIC).
fn stale_transmit_faults(
    link: &mut Link,
    payload: &[u8],
    bus: &BusSgList,
    tag: &str,
) -> Result<()> {
    ensure!(
        !container_reaches(&link.nics.container, bus),
        "the container still maps part of {} after the unmap",
        segments(bus)
    );
    wait_out_dmar_rate_limit()?;
    let seen = kernel_log()?.len();
    link.send(bus)?;
    let fault = wait_for_dmar_fault(seen, bus.segments()[0].addr.0)?;
    println!("stale transmit: {}", fault.trim());

    let marker = frame(&format!("{tag} marker"));
    link.ram.memory.copy_from(MARKER as usize, &marker)?;
    let sg = GuestSgList::from_pieces([(link.ram.gpa(MARKER), marker.len() as u64)])?;
    let marker_bus = link.policy.map_sg(&sg, DmaAccess::DeviceReads)?;
    link.send(&marker_bus)?;
    link.wait_for(&marker, "the marker frame")?;
    link.policy.unmap_sg(&marker_bus)?;
    // Frames are delivered in order; the marker went after the stale transmit.
    let frames = link.received()?;
    println!("B received: {}", describe(&frames));
    ensure!(
        count_of(&frames, payload) == 1,
        "the payload arrived {} times: the transmit from the unmapped bus address must not \
         read it",
        count_of(&frames, payload)
    );
    Ok(())
}

// -------------------------------------------------------------------- tests

/// Sends the split frame tagged `tag` through `policy` and checks B got it intact.
/// Returns the frame and its bus list (still mapped).
fn frame_through_policy(link: &mut Link, tag: &str) -> Result<(Vec<u8>, BusSgList)> {
    let payload = frame(tag);
    let sg = place_split_frame(link.ram, &payload)?;
    let bus = link.policy.map_sg(&sg, DmaAccess::DeviceReads)?;
    println!(
        "frame of {} bytes: guest {} -> bus {}",
        payload.len(),
        segments(&sg),
        segments(&bus)
    );
    ensure!(
        bus.total_len() == sg.total_len(),
        "bus list covers {} bytes, the request {}",
        bus.total_len(),
        sg.total_len()
    );
    link.send(&bus)?;
    let frames = link.wait_for(&payload, "the frame at B")?;
    ensure!(
        count_of(&frames, &payload) == 1,
        "B received the frame {} times",
        count_of(&frames, &payload)
    );
    println!("B received the {}-byte frame intact", payload.len());
    Ok((payload, bus))
}

/// Identity: the guest's RAM is one mapping at IOVA = guest-physical address; bus
/// addresses are the guest's own, the frame (two descriptors, as its pieces are not
/// contiguous) arrives intact, and removing the region removes the mapping.
fn identity_e1000_frame() -> Result<()> {
    let nics = open_nics()?;
    let ram = GuestRam::new(GUEST_RAM_LEN)?;
    let iovas = Arc::new(IovaAllocator::new(
        &nics.container.iommu_info()?.iova_ranges,
    )?);
    let policy = IdentityPolicy::new(nics.container.clone(), iovas);
    policy.add_region(ram.region.clone())?;
    let mappings = nics.container.mappings();
    ensure!(
        mappings.len() == 1
            && mappings[0].iova().0 == GUEST_RAM_GPA
            && mappings[0].len() == ram.region.len()
            && mappings[0].vaddr == ram.region.vaddr(),
        "identity mapping is {mappings:?}"
    );

    let mut link = Link::start(&nics, &ram, &policy)?;
    let (_, bus) = frame_through_policy(&mut link, "identity")?;
    let gpas: Vec<u64> = place_split_frame(&ram, &frame("identity"))?
        .segments()
        .iter()
        .map(|s| s.addr.0)
        .collect();
    let bus_addrs: Vec<u64> = bus.segments().iter().map(|s| s.addr.0).collect();
    ensure!(gpas == bus_addrs, "bus {bus_addrs:x?} != guest {gpas:x?}");
    ensure!(bus.len() == 2, "identity keeps the two pieces apart");
    policy.unmap_sg(&bus)?;
    link.stop()?;

    policy.remove_region(ram.region.gpa())?;
    ensure!(
        nics.container.mappings().is_empty(),
        "mappings left after removing the region: {:?}",
        nics.container.mappings()
    );
    Ok(())
}

/// Strict: the two non-contiguous pieces are mapped side by side, so the device sees
/// one bus segment; the frame arrives intact. A request outside the registered RAM is
/// refused with nothing mapped. After `unmap_sg` the same transmit faults in the IOMMU
/// and sends nothing of the payload.
fn strict_e1000_frame_then_unmap_faults() -> Result<()> {
    let nics = open_nics()?;
    let ram = GuestRam::new(GUEST_RAM_LEN)?;
    let iovas = Arc::new(IovaAllocator::new(
        &nics.container.iommu_info()?.iova_ranges,
    )?);
    let policy = StrictPolicy::new(nics.container.clone(), iovas);
    policy.add_region(ram.region.clone())?;
    let mut link = Link::start(&nics, &ram, &policy)?;

    let before = nics.container.mappings();
    let outside = GuestSgList::from_pieces([(
        GuestPhysAddr(GUEST_RAM_GPA + ram.region.len() - PAGE),
        2 * PAGE,
    )])?;
    let e = policy
        .map_sg(&outside, DmaAccess::DeviceReads)
        .expect_err("a request reaching past the guest's RAM was mapped");
    ensure!(matches!(e, DmaError::OutsideGuestMemory { .. }), "{e}");
    ensure!(
        nics.container.mappings() == before,
        "a refused request changed the mappings"
    );
    println!("outside the guest's RAM: {e}");

    let (payload, bus) = frame_through_policy(&mut link, "strict")?;
    ensure!(
        bus.len() == 1,
        "strict should lay the pieces end to end: {}",
        segments(&bus)
    );
    policy.unmap_sg(&bus)?;
    stale_transmit_faults(&mut link, &payload, &bus, "strict")?;
    link.stop()?;
    ensure!(
        policy.live_count() == 0,
        "{} live mappings",
        policy.live_count()
    );
    ensure!(
        nics.container.mappings().is_empty(),
        "mappings left: {:?}",
        nics.container.mappings()
    );
    Ok(())
}

/// Batched: the frame arrives intact; `unmap_sg` only queues the unmap (the mapping
/// stays until the flush), and after `flush` the same transmit faults.
fn batched_e1000_frame_then_flush_faults() -> Result<()> {
    let nics = open_nics()?;
    let ram = GuestRam::new(GUEST_RAM_LEN)?;
    let iovas = Arc::new(IovaAllocator::new(
        &nics.container.iommu_info()?.iova_ranges,
    )?);
    // No time bound within the test, so the flush happens where the test says.
    let config = BatchConfig {
        max_pending: 32,
        max_delay: Duration::from_secs(3600),
    };
    let policy = BatchedPolicy::new(nics.container.clone(), iovas, config);
    policy.add_region(ram.region.clone())?;
    let mut link = Link::start(&nics, &ram, &policy)?;

    let (payload, bus) = frame_through_policy(&mut link, "batched")?;
    policy.unmap_sg(&bus)?;
    ensure!(
        policy.pending_count() == 1,
        "{} unmaps queued, want 1",
        policy.pending_count()
    );
    ensure!(
        container_reaches(&nics.container, &bus),
        "the unmap was not deferred"
    );
    policy.flush()?;
    ensure!(policy.pending_count() == 0, "queue not empty after flush");
    stale_transmit_faults(&mut link, &payload, &bus, "batched")?;
    link.stop()?;
    ensure!(
        nics.container.mappings().is_empty(),
        "mappings left: {:?}",
        nics.container.mappings()
    );
    Ok(())
}

// --------------------------------------------------------------- benchmarks

/// Counts the calls that reach the VFIO container: one call, one ioctl. Batch calls
/// use the trait's defaults, which call `map`/`unmap` once per range, as the container
/// does.
struct CountingMapper<M> {
    inner: M,
    maps: AtomicU64,
    unmaps: AtomicU64,
}

impl<M: DmaMapper> CountingMapper<M> {
    fn new(inner: M) -> CountingMapper<M> {
        CountingMapper {
            inner,
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
        }
    }

    /// (maps, unmaps) since the last call.
    fn take(&self) -> (u64, u64) {
        (
            self.maps.swap(0, Ordering::Relaxed),
            self.unmaps.swap(0, Ordering::Relaxed),
        )
    }
}

impl<M: DmaMapper> DmaMapper for CountingMapper<M> {
    fn page_size(&self) -> u64 {
        self.inner.page_size()
    }

    unsafe fn map(&self, mapping: &DmaMapping) -> Result<(), DmaError> {
        self.maps.fetch_add(1, Ordering::Relaxed);
        // SAFETY: passed on from our caller.
        unsafe { self.inner.map(mapping) }
    }

    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        self.inner.unmap(range)
    }
}

/// A container with e1000 A's group attached (which sets the IOMMU up); the device is
/// not opened, so nothing does DMA.
fn bench_container() -> Result<(VfioContainer, VfioGroup)> {
    let id = rig::bind_to_vfio(rig::E1000_A)?;
    let container = VfioContainer::open()?;
    let group = VfioGroup::open(id)?;
    container.attach(&group)?;
    Ok((container, group))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs each of `runs` once per round for `rounds` rounds, rotating which goes first,
/// and returns each one's seconds per round.
fn interleaved(
    rounds: usize,
    runs: &mut [&mut dyn FnMut() -> Result<()>],
) -> Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(rounds); runs.len()];
    for round in 0..rounds {
        for k in 0..runs.len() {
            let i = (round + k) % runs.len();
            let started = Instant::now();
            (runs[i])()?;
            times[i].push(started.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// The VFIO type1 uapi structs, for issuing the ioctls without udriver.
#[repr(C)]
struct VfioDmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct VfioDmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// `_IO(VFIO_TYPE, VFIO_BASE + 13)` and `+ 14`.
const VFIO_IOMMU_MAP_DMA: libc::Ioctl = 0x3b71;
const VFIO_IOMMU_UNMAP_DMA: libc::Ioctl = 0x3b72;
const VFIO_DMA_MAP_FLAG_READ: u32 = 1;
const VFIO_DMA_MAP_FLAG_WRITE: u32 = 2;

/// VFIO_IOMMU_MAP_DMA / UNMAP_DMA issued straight on a container's fd, with none of
/// udriver's checks or bookkeeping: the cost of the ioctl itself. Only for memory that
/// outlives every mapping made of it (the benchmark's guest RAM).
struct BareIoctls {
    container: VfioContainer,
}

impl DmaMapper for BareIoctls {
    unsafe fn map(&self, m: &DmaMapping) -> Result<(), DmaError> {
        let mut flags = 0;
        if m.access.device_reads() {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if m.access.device_writes() {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let arg = VfioDmaMap {
            argsz: std::mem::size_of::<VfioDmaMap>() as u32,
            flags,
            vaddr: m.vaddr.0,
            iova: m.iova().0,
            size: m.len(),
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.container.as_fd());
        // SAFETY: `arg` is a live vfio_iommu_type1_dma_map that the kernel only reads;
        // the memory it names is owned for DMA until unmapped, as our caller promised.
        let r = unsafe { libc::ioctl(fd, VFIO_IOMMU_MAP_DMA, &arg as *const VfioDmaMap) };
        if r != 0 {
            return Err(DmaError::Backend {
                op: "VFIO_IOMMU_MAP_DMA",
                range: m.range,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        let mut arg = VfioDmaUnmap {
            argsz: std::mem::size_of::<VfioDmaUnmap>() as u32,
            flags: 0,
            iova: range.start().0,
            size: range.len(),
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.container.as_fd());
        // SAFETY: `arg` is a live vfio_iommu_type1_dma_unmap, which the kernel reads and
        // writes (the bytes unmapped) in place.
        let r = unsafe { libc::ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &mut arg as *mut VfioDmaUnmap) };
        if r != 0 {
            return Err(DmaError::Backend {
                op: "VFIO_IOMMU_UNMAP_DMA",
                range,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(arg.size)
    }
}

/// Maps nothing: what a policy costs by itself.
struct NoIommu;

impl DmaMapper for NoIommu {
    unsafe fn map(&self, _mapping: &DmaMapping) -> Result<(), DmaError> {
        Ok(())
    }

    fn unmap(&self, range: IovaRange) -> Result<u64, DmaError> {
        Ok(range.len())
    }
}

/// A strict policy over `mapper` with its own allocator on `windows`, over `ram`.
fn strict_policy<M: DmaMapper>(
    mapper: M,
    windows: &[IovaRange],
    ram: &GuestRam,
) -> Result<StrictPolicy<M>> {
    let policy = StrictPolicy::new(mapper, Arc::new(IovaAllocator::new(windows)?));
    policy.add_region(ram.region.clone())?;
    Ok(policy)
}

/// The first bus address `policy` gives each of `requests`, all mapped and then all
/// unmapped again.
fn picked_iovas<M: DmaMapper>(
    policy: &StrictPolicy<M>,
    requests: &[GuestSgList],
) -> Result<Vec<Iova>> {
    let bus: Vec<BusSgList> = requests
        .iter()
        .map(|sg| policy.map_sg(sg, DmaAccess::DeviceReads))
        .collect::<Result<_, _>>()?;
    for b in &bus {
        policy.unmap_sg(b)?;
    }
    Ok(bus.iter().map(|b| b.segments()[0].addr).collect())
}

/// N single-page requests and the mappings a plain mapper makes for the same pages at
/// the IOVAs the strict policy will pick.
struct SinglePages {
    requests: Vec<GuestSgList>,
    mappings: Vec<DmaMapping>,
    windows: Vec<IovaRange>,
}

impl SinglePages {
    fn new(ram: &GuestRam, n: u64, windows: Vec<IovaRange>) -> Result<SinglePages> {
        // Every other page, so that no two requests are neighbours in guest memory.
        let pages: Vec<u64> = (0..n).map(|i| 2 * i * PAGE).collect();
        let requests = pages
            .iter()
            .map(|o| GuestSgList::from_pieces([(ram.gpa(*o), PAGE)]))
            .collect::<Result<_, _>>()?;
        let mut pages = SinglePages {
            requests,
            mappings: Vec::new(),
            windows,
        };
        // A strict policy over a fresh allocator picks the same IOVAs every time (each
        // run returns it to the same state): ask one which, so that every run maps the
        // same pages at the same IOVAs, through the same IOMMU page tables.
        let picked = picked_iovas(&pages.strict_unchecked(NoIommu, ram)?, &pages.requests)?;
        // `through_mapper` maps these pages straight through a mapper.
        ram.keep_forever();
        pages.mappings = pages
            .requests
            .iter()
            .zip(picked)
            .map(|(sg, iova)| {
                let offset = sg.segments()[0].addr.0 - GUEST_RAM_GPA;
                DmaMapping::new(
                    iova,
                    dma::HostVirtAddr(ram.region.vaddr().0 + offset),
                    PAGE,
                    DmaAccess::DeviceReads,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(pages)
    }

    fn strict_unchecked<M: DmaMapper>(&self, mapper: M, ram: &GuestRam) -> Result<StrictPolicy<M>> {
        strict_policy(mapper, &self.windows, ram)
    }

    /// A strict policy over `mapper` with its own allocator on the same windows, checked
    /// to pick the IOVAs of `mappings`.
    fn strict<M: DmaMapper>(&self, mapper: M, ram: &GuestRam) -> Result<StrictPolicy<M>> {
        let policy = self.strict_unchecked(mapper, ram)?;
        let picked = picked_iovas(&policy, &self.requests)?;
        let planned: Vec<Iova> = self.mappings.iter().map(DmaMapping::iova).collect();
        ensure!(
            picked == planned,
            "strict picked IOVAs {:x?}.., the plain mapper uses {:x?}..: not the same IOVAs",
            &picked[..picked.len().min(4)],
            &planned[..planned.len().min(4)]
        );
        Ok(policy)
    }

    /// All requests through `policy`: map_sg each, then unmap_sg each.
    fn through_policy<M: DmaMapper>(
        &self,
        policy: &StrictPolicy<M>,
        bus_lists: &mut Vec<BusSgList>,
    ) -> Result<()> {
        for sg in &self.requests {
            bus_lists.push(policy.map_sg(sg, DmaAccess::DeviceReads)?);
        }
        for bus in bus_lists.drain(..) {
            policy.unmap_sg(&bus)?;
        }
        Ok(())
    }

    /// The same pages straight through `mapper`: map each, then unmap each. `ram` is
    /// the memory `mappings` were planned in.
    fn through_mapper(&self, mapper: &dyn DmaMapper, ram: &GuestRam) -> Result<()> {
        for m in &self.mappings {
            ensure!(ram.memory.offset_of_ptr(m.vaddr.0 as *const u8).is_some());
            // SAFETY: the page lies in `ram` (checked above), whose memory is never freed
            // (`GuestRam::keep_forever`, called where the pages were planned).
            unsafe { mapper.map(m)? };
        }
        for m in &self.mappings {
            mapper.unmap(m.range)?;
        }
        Ok(())
    }
}

/// µs per request of each run's seconds per round.
fn per_request(times: &[f64], n: u64) -> Vec<f64> {
    times.iter().map(|s| s * 1e6 / n as f64).collect()
}

/// The per-round ratios `x[i] / y[i]` (drift in the host's load cancels out within a
/// round) as "median (quartiles q1-q3)".
fn paired_ratio(x: &[f64], y: &[f64]) -> String {
    let mut r: Vec<f64> = x.iter().zip(y).map(|(a, b)| a / b).collect();
    r.sort_by(f64::total_cmp);
    let at = |q: f64| r[((r.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:.3} (quartiles {:.3}-{:.3})",
        median(r.clone()),
        at(0.25),
        at(0.75)
    )
}

/// N single-page requests, all mapped and then all unmapped, five ways in one set of
/// interleaved rounds (so every ratio is paired within a round, and drift in the
/// host's load cancels): bare VFIO_IOMMU_MAP_DMA + UNMAP_DMA ioctls on the container's
/// fd (the ioctl's own cost, the baseline), the container's `DmaMapper::map`/`unmap`,
/// strict `map_sg` + `unmap_sg` over the container (what a user runs: the issue's
/// goal), strict over bare ioctls, and strict over no IOMMU (the policy's own cost).
/// Same pages, same IOVAs, in every run.
fn map_sg_vs_raw_ioctl() -> Result<()> {
    const N: u64 = 256;
    const ROUNDS: usize = 301;
    let (container, _group) = bench_container()?;
    let ram = GuestRam::new((2 * N * PAGE) as usize)?;
    let pages = SinglePages::new(&ram, N, container.iommu_info()?.iova_ranges)?;
    let bare = BareIoctls {
        container: container.clone(),
    };
    let strict_container = pages.strict(container.clone(), &ram)?;
    let strict_bare = pages.strict(&bare, &ram)?;
    let strict_alone = pages.strict(NoIommu, &ram)?;
    // One list of bus addresses per policy run, allocated once, outside the timing.
    let mut bus: [Vec<BusSgList>; 3] = std::array::from_fn(|_| Vec::with_capacity(N as usize));
    let [bus_c, bus_b, bus_a] = &mut bus;

    let times = interleaved(
        ROUNDS,
        &mut [
            &mut || pages.through_mapper(&bare, &ram),
            &mut || pages.through_mapper(&container, &ram),
            &mut || pages.through_policy(&strict_container, bus_c),
            &mut || pages.through_policy(&strict_bare, bus_b),
            &mut || pages.through_policy(&strict_alone, bus_a),
        ],
    )?;
    ensure!(
        container.mappings().is_empty(),
        "mappings left after the runs"
    );
    ensure!(
        strict_container.live_count() + strict_bare.live_count() == 0,
        "requests left mapped after the runs"
    );

    let [bare_t, container_t, strict_t, strict_bare_t, alone_t] =
        [0, 1, 2, 3, 4].map(|i| per_request(&times[i], N));
    let m = |t: &[f64]| median(t.to_vec());
    println!(
        "{N} single-page requests, all mapped then all unmapped; µs per request (one map + \
         one unmap), medians of {ROUNDS} interleaved rounds; ratios are per-round paired \
         medians:"
    );
    println!("  bare map+unmap ioctls (baseline)     {:>8.2}", m(&bare_t));
    println!(
        "  strict map_sg+unmap_sg, VfioContainer{:>8.2}   vs bare {} (goal <= 1.05)",
        m(&strict_t),
        paired_ratio(&strict_t, &bare_t)
    );
    println!("  where the time goes:");
    println!(
        "    VfioContainer map+unmap            {:>8.2}   vs bare {}",
        m(&container_t),
        paired_ratio(&container_t, &bare_t)
    );
    println!(
        "    strict over VfioContainer          {:>8.2}   vs container {}",
        m(&strict_t),
        paired_ratio(&strict_t, &container_t)
    );
    println!(
        "    strict over bare ioctls            {:>8.2}   vs bare {}",
        m(&strict_bare_t),
        paired_ratio(&strict_bare_t, &bare_t)
    );
    println!(
        "    strict policy alone (no IOMMU)     {:>8.2}   {:.1}% of a bare map+unmap",
        m(&alone_t),
        100.0 * m(&alone_t) / m(&bare_t)
    );
    Ok(())
}

/// The goal read literally: one strict `map_sg` of a list of N single pages
/// (scattered: no two neighbours in guest memory, so N mappings) against the same N
/// bare VFIO_IOMMU_MAP_DMA ioctls at the same IOVAs; only the maps are timed. The
/// unmaps follow outside the timing (the strict policy removes a request with one
/// range unmap, and so does each other side). Also timed, to show where the time
/// goes: the container's `map` per page, strict over bare ioctls, and strict over no
/// IOMMU. Rounds rotate which side goes first.
fn map_sg_list_vs_raw_ioctls() -> Result<()> {
    const ROUNDS: usize = 301;
    let (container, _group) = bench_container()?;
    let bare = BareIoctls {
        container: container.clone(),
    };
    let windows = container.iommu_info()?.iova_ranges;
    println!(
        "one strict map_sg of N scattered single pages vs N bare VFIO_IOMMU_MAP_DMA ioctls; \
         µs per page for the maps alone, medians of {ROUNDS} rounds; ratios are per-round \
         paired medians against bare:"
    );
    println!(
        "{:>4} {:>7} {:>7} {:>7} {:>7}   {:<32} {:<32} {:<32}",
        "N",
        "bare",
        "strict",
        "contnr",
        "alone",
        "strict/bare (goal <= 1.05)",
        "container/bare",
        "strict over bare ioctls/bare"
    );
    for n in [1u64, 8, 64] {
        let ram = GuestRam::new((2 * n * PAGE) as usize)?;
        // `plain` maps its pages straight through a mapper.
        ram.keep_forever();
        let list = GuestSgList::from_pieces((0..n).map(|i| (ram.gpa(2 * i * PAGE), PAGE)))?;
        let strict_container = strict_policy(container.clone(), &windows, &ram)?;
        let strict_bare = strict_policy(&bare, &windows, &ram)?;
        let strict_alone = strict_policy(NoIommu, &windows, &ram)?;
        // The IOVAs strict picks for this list (the same every round: each round gives
        // them back), so that the plain mappers map the same pages at the same IOVAs.
        let probe = strict_container.map_sg(&list, DmaAccess::DeviceReads)?;
        strict_container.unmap_sg(&probe)?;
        let start = probe.segments()[0].addr;
        let whole = IovaRange::new(start, n * PAGE)?;
        let planned: Vec<DmaMapping> = (0..n)
            .map(|i| {
                DmaMapping::new(
                    Iova(start.0 + i * PAGE),
                    dma::HostVirtAddr(ram.region.vaddr().0 + 2 * i * PAGE),
                    PAGE,
                    DmaAccess::DeviceReads,
                )
            })
            .collect::<Result<_, _>>()?;

        // Each side maps (timed) and unmaps (not timed); returns the map's seconds.
        let plain = |mapper: &dyn DmaMapper| -> Result<f64> {
            let started = Instant::now();
            for m in &planned {
                // SAFETY: the pages lie in `ram` (planned from its address), whose
                // memory is never freed (`keep_forever` above).
                unsafe { mapper.map(m)? };
            }
            let t = started.elapsed().as_secs_f64();
            mapper.unmap(whole)?;
            Ok(t)
        };
        let policy = |policy: &dyn DmaPolicy| -> Result<f64> {
            let started = Instant::now();
            let bus = policy.map_sg(&list, DmaAccess::DeviceReads)?;
            let t = started.elapsed().as_secs_f64();
            ensure!(
                bus.segments()[0].addr == start,
                "strict picked IOVA {:#x}, {:#x} before: not the IOVAs the plain mappers use",
                bus.segments()[0].addr.0,
                start.0
            );
            policy.unmap_sg(&bus)?;
            Ok(t)
        };
        let sides: [&dyn Fn() -> Result<f64>; 5] = [
            &|| plain(&bare),
            &|| policy(&strict_container),
            &|| plain(&container),
            &|| policy(&strict_alone),
            &|| policy(&strict_bare),
        ];
        let mut times = vec![Vec::with_capacity(ROUNDS); sides.len()];
        for round in 0..ROUNDS {
            for k in 0..sides.len() {
                let i = (round + k) % sides.len();
                times[i].push(sides[i]()?);
            }
        }
        ensure!(
            container.mappings().is_empty() && strict_container.live_count() == 0,
            "mappings left after the N={n} runs"
        );
        let t: Vec<Vec<f64>> = times.iter().map(|t| per_request(t, n)).collect();
        println!(
            "{n:>4} {:>7.2} {:>7.2} {:>7.2} {:>7.2}   {:<32} {:<32} {:<32}",
            median(t[0].clone()),
            median(t[1].clone()),
            median(t[2].clone()),
            median(t[3].clone()),
            paired_ratio(&t[1], &t[0]),
            paired_ratio(&t[2], &t[0]),
            paired_ratio(&t[4], &t[0]),
        );
    }
    Ok(())
}

/// A 64-page list, mapped and unmapped 16 times by: a page-at-a-time mapper (no
/// coalescing, the baseline), strict `map_sg` (coalesced), and batched `map_sg` (unmaps
/// deferred and merged); for a contiguous list and for one of scattered pages. Counts
/// the container calls (ioctls) of each and times them.
fn ioctls_for_64_page_sg() -> Result<()> {
    const PAGES: u64 = 64;
    const REQUESTS: u64 = 16;
    const ROUNDS: usize = 5;
    let (container, _group) = bench_container()?;
    let counter = Arc::new(CountingMapper::new(container.clone()));
    let ram = GuestRam::new((2 * PAGES * PAGE) as usize)?;
    // `per_page` maps its pages straight through the counting mapper.
    ram.keep_forever();
    let iovas = Arc::new(IovaAllocator::new(&container.iommu_info()?.iova_ranges)?);
    let strict = StrictPolicy::new(counter.clone(), iovas.clone());
    strict.add_region(ram.region.clone())?;
    let batched = BatchedPolicy::new(
        counter.clone(),
        iovas.clone(),
        BatchConfig {
            max_pending: 32,
            max_delay: Duration::from_secs(3600),
        },
    );
    batched.add_region(ram.region.clone())?;

    let lists = [
        (
            "contiguous",
            GuestSgList::from_pieces((0..PAGES).map(|i| (ram.gpa(i * PAGE), PAGE)))?,
        ),
        (
            "scattered",
            GuestSgList::from_pieces((0..PAGES).map(|i| (ram.gpa(2 * i * PAGE), PAGE)))?,
        ),
    ];
    println!(
        "a 64-page sg list mapped and unmapped {REQUESTS} times; ioctls and µs per request \
         (time: median of {ROUNDS} interleaved rounds); ratios against per-page:"
    );
    println!(
        "{:>11} {:>9} {:>6} {:>7} {:>7} {:>9} {:>10} {:>9}",
        "list", "policy", "maps", "unmaps", "ioctls", "ratio", "µs", "ratio"
    );
    for (name, sg) in &lists {
        let per_page = || -> Result<()> {
            for _ in 0..REQUESTS {
                let mut ranges = Vec::with_capacity(PAGES as usize);
                for page in sg.pages(PAGE) {
                    let r = iovas.alloc(PAGE, PAGE)?;
                    let vaddr = ram.region.vaddr().0 + (page.0 - GUEST_RAM_GPA);
                    let mapping = DmaMapping::new(
                        r.start(),
                        dma::HostVirtAddr(vaddr),
                        PAGE,
                        DmaAccess::ReadWrite,
                    )?;
                    // SAFETY: the page lies in `ram`, whose memory is never freed
                    // (`keep_forever` above).
                    unsafe { counter.map(&mapping)? };
                    ranges.push(r);
                }
                for r in ranges {
                    counter.unmap(r)?;
                    iovas.free(r)?;
                }
            }
            Ok(())
        };
        let through = |policy: &dyn DmaPolicy| -> Result<()> {
            for _ in 0..REQUESTS {
                let bus = policy.map_sg(sg, DmaAccess::ReadWrite)?;
                policy.unmap_sg(&bus)?;
            }
            policy.flush()?;
            Ok(())
        };
        // Counts from one run of each.
        let mut counts = Vec::new();
        counter.take();
        for run in [
            &per_page as &dyn Fn() -> Result<()>,
            &|| through(&strict),
            &|| through(&batched),
        ] {
            run()?;
            counts.push(counter.take());
        }
        let times = interleaved(
            ROUNDS,
            &mut [&mut || per_page(), &mut || through(&strict), &mut || {
                through(&batched)
            }],
        )?;
        counter.take();
        ensure!(
            container.mappings().is_empty(),
            "mappings left after the {name} runs"
        );
        let base_ioctls = (counts[0].0 + counts[0].1) as f64;
        let base_time = median(times[0].clone());
        for (i, policy) in ["per-page", "strict", "batched"].iter().enumerate() {
            let (maps, unmaps) = counts[i];
            let per = |n: u64| n as f64 / REQUESTS as f64;
            let t = median(times[i].clone());
            println!(
                "{name:>11} {policy:>9} {:>6.2} {:>7.3} {:>7.2} {:>9.3} {:>10.1} {:>9.3}",
                per(maps),
                per(unmaps),
                per(maps + unmaps),
                (maps + unmaps) as f64 / base_ioctls,
                t * 1e6 / REQUESTS as f64,
                t / base_time
            );
        }
        ensure!(
            counts[0] == (PAGES * REQUESTS, PAGES * REQUESTS),
            "per-page issued {:?}",
            counts[0]
        );
        if *name == "contiguous" {
            ensure!(
                counts[1] == (REQUESTS, REQUESTS),
                "strict did not coalesce the contiguous list into one mapping: {:?}",
                counts[1]
            );
        }
        ensure!(
            counts[2].1 < counts[1].1,
            "batching issued no fewer unmaps ({:?}) than strict ({:?})",
            counts[2],
            counts[1]
        );
    }
    Ok(())
}
