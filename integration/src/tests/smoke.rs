//! Smoke tests: the rig is what the other tests assume, and VFIO is really there.

use std::io::Read;

use anyhow::{ensure, Context, Result};

use crate::disk_pattern;
use crate::harness::{rig_tests, RigTest};
use crate::rig;
use udriver::vfio::{VfioContainer, VfioGroup};

pub fn tests() -> Vec<RigTest> {
    rig_tests![
        smoke:
        test_devices_present,
        disks_hold_pattern,
        vfio_container_opens,
        vfio_groups_viable,
        e1000_status_link_up,
    ]
}

fn read_id(bdf: &str, attr: &str) -> Result<String> {
    let path = format!("/sys/bus/pci/devices/{bdf}/{attr}");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

/// Each test device is where the tests expect it, is what they expect, and is alone in
/// its IOMMU group (so a test can claim it without taking anything else).
fn test_devices_present() -> Result<()> {
    let expected = [
        (rig::E1000_A, "0x8086", "0x100e"),
        (rig::E1000_B, "0x8086", "0x100e"),
        (rig::E1000E, "0x8086", "0x10d3"),
        (rig::PIIX3_IDE, "0x8086", "0x7010"),
        (rig::ICH9_AHCI, "0x8086", "0x2922"),
    ];
    for (bdf, vendor, device) in expected {
        let (v, d) = (read_id(bdf, "vendor")?, read_id(bdf, "device")?);
        ensure!(
            (v.as_str(), d.as_str()) == (vendor, device),
            "{bdf} is {v}:{d}, want {vendor}:{device}"
        );
        let group = rig::iommu_group_of(bdf)?;
        let members: Vec<String> =
            std::fs::read_dir(format!("/sys/kernel/iommu_groups/{group}/devices"))?
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_>>()?;
        ensure!(
            members == [bdf],
            "{bdf}: IOMMU group {group} holds {members:?}, want it alone"
        );
        println!(
            "{bdf} {v}:{d} group {group} driver {:?}",
            rig::driver_of(bdf)
        );
    }
    Ok(())
}

/// Both test disks hold the sector pattern from first sector to last, read through the
/// host kernel's own drivers.
fn disks_hold_pattern() -> Result<()> {
    for (bdf, driver, sectors) in [
        (rig::PIIX3_IDE, "ata_piix", rig::IDE_DISK_SECTORS),
        (rig::ICH9_AHCI, "ahci", rig::AHCI_DISK_SECTORS),
    ] {
        rig::bind_to_host(bdf, driver)?;
        let dev = format!(
            "/dev/{}",
            rig::wait_for(|| rig::block_device(bdf, sectors))?
        );
        let mut data = Vec::new();
        std::fs::File::open(&dev)?.read_to_end(&mut data)?;
        ensure!(
            data.len() as u64 == sectors * 512,
            "{dev}: read {} bytes",
            data.len()
        );
        disk_pattern::verify(0, &data)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{dev} on {bdf}"))?;
        println!("{bdf} {dev}: {sectors} sectors hold the pattern");
    }
    Ok(())
}

/// /dev/vfio/vfio opens and offers the type1 IOMMU: VFIO is really there.
fn vfio_container_opens() -> Result<()> {
    let container = VfioContainer::open()?;
    println!("/dev/vfio/vfio: backend {}", container.backend());
    Ok(())
}

/// After binding to vfio-pci, each test device's group node exists and is viable.
fn vfio_groups_viable() -> Result<()> {
    for (bdf, _) in rig::TEST_DEVICES {
        let id = rig::bind_to_vfio(bdf)?;
        let group = VfioGroup::open(id)?;
        ensure!(group.is_viable()?, "{bdf}: group {id} is not viable");
        println!("{bdf}: /dev/vfio/{id} viable");
    }
    Ok(())
}

/// e1000's STATUS register, read through the device fd's mmap'd BAR0, says link up.
fn e1000_status_link_up() -> Result<()> {
    const STATUS: u64 = 0x8;
    const STATUS_LINK_UP: u32 = 1 << 1;
    let id = rig::bind_to_vfio(rig::E1000_A)?;
    let container = VfioContainer::open()?;
    let group = VfioGroup::open(id)?;
    container.attach(&group)?;
    let device = group.open_device(rig::E1000_A)?;
    let bar0 = device.bar(0)?;
    ensure!(bar0.is_mapped(STATUS, 4), "BAR0 STATUS is not mmap'd");
    let status = bar0.read32(STATUS)?;
    println!("{} BAR0 STATUS = {status:#010x}", rig::E1000_A);
    ensure!(
        status & STATUS_LINK_UP != 0,
        "STATUS {status:#x}: link is down"
    );
    Ok(())
}
