//! `udrv`: list, claim and serve PCI devices for user-level drivers and guests.

mod acpi;
mod attach;
mod detach;
mod list;

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
    List(list::ListArgs),
    Attach(attach::AttachArgs),
    Detach(detach::DetachArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Acpi(args) => acpi::run(args),
        Command::List(args) => list::run(args),
        Command::Attach(args) => attach::run(args),
        Command::Detach(args) => detach::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The whole chain, outermost first, and no backtrace: the messages name the
            // thing and the fix; a backtrace would bury them.
            eprintln!("udrv: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
