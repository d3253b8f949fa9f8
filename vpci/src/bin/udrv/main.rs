//! `udrv`: list, claim and serve PCI devices for user-level drivers and guests.

#![forbid(unsafe_code)]

mod acpi;
mod attach;
mod completions;
mod detach;
mod install_service;
mod list;
mod man_pages;
mod serve;
mod status;
mod upgrade;

use clap::{Parser, Subcommand};

/// Claim PCI devices for user-level drivers and pass them through to guests.
#[derive(Parser)]
#[command(
    name = "udrv",
    version,
    after_help = "A typical session:\n  \
        udrv list                      what is there, who drives it, what the host uses\n  \
        udrv attach 0000:00:03.0       hand it to vfio-pci (refused if the host uses it)\n  \
        ...                            a user-level driver or a VMM opens /dev/vfio/N\n  \
        udrv detach 0000:00:03.0       give it back to the driver it had\n\n\
        Serving a device to a User-Mode Linux guest:\n  \
        udrv serve &                   the service (root; SIGTERM gives devices back)\n  \
        udrv attach 00:04.0 --serve uml:/run/udrv/nic.sock\n  \
        linux ... virtio_uml.device=/run/udrv/nic.sock:1234\n  \
        udrv status                    guests, counters, claims\n  \
        udrv upgrade                   run a newly installed udrv; guests stay served\n\n\
        Running the service under systemd:\n  \
        udrv install-service           the unit udrv.service, man pages, completions\n  \
        systemctl enable --now udrv\n\n\
        `udrv COMMAND --help` explains each command."
)]
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
    Serve(serve::ServeArgs),
    Status(status::StatusArgs),
    Upgrade(upgrade::UpgradeArgs),
    InstallService(install_service::InstallServiceArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions(completions::CompletionsArgs),
    /// Print a man page in roff: udrv(1), or udrv-COMMAND(1).
    #[command(hide = true)]
    Man(man_pages::ManArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Acpi(args) => acpi::run(args),
        Command::List(args) => list::run(args),
        Command::Attach(args) => attach::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Status(args) => status::run(args),
        Command::Upgrade(args) => upgrade::run(args),
        Command::InstallService(args) => install_service::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man_pages::run(args),
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
