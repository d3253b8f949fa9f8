//! The guest's own firmware tables against ours: q35's MCFG and DSDT (from SeaBIOS via
//! QEMU) are read from /sys/firmware/acpi/tables, compared with the tables udrv builds
//! for the equivalent bus, and both sets are sent back to the host
//! (`target/rig/files/q35-*.dat`, `udrv-*.dat`) for an object-by-object look with
//! `iasl -d`.

use anyhow::{ensure, Context, Result};

use crate::harness::{rig_tests, send_file, RigTest};

pub fn tests() -> Vec<RigTest> {
    rig_tests![vpci_acpi: default_bus_matches_q35]
}

/// One MCFG allocation: ECAM base, segment, first and last bus.
#[derive(Debug, PartialEq, Eq)]
struct McfgEntry {
    base: u64,
    segment: u16,
    first_bus: u8,
    last_bus: u8,
}

/// The allocations of an MCFG table (36-byte header, 8 reserved, then 16-byte entries).
fn mcfg_entries(table: &[u8]) -> Result<Vec<McfgEntry>> {
    ensure!(
        table.len() >= 44 && &table[..4] == b"MCFG",
        "not an MCFG table"
    );
    let len = u32::from_le_bytes(table[4..8].try_into()?) as usize;
    ensure!(
        (44..=table.len()).contains(&len) && (len - 44).is_multiple_of(16),
        "MCFG length {len} is malformed"
    );
    ensure!(
        table[..len].iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0,
        "MCFG checksum is wrong"
    );
    Ok(table[44..len]
        .chunks_exact(16)
        .map(|e| McfgEntry {
            base: u64::from_le_bytes(e[0..8].try_into().expect("8 bytes")),
            segment: u16::from_le_bytes([e[8], e[9]]),
            first_bus: e[10],
            last_bus: e[11],
        })
        .collect())
}

fn default_bus_matches_q35() -> Result<()> {
    let read = |name: &str| {
        let path = format!("/sys/firmware/acpi/tables/{name}");
        std::fs::read(&path).with_context(|| format!("reading {path}"))
    };
    let (q35_mcfg, q35_dsdt) = (read("MCFG")?, read("DSDT")?);
    send_file("q35-mcfg.dat", &q35_mcfg)?;
    send_file("q35-dsdt.dat", &q35_dsdt)?;

    let ours = acpi_tables::Tables::build(&acpi_tables::Description::default())?;
    for table in ours.iter() {
        send_file(&format!("udrv-{}", table.kind().file_name()), table.bytes())?;
    }
    let our_mcfg = ours
        .get(acpi_tables::TableKind::Mcfg)
        .context("no MCFG built")?;

    let (theirs, mine) = (mcfg_entries(&q35_mcfg)?, mcfg_entries(our_mcfg.bytes())?);
    println!("q35 MCFG: {theirs:x?}\nudrv MCFG: {mine:x?}");
    ensure!(theirs == mine, "the default bus's MCFG differs from q35's");
    ensure!(
        q35_dsdt.windows(8).any(|w| w == b"PNP0A08\0") || q35_dsdt.windows(4).any(|w| w == b"PCI0"),
        "q35's DSDT has no PCI0 root bridge"
    );
    Ok(())
}
