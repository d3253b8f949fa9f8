//! Disks: which block devices sit under a PCI device, and whether one of them (or a
//! partition) is mounted, used as swap, or held by LVM, RAID or device-mapper.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use super::{read_optional, InUse};
use crate::pci::{PciAddress, SysfsRoot};

/// A disk or partition from `sys/class/block`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BlockDevice {
    /// `sda1`.
    pub name: String,
    /// The PCI functions on its sysfs path (its controller and the bridges above it).
    pub pci_path: Vec<PciAddress>,
    /// `major:minor`.
    pub dev: Option<(u32, u32)>,
    /// Names under `holders/` (dm-0, md0, ...).
    pub holders: Vec<String>,
}

/// Mount points by device number and by `/dev/<name>` source.
#[derive(Debug, Default)]
pub(super) struct Mounts {
    by_dev: HashMap<(u32, u32), Vec<String>>,
    by_source: HashMap<String, Vec<String>>,
}

/// The PCI addresses among a sysfs path's components.
pub(super) fn pci_components(path: &Path) -> Vec<PciAddress> {
    path.components()
        .filter_map(|c| c.as_os_str().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Every entry of `sys/class/block`.
pub(super) fn read_block_devices(root: &SysfsRoot) -> io::Result<Vec<BlockDevice>> {
    let class = root.join("sys/class/block");
    let entries = match fs::read_dir(&class) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let link = entry.path();
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let pci_path = pci_components(&target);
        if pci_path.is_empty() {
            continue; // loop, ram, dm-*, md*: not on a PCI device
        }
        let dev = read_optional(&link.join("dev"))?.and_then(|t| parse_dev(&t));
        let holders = match fs::read_dir(link.join("holders")) {
            Ok(list) => {
                let mut names: Vec<String> = list
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            }
            Err(_) => Vec::new(),
        };
        devices.push(BlockDevice {
            name,
            pci_path,
            dev,
            holders,
        });
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(devices)
}

/// Undoes the octal escapes (`\040` for a space) that mountinfo and swaps use.
pub(super) fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `proc/self/mountinfo`.
pub(super) fn read_mounts(root: &SysfsRoot) -> io::Result<Mounts> {
    let mut mounts = Mounts::default();
    let Some(text) = read_optional(&root.join("proc/self/mountinfo"))? else {
        return Ok(mounts);
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent major:minor root mount-point options [optional...] - type source super
        let (Some(dev), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let point = unescape_octal(point);
        if let Some(dev) = parse_dev(dev) {
            mounts.by_dev.entry(dev).or_default().push(point.clone());
        }
        if let Some(sep) = fields.iter().position(|f| *f == "-") {
            if let Some(source) = fields.get(sep + 2) {
                if let Some(name) = unescape_octal(source).strip_prefix("/dev/") {
                    mounts
                        .by_source
                        .entry(name.to_string())
                        .or_default()
                        .push(point);
                }
            }
        }
    }
    Ok(mounts)
}

/// Device names (`sda2`) in `proc/swaps`.
pub(super) fn read_swaps(root: &SysfsRoot) -> io::Result<Vec<String>> {
    let Some(text) = read_optional(&root.join("proc/swaps"))? else {
        return Ok(Vec::new());
    };
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|path| {
            unescape_octal(path)
                .strip_prefix("/dev/")
                .map(str::to_string)
        })
        .collect())
}

/// Why the disks under `address` are in use.
pub(super) fn reasons(
    address: PciAddress,
    devices: &[BlockDevice],
    mounts: &Mounts,
    swaps: &[String],
) -> Vec<InUse> {
    let mut reasons = Vec::new();
    for block in devices.iter().filter(|b| b.pci_path.contains(&address)) {
        let mut points: Vec<String> = Vec::new();
        if let Some(list) = block.dev.and_then(|dev| mounts.by_dev.get(&dev)) {
            points.extend(list.iter().cloned());
        }
        if let Some(list) = mounts.by_source.get(&block.name) {
            points.extend(list.iter().cloned());
        }
        points.sort();
        points.dedup();
        if !points.is_empty() {
            reasons.push(InUse::Mounted {
                block: block.name.clone(),
                mount_points: points,
            });
        }
        if swaps.contains(&block.name) {
            reasons.push(InUse::Swap {
                block: block.name.clone(),
            });
        }
        if !block.holders.is_empty() {
            reasons.push(InUse::Held {
                block: block.name.clone(),
                holders: block.holders.clone(),
            });
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape_octal("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_octal("/plain"), "/plain");
        assert_eq!(unescape_octal("trailing\\"), "trailing\\");
        assert_eq!(unescape_octal("\\9x"), "\\9x");
        assert_eq!(unescape_octal("\\04"), "\\04");
    }

    #[test]
    fn finds_pci_components() {
        let path =
            Path::new("../../devices/pci0000:00/0000:00:1c.0/0000:01:00.0/nvme/nvme0/nvme0n1");
        let found = pci_components(path);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].to_string(), "0000:01:00.0");
    }
}
