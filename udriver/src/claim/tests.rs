use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use super::*;
use crate::bind::SysfsWriter;
use crate::pci::fixture::{DeviceSpec, FakeHost, FakeKernel};

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// A module loader that must not be needed.
struct NoModules;
impl ModuleLoader for NoModules {
    fn load(&mut self, module: &str) -> io::Result<()> {
        panic!("unexpected module load of {module}")
    }
}

fn state_path(host: &FakeHost) -> PathBuf {
    host.path().join("run/udrv/state.json")
}

fn attach(
    host: &FakeHost,
    kernel: &mut FakeKernel,
    addresses: &[&str],
    options: &AttachOptions,
) -> Result<AttachReport, ClaimError> {
    let list: Vec<PciAddress> = addresses.iter().map(|a| addr(a)).collect();
    let mut modules = NoModules;
    Claimer::new(host.root(), kernel, &mut modules, state_path(host))
        .with_node_timeout(Duration::from_millis(50))
        .attach(&list, options)
}

fn detach(
    host: &FakeHost,
    kernel: &mut FakeKernel,
    target: DetachTarget,
    force: bool,
) -> DetachReport {
    let mut modules = NoModules;
    Claimer::new(host.root(), kernel, &mut modules, state_path(host))
        .detach(&target, force)
        .unwrap()
}

fn writes(kernel: &FakeKernel) -> Vec<(&str, &str)> {
    kernel
        .writes
        .iter()
        .map(|(p, v)| (p.as_str(), v.as_str()))
        .collect()
}

fn claims(host: &FakeHost) -> Vec<ClaimRecord> {
    StateFile::read(&state_path(host)).unwrap().claims
}

#[test]
fn attach_then_detach_moves_the_device_and_back_with_exact_writes() {
    let host = FakeHost::rig();
    let mut kernel = host.kernel();
    let options = AttachOptions {
        owner: Owner {
            uid: 1000,
            name: Some("alice".into()),
        },
        ..Default::default()
    };
    let report = attach(&host, &mut kernel, &["0000:00:03.0"], &options).unwrap();
    assert_eq!(
        writes(&kernel),
        [
            (
                "sys/bus/pci/devices/0000:00:03.0/driver_override",
                "vfio-pci"
            ),
            ("sys/bus/pci/drivers/e1000/unbind", "0000:00:03.0"),
            ("sys/bus/pci/drivers_probe", "0000:00:03.0"),
        ]
    );
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("vfio-pci"));
    assert_eq!(report.attached.len(), 1);
    assert_eq!(report.attached[0].previous_driver.as_deref(), Some("e1000"));
    assert!(!report.attached[0].already);
    assert_eq!(report.groups.len(), 1);
    assert_eq!(report.groups[0].group, 4);
    assert!(report.groups[0].node.ends_with("dev/vfio/4"));
    let recorded = claims(&host);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].original_driver.as_deref(), Some("e1000"));
    assert_eq!(recorded[0].original_override, None);
    assert_eq!(recorded[0].phase, ClaimPhase::Attached);
    assert_eq!(recorded[0].owner_uid, 1000);
    assert_eq!(recorded[0].iommu_group, Some(4));

    let mut kernel = host.kernel();
    let report = detach(
        &host,
        &mut kernel,
        DetachTarget::Devices(vec![addr("0000:00:03.0")]),
        false,
    );
    assert_eq!(
        writes(&kernel),
        [
            ("sys/bus/pci/devices/0000:00:03.0/driver_override", "\n"),
            ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:00:03.0"),
            ("sys/bus/pci/drivers/e1000/bind", "0000:00:03.0"),
        ]
    );
    assert_eq!(report.restored[0].how, RestoreHow::Rebound);
    assert_eq!(report.restored[0].driver.as_deref(), Some("e1000"));
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
    assert_eq!(host.override_of("0000:00:03.0"), "(null)");
    assert!(!host.path().join("dev/vfio/4").exists());
    assert!(claims(&host).is_empty());
}

#[test]
fn attaching_twice_is_a_no_op_and_never_uses_new_id() {
    let host = FakeHost::rig();
    let mut kernel = host.kernel();
    attach(
        &host,
        &mut kernel,
        &["0000:00:03.0"],
        &AttachOptions::default(),
    )
    .unwrap();
    let mut kernel = host.kernel();
    let report = attach(&host, &mut kernel, &["00:03.0"], &AttachOptions::default()).unwrap();
    assert!(kernel.writes.is_empty(), "{:?}", kernel.writes);
    assert!(report.attached[0].already);
    assert_eq!(report.attached[0].previous_driver.as_deref(), Some("e1000"));
}

#[test]
fn refuses_up_nic_mounted_disk_and_split_group_naming_reason_and_way_out() {
    let host = FakeHost::rig();
    host.add_interface("0000:00:02.0", "eth0", true);
    host.write(
        "proc/net/if_inet6",
        "fd000000000000000000000000000002 04 40 00 80     eth0\n",
    );
    host.add_disk("0000:00:06.0", "sda", (8, 0), &[("sda1", (8, 1))]);
    host.mount((8, 1), "sda1", "/mnt");
    let mut kernel = host.kernel();
    let err = attach(
        &host,
        &mut kernel,
        &[
            "0000:00:02.0",
            "0000:00:06.0",
            "0000:00:1f.2",
            "0000:00:03.0",
        ],
        &AttachOptions::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "0000:00:02.0: network interface eth0 is up; take it down first (ip link set eth0 down)",
            "0000:00:02.0: eth0 has address fd00::2; remove it first (ip address flush dev eth0)",
            "0000:00:06.0: sda1 is mounted on /mnt; unmount it first (umount /mnt)",
            "0000:00:1f.2: IOMMU group 9 also holds 0000:00:1f.0 (lpc_ich) and 0000:00:1f.3 (i801_smbus), still bound to host drivers; detach them too or pass --group to claim the whole group",
            "pass --force to claim anyway (whatever uses them loses them)",
        ]
    );
    // Nothing was touched, nothing recorded (00:03.0 included: all or nothing).
    assert!(kernel.writes.is_empty());
    assert!(claims(&host).is_empty());
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
}

#[test]
fn refuses_the_boot_display() {
    let host = FakeHost::new();
    host.add_driver("vfio-pci");
    host.add(
        DeviceSpec::new("0000:00:01.0", 0x1234, 0x1111, 0x030000)
            .driver("bochs-drm")
            .group(1)
            .boot_vga(true),
    );
    let mut kernel = host.kernel();
    let err = attach(
        &host,
        &mut kernel,
        &["0000:00:01.0"],
        &AttachOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("0000:00:01.0: it is the boot display"),
        "{err}"
    );
}

#[test]
fn force_claims_a_device_in_use_and_reports_what_it_overrode() {
    let host = FakeHost::rig();
    host.add_interface("0000:00:02.0", "eth0", true);
    let mut kernel = host.kernel();
    let options = AttachOptions {
        force: true,
        ..Default::default()
    };
    let report = attach(&host, &mut kernel, &["0000:00:02.0"], &options).unwrap();
    assert_eq!(host.driver_of("0000:00:02.0").as_deref(), Some("vfio-pci"));
    assert_eq!(
        report.attached[0].forced,
        vec![InUse::InterfaceUp {
            interface: "eth0".into()
        }]
    );
}

#[test]
fn whole_group_claims_every_member_and_the_group_becomes_viable() {
    let host = FakeHost::rig();
    let mut kernel = host.kernel();
    let options = AttachOptions {
        whole_group: true,
        ..Default::default()
    };
    let report = attach(&host, &mut kernel, &["0000:00:1f.2"], &options).unwrap();
    let attached: Vec<String> = report
        .attached
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    assert_eq!(attached, ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]);
    for device in ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"] {
        assert_eq!(host.driver_of(device).as_deref(), Some("vfio-pci"));
    }
    assert_eq!(report.groups[0].group, 9);
    assert_eq!(report.groups[0].members.len(), 3);
    // And back, each to its own driver.
    let mut kernel = host.kernel();
    let report = detach(&host, &mut kernel, DetachTarget::All, false);
    assert_eq!(report.restored.len(), 3);
    assert_eq!(host.driver_of("0000:00:1f.0").as_deref(), Some("lpc_ich"));
    assert_eq!(host.driver_of("0000:00:1f.2").as_deref(), Some("ahci"));
    assert_eq!(
        host.driver_of("0000:00:1f.3").as_deref(),
        Some("i801_smbus")
    );
    assert!(claims(&host).is_empty());
}

#[test]
fn forced_claim_of_a_shared_group_warns_that_it_is_not_viable() {
    let host = FakeHost::rig();
    let mut kernel = host.kernel();
    let options = AttachOptions {
        force: true,
        ..Default::default()
    };
    let report = attach(&host, &mut kernel, &["0000:00:1f.2"], &options).unwrap();
    assert!(report.groups.is_empty());
    assert_eq!(report.warnings.len(), 1);
    assert!(
        report.warnings[0].starts_with(
            "IOMMU group 9 is not viable: 0000:00:1f.0 (lpc_ich), 0000:00:1f.3 (i801_smbus)"
        ),
        "{}",
        report.warnings[0]
    );
}

/// Runs an attach whose kernel "kills" udrv before write `n`.
fn killed_attach(host: &FakeHost, device: &str, n: usize) {
    let mut kernel = host.kernel().crash_at(n);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _ = attach(host, &mut kernel, &[device], &AttachOptions::default());
    }));
    assert!(result.is_err(), "the simulated kill did not happen");
}

#[test]
fn the_claim_is_recorded_before_the_first_write() {
    let host = FakeHost::rig();
    killed_attach(&host, "0000:00:03.0", 0);
    let recorded = claims(&host);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].phase, ClaimPhase::Recorded);
    assert_eq!(recorded[0].original_driver.as_deref(), Some("e1000"));
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
    // Detach finds it untouched and just drops the record.
    let mut kernel = host.kernel();
    let report = detach(&host, &mut kernel, DetachTarget::All, false);
    assert!(kernel.writes.is_empty());
    assert_eq!(report.restored[0].how, RestoreHow::AlreadyThere);
    assert!(claims(&host).is_empty());
}

#[test]
fn killed_between_unbind_and_probe_then_detach_restores_the_driver() {
    let host = FakeHost::rig();
    killed_attach(&host, "0000:00:03.0", 2);
    // The state says how far it got; the device has no driver.
    let recorded = claims(&host);
    assert_eq!(recorded[0].phase, ClaimPhase::Unbound);
    assert_eq!(recorded[0].original_driver.as_deref(), Some("e1000"));
    assert_eq!(host.driver_of("0000:00:03.0"), None);
    assert_eq!(host.override_of("0000:00:03.0"), "vfio-pci");

    let mut kernel = host.kernel();
    let report = detach(
        &host,
        &mut kernel,
        DetachTarget::Devices(vec![addr("0000:00:03.0")]),
        false,
    );
    assert_eq!(
        writes(&kernel),
        [
            ("sys/bus/pci/devices/0000:00:03.0/driver_override", "\n"),
            ("sys/bus/pci/drivers/e1000/bind", "0000:00:03.0"),
        ]
    );
    assert_eq!(report.restored[0].how, RestoreHow::Rebound);
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
    assert_eq!(host.override_of("0000:00:03.0"), "(null)");
    assert!(claims(&host).is_empty());
}

#[test]
fn killed_mid_attach_then_attach_again_finishes_and_keeps_the_original_driver() {
    let host = FakeHost::rig();
    killed_attach(&host, "0000:00:03.0", 2);
    let mut kernel = host.kernel();
    attach(
        &host,
        &mut kernel,
        &["0000:00:03.0"],
        &AttachOptions::default(),
    )
    .unwrap();
    // Override already set, driver already gone: only the probe remains.
    assert_eq!(
        writes(&kernel),
        [("sys/bus/pci/drivers_probe", "0000:00:03.0")]
    );
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("vfio-pci"));
    let recorded = claims(&host);
    assert_eq!(recorded[0].phase, ClaimPhase::Attached);
    assert_eq!(
        recorded[0].original_driver.as_deref(),
        Some("e1000"),
        "the original driver must survive the repair"
    );
    let mut kernel = host.kernel();
    detach(&host, &mut kernel, DetachTarget::All, false);
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
}

#[test]
fn an_interrupted_claim_of_another_device_is_repaired_by_the_next_attach() {
    let host = FakeHost::rig();
    killed_attach(&host, "0000:00:03.0", 1);
    assert_eq!(claims(&host)[0].phase, ClaimPhase::OverrideSet);
    let mut kernel = host.kernel();
    let report = attach(
        &host,
        &mut kernel,
        &["0000:00:05.0"],
        &AttachOptions::default(),
    )
    .unwrap();
    assert_eq!(report.repaired.len(), 1);
    assert_eq!(report.repaired[0].address, addr("0000:00:03.0"));
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
    assert_eq!(host.override_of("0000:00:03.0"), "(null)");
    assert_eq!(host.driver_of("0000:00:05.0").as_deref(), Some("vfio-pci"));
    let recorded = claims(&host);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].address, addr("0000:00:05.0"));
}

#[test]
fn killed_mid_detach_then_detach_again_finishes() {
    let host = FakeHost::rig();
    let mut kernel = host.kernel();
    attach(
        &host,
        &mut kernel,
        &["0000:00:02.0"],
        &AttachOptions::default(),
    )
    .unwrap();
    // Killed after clearing the override and unbinding vfio-pci, before binding e1000.
    let mut kernel = host.kernel().crash_at(2);
    let result = catch_unwind(AssertUnwindSafe(|| {
        detach(&host, &mut kernel, DetachTarget::All, false);
    }));
    assert!(result.is_err());
    assert_eq!(claims(&host)[0].phase, ClaimPhase::Detaching);
    assert_eq!(host.driver_of("0000:00:02.0"), None);
    let mut kernel = host.kernel();
    detach(&host, &mut kernel, DetachTarget::All, false);
    assert_eq!(
        writes(&kernel),
        [("sys/bus/pci/drivers/e1000/bind", "0000:00:02.0")]
    );
    assert_eq!(host.driver_of("0000:00:02.0").as_deref(), Some("e1000"));
    assert!(claims(&host).is_empty());
}

#[test]
fn after_a_reboot_detach_only_drops_the_record() {
    let host = FakeHost::rig();
    let mut kernel = host.kernel();
    attach(
        &host,
        &mut kernel,
        &["0000:00:02.0"],
        &AttachOptions::default(),
    )
    .unwrap();
    // Reboot with a persistent state file: the device is back on e1000.
    host.set_driver(addr("0000:00:02.0"), Some("e1000"));
    host.write(
        "sys/devices/pci0000:00/0000:00:02.0/driver_override",
        "(null)\n",
    );
    let mut kernel = host.kernel();
    let report = detach(&host, &mut kernel, DetachTarget::All, false);
    assert!(kernel.writes.is_empty());
    assert_eq!(report.restored[0].how, RestoreHow::AlreadyThere);
    assert!(claims(&host).is_empty());
}

#[test]
fn a_recorded_device_that_is_gone_is_dropped() {
    let host = FakeHost::rig();
    let (file, mut state) = StateFile::open(&state_path(&host)).unwrap();
    state.put(ClaimRecord {
        address: addr("0000:00:09.0"),
        original_driver: Some("e1000".into()),
        original_override: None,
        iommu_group: Some(12),
        owner_uid: 0,
        owner_name: None,
        pid: 1,
        claimed_at: 0,
        phase: ClaimPhase::Attached,
        serve: None,
    });
    file.save(&state).unwrap();
    drop(file);
    let mut kernel = host.kernel();
    let report = detach(&host, &mut kernel, DetachTarget::All, false);
    assert_eq!(report.restored[0].how, RestoreHow::DeviceGone);
    assert!(claims(&host).is_empty());
}

#[test]
fn a_failed_vfio_probe_puts_the_device_back() {
    let host = FakeHost::rig();
    let mut kernel = host.kernel().failing_probe("vfio-pci");
    let err = attach(
        &host,
        &mut kernel,
        &["0000:00:03.0"],
        &AttachOptions::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "0000:00:03.0: vfio-pci did not bind after drivers_probe (driver now: none)"
        ),
        "{text}"
    );
    assert!(text.contains("it was put back on e1000"), "{text}");
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
    assert_eq!(host.override_of("0000:00:03.0"), "(null)");
    assert!(claims(&host).is_empty());
}

#[test]
fn a_device_without_driver_goes_back_to_no_driver() {
    let host = FakeHost::rig();
    host.add(DeviceSpec::new("0000:00:07.0", 0x8086, 0x100e, 0x020000).group(8));
    let mut kernel = host.kernel();
    attach(
        &host,
        &mut kernel,
        &["0000:00:07.0"],
        &AttachOptions::default(),
    )
    .unwrap();
    assert_eq!(
        writes(&kernel),
        [
            (
                "sys/bus/pci/devices/0000:00:07.0/driver_override",
                "vfio-pci"
            ),
            ("sys/bus/pci/drivers_probe", "0000:00:07.0"),
        ]
    );
    let mut kernel = host.kernel();
    detach(&host, &mut kernel, DetachTarget::All, false);
    assert_eq!(
        writes(&kernel),
        [
            ("sys/bus/pci/devices/0000:00:07.0/driver_override", "\n"),
            ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:00:07.0"),
        ]
    );
    assert_eq!(host.driver_of("0000:00:07.0"), None);
}

#[test]
fn detach_of_devices_udrv_did_not_claim() {
    let host = FakeHost::rig();
    host.add(
        DeviceSpec::new("0000:00:08.0", 0x8086, 0x100e, 0x020000)
            .driver("vfio-pci")
            .natural_driver("e1000")
            .group(10),
    );
    let mut kernel = host.kernel();
    let report = detach(
        &host,
        &mut kernel,
        DetachTarget::Devices(vec![addr("0000:00:02.0"), addr("0000:00:08.0")]),
        false,
    );
    assert_eq!(
        report.not_claimed,
        vec![(addr("0000:00:02.0"), Some("e1000".into()))]
    );
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].1.to_string().contains("pass --force"),
        "{}",
        report.failed[0].1
    );
    assert!(kernel.writes.is_empty());
    let report = detach(
        &host,
        &mut kernel,
        DetachTarget::Devices(vec![addr("0000:00:08.0")]),
        true,
    );
    assert_eq!(report.restored[0].how, RestoreHow::Released);
    assert_eq!(host.driver_of("0000:00:08.0").as_deref(), Some("e1000"));
}

#[test]
fn bridges_devices_without_iommu_and_unknown_addresses_are_errors() {
    let host = FakeHost::rig();
    host.add(
        DeviceSpec::new("0000:00:1c.0", 0x8086, 0x2940, 0x060400)
            .bridge()
            .driver("pcieport")
            .group(11),
    );
    host.add(DeviceSpec::new("0000:00:0a.0", 0x8086, 0x100e, 0x020000).driver("e1000"));
    let mut kernel = host.kernel();
    let bridge = attach(
        &host,
        &mut kernel,
        &["0000:00:1c.0"],
        &AttachOptions::default(),
    )
    .unwrap_err();
    assert!(bridge.to_string().contains("is a PCI bridge"), "{bridge}");
    let no_group = attach(
        &host,
        &mut kernel,
        &["0000:00:0a.0"],
        &AttachOptions::default(),
    )
    .unwrap_err();
    assert!(
        no_group.to_string().contains("intel_iommu=on"),
        "{no_group}"
    );
    let missing = attach(
        &host,
        &mut kernel,
        &["0000:00:0b.0"],
        &AttachOptions::default(),
    )
    .unwrap_err();
    assert!(
        missing.to_string().contains("no PCI device 0000:00:0b.0"),
        "{missing}"
    );
    assert!(kernel.writes.is_empty());
}

struct CreatesDriver(PathBuf, Vec<String>);
impl ModuleLoader for CreatesDriver {
    fn load(&mut self, module: &str) -> io::Result<()> {
        self.1.push(module.to_string());
        std::fs::create_dir_all(self.0.join("sys/bus/pci/drivers/vfio-pci"))
    }
}

struct Fails;
impl ModuleLoader for Fails {
    fn load(&mut self, _: &str) -> io::Result<()> {
        Err(io::Error::other(
            "modprobe: FATAL: Module vfio-pci not found",
        ))
    }
}

#[test]
fn loads_vfio_pci_when_it_is_missing() {
    let host = FakeHost::new();
    host.add(
        DeviceSpec::new("0000:00:03.0", 0x8086, 0x100e, 0x020000)
            .driver("e1000")
            .group(4),
    );
    let mut kernel = host.kernel();
    let mut failing = Fails;
    let err = Claimer::new(host.root(), &mut kernel, &mut failing, state_path(&host))
        .attach(&[addr("0000:00:03.0")], &AttachOptions::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("Module vfio-pci not found"),
        "{err}"
    );
    assert!(kernel.writes.is_empty());
    let mut loader = CreatesDriver(host.path().to_path_buf(), Vec::new());
    Claimer::new(host.root(), &mut kernel, &mut loader, state_path(&host))
        .with_node_timeout(Duration::from_millis(50))
        .attach(&[addr("0000:00:03.0")], &AttachOptions::default())
        .unwrap();
    assert_eq!(loader.1, ["vfio-pci"]);
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("vfio-pci"));
}

#[test]
fn hands_the_group_node_to_a_user_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let host = FakeHost::rig();
    let mut kernel = host.kernel();
    // chown to oneself needs no privilege.
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let options = AttachOptions {
        node_user: Some(uid),
        node_group: Some(gid),
        ..Default::default()
    };
    let report = attach(&host, &mut kernel, &["0000:00:03.0"], &options).unwrap();
    let meta = std::fs::metadata(&report.groups[0].node).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(resolve_user("root").unwrap(), 0);
    assert_eq!(resolve_user("1234").unwrap(), 1234);
    assert!(resolve_user("no-such-user-xyz")
        .unwrap_err()
        .to_string()
        .contains("no user"));
    assert!(resolve_group("no-such-group-xyz").is_err());
}

#[test]
fn a_kernel_refusal_names_the_file_and_leaves_nothing_half_done() {
    /// A kernel that refuses every write, as for a non-root user.
    struct ReadOnly(Vec<PathBuf>);
    impl SysfsWriter for ReadOnly {
        fn write(&mut self, path: &std::path::Path, _: &str) -> io::Result<()> {
            self.0.push(path.to_path_buf());
            Err(io::Error::from_raw_os_error(libc::EACCES))
        }
    }
    let host = FakeHost::rig();
    let mut writer = ReadOnly(Vec::new());
    let mut modules = NoModules;
    let err = Claimer::new(host.root(), &mut writer, &mut modules, state_path(&host))
        .attach(&[addr("0000:00:03.0")], &AttachOptions::default())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("0000:00:03.0/driver_override failed"),
        "{text}"
    );
    assert!(text.contains("run as root"), "{text}");
    // The first write failed, so the device is as it was and the record is gone.
    assert!(claims(&host).is_empty());
    assert_eq!(host.driver_of("0000:00:03.0").as_deref(), Some("e1000"));
}
