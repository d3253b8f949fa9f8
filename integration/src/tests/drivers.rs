//! The user-level drivers of `udrv-examples` (e1000, IDE, AHCI) on the rig's devices:
//! data integrity byte for byte, the binaries as a user runs them, devices left quiet
//! after Ctrl-C, and benchmarks against the kernel's own drivers in the same boot.

mod ahci;
mod binary;
mod e1000;
mod ide;

use crate::harness::RigTest;

pub fn tests() -> Vec<RigTest> {
    [e1000::tests(), ide::tests(), ahci::tests()]
        .into_iter()
        .flatten()
        .collect()
}

pub fn benches() -> Vec<RigTest> {
    Vec::new()
}
