//! Enumerate a virtual bus the way Linux's PCI core does (drivers/pci/probe.c): scan
//! every device/function through ECAM and through 0xCF8/0xCFC, honour the
//! multi-function bit, size BARs by writing all-ones with decode disabled and restore
//! them, assign addresses, enable decode, walk the capability lists, enable MSI and
//! MSI-X, then touch each BAR at its address and check where the access landed.
//!
//! The "guest" here knows nothing of vpci's types beyond the bus's MMIO/PIO entry
//! points: it only reads and writes config registers and memory/IO addresses.

use vpci::config::regs::{
    bar as bar_bits, cap, command, ext_cap, header, header_type, msi, msix, rom, status,
};
use vpci::test_device::{AccessKind, BarAccess, TestExtendedCapability};
use vpci::{
    AccessTarget, AccessWidth, BarDefinition, BarIndex, BarKind, BusConfig, BusEvent, DevFn,
    InterruptKind, MsiConfig, MsiMessage, MsiRouting, TestDevice, TestDeviceConfig, VirtualBus,
};

const ECAM_BASE: u64 = 0xb000_0000;

fn devfn(device: u8, function: u8) -> DevFn {
    DevFn::new(device, function).unwrap()
}

fn bar(i: u8) -> BarIndex {
    BarIndex::new(i).unwrap()
}

/// How the guest reaches config space.
#[derive(Clone, Copy, Debug)]
enum Mechanism {
    Ecam,
    Ports,
}

struct Guest<'a> {
    bus: &'a mut VirtualBus,
    mechanism: Mechanism,
}

impl Guest<'_> {
    fn read(&mut self, devfn: DevFn, register: u16, width: AccessWidth) -> u32 {
        let mut data = vec![0u8; width.bytes()];
        match self.mechanism {
            Mechanism::Ecam => {
                let address = ECAM_BASE | u64::from(devfn.raw()) << 12 | u64::from(register);
                self.bus.mmio_read(address, &mut data).unwrap();
            }
            Mechanism::Ports => {
                let latch = 0x8000_0000 | u32::from(devfn.raw()) << 8 | u32::from(register & 0xfc);
                self.bus.pio_write(0xcf8, &latch.to_le_bytes()).unwrap();
                self.bus
                    .pio_read(0xcfc + (register & 3), &mut data)
                    .unwrap();
            }
        }
        data.iter().rev().fold(0, |acc, b| acc << 8 | u32::from(*b))
    }

    fn write(&mut self, devfn: DevFn, register: u16, width: AccessWidth, value: u32) {
        let data = &value.to_le_bytes()[..width.bytes()];
        match self.mechanism {
            Mechanism::Ecam => {
                let address = ECAM_BASE | u64::from(devfn.raw()) << 12 | u64::from(register);
                self.bus.mmio_write(address, data).unwrap();
            }
            Mechanism::Ports => {
                let latch = 0x8000_0000 | u32::from(devfn.raw()) << 8 | u32::from(register & 0xfc);
                self.bus.pio_write(0xcf8, &latch.to_le_bytes()).unwrap();
                self.bus.pio_write(0xcfc + (register & 3), data).unwrap();
            }
        }
    }

    fn read32(&mut self, devfn: DevFn, register: u16) -> u32 {
        self.read(devfn, register, AccessWidth::Dword)
    }

    fn read16(&mut self, devfn: DevFn, register: u16) -> u16 {
        self.read(devfn, register, AccessWidth::Word) as u16
    }

    fn read8(&mut self, devfn: DevFn, register: u16) -> u8 {
        self.read(devfn, register, AccessWidth::Byte) as u8
    }

    fn write32(&mut self, devfn: DevFn, register: u16, value: u32) {
        self.write(devfn, register, AccessWidth::Dword, value)
    }

    fn write16(&mut self, devfn: DevFn, register: u16, value: u16) {
        self.write(devfn, register, AccessWidth::Word, value.into())
    }

    /// pci_scan_slot: function 0 first; the others only if it says multi-function.
    fn scan(&mut self) -> Vec<Found> {
        let mut found = Vec::new();
        for device in 0..32 {
            for function in 0..8 {
                let f = devfn(device, function);
                let id = self.read32(f, header::VENDOR_ID);
                let vendor = id as u16;
                if vendor == 0xffff || vendor == 0 {
                    if function == 0 {
                        break;
                    }
                    continue;
                }
                let header_type = self.read8(f, header::HEADER_TYPE);
                found.push(Found {
                    devfn: f,
                    vendor,
                    device: (id >> 16) as u16,
                    class: self.read32(f, header::REVISION_ID) >> 8,
                    header_type,
                });
                if function == 0 && header_type & header_type::MULTI_FUNCTION == 0 {
                    break;
                }
            }
        }
        found
    }

    /// __pci_read_base for every BAR and the ROM, decode disabled around it.
    fn size_bars(&mut self, f: DevFn) -> Vec<(BarIndex, BarKind, u64)> {
        let cmd = self.read16(f, header::COMMAND);
        self.write16(
            f,
            header::COMMAND,
            cmd & !(command::IO_SPACE | command::MEMORY_SPACE),
        );
        let mut sized = Vec::new();
        let mut i = 0;
        while i < 6 {
            let offset = header::bar(i);
            let original = self.read32(f, offset);
            self.write32(f, offset, u32::MAX);
            let low = self.read32(f, offset);
            self.write32(f, offset, original);
            if low == 0 {
                i += 1;
                continue;
            }
            let kind = BarKind::from_register(low).expect("no reserved memory type");
            let size = if kind.is_64bit() {
                let original_high = self.read32(f, offset + 4);
                self.write32(f, offset + 4, u32::MAX);
                let high = self.read32(f, offset + 4);
                self.write32(f, offset + 4, original_high);
                let mask = u64::from(high) << 32 | u64::from(low & bar_bits::MEMORY_ADDRESS_MASK);
                mask & mask.wrapping_neg()
            } else if kind == BarKind::Io {
                let mask = low & bar_bits::IO_ADDRESS_MASK;
                // 16-bit IO decoders read zeroes in the upper half.
                let mask = if mask & 0xffff_0000 == 0 {
                    mask | 0xffff_0000
                } else {
                    mask
                };
                u64::from(mask & mask.wrapping_neg())
            } else {
                let mask = low & bar_bits::MEMORY_ADDRESS_MASK;
                u64::from(mask & mask.wrapping_neg())
            };
            sized.push((bar(i), kind, size));
            i += if kind.is_64bit() { 2 } else { 1 };
        }
        let original = self.read32(f, header::ROM_ADDRESS);
        self.write32(f, header::ROM_ADDRESS, !rom::ENABLE);
        let mask = self.read32(f, header::ROM_ADDRESS) & rom::ADDRESS_MASK;
        self.write32(f, header::ROM_ADDRESS, original);
        if mask != 0 {
            sized.push((
                BarIndex::ROM,
                BarKind::Memory32 {
                    prefetchable: false,
                },
                u64::from(mask & mask.wrapping_neg()),
            ));
        }
        self.write16(f, header::COMMAND, cmd);
        sized
    }

    /// __pci_find_next_cap: the standard list, if the status register has one.
    fn capabilities(&mut self, f: DevFn) -> Vec<(u8, u16)> {
        let mut list = Vec::new();
        if self.read16(f, header::STATUS) & status::CAPABILITY_LIST == 0 {
            return list;
        }
        let mut pos = u16::from(self.read8(f, header::CAPABILITY_POINTER));
        let mut ttl = 48;
        while pos >= 0x40 && ttl > 0 {
            pos &= !3;
            let word = self.read16(f, pos);
            let id = word as u8;
            if id == 0xff {
                break;
            }
            list.push((id, pos));
            pos = word >> 8;
            ttl -= 1;
        }
        list
    }

    /// pci_find_next_ext_capability: the extended list (ECAM only).
    fn extended_capabilities(&mut self, f: DevFn) -> Vec<(u16, u8, u16)> {
        let mut list = Vec::new();
        let mut pos = 0x100u16;
        let mut header = self.read32(f, pos);
        if header == 0 || header == u32::MAX {
            return list;
        }
        for _ in 0..(4096 - 256) / 8 {
            list.push((header as u16, (header >> 16 & 0xf) as u8, pos));
            pos = (header >> 20) as u16 & 0xffc;
            if pos < 0x100 {
                break;
            }
            header = self.read32(f, pos);
            if header == 0 {
                break;
            }
        }
        list
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    devfn: DevFn,
    vendor: u16,
    device: u16,
    class: u32,
    header_type: u8,
}

/// Host bridge; a full test device at 03.0; a two-function device at 05.0/05.2 (05.0
/// claims multi-function itself, 05.2 has MSI only); a lone function at 07.0 that
/// claims multi-function but has no siblings.
fn build_bus() -> VirtualBus {
    let mut bus = VirtualBus::new(BusConfig::default()).unwrap();
    let full = TestDevice::new(&TestDeviceConfig::full(0x1af4, 0x1100)).unwrap();
    bus.add_function(devfn(3, 0), Box::new(full)).unwrap();

    let mut f0 = TestDeviceConfig::minimal(0x8086, 0x2922);
    f0.header.class_code = 0x01_06_01;
    f0.header.multi_function = true;
    f0.bars = vec![
        (bar(4), BarDefinition::new(BarKind::Io, 0x20)),
        (
            bar(5),
            BarDefinition::new(
                BarKind::Memory32 {
                    prefetchable: false,
                },
                0x1000,
            ),
        ),
    ];
    bus.add_function(devfn(5, 0), Box::new(TestDevice::new(&f0).unwrap()))
        .unwrap();
    let mut f2 = TestDeviceConfig::minimal(0x8086, 0x2930);
    f2.header.class_code = 0x0c_05_00;
    f2.header.interrupt_pin = 2;
    f2.bars = vec![(bar(0), BarDefinition::new(BarKind::Io, 0x40))];
    f2.msi = Some(MsiConfig {
        vectors: 1,
        is_64bit: false,
        per_vector_mask: false,
    });
    bus.add_function(devfn(5, 2), Box::new(TestDevice::new(&f2).unwrap()))
        .unwrap();

    let mut lone = TestDeviceConfig::minimal(0x10ec, 0x8139);
    lone.header.multi_function = true;
    lone.pci_express = true;
    lone.extended = vec![TestExtendedCapability::SerialNumber(7)];
    bus.add_function(devfn(7, 0), Box::new(TestDevice::new(&lone).unwrap()))
        .unwrap();
    bus
}

fn expected_scan() -> Vec<Found> {
    vec![
        Found {
            devfn: devfn(0, 0),
            vendor: 0x1b36,
            device: 0x0008,
            class: 0x06_00_00,
            header_type: 0,
        },
        Found {
            devfn: devfn(3, 0),
            vendor: 0x1af4,
            device: 0x1100,
            class: 0xff_00_00,
            header_type: 0,
        },
        Found {
            devfn: devfn(5, 0),
            vendor: 0x8086,
            device: 0x2922,
            class: 0x01_06_01,
            header_type: 0x80,
        },
        Found {
            devfn: devfn(5, 2),
            vendor: 0x8086,
            device: 0x2930,
            class: 0x0c_05_00,
            header_type: 0,
        },
        Found {
            devfn: devfn(7, 0),
            vendor: 0x10ec,
            device: 0x8139,
            class: 0xff_00_00,
            header_type: 0,
        },
    ]
}

#[test]
fn scan_finds_exactly_the_functions_through_both_mechanisms() {
    let mut bus = build_bus();
    let ecam = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ecam,
    }
    .scan();
    assert_eq!(ecam, expected_scan());
    let ports = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ports,
    }
    .scan();
    assert_eq!(ports, expected_scan());
}

#[test]
fn config_ports_serve_byte_and_word_lanes() {
    let mut bus = build_bus();
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ports,
    };
    let f = devfn(5, 2);
    let dword = guest.read32(f, header::VENDOR_ID);
    assert_eq!(dword, 0x2930_8086);
    assert_eq!(guest.read16(f, header::DEVICE_ID), 0x2930);
    assert_eq!(guest.read8(f, header::DEVICE_ID + 1), 0x29);
    assert_eq!(guest.read8(f, header::INTERRUPT_PIN), 2);
    // Slot 5 pin B: GSI 16 + (5 + 1) % 8.
    assert_eq!(guest.read8(f, header::INTERRUPT_LINE), 22);
    guest.write(f, header::INTERRUPT_LINE, AccessWidth::Byte, 0x0b);
    assert_eq!(guest.read16(f, header::INTERRUPT_LINE), 0x020b);
    // The latch reads back; a disabled latch reads all-ones.
    let mut latch = [0u8; 4];
    guest.bus.pio_read(0xcf8, &mut latch).unwrap();
    assert_eq!(
        u32::from_le_bytes(latch),
        0x8000_0000 | 5 << 11 | 2 << 8 | 0x3c
    );
    guest
        .bus
        .pio_write(0xcf8, &0x0000_2800u32.to_le_bytes())
        .unwrap();
    let mut data = [0u8; 4];
    assert_eq!(
        guest.bus.pio_read(0xcfc, &mut data).unwrap(),
        AccessTarget::ConfigRefused
    );
    assert_eq!(data, [0xff; 4]);
    // A narrow access at 0xCF9 is not the config mechanism's.
    assert!(guest.bus.pio_write(0xcf9, &[0x06]).is_err());
}

#[test]
fn bar_sizing_reports_each_kind_and_restores_the_assignment() {
    let mut bus = build_bus();
    let before: Vec<_> = bus.bar_status(devfn(3, 0));
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ecam,
    };
    let pref = BarKind::Memory64 { prefetchable: true };
    let nonpref64 = BarKind::Memory64 {
        prefetchable: false,
    };
    let mem32 = BarKind::Memory32 {
        prefetchable: false,
    };
    assert_eq!(
        guest.size_bars(devfn(3, 0)),
        vec![
            (bar(0), BarKind::Io, 0x20),
            (bar(1), mem32, 0x1000),
            (bar(2), pref, 0x4000),
            (bar(4), nonpref64, 8 << 30),
            (BarIndex::ROM, mem32, 0x1_0000),
        ]
    );
    assert_eq!(
        guest.size_bars(devfn(5, 0)),
        vec![(bar(4), BarKind::Io, 0x20), (bar(5), mem32, 0x1000)]
    );
    assert_eq!(
        guest.size_bars(devfn(5, 2)),
        vec![(bar(0), BarKind::Io, 0x40)]
    );
    assert_eq!(guest.size_bars(devfn(0, 0)), vec![]);
    // Sizing with decode disabled and restoring leaves the firmware picture intact.
    assert_eq!(bus.bar_status(devfn(3, 0)), before);
    assert!(before
        .iter()
        .filter(|s| !s.bar.is_rom())
        .all(|s| s.decoding));
}

#[test]
fn capability_lists_walk_like_linux() {
    let mut bus = build_bus();
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ecam,
    };
    let ids = |list: Vec<(u8, u16)>| list.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(guest.capabilities(devfn(3, 0))),
        vec![cap::POWER_MANAGEMENT, cap::MSI, cap::MSIX, cap::PCI_EXPRESS]
    );
    assert_eq!(ids(guest.capabilities(devfn(5, 2))), vec![cap::MSI]);
    assert_eq!(ids(guest.capabilities(devfn(5, 0))), Vec::<u8>::new());
    assert_eq!(ids(guest.capabilities(devfn(0, 0))), Vec::<u8>::new());
    let ext: Vec<(u16, u8)> = guest
        .extended_capabilities(devfn(3, 0))
        .into_iter()
        .map(|(id, version, _)| (id, version))
        .collect();
    assert_eq!(
        ext,
        vec![
            (ext_cap::ADVANCED_ERROR_REPORTING, 2),
            (ext_cap::DEVICE_SERIAL_NUMBER, 1),
            (ext_cap::VENDOR_SPECIFIC, 1)
        ]
    );
    let serial = guest.extended_capabilities(devfn(7, 0));
    assert_eq!(serial.len(), 1);
    let at = serial[0].2;
    assert_eq!(guest.read32(devfn(7, 0), at + 4), 7);
    // Conventional functions answer extended config with all-ones: no extended list.
    assert_eq!(guest.read32(devfn(5, 0), 0x100), u32::MAX);
    assert_eq!(guest.extended_capabilities(devfn(5, 0)), vec![]);
}

/// The guest's own BAR assignment: everything moved away from firmware's choice.
fn assign(guest: &mut Guest<'_>) {
    let plan: [(DevFn, u8, u64); 7] = [
        (devfn(3, 0), 0, 0xd000),
        (devfn(3, 0), 1, 0xe000_0000),
        (devfn(3, 0), 2, 0x8_4000_0000),
        (devfn(3, 0), 4, 0xa_0000_0000),
        (devfn(5, 0), 4, 0xd040),
        (devfn(5, 0), 5, 0xe000_1000),
        (devfn(5, 2), 0, 0xd080),
    ];
    for f in [devfn(3, 0), devfn(5, 0), devfn(5, 2)] {
        let cmd = guest.read16(f, header::COMMAND);
        guest.write16(
            f,
            header::COMMAND,
            cmd & !(command::IO_SPACE | command::MEMORY_SPACE),
        );
    }
    for (f, i, address) in plan {
        let offset = header::bar(i);
        let flags = guest.read32(f, offset) & 0xf;
        guest.write32(f, offset, address as u32 | flags);
        if flags & bar_bits::MEMORY_TYPE_MASK == bar_bits::MEMORY_TYPE_64 {
            guest.write32(f, offset + 4, (address >> 32) as u32);
        }
    }
    guest.write32(devfn(3, 0), header::ROM_ADDRESS, 0xe001_0000 | rom::ENABLE);
    for f in [devfn(3, 0), devfn(5, 0), devfn(5, 2)] {
        let cmd = guest.read16(f, header::COMMAND);
        guest.write16(
            f,
            header::COMMAND,
            cmd | command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER,
        );
    }
}

#[test]
fn assigned_bars_decode_only_with_decode_enabled() {
    let mut bus = build_bus();
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ports,
    };
    assign(&mut guest);
    bus.take_events();
    let mut picture: Vec<(DevFn, BarIndex, u64, u64)> = bus
        .decoded_bars()
        .iter()
        .map(|d| (d.devfn, d.bar, d.base, d.size))
        .collect();
    picture.sort();
    assert_eq!(
        picture,
        vec![
            (devfn(3, 0), bar(0), 0xd000, 0x20),
            (devfn(3, 0), bar(1), 0xe000_0000, 0x1000),
            (devfn(3, 0), bar(2), 0x8_4000_0000, 0x4000),
            (devfn(3, 0), bar(4), 0xa_0000_0000, 8 << 30),
            (devfn(3, 0), BarIndex::ROM, 0xe001_0000, 0x1_0000),
            (devfn(5, 0), bar(4), 0xd040, 0x20),
            (devfn(5, 0), bar(5), 0xe000_1000, 0x1000),
            (devfn(5, 2), bar(0), 0xd080, 0x40),
        ]
    );
    // Memory decode off: 03.0's memory BARs and ROM stop answering, its IO BAR stays.
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ecam,
    };
    guest.write16(devfn(3, 0), header::COMMAND, command::IO_SPACE);
    let mut data = [0u8; 4];
    assert!(bus.mmio_read(0xe000_0000, &mut data).is_err());
    assert!(bus.mmio_read(0xe001_0000, &mut data).is_err());
    assert!(bus.pio_read(0xd000, &mut data).is_ok());
    let unmapped: Vec<BarIndex> = bus
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            BusEvent::BarUnmapped(d) if d.base >= 0xe000_0000 && d.devfn == devfn(3, 0) => {
                Some(d.bar)
            }
            _ => None,
        })
        .collect();
    assert_eq!(unmapped, vec![bar(1), bar(2), bar(4), BarIndex::ROM]);
}

#[test]
fn msi_and_msix_programming_routes_vectors() {
    let mut bus = build_bus();
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ecam,
    };
    assign(&mut guest);

    // MSI on 05.2: one vector, 32-bit address.
    let f = devfn(5, 2);
    let at = guest.capabilities(f)[0].1;
    guest.write32(f, at + msi::ADDRESS_LO, 0xfee0_1000);
    guest.write16(f, at + msi::DATA_32, 0x4021);
    let control = guest.read16(f, at + msi::CONTROL);
    guest.write16(f, at + msi::CONTROL, control | msi::CONTROL_ENABLE);

    // MSI-X on 03.0 as msix_capability_init does: enable with all masked, program
    // entries, then clear the function mask.
    let f = devfn(3, 0);
    let at = guest
        .capabilities(f)
        .into_iter()
        .find(|(id, _)| *id == cap::MSIX)
        .unwrap()
        .1;
    let table = guest.read32(f, at + msix::TABLE);
    let vectors = (guest.read16(f, at + msix::CONTROL) & msix::CONTROL_TABLE_SIZE_MASK) + 1;
    assert_eq!(vectors, 8);
    let bir = (table & msix::BIR_MASK) as u16;
    let low = guest.read32(f, header::BAR0 + 4 * bir) & bar_bits::MEMORY_ADDRESS_MASK;
    let high = guest.read32(f, header::BAR0 + 4 * bir + 4);
    let table_address =
        (u64::from(high) << 32 | u64::from(low)) + u64::from(table & msix::OFFSET_MASK);
    assert_eq!(table_address, 0x8_4000_0000);
    guest.write16(
        f,
        at + msix::CONTROL,
        msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK,
    );
    bus.take_events();
    for v in 0..3u64 {
        let entry = table_address + 16 * v;
        bus.mmio_write(entry, &(0xfee0_0000u32 | (v as u32) << 12).to_le_bytes())
            .unwrap();
        bus.mmio_write(entry + 4, &0u32.to_le_bytes()).unwrap();
        bus.mmio_write(entry + 8, &(0x30 + v as u32).to_le_bytes())
            .unwrap();
        bus.mmio_write(entry + 12, &0u32.to_le_bytes()).unwrap();
    }
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ecam,
    };
    guest.write16(f, at + msix::CONTROL, msix::CONTROL_ENABLE);

    let routing: Vec<(DevFn, MsiRouting)> = bus
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            BusEvent::MsiRouting { devfn, routing } => Some((devfn, routing)),
            _ => None,
        })
        .collect();
    // Each entry's programming while function-masked, then the unmask: three live vectors.
    let live: Vec<(u16, MsiMessage)> = routing
        .iter()
        .filter(|(d, r)| *d == f && r.deliverable())
        .map(|(_, r)| (r.vector, r.message))
        .collect();
    assert_eq!(
        live,
        (0..3u16)
            .map(|v| (
                v,
                MsiMessage {
                    address: 0xfee0_0000 | u64::from(v) << 12,
                    data: 0x30 + u32::from(v)
                }
            ))
            .collect::<Vec<_>>()
    );
    let device = bus.function_as::<TestDevice>(f).unwrap();
    assert_eq!(
        device.signal(InterruptKind::MsiX, 2),
        Some(MsiMessage {
            address: 0xfee0_2000,
            data: 0x32
        })
    );
    assert_eq!(
        device.signal(InterruptKind::MsiX, 5),
        None,
        "entry 5 is still masked"
    );
    let msi_device = bus.function_as::<TestDevice>(devfn(5, 2)).unwrap();
    assert_eq!(
        msi_device.signal(InterruptKind::Msi, 0),
        Some(MsiMessage {
            address: 0xfee0_1000,
            data: 0x4021
        })
    );
    // The MSI routing event for 05.2 came through the bus too (before the drain above).
}

#[test]
fn msi_enable_is_reported_through_the_bus() {
    let mut bus = build_bus();
    bus.take_events();
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ports,
    };
    let f = devfn(5, 2);
    let at = guest.capabilities(f)[0].1;
    guest.write32(f, at + msi::ADDRESS_LO, 0xfee0_1000);
    guest.write16(f, at + msi::DATA_32, 0x4021);
    let control = guest.read16(f, at + msi::CONTROL);
    guest.write16(f, at + msi::CONTROL, control | msi::CONTROL_ENABLE);
    let last = bus
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            BusEvent::MsiRouting { devfn, routing } => Some((devfn, routing)),
            _ => None,
        })
        .next_back();
    assert_eq!(
        last,
        Some((
            f,
            MsiRouting {
                kind: InterruptKind::Msi,
                vector: 0,
                message: MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x4021
                },
                masked: false,
                enabled: true,
            }
        ))
    );
}

#[test]
fn bar_accesses_land_in_the_right_function_bar_and_offset() {
    let mut bus = build_bus();
    let mut guest = Guest {
        bus: &mut bus,
        mechanism: Mechanism::Ecam,
    };
    assign(&mut guest);
    let writes: [(u64, DevFn, u8, u64); 4] = [
        (0xe000_0010, devfn(3, 0), 1, 0x10),
        (0x8_4000_1008, devfn(3, 0), 2, 0x1008),
        (
            0xa_0000_0000 + (5 << 30) + 0x24,
            devfn(3, 0),
            4,
            (5 << 30) + 0x24,
        ),
        (0xe000_1ffc, devfn(5, 0), 5, 0xffc),
    ];
    for (address, f, i, offset) in writes {
        let data = (address as u32 ^ 0xa5a5_a5a5).to_le_bytes();
        assert_eq!(
            bus.mmio_write(address, &data).unwrap(),
            AccessTarget::Bar {
                devfn: f,
                bar: bar(i),
                offset
            }
        );
        let mut back = [0u8; 4];
        bus.mmio_read(address, &mut back).unwrap();
        assert_eq!(back, data);
    }
    let io: [(u16, DevFn, u8, u64); 3] = [
        (0xd004, devfn(3, 0), 0, 4),
        (0xd05e, devfn(5, 0), 4, 0x1e),
        (0xd0bf, devfn(5, 2), 0, 0x3f),
    ];
    for (port, f, i, offset) in io {
        let data = [0x11u8];
        assert_eq!(
            bus.pio_write(port, &data).unwrap(),
            AccessTarget::Bar {
                devfn: f,
                bar: bar(i),
                offset
            }
        );
    }
    let mut rom_bytes = [0u8; 2];
    assert_eq!(
        bus.mmio_read(0xe001_0100, &mut rom_bytes).unwrap(),
        AccessTarget::Bar {
            devfn: devfn(3, 0),
            bar: BarIndex::ROM,
            offset: 0x100
        }
    );
    assert_eq!(
        rom_bytes,
        [
            TestDevice::unwritten_byte(BarIndex::ROM, 0x100),
            TestDevice::unwritten_byte(BarIndex::ROM, 0x101)
        ]
    );

    let log = bus
        .function_as::<TestDevice>(devfn(3, 0))
        .unwrap()
        .take_accesses();
    let writes: Vec<(BarIndex, u64)> = log
        .iter()
        .filter(|a| a.kind == AccessKind::Write)
        .map(|a| (a.bar, a.offset))
        .collect();
    assert_eq!(
        writes,
        vec![
            (bar(1), 0x10),
            (bar(2), 0x1008),
            (bar(4), (5 << 30) + 0x24),
            (bar(0), 4)
        ]
    );
    let log = bus
        .function_as::<TestDevice>(devfn(5, 2))
        .unwrap()
        .take_accesses();
    assert_eq!(
        log,
        vec![BarAccess {
            kind: AccessKind::Write,
            bar: bar(0),
            offset: 0x3f,
            data: vec![0x11],
        }]
    );
    // Past the end of a decoding BAR, and where nothing decodes.
    let mut data = [0u8; 4];
    assert!(bus.mmio_read(0xe000_1ffe, &mut data).is_err());
    assert!(bus.mmio_read(0xe000_2000, &mut data).is_err());
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn description_feeds_acpi_tables() {
    let bus = build_bus();
    let description = bus.describe();
    let bridge = acpi_tables::RootBridge::from(&description);
    assert_eq!(bridge.ecam, acpi_tables::Window::new(ECAM_BASE, 1 << 20));
    assert_eq!(bridge.buses, acpi_tables::BusRange { first: 0, last: 0 });
    assert_eq!(bridge.intx.gsi(5, acpi_tables::IntxPin::B), Some(22));
    let tables = acpi_tables::Description {
        root_bridges: vec![bridge],
        ..acpi_tables::Description::default()
    };
    tables
        .validate()
        .expect("the bus description makes valid ACPI tables");
    acpi_tables::Tables::build(&tables).unwrap();
}
