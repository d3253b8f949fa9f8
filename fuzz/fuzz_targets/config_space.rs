//! The virtual bus as a guest drives it: ECAM and 0xCF8/0xCFC config accesses, BAR
//! programming and BAR accesses, over up to three test devices with fuzzed BAR layouts
//! and capabilities and a passthrough function whose device (config image with its
//! capability lists, BARs, MSI/MSI-X; region sizes; vector counts) is fuzzed.
//!
//! Oracles, checked after every operation:
//! - decoded BARs never overlap one another in their space and never leave the bus's
//!   windows; each one is programmed and enabled as `bar_status` says, and the
//!   BarMapped/BarUnmapped events replayed give exactly the decoded set;
//! - read-only registers stay: IDs, revision and class, header layout, and every
//!   capability list a guest walks (standard and extended);
//! - a BAR access the bus routes lands inside the BAR that decodes its address;
//! - config reads carry no bits beyond their width;
//! - the passthrough device is never reached out of range (config: 1/2/4 bytes,
//!   aligned, inside its config; regions: inside their size), and its own IDs, BARs,
//!   ROM BAR, decode enables and MSI/MSI-X registers never change;
//! - at most 512 operations and 8 MiB live per input.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use udriver::vfio::MmapArea;
use udrv_fuzz::fake_passthrough::{protected_bytes, region_byte, CheckedDevice};
use udrv_fuzz::{bounded, Input};
use vpci::passthrough::fake_device::FakeDevice;
use vpci::test_device::TestExtendedCapability;
use vpci::{
    AccessTarget, AccessWidth, AddressSpace, BarDefinition, BarIndex, BarKind, BusConfig, BusEvent,
    DecodedBar, DevFn, MsiConfig, MsixConfig, PassthroughFunction, TestDevice, TestDeviceConfig,
    Type0Header, VirtualBus,
};

const MAX_LIVE_BYTES: usize = 8 << 20;
const MAX_OPS: usize = 512;
/// Largest region of the fake device (its bytes are allocated).
const MAX_REGION: u32 = 1 << 16;
const PASSTHROUGH_SLOT: u8 = 8;

const COMMAND: u16 = 0x04;
const STATUS: u16 = 0x06;
const CAPABILITY_LIST: u32 = 1 << 4;
const CAPABILITY_POINTER: u16 = 0x34;
const MSI: u8 = 0x05;
const MSIX: u8 = 0x11;
const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

fuzz_target!(|data: &[u8]| bounded(MAX_LIVE_BYTES, || run(data)));

fn bar_index(i: u8) -> BarIndex {
    BarIndex::new(i % 7).unwrap_or(BarIndex::ROM)
}

fn test_device(input: &mut Input) -> TestDeviceConfig {
    let mut config = TestDeviceConfig::minimal(input.u16(), input.u16());
    config.header = Type0Header {
        revision_id: input.u8(),
        class_code: input.u32() & 0xff_ffff,
        interrupt_pin: input.u8() % 6,
        multi_function: input.bool(),
        ..config.header
    };
    for i in 0..6u8 {
        let kind = input.u8();
        let size = 1u64.checked_shl(u32::from(input.u8() % 64)).unwrap_or(0);
        let kind = match kind % 6 {
            0 => continue,
            1 => BarKind::Io,
            2 => BarKind::Memory32 {
                prefetchable: false,
            },
            3 => BarKind::Memory32 { prefetchable: true },
            4 => BarKind::Memory64 {
                prefetchable: false,
            },
            _ => BarKind::Memory64 { prefetchable: true },
        };
        config
            .bars
            .push((bar_index(i), BarDefinition::new(kind, size)));
    }
    let rom = input.u8();
    config.rom_size = (rom != 0).then(|| 1u64 << (rom % 40));
    let caps = input.u8();
    config.power_management = caps & 1 != 0;
    config.msi = (caps & 2 != 0).then(|| MsiConfig {
        vectors: input.u8(),
        is_64bit: caps & 0x10 != 0,
        per_vector_mask: caps & 0x20 != 0,
    });
    config.msix = (caps & 4 != 0).then(|| MsixConfig {
        vectors: input.u16() % 2049,
        table_bar: bar_index(input.u8()),
        table_offset: input.u32(),
        pba_bar: bar_index(input.u8()),
        pba_offset: input.u32(),
    });
    config.pci_express = caps & 8 != 0;
    if caps & 0x40 != 0 {
        config
            .extended
            .push(TestExtendedCapability::AdvancedErrorReporting);
        config
            .extended
            .push(TestExtendedCapability::SerialNumber(input.u64()));
    }
    if caps & 0x80 != 0 {
        config
            .extended
            .push(TestExtendedCapability::VendorSpecific {
                vsec_id: input.u16(),
                len: input.u16(),
            });
    }
    config
}

fn passthrough_device(input: &mut Input, extended: bool) -> CheckedDevice {
    let irq_counts = [input.u16(), input.u16(), input.u16()].map(|n| u32::from(n) % 2049);
    let regions: Vec<(u32, bool, u8)> = (0..7)
        .map(|_| {
            let size = input.u32();
            (size % (MAX_REGION + 1), size & 0x8000_0000 != 0, input.u8())
        })
        .collect();
    let mut image = input.bytes(if extended { 4096 } else { 256 }).to_vec();
    image.resize(if extended { 4096 } else { 256 }, 0);
    let mut device = FakeDevice::new("fuzz", image);
    for (index, (size, io, sparse)) in regions.into_iter().enumerate() {
        if size == 0 {
            continue;
        }
        device = device.with_region(index as u8, u64::from(size), io, region_byte);
        if sparse != 0 && !io {
            // VFIO's sparse mmap areas: page-aligned pieces of the region.
            let pages = u64::from(size) / 4096;
            let areas = (0..sparse % 4)
                .map(|i| MmapArea {
                    offset: (u64::from(sparse >> (2 * i)) % (pages + 1)) * 4096,
                    size: 4096,
                })
                .filter(|a| a.offset + a.size <= u64::from(size))
                .collect();
            let region = device.regions[index].as_ref().expect("just added");
            region.lock().unwrap().mmap_areas = areas;
        }
    }
    device.irq_counts = irq_counts;
    CheckedDevice(device)
}

/// What a guest can see of a function that must never change.
#[derive(Debug, PartialEq, Eq)]
struct ReadOnly {
    ids: u32,
    class: u32,
    layout: u32,
    capabilities: Vec<(u16, u32)>,
    extended: Vec<(u16, u32)>,
}

fn read_only(bus: &mut VirtualBus, devfn: DevFn) -> ReadOnly {
    let mut read = |register, width| bus.config_read(0, devfn, register, width);
    let mut capabilities = Vec::new();
    if read(STATUS, AccessWidth::Word) & CAPABILITY_LIST != 0 {
        let mut at = read(CAPABILITY_POINTER, AccessWidth::Byte) as u16 & 0xfc;
        while at >= 0x40 && capabilities.len() < 48 {
            let header = read(at, AccessWidth::Word);
            capabilities.push((at, header));
            at = (header >> 8) as u16 & 0xfc;
        }
    }
    let mut extended = Vec::new();
    let mut at = 0x100u16;
    while extended.len() < 960 {
        let header = read(at, AccessWidth::Dword);
        if header == 0 || header == u32::MAX {
            break;
        }
        extended.push((at, header));
        at = (header >> 20) as u16 & 0xffc;
        if at < 0x100 {
            break;
        }
    }
    ReadOnly {
        ids: read(0x00, AccessWidth::Dword),
        class: read(0x08, AccessWidth::Dword),
        layout: read(0x0e, AccessWidth::Byte) & 0x7f,
        capabilities,
        extended,
    }
}

struct Fuzz {
    bus: VirtualBus,
    functions: Vec<DevFn>,
    read_only: Vec<ReadOnly>,
    mapped: BTreeSet<(DevFn, u8, bool, u64, u64)>,
    passthrough: Option<(Vec<(usize, usize)>, Vec<u8>)>,
}

fn key(d: &DecodedBar) -> (DevFn, u8, bool, u64, u64) {
    (
        d.devfn,
        d.bar.get(),
        d.space == AddressSpace::Io,
        d.base,
        d.size,
    )
}

fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut config = BusConfig::default();
    if flags & 0x10 != 0 {
        config.mem64 = None;
    }
    if flags & 0x20 != 0 {
        config.io = None;
    }
    let Ok(mut bus) = VirtualBus::new(config) else {
        return;
    };
    let mut functions = vec![DevFn::HOST_BRIDGE];
    for i in 0..(flags >> 2) % 4 {
        let config = test_device(&mut input);
        if let Ok(device) = TestDevice::new(&config) {
            let devfn = DevFn::new(1 + i, 0).expect("slot exists");
            bus.add_function(devfn, Box::new(device))
                .expect("free slot");
            functions.push(devfn);
        }
    }
    let mut passthrough = None;
    if flags & 1 != 0 {
        let device = passthrough_device(&mut input, flags & 2 != 0);
        if let Ok(function) = PassthroughFunction::new(device) {
            let space = function.config_space();
            let mut msi = Vec::new();
            if let Some(at) = space.find_capability(MSI) {
                msi.push((usize::from(at), usize::from(at) + 10));
            }
            if let Some(at) = space.find_capability(MSIX) {
                msi.push((usize::from(at), usize::from(at) + 12));
            }
            let devfn = DevFn::new(PASSTHROUGH_SLOT, 0).expect("slot exists");
            bus.add_function(devfn, Box::new(function))
                .expect("free slot");
            functions.push(devfn);
            passthrough = Some((msi, Vec::new()));
        }
    }
    let read_only = functions.iter().map(|&f| read_only(&mut bus, f)).collect();
    let mut fuzz = Fuzz {
        bus,
        functions,
        read_only,
        mapped: BTreeSet::new(),
        passthrough,
    };
    if let Some((msi, protected)) = fuzz.passthrough.as_mut() {
        *protected = protected_bytes(fuzz_device(&mut fuzz.bus), msi);
    }
    fuzz.check();
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        fuzz.step(&mut input);
        fuzz.check();
    }
}

fn fuzz_device(bus: &mut VirtualBus) -> &FakeDevice {
    let devfn = DevFn::new(PASSTHROUGH_SLOT, 0).expect("slot exists");
    &bus.function_as::<PassthroughFunction<CheckedDevice>>(devfn)
        .expect("the passthrough function")
        .device()
        .0
}

fn width(byte: u8) -> AccessWidth {
    AccessWidth::ALL[usize::from(byte % 3)]
}

impl Fuzz {
    fn devfn(&self, byte: u8) -> DevFn {
        // Mostly a function that exists; sometimes any devfn.
        if byte & 0x80 == 0 {
            self.functions[usize::from(byte) % self.functions.len()]
        } else {
            DevFn::from_raw(byte << 1)
        }
    }

    fn ecam(&self, devfn: DevFn, register: u16) -> u64 {
        self.bus.ecam_window().base | u64::from(devfn.raw()) << 12 | u64::from(register)
    }

    fn step(&mut self, input: &mut Input) {
        match input.u8() % 8 {
            0 | 1 => {
                let devfn = self.devfn(input.u8());
                let width = width(input.u8());
                let register = input.u16() % 0x1000 / width.bytes() as u16 * width.bytes() as u16;
                let value = input.u32() & width.mask();
                // Through ECAM or the config ports, as a guest may.
                if input.bool() {
                    let address = self.ecam(devfn, register);
                    let bytes = value.to_le_bytes();
                    let _ = self.bus.mmio_write(address, &bytes[..width.bytes()]);
                } else {
                    self.bus.config_write(0, devfn, register, width, value);
                }
            }
            2 => {
                let devfn = self.devfn(input.u8());
                let width = width(input.u8());
                let register = input.u16() % 0x1000;
                let value = self.bus.config_read(0, devfn, register, width);
                assert_eq!(value & !width.mask(), 0, "{width:?} read {value:#x}");
            }
            3 => {
                // 0xCF8/0xCFC: latch an address, then access the data ports.
                let latch = input.u32();
                let _ = self.bus.pio_write(CONFIG_ADDRESS, &latch.to_le_bytes());
                let port = CONFIG_DATA + u16::from(input.u8() % 4);
                let len = 1 << (input.u8() % 3);
                let mut data = input.u32().to_le_bytes();
                if input.bool() {
                    let _ = self.bus.pio_write(port, &data[..len]);
                } else {
                    let _ = self.bus.pio_read(port, &mut data[..len]);
                }
            }
            4 | 5 => {
                // An access at or near a decoded BAR.
                let decoded = self.bus.decoded_bars();
                let pick = input.u8();
                let offset = input.u64();
                let len = usize::from(input.u8() % 8) + 1;
                let write = input.bool();
                let Some(bar) = decoded.get(usize::from(pick) % decoded.len().max(1)) else {
                    return;
                };
                let address = bar.base.wrapping_add(offset % bar.size.saturating_add(16));
                self.access(bar.space, address, len, write);
            }
            6 => {
                // Program a BAR register pair and the decode enables.
                let devfn = self.devfn(input.u8());
                let register = 0x10 + u16::from(input.u8() % 7) * 4;
                let register = if register == 0x28 { 0x30 } else { register };
                let address = input.u64();
                self.bus
                    .config_write(0, devfn, register, AccessWidth::Dword, address as u32);
                if register < 0x24 {
                    let high = (address >> 32) as u32;
                    self.bus
                        .config_write(0, devfn, register + 4, AccessWidth::Dword, high);
                }
                let command = u32::from(input.u8() & 0x07);
                self.bus
                    .config_write(0, devfn, COMMAND, AccessWidth::Word, command);
            }
            _ => {
                // Anywhere at all.
                let space = if input.bool() {
                    AddressSpace::Io
                } else {
                    AddressSpace::Memory
                };
                let address = input.u64();
                let len = usize::from(input.u8() % 8) + 1;
                self.access(space, address, len, input.bool());
            }
        }
    }

    fn access(&mut self, space: AddressSpace, address: u64, len: usize, write: bool) {
        let before = self.bus.decoded_bars();
        let mut data = [0x5au8; 8];
        let data = &mut data[..len];
        let target = match (space, write) {
            (AddressSpace::Io, _) if address > 0xffff => return,
            (AddressSpace::Io, true) => self.bus.pio_write(address as u16, data),
            (AddressSpace::Io, false) => self.bus.pio_read(address as u16, data),
            (AddressSpace::Memory, true) => self.bus.mmio_write(address, data),
            (AddressSpace::Memory, false) => self.bus.mmio_read(address, data),
        };
        if let Ok(AccessTarget::Bar { devfn, bar, offset }) = target {
            let decoding = before
                .iter()
                .find(|d| d.space == space && d.base <= address && address - d.base < d.size)
                .unwrap_or_else(|| panic!("{space:?} {address:#x} routed, but nothing decodes it"));
            assert_eq!(
                (decoding.devfn, decoding.bar),
                (devfn, bar),
                "routed elsewhere"
            );
            assert_eq!(offset, address - decoding.base);
            assert!(
                offset + len as u64 <= decoding.size,
                "access crosses the BAR's end"
            );
        }
    }

    fn check(&mut self) {
        let config = self.bus.config().clone();
        let decoded = self.bus.decoded_bars();
        for (i, d) in decoded.iter().enumerate() {
            let end = d
                .base
                .checked_add(d.size)
                .expect("a decoded BAR does not wrap");
            let inside = |w: vpci::AddressWindow| w.contains(d.base, d.size);
            let in_window = match d.space {
                AddressSpace::Io => config.io.is_some_and(inside),
                AddressSpace::Memory => inside(config.mem32) || config.mem64.is_some_and(inside),
            };
            assert!(in_window, "{d:?} decodes outside the bus's windows");
            for other in &decoded[..i] {
                let apart = other.space != d.space
                    || other
                        .base
                        .checked_add(other.size)
                        .is_some_and(|e| e <= d.base)
                    || end <= other.base;
                assert!(apart, "{d:?} overlaps {other:?}");
            }
            let status = self.bus.bar_status(d.devfn);
            let bar = status
                .iter()
                .find(|s| s.bar == d.bar)
                .expect("a decoded BAR has a status");
            assert!(
                bar.decoding && bar.programmed == Some(d.base),
                "{bar:?} vs {d:?}"
            );
            assert_eq!(bar.definition.size, d.size);
        }
        for event in self.bus.take_events() {
            match event {
                BusEvent::BarMapped(d) => {
                    assert!(self.mapped.insert(key(&d)), "mapped twice: {d:?}")
                }
                BusEvent::BarUnmapped(d) => {
                    assert!(
                        self.mapped.remove(&key(&d)),
                        "unmapped but not mapped: {d:?}"
                    )
                }
                BusEvent::MsiRouting { .. } => {}
            }
        }
        assert_eq!(self.bus.dropped_events(), 0);
        let now: BTreeSet<_> = decoded.iter().map(key).collect();
        assert_eq!(now, self.mapped, "events replayed differ from what decodes");

        for (i, &devfn) in self.functions.iter().enumerate() {
            let seen = read_only(&mut self.bus, devfn);
            assert_eq!(
                seen, self.read_only[i],
                "{devfn}'s read-only registers changed"
            );
        }
        if let Some((msi, protected)) = &self.passthrough {
            let now = protected_bytes(fuzz_device(&mut self.bus), msi);
            assert_eq!(&now, protected, "the device's own registers were written");
        }
    }
}
