//! AML that rust-vmm's `acpi_tables` does not provide ready-made: address-space descriptors
//! that take any 64-bit range, the `_PRT` routing package and the PCI host bridge `_OSC`.

mod address_space;
mod osc;
mod prt;

pub use address_space::{AddressSpace, ResourceKind, Usage};
pub use osc::{
    pci_host_bridge_osc, CAPABILITIES_MASKED, OSC_FAILURE, PCI_HOST_BRIDGE_UUID,
    UNRECOGNIZED_REVISION, UNRECOGNIZED_UUID,
};
pub use prt::routing_table;

use rvmm_acpi_tables::{Aml, AmlSink};

/// AML already encoded, to nest among other objects.
pub struct Encoded(pub Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// The AML bytes of `object`.
pub fn encode(object: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    object.to_aml_bytes(&mut bytes);
    bytes
}
