//! The user-level drivers of `udrv-examples` (e1000, IDE, AHCI) on the rig's devices:
//! data integrity byte for byte, the binaries as a user runs them, devices left quiet
//! after Ctrl-C, and benchmarks against the kernel's own drivers in the same boot.

mod ahci;
mod binary;
mod e1000;
mod ide;
pub(super) mod kernel;
mod packet_socket;
mod sg_io;

use crate::harness::RigTest;

pub fn tests() -> Vec<RigTest> {
    [e1000::tests(), ide::tests(), ahci::tests()]
        .into_iter()
        .flatten()
        .collect()
}

pub fn benches() -> Vec<RigTest> {
    [e1000::benches(), ide::benches(), ahci::benches()]
        .into_iter()
        .flatten()
        .collect()
}

/// Prints one benchmark figure against its kernel baseline, and returns the ratio.
fn compare(what: &str, unit: &str, udrv: f64, kernel: f64, baseline: &str) -> f64 {
    let ratio = udrv / kernel;
    println!("{what}: udrv {udrv:.1} {unit}, {baseline} {kernel:.1} {unit}: ratio {ratio:.2}x");
    ratio
}

/// The middle value.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
