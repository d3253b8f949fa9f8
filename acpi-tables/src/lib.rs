//! ACPI tables that describe PCI root bridges to a guest: MCFG for ECAM and a DSDT with
//! each root bridge's resources and interrupt routing, plus the RSDP, XSDT, FADT (and FACS)
//! and MADT a PC guest needs to find and use them.
//!
//! ```
//! use acpi_tables::{Description, TableKind, Tables};
//!
//! let tables = Tables::build(&Description::default()).unwrap();
//! let dsdt = tables.get(TableKind::Dsdt).unwrap();
//! assert_eq!(&dsdt.bytes()[..4], b"DSDT");
//! ```
//!
//! The encoding of headers, the RSDP, XSDT, FADT, FACS and MCFG, and of most AML, is rust-vmm's
//! `acpi_tables`; this crate adds what that lacks (see [`aml`] and the MADT entries).

#![forbid(unsafe_code)]

pub mod aml;
pub mod description;
mod dsdt;
mod error;
mod facs;
mod fadt;
mod madt;
mod mcfg;
mod oem;
mod rsdp;
mod tables;
mod xsdt;

pub use description::{
    AcpiHardware, BootArch, BusRange, Description, FixedHardware, InterruptOverride, IntxPin,
    IntxRoute, IntxRouting, IoApic, Layout, LocalApicNmi, OscControl, Polarity, ResetRegister,
    RootBridge, Trigger, Window,
};
pub use error::Error;
pub use oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
pub use tables::{Table, TableKind, Tables};
