//! The virtual root bus: [`VirtualBus`] and the [`PciFunction`](function::PciFunction)
//! trait every function on it implements, the host bridge at 00.0, the two config
//! mechanisms (ECAM and the 0xCF8/0xCFC ports), function addresses ([`devfn`]) and the
//! plain [`BusDescription`](description::BusDescription) firmware tables are built from.

pub mod config_ports;
pub mod description;
pub mod devfn;
pub mod ecam;
pub mod function;
pub mod host_bridge;
mod virtual_bus;

pub use virtual_bus::{
    AccessTarget, BarStatus, BusConfig, BusError, BusEvent, VirtualBus, MAX_EVENTS,
};
