//! `udrv`: list, claim and serve PCI devices for user-level drivers and guests.

use clap::Parser;

/// Claim PCI devices for user-level drivers and pass them through to guests.
#[derive(Parser)]
#[command(name = "udrv", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
