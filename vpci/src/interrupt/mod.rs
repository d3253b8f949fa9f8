//! Interrupts a function raises: the MSI and MSI-X capabilities kept virtually
//! ([`msi`], [`msix`]), the routing changes a guest's programming of them produces
//! ([`routing`]), and the root bus's legacy INTx wiring ([`intx`]).

pub mod intx;
pub mod msi;
pub mod msix;
pub mod routing;
