//! Network interfaces: which ones sit under a PCI device, and whether one is up, has an
//! address, or carries a route.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::block::pci_components;
use super::{read_optional, InUse};
use crate::pci::{PciAddress, SysfsRoot};

/// `IFF_UP` in `sys/class/net/<if>/flags`.
const IFF_UP: u32 = 0x1;

/// An interface from `sys/class/net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NetInterface {
    pub name: String,
    pub pci_path: Vec<PciAddress>,
    pub admin_up: bool,
    pub oper_up: bool,
}

/// IPv4 addresses by interface. The kernel keeps them outside /proc, so where they
/// come from is pluggable: [`SystemIpv4`] asks the kernel, [`ProcFibTrie`] infers them
/// from a (recorded) /proc.
pub trait Ipv4Source {
    /// Every interface's IPv4 addresses.
    fn ipv4_addresses(&self) -> io::Result<HashMap<String, Vec<Ipv4Addr>>>;
}

/// The running host's addresses, from `getifaddrs(3)` (netlink inside libc; no
/// subprocess).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemIpv4;

impl Ipv4Source for SystemIpv4 {
    fn ipv4_addresses(&self) -> io::Result<HashMap<String, Vec<Ipv4Addr>>> {
        let mut map: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for entry in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            if let Some(sin) = entry.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                map.entry(entry.interface_name.clone())
                    .or_default()
                    .push(sin.ip());
            }
        }
        Ok(map)
    }
}

/// Addresses inferred from `proc/net/fib_trie` (its `/32 host LOCAL` leaves are the
/// host's own addresses) matched to an interface through the longest directly
/// connected prefix in `proc/net/route`. An address without a connected route (added
/// with `noprefixroute`) is not seen: use [`SystemIpv4`] on a live host.
#[derive(Clone, Debug)]
pub struct ProcFibTrie {
    root: SysfsRoot,
}

impl ProcFibTrie {
    /// Reads under `root`.
    pub fn new(root: SysfsRoot) -> Self {
        Self { root }
    }
}

impl Ipv4Source for ProcFibTrie {
    fn ipv4_addresses(&self) -> io::Result<HashMap<String, Vec<Ipv4Addr>>> {
        let mut map: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        let Some(trie) = read_optional(&self.root.join("proc/net/fib_trie"))? else {
            return Ok(map);
        };
        let routes = read_ipv4_routes(&self.root)?;
        for address in local_addresses(&trie) {
            let owner = routes
                .iter()
                .filter(|r| r.gateway.is_unspecified() && r.contains(address))
                .max_by_key(|r| r.prefix_len);
            if let Some(route) = owner {
                let list = map.entry(route.interface.clone()).or_default();
                if !list.contains(&address) {
                    list.push(address);
                }
            }
        }
        Ok(map)
    }
}

/// `/32 host LOCAL` leaves of a fib_trie dump, loopback excluded.
fn local_addresses(trie: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let text = line.trim();
        if let Some(rest) = text.strip_prefix("|-- ") {
            leaf = rest.trim().parse().ok();
        } else if text.starts_with("+-- ") {
            leaf = None;
        } else if text.starts_with("/32 host LOCAL") {
            if let Some(address) = leaf {
                if !address.is_loopback() && !found.contains(&address) {
                    found.push(address);
                }
            }
        }
    }
    found
}

/// One line of `proc/net/route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Ipv4Route {
    pub interface: String,
    pub destination: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u32,
}

impl Ipv4Route {
    fn contains(&self, address: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.prefix_len).unwrap_or(0);
        u32::from(address) & mask == u32::from(self.destination) & mask
    }

    fn describe(&self) -> String {
        let target = if self.prefix_len == 0 {
            "default".to_string()
        } else {
            format!("{}/{}", self.destination, self.prefix_len)
        };
        if self.gateway.is_unspecified() {
            target
        } else {
            format!("{target} via {}", self.gateway)
        }
    }
}

/// /proc/net/route prints each address as the hex of its network-order bytes read
/// as a host-order integer.
fn route_address(hex: &str) -> Option<Ipv4Addr> {
    u32::from_str_radix(hex, 16)
        .ok()
        .map(|raw| Ipv4Addr::from(raw.to_ne_bytes()))
}

pub(super) fn read_ipv4_routes(root: &SysfsRoot) -> io::Result<Vec<Ipv4Route>> {
    let Some(text) = read_optional(&root.join("proc/net/route"))? else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let (Some(destination), Some(gateway), Some(mask)) = (
            route_address(fields[1]),
            route_address(fields[2]),
            route_address(fields[7]),
        ) else {
            continue;
        };
        routes.push(Ipv4Route {
            interface: fields[0].to_string(),
            destination,
            gateway,
            prefix_len: u32::from(mask).count_ones(),
        });
    }
    Ok(routes)
}

fn parse_ipv6(hex: &str) -> Option<Ipv6Addr> {
    (hex.len() == 32)
        .then(|| u128::from_str_radix(hex, 16).ok())
        .flatten()
        .map(Ipv6Addr::from)
}

/// Link-local and multicast addresses come and go with the link: they do not show
/// that anyone configured the interface.
fn is_automatic(address: &Ipv6Addr) -> bool {
    address.is_multicast() || (address.segments()[0] & 0xffc0) == 0xfe80
}

/// Non-link-local IPv6 addresses by interface, from `proc/net/if_inet6`.
fn read_ipv6_addresses(root: &SysfsRoot) -> io::Result<HashMap<String, Vec<Ipv6Addr>>> {
    let mut map: HashMap<String, Vec<Ipv6Addr>> = HashMap::new();
    let Some(text) = read_optional(&root.join("proc/net/if_inet6"))? else {
        return Ok(map);
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            continue;
        }
        if let Some(address) = parse_ipv6(fields[0]) {
            if !is_automatic(&address) && !address.is_loopback() {
                map.entry(fields[5].to_string()).or_default().push(address);
            }
        }
    }
    Ok(map)
}

/// Configured IPv6 routes by interface, from `proc/net/ipv6_route`; link-local,
/// multicast and per-address host routes are left out (they follow the link and the
/// addresses, which are checked on their own).
fn read_ipv6_routes(root: &SysfsRoot) -> io::Result<HashMap<String, Vec<String>>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let Some(text) = read_optional(&root.join("proc/net/ipv6_route"))? else {
        return Ok(map);
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            continue;
        }
        let (Some(destination), Ok(prefix_len)) =
            (parse_ipv6(fields[0]), u32::from_str_radix(fields[1], 16))
        else {
            continue;
        };
        if prefix_len == 128 || is_automatic(&destination) {
            continue;
        }
        let target = if prefix_len == 0 {
            "default".to_string()
        } else {
            format!("{destination}/{prefix_len}")
        };
        map.entry(fields[9].to_string()).or_default().push(target);
    }
    Ok(map)
}

/// Every entry of `sys/class/net` that sits on a PCI device.
pub(super) fn read_interfaces(root: &SysfsRoot) -> io::Result<Vec<NetInterface>> {
    let class = root.join("sys/class/net");
    let entries = match fs::read_dir(&class) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut interfaces = Vec::new();
    for entry in entries {
        let entry = entry?;
        let link = entry.path();
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let pci_path = pci_components(&target);
        if pci_path.is_empty() {
            continue; // lo, bridges, tunnels
        }
        let flags = read_optional(&link.join("flags"))?
            .and_then(|t| u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
            .unwrap_or(0);
        let oper_up = read_optional(&link.join("operstate"))?.is_some_and(|s| s.trim() == "up");
        interfaces.push(NetInterface {
            name: entry.file_name().to_string_lossy().into_owned(),
            pci_path,
            admin_up: flags & IFF_UP != 0,
            oper_up,
        });
    }
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(interfaces)
}

/// What the network stack holds, read once for all devices.
#[derive(Debug, Default)]
pub(super) struct NetState {
    pub interfaces: Vec<NetInterface>,
    pub ipv4: HashMap<String, Vec<Ipv4Addr>>,
    pub ipv6: HashMap<String, Vec<Ipv6Addr>>,
    pub routes: HashMap<String, Vec<String>>,
}

impl NetState {
    pub fn read(root: &SysfsRoot, ipv4: &dyn Ipv4Source) -> io::Result<Self> {
        let interfaces = read_interfaces(root)?;
        if interfaces.is_empty() {
            return Ok(Self::default());
        }
        let mut routes: HashMap<String, Vec<String>> = HashMap::new();
        for route in read_ipv4_routes(root)? {
            routes
                .entry(route.interface.clone())
                .or_default()
                .push(route.describe());
        }
        for (interface, list) in read_ipv6_routes(root)? {
            routes.entry(interface).or_default().extend(list);
        }
        Ok(Self {
            interfaces,
            ipv4: ipv4.ipv4_addresses()?,
            ipv6: read_ipv6_addresses(root)?,
            routes,
        })
    }

    /// Why the interfaces under `address` are in use.
    pub fn reasons(&self, address: PciAddress) -> Vec<InUse> {
        let mut reasons = Vec::new();
        for interface in self
            .interfaces
            .iter()
            .filter(|i| i.pci_path.contains(&address))
        {
            let name = &interface.name;
            if interface.admin_up || interface.oper_up {
                reasons.push(InUse::InterfaceUp {
                    interface: name.clone(),
                });
            }
            let mut addresses: Vec<String> = Vec::new();
            if let Some(list) = self.ipv4.get(name) {
                addresses.extend(list.iter().map(|a| a.to_string()));
            }
            if let Some(list) = self.ipv6.get(name) {
                addresses.extend(list.iter().map(|a| a.to_string()));
            }
            if !addresses.is_empty() {
                reasons.push(InUse::InterfaceAddresses {
                    interface: name.clone(),
                    addresses,
                });
            }
            if let Some(routes) = self.routes.get(name).filter(|r| !r.is_empty()) {
                reasons.push(InUse::InterfaceRoutes {
                    interface: name.clone(),
                    routes: routes.clone(),
                });
            }
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded on a development VM (eth0 192.0.2.2/24, default via 192.0.2.1).
    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.2
              /32 host LOCAL
";
    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn fib_trie_local_leaves_are_attributed_through_connected_routes() {
        assert_eq!(local_addresses(FIB_TRIE), vec![Ipv4Addr::new(192, 0, 2, 2)]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        std::fs::write(dir.path().join("proc/net/fib_trie"), FIB_TRIE).unwrap();
        std::fs::write(dir.path().join("proc/net/route"), ROUTE).unwrap();
        let root = SysfsRoot::new(dir.path());
        let map = ProcFibTrie::new(root.clone()).ipv4_addresses().unwrap();
        assert_eq!(map.get("eth0"), Some(&vec![Ipv4Addr::new(192, 0, 2, 2)]));
        let routes = read_ipv4_routes(&root).unwrap();
        let described: Vec<String> = routes.iter().map(Ipv4Route::describe).collect();
        assert_eq!(described, ["default via 192.0.2.1", "192.0.2.0/24"]);
    }

    #[test]
    fn ipv6_addresses_skip_link_local() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        std::fs::write(
            dir.path().join("proc/net/if_inet6"),
            "00000000000000000000000000000001 01 80 10 80       lo\n\
             fd000000000000000000000000000002 04 40 00 82     eth0\n\
             fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n",
        )
        .unwrap();
        let map = read_ipv6_addresses(&SysfsRoot::new(dir.path())).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["eth0"], vec!["fd00::2".parse::<Ipv6Addr>().unwrap()]);
    }

    #[test]
    fn ipv6_routes_keep_only_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/net")).unwrap();
        std::fs::write(
            dir.path().join("proc/net/ipv6_route"),
            "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             fd000000000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001     eth0\n\
             ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth0\n\
             00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n",
        )
        .unwrap();
        let map = read_ipv6_routes(&SysfsRoot::new(dir.path())).unwrap();
        assert_eq!(map["eth0"], vec!["fd00::/64".to_string()]);
        assert_eq!(map["eth1"], vec!["default".to_string()]);
    }

    #[test]
    fn system_ipv4_source_answers_on_this_host() {
        // Every host has at least loopback's 127.0.0.1.
        let map = SystemIpv4.ipv4_addresses().unwrap();
        assert!(map.values().flatten().any(|a| a.is_loopback()), "{map:?}");
    }
}
