//! Property tests: whatever a guest writes to a passthrough function's config space,
//! in any order, at any offset and width, and whatever BAR accesses it makes, nothing
//! panics, the device's own BARs, MSI/MSI-X registers and decode enables are never
//! touched, the identity registers never change, and the capability lists the guest
//! walks stay the ones it was given.

use proptest::prelude::*;

use super::tests::{ahci, e1000e};
use super::PassthroughFunction;
use crate::bar::BarIndex;
use crate::bus::function::PciFunction;
use crate::config::access_width::AccessWidth;
use crate::config::capability::{walk_capabilities, walk_extended_capabilities};
use crate::config::regs::command;
use crate::passthrough::fake_device::FakeDevice;

#[derive(Clone, Debug)]
enum Op {
    ConfigWrite {
        offset: u16,
        width: AccessWidth,
        value: u32,
    },
    ConfigRead {
        offset: u16,
        width: AccessWidth,
    },
    BarRead {
        bar: u8,
        offset: u64,
        len: usize,
    },
    BarWrite {
        bar: u8,
        offset: u64,
        len: usize,
        byte: u8,
    },
}

fn width() -> impl Strategy<Value = AccessWidth> {
    proptest::sample::select(AccessWidth::ALL.to_vec())
}

/// Offsets weighted towards the registers that matter: the header, the capabilities
/// both devices have, and anywhere else (including past the end).
fn offset() -> impl Strategy<Value = u16> {
    prop_oneof![0u16..0x40, 0x80u16..0x100, 0x100u16..0x200, 0u16..0x1100,]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (offset(), width(), any::<u32>()).prop_map(|(offset, width, value)| {
            Op::ConfigWrite { offset, width, value }
        }),
        1 => (offset(), width()).prop_map(|(offset, width)| Op::ConfigRead { offset, width }),
        1 => (0u8..7, 0u64..0x2_1000, 1usize..9)
            .prop_map(|(bar, offset, len)| Op::BarRead { bar, offset, len }),
        1 => (0u8..7, 0u64..0x2_1000, 1usize..9, any::<u8>())
            .prop_map(|(bar, offset, len, byte)| Op::BarWrite { bar, offset, len, byte }),
    ]
}

fn bar_index(bar: u8) -> BarIndex {
    BarIndex::new(bar).unwrap_or(BarIndex::ROM)
}

/// Device bytes the guest must never reach: IDs, BARs, ROM BAR, and the given
/// MSI/MSI-X capability ranges.
fn protected(device: &FakeDevice, ranges: &[(usize, usize)]) -> Vec<u8> {
    let config = device.config.lock().unwrap();
    let mut out = config[0x00..0x04].to_vec();
    out.extend_from_slice(&config[0x10..0x28]);
    out.extend_from_slice(&config[0x30..0x34]);
    for &(start, end) in ranges {
        out.extend_from_slice(&config[start..end]);
    }
    out
}

fn run(device: FakeDevice, msi_ranges: &[(usize, usize)], ops: &[Op]) {
    let mut f = PassthroughFunction::new(device).unwrap();
    let ids = f.config_read(0, AccessWidth::Dword);
    let caps = walk_capabilities(|o, w| f.config_read(o, w)).unwrap();
    let ext = walk_extended_capabilities(|o, w| f.config_read(o, w)).unwrap();
    let before = protected(f.device(), msi_ranges);
    let decode = f.device().config_u16(4) & (command::MEMORY_SPACE | command::IO_SPACE);
    for op in ops {
        match *op {
            Op::ConfigWrite {
                offset,
                width,
                value,
            } => f.config_write(offset, width, value),
            Op::ConfigRead { offset, width } => {
                let v = f.config_read(offset, width);
                assert_eq!(v & !width.mask(), 0, "{op:?} read {v:#x}");
            }
            Op::BarRead { bar, offset, len } => {
                let mut data = vec![0u8; len];
                let _ = f.bar_read(bar_index(bar), offset, &mut data);
            }
            Op::BarWrite {
                bar,
                offset,
                len,
                byte,
            } => {
                let _ = f.bar_write(bar_index(bar), offset, &vec![byte; len]);
            }
        }
        assert_eq!(f.config_read(0, AccessWidth::Dword), ids, "after {op:?}");
        let real = f.device().config_u16(4);
        assert_eq!(
            real & (command::MEMORY_SPACE | command::IO_SPACE),
            decode,
            "the device's decode changed after {op:?}"
        );
    }
    assert_eq!(protected(f.device(), msi_ranges), before);
    assert_eq!(walk_capabilities(|o, w| f.config_read(o, w)).unwrap(), caps);
    assert_eq!(
        walk_extended_capabilities(|o, w| f.config_read(o, w)).unwrap(),
        ext
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn e1000e_survives_any_guest(ops in proptest::collection::vec(op(), 1..64)) {
        // MSI (64-bit, no masking: 0x0e bytes) at 0xd0, MSI-X at 0xa0.
        run(e1000e(), &[(0xd0, 0xde), (0xa0, 0xac)], &ops);
    }

    #[test]
    fn ahci_survives_any_guest(ops in proptest::collection::vec(op(), 1..64)) {
        // MSI (32-bit with masking: 0x14 bytes) at 0x80.
        run(ahci(), &[(0x80, 0x94)], &ops);
    }
}
