//! The DSDT: one `PNP0A08` host bridge device per root bridge under `\_SB`, each with its
//! resources (`_CRS`), INTx routing (`_PRT`) and `_OSC`, and a `PNP0C02` child that reserves
//! its ECAM area; `\_S5` when the platform has fixed hardware.

use crate::aml::{
    encode, pci_host_bridge_osc, routing_table, AddressSpace, Encoded, ResourceKind, Usage,
};
use crate::description::{AcpiHardware, Description, RootBridge, Window};
use crate::oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::Error;
use rvmm_acpi_tables::aml::{Device, EISAName, Name, Package, ResourceTemplate, Scope, IO, ZERO};
use rvmm_acpi_tables::sdt::Sdt;
use rvmm_acpi_tables::Aml;

/// DSDT revision 2: integers are 64 bits, so QWord values survive arithmetic.
const REVISION: u8 = 2;
const HEADER_LEN: u32 = 36;

/// The DSDT bytes for `d` (already validated).
pub(crate) fn build(d: &Description) -> Result<Vec<u8>, Error> {
    let mut bridges = Vec::new();
    for (index, bridge) in d.root_bridges.iter().enumerate() {
        bridges.extend(root_bridge(index, bridge)?);
    }
    let mut aml = Scope::raw("_SB_".into(), bridges);
    if let AcpiHardware::Fixed(fixed) = d.hardware {
        // SLP_TYPa, SLP_TYPb, reserved, reserved.
        let sleep_type = fixed.s5_sleep_type;
        let s5 = Name::new(
            "_S5_".into(),
            &Package::new(vec![&sleep_type, &sleep_type, &ZERO, &ZERO]),
        );
        s5.to_aml_bytes(&mut aml);
    }
    let mut sdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.append_slice(&aml);
    Ok(sdt.as_slice().to_vec())
}

fn descriptor(
    subject: &str,
    kind: ResourceKind,
    usage: Usage,
    window: Window,
    min_width: usize,
) -> Result<AddressSpace, Error> {
    AddressSpace::new(kind, usage, window, min_width).ok_or_else(|| {
        Error::invalid(
            subject,
            format!(
                "{:#x} + {:#x} cannot be encoded as an address-space descriptor",
                window.base, window.size
            ),
        )
    })
}

fn root_bridge(index: usize, b: &RootBridge) -> Result<Vec<u8>, Error> {
    let subject = format!("root bridge {index} (segment {})", b.segment);
    let name = Description::root_bridge_name(index)
        .ok_or_else(|| Error::invalid(&subject, "no DSDT name beyond 256 root bridges"))?;
    let uid = u32::try_from(index).unwrap_or(u32::MAX);

    let bus = descriptor(
        &subject,
        ResourceKind::BusNumber,
        Usage::Producer,
        Window::inclusive(u64::from(b.buses.first), u64::from(b.buses.last)),
        2,
    )?;
    let config_ports = IO::new(0xCF8, 0xCF8, 1, 8);
    let io =
        b.io.map(|w| descriptor(&subject, ResourceKind::Io, Usage::Producer, w, 2))
            .transpose()?;
    // As q35: the 32-bit window non-cacheable, the 64-bit one cacheable.
    let mem32 = b
        .mem32
        .map(|w| {
            let kind = ResourceKind::Memory { cacheable: false };
            descriptor(&subject, kind, Usage::Producer, w, 4)
        })
        .transpose()?;
    let mem64 = b
        .mem64
        .map(|w| {
            let kind = ResourceKind::Memory { cacheable: true };
            descriptor(&subject, kind, Usage::Producer, w, 8)
        })
        .transpose()?;
    let mut resources: Vec<&dyn Aml> = vec![&bus];
    if b.config_ports {
        resources.push(&config_ports);
    }
    for window in [&io, &mem32, &mem64].into_iter().flatten() {
        resources.push(window);
    }
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(resources));

    let routes = routing_table(&b.intx).map_err(|(slot, pin)| {
        Error::invalid(
            &subject,
            format!("slot {slot} pin {pin:?} has no INTx route"),
        )
    })?;
    let prt = Name::new("_PRT".into(), &routes);
    let osc = Encoded(pci_host_bridge_osc(b.osc.mask()));

    // Linux uses MMCONFIG only if the area is reserved (E820 or a motherboard resource).
    let ecam = descriptor(
        &subject,
        ResourceKind::Memory { cacheable: false },
        Usage::Consumer,
        b.ecam,
        4,
    )?;
    let ecam_device = Encoded(encode(&Device::new(
        "ECAM".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ecam])),
        ],
    )));

    Ok(encode(&Device::new(
        name.as_str().into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_SEG".into(), &b.segment),
            &Name::new("_BBN".into(), &b.buses.first),
            &Name::new("_UID".into(), &uid),
            &crs,
            &prt,
            &osc,
            &ecam_device,
        ],
    )))
}
