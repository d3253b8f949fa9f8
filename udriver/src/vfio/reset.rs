//! Resetting a device: a function reset (FLR, PM reset, ...) when VFIO offers one for
//! the device, else a bus hot reset when every device it would also reset belongs to
//! a group this process owns; otherwise a plain statement that neither is possible.

use std::fmt;
use std::os::fd::AsFd;

use crate::pci::PciAddress;

use super::device::VfioDevice;
use super::error::{Result, VfioError};
use super::group::VfioGroup;
use super::ioctl::{self, DependentDevice};

/// How a device can be (or was) reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetMethod {
    /// `VFIO_DEVICE_RESET`: a reset of this function alone.
    Function,
    /// `VFIO_DEVICE_PCI_HOT_RESET`: a secondary bus reset, which also resets the
    /// devices listed (this one included).
    BusHotReset {
        /// The devices reset along with this one.
        affected: Vec<PciAddress>,
    },
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetMethod::Function => f.write_str("function reset"),
            ResetMethod::BusHotReset { affected } => {
                let names: Vec<String> = affected.iter().map(|a| a.to_string()).collect();
                write!(f, "bus hot reset of {}", names.join(", "))
            }
        }
    }
}

fn address(d: &DependentDevice) -> PciAddress {
    // devfn packs a 5-bit device and a 3-bit function, always in PciAddress's ranges.
    PciAddress {
        domain: d.segment,
        bus: d.bus,
        device: d.devfn >> 3,
        function: d.devfn & 7,
    }
}

/// The plan for a hot reset: the groups to prove ownership of, or why it cannot be done.
fn hot_reset_plan(
    deps: &[DependentDevice],
    owned: &dyn Fn(u32) -> Option<VfioGroup>,
) -> std::result::Result<(Vec<VfioGroup>, Vec<PciAddress>), String> {
    if deps.is_empty() {
        return Err("the kernel lists no device for a bus hot reset".into());
    }
    let mut groups: Vec<VfioGroup> = Vec::new();
    let mut missing = Vec::new();
    for d in deps {
        match owned(d.group_id) {
            Some(g) => {
                if !groups.iter().any(|x| x.same(&g)) {
                    groups.push(g);
                }
            }
            None => missing.push(format!("{} (VFIO group {})", address(d), d.group_id)),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "a bus hot reset would also reset {}, whose group is not in this container; \
             open and attach that group too",
            missing.join(", ")
        ));
    }
    Ok((groups, deps.iter().map(address).collect()))
}

impl VfioDevice {
    fn hot_reset_groups(&self) -> std::result::Result<(Vec<VfioGroup>, Vec<PciAddress>), String> {
        let deps = ioctl::device_get_pci_hot_reset_info(self.as_fd()).map_err(|e| {
            let why = if e == nix::errno::Errno::ENODEV {
                "neither its slot nor its bus can be reset (a device on a root bus has no bridge above it to do it)"
            } else {
                "the kernel will not say which devices a bus reset would affect"
            };
            format!("no bus hot reset either (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: {e}: {why})")
        })?;
        let container = self.group().container();
        let owned = |id: u32| container.as_ref().and_then(|c| c.group(id));
        hot_reset_plan(&deps, &owned)
    }

    /// How this device can be reset, or an error that says why it cannot.
    pub fn reset_method(&self) -> Result<ResetMethod> {
        if self.info().reset {
            return Ok(ResetMethod::Function);
        }
        match self.hot_reset_groups() {
            Ok((_, affected)) => Ok(ResetMethod::BusHotReset { affected }),
            Err(why) => Err(self.no_reset(why)),
        }
    }

    fn no_reset(&self, why: String) -> VfioError {
        VfioError::NoReset {
            device: self.name().to_string(),
            reason: format!(
                "the device offers no function reset (VFIO_DEVICE_FLAGS_RESET is clear) and {why}"
            ),
        }
    }

    /// Resets the device with the best method available and says which was used.
    pub fn reset(&self) -> Result<ResetMethod> {
        if self.info().reset {
            ioctl::device_reset(self.as_fd())
                .map_err(|e| self.ioctl_error("VFIO_DEVICE_RESET".into(), e))?;
            return Ok(ResetMethod::Function);
        }
        let (groups, affected) = self.hot_reset_groups().map_err(|why| self.no_reset(why))?;
        let fds: Vec<_> = groups.iter().map(|g| g.as_fd()).collect();
        ioctl::device_pci_hot_reset(self.as_fd(), &fds)
            .map_err(|e| self.ioctl_error("VFIO_DEVICE_PCI_HOT_RESET".into(), e))?;
        Ok(ResetMethod::BusHotReset { affected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(group_id: u32, bus: u8, dev: u8, func: u8) -> DependentDevice {
        DependentDevice {
            group_id,
            segment: 0,
            bus,
            devfn: dev << 3 | func,
        }
    }

    #[test]
    fn names_dependent_devices_as_sysfs_does() {
        assert_eq!(address(&dep(3, 0x3a, 0x1f, 7)).to_string(), "0000:3a:1f.7");
    }

    #[test]
    fn a_device_whose_peer_group_is_not_owned_cannot_hot_reset() {
        let none = |_id: u32| None;
        let why = hot_reset_plan(&[dep(5, 1, 0, 0), dep(6, 1, 0, 1)], &none).unwrap_err();
        assert!(why.contains("0000:01:00.0 (VFIO group 5)"), "{why}");
        assert!(why.contains("0000:01:00.1 (VFIO group 6)"), "{why}");
        assert!(why.contains("open and attach that group"), "{why}");
        assert!(hot_reset_plan(&[], &none).is_err());
    }

    #[test]
    fn plan_proves_each_group_once_and_lists_every_device() {
        let group = |id| {
            VfioGroup(std::sync::Arc::new(super::super::group::GroupInner {
                id,
                file: tempfile::tempfile().unwrap(),
                container: std::sync::Mutex::new(None),
            }))
        };
        let (g5, g6) = (group(5), group(6));
        let owned = |id: u32| match id {
            5 => Some(g5.clone()),
            6 => Some(g6.clone()),
            _ => None,
        };
        let (groups, affected) =
            hot_reset_plan(&[dep(5, 1, 0, 0), dep(5, 1, 0, 1), dep(6, 1, 0, 2)], &owned).unwrap();
        assert_eq!(
            groups.iter().map(|g| g.id()).collect::<Vec<_>>(),
            vec![5, 6]
        );
        let names: Vec<String> = affected.iter().map(|a| a.to_string()).collect();
        assert_eq!(names, ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2"]);
    }

    #[test]
    fn reset_method_names_read_plainly() {
        assert_eq!(ResetMethod::Function.to_string(), "function reset");
        let hot = ResetMethod::BusHotReset {
            affected: vec![
                "0000:01:00.0".parse().unwrap(),
                "0000:01:00.1".parse().unwrap(),
            ],
        };
        assert_eq!(
            hot.to_string(),
            "bus hot reset of 0000:01:00.0, 0000:01:00.1"
        );
    }

    #[test]
    fn no_reset_message_says_neither_is_available() {
        let e = VfioError::NoReset {
            device: "0000:00:02.0".into(),
            reason: "the device offers no function reset (VFIO_DEVICE_FLAGS_RESET is clear) and no bus hot reset either".into(),
        }
        .to_string();
        assert!(e.starts_with("0000:00:02.0 reset: not available: "), "{e}");
    }
}
