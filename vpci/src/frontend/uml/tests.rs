//! The UML frontend against a real vhost-user front-end (the `vhost` crate's
//! `Frontend`) that behaves as UML does: memfd memory in SET_MEM_TABLE, two split
//! vrings, commands posted and answers polled on the used ring, interrupt buffers
//! posted on queue 1. The device is the passthrough tests' e1000e fake; the IOMMU a
//! `RecordingMapper`.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::dma::{DmaMapper, Iova, RecordingMapper};
use udriver::vfio::IrqIndex;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::bar::BarIndex;
use crate::config_regs::command;
use crate::frontend::virtio_pcidev::{op, Header, HEADER_LEN, IRQ_MESSAGE_LEN};
use crate::passthrough::fake_device::{FakeDevice, IrqOp};
use crate::passthrough::tests::e1000e;
use crate::passthrough::{DeviceError, DeviceRegion, PassthroughDevice};

/// UML-like guest memory: 1 MiB at UML physical 1 MiB.
const GPA: u64 = 0x10_0000;
const RAM: usize = 0x10_0000;
const QUEUE_SIZE: u16 = 16;
const E1000E_STATUS: u32 = 0x8008_0783;
/// e1000e fake: MSI-X capability at 0xa0, table in BAR3 at 0, 5 vectors.
const MSIX_CONTROL: u64 = 0xa2;
const MSIX_BAR: u8 = 3;
const UML_MSI_ADDRESS: u64 = 0xa0000;
const TIMEOUT: Duration = Duration::from_secs(5);
/// `VRING_USED_F_NO_NOTIFY`: the back-end asks the driver not to kick.
const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// A poll window no test waits out: polling must end for other reasons.
const LONG_POLL: Duration = Duration::from_secs(60);

/// The fake, shared so the test can fire its vectors while the frontend owns it.
#[derive(Clone)]
struct SharedFake(Arc<FakeDevice>);

impl PassthroughDevice for SharedFake {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn config_len(&self) -> usize {
        self.0.config_len()
    }
    fn read_config(&self, offset: u16, data: &mut [u8]) -> Result<(), DeviceError> {
        self.0.read_config(offset, data)
    }
    fn write_config(&self, offset: u16, data: &[u8]) -> Result<(), DeviceError> {
        self.0.write_config(offset, data)
    }
    fn region(&self, index: BarIndex) -> Option<DeviceRegion> {
        self.0.region(index)
    }
    fn read_region(
        &self,
        index: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        self.0.read_region(index, offset, data)
    }
    fn write_region(&self, index: BarIndex, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.0.write_region(index, offset, data)
    }
    fn irq_count(&self, index: IrqIndex) -> u32 {
        self.0.irq_count(index)
    }
    fn wire_irqs(
        &self,
        index: IrqIndex,
        eventfds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), DeviceError> {
        self.0.wire_irqs(index, eventfds)
    }
    fn disable_irqs(&self, index: IrqIndex) -> Result<(), DeviceError> {
        self.0.disable_irqs(index)
    }
    fn unmask_intx(&self) -> Result<(), DeviceError> {
        self.0.unmask_intx()
    }
    fn set_irqs(
        &self,
        index: IrqIndex,
        action: udriver::vfio::IrqAction,
        start: u32,
        data: udriver::vfio::IrqData<'_>,
    ) -> Result<(), DeviceError> {
        self.0.set_irqs(index, action, start, data)
    }
    fn can_reset(&self) -> bool {
        self.0.can_reset()
    }
    fn reset(&self) -> Result<(), DeviceError> {
        self.0.reset()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: Arc<FakeDevice>,
    mapper: Arc<RecordingMapper>,
    frontend: Option<UmlFrontend<SharedFake>>,
}

impl Rig {
    fn start() -> Self {
        Self::start_with(WorkerOptions::default())
    }

    fn start_with(worker: WorkerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("uml.sock");
        let fake = Arc::new(e1000e());
        let function = PassthroughFunction::new(SharedFake(fake.clone())).unwrap();
        let mapper = Arc::new(RecordingMapper::new());
        let frontend = UmlFrontend::start_with(
            function,
            mapper.clone() as Arc<dyn DmaMapper>,
            &socket,
            worker,
        )
        .unwrap();
        Self {
            _dir: dir,
            socket,
            fake,
            mapper,
            frontend: Some(frontend),
        }
    }

    fn frontend(&self) -> &UmlFrontend<SharedFake> {
        self.frontend.as_ref().unwrap()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&FrontendStatus) -> bool) -> FrontendStatus {
        let started = Instant::now();
        loop {
            let status = self.frontend().status();
            if done(&status) {
                return status;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "timed out waiting for {what}: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One split virtqueue in the test guest's memory.
struct TestQueue {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl TestQueue {
    fn new(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Post a chain of (guest address, length, device-writable) buffers.
    fn post(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % QUEUE_SIZE;
            let next = (index + 1) % QUEUE_SIZE;
            let mut flags = if writable { 2u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= 1;
            }
            let at = GuestAddress(self.desc + u64::from(index) * 16);
            mem.write_obj(addr, at).unwrap();
            mem.write_obj(len, at.unchecked_add(8)).unwrap();
            mem.write_obj(flags, at.unchecked_add(12)).unwrap();
            mem.write_obj(next, at.unchecked_add(14)).unwrap();
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % QUEUE_SIZE;
        let slot = GuestAddress(self.avail + 4 + u64::from(self.avail_idx % QUEUE_SIZE) * 2);
        mem.write_obj(head, slot).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        fence(Ordering::SeqCst);
        head
    }

    /// The used ring's flags: `VRING_USED_F_NO_NOTIFY` while the back-end wants no kicks.
    fn used_flags(&self, mem: &GuestMemoryMmap) -> u16 {
        fence(Ordering::SeqCst);
        mem.read_obj(GuestAddress(self.used)).unwrap()
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        fence(Ordering::SeqCst);
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// The next used entry (id, len), waiting for it like UML's busy-wait does.
    fn wait_used(&mut self, mem: &GuestMemoryMmap) -> (u32, u32) {
        let started = Instant::now();
        while self.used_idx(mem) == self.used_seen {
            assert!(
                started.elapsed() < TIMEOUT,
                "the back-end never used a posted chain"
            );
            std::thread::yield_now();
        }
        let at = GuestAddress(self.used + 4 + u64::from(self.used_seen % QUEUE_SIZE) * 8);
        self.used_seen = self.used_seen.wrapping_add(1);
        (
            mem.read_obj(at).unwrap(),
            mem.read_obj(at.unchecked_add(4)).unwrap(),
        )
    }
}

/// A UML stand-in: its memory, its two queues, and the vhost-user connection.
struct Guest {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    cmd: TestQueue,
    irq: TestQueue,
    kicks: [EventFd; 2],
    calls: [EventFd; 2],
    /// Next free buffer address (a bump allocator from 64 KiB up).
    next_buffer: u64,
}

fn guest_memory() -> (GuestMemoryMmap, File) {
    let fd =
        nix::sys::memfd::memfd_create(c"uml-test-ram", nix::sys::memfd::MFdFlags::empty()).unwrap();
    let file = File::from(fd);
    file.set_len(RAM as u64).unwrap();
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(GPA),
        RAM,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    (mem, file)
}

/// The memory table entry for all of a [`guest_memory`]: its RAM at `GPA`.
fn whole_ram(mem: &GuestMemoryMmap, file: &File) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: GPA,
        memory_size: RAM as u64,
        userspace_addr: mem.get_host_address(GuestAddress(GPA)).unwrap() as u64,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }
}

impl Guest {
    /// Connect and set up as UML's virtio_uml does.
    fn connect(socket: &Path) -> Self {
        let (mem, file) = guest_memory();
        let host = mem.get_host_address(GuestAddress(GPA)).unwrap() as u64;
        let mut frontend = Frontend::connect(socket, 2).unwrap();
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        assert_ne!(features & (1 << 30), 0, "no VHOST_USER_F_PROTOCOL_FEATURES");
        assert_ne!(features & (1 << 32), 0, "no VIRTIO_F_VERSION_1");
        let protocol = frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(protocol & VhostUserProtocolFeatures::REPLY_ACK)
            .unwrap();
        // As UML does: every request after this one waits for the back-end's ack.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        frontend.set_features(features).unwrap();
        frontend.set_mem_table(&[whole_ram(&mem, &file)]).unwrap();
        let cmd = TestQueue::new(GPA);
        let irq = TestQueue::new(GPA + 0x4000);
        let kicks = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        let calls = [
            EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
            EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        ];
        for (i, q) in [&cmd, &irq].into_iter().enumerate() {
            frontend.set_vring_num(i, QUEUE_SIZE).unwrap();
            frontend.set_vring_base(i, 0).unwrap();
            frontend
                .set_vring_addr(
                    i,
                    &VringConfigData {
                        queue_max_size: QUEUE_SIZE,
                        queue_size: QUEUE_SIZE,
                        flags: 0,
                        desc_table_addr: host + (q.desc - GPA),
                        used_ring_addr: host + (q.used - GPA),
                        avail_ring_addr: host + (q.avail - GPA),
                        log_addr: None,
                    },
                )
                .unwrap();
            frontend.set_vring_call(i, &calls[i]).unwrap();
        }
        for (i, kick) in kicks.iter().enumerate() {
            frontend.set_vring_kick(i, kick).unwrap();
            frontend.set_vring_enable(i, true).unwrap();
        }
        Self {
            frontend,
            mem,
            cmd,
            irq,
            kicks,
            calls,
            next_buffer: GPA + 0x1_0000,
        }
    }

    fn buffer(&mut self, bytes: &[u8]) -> u64 {
        let at = self.next_buffer;
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        self.next_buffer += (bytes.len() as u64).max(1).next_multiple_of(64);
        if self.next_buffer > GPA + RAM as u64 - 0x1000 {
            self.next_buffer = GPA + 0x1_0000;
        }
        at
    }

    /// Post a chain on the command queue, kick, and wait for it to be used; returns the
    /// bytes written into each writable buffer.
    fn command(&mut self, chain: &[Piece<'_>]) -> Vec<Vec<u8>> {
        let posted = self.post_command(chain);
        self.kicks[0].write(1).unwrap();
        self.finish_command(posted)
    }

    /// Post a chain on the command queue without kicking; returns its head and where
    /// its answers go.
    fn post_command(&mut self, chain: &[Piece<'_>]) -> (u16, Vec<(u64, usize)>) {
        let mut bufs = Vec::new();
        let mut answers = Vec::new();
        for piece in chain {
            match piece {
                Piece::Out(bytes) => bufs.push((self.buffer(bytes), bytes.len() as u32, false)),
                Piece::In(len) => {
                    let at = self.buffer(&vec![0x5a; *len]);
                    answers.push((at, *len));
                    bufs.push((at, *len as u32, true));
                }
            }
        }
        let head = self.cmd.post(&self.mem, &bufs);
        (head, answers)
    }

    /// Wait for a posted chain to be used; returns the bytes written into each
    /// writable buffer.
    fn finish_command(&mut self, (head, answers): (u16, Vec<(u64, usize)>)) -> Vec<Vec<u8>> {
        let (id, _) = self.cmd.wait_used(&self.mem);
        assert_eq!(id, u32::from(head), "used out of order");
        answers
            .into_iter()
            .map(|(at, len)| {
                let mut bytes = vec![0; len];
                self.mem.read_slice(&mut bytes, GuestAddress(at)).unwrap();
                bytes
            })
            .collect()
    }

    fn config_read(&mut self, offset: u64, size: u32) -> u64 {
        let header = message(op::CFG_READ, 0, size, offset, &[]);
        let answer = self.command(&[Piece::Out(&header), Piece::In(size as usize)]);
        let mut value = [0u8; 8];
        value[..size as usize].copy_from_slice(&answer[0]);
        u64::from_le_bytes(value)
    }

    /// As virtio_pcidev_cfgspace_write sends it: the header and 8 data bytes.
    fn config_write(&mut self, offset: u64, size: u32, value: u64) {
        let msg = message(op::CFG_WRITE, 0, size, offset, &value.to_le_bytes());
        self.command(&[Piece::Out(&msg)]);
    }

    fn mmio_read(&mut self, bar: u8, offset: u64, len: usize) -> Vec<u8> {
        let header = message(op::MMIO_READ, bar, len as u32, offset, &[]);
        self.command(&[Piece::Out(&header), Piece::In(len)])
            .remove(0)
    }

    fn mmio_write32(&mut self, bar: u8, offset: u64, value: u32) {
        let msg = message(op::MMIO_WRITE, bar, 4, offset, &value.to_le_bytes());
        self.command(&[Piece::Out(&msg)]);
    }

    /// Post `count` interrupt buffers as virtio_pcidev_init_vqs does, and kick.
    fn post_irq_buffers(&mut self, count: usize) -> Vec<u64> {
        let addrs = self.post_irq_buffers_without_kick(count);
        self.kicks[1].write(1).unwrap();
        addrs
    }

    /// Post `count` interrupt buffers, as UML does when the back-end suppressed kicks.
    fn post_irq_buffers_without_kick(&mut self, count: usize) -> Vec<u64> {
        let mut addrs = Vec::new();
        for _ in 0..count {
            let at = self.buffer(&[0u8; IRQ_MESSAGE_LEN]);
            self.irq
                .post(&self.mem, &[(at, IRQ_MESSAGE_LEN as u32, true)]);
            addrs.push(at);
        }
        addrs
    }

    /// Opens a polling window with a kicked config read, from an idle worker: windows
    /// the guest's earlier commands set going end first. A kick sent while a window
    /// polls is left pending and ends that window, and commands posted before the worker
    /// polls again are served by the event loop rather than found by polling. Idle is
    /// kicks wanted and no window, still so a while later: between a window that ended
    /// and the one a pending kick opens, both hold for a moment.
    fn start_a_quiet_window(&mut self, rig: &Rig) {
        loop {
            self.wait_kicks_wanted(true);
            rig.wait_for("the windows already opened to end", |s| !s.polling);
            std::thread::sleep(Duration::from_millis(100));
            let kicks_wanted = self.cmd.used_flags(&self.mem) & VRING_USED_F_NO_NOTIFY == 0;
            if kicks_wanted && !rig.frontend().status().polling {
                break;
            }
        }
        assert_eq!(self.config_read(0, 2), 0x8086);
        self.wait_kicks_wanted(false);
    }

    /// Wait until the back-end asks for kicks on the command queue (`true`) or for
    /// none. The irq queue wants none either way while no interrupt message waits.
    fn wait_kicks_wanted(&self, wanted: bool) {
        let started = Instant::now();
        let want = if wanted { 0 } else { VRING_USED_F_NO_NOTIFY };
        while self.cmd.used_flags(&self.mem) != want
            || self.irq.used_flags(&self.mem) != VRING_USED_F_NO_NOTIFY
        {
            assert!(
                started.elapsed() < TIMEOUT,
                "the back-end never turned kicks {}: flags {:#x} and {:#x}",
                if wanted { "on" } else { "off" },
                self.cmd.used_flags(&self.mem),
                self.irq.used_flags(&self.mem)
            );
            std::thread::yield_now();
        }
    }

    /// The next interrupt message delivered: (op, size, addr, data).
    fn next_interrupt(&mut self, buffers: &[u64]) -> (u8, u32, u64, u32) {
        let (id, len) = self.irq.wait_used(&self.mem);
        assert!(
            len as usize >= HEADER_LEN + 4,
            "interrupt message of {len} bytes"
        );
        let at = buffers[id as usize % buffers.len()];
        let mut bytes = [0u8; IRQ_MESSAGE_LEN];
        self.mem.read_slice(&mut bytes, GuestAddress(at)).unwrap();
        let h = Header::parse(&bytes).unwrap();
        let data = u32::from_le_bytes(bytes[HEADER_LEN..].try_into().unwrap());
        (h.op, h.size, h.addr, data)
    }

    /// Program MSI-X entry `vector` (UML's address, data = an IRQ number), unmasked,
    /// and enable MSI-X, as UML's PCI core does.
    fn enable_msix(&mut self, vector: u64, irq: u32) {
        let entry = vector * 16;
        self.mmio_write32(MSIX_BAR, entry, UML_MSI_ADDRESS as u32);
        self.mmio_write32(MSIX_BAR, entry + 4, 0);
        self.mmio_write32(MSIX_BAR, entry + 8, irq);
        self.mmio_write32(MSIX_BAR, entry + 12, 0);
        self.config_write(MSIX_CONTROL, 2, 0x8000);
    }
}

enum Piece<'a> {
    Out(&'a [u8]),
    In(usize),
}

fn message(op: u8, bar: u8, size: u32, addr: u64, data: &[u8]) -> Vec<u8> {
    let mut bytes = Header {
        op,
        bar,
        reserved: 0,
        size,
        addr,
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn config_and_bar_accesses_reach_the_function() {
    let rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    rig.wait_for("the guest", |s| s.guest_connected && s.guests_served == 1);
    assert_eq!(guest.config_read(0, 4), 0x10d3_8086);
    assert_eq!(
        guest.config_read(0, 8) as u32,
        0x10d3_8086,
        "8-byte config reads as two dwords"
    );
    // BAR0's register is virtual: sizing works as on a real bus.
    guest.config_write(0x10, 4, 0xffff_ffff);
    assert_eq!(guest.config_read(0x10, 4) as u32 & !0xf, !(0x2_0000 - 1));
    assert_eq!(
        u32::from_le_bytes(guest.mmio_read(0, 8, 4).try_into().unwrap()),
        E1000E_STATUS
    );
    // A write split from its header, as memcpy_toio over 8 bytes can arrive.
    let data: Vec<u8> = (0..24).collect();
    let header = message(op::MMIO_WRITE, 0, 24, 0x100, &[]);
    guest.command(&[
        Piece::Out(&header[..10]),
        Piece::Out(&header[10..]),
        Piece::Out(&data),
    ]);
    assert_eq!(rig.fake.region_bytes(0, 0x100, 24), data);
    // ...and merged into one descriptor with stray bytes after it.
    let mut merged = message(op::MMIO_WRITE, 0, 12, 0x200, &data[..12]);
    merged.extend_from_slice(&[0xee; 8]);
    guest.command(&[Piece::Out(&merged)]);
    assert_eq!(rig.fake.region_bytes(0, 0x200, 20)[..12], data[..12]);
    assert_ne!(rig.fake.region_bytes(0, 0x20c, 1)[0], 0xee);
    // A read answered into two writable descriptors.
    let header = message(op::MMIO_READ, 0, 24, 0x100, &[]);
    let answer = guest.command(&[Piece::Out(&header), Piece::In(10), Piece::In(14)]);
    assert_eq!([answer[0].clone(), answer[1].clone()].concat(), data);
    // UML 7.2's memset_io: CFG_WRITE with the BAR index.
    let memset = message(op::CFG_WRITE, 1, 0x40, 0x80, &[0xa7, 0, 0, 0, 0, 0, 0, 0]);
    guest.command(&[Piece::Out(&memset)]);
    assert_eq!(rig.fake.region_bytes(1, 0x80, 0x40), vec![0xa7; 0x40]);
    let status = rig.frontend().status();
    assert_eq!(status.config_accesses, 4);
    assert_eq!((status.mmio_reads, status.mmio_writes), (2, 3));
    assert_eq!(status.last_error, None);
    // Posted writes are not signalled: UML reclaims their buffers as it waits for a read.
    assert!(
        guest.calls[0].read().is_err(),
        "the command queue was signalled"
    );
}

#[test]
fn guest_memory_is_identity_mapped_while_the_guest_is_there() {
    let rig = Rig::start();
    let guest = Guest::connect(&rig.socket);
    let status = rig.wait_for("the memory table", |s| s.dma_mapped_bytes > 0);
    assert_eq!(status.dma_mapped_bytes, RAM as u64);
    let mappings = rig.mapper.mappings();
    assert_eq!(mappings.len(), 1);
    assert_eq!(
        (mappings[0].iova(), mappings[0].len()),
        (Iova(GPA), RAM as u64)
    );
    assert!(rig.mapper.translate(Iova(GPA + 0x1234)).is_some());
    assert!(rig.mapper.translate(Iova(GPA - 1)).is_none());
    drop(guest);
    rig.wait_for("the guest to go", |s| !s.guest_connected);
    assert_eq!(rig.mapper.mapping_count(), 0);
    assert_eq!(rig.frontend().status().dma_mapped_bytes, 0);
    // A guest closing its socket is the normal end, not an error.
    assert_eq!(rig.frontend().status().last_error, None);
}

#[test]
fn a_new_memory_table_replaces_the_old_mappings() {
    let rig = Rig::start();
    let guest = Guest::connect(&rig.socket);
    rig.wait_for("the memory table", |s| s.dma_mapped_bytes > 0);
    let (mem, file) = guest_memory();
    let host = mem.get_host_address(GuestAddress(GPA)).unwrap() as u64;
    guest
        .frontend
        .set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0x400_0000,
            memory_size: 0x8000,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        }])
        .unwrap();
    let mappings = rig.mapper.mappings();
    assert_eq!(mappings.len(), 1, "{mappings:?}");
    assert_eq!(
        (mappings[0].iova(), mappings[0].len()),
        (Iova(0x400_0000), 0x8000)
    );
}

#[test]
fn a_mapping_error_reaches_the_guest_and_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("uml.sock");
    let function = PassthroughFunction::new(SharedFake(Arc::new(e1000e()))).unwrap();
    let mapper = Arc::new(RecordingMapper::new().with_max_mappings(0));
    let frontend = UmlFrontend::start(function, mapper as Arc<dyn DmaMapper>, &socket).unwrap();
    let (mem, file) = guest_memory();
    let host = mem.get_host_address(GuestAddress(GPA)).unwrap() as u64;
    let mut fe = Frontend::connect(&socket, 2).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.set_protocol_features(VhostUserProtocolFeatures::REPLY_ACK)
        .unwrap();
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    fe.set_features(features).unwrap();
    let result = fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: GPA,
        memory_size: RAM as u64,
        userspace_addr: host,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }]);
    assert!(
        result.is_err(),
        "SET_MEM_TABLE succeeded with no mapping possible"
    );
    let error = frontend.status().last_error.expect("the mapping error");
    assert!(
        error.contains("uml.sock") && error.contains("mapping UML memory"),
        "{error}"
    );
    assert_eq!(frontend.status().dma_mapped_bytes, 0);
}

#[test]
fn msi_x_vectors_are_delivered_as_uml_msi_messages() {
    let rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    let buffers = guest.post_irq_buffers(4);
    guest.enable_msix(0, 37);
    guest.enable_msix(2, 39);
    assert!(rig.fake.irq_ops().contains(&IrqOp::Wire(IrqIndex::Msix, 5)));
    assert!(rig.fake.fire(IrqIndex::Msix, 2));
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 39)
    );
    assert!(rig.fake.fire(IrqIndex::Msix, 0));
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 37)
    );
    // UML is told through its call fd.
    assert!(guest.calls[1].read().unwrap() > 0);
    rig.wait_for("the interrupt count", |s| s.interrupts == 2);
    // A masked vector fires: pending, then delivered when unmasked.
    guest.mmio_write32(MSIX_BAR, 12, 1);
    assert!(rig.fake.fire(IrqIndex::Msix, 0));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        guest.irq.used_idx(&guest.mem),
        2,
        "a masked vector was delivered"
    );
    guest.mmio_write32(MSIX_BAR, 12, 0);
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 37)
    );
}

#[test]
fn the_command_queue_is_never_signalled_and_its_batches_are_counted() {
    let rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    // Reads in between, then a run of writes longer than UML's 20 write buffers: UML
    // reclaims them itself (while it polls for a read, or when they run out).
    for i in 0..40 {
        guest.mmio_write32(0, 0x100, i);
        if i % 8 == 7 {
            guest.mmio_read(0, 8, 4);
        }
    }
    for i in 0..24 {
        guest.mmio_write32(0, 0x100, i);
    }
    assert!(
        guest.calls[0].read().is_err(),
        "the command queue was signalled"
    );
    let status = rig.frontend().status();
    assert_eq!(status.mmio_writes, 40 + 24);
    assert_eq!(status.command_batches, 40 + 5 + 24, "one batch per kick");
    assert_eq!(status.timed_batches, status.command_batches, "all timed");
    assert!(
        status.command_ns > 0 && status.bar_access_ns > 0,
        "{status:?}"
    );
    assert!(status.bar_access_ns <= status.command_ns, "{status:?}");
}

/// `VRING_USED_F_NO_NOTIFY` in the flags of `queue`'s used ring.
fn kicks_off(guest: &Guest, queue: &TestQueue) -> bool {
    fence(Ordering::SeqCst);
    guest.mem.read_obj::<u16>(GuestAddress(queue.used)).unwrap() & 1 != 0
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn uml_kicks_the_irq_queue_only_while_a_message_waits_for_a_buffer() {
    let rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    let buffers = guest.post_irq_buffers(1);
    wait_until("kicks turned off", || kicks_off(&guest, &guest.irq));
    guest.enable_msix(0, 37);
    assert!(rig.fake.fire(IrqIndex::Msix, 0));
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 37)
    );
    assert!(
        kicks_off(&guest, &guest.irq),
        "nothing waits: no kick wanted"
    );
    // No buffer left: the next message waits, and UML's kick is wanted again.
    assert!(rig.fake.fire(IrqIndex::Msix, 0));
    wait_until("kicks turned on", || !kicks_off(&guest, &guest.irq));
    let status = rig.frontend().status();
    assert_eq!(status.interrupts, 1);
    let buffers = guest.post_irq_buffers(1);
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 37)
    );
    wait_until("kicks turned off again", || kicks_off(&guest, &guest.irq));
    // The command queue always wants its kicks.
    assert!(!kicks_off(&guest, &guest.cmd));
    assert_eq!(
        rig.frontend().status().irq_buffer_kicks,
        status.irq_buffer_kicks + 1
    );
}

#[test]
fn interrupts_wait_for_uml_to_post_a_buffer() {
    let rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    guest.enable_msix(1, 40);
    assert!(rig.fake.fire(IrqIndex::Msix, 1));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.frontend().status().interrupts, 0);
    let buffers = guest.post_irq_buffers(2);
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 40)
    );
}

#[test]
fn malformed_commands_are_answered_and_the_queue_goes_on() {
    let rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    // Unknown op, with room for an answer: all-ones, as UML reads a failed access.
    let bad = message(9, 0, 4, 0, &[]);
    assert_eq!(
        guest.command(&[Piece::Out(&bad), Piece::In(4)]),
        vec![vec![0xff; 4]]
    );
    // Short header.
    assert_eq!(
        guest.command(&[Piece::Out(&[1, 0, 0]), Piece::In(4)]),
        vec![vec![0xff; 4]]
    );
    // A read with no room for its answer, and one bigger than its room.
    guest.command(&[Piece::Out(&message(op::MMIO_READ, 0, 4, 8, &[]))]);
    let answer = guest.command(&[
        Piece::Out(&message(op::MMIO_READ, 0, 64, 8, &[])),
        Piece::In(4),
    ]);
    assert_eq!(answer, vec![vec![0xff; 4]]);
    // Out of the BAR, a BAR that does not exist, a write with too little data.
    let answer = guest.command(&[
        Piece::Out(&message(op::MMIO_READ, 0, 4, 0x2_0000, &[])),
        Piece::In(4),
    ]);
    assert_eq!(answer, vec![vec![0xff; 4]]);
    let answer = guest.command(&[
        Piece::Out(&message(op::MMIO_READ, 5, 4, 0, &[])),
        Piece::In(4),
    ]);
    assert_eq!(answer, vec![vec![0xff; 4]]);
    guest.command(&[Piece::Out(&message(op::MMIO_WRITE, 0, 8, 0, &[1, 2]))]);
    // A descriptor pointing outside the registered memory.
    let head = guest.cmd.post(&guest.mem, &[(0x7000_0000, 16, false)]);
    guest.kicks[0].write(1).unwrap();
    assert_eq!(guest.cmd.wait_used(&guest.mem).0, u32::from(head));
    // A chain that loops back on itself (made so before the kick that serves it).
    let header = guest.buffer(&message(op::CFG_READ, 0, 2, 0, &[]));
    let head = guest.cmd.post(&guest.mem, &[(header, 16, false)]);
    let at = GuestAddress(guest.cmd.desc + u64::from(head) * 16);
    guest.mem.write_obj(1u16, at.unchecked_add(12)).unwrap();
    guest.mem.write_obj(head, at.unchecked_add(14)).unwrap();
    guest.kicks[0].write(1).unwrap();
    assert_eq!(guest.cmd.wait_used(&guest.mem), (u32::from(head), 0));
    let error = rig.frontend().status().last_error.unwrap_or_default();
    assert!(error.contains("a loop"), "{error}");
    // The memset length beyond the BAR.
    guest.command(&[Piece::Out(&message(op::MMIO_MEMSET, 0, u32::MAX, 0, &[0]))]);
    assert!(rig.frontend().status().last_error.is_some());
    // Still serving.
    assert_eq!(guest.config_read(0, 2), 0x8086);
    assert_eq!(
        u32::from_le_bytes(guest.mmio_read(0, 8, 4).try_into().unwrap()),
        E1000E_STATUS
    );
}

#[test]
fn a_departed_guest_leaves_the_device_quiesced_and_fresh_for_the_next() {
    let mut rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    let command_reg = guest.config_read(4, 2);
    guest.config_write(
        4,
        2,
        command_reg | u64::from(command::BUS_MASTER | command::MEMORY_SPACE),
    );
    assert_ne!(
        rig.fake.config_u16(4) & command::BUS_MASTER,
        0,
        "bus mastering not forwarded"
    );
    guest.enable_msix(0, 37);
    rig.fake.irq_ops();
    drop(guest);
    rig.wait_for("the guest to go", |s| !s.guest_connected);
    assert_eq!(
        rig.fake.config_u16(4) & command::BUS_MASTER,
        0,
        "still bus-mastering"
    );
    assert!(rig.fake.irq_ops().contains(&IrqOp::Disable(IrqIndex::Msix)));
    assert!(!rig.fake.fire(IrqIndex::Msix, 0), "MSI-X still wired");
    assert_eq!(rig.mapper.mapping_count(), 0);

    // The next guest on the same socket finds a freshly reset function.
    let mut guest = Guest::connect(&rig.socket);
    rig.wait_for("the second guest", |s| {
        s.guest_connected && s.guests_served == 2
    });
    assert_eq!(
        guest.config_read(MSIX_CONTROL, 2) & 0x8000,
        0,
        "MSI-X left enabled"
    );
    assert_eq!(guest.config_read(4, 2) & u64::from(command::BUS_MASTER), 0);
    assert_eq!(
        guest.config_read(0x10, 4) as u32 & !0xf,
        0,
        "BAR0 kept the old guest's address"
    );
    let buffers = guest.post_irq_buffers(2);
    guest.enable_msix(0, 50);
    assert!(rig.fake.fire(IrqIndex::Msix, 0));
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 50)
    );

    // Stopping gives the function back, quiesced, and removes the socket.
    guest.config_write(4, 2, u64::from(command::BUS_MASTER | command::MEMORY_SPACE));
    let function = rig.frontend.take().unwrap().stop().unwrap();
    assert_eq!(function.device().0.config_u16(4) & command::BUS_MASTER, 0);
    assert_eq!(rig.mapper.mapping_count(), 0);
    assert!(!rig.socket.exists(), "socket left behind");
    assert!(guest.config_read_fails());
}

impl Guest {
    /// Whether the back-end is gone: a vhost-user request fails.
    fn config_read_fails(&mut self) -> bool {
        self.frontend.get_features().is_err()
    }
}

#[test]
fn garbage_on_the_socket_disconnects_and_the_next_guest_works() {
    let rig = Rig::start();
    for garbage in [
        vec![0xffu8; 64],
        // A SET_MEM_TABLE header claiming a huge payload, then nothing.
        [
            5u32.to_le_bytes(),
            1u32.to_le_bytes(),
            0xffff_fff0u32.to_le_bytes(),
        ]
        .concat(),
        // GET_FEATURES with a wrong version flag.
        [1u32.to_le_bytes(), 0x7u32.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        Vec::new(),
    ] {
        let mut raw = UnixStream::connect(&rig.socket).unwrap();
        let _ = raw.write_all(&garbage);
        raw.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        drop(raw);
        rig.wait_for("the raw client to be dropped", |s| !s.guest_connected);
    }
    // Vring setup with a bad memory region: refused, and nothing stays mapped.
    let fe = Frontend::connect(&rig.socket, 2).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.set_features(features).unwrap();
    let (_mem, file) = guest_memory();
    // A region past the end of its file (touching it would be a SIGBUS). No REPLY_ACK
    // here: the back-end's answer is to drop the connection.
    let _ = fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: GPA,
        memory_size: 1 << 30,
        userspace_addr: 0x1000,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }]);
    drop(fe);
    let status = rig.wait_for("the bad client to be dropped", |s| {
        !s.guest_connected && s.guests_served == 5
    });
    assert_eq!(rig.mapper.mapping_count(), 0);
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("past the end of its"), "{error}");

    let mut guest = Guest::connect(&rig.socket);
    assert_eq!(guest.config_read(0, 4), 0x10d3_8086);
    assert_eq!(rig.frontend().status().guests_served, 6);
}

#[test]
fn a_socket_in_use_or_not_a_socket_is_refused_and_a_stale_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"keep me").unwrap();
    let start = |path: &Path| {
        let function = PassthroughFunction::new(SharedFake(Arc::new(e1000e()))).unwrap();
        UmlFrontend::start(function, Arc::new(RecordingMapper::new()), path)
    };
    let err = start(&path).err().expect("a regular file was replaced");
    assert!(matches!(err, FrontendError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains("not-a-socket"));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");

    let socket = dir.path().join("uml.sock");
    let first = start(&socket).unwrap();
    let err = start(&socket).err().expect("a live socket was taken over");
    assert!(matches!(err, FrontendError::SocketInUse { .. }), "{err}");
    drop(first);
    assert!(!socket.exists());

    // A socket file nobody listens on (a crashed server's) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let frontend = start(&socket).unwrap();
    let mut guest = Guest::connect(&socket);
    assert_eq!(guest.config_read(0, 2), 0x8086);
    assert_eq!(frontend.socket(), socket);
}

#[test]
fn dropping_the_frontend_quiesces_the_device() {
    let mut rig = Rig::start();
    let mut guest = Guest::connect(&rig.socket);
    guest.config_write(4, 2, u64::from(command::BUS_MASTER | command::MEMORY_SPACE));
    guest.enable_msix(0, 37);
    assert_ne!(rig.fake.config_u16(4) & command::BUS_MASTER, 0);
    drop(rig.frontend.take());
    assert_eq!(rig.fake.config_u16(4) & command::BUS_MASTER, 0);
    assert!(!rig.fake.fire(IrqIndex::Msix, 0));
    assert_eq!(rig.mapper.mapping_count(), 0);
    assert!(!rig.socket.exists());
}

fn polling(window: Duration) -> WorkerOptions {
    WorkerOptions {
        poll: window,
        cpu: None,
    }
}

#[test]
fn a_polling_worker_suppresses_kicks_and_turns_them_on_when_idle() {
    let rig = Rig::start_with(polling(Duration::from_millis(300)));
    let mut guest = Guest::connect(&rig.socket);
    assert_eq!(guest.config_read(0, 4), 0x10d3_8086);
    guest.start_a_quiet_window(&rig);
    let before = rig.frontend().status();
    assert!(before.polling);
    // A posted write while polling: served.
    let write = message(op::MMIO_WRITE, 0, 4, 0x100, &0xfeed_f00du32.to_le_bytes());
    let posted = guest.post_command(&[Piece::Out(&write)]);
    guest.finish_command(posted);
    assert_eq!(
        rig.fake.region_bytes(0, 0x100, 4),
        0xfeed_f00du32.to_le_bytes()
    );
    // No command for the window: kicks back on.
    guest.wait_kicks_wanted(true);
    let status = rig.wait_for("the window to end", |s| !s.polling);
    assert_eq!(status.polled_commands, before.polled_commands + 1);
    // The command queue is never signalled: UML reclaims its write buffers itself (a
    // call would race with UML adding commands).
    assert!(
        guest.calls[0].read().is_err(),
        "the command queue was signalled"
    );
    // And a kick starts a window again.
    assert_eq!(guest.config_read(0, 2), 0x8086);
    guest.wait_kicks_wanted(false);
    assert_eq!(rig.frontend().status().last_error, None);
}

#[test]
fn commands_posted_while_polling_are_served_without_a_kick() {
    // Long enough for the commands below, short enough to wait out once.
    let rig = Rig::start_with(polling(Duration::from_secs(1)));
    let mut guest = Guest::connect(&rig.socket);
    guest.start_a_quiet_window(&rig);
    let before = rig.frontend().status();
    for _ in 0..31 {
        let read = message(op::MMIO_READ, 0, 4, 8, &[]);
        let posted = guest.post_command(&[Piece::Out(&read), Piece::In(4)]);
        let answer = guest.finish_command(posted);
        assert_eq!(answer, vec![E1000E_STATUS.to_le_bytes().to_vec()]);
    }
    let header = message(op::CFG_READ, 0, 2, 2, &[]);
    let posted = guest.post_command(&[Piece::Out(&header), Piece::In(2)]);
    assert_eq!(guest.finish_command(posted), vec![vec![0xd3, 0x10]]);
    let status = rig.frontend().status();
    assert_eq!(status.polled_commands, before.polled_commands + 32);
    assert_eq!((status.mmio_reads, status.config_accesses), (31, 2));
    assert!(status.polling);
    // One batch per command, and one in 16 of them timed.
    assert_eq!(status.command_batches, before.command_batches + 32);
    assert_eq!(status.timed_batches, before.timed_batches + 2);
}

#[test]
fn a_polling_worker_follows_a_new_memory_table() {
    let rig = Rig::start_with(polling(LONG_POLL));
    let mut guest = Guest::connect(&rig.socket);
    assert_eq!(guest.config_read(0, 2), 0x8086);
    guest.wait_kicks_wanted(false);
    let before = rig.frontend().status().polled_commands;
    // UML's memory moves to another file, rings and all.
    let (mem, file) = guest_memory();
    let mut bytes = vec![0u8; RAM];
    guest.mem.read_slice(&mut bytes, GuestAddress(GPA)).unwrap();
    mem.write_slice(&bytes, GuestAddress(GPA)).unwrap();
    guest
        .frontend
        .set_mem_table(&[whole_ram(&mem, &file)])
        .unwrap();
    guest.mem = mem;
    // Posted in the new memory with no kick: a worker still looking at the old memory
    // would not see it for the whole (minute-long) window.
    let read = message(op::MMIO_READ, 0, 4, 8, &[]);
    let posted = guest.post_command(&[Piece::Out(&read), Piece::In(4)]);
    assert_eq!(
        guest.finish_command(posted),
        vec![E1000E_STATUS.to_le_bytes().to_vec()]
    );
    // And the worker polls on, in the new memory.
    let posted = guest.post_command(&[Piece::Out(&read), Piece::In(4)]);
    assert_eq!(
        guest.finish_command(posted),
        vec![E1000E_STATUS.to_le_bytes().to_vec()]
    );
    let status = rig.frontend().status();
    assert!(
        status.polling && status.polled_commands > before,
        "{status:?}"
    );
    assert_eq!(status.last_error, None);
}

#[test]
fn interrupts_are_delivered_while_the_worker_polls() {
    let rig = Rig::start_with(polling(LONG_POLL));
    let mut guest = Guest::connect(&rig.socket);
    let mut buffers = guest.post_irq_buffers(1);
    guest.enable_msix(0, 37);
    guest.enable_msix(2, 39);
    guest.wait_kicks_wanted(false);
    assert!(rig.fake.fire(IrqIndex::Msix, 2));
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 39)
    );
    assert!(guest.calls[1].read().unwrap() > 0, "UML was not told");
    // No buffer left: the message waits, and goes out when UML posts one, unkicked.
    assert!(rig.fake.fire(IrqIndex::Msix, 0));
    rig.wait_for("the vector to be read", |s| s.interrupts == 1);
    buffers.extend(guest.post_irq_buffers_without_kick(1));
    assert_eq!(
        guest.next_interrupt(&buffers),
        (op::MSI, 4, UML_MSI_ADDRESS, 37)
    );
    let status = rig.wait_for("the interrupt count", |s| s.interrupts == 2);
    assert!(status.polling, "the worker stopped polling: {status:?}");
    // Still polling: a command needs no kick.
    let read = message(op::MMIO_READ, 0, 4, 8, &[]);
    let posted = guest.post_command(&[Piece::Out(&read), Piece::In(4)]);
    assert_eq!(
        guest.finish_command(posted),
        vec![E1000E_STATUS.to_le_bytes().to_vec()]
    );
}

#[test]
fn a_departing_guest_or_a_stop_ends_polling() {
    let mut rig = Rig::start_with(polling(LONG_POLL));
    let mut guest = Guest::connect(&rig.socket);
    assert_eq!(guest.config_read(0, 2), 0x8086);
    guest.wait_kicks_wanted(false);
    drop(guest);
    let status = rig.wait_for("the guest to go and polling to end", |s| {
        !s.guest_connected && !s.polling
    });
    assert_eq!(status.last_error, None);

    // The next guest is served (the worker of the first one is gone), and a stop in
    // the middle of its window ends it: stopping waits for the worker.
    let mut guest = Guest::connect(&rig.socket);
    assert_eq!(guest.config_read(0, 2), 0x8086);
    guest.wait_kicks_wanted(false);
    let frontend = rig.frontend.take().unwrap();
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(frontend.stop().is_ok());
    });
    assert_eq!(
        stopped.recv_timeout(TIMEOUT),
        Ok(true),
        "stopping a frontend whose worker polls did not finish"
    );
    drop(guest);
}

#[test]
fn the_worker_runs_on_the_cpu_asked_for() {
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpu = (0..nix::sched::CpuSet::count())
        .rev()
        .find(|&c| cpus.is_set(c).unwrap_or(false))
        .unwrap();
    let rig = Rig::start_with(WorkerOptions {
        poll: Duration::ZERO,
        cpu: Some(cpu),
    });
    let mut guest = Guest::connect(&rig.socket);
    assert_eq!(guest.config_read(0, 2), 0x8086);
    let workers = vring_workers();
    assert!(
        workers.iter().any(|allowed| *allowed == cpu.to_string()),
        "no vring worker pinned to CPU {cpu}: {workers:?}"
    );
    assert_eq!(rig.frontend().status().last_error, None);

    // A CPU that cannot be used: said so, and served anyway.
    let rig = Rig::start_with(WorkerOptions {
        poll: Duration::ZERO,
        cpu: Some(nix::sched::CpuSet::count()),
    });
    let mut guest = Guest::connect(&rig.socket);
    assert_eq!(guest.config_read(0, 2), 0x8086);
    let error = rig.frontend().status().last_error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "pinning the worker to CPU {}",
            nix::sched::CpuSet::count()
        )),
        "{error}"
    );
}

/// The CPUs each of this process's vring worker threads may run on, as the kernel
/// lists them (`Cpus_allowed_list`).
fn vring_workers() -> Vec<String> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "vring_worker" {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            workers.push(list.trim().to_string());
        }
    }
    workers
}
