//! `udrv`: list, claim and serve PCI devices for user-level drivers and guests.

mod acpi;

use clap::{Parser, Subcommand};

/// Claim PCI devices for user-level drivers and pass them through to guests.
#[derive(Parser)]
#[command(name = "udrv", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the ACPI tables (RSDP, XSDT, FADT, MADT, MCFG, DSDT) that describe a virtual PCI bus.
    Acpi(acpi::AcpiArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Acpi(args) => acpi::run(args),
    }
}
