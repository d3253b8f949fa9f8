//! Host tests of the vfio-user server: rust-vmm's `vfio_user` client as an
//! independent peer, raw-socket hostile clients, and the session driven with no
//! socket. The device is a [`FakeDevice`] shaped like the rig's e1000e (memory BARs,
//! MSI-X, a ROM) or its piix3-ide (IO-port BARs only).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::dma::RecordingMapper;
use nix::errno::Errno;
use udriver::vfio::{EventFd, IrqIndex};

use super::protocol::{flags, irq_flags, Header, Payload, Reply, HEADER_SIZE};
use super::wire::send_reply;
use super::*;
use crate::config::regs::{command, header};
use crate::passthrough::fake_device::{FakeDevice, IrqOp};
use crate::passthrough::tests::e1000e;
use crate::passthrough::PassthroughFunction;

const TIMEOUT: Duration = Duration::from_secs(10);
const CONFIG: u32 = 7;

struct Served {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: Arc<FakeDevice>,
    mapper: Arc<RecordingMapper>,
    server: Option<VfioUserServer<Arc<FakeDevice>>>,
}

impl Served {
    fn start(fake: FakeDevice) -> Served {
        Served::start_with(fake, SessionOptions::default())
    }

    fn start_with(fake: FakeDevice, session: SessionOptions) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("dev.sock");
        let fake = Arc::new(fake);
        let mapper = Arc::new(RecordingMapper::new());
        let function = PassthroughFunction::new(fake.clone()).unwrap();
        let server = VfioUserServer::start(
            function,
            mapper.clone(),
            ServerOptions {
                socket: socket.clone(),
                allowed_uid: None,
                session,
            },
        )
        .unwrap();
        Served {
            _dir: dir,
            socket,
            fake,
            mapper,
            server: Some(server),
        }
    }

    fn status(&self) -> VfioUserStatus {
        self.server.as_ref().unwrap().status()
    }

    /// Wait (bounded) until the server's status satisfies `done`.
    fn wait_for(&self, what: &str, done: impl Fn(&VfioUserStatus) -> bool) -> VfioUserStatus {
        let start = Instant::now();
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {what}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            if !std::thread::panicking() {
                server.stop().unwrap();
            }
        }
    }
}

fn memfd(len: u64) -> OwnedFd {
    let fd =
        nix::sys::memfd::memfd_create(c"guest-ram", nix::sys::memfd::MFdFlags::empty()).unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    fd
}

/// The piix3-ide as VFIO shows it in the rig: legacy-mode IDE, BAR0-3 the
/// relocated command/control blocks (8/1/8/1 IO bytes), BAR4 the bus-master block.
fn piix3_ide() -> FakeDevice {
    let mut c = vec![0u8; 256];
    c[0..4].copy_from_slice(&[0x86, 0x80, 0x10, 0x70]);
    c[0x09..0x0c].copy_from_slice(&[0x80, 0x01, 0x01]);
    for (i, bar) in [0x1f1u32, 0x3f5, 0x171, 0x375, 0xc041].iter().enumerate() {
        c[0x10 + 4 * i..0x14 + 4 * i].copy_from_slice(&bar.to_le_bytes());
    }
    let mut d = FakeDevice::new("0000:00:01.1", c)
        .with_region(0, 8, true, |o| 0x50 + o as u8)
        .with_region(1, 1, true, |_| 0x40)
        .with_region(2, 8, true, |o| 0x60 + o as u8)
        .with_region(3, 1, true, |_| 0x41)
        .with_region(4, 16, true, |o| 0x70 + o as u8);
    d.irq_counts = [0, 0, 0];
    d
}

#[test]
fn vfio_user_crate_client_negotiates_reads_writes_maps_and_fires() {
    let served = Served::start(e1000e());
    let mut client = vfio_user::Client::new(&served.socket).unwrap();

    // Config through the function's virtualisation: ids, and BARs that do not show
    // the host's addresses.
    let config = client.region(CONFIG).unwrap();
    assert_eq!(config.size, 4096);
    let mut ids = [0u8; 4];
    client.region_read(CONFIG, 0, &mut ids).unwrap();
    assert_eq!(ids, [0x86, 0x80, 0xd3, 0x10]);
    let mut bar0 = [0u8; 4];
    client.region_read(CONFIG, 0x10, &mut bar0).unwrap();
    assert_eq!(
        u32::from_le_bytes(bar0) & !0xf,
        0,
        "host BAR address leaked"
    );
    // Sizes are the virtual BARs': the 32-byte IO BAR, the 128 KiB memory BAR.
    assert_eq!(client.region(0).unwrap().size, 0x2_0000);
    assert_eq!(client.region(2).unwrap().size, 0x20);
    assert_eq!(client.region(6).unwrap().size, 0x4_0000);

    // BARs: memory and IO, read and written on the real (fake) device.
    let mut word = [0u8; 4];
    client.region_read(0, 0x100, &mut word).unwrap();
    assert_eq!(word.to_vec(), served.fake.region_bytes(0, 0x100, 4));
    client.region_write(0, 0x104, &[1, 2, 3, 4]).unwrap();
    assert_eq!(served.fake.region_bytes(0, 0x104, 4), vec![1, 2, 3, 4]);
    client.region_write(2, 0x4, &[0xee]).unwrap();
    assert_eq!(served.fake.region_bytes(2, 0x4, 1), vec![0xee]);
    let mut rom = [0u8; 2];
    client.region_read(6, 0, &mut rom).unwrap();
    assert_eq!(rom, [0x55, 0xaa]);
    // Bus mastering goes to the device through config.
    let cmd = (command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes();
    client
        .region_write(CONFIG, u64::from(header::COMMAND), &cmd)
        .unwrap();
    assert_ne!(
        served.fake.config_u16(usize::from(header::COMMAND)) & command::BUS_MASTER,
        0
    );

    // DMA from a memfd, into the IOMMU and out again.
    let ram = memfd(0x10_0000);
    client
        .dma_map(0, 0x1_0000_0000, 0x10_0000, ram.as_raw_fd())
        .unwrap();
    assert_eq!(served.mapper.mapped_bytes(), 0x10_0000);
    let s = served.status();
    assert_eq!((s.dma_mappings, s.dma_mapped_bytes), (1, 0x10_0000));
    client.dma_unmap(0x1_0000_0000, 0x10_0000).unwrap();
    assert_eq!(served.mapper.mapped_bytes(), 0);
    client
        .dma_map(0, 0x1_0000_0000, 0x10_0000, ram.as_raw_fd())
        .unwrap();

    // An MSI-X vector wired to the client's eventfd fires with no hop through udrv.
    let info = client.get_irq_info(IrqIndex::Msix.raw()).unwrap();
    assert_eq!(info.count, 5);
    let vector = EventFd::new().unwrap();
    client
        .set_irqs(
            IrqIndex::Msix.raw(),
            irq_flags::DATA_EVENTFD | irq_flags::ACTION_TRIGGER,
            0,
            1,
            &[vector.as_fd().as_raw_fd()],
        )
        .unwrap();
    assert!(served.fake.fire(IrqIndex::Msix, 0));
    assert_eq!(vector.wait(TIMEOUT).unwrap(), Some(1));

    // Reset (the crate's resettable() reads the flag inverted: ask the device).
    client.reset().unwrap();
    assert_eq!(*served.fake.resets.lock().unwrap(), 1);
    let s = served.status();
    assert_eq!((s.resets, s.irq_sets, s.error_replies), (1, 1, 0));
    assert!(s.region_reads >= 4 && s.region_writes >= 3, "{s:?}");
    assert!(s.client.is_some());
    // Where udrv's time went, per kind of message.
    assert!(
        s.dma_map_ns > 0 && s.dma_unmap_ns > 0 && s.region_access_ns > 0,
        "{s:?}"
    );

    // Disconnect: the device is quiesced and its memory unmapped.
    client.shutdown().unwrap();
    drop(client);
    served.wait_for("the client to go", |s| s.client.is_none());
    assert_eq!(served.mapper.mapped_bytes(), 0);
    assert_eq!(
        served.fake.config_u16(usize::from(header::COMMAND)) & command::BUS_MASTER,
        0
    );
    assert!(served.fake.client_fds.lock().unwrap().is_empty());

    // A second client connects and works.
    let mut second = vfio_user::Client::new(&served.socket).unwrap();
    let mut ids = [0u8; 4];
    second.region_read(CONFIG, 0, &mut ids).unwrap();
    assert_eq!(ids, [0x86, 0x80, 0xd3, 0x10]);
    second
        .dma_map(0, 0x2000_0000, 0x1000, ram.as_raw_fd())
        .unwrap();
    assert_eq!(served.mapper.mapped_bytes(), 0x1000);
    let s = served.status();
    assert_eq!(s.clients_served, 2);
}

/// What `udrv serve`'s upgrade does with a server: hand it over, carry its state
/// as JSON and its fds across a socket, resume it as the successor does.
fn hand_over_and_resume(served: &mut Served) {
    let server = served.server.take().unwrap();
    let mut bag = crate::handover::FdBag::new();
    let (state, device) = server.hand_over(&mut bag).unwrap();
    let document = serde_json::to_vec(&state).unwrap();
    let (here, there) = UnixStream::pair().unwrap();
    let sender = std::thread::spawn(move || crate::handover::send(&here, &document, &bag));
    let (document, mut bag) = crate::handover::receive(&there).unwrap();
    sender.join().unwrap().unwrap();
    let state: ServerState = serde_json::from_slice(&document).unwrap();
    served.server = Some(
        VfioUserServer::resume(
            device,
            served.mapper.clone(),
            ServerOptions {
                socket: served.socket.clone(),
                allowed_uid: None,
                session: SessionOptions::default(),
            },
            &state,
            &mut bag,
        )
        .unwrap(),
    );
}

#[test]
fn vfio_user_a_connected_client_goes_on_across_a_handover() {
    let mut served = Served::start(e1000e());
    let mut client = vfio_user::Client::new(&served.socket).unwrap();
    let cmd = (command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes();
    client
        .region_write(CONFIG, u64::from(header::COMMAND), &cmd)
        .unwrap();
    let ram = memfd(0x10_0000);
    client
        .dma_map(0, 0x1_0000_0000, 0x10_0000, ram.as_raw_fd())
        .unwrap();
    client
        .dma_map(0x2000, 0x2_0000_0000, 0x1000, ram.as_raw_fd())
        .unwrap();
    let vector = EventFd::new().unwrap();
    client
        .set_irqs(
            IrqIndex::Msix.raw(),
            irq_flags::DATA_EVENTFD | irq_flags::ACTION_TRIGGER,
            0,
            1,
            &[vector.as_fd().as_raw_fd()],
        )
        .unwrap();
    served.mapper.reset_counts();

    hand_over_and_resume(&mut served);

    // Nothing was undone: no unmap, bus mastering on, the socket still there.
    assert_eq!(served.mapper.unmap_calls(), 0);
    assert_eq!(served.mapper.mapped_bytes(), 0x10_1000);
    assert_ne!(
        served.fake.config_u16(usize::from(header::COMMAND)) & command::BUS_MASTER,
        0
    );
    assert!(served.socket.exists());
    // The same connection goes on, with the guest's config as it left it.
    let mut word = [0u8; 2];
    client
        .region_read(CONFIG, u64::from(header::COMMAND), &mut word)
        .unwrap();
    assert_ne!(u16::from_le_bytes(word) & command::BUS_MASTER, 0);
    client.region_write(0, 0x104, &[9, 8, 7, 6]).unwrap();
    assert_eq!(served.fake.region_bytes(0, 0x104, 4), vec![9, 8, 7, 6]);
    let s = served.status();
    assert!(s.client.is_some(), "{s:?}");
    assert_eq!((s.dma_mappings, s.dma_mapped_bytes), (2, 0x10_1000));
    // The vector is still the client's.
    assert!(served.fake.fire(IrqIndex::Msix, 0));
    assert_eq!(vector.wait(TIMEOUT).unwrap(), Some(1));
    // The carried mappings are the successor's to unmap, one at a time or all.
    client.dma_unmap(0x2_0000_0000, 0x1000).unwrap();
    assert_eq!(served.mapper.mapped_bytes(), 0x10_0000);
    assert_eq!(served.mapper.map_calls(), 0, "nothing was mapped again");

    // A second handover, then the client leaves: the device is quiesced and
    // everything unmapped as after any session.
    hand_over_and_resume(&mut served);
    client.shutdown().unwrap();
    drop(client);
    let s = served.wait_for("the client to go", |s| s.client.is_none());
    assert_eq!(
        served.mapper.mapped_bytes(),
        0,
        "{s:?} {:?}",
        served.mapper.mappings()
    );
    assert_eq!(
        served.fake.config_u16(usize::from(header::COMMAND)) & command::BUS_MASTER,
        0
    );

    // An idle server is handed over too, and the next client is served.
    hand_over_and_resume(&mut served);
    let mut next = vfio_user::Client::new(&served.socket).unwrap();
    let mut ids = [0u8; 4];
    next.region_read(CONFIG, 0, &mut ids).unwrap();
    assert_eq!(ids, [0x86, 0x80, 0xd3, 0x10]);
    next.dma_map(0, 0x3000_0000, 0x1000, ram.as_raw_fd())
        .unwrap();
    assert_eq!(served.mapper.mapped_bytes(), 0x1000);
}

#[test]
fn vfio_user_a_busy_client_is_handed_over_between_two_messages() {
    let mut served = Served::start(e1000e());
    let socket = served.socket.clone();
    let expected = served.fake.region_bytes(0, 0x100, 4);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Reads back to back, never quiet: every one answered, in order.
            let mut client = vfio_user::Client::new(&socket).unwrap();
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut word = [0u8; 4];
                client.region_read(0, 0x100, &mut word).unwrap();
                assert_eq!(word.to_vec(), expected);
                reads += 1;
            }
            reads
        })
    };
    served.wait_for("the client's reads", |s| s.region_reads > 100);
    hand_over_and_resume(&mut served);
    served.wait_for("reads served after the handover", |s| s.region_reads > 100);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 200, "{reads}");
}

#[test]
fn vfio_user_serves_the_piix3_ides_io_port_bars() {
    let served = Served::start(piix3_ide());
    let mut client = vfio_user::Client::new(&served.socket).unwrap();
    // 8/1/8/1-byte command and control blocks show as 8/4/8/4-byte IO BARs, the
    // bus-master block as 16 bytes.
    let sizes: Vec<u64> = (0..5).map(|i| client.region(i).unwrap().size).collect();
    assert_eq!(sizes, vec![8, 4, 8, 4, 16]);
    let mut bar = [0u8; 4];
    client.region_read(CONFIG, 0x10, &mut bar).unwrap();
    assert_eq!(bar[0] & 1, 1, "BAR0 is an IO BAR");
    // Legacy mode (prog-if 0x80) is shown as native mode on both channels, with
    // INTA: a guest driver then uses the BARs and an interrupt udrv can raise.
    let mut class = [0u8; 3];
    client.region_read(CONFIG, 0x09, &mut class).unwrap();
    assert_eq!(class, [0x8f, 0x01, 0x01]);
    let mut pin = [0u8; 1];
    client.region_read(CONFIG, 0x3d, &mut pin).unwrap();
    assert_eq!(pin, [1]);
    // The 1-byte control block (0x3f6) is the native block's register at offset 2;
    // the other bytes are padding.
    let mut status = [0u8; 1];
    client.region_read(1, 2, &mut status).unwrap();
    assert_eq!(status, [0x40]);
    client.region_read(1, 0, &mut status).unwrap();
    assert_eq!(status, [0xff]);
    let mut dword = [0u8; 4];
    client.region_read(3, 0, &mut dword).unwrap();
    assert_eq!(dword, [0xff, 0xff, 0x41, 0xff]);
    client.region_write(3, 2, &[0x02]).unwrap();
    assert_eq!(served.fake.region_bytes(3, 0, 1), vec![0x02]);
    let mut bm = [0u8; 2];
    client.region_read(4, 2, &mut bm).unwrap();
    assert_eq!(bm, [0x72, 0x73]);
    client.region_write(4, 4, &[1, 2, 3, 4]).unwrap();
    assert_eq!(served.fake.region_bytes(4, 4, 4), vec![1, 2, 3, 4]);
    client.region_write(0, 6, &[0xa0]).unwrap();
    assert_eq!(served.fake.region_bytes(0, 6, 1), vec![0xa0]);
}

/// The fake piix3's `channel` as the device leaves it: its alternate status
/// (BSY 0x80, DRDY 0x40, DRQ 0x08) and the interrupt bit of its bus-master status.
fn ide_channel(fake: &FakeDevice, channel: usize, status: u8, interrupt: bool) {
    fake.regions[1 + 2 * channel]
        .as_ref()
        .unwrap()
        .lock()
        .unwrap()
        .bytes[0] = status;
    let mut bm = fake.regions[4].as_ref().unwrap().lock().unwrap();
    let bm_status = &mut bm.bytes[2 + 8 * channel];
    *bm_status = if interrupt {
        *bm_status | 0x04
    } else {
        *bm_status & !0x04
    };
}

#[test]
fn vfio_user_derives_the_legacy_ides_intx_from_its_bus_master_status() {
    let served = Served::start(piix3_ide());
    let fake = &served.fake;
    let mut client = vfio_user::Client::new(&served.socket).unwrap();
    // VFIO offers no INTx for the device; udrv offers one, maskable and automasked.
    let info = client.get_irq_info(IrqIndex::Intx.raw()).unwrap();
    assert_eq!((info.count, info.flags), (1, 0b111));
    let intx = EventFd::new().unwrap();
    client
        .set_irqs(
            IrqIndex::Intx.raw(),
            irq_flags::DATA_EVENTFD | irq_flags::ACTION_TRIGGER,
            0,
            1,
            &[intx.as_fd().as_raw_fd()],
        )
        .unwrap();
    // The eventfd stays with udrv: VFIO is never asked to wire an index it lacks.
    assert!(fake.client_fds.lock().unwrap().is_empty());
    let unmask = |client: &mut vfio_user::Client| {
        client
            .set_irqs(
                IrqIndex::Intx.raw(),
                irq_flags::DATA_NONE | irq_flags::ACTION_UNMASK,
                0,
                1,
                &[],
            )
            .unwrap();
    };
    let mut byte = [0u8; 1];

    // READ SECTORS of two sectors in PIO on the primary: nothing is raised while the
    // device is busy; its first block's interrupt comes after the access that
    // started the command, and is raised from udrv's polling.
    ide_channel(fake, 0, 0x80, false);
    client.region_write(0, 7, &[0x20]).unwrap();
    assert_eq!(intx.read().unwrap(), None);
    ide_channel(fake, 0, 0x58, true);
    assert_eq!(intx.wait(TIMEOUT).unwrap(), Some(1));
    // The driver's handler: alternate status, the client's EOI (unmask), status;
    // the request is not raised twice while it is being serviced.
    client.region_read(1, 2, &mut byte).unwrap();
    assert_eq!(byte, [0x58]);
    unmask(&mut client);
    client.region_read(0, 7, &mut byte).unwrap();
    assert_eq!(intx.read().unwrap(), None);
    // It acknowledges the interrupt (write-1-to-clear on the device; the fake stores
    // what is written, so the cleared value is written) and reads the block; the
    // device, busy again, raises the second block's interrupt with no access of the
    // driver's in between.
    client.region_write(4, 2, &[0x00]).unwrap();
    ide_channel(fake, 0, 0x80, false);
    client.region_read(0, 0, &mut [0u8; 2]).unwrap();
    ide_channel(fake, 0, 0x58, true);
    assert_eq!(intx.wait(TIMEOUT).unwrap(), Some(1));

    // Automasked: the secondary channel's request (IDENTIFY) waits for the unmask.
    ide_channel(fake, 1, 0x80, false);
    client.region_write(2, 7, &[0xec]).unwrap();
    ide_channel(fake, 1, 0x58, true);
    client.region_read(4, 10, &mut byte).unwrap();
    assert_eq!(byte[0] & 0x04, 0x04);
    assert_eq!(intx.read().unwrap(), None);
    unmask(&mut client);
    // The secondary's request is raised; the primary's, raised already and not yet
    // acknowledged, is not raised again.
    assert_eq!(intx.read().unwrap(), Some(1));
    unmask(&mut client);
    client.region_read(4, 2, &mut byte).unwrap();
    assert_eq!(intx.read().unwrap(), None);
    // (The counter follows the signal.)
    served.wait_for("three signals counted", |s| s.derived_intx_signals == 3);

    // Both acknowledged and idle: no command in flight, so no polling; disabled by
    // the client, nothing is raised even when the device asks.
    ide_channel(fake, 0, 0x50, false);
    ide_channel(fake, 1, 0x50, false);
    client.region_write(4, 2, &[0x00]).unwrap();
    client.region_write(4, 10, &[0x00]).unwrap();
    client
        .set_irqs(
            IrqIndex::Intx.raw(),
            irq_flags::DATA_NONE | irq_flags::ACTION_TRIGGER,
            0,
            0,
            &[],
        )
        .unwrap();
    ide_channel(fake, 0, 0x50, true);
    client.region_read(4, 2, &mut byte).unwrap();
    assert_eq!(intx.read().unwrap(), None);
    let s = served.status();
    assert_eq!((s.derived_intx_signals, s.error_replies), (3, 0));
}

#[test]
fn vfio_user_direct_mmio_offers_the_device_fd_without_the_msix_pages() {
    let mut fake = e1000e();
    fake.mmap_file = Some(memfd(1 << 20));
    let options = SessionOptions {
        direct_mmio: true,
        ..SessionOptions::default()
    };
    let served = Served::start_with(fake, options);
    let client = vfio_user::Client::new(&served.socket).unwrap();
    // BAR0 is mmap-able whole, at the region's offset in the device fd.
    let bar0 = client.region(0).unwrap();
    assert_ne!(bar0.flags & 0b100, 0, "MMAP flag");
    assert!(
        bar0.file_offset.is_some(),
        "the device fd came with the reply"
    );
    let areas: Vec<(u64, u64)> = bar0
        .sparse_areas
        .iter()
        .map(|a| (a.offset, a.size))
        .collect();
    assert_eq!(areas, vec![(0, 0x2_0000)]);
    // BAR3 holds the MSI-X table (page 0) and PBA (page 2): those stay trapped.
    let bar3 = client.region(3).unwrap();
    let areas: Vec<(u64, u64)> = bar3
        .sparse_areas
        .iter()
        .map(|a| (a.offset, a.size))
        .collect();
    assert_eq!(areas, vec![(0x1000, 0x1000), (0x3000, 0x1000)]);
    // IO BARs, the ROM and config are never mmap-able.
    for index in [2, 6, 7] {
        let r = client.region(index).unwrap();
        assert_eq!(r.flags & 0b100, 0, "region {index}");
        assert!(r.file_offset.is_none(), "region {index}");
    }
    assert!(served.status().direct_mmio);
    drop(client);
    served.wait_for("the client to go", |s| s.client.is_none());

    // Asked with room for the fixed part only: argsz says what is needed, and no CAPS
    // flag points outside the reply (QEMU refuses that), no fd comes yet.
    let mut raw = Raw::negotiated(&served);
    let ask = |argsz: u32| {
        Payload::default()
            .u32(argsz)
            .u32(0)
            .u32(3)
            .u32(0)
            .u64(0)
            .u64(0)
            .0
    };
    let (_, short) = raw.call(5, &ask(32), Vec::new());
    let u32_at = |p: &[u8], o: usize| u32::from_ne_bytes(p[o..o + 4].try_into().unwrap());
    let needed = u32_at(&short, 0);
    assert_eq!(needed, 32 + 16 + 2 * 16);
    assert_eq!(
        u32_at(&short, 4) & 0b1000,
        0,
        "no CAPS flag without the caps"
    );
    assert_eq!(u32_at(&short, 12), 0, "no cap_offset");
    assert_eq!(short.len(), 32);
    let (_, full) = raw.call(5, &ask(needed), Vec::new());
    assert_eq!(full.len(), needed as usize);
    assert_ne!(u32_at(&full, 4) & 0b1100, 0, "MMAP and CAPS");
    assert_eq!(u32_at(&full, 12), 32);
}

#[test]
fn vfio_user_a_second_client_is_refused_while_one_is_served() {
    let served = Served::start(e1000e());
    let mut first = vfio_user::Client::new(&served.socket).unwrap();
    let mut second = Raw::connect(&served);
    // Refused at once: closed, not left waiting for the first client to leave.
    assert!(second.closed());
    let s = served.status();
    assert!(s
        .last_error
        .unwrap()
        .contains("another client is being served"));
    assert_eq!(s.clients_served, 1);
    let mut ids = [0u8; 4];
    first.region_read(CONFIG, 0, &mut ids).unwrap();
    assert_eq!(ids, [0x86, 0x80, 0xd3, 0x10]);
    drop(first);
    served.wait_for("the first client to go", |s| s.client.is_none());
    let _third = Raw::negotiated(&served);
    assert_eq!(served.status().clients_served, 2);
}

/// A client speaking raw bytes.
struct Raw {
    stream: UnixStream,
    id: u16,
}

impl Raw {
    fn connect(served: &Served) -> Raw {
        let stream = UnixStream::connect(&served.socket).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Raw { stream, id: 0 }
    }

    fn negotiated(served: &Served) -> Raw {
        let mut raw = Raw::connect(served);
        let (h, _) = raw.call(1, &Payload::default().u16(0).u16(1).0, Vec::new());
        assert_eq!(h.flags & flags::ERROR, 0);
        raw
    }

    fn send_header(&mut self, header: Header, payload: &[u8], fds: Vec<OwnedFd>) {
        if fds.len() <= 16 {
            let reply = Reply {
                payload: payload.to_vec(),
                fds,
            };
            send_reply(&self.stream, &header, &reply).unwrap();
            return;
        }
        // More fds than the server's own replies ever carry.
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let head = header.encode();
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(128))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        let iov = [std::io::IoSlice::new(&head), std::io::IoSlice::new(payload)];
        sendmsg(&self.stream, &iov, &mut control, SendFlags::empty()).unwrap();
    }

    fn send(&mut self, command: u16, payload: &[u8], fds: Vec<OwnedFd>) -> u16 {
        self.id += 1;
        let header = Header {
            id: self.id,
            command,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags: 0,
            error: 0,
        };
        self.send_header(header, payload, fds);
        self.id
    }

    /// The next reply, or `None` if the server closed the connection.
    fn reply(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut head = [0u8; HEADER_SIZE];
        match self.stream.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("reading a reply: {e}"),
        }
        let h = Header::parse(&head);
        let mut payload = vec![0u8; h.size as usize - HEADER_SIZE];
        self.stream.read_exact(&mut payload).unwrap();
        Some((h, payload))
    }

    fn call(&mut self, command: u16, payload: &[u8], fds: Vec<OwnedFd>) -> (Header, Vec<u8>) {
        let id = self.send(command, payload, fds);
        let (h, p) = self.reply().expect("a reply");
        assert_eq!((h.id, h.command), (id, command));
        assert_eq!(h.flags & flags::TYPE_MASK, flags::TYPE_REPLY);
        (h, p)
    }

    /// Send a command that must be refused with `errno`, the connection kept.
    fn refused(&mut self, command: u16, payload: &[u8], fds: Vec<OwnedFd>, errno: Errno) {
        let (h, p) = self.call(command, payload, fds);
        assert_ne!(h.flags & flags::ERROR, 0, "command {command} was accepted");
        assert_eq!(h.error, errno as u32, "command {command}");
        assert!(p.is_empty(), "an error reply is only the header");
    }

    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

fn region_read(region: u32, offset: u64, count: u32) -> Vec<u8> {
    Payload::default().u64(offset).u32(region).u32(count).0
}

#[test]
fn vfio_user_hostile_messages_get_error_replies_and_the_server_goes_on() {
    let served = Served::start(e1000e());
    let mut raw = Raw::connect(&served);
    // Anything before VERSION.
    raw.refused(9, &region_read(CONFIG, 0, 4), Vec::new(), Errno::EINVAL);
    // A version udrv does not speak: refused and disconnected.
    let (h, _) = raw.call(1, &Payload::default().u16(7).u16(0).0, Vec::new());
    assert_eq!(h.error, Errno::ENOTSUP as u32);
    assert!(raw.closed());
    served.wait_for("the session to end", |s| s.client.is_none());

    let mut raw = Raw::negotiated(&served);
    // A second VERSION.
    raw.refused(
        1,
        &Payload::default().u16(0).u16(1).0,
        Vec::new(),
        Errno::EINVAL,
    );
    // Unknown command.
    raw.refused(99, &[], Vec::new(), Errno::ENOSYS);
    // argsz that lies (smaller than the reply it asks for).
    let info = Payload::default().u32(4).u32(0).u32(0).u32(0).0;
    raw.refused(4, &info, Vec::new(), Errno::EINVAL);
    let region_info = Payload::default()
        .u32(8)
        .u32(0)
        .u32(0)
        .u32(0)
        .u64(0)
        .u64(0)
        .0;
    raw.refused(5, &region_info, Vec::new(), Errno::EINVAL);
    // Wrong fd counts.
    raw.refused(13, &[], vec![memfd(0x1000)], Errno::EINVAL);
    let map = Payload::default()
        .u32(32)
        .u32(3)
        .u64(0)
        .u64(0x1000_0000)
        .u64(0x1000)
        .0;
    raw.refused(2, &map, vec![memfd(0x1000), memfd(0x1000)], Errno::EINVAL);
    let set = Payload::default()
        .u32(20)
        .u32(irq_flags::DATA_EVENTFD | irq_flags::ACTION_TRIGGER)
        .u32(2)
        .u32(0)
        .u32(1)
        .0;
    let two: Vec<OwnedFd> = (0..2)
        .map(|_| OwnedFd::from(EventFd::new().unwrap()))
        .collect();
    raw.refused(8, &set, two, Errno::EINVAL);
    // More fds than max_msg_fds: the kernel cuts them off, the message is refused.
    let many: Vec<OwnedFd> = (0..40).map(|_| memfd(0)).collect();
    raw.refused(13, &[], many, Errno::EINVAL);
    // Oversized transfer.
    raw.refused(9, &region_read(0, 0, 2 << 20), Vec::new(), Errno::E2BIG);
    // Region index out of range, and an access straddling a region's end.
    raw.refused(9, &region_read(20, 0, 4), Vec::new(), Errno::EINVAL);
    raw.refused(9, &region_read(2, 0x1e, 4), Vec::new(), Errno::EINVAL);
    raw.refused(
        9,
        &region_read(CONFIG, u64::MAX - 1, 4),
        Vec::new(),
        Errno::EINVAL,
    );
    let write = Payload::default()
        .u64(0x1ffff)
        .u32(0)
        .u32(2)
        .bytes(&[1, 2])
        .0;
    raw.refused(10, &write, Vec::new(), Errno::EINVAL);
    // IRQ index out of range; vectors past those offered.
    let info = Payload::default().u32(16).u32(0).u32(9).u32(0).0;
    raw.refused(7, &info, Vec::new(), Errno::EINVAL);
    let set = Payload::default()
        .u32(20)
        .u32(irq_flags::DATA_NONE | irq_flags::ACTION_TRIGGER)
        .u32(2)
        .u32(4)
        .u32(2)
        .0;
    raw.refused(8, &set, Vec::new(), Errno::EINVAL);
    // DMA: a map into the MSI window, and one overlapping another.
    let map = |at: u64| {
        Payload::default()
            .u32(32)
            .u32(3)
            .u64(0)
            .u64(at)
            .u64(0x1000)
            .0
    };
    raw.refused(2, &map(0xfee0_0000), vec![memfd(0x1000)], Errno::EINVAL);
    let (h, _) = raw.call(2, &map(0x1000_0000), vec![memfd(0x1000)]);
    assert_eq!(h.flags & flags::ERROR, 0);
    raw.refused(2, &map(0x1000_0000), vec![memfd(0x1000)], Errno::EEXIST);
    // Unmap of a range never mapped: success.
    let unmap = Payload::default()
        .u32(24)
        .u32(0)
        .u64(0x7000_0000)
        .u64(0x1000)
        .0;
    let (h, p) = raw.call(3, &unmap, Vec::new());
    assert_eq!(h.flags & flags::ERROR, 0);
    assert_eq!(p, unmap);
    // Write-multi not negotiated.
    let multi = Payload::default().u64(1).u64(0).u32(0).u32(4).u64(0).0;
    raw.refused(15, &multi, Vec::new(), Errno::ENOTSUP);
    // Posted writes: no reply, and the next reply is the next command's.
    let id = raw.id + 1;
    raw.id = id;
    let write = Payload::default()
        .u64(0x200)
        .u32(0)
        .u32(4)
        .bytes(&[9, 9, 9, 9])
        .0;
    raw.send_header(
        Header {
            id,
            command: 10,
            size: (HEADER_SIZE + write.len()) as u32,
            flags: flags::NO_REPLY,
            error: 0,
        },
        &write,
        Vec::new(),
    );
    let (h, p) = raw.call(9, &region_read(0, 0x200, 4), Vec::new());
    assert_eq!(h.flags & flags::ERROR, 0);
    assert_eq!(&p[16..], &[9, 9, 9, 9]);

    // A header whose size cannot be true, or past the largest message: an error reply,
    // then a disconnect; the session ends.
    let refused_header = |mut raw: Raw, command: u16, size: u32| {
        raw.id += 1;
        let id = raw.id;
        raw.send_header(
            Header {
                id,
                command,
                size,
                flags: 0,
                error: 0,
            },
            &[],
            Vec::new(),
        );
        let (h, _) = raw.reply().unwrap();
        assert!(raw.closed());
        served.wait_for("the session to end", |s| s.client.is_none());
        h.error
    };
    assert_eq!(refused_header(raw, 9, 8), Errno::EINVAL as u32);
    let raw = Raw::negotiated(&served);
    assert_eq!(refused_header(raw, 10, 64 << 20), Errno::E2BIG as u32);
    // A message cut off mid-payload, then the connection closed.
    let mut raw = Raw::negotiated(&served);
    raw.stream
        .write_all(
            &Header {
                id: 1,
                command: 9,
                size: 32,
                flags: 0,
                error: 0,
            }
            .encode(),
        )
        .unwrap();
    drop(raw);

    // Through all of it the device stayed servable: a well-behaved client works.
    let s = served.wait_for("the hostile clients to go", |s| s.client.is_none());
    assert_eq!(s.error_replies, 19, "{s:?}");
    assert!(s.disconnects_for_errors >= 3, "{s:?}");
    assert_eq!(served.mapper.mapped_bytes(), 0);
    let mut client = vfio_user::Client::new(&served.socket).unwrap();
    let mut ids = [0u8; 4];
    client.region_read(CONFIG, 0, &mut ids).unwrap();
    assert_eq!(ids, [0x86, 0x80, 0xd3, 0x10]);
}

#[test]
fn vfio_user_set_irqs_reach_the_device_as_sent() {
    let served = Served::start(e1000e());
    let mut raw = Raw::negotiated(&served);
    served.fake.irq_ops();
    let set = |flags: u32, index: u32, start: u32, count: u32, data: &[u8]| {
        Payload::default()
            .u32((20 + data.len()) as u32)
            .u32(flags)
            .u32(index)
            .u32(start)
            .u32(count)
            .bytes(data)
            .0
    };
    use irq_flags::*;
    // INTx trigger and resample eventfds, an unmask, ERR.
    let trigger = EventFd::new().unwrap();
    let (h, _) = raw.call(
        8,
        &set(DATA_EVENTFD | ACTION_TRIGGER, 0, 0, 1, &[]),
        vec![trigger.try_clone_fd().unwrap()],
    );
    assert_eq!(h.flags & flags::ERROR, 0);
    let resample = OwnedFd::from(EventFd::new().unwrap());
    raw.call(
        8,
        &set(DATA_EVENTFD | ACTION_UNMASK, 0, 0, 1, &[]),
        vec![resample],
    );
    raw.call(8, &set(DATA_NONE | ACTION_UNMASK, 0, 0, 1, &[]), Vec::new());
    raw.call(8, &set(DATA_BOOL | ACTION_MASK, 0, 0, 1, &[1]), Vec::new());
    raw.call(
        8,
        &set(DATA_EVENTFD | ACTION_TRIGGER, 3, 0, 1, &[]),
        vec![OwnedFd::from(EventFd::new().unwrap())],
    );
    assert!(served.fake.fire(IrqIndex::Intx, 0));
    assert_eq!(trigger.wait(TIMEOUT).unwrap(), Some(1));
    // INTx off, then MSI-X vectors 0 and 2 (vector 1 without an fd: QEMU's -1).
    raw.call(
        8,
        &set(DATA_NONE | ACTION_TRIGGER, 0, 0, 0, &[]),
        Vec::new(),
    );
    let v0 = EventFd::new().unwrap();
    let (h, _) = raw.call(
        8,
        &set(DATA_EVENTFD | ACTION_TRIGGER, 2, 0, 2, &[]),
        vec![v0.try_clone_fd().unwrap()],
    );
    assert_eq!(h.flags & flags::ERROR, 0);
    assert!(served.fake.fire(IrqIndex::Msix, 0));
    assert!(!served.fake.fire(IrqIndex::Msix, 1), "vector 1 has no fd");
    assert_eq!(v0.wait(TIMEOUT).unwrap(), Some(1));
    // MSI-X cannot be masked through VFIO.
    raw.refused(
        8,
        &set(DATA_NONE | ACTION_MASK, 2, 0, 1, &[]),
        Vec::new(),
        Errno::EINVAL,
    );
    use udriver::vfio::IrqAction::*;
    assert_eq!(
        served.fake.irq_ops(),
        vec![
            IrqOp::Set(IrqIndex::Intx, Trigger, 0, 1),
            IrqOp::Set(IrqIndex::Intx, Unmask, 0, 1),
            IrqOp::Set(IrqIndex::Intx, Unmask, 0, 1),
            IrqOp::Set(IrqIndex::Intx, Mask, 0, 1),
            IrqOp::Set(IrqIndex::Err, Trigger, 0, 1),
            IrqOp::Set(IrqIndex::Intx, Trigger, 0, 0),
            IrqOp::Set(IrqIndex::Msix, Trigger, 0, 2),
        ]
    );
    // The guest's MSI-X enable through config rewires nothing: the client owns the
    // vectors.
    let control = (0x8000u16 | 4).to_le_bytes();
    raw.call(
        10,
        &Payload::default()
            .u64(0xa2)
            .u32(CONFIG)
            .u32(2)
            .bytes(&control)
            .0,
        Vec::new(),
    );
    assert!(served.fake.irq_ops().is_empty());
    // A reset keeps ERR wired (QEMU registers it once), drops MSI-X.
    raw.call(13, &[], Vec::new());
    let ops = served.fake.irq_ops();
    assert!(
        ops.contains(&IrqOp::Set(IrqIndex::Msix, Trigger, 0, 0)),
        "{ops:?}"
    );
    assert!(
        !ops.contains(&IrqOp::Set(IrqIndex::Err, Trigger, 0, 0)),
        "{ops:?}"
    );
    // Disconnect: every vector the client wired is off.
    drop(raw);
    served.wait_for("the client to go", |s| s.client.is_none());
    let ops = served.fake.irq_ops();
    assert!(
        ops.contains(&IrqOp::Set(IrqIndex::Err, Trigger, 0, 0)),
        "{ops:?}"
    );
    assert!(served.fake.client_fds.lock().unwrap().is_empty());
}

#[test]
fn vfio_user_region_info_and_write_multi() {
    let served = Served::start(e1000e());
    let mut raw = Raw::connect(&served);
    let mut version = Payload::default().u16(0).u16(1).0;
    version.extend_from_slice(br#"{"capabilities":{"write_multiple":true}}"#);
    version.push(0);
    let (_, reply) = raw.call(1, &version, Vec::new());
    let json: serde_json::Value = serde_json::from_slice(&reply[4..reply.len() - 1]).unwrap();
    let caps = &json["capabilities"];
    assert_eq!(caps["write_multiple"], true);
    assert_eq!(caps["max_data_xfer_size"], 1 << 20);
    assert_eq!(caps["pgsizes"], 4096);
    // QEMU refuses more than 16.
    assert_eq!(caps["max_msg_fds"], 16);
    assert_eq!(caps["max_dma_maps"], 65535);

    let (_, info) = raw.call(
        4,
        &Payload::default().u32(16).u32(0).u32(0).u32(0).0,
        Vec::new(),
    );
    assert_eq!(info, Payload::default().u32(16).u32(0b11).u32(9).u32(5).0);
    // Without direct MMIO no region is mmap-able.
    let (h, info) = raw.call(
        5,
        &Payload::default()
            .u32(32)
            .u32(0)
            .u32(0)
            .u32(0)
            .u64(0)
            .u64(0)
            .0,
        Vec::new(),
    );
    assert_eq!(h.size as usize, HEADER_SIZE + 32);
    assert_eq!(u32::from_ne_bytes(info[4..8].try_into().unwrap()), 0b11);
    // Two posted writes in one message.
    let multi = Payload::default()
        .u64(2)
        .u64(0x300)
        .u32(0)
        .u32(4)
        .bytes(&[1, 2, 3, 4, 0, 0, 0, 0])
        .u64(0x8)
        .u32(2)
        .u32(1)
        .bytes(&[7, 0, 0, 0, 0, 0, 0, 0])
        .0;
    let (h, p) = raw.call(15, &multi, Vec::new());
    assert_eq!(h.flags & flags::ERROR, 0);
    assert_eq!(p, 2u64.to_ne_bytes());
    assert_eq!(served.fake.region_bytes(0, 0x300, 4), vec![1, 2, 3, 4]);
    assert_eq!(served.fake.region_bytes(2, 0x8, 1), vec![7]);
}

/// The session with no socket: what a fuzzer drives.
#[test]
fn vfio_user_session_handles_a_message_sequence_without_a_socket() {
    let fake = Arc::new(e1000e());
    let mapper = Arc::new(RecordingMapper::new());
    let function = PassthroughFunction::new(fake.clone()).unwrap();
    let mut session = Session::new(function, mapper.clone(), SessionOptions::default()).unwrap();
    let msg = |command: u16, payload: &[u8]| {
        (
            Header {
                id: command,
                command,
                size: (HEADER_SIZE + payload.len()) as u32,
                flags: 0,
                error: 0,
            },
            payload.to_vec(),
        )
    };
    let (h, p) = msg(1, &Payload::default().u16(0).u16(1).0);
    assert!(
        matches!(session.handle(&h, &p, Vec::new()), Outcome::Reply(r, _) if r.flags & flags::ERROR == 0)
    );
    let (h, p) = msg(9, &region_read(CONFIG, 0, 256));
    match session.handle(&h, &p, Vec::new()) {
        Outcome::Reply(r, reply) => {
            assert_eq!(r.size as usize, HEADER_SIZE + 16 + 256);
            assert_eq!(&reply.payload[16..20], &[0x86, 0x80, 0xd3, 0x10]);
        }
        other => panic!("{other:?}"),
    }
    let map = Payload::default()
        .u32(32)
        .u32(3)
        .u64(0)
        .u64(0x4000_0000)
        .u64(0x2000)
        .0;
    let (h, p) = msg(2, &map);
    session.handle(&h, &p, vec![memfd(0x2000)]);
    assert_eq!(mapper.mapped_bytes(), 0x2000);
    let unmap_all = Payload::default().u32(24).u32(2).u64(0).u64(0).0;
    let (h, p) = msg(3, &unmap_all);
    assert!(
        matches!(session.handle(&h, &p, Vec::new()), Outcome::Reply(r, _) if r.flags & flags::ERROR == 0)
    );
    assert_eq!(mapper.mapped_bytes(), 0);
    // Garbage of every length never panics.
    for len in 0..64usize {
        for command in 0..20u16 {
            let payload: Vec<u8> = (0..len)
                .map(|i| (i * 37 + command as usize) as u8)
                .collect();
            let (h, p) = msg(command, &payload);
            let _ = session.handle(&h, &p, Vec::new());
        }
    }
    let status = session.status();
    assert!(status.error_replies > 0);
    // A device that fails under a config read: all-ones to the client, the error in
    // the status.
    *fake.broken.lock().unwrap() = true;
    let (h, p) = msg(9, &region_read(CONFIG, 0x40, 4));
    match session.handle(&h, &p, Vec::new()) {
        Outcome::Reply(_, reply) => assert_eq!(&reply.payload[16..], &[0xff; 4]),
        other => panic!("{other:?}"),
    }
    let error = session.status().last_error.unwrap();
    assert!(error.contains("device gone"), "{error}");
    *fake.broken.lock().unwrap() = false;
    let function = session.end().unwrap();
    assert_eq!(function.device().name, "0000:00:04.0");
}

/// REGION_READ round trips against a raw UNIX-socket ping-pong of the same sizes
/// (32-byte request, 36-byte reply) in the same process. A benchmark: it prints
/// figures and asserts nothing about time. Run with
/// `cargo test -p vpci --release --lib vfio_user_bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: prints figures"]
fn vfio_user_bench_region_read_against_a_raw_ping_pong() {
    const ROUNDS: usize = 20_000;
    let served = Served::start(e1000e());
    let mut raw = Raw::negotiated(&served);
    let request = {
        let payload = region_read(0, 0x100, 4);
        let mut m = Header {
            id: 1,
            command: 9,
            size: (HEADER_SIZE + payload.len()) as u32,
            flags: 0,
            error: 0,
        }
        .encode()
        .to_vec();
        m.extend_from_slice(&payload);
        m
    };
    let mut reply = [0u8; 36];
    let mut served_rtt = |rounds: usize| {
        let start = Instant::now();
        for _ in 0..rounds {
            raw.stream.write_all(&request).unwrap();
            raw.stream.read_exact(&mut reply).unwrap();
        }
        start.elapsed()
    };

    let (mut near, mut far) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut req = [0u8; 32];
        let answer = [0x5au8; 36];
        while far.read_exact(&mut req).is_ok() {
            if far.write_all(&answer).is_err() {
                break;
            }
        }
    });
    let mut raw_rtt = |rounds: usize| {
        let mut answer = [0u8; 36];
        let start = Instant::now();
        for _ in 0..rounds {
            near.write_all(&request).unwrap();
            near.read_exact(&mut answer).unwrap();
        }
        start.elapsed()
    };
    // Warm both, then interleave batches so that load on the machine (other builds
    // share it) hits both alike; the median batch is reported.
    served_rtt(1000);
    raw_rtt(1000);
    const BATCHES: usize = 40;
    let mut pairs: Vec<(f64, f64)> = (0..BATCHES)
        .map(|_| {
            let per = |d: Duration| d.as_nanos() as f64 / (ROUNDS / BATCHES) as f64;
            let s = per(served_rtt(ROUNDS / BATCHES));
            let r = per(raw_rtt(ROUNDS / BATCHES));
            (s, r)
        })
        .collect();
    drop(near);
    echo.join().unwrap();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let served_ns = median(pairs.iter().map(|p| p.0).collect());
    let raw_ns = median(pairs.iter().map(|p| p.1).collect());
    let ratio = median(pairs.drain(..).map(|(s, r)| s / r).collect());
    println!(
        "vfio-user REGION_READ (4 bytes) round trip: median {served_ns:.0} ns; raw UNIX-socket ping-pong (32/36 bytes): median {raw_ns:.0} ns; median batch ratio {ratio:.2} ({BATCHES} batches of {})",
        ROUNDS / BATCHES
    );
    assert_eq!(&reply[32..], &served.fake.region_bytes(0, 0x100, 4)[..]);
}

/// Direct against trapped BAR reads, as a client sees them: a 4-byte REGION_READ of
/// BAR0 through the socket, and the same read from the client's own mapping of the
/// device fd that `direct-mmio` hands it (here the fake device's memfd, so this
/// measures the path, not a device's MMIO latency; the rig's nested bench measures
/// that). `cargo test -p vpci --release --lib vfio_user_bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: prints figures"]
fn vfio_user_bench_direct_against_trapped_bar_read() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    const ROUNDS: usize = 20_000;
    const BATCHES: usize = 40;
    let mut fake = e1000e();
    fake.mmap_file = Some(memfd(1 << 20));
    let options = SessionOptions {
        direct_mmio: true,
        ..SessionOptions::default()
    };
    let served = Served::start_with(fake, options);
    let mut client = vfio_user::Client::new(&served.socket).unwrap();
    let bar0 = client.region(0).unwrap();
    let file = bar0
        .file_offset
        .clone()
        .expect("direct-mmio sends the device fd");
    let mapped: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), 0x2_0000, Some(file))])
            .expect("mapping BAR0 from the device fd");
    let mut trapped = |rounds: usize| {
        let mut data = [0u8; 4];
        let start = Instant::now();
        for _ in 0..rounds {
            client.region_read(0, 0x100, &mut data).unwrap();
        }
        start.elapsed()
    };
    let direct = |rounds: usize| {
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(mapped.read_obj::<u32>(GuestAddress(0x100)).unwrap());
        }
        start.elapsed()
    };
    trapped(1000);
    direct(1000);
    let per = |d: Duration| d.as_nanos() as f64 / (ROUNDS / BATCHES) as f64;
    let mut pairs: Vec<(f64, f64)> = (0..BATCHES)
        .map(|_| {
            (
                per(trapped(ROUNDS / BATCHES)),
                per(direct(ROUNDS / BATCHES)),
            )
        })
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let trapped_ns = median(pairs.iter().map(|p| p.0).collect());
    let direct_ns = median(pairs.iter().map(|p| p.1).collect());
    let ratio = median(pairs.drain(..).map(|(t, d)| t / d).collect());
    println!(
        "BAR0 4-byte read: trapped (REGION_READ) median {trapped_ns:.0} ns; direct (device fd mapping) median {direct_ns:.1} ns; trapped/direct {ratio:.0}x ({BATCHES} batches of {})",
        ROUNDS / BATCHES
    );
}
