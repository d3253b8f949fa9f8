//! `udrv list`, `udrv attach` and `udrv detach` run as a user runs them, against the
//! rig's real devices and kernel: names, claims, refusals, and giving devices back after
//! a clean exit or a kill.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use udriver::claim::{ClaimPhase, StateFile};
use udriver::vfio::VfioGroup;

use crate::disk_pattern;
use crate::harness::{rig_tests, RigTest};
use crate::rig;

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        attach:
        list_names_test_devices,
        detach_nics_round_trip,
        detach_disks_round_trip,
        refuses_mounted_filesystem,
        refuses_up_nic_with_address,
        refuses_shared_iommu_group,
        hands_group_node_to_user,
        killed_midway_then_detach_restores (600 s),
    ]
}

/// A state file of this test's own, so that tests never see each other's claims.
fn state_file(test: &str) -> String {
    let path = format!("/run/udrv-rig/{test}.json");
    let _ = std::fs::remove_file(&path);
    path
}

fn udrv(args: &[&str]) -> Result<Output> {
    let out = Command::new(rig::installed_binary("udrv")?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running udrv {}", args.join(" ")))?;
    print!(
        "$ udrv {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

/// Runs udrv and requires success; returns stdout.
fn udrv_ok(args: &[&str]) -> Result<String> {
    let out = udrv(args)?;
    ensure!(
        out.status.success(),
        "udrv {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs udrv and requires a refusal; returns stderr.
fn udrv_refused(args: &[&str]) -> Result<String> {
    let out = udrv(args)?;
    ensure!(
        !out.status.success(),
        "udrv {} succeeded but should have been refused",
        args.join(" ")
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn put_back_on_host_drivers() -> Result<()> {
    for (bdf, driver) in rig::TEST_DEVICES {
        rig::bind_to_host(bdf, driver)?;
    }
    Ok(())
}

fn interface_of(bdf: &str) -> Result<String> {
    let dir = format!("/sys/bus/pci/devices/{bdf}/net");
    let mut names = std::fs::read_dir(&dir)
        .with_context(|| format!("{bdf} has no network interface ({dir})"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<String>>>()?;
    names.sort();
    names
        .into_iter()
        .next()
        .with_context(|| format!("{bdf} has no network interface"))
}

fn json_list(state: &str) -> Result<Vec<serde_json::Value>> {
    let text = udrv_ok(&["list", "--json", "--state", state])?;
    let value: serde_json::Value = serde_json::from_str(&text).context("udrv list --json")?;
    value
        .as_array()
        .cloned()
        .context("udrv list --json is not an array")
}

/// `udrv list --json` names the five test devices as lspci does (the rig has no
/// pci.ids: the names come from udrv's built-in database), with their host drivers,
/// their own IOMMU groups and nothing in use; the table groups them by class.
fn list_names_test_devices() -> Result<()> {
    put_back_on_host_drivers()?;
    let state = state_file("list");
    let devices = json_list(&state)?;
    let expected = [
        (
            rig::E1000_A,
            "82540EM Gigabit Ethernet Controller",
            "Ethernet controller",
            "0200",
        ),
        (
            rig::E1000_B,
            "82540EM Gigabit Ethernet Controller",
            "Ethernet controller",
            "0200",
        ),
        (
            rig::E1000E,
            "82574L Gigabit Network Connection",
            "Ethernet controller",
            "0200",
        ),
        (
            rig::PIIX3_IDE,
            "82371SB PIIX3 IDE [Natoma/Triton II]",
            "IDE interface",
            "0101",
        ),
        (
            rig::ICH9_AHCI,
            "82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode]",
            "SATA controller",
            "0106",
        ),
    ];
    for ((bdf, device_name, class_name, class_id), (_, driver)) in
        expected.iter().zip(rig::TEST_DEVICES)
    {
        let d = devices
            .iter()
            .find(|d| d["address"] == *bdf)
            .with_context(|| format!("udrv list lacks {bdf}"))?;
        let group = rig::iommu_group_of(bdf)?;
        let checks = [
            ("vendor_id", serde_json::json!("8086")),
            ("vendor_name", serde_json::json!("Intel Corporation")),
            ("device_name", serde_json::json!(device_name)),
            ("class_name", serde_json::json!(class_name)),
            ("class_id", serde_json::json!(class_id)),
            ("driver", serde_json::json!(driver)),
            ("iommu_group", serde_json::json!(group)),
            ("iommu_group_members", serde_json::json!([bdf])),
            ("in_use", serde_json::Value::Null),
        ];
        for (key, want) in checks {
            ensure!(d[key] == want, "{bdf}: {key} is {}, want {want}", d[key]);
        }
    }
    // QEMU's e1000 carries a subsystem with its own entry in pci.ids.
    let e1000 = devices
        .iter()
        .find(|d| d["address"] == rig::E1000_A)
        .context("udrv list lacks the e1000")?;
    ensure!(
        e1000["subsystem_vendor_name"] == "Red Hat, Inc."
            && e1000["subsystem_name"] == "QEMU Virtual Machine",
        "{e1000}"
    );

    let table = udrv_ok(&["list", "--class", "net", "--state", &state])?;
    ensure!(table.starts_with("Network devices\n"), "{table}");
    for bdf in [rig::E1000_A, rig::E1000_B, rig::E1000E] {
        ensure!(
            table.contains(&format!(
                "{bdf} Ethernet controller [0200]: Intel Corporation"
            )),
            "{table}"
        );
    }
    ensure!(
        !table.contains(rig::ICH9_AHCI),
        "--class net shows storage:\n{table}"
    );
    Ok(())
}

fn claims(state: &str) -> Result<Vec<udriver::claim::ClaimRecord>> {
    Ok(StateFile::read(std::path::Path::new(state))?.claims)
}

/// The three NICs: attach puts each on vfio-pci with a viable /dev/vfio/N; detach puts
/// them back on e1000/e1000e, their interfaces come back and go up.
fn detach_nics_round_trip() -> Result<()> {
    put_back_on_host_drivers()?;
    let state = state_file("nics");
    let nics = [
        (rig::E1000_A, "e1000"),
        (rig::E1000_B, "e1000"),
        (rig::E1000E, "e1000e"),
    ];
    let out = udrv_ok(&[
        "attach",
        rig::E1000_A,
        "00:03.0",
        rig::E1000E,
        "--state",
        &state,
    ])?;
    for (bdf, driver) in nics {
        ensure!(
            out.contains(&format!("{bdf}: {driver} -> vfio-pci")),
            "{out}"
        );
        ensure!(
            rig::driver_of(bdf).as_deref() == Some("vfio-pci"),
            "{bdf} not on vfio-pci"
        );
        let id = rig::iommu_group_of(bdf)?;
        ensure!(
            out.contains(&format!("IOMMU group {id}: /dev/vfio/{id} is ready")),
            "{out}"
        );
        ensure!(VfioGroup::open(id)?.is_viable()?, "group {id} not viable");
    }
    let recorded = claims(&state)?;
    ensure!(recorded.len() == 3, "state holds {recorded:?}");
    ensure!(
        recorded.iter().all(|c| c.phase == ClaimPhase::Attached),
        "{recorded:?}"
    );
    let listed = json_list(&state)?;
    let vfio = udrv_ok(&["list", "--vfio", "--state", &state])?;
    for (bdf, _) in nics {
        ensure!(vfio.contains(bdf), "udrv list --vfio lacks {bdf}:\n{vfio}");
        let d = listed
            .iter()
            .find(|d| d["address"] == bdf)
            .context("listed")?;
        ensure!(d["udrv_claim"]["phase"] == "attached", "{d}");
    }

    let out = udrv_ok(&["detach", "--all", "--state", &state])?;
    for (bdf, driver) in nics {
        ensure!(
            out.contains(&format!("{bdf}: given back: now on {driver}")),
            "{out}"
        );
        ensure!(
            rig::driver_of(bdf).as_deref() == Some(driver),
            "{bdf} not back on {driver}"
        );
        let interface = rig::wait_for(|| interface_of(bdf))?;
        rig::sh(&format!(
            "ip link set {interface} up && ip link set {interface} down"
        ))?;
        println!("{bdf}: {interface} is back and goes up");
    }
    ensure!(claims(&state)?.is_empty(), "records left after detach");
    Ok(())
}

/// The IDE and AHCI controllers: attach, detach, and the disks are readable again
/// through ata_piix and ahci.
fn detach_disks_round_trip() -> Result<()> {
    put_back_on_host_drivers()?;
    let state = state_file("disks");
    udrv_ok(&["attach", rig::PIIX3_IDE, rig::ICH9_AHCI, "--state", &state])?;
    for bdf in [rig::PIIX3_IDE, rig::ICH9_AHCI] {
        ensure!(
            rig::driver_of(bdf).as_deref() == Some("vfio-pci"),
            "{bdf} not on vfio-pci"
        );
    }
    for (bdf, sectors) in [
        (rig::PIIX3_IDE, rig::IDE_DISK_SECTORS),
        (rig::ICH9_AHCI, rig::AHCI_DISK_SECTORS),
    ] {
        ensure!(
            rig::block_device(bdf, sectors).is_err(),
            "{bdf}: its disk is still there on vfio-pci"
        );
    }
    udrv_ok(&["detach", rig::PIIX3_IDE, rig::ICH9_AHCI, "--state", &state])?;
    for (bdf, driver, sectors) in [
        (rig::PIIX3_IDE, "ata_piix", rig::IDE_DISK_SECTORS),
        (rig::ICH9_AHCI, "ahci", rig::AHCI_DISK_SECTORS),
    ] {
        ensure!(
            rig::driver_of(bdf).as_deref() == Some(driver),
            "{bdf} not back on {driver}"
        );
        let name = rig::wait_for(|| rig::block_device(bdf, sectors))?;
        let mut data = vec![0u8; 64 * 512];
        rig::wait_for(|| {
            std::fs::File::open(format!("/dev/{name}"))?
                .read_exact(&mut data)
                .map_err(anyhow::Error::from)
        })?;
        disk_pattern::verify(0, &data)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("/dev/{name} on {bdf}"))?;
        println!("{bdf}: back on {driver}, /dev/{name} holds the pattern");
    }
    Ok(())
}

/// A mounted filesystem on the AHCI controller's second disk: refused with the mount
/// point and the way out; the device stays on ahci.
fn refuses_mounted_filesystem() -> Result<()> {
    put_back_on_host_drivers()?;
    let state = state_file("mounted");
    // Port 1 holds the 4 MiB ext2 filesystem.
    let disk = rig::wait_for(|| rig::block_device(rig::ICH9_AHCI, 8192))?;
    // The disk's node appears a little after /sys/block says it is there.
    rig::wait_for(|| {
        rig::sh(&format!(
            "mkdir -p /mnt/udrv-fs && mount -t ext2 /dev/{disk} /mnt/udrv-fs"
        ))
    })
    .with_context(|| {
        rig::sh("ls -l /dev/sd* /sys/block; grep ext /proc/filesystems; dmesg | tail -5")
            .unwrap_or_default()
    })?;
    let result = (|| {
        let stderr = udrv_refused(&["attach", rig::ICH9_AHCI, "--state", &state])?;
        let want = format!(
            "{}: {disk} is mounted on /mnt/udrv-fs; unmount it first (umount /mnt/udrv-fs)",
            rig::ICH9_AHCI
        );
        ensure!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
        ensure!(stderr.contains("pass --force"), "{stderr}");
        ensure!(
            rig::driver_of(rig::ICH9_AHCI).as_deref() == Some("ahci"),
            "moved anyway"
        );
        ensure!(claims(&state)?.is_empty(), "a refused claim was recorded");
        Ok(())
    })();
    rig::sh("umount /mnt/udrv-fs")?;
    result
}

/// An e1000 that is up with an address and a route: refused, naming each.
fn refuses_up_nic_with_address() -> Result<()> {
    put_back_on_host_drivers()?;
    let state = state_file("nic-up");
    let interface = rig::wait_for(|| interface_of(rig::E1000_A))?;
    rig::sh(&format!(
        "ip link set {interface} up && ip address add 10.99.0.1/24 dev {interface}"
    ))?;
    let result = (|| {
        let stderr = udrv_refused(&["attach", rig::E1000_A, "--state", &state])?;
        let a = rig::E1000_A;
        for want in [
            format!("{a}: network interface {interface} is up; take it down first (ip link set {interface} down)"),
            format!("{a}: {interface} has address 10.99.0.1"),
            format!("{a}: {interface} carries route 10.99.0.0/24"),
        ] {
            ensure!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
        }
        ensure!(
            rig::driver_of(a).as_deref() == Some("e1000"),
            "moved anyway"
        );
        Ok(())
    })();
    rig::sh(&format!(
        "ip address flush dev {interface} && ip link set {interface} down"
    ))?;
    result?;
    // Down and without an address, the same device is claimed and given back.
    udrv_ok(&["attach", rig::E1000_A, "--state", &state])?;
    udrv_ok(&["detach", rig::E1000_A, "--state", &state])?;
    ensure!(
        rig::driver_of(rig::E1000_A).as_deref() == Some("e1000"),
        "not back on e1000"
    );
    Ok(())
}

/// q35's built-in AHCI shares its IOMMU group with the LPC bridge and the SMBus
/// controller, both on host drivers: refused, naming them.
fn refuses_shared_iommu_group() -> Result<()> {
    let state = state_file("shared-group");
    let group = rig::iommu_group_of(rig::Q35_AHCI)?;
    let lpc = rig::driver_of("0000:00:1f.0")
        .context("00:1f.0 (LPC) has no host driver: is lpc_ich loaded in the rig?")?;
    let smbus = rig::driver_of("0000:00:1f.3")
        .context("00:1f.3 (SMBus) has no host driver: is i2c_i801 loaded in the rig?")?;
    let before = rig::driver_of(rig::Q35_AHCI);
    let stderr = udrv_refused(&["attach", rig::Q35_AHCI, "--state", &state])?;
    let want = format!(
        "{}: IOMMU group {group} also holds 0000:00:1f.0 ({lpc}) and 0000:00:1f.3 ({smbus}), still bound to host drivers; detach them too or pass --group to claim the whole group",
        rig::Q35_AHCI
    );
    ensure!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    ensure!(rig::driver_of(rig::Q35_AHCI) == before, "moved anyway");
    ensure!(claims(&state)?.is_empty(), "a refused claim was recorded");
    Ok(())
}

/// `--user` hands /dev/vfio/N to that user.
fn hands_group_node_to_user() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    put_back_on_host_drivers()?;
    let state = state_file("user");
    udrv_ok(&[
        "attach",
        rig::E1000_B,
        "--user",
        "4242",
        "--group-owner",
        "4343",
        "--state",
        &state,
    ])?;
    let id = rig::iommu_group_of(rig::E1000_B)?;
    let meta = std::fs::metadata(format!("/dev/vfio/{id}"))?;
    let owner = (meta.uid(), meta.gid(), meta.mode() & 0o777);
    udrv_ok(&["detach", rig::E1000_B, "--state", &state])?;
    ensure!(owner == (4242, 4343, 0o660), "/dev/vfio/{id} is {owner:?}");
    Ok(())
}

/// Kills `udrv attach` at moments spread over its run until kills have landed between
/// its first and last sysfs write, and checks that `udrv detach` puts the device back
/// on e1000 each time. Every other outcome (killed before the first write, or after the
/// last) is cleaned up the same way and must end on e1000 too.
fn killed_midway_then_detach_restores() -> Result<()> {
    put_back_on_host_drivers()?;
    let state = state_file("killed");
    let bdf = rig::E1000_B;
    // How long a whole attach takes here.
    let started = Instant::now();
    udrv_ok(&["attach", bdf, "--state", &state])?;
    let whole = started.elapsed();
    udrv_ok(&["detach", bdf, "--state", &state])?;
    println!("a whole attach takes {whole:?}");

    let udrv = rig::installed_binary("udrv")?;
    let mut midway = 0;
    for attempt in 0..60u32 {
        // Sweep the kill across the run: 5% .. 95% of its length, round after round.
        let fraction = 0.05 + 0.9 * f64::from(attempt % 10) / 9.0;
        let delay = whole.mul_f64(fraction);
        let mut child = Command::new(&udrv)
            .args(["attach", bdf, "--state", &state])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait()?;
        let recorded = claims(&state)?;
        let phase = recorded.first().map(|c| c.phase);
        let driver = rig::driver_of(bdf);
        // Killed after touching the device and before finishing.
        let interrupted = matches!(phase, Some(ClaimPhase::OverrideSet | ClaimPhase::Unbound));
        if interrupted {
            midway += 1;
            println!(
                "attempt {attempt}: killed after {delay:?} in phase {phase:?}, driver {driver:?}"
            );
            ensure!(
                recorded[0].original_driver.as_deref() == Some("e1000"),
                "the record lost the original driver: {recorded:?}"
            );
        }
        let out = udrv_ok(&["detach", bdf, "--state", &state])?;
        ensure!(
            rig::driver_of(bdf).as_deref() == Some("e1000"),
            "attempt {attempt} ({phase:?}): after detach {bdf} is on {:?}:\n{out}",
            rig::driver_of(bdf)
        );
        ensure!(
            claims(&state)?.is_empty(),
            "attempt {attempt}: records left after detach"
        );
        if midway >= 3 {
            break;
        }
    }
    ensure!(
        midway > 0,
        "no kill landed inside the attach in 60 attempts"
    );
    // And the NIC works again.
    let interface = rig::wait_for(|| interface_of(bdf))?;
    rig::sh(&format!(
        "ip link set {interface} up && ip link set {interface} down"
    ))?;
    println!("{midway} kills landed mid-attach; each time detach restored e1000");
    Ok(())
}
