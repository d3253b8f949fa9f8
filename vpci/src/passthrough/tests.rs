//! Host tests of the passthrough function over [`FakeDevice`]s shaped like the rig's
//! e1000e (PCI Express, MSI + MSI-X, a ROM, hidden capabilities) and ich9-ahci
//! (conventional, IO + memory BARs, multi-vector MSI with masking).

use udriver::vfio::{IrqIndex, MmapArea};

use super::fake_device::{FakeDevice, IrqOp};
use super::*;
use crate::bar::{BarIndex, BarKind};
use crate::bus::devfn::DevFn;
use crate::bus::function::PciFunction;
use crate::bus::{AccessTarget, BusConfig, BusEvent, VirtualBus};
use crate::config::access_width::AccessWidth::{self, Byte, Dword, Word};
use crate::config::capability::{walk_capabilities, walk_extended_capabilities};
use crate::config::regs::{cap, command, exp, ext_cap, header, msi, msix, status};
use crate::interrupt::routing::{InterruptKind, MsiMessage};

const E1000E_STATUS: u32 = 0x8008_0783;

fn put(image: &mut [u8], offset: usize, bytes: &[u8]) {
    image[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn put32(image: &mut [u8], offset: usize, value: u32) {
    put(image, offset, &value.to_le_bytes());
}

fn pattern(offset: u64) -> u8 {
    (offset as u8) ^ ((offset >> 8) as u8) ^ 0xa5
}

/// e1000e as VFIO shows it, with an extra 64-bit BAR, a vendor-specific capability
/// and an SR-IOV capability to hide, and stale host state in MSI and the BARs.
pub(crate) fn e1000e() -> FakeDevice {
    let mut c = vec![0u8; 4096];
    put(&mut c, 0x00, &[0x86, 0x80, 0xd3, 0x10]);
    put(&mut c, 0x04, &0x0006u16.to_le_bytes());
    put(
        &mut c,
        0x06,
        &(status::CAPABILITY_LIST | status::RECEIVED_MASTER_ABORT).to_le_bytes(),
    );
    put(&mut c, 0x09, &[0x00, 0x00, 0x02]);
    c[0x0e] = 0x80;
    put32(&mut c, 0x10, 0xfebc_0000);
    put32(&mut c, 0x14, 0xfeb8_0000);
    put32(&mut c, 0x18, 0x0000_c001);
    put32(&mut c, 0x1c, 0xfebe_0000);
    put32(&mut c, 0x20, 0x0000_000c);
    put32(&mut c, 0x24, 0x0000_0001);
    put32(&mut c, 0x30, 0xfeb4_0000);
    put(&mut c, 0x2c, &[0x86, 0x80, 0x00, 0x00]);
    c[0x34] = 0xc8;
    c[0x3c] = 0x0b;
    c[0x3d] = 1;
    // PM -> MSI -> PCIe -> MSI-X -> vendor-specific.
    put(&mut c, 0xc8, &[cap::POWER_MANAGEMENT, 0xd0, 0x23, 0x00]);
    put(&mut c, 0xd0, &[cap::MSI, 0xe0]);
    put(
        &mut c,
        0xd2,
        &(msi::CONTROL_64BIT | msi::CONTROL_ENABLE).to_le_bytes(),
    );
    put32(&mut c, 0xd4, 0xfee0_1000);
    put(&mut c, 0xe0, &[cap::PCI_EXPRESS, 0xa0, 0x02, 0x00]);
    put32(&mut c, 0xe4, 0x0000_8cc1);
    put32(&mut c, 0xec, 0x0003_0c11);
    put(&mut c, 0xa0, &[cap::MSIX, 0xf0, 0x04, 0x00]);
    put32(&mut c, 0xa4, 0x0000_0003);
    put32(&mut c, 0xa8, 0x0000_2003);
    put(&mut c, 0xf0, &[cap::VENDOR_SPECIFIC, 0x00, 0x08, 0x42]);
    // AER -> SR-IOV -> DSN.
    put32(
        &mut c,
        0x100,
        ext_cap::header(ext_cap::ADVANCED_ERROR_REPORTING, 2, 0x140),
    );
    put32(
        &mut c,
        0x140,
        ext_cap::header(ext_cap::SINGLE_ROOT_IOV, 1, 0x180),
    );
    put32(&mut c, 0x148, 0x0000_0008);
    put32(
        &mut c,
        0x180,
        ext_cap::header(ext_cap::DEVICE_SERIAL_NUMBER, 1, 0),
    );
    put32(&mut c, 0x184, 0x1234_5678);
    let mut device = FakeDevice::new("0000:00:04.0", c)
        .with_region(0, 0x2_0000, false, pattern)
        .with_region(1, 0x2_0000, false, pattern)
        .with_region(2, 0x20, true, pattern)
        .with_region(3, 0x4000, false, pattern)
        .with_region(4, 0x10_0000, false, pattern)
        .with_region(6, 0x4_0000, false, |o| match o {
            0 => 0x55,
            1 => 0xaa,
            o => pattern(o),
        });
    // The ROM is read through pread only.
    device.regions[6]
        .as_ref()
        .unwrap()
        .lock()
        .unwrap()
        .mmap_areas
        .clear();
    device.regions[0].as_ref().unwrap().lock().unwrap().bytes[8..12]
        .copy_from_slice(&E1000E_STATUS.to_le_bytes());
    device.irq_counts = [1, 1, 5];
    device
}

/// ich9-ahci as VFIO shows it: conventional config, BAR4 IO, BAR5 ABAR, MSI claiming
/// 4 maskable vectors of which VFIO offers 1, SATA and a vendor-specific capability.
pub(super) fn ahci() -> FakeDevice {
    let mut c = vec![0u8; 256];
    put(&mut c, 0x00, &[0x86, 0x80, 0x22, 0x29]);
    put(&mut c, 0x06, &status::CAPABILITY_LIST.to_le_bytes());
    put(&mut c, 0x09, &[0x01, 0x06, 0x01]);
    put32(&mut c, 0x20, 0x0000_c041);
    put32(&mut c, 0x24, 0xfebf_1000);
    c[0x34] = 0x80;
    c[0x3d] = 1;
    put(&mut c, 0x80, &[cap::MSI, 0xa8]);
    put(
        &mut c,
        0x82,
        &(msi::CONTROL_PER_VECTOR_MASK | (2 << msi::CONTROL_MMC_SHIFT)).to_le_bytes(),
    );
    put(&mut c, 0xa8, &[cap::SATA, 0xb0, 0x10, 0x00]);
    put32(&mut c, 0xac, 0x0000_0048);
    put(&mut c, 0xb0, &[cap::VENDOR_SPECIFIC, 0x00, 0x0c, 0x00]);
    let mut device = FakeDevice::new("0000:00:06.0", c)
        .with_region(4, 0x20, true, pattern)
        .with_region(5, 0x1000, false, pattern);
    device.irq_counts = [1, 1, 0];
    device
}

fn bar(i: u8) -> BarIndex {
    BarIndex::new(i).unwrap()
}

const E1000E_SLOT: u8 = 4;
const AHCI_SLOT: u8 = 6;

fn slot(device: u8) -> DevFn {
    DevFn::new(device, 0).unwrap()
}

fn bus_with(device: FakeDevice, at: u8) -> VirtualBus {
    let mut bus = VirtualBus::new(BusConfig::default()).unwrap();
    let function = PassthroughFunction::new(device).unwrap();
    bus.add_function(slot(at), Box::new(function)).unwrap();
    bus
}

fn function(bus: &mut VirtualBus, at: u8) -> &mut PassthroughFunction<FakeDevice> {
    bus.function_as::<PassthroughFunction<FakeDevice>>(slot(at))
        .unwrap()
}

fn cfg_read(bus: &mut VirtualBus, at: u8, register: u16, width: AccessWidth) -> u32 {
    bus.config_read(0, slot(at), register, width)
}

fn cfg_write(bus: &mut VirtualBus, at: u8, register: u16, width: AccessWidth, value: u32) {
    bus.config_write(0, slot(at), register, width, value)
}

/// Size a BAR the way Linux does: save, write all-ones, read, restore.
fn size_bar(bus: &mut VirtualBus, at: u8, index: u8) -> u32 {
    let register = header::bar(index);
    let saved = cfg_read(bus, at, register, Dword);
    cfg_write(bus, at, register, Dword, u32::MAX);
    let sized = cfg_read(bus, at, register, Dword);
    cfg_write(bus, at, register, Dword, saved);
    sized
}

fn bar_base(bus: &VirtualBus, at: u8, index: BarIndex) -> u64 {
    bus.bar_status(slot(at))
        .iter()
        .find(|s| s.bar == index)
        .and_then(|s| s.programmed)
        .unwrap()
}

fn mmio_u32(bus: &mut VirtualBus, address: u64) -> u32 {
    let mut b = [0u8; 4];
    bus.mmio_read(address, &mut b).unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn bars_size_from_the_regions_and_hide_host_addresses() {
    let device = e1000e();
    let mut f = PassthroughFunction::new(device).unwrap();
    let layout: Vec<(u8, BarKind, u64)> = f
        .bar_layout()
        .iter()
        .map(|(i, d)| (i.get(), d.kind, d.size))
        .collect();
    let mem32 = BarKind::Memory32 {
        prefetchable: false,
    };
    assert_eq!(
        layout,
        vec![
            (0, mem32, 0x2_0000),
            (1, mem32, 0x2_0000),
            (2, BarKind::Io, 0x20),
            (3, mem32, 0x4000),
            (4, BarKind::Memory64 { prefetchable: true }, 0x10_0000),
            (6, mem32, 0x4_0000),
        ]
    );
    // Before the bus places them, the guest sees flags only, never the host's addresses.
    assert_eq!(f.config_read(header::bar(0), Dword), 0);
    assert_eq!(f.config_read(header::bar(2), Dword), 1);
    assert_eq!(f.config_read(header::bar(4), Dword), 0xc);
    assert_eq!(f.config_read(header::bar(5), Dword), 0);
    assert_eq!(f.config_read(header::ROM_ADDRESS, Dword), 0);

    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    assert_eq!(size_bar(&mut bus, E1000E_SLOT, 0), 0xfffe_0000);
    assert_eq!(size_bar(&mut bus, E1000E_SLOT, 2), 0xffff_ffe1);
    assert_eq!(size_bar(&mut bus, E1000E_SLOT, 3), 0xffff_c000);
    assert_eq!(size_bar(&mut bus, E1000E_SLOT, 4), 0xfff0_000c);
    assert_eq!(size_bar(&mut bus, E1000E_SLOT, 5), 0xffff_ffff);
    let rom = header::ROM_ADDRESS;
    cfg_write(&mut bus, E1000E_SLOT, rom, Dword, !1);
    assert_eq!(cfg_read(&mut bus, E1000E_SLOT, rom, Dword), 0xfffc_0000);
}

#[test]
fn header_is_virtual_but_bus_mastering_reaches_the_device() {
    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    let at = E1000E_SLOT;
    assert_eq!(cfg_read(&mut bus, at, 0, Dword), 0x10d3_8086);
    assert_eq!(cfg_read(&mut bus, at, header::CLASS_PROG_IF, Byte), 0);
    assert_eq!(cfg_read(&mut bus, at, header::CLASS_BASE, Byte), 0x02);
    assert_eq!(
        cfg_read(&mut bus, at, header::HEADER_TYPE, Byte),
        0,
        "no multi-function bit: the bus decides it"
    );
    // The bus enabled IO and memory decode for the guest; the device had memory
    // decode on already, got IO decode, and lost bus mastering until the guest asks.
    let guest = cfg_read(&mut bus, at, header::COMMAND, Word) as u16;
    assert_eq!(guest, command::IO_SPACE | command::MEMORY_SPACE);
    let real = || {
        let mut b = bus_with(e1000e(), E1000E_SLOT);
        function(&mut b, E1000E_SLOT).device().config_u16(4)
    };
    assert_eq!(real(), command::IO_SPACE | command::MEMORY_SPACE);

    cfg_write(
        &mut bus,
        at,
        header::COMMAND,
        Word,
        u32::from(command::BUS_MASTER),
    );
    let f = function(&mut bus, at);
    assert_eq!(
        f.device().config_u16(4),
        command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER,
        "decode stays on in the device while the guest turned it off"
    );
    assert_eq!(
        cfg_read(&mut bus, at, header::COMMAND, Word) as u16,
        command::BUS_MASTER
    );
    assert!(
        bus.decoded_bars().is_empty(),
        "guest decode off: nothing routed"
    );

    // Status: the device's error bits, write-1-to-clear on the device.
    let status = cfg_read(&mut bus, at, header::STATUS, Word) as u16;
    assert_eq!(
        status,
        status::CAPABILITY_LIST | status::RECEIVED_MASTER_ABORT
    );
    cfg_write(
        &mut bus,
        at,
        header::COMMAND,
        Dword,
        u32::from(status::RECEIVED_MASTER_ABORT) << 16 | u32::from(command::MEMORY_SPACE),
    );
    assert_eq!(
        cfg_read(&mut bus, at, header::STATUS, Word) as u16,
        status::CAPABILITY_LIST
    );
    assert_eq!(
        function(&mut bus, at).device().config_u16(4),
        command::IO_SPACE | command::MEMORY_SPACE,
        "a dword command write clears bus mastering on the device too"
    );
    // Interrupt line is the guest's; the bus programmed the slot's GSI.
    let line = cfg_read(&mut bus, at, header::INTERRUPT_LINE, Byte);
    assert_eq!(line, 16 + (u32::from(at)) % 8);
    assert_eq!(cfg_read(&mut bus, at, header::INTERRUPT_PIN, Byte), 1);
}

#[test]
fn guest_sees_only_safe_capabilities() {
    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    let mut read = |o, w| bus.config_read(0, slot(E1000E_SLOT), o, w);
    let standard: Vec<(u8, u16)> = walk_capabilities(&mut read)
        .unwrap()
        .iter()
        .map(|c| (c.id, c.offset))
        .collect();
    assert_eq!(
        standard,
        vec![
            (cap::POWER_MANAGEMENT, 0xc8),
            (cap::MSI, 0xd0),
            (cap::PCI_EXPRESS, 0xe0),
            (cap::MSIX, 0xa0)
        ]
    );
    let extended: Vec<u16> = walk_extended_capabilities(&mut read)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        extended,
        vec![
            ext_cap::ADVANCED_ERROR_REPORTING,
            ext_cap::DEVICE_SERIAL_NUMBER
        ]
    );
    assert_eq!(read(0xf0, Dword), 0, "vendor-specific bytes hidden");
    assert_eq!(read(0x148, Dword), 0, "SR-IOV bytes hidden");
    // Kept bodies are the device's.
    assert_eq!(read(0x184, Dword), 0x1234_5678);
    assert_eq!(read(0xca, Word), 0x0023);
    let flags = read(0xe2, Word) as u16;
    assert_eq!(
        (flags & exp::FLAGS_TYPE_MASK) >> exp::FLAGS_TYPE_SHIFT,
        exp::TYPE_RC_INTEGRATED_ENDPOINT
    );
    assert_eq!(read(0xec, Dword), 0, "no link on the root bus");
    assert_eq!(read(0xe4, Dword), 0x8cc1, "device capabilities stay");
    let f = function(&mut bus, E1000E_SLOT);
    let hidden: Vec<(u16, bool)> = f
        .hidden_capabilities()
        .iter()
        .map(|h| (h.id, h.extended))
        .collect();
    assert_eq!(
        hidden,
        vec![
            (cap::VENDOR_SPECIFIC.into(), false),
            (ext_cap::SINGLE_ROOT_IOV, true)
        ]
    );
}

#[test]
fn bar_accesses_reach_the_regions_wherever_the_guest_moves_them() {
    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    let at = E1000E_SLOT;
    let base = bar_base(&bus, at, bar(0));
    assert_eq!(mmio_u32(&mut bus, base + 8), E1000E_STATUS);
    // The guest moves BAR0; the old address stops answering and the new one reaches
    // the same register.
    let moved = 0xd000_0000u32;
    cfg_write(&mut bus, at, header::bar(0), Dword, moved);
    let events = bus.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, BusEvent::BarUnmapped(d) if d.base == base && d.bar == bar(0))));
    assert!(events
        .iter()
        .any(|e| matches!(e, BusEvent::BarMapped(d) if d.base == u64::from(moved))));
    assert!(bus.mmio_read(base + 8, &mut [0u8; 4]).is_err());
    assert_eq!(mmio_u32(&mut bus, u64::from(moved) + 8), E1000E_STATUS);
    // Writes land in the region.
    bus.mmio_write(u64::from(moved) + 0xd0, &0x1f_0000u32.to_le_bytes())
        .unwrap();
    let f = function(&mut bus, at);
    assert_eq!(
        f.device().region_bytes(0, 0xd0, 4),
        0x1f_0000u32.to_le_bytes()
    );
    // IO BAR through port IO.
    let io = bar_base(&bus, at, bar(2)) as u16;
    let mut b = [0u8; 2];
    bus.pio_read(io + 6, &mut b).unwrap();
    assert_eq!(b, [pattern(6), pattern(7)]);
    // The 64-bit BAR sits in the MEM64 window.
    let high = bar_base(&bus, at, bar(4));
    assert!(high >= 1 << 32, "{high:#x}");
    assert_eq!(
        mmio_u32(&mut bus, high + 0x1000),
        u32::from_le_bytes([
            pattern(0x1000),
            pattern(0x1001),
            pattern(0x1002),
            pattern(0x1003)
        ])
    );
}

#[test]
fn rom_is_read_from_the_rom_region_once_enabled() {
    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    let at = E1000E_SLOT;
    let rom = bar_base(&bus, at, BarIndex::ROM);
    assert!(bus.mmio_read(rom, &mut [0u8; 2]).is_err(), "disabled");
    cfg_write(&mut bus, at, header::ROM_ADDRESS, Dword, rom as u32 | 1);
    let mut sig = [0u8; 2];
    bus.mmio_read(rom, &mut sig).unwrap();
    assert_eq!(sig, [0x55, 0xaa]);
    bus.mmio_write(rom, &[0, 0]).unwrap();
    bus.mmio_read(rom, &mut sig).unwrap();
    assert_eq!(sig, [0x55, 0xaa], "the ROM is read-only");
}

/// Program MSI-X table entry `vector` through the guest's view of BAR3.
fn write_msix_entry(
    bus: &mut VirtualBus,
    base: u64,
    vector: u64,
    address: u64,
    data: u32,
    masked: bool,
) {
    let entry = base + vector * 16;
    bus.mmio_write(entry, &(address as u32).to_le_bytes())
        .unwrap();
    bus.mmio_write(entry + 4, &((address >> 32) as u32).to_le_bytes())
        .unwrap();
    bus.mmio_write(entry + 8, &data.to_le_bytes()).unwrap();
    bus.mmio_write(entry + 12, &u32::from(masked).to_le_bytes())
        .unwrap();
}

#[test]
fn msix_programming_becomes_vfio_vectors_with_virtual_masking() {
    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    let at = E1000E_SLOT;
    assert_eq!(
        function(&mut bus, at).device().irq_ops(),
        vec![IrqOp::Wire(IrqIndex::Intx, 1)],
        "INTx is live from the start"
    );
    let table = bar_base(&bus, at, bar(3));
    // The table reads as after reset (masked), not as the real table.
    let mut control = [0u8; 4];
    bus.mmio_read(table + 12, &mut control).unwrap();
    assert_eq!(u32::from_le_bytes(control), 1);
    for v in 0..5 {
        write_msix_entry(
            &mut bus,
            table,
            v,
            0xfee0_0000 | (v << 12),
            0x40 + v as u32,
            v == 3,
        );
    }
    let control_reg = 0xa0 + msix::CONTROL;
    cfg_write(
        &mut bus,
        at,
        control_reg,
        Word,
        u32::from(msix::CONTROL_ENABLE),
    );
    let routing: Vec<_> = bus
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            BusEvent::MsiRouting { routing, .. } => Some(routing),
            _ => None,
        })
        .collect();
    assert!(routing.iter().all(|r| r.kind == InterruptKind::MsiX));
    assert!(routing.iter().any(|r| r.vector == 2 && r.deliverable()));
    let f = function(&mut bus, at);
    assert_eq!(
        f.device().irq_ops(),
        vec![
            IrqOp::Disable(IrqIndex::Intx),
            IrqOp::Wire(IrqIndex::Msix, 5)
        ]
    );
    assert_eq!(
        f.live_irqs(),
        Some(LiveIrqs {
            index: IrqIndex::Msix,
            vectors: 5
        })
    );
    let vectors = f.vectors();
    assert_eq!(vectors.len(), 5);
    assert_eq!(vectors[4].routing.message.data, 0x44);
    assert!(f.intx_eventfd().is_none());

    // The device raises vector 2: its eventfd, the guest's message.
    assert!(f.device().fire(IrqIndex::Msix, 2));
    assert_eq!(
        f.vector_fired(InterruptKind::MsiX, 2),
        Some(MsiMessage {
            address: 0xfee0_2000,
            data: 0x42
        })
    );
    assert_eq!(f.vector_fired(InterruptKind::MsiX, 2), None, "drained");
    // Masked vector 3 becomes pending; the PBA shows it; unmasking delivers it.
    assert!(f.device().fire(IrqIndex::Msix, 3));
    assert_eq!(f.take_messages(), vec![]);
    let mut pba = [0u8; 8];
    bus.mmio_read(table + 0x2000, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 1 << 3);
    bus.mmio_write(table + 3 * 16 + 12, &0u32.to_le_bytes())
        .unwrap();
    let f = function(&mut bus, at);
    assert_eq!(
        f.take_messages(),
        vec![MsiMessage {
            address: 0xfee0_3000,
            data: 0x43
        }]
    );
    // The real table page is never touched by guest table writes.
    assert_eq!(
        f.device().region_bytes(3, 0, 4),
        vec![pattern(0), pattern(1), pattern(2), pattern(3)]
    );
    // Disabling MSI-X brings INTx back.
    cfg_write(&mut bus, at, control_reg, Word, 0);
    let f = function(&mut bus, at);
    assert_eq!(
        f.device().irq_ops(),
        vec![
            IrqOp::Disable(IrqIndex::Msix),
            IrqOp::Wire(IrqIndex::Intx, 1)
        ]
    );
    assert!(f.intx_eventfd().is_some());
}

#[test]
fn direct_areas_leave_the_msix_pages_trapped() {
    let f = PassthroughFunction::new(e1000e()).unwrap();
    assert_eq!(
        f.direct_areas(bar(3)),
        vec![
            MmapArea {
                offset: 0x1000,
                size: 0x1000
            },
            MmapArea {
                offset: 0x3000,
                size: 0x1000
            }
        ]
    );
    assert_eq!(
        f.direct_areas(bar(0)),
        vec![MmapArea {
            offset: 0,
            size: 0x2_0000
        }]
    );
    assert!(f.direct_areas(bar(2)).is_empty(), "IO is never mapped");
    assert!(f.direct_areas(BarIndex::ROM).is_empty());
}

#[test]
fn msi_with_fewer_vfio_vectors_masks_and_pends_virtually() {
    let mut bus = bus_with(ahci(), AHCI_SLOT);
    let at = AHCI_SLOT;
    // SATA stays, vendor-specific goes.
    let caps: Vec<u8> = walk_capabilities(|o, w| bus.config_read(0, slot(at), o, w))
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(caps, vec![cap::MSI, cap::SATA]);
    assert_eq!(size_bar(&mut bus, at, 4), 0xffff_ffe1);
    assert_eq!(size_bar(&mut bus, at, 5), 0xffff_f000);
    let abar = bar_base(&bus, at, bar(5));
    assert_eq!(
        mmio_u32(&mut bus, abar + 4),
        u32::from_le_bytes([pattern(4), pattern(5), pattern(6), pattern(7)])
    );

    let o = 0x80;
    cfg_write(&mut bus, at, o + msi::ADDRESS_LO, Dword, 0xfee0_0000);
    cfg_write(&mut bus, at, o + msi::DATA_32, Word, 0x4060);
    // The guest asks for 4 vectors (MME = 2); VFIO offers one.
    let enable = msi::CONTROL_ENABLE | (2 << msi::CONTROL_MME_SHIFT);
    cfg_write(&mut bus, at, o + msi::CONTROL, Word, enable.into());
    let f = function(&mut bus, at);
    assert_eq!(
        f.device().irq_ops(),
        vec![
            IrqOp::Wire(IrqIndex::Intx, 1),
            IrqOp::Disable(IrqIndex::Intx),
            IrqOp::Wire(IrqIndex::Msi, 1)
        ]
    );
    let errors = f.take_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .to_string()
            .contains("4 vector(s) but the device offers 1"),
        "{}",
        errors[0]
    );
    assert_eq!(f.vectors().len(), 1);
    // Reprogramming the message rewires nothing and repeats no error.
    cfg_write(&mut bus, at, o + msi::DATA_32, Word, 0x4060);
    let f = function(&mut bus, at);
    assert!(f.take_errors().is_empty());
    assert!(f.device().irq_ops().is_empty());
    assert!(f.device().fire(IrqIndex::Msi, 0));
    assert_eq!(
        f.vector_fired(InterruptKind::Msi, 0),
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x4060
        })
    );
    // Mask vector 0 (32-bit layout with per-vector masks: mask at +0x0c).
    cfg_write(&mut bus, at, o + msi::MASK_32, Dword, 1);
    let f = function(&mut bus, at);
    assert!(f.device().fire(IrqIndex::Msi, 0));
    assert_eq!(f.vector_fired(InterruptKind::Msi, 0), None);
    assert_eq!(cfg_read(&mut bus, at, o + msi::PENDING_32, Dword), 1);
    cfg_write(&mut bus, at, o + msi::MASK_32, Dword, 0);
    let f = function(&mut bus, at);
    assert_eq!(f.take_messages().len(), 1);
    assert_eq!(cfg_read(&mut bus, at, o + msi::PENDING_32, Dword), 0);
}

#[test]
fn stale_msi_state_is_reset() {
    let mut f = PassthroughFunction::new(e1000e()).unwrap();
    let control = f.config_read(0xd0 + msi::CONTROL, Word) as u16;
    assert_eq!(control & msi::CONTROL_ENABLE, 0);
    assert_ne!(control & msi::CONTROL_64BIT, 0);
    assert_eq!(f.config_read(0xd0 + msi::ADDRESS_LO, Dword), 0);
    // The guest's MSI programming never reaches the device's registers.
    f.config_write(0xd0 + msi::ADDRESS_LO, Dword, 0xfee0_f00c);
    assert_eq!(f.config_read(0xd0 + msi::ADDRESS_LO, Dword), 0xfee0_f00c);
    let real = f.device().config.lock().unwrap()[0xd4..0xd8].to_vec();
    assert_eq!(real, 0xfee0_1000u32.to_le_bytes());
}

#[test]
fn intx_fires_and_unmasks_after_eoi() {
    let mut f = PassthroughFunction::new(ahci()).unwrap();
    f.device().irq_ops();
    assert!(!f.intx_fired());
    assert!(f.device().fire(IrqIndex::Intx, 0));
    assert!(f.intx_fired());
    assert!(!f.intx_fired());
    f.end_of_interrupt().unwrap();
    assert_eq!(f.device().irq_ops(), vec![IrqOp::UnmaskIntx]);
}

#[test]
fn unusable_mechanisms_are_hidden_and_missing_intx_clears_the_pin() {
    let mut device = e1000e();
    device.irq_counts = [0, 1, 0];
    let mut f = PassthroughFunction::new(device).unwrap();
    let caps: Vec<u8> = walk_capabilities(|o, w| f.config_read(o, w))
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        caps,
        vec![cap::POWER_MANAGEMENT, cap::MSI, cap::PCI_EXPRESS]
    );
    assert_eq!(f.config_read(header::INTERRUPT_PIN, Byte), 0);
    assert_eq!(f.live_irqs(), None);
}

#[test]
fn device_failures_read_all_ones_and_are_reported() {
    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    let at = E1000E_SLOT;
    let base = bar_base(&bus, at, bar(0));
    *function(&mut bus, at).device().broken.lock().unwrap() = true;
    let mut b = [0u8; 4];
    let e = bus.mmio_read(base + 8, &mut b).unwrap_err().to_string();
    assert_eq!(b, [0xff; 4]);
    assert!(e.contains("BAR0 read of 4 bytes at 0x8"), "{e}");
    assert!(e.contains("device gone"), "{e}");
    // Virtual registers still answer; device registers read all-ones.
    assert_eq!(cfg_read(&mut bus, at, 0, Dword), 0x10d3_8086);
    assert_eq!(cfg_read(&mut bus, at, 0x184, Dword), u32::MAX);
    let status = cfg_read(&mut bus, at, header::STATUS, Word) as u16;
    assert_eq!(status, u16::MAX);
    let errors = function(&mut bus, at).take_errors();
    assert_eq!(errors.len(), 2);
    assert!(errors[0]
        .to_string()
        .starts_with("0000:00:04.0: config dword read at 0x184"));
}

#[test]
fn bridges_and_tiny_config_spaces_are_refused() {
    let bridge = e1000e();
    bridge.config.lock().unwrap()[0x0e] = 0x01;
    let e = PassthroughFunction::new(bridge).unwrap_err().to_string();
    assert!(e.contains("not a type 0 endpoint"), "{e}");
    let tiny = FakeDevice::new("0000:00:09.0", vec![0; 64]);
    let e = PassthroughFunction::new(tiny).unwrap_err().to_string();
    assert!(e.contains("64-byte config space"), "{e}");
}

#[test]
fn padded_bars_read_all_ones_past_the_region() {
    let mut c = vec![0u8; 256];
    put(&mut c, 0x00, &[0x86, 0x80, 0x00, 0x01]);
    put32(&mut c, 0x10, 0xfe00_0000);
    let device = FakeDevice::new("0000:00:07.0", c).with_region(0, 0x3000, false, pattern);
    let mut f = PassthroughFunction::new(device).unwrap();
    assert_eq!(f.bar_layout().get(bar(0)).unwrap().size, 0x4000);
    let mut mem = [0u8; 4];
    f.device().set_config(4, &[2, 0]);
    f.bar_read(bar(0), 0x2ffe, &mut mem).unwrap();
    assert_eq!(mem, [pattern(0x2ffe), pattern(0x2fff), 0xff, 0xff]);
    f.bar_write(bar(0), 0x3000, &[1, 2, 3, 4]).unwrap();
    assert!(
        f.bar_read(bar(0), 0x3ffe, &mut mem).is_err(),
        "past the BAR"
    );
    assert!(f.bar_read(bar(1), 0, &mut mem).is_err(), "no BAR1");
}

#[test]
fn access_target_reports_the_bar_offset() {
    let mut bus = bus_with(e1000e(), E1000E_SLOT);
    let base = bar_base(&bus, E1000E_SLOT, bar(1));
    let target = bus.mmio_read(base + 0x10, &mut [0u8; 4]).unwrap();
    assert_eq!(
        target,
        AccessTarget::Bar {
            devfn: slot(E1000E_SLOT),
            bar: bar(1),
            offset: 0x10
        }
    );
}
