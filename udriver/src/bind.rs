//! Moving a PCI device between drivers through sysfs: `driver_override`, the driver's
//! `unbind`/`bind` files and `drivers_probe`. Never `new_id`, which would make the
//! driver grab every device with those ids, now and after hot-plug.
//!
//! Every write goes through [`SysfsWriter`] so that tests can stand in for the kernel.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::pci::{PciAddress, PciError, SysfsRoot};

/// Writes a sysfs attribute. The kernel acts on each write: the real implementation is
/// [`KernelSysfs`]; a test's implementation moves the fake tree's `driver` links.
pub trait SysfsWriter {
    /// Writes `value` to the attribute at `path` in one `write(2)`.
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()>;
}

/// Writes to the real sysfs.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelSysfs;

impl SysfsWriter for KernelSysfs {
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        // sysfs takes an attribute in a single write; a short write is a failure.
        let written = file.write(value.as_bytes())?;
        if written != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write ({written} of {} bytes)", value.len()),
            ));
        }
        Ok(())
    }
}

/// A sysfs write that the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{address}: writing {value:?} to {} failed: {source}{hint}", path.display())]
pub struct BindError {
    /// The device being moved.
    pub address: PciAddress,
    /// The attribute written.
    pub path: PathBuf,
    /// What was written.
    pub value: String,
    /// The kernel's answer.
    pub source: io::Error,
    /// What to do about it (starts with "; " when present).
    pub hint: String,
}

fn hint_for(error: &io::Error, path: &Path) -> String {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    match error.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => "; run as root (binding needs CAP_SYS_ADMIN)".into(),
        Some(libc::ENOENT) if file == "bind" || file == "unbind" => {
            "; that driver is not registered (is its module loaded?)".into()
        }
        Some(libc::ENODEV) if file == "unbind" => {
            "; the device is not bound to that driver (it moved meanwhile?)".into()
        }
        Some(libc::ENODEV) if file == "bind" => {
            "; the driver does not accept this device (check driver_override, or the driver's supported ids)".into()
        }
        Some(libc::EBUSY) => "; the device is already bound to a driver: unbind it first".into(),
        _ => String::new(),
    }
}

/// Moves devices between drivers with plain sysfs writes.
pub struct Binder<'a> {
    root: &'a SysfsRoot,
    writer: &'a mut dyn SysfsWriter,
}

impl<'a> Binder<'a> {
    /// A binder writing under `root` through `writer`.
    pub fn new(root: &'a SysfsRoot, writer: &'a mut dyn SysfsWriter) -> Self {
        Self { root, writer }
    }

    fn write(&mut self, address: PciAddress, path: PathBuf, value: &str) -> Result<(), BindError> {
        self.writer.write(&path, value).map_err(|source| BindError {
            address,
            hint: hint_for(&source, &path),
            value: value.to_string(),
            path,
            source,
        })
    }

    /// Sets `driver_override` to `driver`, or clears it with `None` (the kernel takes a
    /// lone newline as "no override").
    pub fn set_override(
        &mut self,
        address: PciAddress,
        driver: Option<&str>,
    ) -> Result<(), BindError> {
        let path = self.root.pci_device(address).join("driver_override");
        self.write(address, path, driver.unwrap_or("\n"))
    }

    /// Detaches the device from `driver`.
    pub fn unbind(&mut self, address: PciAddress, driver: &str) -> Result<(), BindError> {
        let path = self.root.pci_driver(driver).join("unbind");
        self.write(address, path, &address.to_string())
    }

    /// Binds the device to `driver` directly.
    pub fn bind(&mut self, address: PciAddress, driver: &str) -> Result<(), BindError> {
        let path = self.root.pci_driver(driver).join("bind");
        self.write(address, path, &address.to_string())
    }

    /// Asks the kernel to find a driver for the device (honouring `driver_override`).
    pub fn probe(&mut self, address: PciAddress) -> Result<(), BindError> {
        let path = self.root.drivers_probe();
        self.write(address, path, &address.to_string())
    }

    /// The driver the device is bound to now.
    pub fn current_driver(&self, address: PciAddress) -> Result<Option<String>, PciError> {
        let link = self.root.pci_device(address).join("driver");
        SysfsRoot::link_name(&link).map_err(|e| PciError::read(link, e))
    }

    /// The device's `driver_override` now.
    pub fn current_override(&self, address: PciAddress) -> Result<Option<String>, PciError> {
        let path = self.root.pci_device(address).join("driver_override");
        Ok(SysfsRoot::read_optional(&path)
            .map_err(|e| PciError::read(path, e))?
            .filter(|text| !text.is_empty() && text != "(null)"))
    }

    /// Whether `driver` is registered with the PCI bus (its module is loaded).
    pub fn driver_registered(&self, driver: &str) -> bool {
        self.root.pci_driver(driver).is_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sysfs_writes_the_value_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("driver_override");
        std::fs::write(&file, "").unwrap();
        KernelSysfs.write(&file, "vfio-pci").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "vfio-pci");
        let missing = dir.path().join("drivers/nope/bind");
        let err = KernelSysfs.write(&missing, "0000:00:02.0").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn errors_name_the_device_file_and_fix() {
        let err = BindError {
            address: "00:02.0".parse().unwrap(),
            path: "/sys/bus/pci/drivers/e1000/unbind".into(),
            value: "0000:00:02.0".into(),
            hint: hint_for(
                &io::Error::from_raw_os_error(libc::EACCES),
                Path::new("unbind"),
            ),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        let text = err.to_string();
        assert!(text.starts_with("0000:00:02.0: writing \"0000:00:02.0\" to /sys/bus/pci/drivers/e1000/unbind failed"), "{text}");
        assert!(text.contains("run as root"), "{text}");
    }
}
