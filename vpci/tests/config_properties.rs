//! Property tests: arbitrary guest config writes (any function, offset, width, value,
//! through the bus API, ECAM or the config ports), interleaved with BAR accesses,
//! never panic, never change read-only bits, never set write-1-to-clear bits, and never
//! let a decoding BAR overlap another or leave its window. BARs that could decode do.

use proptest::prelude::*;

use vpci::config::regs::{command, header, rom};
use vpci::{
    AccessTarget, AccessWidth, AddressSpace, BarDefinition, BarIndex, BarKind, BusConfig,
    ConfigSpace, DecodedBar, DevFn, HostBridge, MsiConfig, RegisterMask, TestDevice,
    TestDeviceConfig, VirtualBus,
};

fn devfn(device: u8, function: u8) -> DevFn {
    DevFn::new(device, function).unwrap()
}

/// Functions on the bus, plus 06.0 where there is none.
fn targets() -> Vec<DevFn> {
    vec![
        devfn(0, 0),
        devfn(3, 0),
        devfn(4, 0),
        devfn(5, 0),
        devfn(5, 1),
        devfn(6, 0),
    ]
}

fn build_bus() -> VirtualBus {
    let mut bus = VirtualBus::new(BusConfig::default()).unwrap();
    for (d, device_id) in [(3, 0x10), (4, 0x11)] {
        let device = TestDevice::new(&TestDeviceConfig::full(0x1af4, device_id)).unwrap();
        bus.add_function(devfn(d, 0), Box::new(device)).unwrap();
    }
    let mut f0 = TestDeviceConfig::minimal(0x8086, 0x2922);
    f0.bars = vec![
        (
            BarIndex::new(4).unwrap(),
            BarDefinition::new(BarKind::Io, 0x20),
        ),
        (
            BarIndex::new(5).unwrap(),
            BarDefinition::new(BarKind::Memory32 { prefetchable: true }, 0x2000),
        ),
    ];
    f0.rom_size = Some(0x800);
    bus.add_function(devfn(5, 0), Box::new(TestDevice::new(&f0).unwrap()))
        .unwrap();
    let mut f1 = TestDeviceConfig::minimal(0x8086, 0x2930);
    f1.bars = vec![(
        BarIndex::new(0).unwrap(),
        BarDefinition::new(BarKind::Io, 0x40),
    )];
    f1.msi = Some(MsiConfig {
        vectors: 8,
        is_64bit: true,
        per_vector_mask: true,
    });
    bus.add_function(devfn(5, 1), Box::new(TestDevice::new(&f1).unwrap()))
        .unwrap();
    bus
}

/// Addresses worth aiming BARs at: window edges and where firmware put every BAR.
fn interesting_addresses() -> Vec<u64> {
    let bus = build_bus();
    let config = bus.config().clone();
    let mut addresses = vec![
        config.io.unwrap().base,
        config.io.unwrap().end().unwrap() - 0x20,
        config.mem32.base,
        config.mem32.end().unwrap() - 0x1000,
        config.mem64.unwrap().base,
        config.mem64.unwrap().end().unwrap() - 0x4000,
        0,
        0x1000,
        0xfffe_0000,
    ];
    for f in targets() {
        addresses.extend(bus.bar_status(f).iter().filter_map(|s| s.programmed));
    }
    addresses
}

#[derive(Clone, Debug)]
enum Op {
    /// A config write through the bus API.
    Config {
        target: usize,
        register: u16,
        width: AccessWidth,
        value: u32,
    },
    /// Aim a BAR register (low and, for 64-bit, high dword) at an address.
    Aim {
        target: usize,
        bar: u8,
        address: u64,
    },
    /// Set the command register.
    Command { target: usize, value: u16 },
    /// An ECAM write of 1..=8 bytes anywhere in (and around) the ECAM area.
    Ecam { offset: u64, len: usize, value: u64 },
    /// A write to the config ports, any width.
    Ports { port: u16, len: usize, value: u32 },
    /// A BAR access somewhere interesting.
    Touch {
        address: u64,
        len: usize,
        write: bool,
    },
}

fn width() -> impl Strategy<Value = AccessWidth> {
    proptest::sample::select(AccessWidth::ALL.to_vec())
}

fn op(addresses: Vec<u64>) -> impl Strategy<Value = Op> {
    let n = targets().len();
    let aimed = prop::sample::select(addresses.clone());
    let touched = prop::sample::select(addresses);
    prop_oneof![
        4 => (0..n, 0u16..0x1010, width(), any::<u32>())
            .prop_map(|(target, register, width, value)| Op::Config { target, register, width, value }),
        2 => (0..n, 0x3cu16..0x40, width(), any::<u32>())
            .prop_map(|(target, register, width, value)| Op::Config { target, register, width, value }),
        4 => (0..n, 0u8..7, aimed, 0u64..0x3000)
            .prop_map(|(target, bar, base, delta)| Op::Aim { target, bar, address: base + (delta & !0xf) }),
        3 => (0..n, prop_oneof![any::<u16>(), Just(0x7u16), Just(0x0u16)])
            .prop_map(|(target, value)| Op::Command { target, value }),
        2 => (0u64..(1 << 20) + 0x100, 1usize..=8, any::<u64>())
            .prop_map(|(offset, len, value)| Op::Ecam { offset, len, value }),
        2 => (0xcf6u16..0xd02, 1usize..=4, any::<u32>())
            .prop_map(|(port, len, value)| Op::Ports { port, len, value }),
        2 => (touched, 0u64..0x40, 1usize..=8, any::<bool>())
            .prop_map(|(base, delta, len, write)| Op::Touch { address: base + delta, len, write }),
    ]
}

fn apply(bus: &mut VirtualBus, op: &Op) -> Option<DevFn> {
    let targets = targets();
    match *op {
        Op::Config {
            target,
            register,
            width,
            value,
        } => {
            bus.config_write(0, targets[target], register, width, value);
            Some(targets[target])
        }
        Op::Aim {
            target,
            bar,
            address,
        } => {
            let f = targets[target];
            let offset = if bar == 6 {
                header::ROM_ADDRESS
            } else {
                header::bar(bar)
            };
            let low = address as u32 | if bar == 6 { rom::ENABLE } else { 0 };
            bus.config_write(0, f, offset, AccessWidth::Dword, low);
            if bar < 5 {
                bus.config_write(0, f, offset + 4, AccessWidth::Dword, (address >> 32) as u32);
            }
            Some(f)
        }
        Op::Command { target, value } => {
            bus.config_write(
                0,
                targets[target],
                header::COMMAND,
                AccessWidth::Word,
                value.into(),
            );
            Some(targets[target])
        }
        Op::Ecam { offset, len, value } => {
            let base = bus.ecam_window().base;
            let _ = bus.mmio_write(base + offset, &value.to_le_bytes()[..len]);
            let f = DevFn::from_raw((offset >> 12) as u8);
            (offset < 1 << 20).then_some(f)
        }
        Op::Ports { port, len, value } => {
            let _ = bus.pio_write(port, &value.to_le_bytes()[..len]);
            None
        }
        Op::Touch {
            address,
            len,
            write,
        } => {
            let mut data = vec![0x3c; len];
            if write {
                let _ = bus.mmio_write(address, &data);
                if let Ok(port) = u16::try_from(address) {
                    let _ = bus.pio_write(port, &data);
                }
            } else {
                let _ = bus.mmio_read(address, &mut data);
                if let Ok(port) = u16::try_from(address) {
                    let _ = bus.pio_read(port, &mut data);
                }
            }
            None
        }
    }
}

/// The guest-visible config of every function, dword by dword, and its write masks.
struct Snapshot {
    values: Vec<(DevFn, Vec<u32>)>,
    masks: Vec<(DevFn, Vec<RegisterMask>)>,
}

fn config_space_of(bus: &mut VirtualBus, f: DevFn) -> Option<ConfigSpace> {
    if let Some(device) = bus.function_as::<TestDevice>(f) {
        return Some(device.config_space().clone());
    }
    bus.function_as::<HostBridge>(f)
        .map(|b| b.config_space().clone())
}

fn snapshot(bus: &mut VirtualBus) -> Snapshot {
    let mut values = Vec::new();
    let mut masks = Vec::new();
    for f in targets() {
        let Some(space) = config_space_of(bus, f) else {
            continue;
        };
        let dwords: Vec<u16> = (0..0x1000).step_by(4).collect();
        values.push((
            f,
            dwords
                .iter()
                .map(|&o| bus.config_read(0, f, o, AccessWidth::Dword))
                .collect(),
        ));
        masks.push((
            f,
            dwords
                .iter()
                .map(|&o| space.mask(o, AccessWidth::Dword))
                .collect(),
        ));
    }
    Snapshot { values, masks }
}

fn check_read_only(
    bus: &mut VirtualBus,
    initial: &Snapshot,
    only: Option<DevFn>,
) -> Result<(), TestCaseError> {
    for ((f, values), (_, masks)) in initial.values.iter().zip(&initial.masks) {
        if only.is_some_and(|o| o != *f) {
            continue;
        }
        for (i, (before, mask)) in values.iter().zip(masks).enumerate() {
            let offset = (i * 4) as u16;
            let now = bus.config_read(0, *f, offset, AccessWidth::Dword);
            let read_only = !(mask.writable | mask.write_one_to_clear);
            prop_assert_eq!(
                (now ^ before) & read_only,
                0,
                "{} config {:#x}: read-only bits changed ({:#x} -> {:#x}, mask {:?})",
                f,
                offset,
                before,
                now,
                mask
            );
            prop_assert_eq!(
                now & mask.write_one_to_clear & !before,
                0,
                "{} config {:#x}: a write-1-to-clear bit got set",
                f,
                offset
            );
        }
    }
    Ok(())
}

/// What the guest's registers ask a BAR to decode, read through config space.
fn wanted(bus: &mut VirtualBus, f: DevFn, bar: BarIndex, definition: BarDefinition) -> Option<u64> {
    let cmd = bus.config_read(0, f, header::COMMAND, AccessWidth::Word) as u16;
    let offset = bar.config_offset();
    let low = bus.config_read(0, f, offset, AccessWidth::Dword);
    let (address, enabled) = if bar.is_rom() {
        (
            u64::from(low & rom::ADDRESS_MASK),
            cmd & command::MEMORY_SPACE != 0 && low & rom::ENABLE != 0,
        )
    } else {
        let high = if definition.kind.is_64bit() {
            bus.config_read(0, f, offset + 4, AccessWidth::Dword)
        } else {
            0
        };
        let bit = match AddressSpace::from(definition.kind) {
            AddressSpace::Io => command::IO_SPACE,
            AddressSpace::Memory => command::MEMORY_SPACE,
        };
        (definition.address_from_registers(low, high), cmd & bit != 0)
    };
    (enabled && address != 0).then_some(address)
}

fn in_window(config: &BusConfig, space: AddressSpace, base: u64, size: u64) -> bool {
    match space {
        AddressSpace::Io => config.io.is_some_and(|w| w.contains(base, size)),
        AddressSpace::Memory => {
            config.mem32.contains(base, size)
                || config.mem64.is_some_and(|w| w.contains(base, size))
        }
    }
}

fn overlaps(a: &DecodedBar, space: AddressSpace, base: u64, size: u64) -> bool {
    a.space == space && a.base < base.saturating_add(size) && base < a.end()
}

fn check_decoding(bus: &mut VirtualBus) -> Result<(), TestCaseError> {
    let config = bus.config().clone();
    let decoded = bus.decoded_bars();
    for (i, d) in decoded.iter().enumerate() {
        prop_assert!(
            in_window(&config, d.space, d.base, d.size),
            "{:?} leaves its window",
            d
        );
        for other in &decoded[i + 1..] {
            prop_assert!(
                !overlaps(other, d.space, d.base, d.size),
                "{:?} overlaps {:?}",
                d,
                other
            );
        }
        let definition = bus
            .bar_status(d.devfn)
            .into_iter()
            .find(|s| s.bar == d.bar)
            .map(|s| s.definition)
            .unwrap();
        prop_assert_eq!(
            wanted(bus, d.devfn, d.bar, definition),
            Some(d.base),
            "{:?} decodes what the guest's registers do not ask for",
            d
        );
        prop_assert_eq!(
            bus.resolve_bar(d.space, d.base + d.size - 1, 1).unwrap(),
            AccessTarget::Bar {
                devfn: d.devfn,
                bar: d.bar,
                offset: d.size - 1
            }
        );
    }
    // Nothing that could decode is left out.
    for f in targets() {
        for status in bus.bar_status(f) {
            if status.decoding {
                continue;
            }
            let size = status.definition.size;
            let space = AddressSpace::from(status.definition.kind);
            if let Some(base) = wanted(bus, f, status.bar, status.definition) {
                let free = !decoded.iter().any(|d| overlaps(d, space, base, size));
                prop_assert!(
                    !(free && in_window(&config, space, base, size)),
                    "{} {} wants {:#x} (+{:#x}), which is free and in its window, but does not decode",
                    f,
                    status.bar,
                    base,
                    size
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_config_writes_keep_the_bus_sound(
        ops in prop::collection::vec(op(interesting_addresses()), 1..48)
    ) {
        let mut bus = build_bus();
        let initial = snapshot(&mut bus);
        check_decoding(&mut bus)?;
        for op in &ops {
            let touched = apply(&mut bus, op);
            check_decoding(&mut bus)?;
            if let Some(f) = touched {
                check_read_only(&mut bus, &initial, Some(f))?;
            }
        }
        check_read_only(&mut bus, &initial, None)?;
    }

    /// A model of the per-bit masks: every guest write to a `ConfigSpace` with random
    /// contents and masks does exactly what the masks say, and refused accesses
    /// change nothing.
    #[test]
    fn config_space_writes_follow_the_masks(
        image in prop::collection::vec(any::<u8>(), 256),
        writable in prop::collection::vec(any::<u8>(), 256),
        w1c in prop::collection::vec(any::<u8>(), 256),
        writes in prop::collection::vec((0u16..0x110, width(), any::<u32>()), 1..64),
    ) {
        let mut space = ConfigSpace::from_bytes(&image).unwrap();
        for offset in (0..256u16).step_by(4) {
            let at = usize::from(offset);
            let mask = RegisterMask {
                writable: u32::from_le_bytes(writable[at..at + 4].try_into().unwrap()),
                write_one_to_clear: u32::from_le_bytes(w1c[at..at + 4].try_into().unwrap()),
            };
            space.set_mask(offset, AccessWidth::Dword, mask).unwrap();
        }
        let mut model = image.clone();
        for (offset, width, value) in writes {
            space.write(offset, width, value);
            let start = usize::from(offset);
            let valid = start % width.bytes() == 0 && start + width.bytes() <= 256;
            if valid {
                for i in 0..width.bytes() {
                    let v = (value >> (8 * i)) as u8;
                    let clear = w1c[start + i];
                    let replace = writable[start + i] & !clear;
                    let old = model[start + i];
                    model[start + i] = ((old & !replace) | (v & replace)) & !(v & clear);
                }
            } else {
                prop_assert_eq!(space.read(offset, width), width.mask());
            }
            let now: Vec<u8> = (0..256u16).map(|o| space.u8_at(o)).collect();
            prop_assert_eq!(&now, &model);
        }
    }
}
