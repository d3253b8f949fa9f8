//! `udrv attach`: hand PCI devices to vfio-pci, safely.

use std::fmt::Write as _;

use clap::Args;
use udriver::bind::KernelSysfs;
use udriver::claim::{
    resolve_group, resolve_user, AttachOptions, AttachReport, Claimer, Modprobe, Owner,
};
use udriver::pci::PciAddress;

use crate::list::{write_stdout, HostArgs};

/// Hand PCI devices to vfio-pci so that a user-level driver or a guest can use them.
///
/// For each device: record the claim in the state file, set driver_override to
/// vfio-pci, unbind the current driver, and ask the kernel to probe (never new_id).
/// Then check that the IOMMU group is viable and /dev/vfio/N exists. `udrv detach`
/// puts each device back on the driver it had.
///
/// Refused unless --force, each with the reason and the way out: a disk with a mounted,
/// swapped or LVM/RAID-held partition; a network interface that is up, has an address
/// or carries a route; the boot display; a device whose IOMMU group has other members
/// on host drivers (--group claims them all). Loads vfio-pci with `modprobe vfio-pci`
/// if it is not loaded. Needs root.
///
/// Examples:
///   udrv attach 0000:00:03.0
///   udrv attach 00:1f.2 --group           the device and the rest of its IOMMU group
///   udrv attach 00:03.0 --user alice      and let alice open /dev/vfio/N
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct AttachArgs {
    /// The devices, as 0000:00:03.0 or 00:03.0 (see `udrv list`).
    #[arg(required = true, value_name = "BDF")]
    pub devices: Vec<PciAddress>,
    /// Claim devices even if the host is using them (they stop working for the host).
    #[arg(long)]
    pub force: bool,
    /// Also claim every other device in each device's IOMMU group.
    #[arg(long)]
    pub group: bool,
    /// Give /dev/vfio/N to this user (name or uid), so a non-root driver can open it.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Give /dev/vfio/N to this group (name or gid), mode 0660.
    #[arg(long, value_name = "GROUP")]
    pub group_owner: Option<String>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Runs `udrv attach`.
pub fn run(args: AttachArgs) -> anyhow::Result<()> {
    let options = AttachOptions {
        force: args.force,
        whole_group: args.group,
        node_user: args.user.as_deref().map(resolve_user).transpose()?,
        node_group: args.group_owner.as_deref().map(resolve_group).transpose()?,
        owner: Owner::caller(),
    };
    let state = args.host.state_path();
    let mut writer = KernelSysfs;
    let mut modules = Modprobe;
    let report = Claimer::new(args.host.root(), &mut writer, &mut modules, state)
        .attach(&args.devices, &options)?;
    for warning in &report.warnings {
        eprintln!("udrv: warning: {warning}");
    }
    let text = if args.json {
        render_json(&report)?
    } else {
        render_text(&report)
    };
    write_stdout(&text)
}

fn render_text(report: &AttachReport) -> String {
    let mut out = String::new();
    for repaired in &report.repaired {
        let _ = writeln!(
            out,
            "{}: an interrupted claim was undone: back on {}",
            repaired.address,
            repaired.driver.as_deref().unwrap_or("no driver")
        );
    }
    for device in &report.attached {
        let from = device.previous_driver.as_deref().unwrap_or("no driver");
        if device.already {
            let _ = writeln!(out, "{}: already on vfio-pci", device.address);
        } else {
            let _ = writeln!(out, "{}: {from} -> vfio-pci", device.address);
        }
        for reason in &device.forced {
            let _ = writeln!(out, "    forced although: {reason}");
        }
    }
    for group in &report.groups {
        let members: Vec<String> = group.members.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "IOMMU group {}: {} is ready (members: {})",
            group.group,
            group.node.display(),
            members.join(", ")
        );
    }
    out
}

fn render_json(report: &AttachReport) -> anyhow::Result<String> {
    let value = serde_json::json!({
        "attached": report.attached.iter().map(|a| serde_json::json!({
            "address": a.address,
            "previous_driver": a.previous_driver,
            "already": a.already,
            "forced": a.forced.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "groups": report.groups.iter().map(|g| serde_json::json!({
            "iommu_group": g.group,
            "node": g.node,
            "members": g.members,
        })).collect::<Vec<_>>(),
        "repaired": report.repaired.iter().map(|r| serde_json::json!({
            "address": r.address,
            "driver": r.driver,
        })).collect::<Vec<_>>(),
        "warnings": report.warnings,
    });
    let mut text = serde_json::to_string_pretty(&value)?;
    text.push('\n');
    Ok(text)
}
