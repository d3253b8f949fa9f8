//! The VFIO group node `/dev/vfio/N`: waiting for it after binding, checking that the
//! group is viable, and handing it to a non-root user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{chown, Gid, Group, Uid, User};

use super::ClaimError;
use crate::pci::{IommuGroup, PciAddress, PciDevice, SysfsRoot};

/// The members of group `id` that keep it from being viable: bound to a host driver
/// (not a VFIO driver, not pci-stub) and not bridges.
pub fn group_blockers_now(
    root: &SysfsRoot,
    id: u32,
) -> Result<Vec<(PciAddress, String)>, ClaimError> {
    let group = IommuGroup::read(root, id)?;
    let mut blockers = Vec::new();
    for member in group.members {
        let device = PciDevice::read(root, member)?;
        if device.blocks_group() {
            blockers.push((member, device.driver.unwrap_or_default()));
        }
    }
    Ok(blockers)
}

/// Waits up to `timeout` for `dev/vfio/<id>` (devtmpfs creates it as vfio-pci binds;
/// udev may still be adjusting it).
pub fn wait_for_node(root: &SysfsRoot, id: u32, timeout: Duration) -> Result<PathBuf, ClaimError> {
    let node = root.vfio_group_node(id);
    let start = Instant::now();
    loop {
        if node.exists() {
            return Ok(node);
        }
        if start.elapsed() >= timeout {
            return Err(ClaimError::NodeMissing {
                group: id,
                path: node,
                waited: timeout,
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Gives the node to `uid` and/or `gid` (read-write for the group when a group is
/// given), so that an unprivileged process can open it.
pub fn hand_over(node: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), ClaimError> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    chown(node, uid.map(Uid::from_raw), gid.map(Gid::from_raw)).map_err(|e| {
        ClaimError::HandOver {
            path: node.to_path_buf(),
            source: e.into(),
        }
    })?;
    if gid.is_some() {
        fs::set_permissions(node, fs::Permissions::from_mode(0o660)).map_err(|e| {
            ClaimError::HandOver {
                path: node.to_path_buf(),
                source: e,
            }
        })?;
    }
    Ok(())
}

/// A user name or number.
pub fn resolve_user(text: &str) -> Result<u32, ClaimError> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        _ => Err(ClaimError::UnknownUser(text.to_string())),
    }
}

/// A group name or number.
pub fn resolve_group(text: &str) -> Result<u32, ClaimError> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(ClaimError::UnknownGroup(text.to_string())),
    }
}
