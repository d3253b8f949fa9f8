//! Test fixtures: a fake host tree (`sys/`, `proc/`, `dev/`) in a temp dir, shaped like
//! the kernel's, and a fake kernel that reacts to the binder's sysfs writes the way
//! the driver core does (moving `driver` links, creating `/dev/vfio/N`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::{PciAddress, SysfsRoot, VFIO_PCI};
use crate::bind::SysfsWriter;

/// A PCI function to put in a [`FakeHost`].
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    address: PciAddress,
    vendor: u16,
    device: u16,
    subsystem: (u16, u16),
    class: u32,
    revision: u8,
    header_type: u8,
    driver: Option<String>,
    natural: Option<String>,
    group: Option<u32>,
    numa: i32,
    boot_vga: Option<bool>,
}

impl DeviceSpec {
    /// A device at `address` with no driver, no group, no subsystem.
    pub fn new(address: &str, vendor: u16, device: u16, class: u32) -> Self {
        Self {
            address: address.parse().expect("fixture address"),
            vendor,
            device,
            subsystem: (0, 0),
            class,
            revision: 0,
            header_type: 0,
            driver: None,
            natural: None,
            group: None,
            numa: -1,
            boot_vga: None,
        }
    }
    /// Sets the subsystem ids.
    pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        self.subsystem = (vendor, device);
        self
    }
    /// Sets the revision.
    pub fn revision(mut self, revision: u8) -> Self {
        self.revision = revision;
        self
    }
    /// Binds it to `driver` (also the driver the fake kernel probes it to).
    pub fn driver(mut self, driver: &str) -> Self {
        self.driver = Some(driver.to_string());
        self
    }
    /// The driver the fake kernel's `drivers_probe` picks when no override is set
    /// (default: the driver it is bound to).
    pub fn natural_driver(mut self, driver: &str) -> Self {
        self.natural = Some(driver.to_string());
        self
    }
    /// Puts it in IOMMU group `group`.
    pub fn group(mut self, group: u32) -> Self {
        self.group = Some(group);
        self
    }
    /// Sets its NUMA node.
    pub fn numa(mut self, node: i32) -> Self {
        self.numa = node;
        self
    }
    /// Gives it a `boot_vga` attribute.
    pub fn boot_vga(mut self, boot: bool) -> Self {
        self.boot_vga = Some(boot);
        self
    }
    /// Makes it a PCI-to-PCI bridge (header type 1).
    pub fn bridge(mut self) -> Self {
        self.header_type = 1;
        self
    }
}

/// A host tree in a temp dir.
pub struct FakeHost {
    dir: TempDir,
    natural: RefCell<HashMap<PciAddress, String>>,
}

fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("fixture dir");
    }
    fs::write(path, contents).expect("fixture file");
}

fn link(target: &str, at: &Path) {
    if let Some(parent) = at.parent() {
        fs::create_dir_all(parent).expect("fixture dir");
    }
    let _ = fs::remove_file(at);
    symlink(target, at).expect("fixture link");
}

impl FakeHost {
    /// An empty host: PCI bus, no devices, empty /proc files.
    pub fn new() -> Self {
        let host = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            natural: RefCell::new(HashMap::new()),
        };
        fs::create_dir_all(host.path().join("sys/bus/pci/devices")).unwrap();
        fs::create_dir_all(host.path().join("sys/bus/pci/drivers")).unwrap();
        fs::create_dir_all(host.path().join("dev/vfio")).unwrap();
        host.write("sys/bus/pci/drivers_probe", "");
        host.write("proc/self/mountinfo", "");
        host.write(
            "proc/swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        );
        host.write("proc/modules", "");
        host
    }

    /// The rig's PCI devices (QEMU q35, see integration/rig), on their host drivers,
    /// with vfio-pci loaded: the host bridge; e1000 NICs at 02.0 and 03.0 and an e1000e
    /// at 04.0; piix3-ide at 05.0; ich9-ahci at 06.0; and q35's LPC, AHCI and SMBus
    /// sharing IOMMU group 9. Nothing is up, mounted or held: tests add that.
    pub fn rig() -> Self {
        let host = FakeHost::new();
        host.add_driver("vfio-pci");
        let qemu = |address: &str, device: u16, class: u32, revision: u8| {
            DeviceSpec::new(address, 0x8086, device, class)
                .subsystem(0x1af4, 0x1100)
                .revision(revision)
        };
        host.add(qemu("0000:00:00.0", 0x29c0, 0x060000, 0));
        for (address, device, class, revision, driver, group) in [
            ("0000:00:02.0", 0x100e, 0x020000, 3, "e1000", 3),
            ("0000:00:03.0", 0x100e, 0x020000, 3, "e1000", 4),
            ("0000:00:04.0", 0x10d3, 0x020000, 0, "e1000e", 5),
            ("0000:00:05.0", 0x7010, 0x010180, 0, "ata_piix", 6),
            ("0000:00:06.0", 0x2922, 0x010601, 2, "ahci", 7),
            ("0000:00:1f.0", 0x2918, 0x060100, 2, "lpc_ich", 9),
            ("0000:00:1f.2", 0x2922, 0x010601, 2, "ahci", 9),
            ("0000:00:1f.3", 0x2930, 0x0c0500, 2, "i801_smbus", 9),
        ] {
            host.add(
                qemu(address, device, class, revision)
                    .driver(driver)
                    .group(group),
            );
        }
        host
    }

    /// The tree's root.
    pub fn root(&self) -> SysfsRoot {
        SysfsRoot::new(self.dir.path())
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating parents) at `relative`.
    pub fn write(&self, relative: &str, contents: &str) {
        write(&self.path().join(relative), contents);
    }

    /// Appends a line to the file at `relative`.
    pub fn append(&self, relative: &str, line: &str) {
        let path = self.path().join(relative);
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        write(&path, &text);
    }

    /// The device's real directory (`sys/devices/pci0000:00/<address>`).
    pub fn device_dir(&self, address: &str) -> PathBuf {
        self.path().join("sys/devices/pci0000:00").join(address)
    }

    /// Registers a PCI driver (its directory with `bind`, `unbind`, `new_id`).
    pub fn add_driver(&self, driver: &str) {
        let dir = self.path().join("sys/bus/pci/drivers").join(driver);
        for file in ["bind", "unbind", "new_id", "remove_id"] {
            write(&dir.join(file), "");
        }
    }

    /// Adds a device.
    pub fn add(&self, spec: DeviceSpec) -> &Self {
        let bdf = spec.address.to_string();
        let dir = self.device_dir(&bdf);
        write(&dir.join("vendor"), &format!("0x{:04x}\n", spec.vendor));
        write(&dir.join("device"), &format!("0x{:04x}\n", spec.device));
        write(
            &dir.join("subsystem_vendor"),
            &format!("0x{:04x}\n", spec.subsystem.0),
        );
        write(
            &dir.join("subsystem_device"),
            &format!("0x{:04x}\n", spec.subsystem.1),
        );
        write(&dir.join("class"), &format!("0x{:06x}\n", spec.class));
        write(&dir.join("revision"), &format!("0x{:02x}\n", spec.revision));
        write(&dir.join("numa_node"), &format!("{}\n", spec.numa));
        write(&dir.join("driver_override"), "(null)\n");
        let mut config = vec![0u8; 64];
        config[0..2].copy_from_slice(&spec.vendor.to_le_bytes());
        config[2..4].copy_from_slice(&spec.device.to_le_bytes());
        config[0x0e] = spec.header_type;
        fs::write(dir.join("config"), config).unwrap();
        if let Some(boot) = spec.boot_vga {
            write(&dir.join("boot_vga"), if boot { "1\n" } else { "0\n" });
        }
        link(
            &format!("../../../devices/pci0000:00/{bdf}"),
            &self.path().join("sys/bus/pci/devices").join(&bdf),
        );
        if let Some(group) = spec.group {
            link(
                &format!("../../../kernel/iommu_groups/{group}"),
                &dir.join("iommu_group"),
            );
            link(
                &format!("../../../../devices/pci0000:00/{bdf}"),
                &self
                    .path()
                    .join(format!("sys/kernel/iommu_groups/{group}/devices"))
                    .join(&bdf),
            );
        }
        if let Some(driver) = &spec.driver {
            self.add_driver(driver);
            self.set_driver(spec.address, Some(driver));
        }
        if let Some(natural) = spec.natural.as_ref().or(spec.driver.as_ref()) {
            self.add_driver(natural);
            self.natural
                .borrow_mut()
                .insert(spec.address, natural.clone());
        }
        self
    }

    /// Points the device's `driver` link at `driver` (or removes it).
    pub fn set_driver(&self, address: PciAddress, driver: Option<&str>) {
        let bdf = address.to_string();
        let dir = self.device_dir(&bdf);
        if let Some(old) = SysfsRoot::link_name(&dir.join("driver")).unwrap() {
            let _ = fs::remove_file(self.path().join("sys/bus/pci/drivers").join(old).join(&bdf));
        }
        let _ = fs::remove_file(dir.join("driver"));
        if let Some(driver) = driver {
            link(
                &format!("../../../bus/pci/drivers/{driver}"),
                &dir.join("driver"),
            );
            link(
                &format!("../../../../devices/pci0000:00/{bdf}"),
                &self
                    .path()
                    .join("sys/bus/pci/drivers")
                    .join(driver)
                    .join(&bdf),
            );
        }
    }

    /// Adds a SCSI disk `disk` (with `dev` = major:minor) and its partitions under the
    /// device, with their `sys/class/block` links.
    pub fn add_disk(
        &self,
        address: &str,
        disk: &str,
        dev: (u32, u32),
        partitions: &[(&str, (u32, u32))],
    ) {
        let relative =
            format!("devices/pci0000:00/{address}/host0/target0:0:0/0:0:0:0/block/{disk}");
        let disk_dir = self.path().join("sys").join(&relative);
        write(&disk_dir.join("dev"), &format!("{}:{}\n", dev.0, dev.1));
        fs::create_dir_all(disk_dir.join("holders")).unwrap();
        link(
            &format!("../../{relative}"),
            &self.path().join("sys/class/block").join(disk),
        );
        for (name, (major, minor)) in partitions {
            let part_dir = disk_dir.join(name);
            write(&part_dir.join("dev"), &format!("{major}:{minor}\n"));
            write(&part_dir.join("partition"), "1\n");
            fs::create_dir_all(part_dir.join("holders")).unwrap();
            link(
                &format!("../../{relative}/{name}"),
                &self.path().join("sys/class/block").join(name),
            );
        }
    }

    /// Makes `holder` (e.g. `dm-0`) hold the block device `block`.
    pub fn add_holder(&self, block: &str, holder: &str) {
        let holders = self
            .path()
            .join("sys/class/block")
            .join(block)
            .join("holders");
        link(&format!("../../{holder}"), &holders.join(holder));
    }

    /// Records a mount of `major:minor` (source `/dev/<source>`) on `point`.
    pub fn mount(&self, dev: (u32, u32), source: &str, point: &str) {
        let id = fs::read_to_string(self.path().join("proc/self/mountinfo"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
            + 20;
        self.append(
            "proc/self/mountinfo",
            &format!(
                "{id} 1 {}:{} / {point} rw,relatime shared:1 - ext4 /dev/{source} rw",
                dev.0, dev.1
            ),
        );
    }

    /// Adds a network interface under the device.
    pub fn add_interface(&self, address: &str, name: &str, up: bool) {
        let relative = format!("devices/pci0000:00/{address}/net/{name}");
        let dir = self.path().join("sys").join(&relative);
        write(&dir.join("flags"), if up { "0x1003\n" } else { "0x1002\n" });
        write(&dir.join("operstate"), if up { "up\n" } else { "down\n" });
        link(
            &format!("../../{relative}"),
            &self.path().join("sys/class/net").join(name),
        );
    }

    /// A fake kernel for this tree.
    pub fn kernel(&self) -> FakeKernel {
        FakeKernel {
            host_root: self.path().to_path_buf(),
            writes: Vec::new(),
            natural: self.natural.borrow().clone(),
            crash_at: None,
            failing_probe: None,
        }
    }

    /// The device's driver now.
    pub fn driver_of(&self, address: &str) -> Option<String> {
        SysfsRoot::link_name(&self.device_dir(address).join("driver")).unwrap()
    }

    /// The device's `driver_override` file now.
    pub fn override_of(&self, address: &str) -> String {
        fs::read_to_string(self.device_dir(address).join("driver_override"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

/// Stands in for the kernel's driver core behind the sysfs files the binder writes.
pub struct FakeKernel {
    host_root: PathBuf,
    /// Every write, as (path relative to the root, value).
    pub writes: Vec<(String, String)>,
    natural: HashMap<PciAddress, String>,
    crash_at: Option<usize>,
    failing_probe: Option<String>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FakeKernel {
    /// Panics (as if the process were killed) on write number `n` (0-based), before
    /// that write reaches the kernel.
    pub fn crash_at(mut self, n: usize) -> Self {
        self.crash_at = Some(n);
        self
    }

    /// Makes `driver`'s probe fail (the device stays without a driver).
    pub fn failing_probe(mut self, driver: &str) -> Self {
        self.failing_probe = Some(driver.to_string());
        self
    }

    fn device_dir(&self, address: PciAddress) -> PathBuf {
        self.host_root
            .join("sys/devices/pci0000:00")
            .join(address.to_string())
    }

    fn driver_of(&self, address: PciAddress) -> Option<String> {
        SysfsRoot::link_name(&self.device_dir(address).join("driver")).unwrap()
    }

    fn override_of(&self, address: PciAddress) -> Option<String> {
        let text = fs::read_to_string(self.device_dir(address).join("driver_override")).ok()?;
        let text = text.trim();
        (!text.is_empty() && text != "(null)").then(|| text.to_string())
    }

    fn set_link(&self, address: PciAddress, driver: Option<&str>) {
        let bdf = address.to_string();
        let dir = self.device_dir(address);
        if let Some(old) = self.driver_of(address) {
            let _ = fs::remove_file(
                self.host_root
                    .join("sys/bus/pci/drivers")
                    .join(old)
                    .join(&bdf),
            );
        }
        let _ = fs::remove_file(dir.join("driver"));
        if let Some(driver) = driver {
            link(
                &format!("../../../bus/pci/drivers/{driver}"),
                &dir.join("driver"),
            );
            link(
                &format!("../../../../devices/pci0000:00/{bdf}"),
                &self
                    .host_root
                    .join("sys/bus/pci/drivers")
                    .join(driver)
                    .join(&bdf),
            );
        }
        self.update_vfio_node(address);
    }

    /// `/dev/vfio/N` exists while any member of group N is bound to vfio-pci.
    fn update_vfio_node(&self, address: PciAddress) {
        let Some(group) =
            SysfsRoot::link_name(&self.device_dir(address).join("iommu_group")).unwrap()
        else {
            return;
        };
        let members = self
            .host_root
            .join(format!("sys/kernel/iommu_groups/{group}/devices"));
        let any_vfio = fs::read_dir(members)
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.parse::<PciAddress>().ok())
            })
            .any(|m| self.driver_of(m).as_deref() == Some(VFIO_PCI));
        let node = self.host_root.join("dev/vfio").join(&group);
        if any_vfio {
            write(&node, "");
        } else {
            let _ = fs::remove_file(node);
        }
    }

    fn attach_driver(&self, address: PciAddress, driver: &str) -> io::Result<()> {
        if !self
            .host_root
            .join("sys/bus/pci/drivers")
            .join(driver)
            .is_dir()
        {
            return Err(errno(libc::ENOENT));
        }
        if self.failing_probe.as_deref() == Some(driver) {
            return Err(errno(libc::EINVAL));
        }
        self.set_link(address, Some(driver));
        Ok(())
    }
}

impl SysfsWriter for FakeKernel {
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()> {
        if self.crash_at == Some(self.writes.len()) {
            panic!("simulated kill before write {}", self.writes.len());
        }
        let relative = path
            .strip_prefix(&self.host_root)
            .expect("write outside the fake tree")
            .to_string_lossy()
            .into_owned();
        self.writes.push((relative.clone(), value.to_string()));
        let parts: Vec<&str> = relative.split('/').collect();
        match parts.as_slice() {
            ["sys", "bus", "pci", "devices", bdf, "driver_override"] => {
                let address: PciAddress = bdf.parse().map_err(|_| errno(libc::ENOENT))?;
                let text = value.trim();
                let text = if text.is_empty() { "(null)" } else { text };
                fs::write(
                    self.device_dir(address).join("driver_override"),
                    format!("{text}\n"),
                )
            }
            ["sys", "bus", "pci", "drivers", driver, "unbind"] => {
                let address: PciAddress = value.trim().parse().map_err(|_| errno(libc::ENODEV))?;
                if self.driver_of(address).as_deref() != Some(*driver) {
                    return Err(errno(libc::ENODEV));
                }
                self.set_link(address, None);
                Ok(())
            }
            ["sys", "bus", "pci", "drivers", driver, "bind"] => {
                let address: PciAddress = value.trim().parse().map_err(|_| errno(libc::ENODEV))?;
                if self.driver_of(address).is_some() {
                    return Err(errno(libc::EBUSY));
                }
                if self.override_of(address).is_some_and(|o| o != *driver) {
                    return Err(errno(libc::ENODEV));
                }
                self.attach_driver(address, driver)
            }
            ["sys", "bus", "pci", "drivers", _, "new_id"] => {
                panic!("new_id written: udrv must bind through driver_override only")
            }
            ["sys", "bus", "pci", "drivers_probe"] => {
                let address: PciAddress = value.trim().parse().map_err(|_| errno(libc::ENODEV))?;
                if self.driver_of(address).is_some() {
                    return Ok(());
                }
                let target = self
                    .override_of(address)
                    .or_else(|| self.natural.get(&address).cloned());
                if let Some(driver) = target {
                    // A failed probe leaves the device without a driver; drivers_probe
                    // itself still succeeds, as in the kernel.
                    let _ = self.attach_driver(address, &driver);
                }
                Ok(())
            }
            _ => Err(errno(libc::EACCES)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_kernel_moves_driver_links_like_the_driver_core() {
        let host = FakeHost::new();
        host.add_driver(VFIO_PCI);
        host.add(
            DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000)
                .driver("e1000")
                .group(3),
        );
        let mut kernel = host.kernel();
        let dev = |s: &str| host.root().join(s);
        // bind while bound: EBUSY
        let err = kernel
            .write(&dev("sys/bus/pci/drivers/vfio-pci/bind"), "0000:00:02.0")
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        kernel
            .write(
                &dev("sys/bus/pci/devices/0000:00:02.0/driver_override"),
                "vfio-pci",
            )
            .unwrap();
        kernel
            .write(&dev("sys/bus/pci/drivers/e1000/unbind"), "0000:00:02.0")
            .unwrap();
        assert_eq!(host.driver_of("0000:00:02.0"), None);
        kernel
            .write(&dev("sys/bus/pci/drivers_probe"), "0000:00:02.0")
            .unwrap();
        assert_eq!(host.driver_of("0000:00:02.0").as_deref(), Some(VFIO_PCI));
        assert!(host.path().join("dev/vfio/3").exists());
        kernel
            .write(
                &dev("sys/bus/pci/devices/0000:00:02.0/driver_override"),
                "\n",
            )
            .unwrap();
        assert_eq!(host.override_of("0000:00:02.0"), "(null)");
        kernel
            .write(&dev("sys/bus/pci/drivers/vfio-pci/unbind"), "0000:00:02.0")
            .unwrap();
        assert!(!host.path().join("dev/vfio/3").exists());
        kernel
            .write(&dev("sys/bus/pci/drivers_probe"), "0000:00:02.0")
            .unwrap();
        assert_eq!(host.driver_of("0000:00:02.0").as_deref(), Some("e1000"));
    }
}
