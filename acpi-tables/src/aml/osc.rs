//! `_OSC` for a PCI host bridge (PCI Firmware spec 3.3, section 4.5): the OS asks for control
//! of PCIe features; the platform grants the subset its description allows.

use super::encode;
use rvmm_acpi_tables::aml::{
    And, Arg, CreateDWordField, Else, Equal, If, LessThan, Local, Method, NotEqual, Or, Path,
    Return, SizeOf, Store, Uuid, ONE,
};

/// The `_OSC` UUID for PCI/PCIe host bridges.
pub const PCI_HOST_BRIDGE_UUID: &str = "33db4d5b-1ff7-401c-9657-7441c03dd766";

/// Status bits the method sets in the first capabilities DWORD.
pub const OSC_FAILURE: u32 = 1 << 1;
/// The UUID is not the PCI host bridge one.
pub const UNRECOGNIZED_UUID: u32 = 1 << 2;
/// The revision is not one this method knows.
pub const UNRECOGNIZED_REVISION: u32 = 1 << 3;
/// Some control bits asked for were not granted.
pub const CAPABILITIES_MASKED: u32 = 1 << 4;

/// The `_OSC` method granting the control bits in `granted`:
///
/// ```text
/// Method (_OSC, 4, Serialized) {
///     CreateDWordField (Arg3, 0, CDW1)
///     If (Arg0 == ToUUID (PCI host bridge)) {
///         If (SizeOf (Arg3) < 12) { CDW1 |= OSC_FAILURE; Return (Arg3) }
///         CreateDWordField (Arg3, 8, CDW3)
///         Local0 = CDW3 & granted
///         If (Arg1 != 1) { CDW1 |= UNRECOGNIZED_REVISION }
///         If (CDW3 != Local0) { CDW1 |= CAPABILITIES_MASKED }
///         CDW3 = Local0
///     } Else { CDW1 |= UNRECOGNIZED_UUID }
///     Return (Arg3)
/// }
/// ```
///
/// Serialized because it creates named fields: two concurrent calls would collide.
pub fn pci_host_bridge_osc(granted: u32) -> Vec<u8> {
    let (cdw1, cdw3, arg3, local0) = (Path::new("CDW1"), Path::new("CDW3"), Arg(3), Local(0));
    let cdw1_target = Path::new("CDW1");
    let cdw3_target = Path::new("CDW3");
    let (failure, bad_uuid, bad_revision, masked) = (
        OSC_FAILURE,
        UNRECOGNIZED_UUID,
        UNRECOGNIZED_REVISION,
        CAPABILITIES_MASKED,
    );
    let (zero_offset, control_offset, control_end) = (0u8, 8u8, 12u8);

    let create_cdw1 = CreateDWordField::new(&cdw1_target, &arg3, &zero_offset);
    let create_cdw3 = CreateDWordField::new(&cdw3_target, &arg3, &control_offset);
    let uuid = Uuid::new(PCI_HOST_BRIDGE_UUID);
    let is_pci = Equal::new(&Arg(0), &uuid);

    let size = SizeOf::new(&arg3);
    let too_short = LessThan::new(&size, &control_end);
    let flag_failure = Or::new(&cdw1, &cdw1, &failure);
    let return_arg3 = Return::new(&arg3);
    let check_size = If::new(&too_short, vec![&flag_failure, &return_arg3]);

    let grant = And::new(&local0, &cdw3, &granted);
    let other_revision = NotEqual::new(&Arg(1), &ONE);
    let flag_revision = Or::new(&cdw1, &cdw1, &bad_revision);
    let check_revision = If::new(&other_revision, vec![&flag_revision]);
    let reduced = NotEqual::new(&cdw3, &local0);
    let flag_masked = Or::new(&cdw1, &cdw1, &masked);
    let check_masked = If::new(&reduced, vec![&flag_masked]);
    let store_granted = Store::new(&cdw3, &local0);
    let on_pci = If::new(
        &is_pci,
        vec![
            &check_size,
            &create_cdw3,
            &grant,
            &check_revision,
            &check_masked,
            &store_granted,
        ],
    );
    let flag_uuid = Or::new(&cdw1, &cdw1, &bad_uuid);
    let otherwise = Else::new(vec![&flag_uuid]);

    encode(&Method::new(
        "_OSC".into(),
        4,
        true,
        vec![&create_cdw1, &on_pci, &otherwise, &return_arg3],
    ))
}
