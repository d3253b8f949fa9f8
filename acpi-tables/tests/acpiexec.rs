//! ACPICA's interpreter (acpiexec) loads the tables, and evaluating each root bridge's
//! `_CRS`, `_PRT`, `_OSC` and identification objects returns exactly what the description says.

mod common;

use acpi_tables::{AcpiHardware, Description, IntxRouting, OscControl, RootBridge, Window};
use common::{
    acpica_available, acpica_complaints, decode_resources, evaluate, expected_space, write,
    Resource, Value,
};

const PCI_HOST_BRIDGE_UUID: &str = "33db4d5b-1ff7-401c-9657-7441c03dd766";

/// A UUID string as the 16 bytes ToUUID makes: the first three groups little-endian.
fn uuid_bytes(uuid: &str) -> Vec<u8> {
    let groups: Vec<&str> = uuid.split('-').collect();
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut bytes = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let mut g = hex(group);
        if i < 3 {
            g.reverse();
        }
        bytes.extend(g);
    }
    bytes
}

/// acpiexec's buffer argument syntax: "(hh hh ...)".
fn buffer_arg(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("({})", hex.join(" "))
}

fn dwords(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The 32-bit EISA id encoding of e.g. "PNP0A08".
fn eisa_id(id: &str) -> u64 {
    let b = id.as_bytes();
    let vendor =
        ((u16::from(b[0] - 0x40)) << 10) | ((u16::from(b[1] - 0x40)) << 5) | u16::from(b[2] - 0x40);
    let product = u16::from_str_radix(&id[3..], 16).unwrap();
    let [v0, v1] = vendor.to_be_bytes();
    let [p0, p1] = product.to_be_bytes();
    u64::from(u32::from_le_bytes([v0, v1, p0, p1]))
}

/// The control bits the spec assigns, from the description's booleans.
fn granted(osc: &OscControl) -> u32 {
    let bits = [
        osc.native_hotplug,
        osc.shpc_hotplug,
        osc.pme,
        osc.aer,
        osc.pcie_capability,
        osc.ltr,
    ];
    bits.iter()
        .enumerate()
        .filter(|(_, &g)| g)
        .map(|(i, _)| 1u32 << i)
        .sum()
}

fn expected_crs(b: &RootBridge) -> Vec<Resource> {
    let mut crs = vec![expected_space(
        2,
        0,
        Window::inclusive(u64::from(b.buses.first), u64::from(b.buses.last)),
        false,
    )];
    if b.config_ports {
        crs.push(Resource::IoPort {
            decode16: true,
            min: 0xCF8,
            max: 0xCF8,
            alignment: 1,
            length: 8,
        });
    }
    if let Some(io) = b.io {
        // IO, EntireRange.
        crs.push(expected_space(1, 0b11, io, false));
    }
    if let Some(mem32) = b.mem32 {
        // Memory, ReadWrite, NonCacheable.
        crs.push(expected_space(0, 0b001, mem32, false));
    }
    if let Some(mem64) = b.mem64 {
        // Memory, ReadWrite, Cacheable.
        crs.push(expected_space(0, 0b011, mem64, false));
    }
    crs
}

fn expected_gsi(routing: &IntxRouting, slot: u8, pin: u8) -> u64 {
    match routing {
        IntxRouting::Swizzle { first_gsi, count } => {
            u64::from(first_gsi + (u32::from(slot) + u32::from(pin)) % count)
        }
        IntxRouting::Explicit(routes) => routes
            .iter()
            .find(|r| r.slot == slot && r.pin.index() == pin)
            .map(|r| u64::from(r.gsi))
            .expect("route listed"),
    }
}

/// One `_OSC` call and the buffer it must return.
struct OscCase {
    what: &'static str,
    uuid: &'static str,
    revision: u32,
    input: Vec<u8>,
    expected: Vec<u8>,
}

fn osc_cases(osc: &OscControl) -> Vec<OscCase> {
    let mask = granted(osc);
    let all = 0x3F;
    let masked_flag = |asked: u32| if asked & mask != asked { 0x10 } else { 0 };
    vec![
        OscCase {
            what: "OS asks for everything",
            uuid: PCI_HOST_BRIDGE_UUID,
            revision: 1,
            input: dwords(&[0, 0x1F, all]),
            expected: dwords(&[masked_flag(all), 0x1F, all & mask]),
        },
        OscCase {
            what: "OS asks for exactly what is granted",
            uuid: PCI_HOST_BRIDGE_UUID,
            revision: 1,
            input: dwords(&[0, 0x1F, mask]),
            expected: dwords(&[0, 0x1F, mask]),
        },
        OscCase {
            what: "query, as Linux's first call",
            uuid: PCI_HOST_BRIDGE_UUID,
            revision: 1,
            input: dwords(&[1, 0x1F, 0x1D]),
            expected: dwords(&[1 | masked_flag(0x1D), 0x1F, 0x1D & mask]),
        },
        OscCase {
            what: "unknown revision",
            uuid: PCI_HOST_BRIDGE_UUID,
            revision: 2,
            input: dwords(&[0, 0, mask]),
            expected: dwords(&[0x08, 0, mask]),
        },
        OscCase {
            what: "unrecognised UUID",
            uuid: "0811b06e-4a27-44f9-8d60-3cbbc22e7b48",
            revision: 1,
            input: dwords(&[0, 0x1F, all]),
            expected: dwords(&[0x04, 0x1F, all]),
        },
        OscCase {
            what: "no control DWORD",
            uuid: PCI_HOST_BRIDGE_UUID,
            revision: 1,
            input: dwords(&[0, 0x1F]),
            expected: dwords(&[0x02, 0x1F]),
        },
    ]
}

/// An assertion on one evaluated object.
type Check = Box<dyn Fn(&Value)>;

fn check_topology(name: &str, d: &Description) {
    let dir = tempfile::tempdir().unwrap();
    write(d, dir.path());

    let mut commands = Vec::new();
    let mut checks: Vec<Check> = Vec::new();
    for (index, b) in d.root_bridges.iter().enumerate() {
        let dev = format!("\\_SB.{}", Description::root_bridge_name(index).unwrap());
        let b = b.clone();

        commands.push(format!("evaluate {dev}._HID"));
        checks.push(Box::new(|v| assert_eq!(v.integer(), eisa_id("PNP0A08"))));
        commands.push(format!("evaluate {dev}._CID"));
        checks.push(Box::new(|v| assert_eq!(v.integer(), eisa_id("PNP0A03"))));
        commands.push(format!("evaluate {dev}._SEG"));
        let segment = u64::from(b.segment);
        checks.push(Box::new(move |v| assert_eq!(v.integer(), segment)));
        commands.push(format!("evaluate {dev}._BBN"));
        let first_bus = u64::from(b.buses.first);
        checks.push(Box::new(move |v| assert_eq!(v.integer(), first_bus)));
        commands.push(format!("evaluate {dev}._UID"));
        checks.push(Box::new(move |v| assert_eq!(v.integer(), index as u64)));

        commands.push(format!("evaluate {dev}._CRS"));
        let crs = expected_crs(&b);
        checks.push(Box::new(move |v| {
            assert_eq!(decode_resources(v.buffer()), crs, "_CRS")
        }));

        commands.push(format!("evaluate {dev}.ECAM._CRS"));
        let ecam = vec![expected_space(0, 0b001, b.ecam, true)];
        checks.push(Box::new(move |v| {
            assert_eq!(decode_resources(v.buffer()), ecam, "ECAM reservation")
        }));
        commands.push(format!("evaluate {dev}.ECAM._HID"));
        checks.push(Box::new(|v| assert_eq!(v.integer(), eisa_id("PNP0C02"))));

        commands.push(format!("evaluate {dev}._PRT"));
        let routing = b.intx.clone();
        checks.push(Box::new(move |v| {
            let entries = v.package();
            assert_eq!(entries.len(), 32 * 4, "a route for every slot and pin");
            for (i, entry) in entries.iter().enumerate() {
                let (slot, pin) = ((i / 4) as u8, (i % 4) as u8);
                let fields: Vec<u64> = entry.package().iter().map(Value::integer).collect();
                assert_eq!(
                    fields,
                    [
                        (u64::from(slot) << 16) | 0xFFFF,
                        u64::from(pin),
                        0,
                        expected_gsi(&routing, slot, pin)
                    ],
                    "_PRT entry for slot {slot} pin {pin}"
                );
            }
        }));

        for case in osc_cases(&b.osc) {
            commands.push(format!(
                "evaluate {dev}._OSC {} {} {} {}",
                buffer_arg(&uuid_bytes(case.uuid)),
                case.revision,
                case.input.len() / 4,
                buffer_arg(&case.input)
            ));
            let (what, expected) = (case.what, case.expected);
            checks.push(Box::new(move |v| {
                assert_eq!(v.buffer(), expected.as_slice(), "_OSC, {what}")
            }));
        }
    }
    commands.push("evaluate \\_S5".into());

    let (loads, results) = evaluate(dir.path(), &commands);
    for load in &loads {
        check_load(name, d, load);
    }

    let (s5, results) = results.split_last().unwrap();
    for ((command, check), result) in commands.iter().zip(&checks).zip(results) {
        match result {
            Ok(value) => check(value),
            Err(e) => panic!("{name}: {command}: {e}"),
        }
    }
    match (d.hardware, s5) {
        (AcpiHardware::Fixed(h), Ok(v)) => {
            let typ = u64::from(h.s5_sleep_type);
            let fields: Vec<u64> = v.package().iter().map(Value::integer).collect();
            assert_eq!(fields, [typ, typ, 0, 0], "{name}: _S5");
        }
        (AcpiHardware::HardwareReduced, Err(e)) => assert!(e.contains("AE_NOT_FOUND"), "{e}"),
        (hardware, other) => panic!("{name}: {hardware:?} but _S5 gave {other:?}"),
    }
}

/// The tables loaded without a complaint from ACPICA.
fn check_load(name: &str, d: &Description, load: &str) {
    assert!(
        acpica_complaints(load).is_empty(),
        "{name}: ACPICA complained while loading:\n{load}"
    );
    for sig in ["FACP", "DSDT", "APIC", "MCFG"] {
        assert!(
            load.lines()
                .any(|l| l.starts_with(&format!("ACPI: {sig}")) && l.contains("UDRV")),
            "{name}: acpiexec did not install our {sig}:\n{load}"
        );
    }
    // acpiexec's built-in interface tests exercise PM2 (ARB_DISABLE) and GPE block 1, which
    // its own FADT has and neither q35 nor ours does: exactly those calls may fail.
    let unexpected: Vec<&str> = load
        .lines()
        .filter(|l| l.starts_with("Unexpected"))
        .collect();
    let allowed = match d.hardware {
        AcpiHardware::Fixed(_) => vec![
            "AcpiWriteBitRegister",
            "AcpiReadBitRegister",
            "AcpiInstallGpeHandler",
            "AcpiEnableGpe",
            "AcpiDisableGpe",
        ],
        AcpiHardware::HardwareReduced => vec![],
    };
    let failed: Vec<&str> = unexpected
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default())
        .collect();
    assert_eq!(failed, allowed, "{name}: acpiexec interface tests:\n{load}");
}

#[test]
fn acpiexec_evaluates_what_the_description_says() {
    if !acpica_available("acpiexec_evaluates_what_the_description_says") {
        return;
    }
    for (name, d) in common::topologies() {
        check_topology(name, &d);
    }
}

#[test]
fn acpiexec_complaints_are_detected() {
    // The clean-load assertion above means something only if a broken table is reported.
    if !acpica_available("acpiexec_complaints_are_detected") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write(&common::one_root_bridge(), dir.path());
    let path = dir.path().join("dsdt.dat");
    let mut dsdt = std::fs::read(&path).unwrap();
    dsdt[100] ^= 0xFF;
    std::fs::write(&path, dsdt).unwrap();
    let (loads, _) = evaluate(dir.path(), &["evaluate \\_SB.PCI0._UID".to_string()]);
    let load = &loads[0];
    assert!(
        acpica_complaints(load)
            .iter()
            .any(|l| l.contains("checksum")),
        "a corrupted DSDT went unreported:\n{load}"
    );
}
