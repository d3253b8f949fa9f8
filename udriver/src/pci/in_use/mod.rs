//! Whether the host is using a PCI device: a disk with a mounted, swapped or held
//! partition, a network interface that is up, addressed or routed, the boot display,
//! or an IOMMU group shared with devices still on host drivers. Taking such a device
//! away from its driver would break something; `udrv attach` refuses it unless forced.
//!
//! Everything is read through a [`SysfsRoot`] (sysfs and procfs), once per
//! [`HostUsage`] snapshot.

mod block;
mod net;

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::Path;

pub use net::{Ipv4Source, ProcFibTrie, SystemIpv4};

use super::{PciAddress, PciDevice, PciError, SysfsRoot};

/// Why a device is in use, with the way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InUse {
    /// A disk or partition on the device is mounted.
    Mounted {
        /// `sda1`.
        block: String,
        /// Where.
        mount_points: Vec<String>,
    },
    /// A disk or partition is active swap.
    Swap {
        /// `sda2`.
        block: String,
    },
    /// A disk or partition is held by device-mapper, MD RAID, bcache, ...
    Held {
        /// `sda1`.
        block: String,
        /// `dm-0`, `md0`.
        holders: Vec<String>,
    },
    /// A network interface on the device is up.
    InterfaceUp {
        /// `eth0`.
        interface: String,
    },
    /// A network interface has IP addresses.
    InterfaceAddresses {
        /// `eth0`.
        interface: String,
        /// The addresses.
        addresses: Vec<String>,
    },
    /// A network interface carries routes.
    InterfaceRoutes {
        /// `eth0`.
        interface: String,
        /// `default via 192.0.2.1`, `10.0.0.0/8`.
        routes: Vec<String>,
    },
    /// The firmware's boot display (`boot_vga`): the console is on it.
    BootDisplay,
    /// Other members of the device's IOMMU group are still bound to host drivers, so
    /// the group cannot be handed to VFIO.
    GroupShared {
        /// The IOMMU group.
        group: u32,
        /// The members on host drivers, with their drivers.
        members: Vec<(PciAddress, String)>,
    },
}

fn list(items: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InUse::Mounted { block, mount_points } => write!(
                f,
                "{block} is mounted on {}; unmount it first (umount {})",
                list(mount_points),
                mount_points.first().map_or("", String::as_str)
            ),
            InUse::Swap { block } => {
                write!(f, "{block} is in use as swap; turn it off first (swapoff /dev/{block})")
            }
            InUse::Held { block, holders } => write!(
                f,
                "{block} is held by {} (LVM, RAID or device-mapper); release it first (vgchange -an, mdadm --stop or dmsetup remove)",
                list(holders)
            ),
            InUse::InterfaceUp { interface } => write!(
                f,
                "network interface {interface} is up; take it down first (ip link set {interface} down)"
            ),
            InUse::InterfaceAddresses { interface, addresses } => write!(
                f,
                "{interface} has address {}; remove it first (ip address flush dev {interface})",
                list(addresses)
            ),
            InUse::InterfaceRoutes { interface, routes } => write!(
                f,
                "{interface} carries route {}; remove it first (ip route flush dev {interface})",
                list(routes)
            ),
            InUse::BootDisplay => f.write_str(
                "it is the boot display (the console and any display server draw on it); move them to another display first",
            ),
            InUse::GroupShared { group, members } => {
                let named: Vec<String> = members
                    .iter()
                    .map(|(address, driver)| format!("{address} ({driver})"))
                    .collect();
                write!(
                    f,
                    "IOMMU group {group} also holds {}, still bound to host drivers; detach them too or pass --group to claim the whole group",
                    and_list(&named)
                )
            }
        }
    }
}

pub(super) fn read_optional(path: &Path) -> io::Result<Option<String>> {
    SysfsRoot::read_optional(path)
}

/// What the host is using, read once: mounts, swaps, block holders, network
/// interfaces with their addresses and routes.
#[derive(Debug)]
pub struct HostUsage {
    blocks: Vec<block::BlockDevice>,
    mounts: block::Mounts,
    swaps: Vec<String>,
    net: net::NetState,
}

fn io_error(root: &SysfsRoot, what: &str, e: io::Error) -> PciError {
    PciError::read(root.join(what), e)
}

impl HostUsage {
    /// Reads the host under `root`. IPv4 addresses come from the kernel for the
    /// running host and from `proc/net/fib_trie` for a recorded tree.
    pub fn read(root: &SysfsRoot) -> Result<Self, PciError> {
        if root.is_system() {
            Self::read_with(root, &SystemIpv4)
        } else {
            Self::read_with(root, &ProcFibTrie::new(root.clone()))
        }
    }

    /// Reads the host under `root`, with IPv4 addresses from `ipv4`.
    pub fn read_with(root: &SysfsRoot, ipv4: &dyn Ipv4Source) -> Result<Self, PciError> {
        Ok(Self {
            blocks: block::read_block_devices(root)
                .map_err(|e| io_error(root, "sys/class/block", e))?,
            mounts: block::read_mounts(root)
                .map_err(|e| io_error(root, "proc/self/mountinfo", e))?,
            swaps: block::read_swaps(root).map_err(|e| io_error(root, "proc/swaps", e))?,
            net: net::NetState::read(root, ipv4).map_err(|e| io_error(root, "sys/class/net", e))?,
        })
    }

    /// Why the host uses `device` itself (its disks, interfaces, display). The IOMMU
    /// group is checked by [`group_blockers`].
    pub fn reasons(&self, device: &PciDevice) -> Vec<InUse> {
        let mut reasons = block::reasons(device.address, &self.blocks, &self.mounts, &self.swaps);
        reasons.extend(self.net.reasons(device.address));
        if device.boot_vga {
            reasons.push(InUse::BootDisplay);
        }
        reasons
    }
}

/// The members of `device`'s IOMMU group that keep the group from VFIO: bound to a
/// host driver, not bridges, and not among `claiming` (the devices being claimed with
/// it). `None` when there are none.
pub fn group_blockers(
    device: &PciDevice,
    group_members: &[PciAddress],
    devices: &[PciDevice],
    claiming: &HashSet<PciAddress>,
) -> Option<InUse> {
    let group = device.iommu_group?;
    let members: Vec<(PciAddress, String)> = group_members
        .iter()
        .filter(|m| **m != device.address && !claiming.contains(m))
        .filter_map(|m| devices.iter().find(|d| d.address == *m))
        .filter(|d| d.blocks_group())
        .filter_map(|d| d.driver.clone().map(|driver| (d.address, driver)))
        .collect();
    (!members.is_empty()).then_some(InUse::GroupShared { group, members })
}

#[cfg(test)]
mod tests;
