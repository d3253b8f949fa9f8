//! `Description::validate()` and `Tables::build` agree on every description: validate() `Ok`
//! means the tables build, and a refusal is the same refusal. Built tables land where the
//! layout says, clear of the RSDP, of each other and of every MMIO range.

mod common;

use acpi_tables::{AcpiHardware, Description, FixedHardware, Tables, Window};
use proptest::prelude::*;

/// Addresses near the edges of what the topologies use: the BIOS area, the ECAM, the
/// 32-bit windows, the APIC pages and the top of the address space. Offsets are multiples
/// of 4 so that both aligned and misaligned RSDP and table addresses occur.
fn address() -> impl Strategy<Value = u64> {
    let anchors = prop::sample::select(vec![
        0u64,
        0xE_0000,
        0xF_0000,
        0x10_0000,
        0xB000_0000,
        0xC000_0000,
        0xE100_0000,
        0xFEC0_0000,
        0xFEE0_0000,
        0x1_0000_0000,
        u64::MAX - 0xFFF,
    ]);
    (anchors, -0x1000i64..0x1000)
        .prop_map(|(anchor, offset)| anchor.wrapping_add_signed(offset * 4))
}

fn description() -> impl Strategy<Value = Description> {
    let topology = prop::sample::select(common::topologies());
    (
        topology,
        address(),
        address(),
        1usize..=255,
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|((_, mut d), rsdp, tables, cpus, fixed, local_apic)| {
            d.layout.rsdp_address = rsdp;
            d.layout.tables_address = tables;
            // The MADT grows with the CPUs; the FACS exists only with fixed hardware.
            d.cpu_apic_ids = (0..cpus).map(|id| id as u8).collect();
            d.hardware = if fixed {
                AcpiHardware::Fixed(FixedHardware::ich9())
            } else {
                AcpiHardware::HardwareReduced
            };
            if local_apic % 4 == 0 {
                d.local_apic_address = local_apic & !0xFFF;
            }
            d
        })
}

/// The MMIO ranges a table must stay out of, as the description states them.
fn mmio(d: &Description) -> Vec<Window> {
    let mut ranges = vec![Window::new(u64::from(d.local_apic_address), 0x1000)];
    ranges.extend(
        d.io_apics
            .iter()
            .map(|a| Window::new(u64::from(a.address), 0x1000)),
    );
    for b in &d.root_bridges {
        ranges.push(b.ecam);
        ranges.extend(b.mem32);
        ranges.extend(b.mem64);
    }
    ranges
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn validate_agrees_with_build(d in description()) {
        let validated = d.validate().map_err(|e| e.to_string());
        let built = Tables::build(&d).map_err(|e| e.to_string());
        match (&validated, &built) {
            (Ok(()), Ok(tables)) => {
                let placed: Vec<Window> = tables
                    .iter()
                    .map(|t| Window::new(t.address(), t.bytes().len() as u64))
                    .collect();
                prop_assert_eq!(tables.rsdp_address(), d.layout.rsdp_address);
                for (i, table) in placed.iter().enumerate() {
                    prop_assert!(table.last().is_some(), "table {} wraps: {:?}", i, table);
                    for other in &placed[..i] {
                        prop_assert!(!table.overlaps(other), "{:?} overlaps {:?}", table, other);
                    }
                    for range in mmio(&d) {
                        prop_assert!(!table.overlaps(&range), "{:?} in MMIO {:?}", table, range);
                    }
                }
            }
            (Err(v), Err(b)) => prop_assert_eq!(v, b),
            _ => prop_assert!(false, "validate {:?} but build {:?}", validated, built.map(drop)),
        }
    }
}
