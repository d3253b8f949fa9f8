//! `udrv list`: the PCI devices, grouped by class, with driver, IOMMU group and whether
//! the host is using each one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use udriver::claim::{ClaimRecord, StateFile};
use udriver::pci::{
    BaseClass, ClassFilter, DeviceFilter, DeviceReport, HostUsage, Inventory, NameDatabase,
    PciAddress, SysfsRoot, BASE_CLASSES,
};

/// Where the host is and where claims are recorded (shared by list, attach, detach).
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// The state file that records claims [default: $UDRV_STATE, else /run/udrv/state.json].
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,
    /// Use a recorded host tree (sys/, proc/, dev/) under DIR instead of / (for tests).
    #[arg(long, value_name = "DIR", hide = true)]
    pub root: Option<PathBuf>,
}

impl HostArgs {
    /// The host root.
    pub fn root(&self) -> SysfsRoot {
        self.root
            .clone()
            .map_or_else(SysfsRoot::system, SysfsRoot::new)
    }
    /// The state file path.
    pub fn state_path(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(StateFile::default_path)
    }
}

/// List PCI devices with their drivers, IOMMU groups and whether the host uses them.
///
/// Names as `lspci -nn` prints them, the bound driver, the IOMMU group and its other
/// members, the NUMA node, and why the host is using a device (a mounted disk, an
/// interface that is up, the boot display): devices `udrv attach` would refuse show the
/// reason and the way out. Reads sysfs and /proc only: no subprocess, no root needed.
///
/// Examples:
///   udrv list                     every device, grouped by class
///   udrv list --class net         network controllers only
///   udrv list --vfio              devices on vfio-pci
///   udrv list --json | jq '.[] | select(.in_use == null) | .address'
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ListArgs {
    /// Print a JSON array of objects (address, vendor_id, device_id, vendor_name,
    /// device_name, subsystem_vendor_name, subsystem_name, class_name, driver,
    /// iommu_group, iommu_group_members, numa_node, in_use, ...) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this class: net, storage, display, bridge, serial, multimedia, ... or a hex
    /// class code (02, 0106, 010601).
    #[arg(long, value_name = "CLASS")]
    pub class: Option<ClassFilter>,
    /// Only devices bound to this driver (`none`: devices without a driver).
    #[arg(long, value_name = "NAME")]
    pub driver: Option<String>,
    /// Only devices bound to vfio-pci.
    #[arg(long)]
    pub vfio: bool,
    /// Take names from this pci.ids file [default: /usr/share/misc/pci.ids, else
    /// /usr/share/hwdata/pci.ids, else the database built into udrv].
    #[arg(long, value_name = "FILE")]
    pub pci_ids: Option<PathBuf>,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Runs `udrv list`.
pub fn run(args: ListArgs) -> anyhow::Result<()> {
    let root = args.host.root();
    let usage =
        HostUsage::read(&root).context("reading what the host uses (mounts, swaps, network)")?;
    let names = match &args.pci_ids {
        Some(path) => Some(
            NameDatabase::from_file(path, None)
                .with_context(|| format!("cannot read the pci.ids file {}", path.display()))?,
        ),
        None => None,
    };
    let inventory =
        Inventory::take_with(&root, &usage, names.as_ref()).context("listing PCI devices")?;
    // The claims only annotate the list: an unreadable state file must not hide it.
    let claims: HashMap<PciAddress, ClaimRecord> = StateFile::read(&args.host.state_path())
        .map(|state| state.claims.into_iter().map(|c| (c.address, c)).collect())
        .unwrap_or_default();
    let filter = DeviceFilter {
        class: args.class,
        driver: args.driver.clone(),
        vfio: args.vfio,
    };
    let shown: Vec<&DeviceReport> = inventory
        .devices
        .iter()
        .filter(|r| filter.matches(r))
        .collect();
    let text = if args.json {
        render_json(&shown, &claims)?
    } else {
        render_table(&shown, &inventory, &claims)
    };
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`udrv list | head`) is not an error.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// A device as `--json` prints it: the library's report plus udrv's claim, if any.
#[derive(serde::Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    report: &'a DeviceReport,
    udrv_claim: Option<Claim<'a>>,
}

#[derive(serde::Serialize)]
struct Claim<'a> {
    phase: udriver::claim::ClaimPhase,
    original_driver: &'a Option<String>,
    owner_uid: u32,
}

fn render_json(
    shown: &[&DeviceReport],
    claims: &HashMap<PciAddress, ClaimRecord>,
) -> anyhow::Result<String> {
    let rows: Vec<Row> = shown
        .iter()
        .map(|report| Row {
            report,
            udrv_claim: claims.get(&report.device.address).map(|c| Claim {
                phase: c.phase,
                original_driver: &c.original_driver,
                owner_uid: c.owner_uid,
            }),
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&rows)?;
    text.push('\n');
    Ok(text)
}

fn heading(code: u8) -> String {
    match BaseClass::of(code) {
        Some(base) => base.heading.to_string(),
        None => format!("Other devices (class {code:02x})"),
    }
}

/// The table: one block per base class (in the order of the class codes), one line per
/// device as lspci prints it, then its driver/group/NUMA line and any in-use reasons.
pub fn render_table(
    shown: &[&DeviceReport],
    inventory: &Inventory,
    claims: &HashMap<PciAddress, ClaimRecord>,
) -> String {
    let mut out = String::new();
    if shown.is_empty() {
        out.push_str("no PCI devices match\n");
        return out;
    }
    let mut codes: Vec<u8> = shown.iter().map(|r| r.device.class.base()).collect();
    codes.sort_by_key(|c| {
        BASE_CLASSES
            .iter()
            .position(|b| b.code == *c)
            .unwrap_or(usize::MAX)
    });
    codes.dedup();
    for (i, code) in codes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let title = heading(*code);
        let _ = writeln!(out, "{title}\n{}", "=".repeat(title.chars().count()));
        for report in shown.iter().filter(|r| r.device.class.base() == *code) {
            render_device(&mut out, report, inventory, claims);
        }
    }
    let _ = writeln!(
        out,
        "\n`udrv attach BDF` hands a device to vfio-pci; devices with an \"in use\" line are refused unless --force. Names from {}.",
        inventory.name_source
    );
    out
}

fn render_device(
    out: &mut String,
    report: &DeviceReport,
    inventory: &Inventory,
    claims: &HashMap<PciAddress, ClaimRecord>,
) {
    let d = &report.device;
    let _ = writeln!(out, "{} {}", d.address, report.lspci_line());
    let group = match (&d.iommu_group, &report.group) {
        (Some(id), Some(group)) => {
            let others: Vec<String> = group
                .others(d.address)
                .map(|m| {
                    let driver = inventory
                        .get(m)
                        .and_then(|r| r.device.driver.clone())
                        .unwrap_or_else(|| "no driver".into());
                    format!("{m} ({driver})")
                })
                .collect();
            if others.is_empty() {
                format!("{id}")
            } else {
                format!("{id}, shared with {}", others.join(", "))
            }
        }
        (Some(id), None) => format!("{id}"),
        (None, _) => "none".into(),
    };
    let numa = d
        .numa_node
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    let _ = writeln!(
        out,
        "    driver: {}  iommu group: {group}  numa node: {numa}",
        d.driver.as_deref().unwrap_or("none")
    );
    if let Some(claim) = claims.get(&d.address) {
        let _ = writeln!(
            out,
            "    claimed by udrv ({}; original driver {})",
            claim.phase,
            claim.original_driver.as_deref().unwrap_or("none")
        );
    }
    for reason in &report.in_use {
        let _ = writeln!(out, "    in use: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_this_host_as_table_and_json() {
        let root = SysfsRoot::system();
        let usage = HostUsage::read(&root).unwrap();
        let inventory = Inventory::take_with(&root, &usage, None).unwrap();
        let shown: Vec<&DeviceReport> = inventory.devices.iter().collect();
        let table = render_table(&shown, &inventory, &HashMap::new());
        for report in &shown {
            assert!(table.contains(&format!(
                "{} {}",
                report.device.address,
                report.lspci_line()
            )));
        }
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&shown, &HashMap::new()).unwrap()).unwrap();
        let array = json.as_array().unwrap();
        assert_eq!(array.len(), shown.len());
        for object in array {
            for key in [
                "address",
                "vendor_id",
                "device_id",
                "vendor_name",
                "device_name",
                "subsystem_vendor_name",
                "subsystem_name",
                "class_name",
                "driver",
                "iommu_group",
                "in_use",
                "numa_node",
                "class_id",
                "revision",
                "iommu_group_members",
                "udrv_claim",
            ] {
                assert!(object.get(key).is_some(), "missing {key} in {object}");
            }
            let id = object["vendor_id"].as_str().unwrap();
            assert!(
                id.len() == 4
                    && id
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }

    #[test]
    fn empty_selection_says_so() {
        let inventory = Inventory {
            devices: Vec::new(),
            name_source: udriver::pci::NameSource::Embedded,
        };
        assert_eq!(
            render_table(&[], &inventory, &HashMap::new()),
            "no PCI devices match\n"
        );
    }
}
