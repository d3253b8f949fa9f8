//! ACPICA's compiler/disassembler (iasl) disassembles every table without complaint, and
//! compiling the disassembly gives back the same table.
//!
//! What "the same" means: iasl stamps its own identity into the header it writes (compiler
//! ID "INTL" and its version at bytes 28-35), which changes the checksum (byte 9). Every
//! other byte (signature, length, revision, OEM fields, and the whole body; for the DSDT the
//! entire AML) must be identical, and both checksums must be valid.

mod common;

use acpi_tables::{Description, TableKind, Tables};
use common::{acpica_available, run, write};
use std::path::Path;

const CHECKSUM: usize = 9;
const COMPILER_FIELDS: std::ops::Range<usize> = 28..36;

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
}

/// Disassembles `file` in `dir`, returning the .dsl text.
fn disassemble(dir: &Path, file: &str) -> Result<String, String> {
    let (ok, output) = run(dir, "iasl", &["-d", file]);
    let dsl = dir.join(file.replace(".dat", ".dsl"));
    if !ok || !dsl.exists() {
        return Err(output);
    }
    assert!(
        !output.contains("Error") && !output.contains("Warning"),
        "iasl -d {file} complained:\n{output}"
    );
    Ok(std::fs::read_to_string(dsl).unwrap())
}

/// Compiles `source` in `dir` and returns the binary it wrote.
fn compile(dir: &Path, source: &str) -> Vec<u8> {
    let (ok, output) = run(dir, "iasl", &[source]);
    assert!(ok, "iasl {source} failed:\n{output}");
    assert!(
        output.contains("Compilation successful. 0 Errors, 0 Warnings, 0 Remarks"),
        "iasl {source} was not clean:\n{output}"
    );
    let stem = source.rsplit_once('.').map(|(s, _)| s).unwrap_or(source);
    std::fs::read(dir.join(format!("{stem}.aml"))).unwrap()
}

/// Whether iasl's table equals ours in every byte but the ones iasl rewrites.
fn compare_tables(kind: TableKind, ours: &[u8], theirs: &[u8]) -> Result<(), String> {
    if ours.len() != theirs.len() {
        return Err(format!(
            "{kind:?}: recompiled length {} differs from ours {}",
            theirs.len(),
            ours.len()
        ));
    }
    if kind == TableKind::Facs {
        // No header, no checksum: byte for byte.
        return (ours == theirs)
            .then_some(())
            .ok_or_else(|| "FACS differs".to_string());
    }
    if !checksum_ok(ours) || !checksum_ok(theirs) {
        return Err(format!("{kind:?}: a checksum is wrong"));
    }
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        if a != b && i != CHECKSUM && !COMPILER_FIELDS.contains(&i) {
            return Err(format!(
                "{kind:?}: byte {i:#x} differs after the round trip (ours {a:#04x}, iasl {b:#04x})"
            ));
        }
    }
    if &theirs[28..32] != b"INTL" {
        return Err(format!("{kind:?}: iasl did not write its compiler ID"));
    }
    Ok(())
}

/// The RSDP as iasl's data-table source (the format `iasl -T RSDP` writes), from our bytes.
fn rsdp_source(rsdp: &[u8]) -> String {
    let u32_at = |o: usize| u32::from_le_bytes(rsdp[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(rsdp[o..o + 8].try_into().unwrap());
    format!(
        "[0008] Signature : \"RSD PTR \"\n\
         [0001] Checksum : 00\n\
         [0006] Oem ID : \"{}\"\n\
         [0001] Revision : {:02X}\n\
         [0004] RSDT Address : {:08X}\n\
         [0004] Length : {:08X}\n\
         [0008] XSDT Address : {:016X}\n\
         [0001] Extended Checksum : 00\n\
         [0003] Reserved : 000000\n",
        String::from_utf8_lossy(&rsdp[9..15]),
        rsdp[15],
        u32_at(16),
        u32_at(20),
        u64_at(24),
    )
}

fn check_topology(name: &str, d: &Description) {
    let dir = tempfile::tempdir().unwrap();
    let tables: Tables = write(d, dir.path());
    for table in tables.iter() {
        let kind = table.kind();
        let file = kind.file_name();
        let ours = table.bytes();
        match disassemble(dir.path(), file) {
            Ok(dsl) => {
                assert!(
                    !dsl.contains("****"),
                    "{name}: iasl flagged something in {file}:\n{dsl}"
                );
                if kind == TableKind::Dsdt {
                    let mem64 = d.root_bridges.iter().filter(|b| b.mem64.is_some()).count();
                    assert_eq!(
                        dsl.matches("QWordMemory (ResourceProducer").count(),
                        mem64,
                        "{name}: one QWordMemory window per 64-bit window"
                    );
                }
                let source = file.replace(".dat", ".dsl");
                let theirs = compile(dir.path(), &source);
                if let Err(e) = compare_tables(kind, ours, &theirs) {
                    panic!("{name}: {e}");
                }
            }
            Err(output) if kind == TableKind::Rsdp => {
                // iasl 20200925 cannot disassemble an RSDP file at all (it rejects even one
                // it compiled itself: "does not contain a valid ACPI table"). Compile the
                // same fields instead: iasl computes both checksums, and the result must be
                // our RSDP byte for byte.
                assert!(
                    output.contains("does not contain a valid ACPI table"),
                    "{name}: iasl -d rsdp.dat failed unexpectedly:\n{output}"
                );
                std::fs::write(dir.path().join("rsdp.asl"), rsdp_source(ours)).unwrap();
                let theirs = compile(dir.path(), "rsdp.asl");
                assert_eq!(ours, theirs.as_slice(), "{name}: RSDP compiled by iasl");
            }
            Err(output) => panic!("{name}: iasl -d {file} failed:\n{output}"),
        }
    }
}

#[test]
fn iasl_round_trips_every_table() {
    if !acpica_available("iasl_round_trips_every_table") {
        return;
    }
    for (name, d) in common::topologies() {
        check_topology(name, &d);
    }
}

/// `table` with iasl's compiler ID and version in its header, checksum fixed.
fn as_iasl_writes_it(table: &[u8]) -> Vec<u8> {
    let mut bytes = table.to_vec();
    bytes[28..32].copy_from_slice(b"INTL");
    bytes[32..36].copy_from_slice(&0x2020_0925u32.to_le_bytes());
    bytes[CHECKSUM] = 0;
    bytes[CHECKSUM] = 0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    bytes
}

#[test]
fn round_trip_comparison_catches_a_changed_byte() {
    // The comparison ignores only what iasl rewrites; any other difference fails it.
    let tables = Tables::build(&common::one_root_bridge()).unwrap();
    let dsdt = tables.get(TableKind::Dsdt).unwrap().bytes().to_vec();
    let restamped = as_iasl_writes_it(&dsdt);
    assert_eq!(compare_tables(TableKind::Dsdt, &dsdt, &restamped), Ok(()));
    let mut changed = dsdt.clone();
    changed[40] ^= 1;
    let verdict = compare_tables(TableKind::Dsdt, &dsdt, &as_iasl_writes_it(&changed));
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("byte 0x28")),
        "{verdict:?}"
    );
}
