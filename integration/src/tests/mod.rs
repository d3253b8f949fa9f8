//! Every rig test and benchmark, by area. A test's name starts with its area so that
//! `integration/rig test AREA_` selects one area.

mod acpi;
mod attach;
mod dma;
mod drivers;
mod nested;
mod service;
mod service_upgrade;
mod smoke;
mod uml;
mod uml_bench;
mod uml_bench_disk;
mod uml_served;
mod vfio;
mod vfio_user;
mod vfio_user_ahci;
mod vfio_user_bench;
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
        service_upgrade::tests(),
        nested::tests(),
        vfio_user::tests(),
        vfio_user_ahci::tests(),
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
        vfio_user_bench::benches(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod names {
    use std::collections::HashSet;

    /// `rig-tests exec NAME` runs the first test of that name: two would shadow one.
    #[test]
    fn every_test_and_benchmark_has_its_own_name() {
        let all: Vec<_> = super::all().into_iter().chain(super::benches()).collect();
        let mut seen = HashSet::new();
        for test in &all {
            assert!(seen.insert(test.name), "{} registered twice", test.name);
        }
    }

    #[test]
    fn a_name_is_its_area_and_its_function() {
        fn one_test() -> anyhow::Result<()> {
            Ok(())
        }
        let tests = crate::harness::rig_tests![area: one_test (7 s)];
        assert_eq!(tests[0].name, "area_one_test");
        assert_eq!(tests[0].timeout, std::time::Duration::from_secs(7));
        assert!(std::ptr::fn_addr_eq(
            tests[0].run,
            one_test as fn() -> anyhow::Result<()>
        ));
    }
}
