use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use super::*;
use crate::pci::fixture::{DeviceSpec, FakeHost};

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn device(host: &FakeHost, s: &str) -> PciDevice {
    PciDevice::read(&host.root(), addr(s)).unwrap()
}

/// Fixed IPv4 addresses, standing in for the kernel.
struct Fixed(HashMap<String, Vec<Ipv4Addr>>);

impl Ipv4Source for Fixed {
    fn ipv4_addresses(&self) -> io::Result<HashMap<String, Vec<Ipv4Addr>>> {
        Ok(self.0.clone())
    }
}

fn no_ipv4() -> Fixed {
    Fixed(HashMap::new())
}

#[test]
fn mounted_partition_names_disk_mount_point_and_fix() {
    let host = FakeHost::new();
    host.add(
        DeviceSpec::new("0000:00:06.0", 0x8086, 0x2922, 0x010601)
            .driver("ahci")
            .group(6),
    );
    host.add_disk(
        "0000:00:06.0",
        "sda",
        (8, 0),
        &[("sda1", (8, 1)), ("sda2", (8, 2))],
    );
    host.mount((8, 1), "sda1", "/mnt/data");
    let usage = HostUsage::read_with(&host.root(), &no_ipv4()).unwrap();
    let reasons = usage.reasons(&device(&host, "0000:00:06.0"));
    assert_eq!(
        reasons,
        vec![InUse::Mounted {
            block: "sda1".into(),
            mount_points: vec!["/mnt/data".into()]
        }]
    );
    assert_eq!(
        reasons[0].to_string(),
        "sda1 is mounted on /mnt/data; unmount it first (umount /mnt/data)"
    );
}

#[test]
fn mount_found_by_source_when_device_numbers_differ() {
    // btrfs reports an anonymous device number in mountinfo; the source still names
    // the partition.
    let host = FakeHost::new();
    host.add(DeviceSpec::new("0000:00:06.0", 0x8086, 0x2922, 0x010601).driver("ahci"));
    host.add_disk("0000:00:06.0", "sda", (8, 0), &[("sda1", (8, 1))]);
    host.mount((0, 45), "sda1", "/srv/my\\040files");
    let usage = HostUsage::read_with(&host.root(), &no_ipv4()).unwrap();
    let reasons = usage.reasons(&device(&host, "0000:00:06.0"));
    assert_eq!(
        reasons,
        vec![InUse::Mounted {
            block: "sda1".into(),
            mount_points: vec!["/srv/my files".into()]
        }]
    );
}

#[test]
fn swap_and_holders_are_in_use_and_other_devices_are_not() {
    let host = FakeHost::new();
    host.add(DeviceSpec::new("0000:00:06.0", 0x8086, 0x2922, 0x010601).driver("ahci"));
    host.add(DeviceSpec::new("0000:00:05.0", 0x8086, 0x7010, 0x010180).driver("ata_piix"));
    host.add_disk(
        "0000:00:06.0",
        "sda",
        (8, 0),
        &[("sda1", (8, 1)), ("sda2", (8, 2))],
    );
    host.add_holder("sda1", "dm-0");
    host.append(
        "proc/swaps",
        "/dev/sda2                               partition\t1048572\t\t0\t\t-2",
    );
    let usage = HostUsage::read_with(&host.root(), &no_ipv4()).unwrap();
    let reasons = usage.reasons(&device(&host, "0000:00:06.0"));
    assert_eq!(
        reasons,
        vec![
            InUse::Held {
                block: "sda1".into(),
                holders: vec!["dm-0".into()]
            },
            InUse::Swap {
                block: "sda2".into()
            },
        ]
    );
    assert!(reasons[0].to_string().contains("held by dm-0"));
    assert!(reasons[1].to_string().contains("swapoff /dev/sda2"));
    assert!(usage.reasons(&device(&host, "0000:00:05.0")).is_empty());
}

#[test]
fn up_nic_with_address_and_routes() {
    let host = FakeHost::new();
    host.add(
        DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000)
            .driver("e1000")
            .group(3),
    );
    host.add(
        DeviceSpec::new("0000:00:03.0", 0x8086, 0x100e, 0x020000)
            .driver("e1000")
            .group(4),
    );
    host.add_interface("0000:00:02.0", "eth0", true);
    host.add_interface("0000:00:03.0", "eth1", false);
    host.write(
        "proc/net/route",
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
         eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    );
    host.write(
        "proc/net/if_inet6",
        "fe8000000000000000fc00fffe000001 04 40 20 80     eth1\n",
    );
    let ipv4 = Fixed([("eth0".to_string(), vec![Ipv4Addr::new(192, 0, 2, 2)])].into());
    let usage = HostUsage::read_with(&host.root(), &ipv4).unwrap();
    let reasons = usage.reasons(&device(&host, "0000:00:02.0"));
    assert_eq!(
        reasons,
        vec![
            InUse::InterfaceUp {
                interface: "eth0".into()
            },
            InUse::InterfaceAddresses {
                interface: "eth0".into(),
                addresses: vec!["192.0.2.2".into()]
            },
            InUse::InterfaceRoutes {
                interface: "eth0".into(),
                routes: vec!["default via 192.0.2.1".into(), "192.0.2.0/24".into()]
            },
        ]
    );
    assert_eq!(
        reasons[0].to_string(),
        "network interface eth0 is up; take it down first (ip link set eth0 down)"
    );
    // A down interface with only a link-local address is free.
    assert!(usage.reasons(&device(&host, "0000:00:03.0")).is_empty());
}

#[test]
fn down_nic_that_still_has_an_address_is_in_use() {
    let host = FakeHost::new();
    host.add(DeviceSpec::new("0000:00:03.0", 0x8086, 0x100e, 0x020000).driver("e1000"));
    host.add_interface("0000:00:03.0", "eth1", false);
    host.write(
        "proc/net/if_inet6",
        "fd000000000000000000000000000002 04 40 00 80     eth1\n",
    );
    let usage = HostUsage::read_with(&host.root(), &no_ipv4()).unwrap();
    let reasons = usage.reasons(&device(&host, "0000:00:03.0"));
    assert_eq!(
        reasons,
        vec![InUse::InterfaceAddresses {
            interface: "eth1".into(),
            addresses: vec!["fd00::2".into()]
        }]
    );
}

#[test]
fn recorded_tree_infers_ipv4_from_fib_trie() {
    let host = FakeHost::new();
    host.add(DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000).driver("e1000"));
    host.add_interface("0000:00:02.0", "eth0", false);
    host.write(
        "proc/net/route",
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n",
    );
    host.write(
        "proc/net/fib_trie",
        "Local:\n  +-- 10.0.0.0/8 2 0 2\n     |-- 10.0.0.7\n        /32 host LOCAL\n",
    );
    let usage = HostUsage::read(&host.root()).unwrap();
    let reasons = usage.reasons(&device(&host, "0000:00:02.0"));
    assert!(reasons.contains(&InUse::InterfaceAddresses {
        interface: "eth0".into(),
        addresses: vec!["10.0.0.7".into()]
    }));
}

#[test]
fn boot_display_is_in_use() {
    let host = FakeHost::new();
    host.add(
        DeviceSpec::new("0000:00:01.0", 0x1234, 0x1111, 0x030000)
            .driver("bochs-drm")
            .boot_vga(true),
    );
    host.add(DeviceSpec::new("0000:00:07.0", 0x1234, 0x1111, 0x030000).boot_vga(false));
    let usage = HostUsage::read_with(&host.root(), &no_ipv4()).unwrap();
    assert_eq!(
        usage.reasons(&device(&host, "0000:00:01.0")),
        vec![InUse::BootDisplay]
    );
    assert!(usage.reasons(&device(&host, "0000:00:07.0")).is_empty());
}

#[test]
fn split_group_names_members_on_host_drivers() {
    // q35: LPC, the built-in AHCI and SMBus share group 9.
    let host = FakeHost::new();
    host.add(
        DeviceSpec::new("0000:00:1f.0", 0x8086, 0x2918, 0x060100)
            .driver("lpc_ich")
            .group(9),
    );
    host.add(
        DeviceSpec::new("0000:00:1f.2", 0x8086, 0x2922, 0x010601)
            .driver("ahci")
            .group(9),
    );
    host.add(
        DeviceSpec::new("0000:00:1f.3", 0x8086, 0x2930, 0x0c0500)
            .driver("i801_smbus")
            .group(9),
    );
    host.add(
        DeviceSpec::new("0000:00:1e.0", 0x8086, 0x244e, 0x060400)
            .driver("pcieport")
            .group(9)
            .bridge(),
    );
    let root = host.root();
    let devices = PciDevice::scan(&root).unwrap();
    let group = crate::pci::IommuGroup::read(&root, 9).unwrap();
    let ahci = device(&host, "0000:00:1f.2");
    let reason = group_blockers(&ahci, &group.members, &devices, &HashSet::new()).unwrap();
    assert_eq!(
        reason.to_string(),
        "IOMMU group 9 also holds 0000:00:1f.0 (lpc_ich) and 0000:00:1f.3 (i801_smbus), still bound to host drivers; detach them too or pass --group to claim the whole group"
    );
    // Claiming the whole group (bridges need not be): nothing blocks.
    let claiming: HashSet<PciAddress> = [
        addr("0000:00:1f.0"),
        addr("0000:00:1f.2"),
        addr("0000:00:1f.3"),
    ]
    .into();
    assert_eq!(
        group_blockers(&ahci, &group.members, &devices, &claiming),
        None
    );
    // A device alone in its group is never blocked.
    host.add(
        DeviceSpec::new("0000:00:02.0", 0x8086, 0x100e, 0x020000)
            .driver("e1000")
            .group(3),
    );
    let devices = PciDevice::scan(&root).unwrap();
    let alone = crate::pci::IommuGroup::read(&root, 3).unwrap();
    assert_eq!(
        group_blockers(
            &device(&host, "0000:00:02.0"),
            &alone.members,
            &devices,
            &HashSet::new()
        ),
        None
    );
}

#[test]
fn group_members_without_driver_or_on_vfio_do_not_block() {
    let host = FakeHost::new();
    host.add(DeviceSpec::new("0000:00:1f.0", 0x8086, 0x2918, 0x060100).group(9));
    host.add(
        DeviceSpec::new("0000:00:1f.2", 0x8086, 0x2922, 0x010601)
            .driver("ahci")
            .group(9),
    );
    host.add(
        DeviceSpec::new("0000:00:1f.3", 0x8086, 0x2930, 0x0c0500)
            .driver("vfio-pci")
            .group(9),
    );
    host.add(
        DeviceSpec::new("0000:00:1f.4", 0x8086, 0x2930, 0x0c0500)
            .driver("pci-stub")
            .group(9),
    );
    let root = host.root();
    let devices = PciDevice::scan(&root).unwrap();
    let group = crate::pci::IommuGroup::read(&root, 9).unwrap();
    assert_eq!(
        group_blockers(
            &device(&host, "0000:00:1f.2"),
            &group.members,
            &devices,
            &HashSet::new()
        ),
        None
    );
}

#[test]
fn this_host_reads_without_error() {
    // Read-only on the real host: whatever it holds, reading must succeed.
    let root = SysfsRoot::system();
    let usage = HostUsage::read(&root).unwrap();
    for device in PciDevice::scan(&root).unwrap() {
        let _ = usage.reasons(&device);
    }
}
