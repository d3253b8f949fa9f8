//! `SysfsRoot`: where the host's `/sys`, `/proc` and `/dev` are, so that tests can point
//! every read (and every write the binder makes) at a recorded tree in a temp dir.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::PciAddress;

/// The root of a file tree shaped like `/`: it holds `sys/`, `proc/` and `dev/`.
/// [`SysfsRoot::system`] is the running host; tests use a temp dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsRoot {
    root: PathBuf,
}

/// Largest sysfs/procfs attribute we read as text; real ones are a page at most.
const ATTRIBUTE_LIMIT: u64 = 1 << 20;

impl SysfsRoot {
    /// The running host (`/`).
    pub fn system() -> Self {
        Self::new("/")
    }

    /// A tree rooted at `root` (a recorded or synthesised copy of the host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether this is the running host rather than a recorded tree.
    pub fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `relative` (written without a leading `/`, e.g. `proc/swaps`) under the root.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        let relative = relative.as_ref();
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        self.root.join(relative)
    }

    /// `sys/bus/pci/devices`.
    pub fn pci_devices(&self) -> PathBuf {
        self.join("sys/bus/pci/devices")
    }

    /// `sys/bus/pci/devices/<address>`.
    pub fn pci_device(&self, address: PciAddress) -> PathBuf {
        self.pci_devices().join(address.to_string())
    }

    /// `sys/bus/pci/drivers/<driver>`.
    pub fn pci_driver(&self, driver: &str) -> PathBuf {
        self.join("sys/bus/pci/drivers").join(driver)
    }

    /// `sys/bus/pci/drivers_probe`.
    pub fn drivers_probe(&self) -> PathBuf {
        self.join("sys/bus/pci/drivers_probe")
    }

    /// `sys/kernel/iommu_groups/<group>/devices`.
    pub fn iommu_group_devices(&self, group: u32) -> PathBuf {
        self.join(format!("sys/kernel/iommu_groups/{group}/devices"))
    }

    /// `dev/vfio/<group>`: the VFIO group node that appears once the group is bound.
    pub fn vfio_group_node(&self, group: u32) -> PathBuf {
        self.join(format!("dev/vfio/{group}"))
    }

    /// Reads a text attribute (bounded, so a hostile or broken tree cannot make us read
    /// without end), with the trailing newline removed.
    pub fn read_text(path: &Path) -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        fs::File::open(path)?
            .take(ATTRIBUTE_LIMIT)
            .read_to_string(&mut text)?;
        let trimmed = text.trim_end_matches(['\n', '\r', ' ', '\t', '\0']).len();
        text.truncate(trimmed);
        Ok(text)
    }

    /// Reads a text attribute; `None` when it does not exist.
    pub fn read_optional(path: &Path) -> io::Result<Option<String>> {
        match Self::read_text(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The last component of a symlink's target (a driver name, a group number), or
    /// `None` when there is no such link.
    pub fn link_name(path: &Path) -> io::Result<Option<String>> {
        match fs::read_link(path) {
            Ok(target) => Ok(target
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Default for SysfsRoot {
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_root() {
        let root = SysfsRoot::new("/tmp/x");
        let a: PciAddress = "00:02.0".parse().unwrap();
        assert_eq!(
            root.pci_device(a),
            Path::new("/tmp/x/sys/bus/pci/devices/0000:00:02.0")
        );
        assert_eq!(root.join("/proc/swaps"), Path::new("/tmp/x/proc/swaps"));
        assert_eq!(root.vfio_group_node(9), Path::new("/tmp/x/dev/vfio/9"));
        assert!(!root.is_system());
        assert!(SysfsRoot::system().is_system());
    }

    #[test]
    fn reads_trimmed_text_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vendor");
        fs::write(&file, "0x8086\n").unwrap();
        assert_eq!(SysfsRoot::read_text(&file).unwrap(), "0x8086");
        assert_eq!(
            SysfsRoot::read_optional(&dir.path().join("absent")).unwrap(),
            None
        );
        std::os::unix::fs::symlink("../../bus/pci/drivers/e1000", dir.path().join("driver"))
            .unwrap();
        assert_eq!(
            SysfsRoot::link_name(&dir.path().join("driver")).unwrap(),
            Some("e1000".to_string())
        );
        assert_eq!(
            SysfsRoot::link_name(&dir.path().join("nolink")).unwrap(),
            None
        );
    }
}
