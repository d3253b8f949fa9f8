//! `udrv acpi`: write the ACPI tables that describe a virtual PCI bus to a guest.

use acpi_tables::{Description, Tables};
use anyhow::{Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const LONG_ABOUT: &str = "\
Write the ACPI tables a firmware-less guest needs to find a virtual PCI bus: RSDP, XSDT,
FADT (and FACS with fixed hardware), MADT, MCFG and a DSDT with one PNP0A08 host bridge per
root bridge (_SEG, _BBN, _UID, _CRS, _PRT, _OSC). Each table goes into its own file, named as
ACPICA's acpixtract names them (rsdp.dat, xsdt.dat, facp.dat, facs.dat, dsdt.dat, apic.dat,
mcfg.dat), laid out for the guest physical addresses in the description: the RSDP points at
the XSDT, the XSDT at the FADT, MADT and MCFG, the FADT at the DSDT and FACS.

Without --bus, the bus is q35-like: one CPU, an IO APIC at 0xFEC00000, segment 0 with buses
0-255, ECAM at 0xB0000000 (256 MiB), IO 0x0D00-0xFFFF plus the 0xCF8 config ports, MEM32
0xC0000000-0xFEBFFFFF, MEM64 32 GiB from 4 GiB, INTx of slot s pin p on GSI 16 + (s+p) % 8,
ICH9-style PM registers at 0x600, and the RSDP at 0xE0000 with the tables after it.

--bus reads a JSON description; every field left out keeps the default above, and addresses
may be numbers or \"0x...\" strings. Print the default with --template to start from it.";

const AFTER_HELP: &str = "\
Examples:
  udrv acpi --out tables --dump            write the default bus's tables and summarise them
  udrv acpi --template > bus.json          start a description from the default
  udrv acpi --bus bus.json --out tables    tables for the bus in bus.json

A second root bridge in its own segment, in bus.json's \"root_bridges\" list:
  { \"segment\": 1, \"buses\": { \"first\": 0, \"last\": 15 },
    \"ecam\": { \"base\": \"0xE0000000\", \"size\": \"0x1000000\" },
    \"mem64\": { \"base\": \"0x4000000000\", \"size\": \"0x1000000000\" },
    \"intx\": { \"swizzle\": { \"first_gsi\": 16, \"count\": 4 } },
    \"osc\": { \"native_hotplug\": false } }

Check the result with ACPICA: `iasl -d tables/*.dat` disassembles them, and
`acpiexec -b 'evaluate \\_SB.PCI0._CRS' tables/dsdt.dat tables/facp.dat` evaluates them.";

/// Arguments of `udrv acpi`.
#[derive(Args, Debug)]
#[command(long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct AcpiArgs {
    /// Directory to write the tables into (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "template")]
    out: Option<PathBuf>,
    /// JSON description of the bus and platform (default: a q35-like single root bridge).
    #[arg(long, value_name = "FILE")]
    bus: Option<PathBuf>,
    /// Also print a human-readable summary of the bus and of each table written.
    #[arg(long)]
    dump: bool,
    /// Print the description in use (the default, or --bus) as JSON, to edit.
    #[arg(long, conflicts_with = "dump")]
    template: bool,
}

/// Runs `udrv acpi`.
pub fn run(args: AcpiArgs) -> Result<()> {
    let description = match &args.bus {
        Some(path) => read_description(path)?,
        None => Description::default(),
    };
    if args.template {
        println!("{}", serde_json::to_string_pretty(&description)?);
        if args.out.is_none() {
            return Ok(());
        }
    }
    let tables = Tables::build(&description).with_context(|| match &args.bus {
        Some(path) => format!("the bus described in {}", path.display()),
        None => "the default bus".to_string(),
    })?;
    if let Some(out) = &args.out {
        tables.write_files(out)?;
        if args.dump {
            print!("{}", summary(&description, &tables, out));
        }
    }
    Ok(())
}

fn read_description(path: &Path) -> Result<Description> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the bus description {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "parsing the bus description {} (see `udrv acpi --template` for the format)",
            path.display()
        )
    })
}

/// The description, then one line per table file.
fn summary(description: &Description, tables: &Tables, out: &Path) -> String {
    let mut text = description.to_string();
    let _ = writeln!(text, "Tables in {}:", out.display());
    for table in tables.iter() {
        let bytes = table.bytes();
        let _ = writeln!(
            text,
            "  {:<8} {:<9} at {:#010x}, {:>5} bytes",
            table.kind().signature().trim_end(),
            table.kind().file_name(),
            table.address(),
            bytes.len()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi_tables::TableKind;

    fn args(out: Option<&Path>, bus: Option<&Path>) -> AcpiArgs {
        AcpiArgs {
            out: out.map(Path::to_path_buf),
            bus: bus.map(Path::to_path_buf),
            dump: false,
            template: false,
        }
    }

    #[test]
    fn default_bus_writes_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("tables");
        run(args(Some(&out), None)).unwrap();
        let expected = Tables::build(&Description::default()).unwrap();
        for table in expected.iter() {
            let written = std::fs::read(out.join(table.kind().file_name())).unwrap();
            assert_eq!(written, table.bytes(), "{:?}", table.kind());
        }
    }

    #[test]
    fn bus_file_selects_the_topology() {
        let dir = tempfile::tempdir().unwrap();
        let bus = dir.path().join("bus.json");
        std::fs::write(
            &bus,
            r#"{ "hardware": "hardware_reduced", "cpu_apic_ids": [0, 2] }"#,
        )
        .unwrap();
        run(args(Some(dir.path()), Some(&bus))).unwrap();
        assert!(dir.path().join("dsdt.dat").exists());
        assert!(
            !dir.path().join("facs.dat").exists(),
            "no FACS without fixed hardware"
        );
        let madt = std::fs::read(dir.path().join("apic.dat")).unwrap();
        let expected = Tables::build(&Description {
            hardware: acpi_tables::AcpiHardware::HardwareReduced,
            cpu_apic_ids: vec![0, 2],
            ..Description::default()
        })
        .unwrap();
        assert_eq!(madt, expected.get(TableKind::Madt).unwrap().bytes());
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let bus = dir.path().join("bus.json");
        std::fs::write(&bus, r#"{ "cpu_apic_ids": [] }"#).unwrap();
        let err = format!("{:#}", run(args(Some(dir.path()), Some(&bus))).unwrap_err());
        assert!(
            err.contains("bus.json") && err.contains("CPUs: none"),
            "{err}"
        );

        std::fs::write(&bus, r#"{ "cpu_apic_ids": 3 "#).unwrap();
        let err = format!("{:#}", run(args(Some(dir.path()), Some(&bus))).unwrap_err());
        assert!(err.contains("parsing the bus description"), "{err}");

        let missing = dir.path().join("missing.json");
        let err = format!(
            "{:#}",
            run(args(Some(dir.path()), Some(&missing))).unwrap_err()
        );
        assert!(err.contains("reading the bus description"), "{err}");
    }

    #[test]
    fn summary_lists_bridges_and_tables() {
        let d = Description::default();
        let tables = Tables::build(&d).unwrap();
        let text = summary(&d, &tables, Path::new("out"));
        assert!(
            text.contains("Root bridge PCI0: segment 0, buses 0x00-0xff"),
            "{text}"
        );
        assert!(text.contains("MEM32 0xc0000000-0xfebfffff"), "{text}");
        assert!(text.contains("RSD PTR"), "{text}");
        assert!(text.contains("APIC     apic.dat"), "{text}");
        let table_lines = text
            .lines()
            .filter(|l| l.contains(".dat") && l.ends_with(" bytes"));
        assert_eq!(table_lines.count(), tables.iter().count());
    }
}
