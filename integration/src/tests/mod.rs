//! Every rig test and benchmark, by area. A test's name starts with its area so that
//! `integration/rig test AREA_` selects one area.

mod acpi;
mod attach;
mod dma;
mod drivers;
mod nested;
mod service;
mod smoke;
mod uml;
mod uml_bench;
mod uml_bench_disk;
mod uml_served;
mod vfio;
mod vpci;

use crate::harness::RigTest;

/// All rig tests, in the order they run.
pub fn all() -> Vec<RigTest> {
    [
        smoke::tests(),
        attach::tests(),
        vfio::tests(),
        acpi::tests(),
        dma::tests(),
        drivers::tests(),
        vpci::tests(),
        uml::tests(),
        uml_served::tests(),
        service::tests(),
        nested::tests(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// All rig benchmarks; each prints its figures and the ratio against a baseline
/// measured in the same boot.
pub fn benches() -> Vec<RigTest> {
    [
        vfio::benches(),
        dma::benches(),
        drivers::benches(),
        vpci::benches(),
        uml_bench::benches(),
        uml_bench_disk::benches(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
