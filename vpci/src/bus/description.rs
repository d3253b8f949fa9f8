//! `BusDescription`: the virtual bus as plain data, for whoever describes it to the
//! guest (ACPI MCFG/DSDT via `acpi-tables`, a device tree, a VMM's own tables).

use crate::bar::window::AddressWindow;
use crate::interrupt::intx::IntxRoute;

/// What a guest's firmware tables must say about the virtual root bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusDescription {
    /// PCI segment (domain) number.
    pub segment: u16,
    /// Bus numbers the root bridge decodes, both included; functions live on the first.
    pub first_bus: u8,
    /// Last bus number decoded (the buses after the first are empty).
    pub last_bus: u8,
    /// The ECAM area of `first_bus..=last_bus` (1 MiB per bus, starting at `first_bus`).
    pub ecam: AddressWindow,
    /// IO ports the bridge forwards, if the guest has IO ports.
    pub io: Option<AddressWindow>,
    /// Memory window below 4 GiB the bridge forwards.
    pub mem32: AddressWindow,
    /// Memory window for 64-bit BARs, if there is one.
    pub mem64: Option<AddressWindow>,
    /// Whether the legacy config ports 0xCF8-0xCFF reach this bus.
    pub config_ports: bool,
    /// Every slot 0..32 and pin A-D, with its GSI.
    pub intx: Vec<IntxRoute>,
}

fn window(w: AddressWindow) -> acpi_tables::Window {
    acpi_tables::Window::new(w.base, w.size)
}

impl From<&BusDescription> for acpi_tables::RootBridge {
    /// The root bridge `acpi-tables` builds MCFG and DSDT entries from, with explicit
    /// `_PRT` routes and the default `_OSC` policy.
    fn from(d: &BusDescription) -> Self {
        acpi_tables::RootBridge {
            segment: d.segment,
            buses: acpi_tables::BusRange {
                first: d.first_bus,
                last: d.last_bus,
            },
            ecam: window(d.ecam),
            io: d.io.map(window),
            mem32: Some(window(d.mem32)),
            mem64: d.mem64.map(window),
            config_ports: d.config_ports,
            intx: acpi_tables::IntxRouting::Explicit(d.intx.clone()),
            osc: acpi_tables::OscControl::default(),
        }
    }
}
