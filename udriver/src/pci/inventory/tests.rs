use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::pci::fixture::{DeviceSpec, FakeHost};
use crate::pci::in_use::Ipv4Source;

struct NoIpv4;
impl Ipv4Source for NoIpv4 {
    fn ipv4_addresses(&self) -> std::io::Result<HashMap<String, Vec<std::net::Ipv4Addr>>> {
        Ok(HashMap::new())
    }
}

/// The rig's devices, with eth0 up on the first NIC and a filesystem of the AHCI
/// disk mounted.
fn rig_like_host() -> FakeHost {
    let host = FakeHost::rig();
    host.add_interface("0000:00:02.0", "eth0", true);
    host.add_disk("0000:00:06.0", "sda", (8, 0), &[("sda1", (8, 1))]);
    host.mount((8, 1), "sda1", "/mnt");
    host
}

#[test]
fn json_has_the_documented_fields() {
    let host = rig_like_host();
    let root = host.root();
    let usage = HostUsage::read_with(&root, &NoIpv4).unwrap();
    let names = NameDatabase::embedded();
    let inventory = Inventory::take_with(&root, &usage, Some(&names)).unwrap();
    let json = serde_json::to_value(&inventory.devices).unwrap();
    let e1000 = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == "0000:00:02.0")
        .unwrap();
    assert_eq!(e1000["vendor_id"], "8086");
    assert_eq!(e1000["device_id"], "100e");
    assert_eq!(e1000["vendor_name"], "Intel Corporation");
    assert_eq!(e1000["device_name"], "82540EM Gigabit Ethernet Controller");
    assert_eq!(e1000["subsystem_vendor_name"], "Red Hat, Inc.");
    assert_eq!(e1000["subsystem_name"], "QEMU Virtual Machine");
    assert_eq!(e1000["class_name"], "Ethernet controller");
    assert_eq!(e1000["class_id"], "0200");
    assert_eq!(e1000["revision"], "03");
    assert_eq!(e1000["driver"], "e1000");
    assert_eq!(e1000["iommu_group"], 3);
    assert_eq!(
        e1000["iommu_group_members"],
        serde_json::json!(["0000:00:02.0"])
    );
    assert_eq!(e1000["numa_node"], serde_json::Value::Null);
    assert!(e1000["in_use"]
        .as_str()
        .unwrap()
        .starts_with("network interface eth0 is up"));

    let host_bridge = &json[0];
    assert_eq!(host_bridge["iommu_group"], serde_json::Value::Null);
    assert_eq!(host_bridge["in_use"], serde_json::Value::Null);
    assert_eq!(host_bridge["driver"], serde_json::Value::Null);

    let lpc = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == "0000:00:1f.0")
        .unwrap();
    assert_eq!(
        lpc["iommu_group_members"],
        serde_json::json!(["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"])
    );

    let ahci = inventory.get("0000:00:06.0".parse().unwrap()).unwrap();
    assert_eq!(
        ahci.in_use_text().unwrap(),
        "sda1 is mounted on /mnt; unmount it first (umount /mnt)"
    );
}

#[test]
fn filters_select_by_class_driver_and_vfio() {
    let host = rig_like_host();
    host.add(
        DeviceSpec::new("0000:00:03.0", 0x8086, 0x100e, 0x020000)
            .driver("vfio-pci")
            .group(4),
    );
    let root = host.root();
    let usage = HostUsage::read_with(&root, &NoIpv4).unwrap();
    let names = NameDatabase::embedded();
    let inventory = Inventory::take_with(&root, &usage, Some(&names)).unwrap();
    let pick = |filter: &DeviceFilter| -> Vec<String> {
        inventory
            .devices
            .iter()
            .filter(|r| filter.matches(r))
            .map(|r| r.device.address.to_string())
            .collect()
    };
    let net = DeviceFilter {
        class: Some("net".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(pick(&net), ["0000:00:02.0", "0000:00:03.0", "0000:00:04.0"]);
    let storage = DeviceFilter {
        class: Some("storage".parse().unwrap()),
        driver: Some("ahci".into()),
        ..Default::default()
    };
    assert_eq!(pick(&storage), ["0000:00:06.0", "0000:00:1f.2"]);
    let vfio = DeviceFilter {
        vfio: true,
        ..Default::default()
    };
    assert_eq!(pick(&vfio), ["0000:00:03.0"]);
    let unbound = DeviceFilter {
        driver: Some("none".into()),
        ..Default::default()
    };
    assert_eq!(pick(&unbound), ["0000:00:00.0"]);
}

fn lspci() -> Option<&'static str> {
    [
        "/usr/bin/lspci",
        "/usr/sbin/lspci",
        "/bin/lspci",
        "/sbin/lspci",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

/// `lspci -vmm -nn` records keyed by slot, each a list of (tag, value).
fn lspci_vmm(args: &[&str]) -> HashMap<String, Vec<(String, String)>> {
    let output = Command::new(lspci().unwrap())
        .args(["-vmm", "-nn", "-D"])
        .args(args)
        .output()
        .expect("run lspci");
    assert!(
        output.status.success(),
        "lspci failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut records = HashMap::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let fields: Vec<(String, String)> = block
            .lines()
            .filter_map(|l| l.split_once(":\t"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let slot = fields.iter().find(|(k, _)| k == "Slot").unwrap().1.clone();
        records.insert(slot, fields);
    }
    records
}

/// What `lspci -vmm -nn` prints for a report, built from our names.
fn expected_vmm(report: &DeviceReport) -> Vec<(String, String)> {
    let d = &report.device;
    let n = &report.names;
    let named = |name: &Option<String>, id: String, unknown: &str| match name {
        Some(name) => format!("{name} [{id}]"),
        None => format!("{unknown} [{id}]"),
    };
    let mut fields = vec![
        ("Slot".to_string(), d.address.to_string()),
        (
            "Class".to_string(),
            named(
                &n.class,
                format!("{:04x}", d.class.class_and_sub()),
                "Class",
            ),
        ),
        (
            "Vendor".to_string(),
            named(&n.vendor, format!("{:04x}", d.vendor_id), "Vendor"),
        ),
        (
            "Device".to_string(),
            named(&n.device, format!("{:04x}", d.device_id), "Device"),
        ),
    ];
    if d.subsystem_vendor_id != 0 && d.subsystem_vendor_id != 0xffff {
        fields.push((
            "SVendor".to_string(),
            named(
                &n.subsystem_vendor,
                format!("{:04x}", d.subsystem_vendor_id),
                "Unknown vendor",
            ),
        ));
        fields.push((
            "SDevice".to_string(),
            named(
                &n.subsystem,
                format!("{:04x}", d.subsystem_device_id),
                "Device",
            ),
        ));
    }
    if d.revision != 0 {
        fields.push(("Rev".to_string(), format!("{:02x}", d.revision)));
    }
    fields.push(("ProgIf".to_string(), format!("{:02x}", d.class.prog_if())));
    if let Some(node) = d.numa_node {
        fields.push(("NUMANode".to_string(), node.to_string()));
    }
    if let Some(group) = d.iommu_group {
        fields.push(("IOMMUGroup".to_string(), group.to_string()));
    }
    fields
}

fn compare_with_lspci(inventory: &Inventory, lspci_args: &[&str]) {
    let records = lspci_vmm(lspci_args);
    assert_eq!(
        records.len(),
        inventory.devices.len(),
        "device count differs from lspci"
    );
    for report in &inventory.devices {
        let ours = expected_vmm(report);
        let theirs = records
            .get(&report.device.address.to_string())
            .unwrap_or_else(|| panic!("lspci lacks {}", report.device.address));
        // lspci -vmm may add tags we do not model (PhySlot, DTNode): compare ours.
        for (tag, value) in &ours {
            let found = theirs.iter().find(|(k, _)| k == tag).map(|(_, v)| v);
            assert_eq!(found, Some(value), "{}: {tag}", report.device.address);
        }
        for (tag, _) in theirs {
            assert!(
                ours.iter().any(|(k, _)| k == tag) || tag == "PhySlot" || tag == "DTNode",
                "{}: lspci prints {tag}, we do not",
                report.device.address
            );
        }
    }
}

#[test]
fn names_match_lspci_on_this_host() {
    let Some(lspci_path) = lspci() else {
        eprintln!("lspci not installed: comparison skipped");
        return;
    };
    let root = SysfsRoot::system();
    let usage = HostUsage::read(&root).unwrap();
    let inventory = Inventory::take_with(&root, &usage, None).unwrap();
    let NameSource::File(ids) = &inventory.name_source else {
        eprintln!("no system pci.ids: lspci would print numbers only; comparison skipped");
        return;
    };
    let ids = ids.to_str().unwrap().to_string();
    compare_with_lspci(&inventory, &["-i", &ids, "-O", "hwdb.disable=1"]);

    // And the one-line `lspci -nn -D` form.
    let output = Command::new(lspci_path)
        .args(["-nn", "-D", "-i", &ids, "-O", "hwdb.disable=1"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let ours: Vec<String> = inventory
        .devices
        .iter()
        .map(|r| format!("{} {}", r.device.address, r.lspci_line()))
        .collect();
    let theirs: Vec<&str> = text.lines().collect();
    assert_eq!(ours, theirs);
}

/// A pci.ids with the cases lspci's naming rules distinguish.
const EDGE_IDS: &str = "\
8086  Intel Corporation
\t100e  82540EM Gigabit Ethernet Controller
\t\t8086 001e  PRO/1000 MT Desktop Adapter
\t2922  82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode]
\t7010  82371SB PIIX3 IDE [Natoma/Triton II]
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
\t1045  Virtio 1.0 memory balloon
S 1af4
\t1100  QEMU Virtual Machine
C 01  Mass storage controller
\t01  IDE interface
\t06  SATA controller
\t\t01  AHCI 1.0
C 02  Network controller
\t00  Ethernet controller
C 06  Bridge
\t00  Host bridge
C ff  Unassigned class
";

#[test]
fn naming_rules_match_lspci_on_a_recorded_tree() {
    if lspci().is_none() {
        eprintln!("lspci not installed: comparison skipped");
        return;
    }
    let host = FakeHost::new();
    let cases = [
        // per-device subsystem entry
        DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000)
            .subsystem(0x8086, 0x001e)
            .revision(3),
        // generic S subsystem
        DeviceSpec::new("0000:00:03.0", 0x8086, 0x100e, 0x020000).subsystem(0x1af4, 0x1100),
        // subsystem == device
        DeviceSpec::new("0000:00:04.0", 0x1af4, 0x1045, 0xff0000)
            .subsystem(0x1af4, 0x1045)
            .revision(1),
        // unknown device of a known vendor, no subsystem, class name from base class only
        DeviceSpec::new("0000:00:05.0", 0x8086, 0x0d57, 0x068000),
        // unknown vendor, unknown subsystem vendor, unknown class
        DeviceSpec::new("0000:00:06.0", 0x5853, 0x0001, 0xee0000).subsystem(0x5853, 0x0002),
        // subsystem vendor 0xffff: lspci shows none
        DeviceSpec::new("0000:00:07.0", 0x8086, 0x2922, 0x010601)
            .subsystem(0xffff, 0xffff)
            .revision(2),
        // IDE with a composed prog-if, numa node
        DeviceSpec::new("0000:00:08.0", 0x8086, 0x7010, 0x01018a)
            .subsystem(0x1af4, 0x1100)
            .numa(0),
        // known subsystem vendor, unknown subsystem
        DeviceSpec::new("0000:00:09.0", 0x8086, 0x100e, 0x020000)
            .subsystem(0x8086, 0x9999)
            .group(5),
    ];
    for case in cases {
        host.add(case);
    }
    host.write("usr/share/misc/pci.ids", EDGE_IDS);
    let root = host.root();
    let usage = HostUsage::read_with(&root, &NoIpv4).unwrap();
    let inventory = Inventory::take_with(&root, &usage, None).unwrap();
    assert!(matches!(inventory.name_source, NameSource::File(_)));
    let ids = host.path().join("usr/share/misc/pci.ids");
    let sysfs = host.path().join("sys/bus/pci");
    compare_with_lspci(
        &inventory,
        &[
            "-i",
            ids.to_str().unwrap(),
            "-A",
            "linux-sysfs",
            "-O",
            &format!("sysfs.path={}", sysfs.display()),
            "-O",
            "hwdb.disable=1",
        ],
    );
}
