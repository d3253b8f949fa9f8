//! A bus description as `udrv acpi --bus FILE` reads it: JSON in, a `Description` out,
//! validated and built into tables.
//!
//! Oracles: no panic; `validate()` accepts exactly what `Tables::build` builds, with the
//! same error; a description written back to JSON reads the same; built tables are
//! well formed (header length and checksum), placed where the layout says (the RSDP at
//! its address, the rest from the tables address up, 8-byte aligned, none overlapping
//! another, the RSDP or an MMIO range) and point at one another; at most 32 MiB live
//! per input (256 root bridges of DSDT, the largest description, take a few MiB).
#![no_main]

use acpi_tables::{Description, TableKind, Tables, Window};
use libfuzzer_sys::fuzz_target;
use udrv_fuzz::bounded;

const MAX_LIVE_BYTES: usize = 32 << 20;

fuzz_target!(|data: &[u8]| bounded(MAX_LIVE_BYTES, || check(data)));

fn check(data: &[u8]) {
    let Ok(description) = serde_json::from_slice::<Description>(data) else {
        return;
    };
    let written = serde_json::to_string(&description).expect("a description encodes");
    let reread: Description = serde_json::from_str(&written).expect("its JSON reads back");
    assert_eq!(reread, description, "JSON round trip: {written}");

    let validated = description.validate().map_err(|e| e.to_string());
    let built = Tables::build(&description).map_err(|e| e.to_string());
    let tables = match (validated, built) {
        (Ok(()), Ok(tables)) => tables,
        (Err(v), Err(b)) => {
            assert_eq!(v, b, "validate and build refuse alike");
            return;
        }
        (v, b) => panic!("validate() {v:?} but build {:?}", b.map(drop)),
    };
    check_tables(&description, &tables);
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

fn check_tables(d: &Description, tables: &Tables) {
    let at = |kind| tables.get(kind).expect("table built").address();
    let bytes = |kind| tables.get(kind).expect("table built").bytes();
    let sum = |b: &[u8]| b.iter().fold(0u8, |s, x| s.wrapping_add(*x));

    assert_eq!(tables.rsdp_address(), d.layout.rsdp_address);
    let rsdp = bytes(TableKind::Rsdp);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    assert_eq!(u64_at(rsdp, 24), at(TableKind::Xsdt));

    let xsdt = bytes(TableKind::Xsdt);
    let pointers: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(xsdt, o))
        .collect();
    assert_eq!(
        pointers,
        [
            at(TableKind::Fadt),
            at(TableKind::Madt),
            at(TableKind::Mcfg)
        ]
    );
    assert_eq!(
        u64_at(bytes(TableKind::Fadt), 140),
        at(TableKind::Dsdt),
        "X_DSDT"
    );

    let mut mmio = vec![Window::new(u64::from(d.local_apic_address), 0x1000)];
    mmio.extend(
        d.io_apics
            .iter()
            .map(|a| Window::new(u64::from(a.address), 0x1000)),
    );
    for b in &d.root_bridges {
        mmio.push(b.ecam);
        mmio.extend(b.mem32);
        mmio.extend(b.mem64);
    }
    let mut placed: Vec<Window> = Vec::new();
    for table in tables.iter() {
        let b = table.bytes();
        if table.kind() == TableKind::Facs {
            assert_eq!(u32_at(b, 4) as usize, b.len(), "FACS length");
            assert_eq!(table.address() % 64, 0, "FACS alignment");
        } else if table.kind() != TableKind::Rsdp {
            assert_eq!(&b[..4], table.kind().signature().as_bytes());
            assert_eq!(u32_at(b, 4) as usize, b.len(), "{:?} length", table.kind());
            assert_eq!(sum(b), 0, "{:?} checksum", table.kind());
            assert_eq!(table.address() % 8, 0, "{:?} alignment", table.kind());
            assert!(table.address() >= d.layout.tables_address);
        }
        let window = Window::new(table.address(), b.len() as u64);
        assert!(window.last().is_some(), "{:?} wraps", table.kind());
        for other in placed.iter().chain(&mmio) {
            assert!(
                !window.overlaps(other),
                "{:?} at {window:?} overlaps {other:?}",
                table.kind()
            );
        }
        placed.push(window);
    }
}
