//! Facts about the rig guest: which device sits where, and the guard that keeps the
//! rig tests from ever running on a machine that is not the rig.

use anyhow::{bail, Context, Result};

/// First e1000 (transmits in tests); on the same hub as [`E1000_B`] and [`E1000E`].
pub const E1000_A: &str = "0000:00:02.0";
/// Second e1000 on the hub: receives what [`E1000_A`] sends.
pub const E1000_B: &str = "0000:00:03.0";
/// e1000e (82574, MSI-X): the NIC for UML guests.
pub const E1000E: &str = "0000:00:04.0";
/// piix3-ide in legacy mode with the patterned disk as primary master.
pub const PIIX3_IDE: &str = "0000:00:05.0";
/// ich9-ahci: port 0 the patterned disk, port 1 a small ext2 filesystem.
pub const ICH9_AHCI: &str = "0000:00:06.0";
/// q35's built-in AHCI; its IOMMU group holds LPC and SMBus too.
pub const Q35_AHCI: &str = "0000:00:1f.2";

/// The five devices the rig adds for tests, with the host driver each boots on.
pub const TEST_DEVICES: [(&str, &str); 5] = [
    (E1000_A, "e1000"),
    (E1000_B, "e1000"),
    (E1000E, "e1000e"),
    (PIIX3_IDE, "ata_piix"),
    (ICH9_AHCI, "ahci"),
];

/// Sectors on the IDE disk (8 MiB).
pub const IDE_DISK_SECTORS: u64 = 16 * 1024;
/// Sectors on the AHCI port-0 disk (16 MiB).
pub const AHCI_DISK_SECTORS: u64 = 32 * 1024;

/// The marker the rig puts on the guest kernel's command line.
const RIG_MARKER: &str = "udrv_rig=1";

/// Refuses to go on unless this is the rig guest: the tests bind and reset devices,
/// which on any other machine could take away its own disk or network.
pub fn ensure_in_rig() -> Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    if !cmdline.split_whitespace().any(|w| w == RIG_MARKER) {
        bail!(
            "not the rig guest (no `{RIG_MARKER}` on the kernel command line): rig tests \
             bind and reset PCI devices and only run inside `integration/rig test`"
        );
    }
    Ok(())
}

fn device_dir(bdf: &str) -> String {
    format!("/sys/bus/pci/devices/{bdf}")
}

/// The driver `bdf` is bound to now, if any.
pub fn driver_of(bdf: &str) -> Option<String> {
    let link = std::fs::read_link(format!("{}/driver", device_dir(bdf))).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The IOMMU group number of `bdf`.
pub fn iommu_group_of(bdf: &str) -> Result<u32> {
    let link = std::fs::read_link(format!("{}/iommu_group", device_dir(bdf)))
        .with_context(|| format!("{bdf} has no IOMMU group"))?;
    let name = link
        .file_name()
        .context("empty iommu_group link")?
        .to_string_lossy();
    name.parse()
        .with_context(|| format!("{bdf}: iommu group `{name}` is not a number"))
}

/// A binary the rig installs next to rig-tests (/rig/bin in the guest): `udrv` and the
/// examples.
pub fn installed_binary(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("finding rig-tests")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: the rig installs it next to rig-tests",
            path.display()
        );
    }
    Ok(path)
}

/// Runs a shell command in the guest and returns its stdout; fails with its stderr.
pub fn sh(cmd: &str) -> Result<String> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("running `{cmd}`"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Puts `bdf` on vfio-pci (idempotent) and returns its IOMMU group number, once
/// /dev/vfio/N exists.
///
/// This is the rig's own sysfs step, for tests whose subject is not the claim itself.
pub fn bind_to_vfio(bdf: &str) -> Result<u32> {
    let dir = device_dir(bdf);
    if driver_of(bdf).as_deref() != Some("vfio-pci") {
        std::fs::write(format!("{dir}/driver_override"), "vfio-pci")
            .with_context(|| format!("{bdf}: setting driver_override"))?;
        if driver_of(bdf).is_some() {
            std::fs::write(format!("{dir}/driver/unbind"), bdf)
                .with_context(|| format!("{bdf}: unbinding from its driver"))?;
        }
        std::fs::write("/sys/bus/pci/drivers_probe", bdf)
            .with_context(|| format!("{bdf}: drivers_probe"))?;
    }
    let driver = driver_of(bdf);
    if driver.as_deref() != Some("vfio-pci") {
        bail!("{bdf}: still on {driver:?} after binding to vfio-pci");
    }
    let group = iommu_group_of(bdf)?;
    let node = format!("/dev/vfio/{group}");
    for _ in 0..100 {
        if std::path::Path::new(&node).exists() {
            return Ok(group);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!("{bdf}: {node} did not appear after binding to vfio-pci")
}

/// Puts `bdf` back on its host `driver` (idempotent), for tests that need the host
/// kernel's view of a device whatever earlier tests did with it.
pub fn bind_to_host(bdf: &str, driver: &str) -> Result<()> {
    let dir = device_dir(bdf);
    if driver_of(bdf).as_deref() == Some(driver) {
        return Ok(());
    }
    std::fs::write(format!("{dir}/driver_override"), "\n")
        .with_context(|| format!("{bdf}: clearing driver_override"))?;
    if driver_of(bdf).is_some() {
        std::fs::write(format!("{dir}/driver/unbind"), bdf)
            .with_context(|| format!("{bdf}: unbinding"))?;
    }
    std::fs::write(format!("/sys/bus/pci/drivers/{driver}/bind"), bdf)
        .with_context(|| format!("{bdf}: binding to {driver}"))?;
    Ok(())
}

/// Retries `f` for up to ten seconds: devices and block nodes appear asynchronously
/// after a bind.
pub fn wait_for<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Polls `f` every millisecond until it returns Some, for up to `timeout`: for device
/// state that changes without an event to wait on.
pub fn poll_until<T>(
    timeout: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// One line of a device's sysfs `resource` file: a BAR (or the ROM) as the kernel
/// placed it, the reference the VFIO and vpci tests compare their views against.
pub struct SysfsResource {
    /// First address (0 for a BAR the device does not have).
    pub start: u64,
    /// Last address, included.
    pub end: u64,
    /// `IORESOURCE_*` flags.
    pub flags: u64,
}

/// `IORESOURCE_IO` in a [`SysfsResource`]'s flags: an IO-port BAR.
pub const IORESOURCE_IO: u64 = 0x100;
/// `IORESOURCE_PREFETCH`: a prefetchable memory BAR.
pub const IORESOURCE_PREFETCH: u64 = 0x2000;
/// `IORESOURCE_MEM_64`: a 64-bit memory BAR.
pub const IORESOURCE_MEM_64: u64 = 0x0010_0000;

impl SysfsResource {
    /// Bytes the resource spans; 0 for an unused slot (all fields zero).
    pub fn size(&self) -> u64 {
        if self.end == 0 {
            0
        } else {
            self.end - self.start + 1
        }
    }
}

/// The lines of `bdf`'s sysfs `resource` file: BAR0-5, the ROM, then bridge windows.
pub fn sysfs_resources(bdf: &str) -> Result<Vec<SysfsResource>> {
    let path = format!("{}/resource", device_dir(bdf));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16))
                .collect::<Result<_, _>>()
                .with_context(|| format!("{path}: bad line {l:?}"))?;
            anyhow::ensure!(v.len() == 3, "{path}: bad line {l:?}");
            Ok(SysfsResource {
                start: v[0],
                end: v[1],
                flags: v[2],
            })
        })
        .collect()
}

/// Binds each of `bdfs` to vfio-pci and opens them all in one container (each in its
/// own group), so they share one IOVA space: what a test of device-to-device DMA needs.
pub fn open_in_one_container(
    bdfs: &[&str],
) -> Result<(udriver::vfio::VfioContainer, Vec<udriver::vfio::VfioDevice>)> {
    let container = udriver::vfio::VfioContainer::open()?;
    let devices = bdfs
        .iter()
        .map(|bdf| {
            let group = udriver::vfio::VfioGroup::open(bind_to_vfio(bdf)?)?;
            container.attach(&group)?;
            Ok(group.open_device(bdf)?)
        })
        .collect::<Result<_>>()?;
    Ok((container, devices))
}

/// Waits until the e1000e's interrupt-throttling timers have expired. Call it between
/// the last e1000e MSI-X interrupt and disabling or resizing MSI-X.
///
/// The rig's QEMU 7.2 aborts (an assertion in `e1000e_intrmgr_on_msix_throttling_timer`)
/// when a throttling timer, armed by an MSI-X interrupt while EITR is non-zero (the
/// host driver leaves it so), expires after MSI-X was disabled. A timer lasts at most
/// EITR's 16-bit interval in 256 ns units, about 17 ms.
pub fn let_e1000e_throttling_expire() {
    std::thread::sleep(std::time::Duration::from_millis(40));
}

/// The block device name (`sdb`) of the disk of `sectors` sectors behind `bdf`, as
/// the rig kernel sees it (the controller on its host driver).
pub fn block_device(bdf: &str, sectors: u64) -> Result<String> {
    for entry in std::fs::read_dir("/sys/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_link(format!("/sys/block/{name}"))?;
        let size: u64 = std::fs::read_to_string(format!("/sys/block/{name}/size"))?
            .trim()
            .parse()?;
        if target.to_string_lossy().contains(&format!("/{bdf}/")) && size == sectors {
            return Ok(name);
        }
    }
    anyhow::bail!("no block device of {sectors} sectors under {bdf} (is it on its host driver?)")
}
