//! Interrupts a function raises: the MSI and MSI-X capabilities kept virtually
//! ([`msi`], [`msix`]) and the one state a function keeps them in, with the MSI-X
//! table and PBA it traps in its BARs ([`message`]); the routing changes a guest's
//! programming of them produces ([`routing`]); and the root bus's legacy INTx wiring
//! ([`intx`]).

pub mod intx;
pub mod message;
pub mod msi;
pub mod msix;
pub mod routing;
