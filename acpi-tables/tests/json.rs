//! A description read from JSON (feature `serde`): addresses as "0x..." strings or numbers,
//! everything not given taken from the q35-like default.
#![cfg(feature = "serde")]

mod common;

use acpi_tables::Description;

const TWO_SEGMENTS: &str = r#"{
    "layout": { "rsdp_address": "0xF0000", "tables_address": "0x100000" },
    "cpu_apic_ids": [0, 1, 4, 5],
    "pcat_compat": false,
    "io_apics": [
        { "id": 0, "address": "0xFEC00000", "gsi_base": 0 },
        { "id": 1, "address": "0xFEC01000", "gsi_base": 24, "lines": 8 }
    ],
    "interrupt_overrides": [
        { "source_irq": 0, "gsi": 2, "polarity": "active_high", "trigger": "edge" }
    ],
    "local_apic_nmi": null,
    "hardware": "hardware_reduced",
    "reset_register": { "port": "0xCF9", "value": 6 },
    "root_bridges": [
        {
            "segment": 0,
            "buses": { "first": 0, "last": 127 },
            "ecam": { "base": "0xB0000000", "size": "0x8000000" },
            "io": { "base": "0x1000", "size": "0x7000" },
            "mem32": { "base": "0xC0000000", "size": "0x2000_0000" },
            "mem64": { "base": "0x4000000000", "size": "0x1000000000" },
            "config_ports": true,
            "intx": { "swizzle": { "first_gsi": 16, "count": 4 } },
            "osc": { "native_hotplug": false }
        },
        {
            "segment": 1,
            "buses": { "first": 16, "last": 31 },
            "ecam": { "base": 3774873600, "size": "0x1000000" },
            "io": { "base": "0x8000", "size": "0x8000" },
            "mem32": { "base": "0xE8000000", "size": "0x8000000" },
            "mem64": { "base": "0xFFFFFFF000000000", "size": "0x1000000000" },
            "intx": { "explicit": EXPLICIT },
            "osc": { "native_hotplug": false, "shpc_hotplug": false, "pme": false,
                     "aer": true, "pcie_capability": true, "ltr": true }
        }
    ]
}"#;

fn two_segments_json() -> String {
    let routes: Vec<String> = (0..32u32)
        .flat_map(|slot| {
            ["A", "B", "C", "D"]
                .iter()
                .enumerate()
                .map(move |(pin, name)| {
                    let gsi = 24 + (slot * 3 + pin as u32) % 8;
                    format!(r#"{{ "slot": {slot}, "pin": "{name}", "gsi": {gsi} }}"#)
                })
        })
        .collect();
    TWO_SEGMENTS.replace("EXPLICIT", &format!("[{}]", routes.join(",")))
}

#[test]
fn json_describes_the_two_segment_topology() {
    let parsed: Description = serde_json::from_str(&two_segments_json()).unwrap();
    assert_eq!(parsed, common::two_segments());
}

#[test]
fn json_round_trips_and_writes_addresses_in_hex() {
    let d = common::two_segments();
    let text = serde_json::to_string_pretty(&d).unwrap();
    assert!(text.contains(r#""base": "0xfffffff000000000""#), "{text}");
    let back: Description = serde_json::from_str(&text).unwrap();
    assert_eq!(back, d);
}

#[test]
fn missing_fields_take_the_default() {
    let d: Description = serde_json::from_str(r#"{ "cpu_apic_ids": [0, 1] }"#).unwrap();
    assert_eq!(
        d,
        Description {
            cpu_apic_ids: vec![0, 1],
            ..Description::default()
        }
    );
}

#[test]
fn bad_json_is_refused_with_the_reason() {
    let err = serde_json::from_str::<Description>(r#"{ "cpus": 4 }"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `cpus`"), "{err}");
    let err = serde_json::from_str::<Description>(r#"{ "local_apic_address": "0x1_0000_0000" }"#)
        .unwrap_err();
    assert!(
        err.to_string().contains("too large for a 4-byte field"),
        "{err}"
    );
    let err =
        serde_json::from_str::<Description>(r#"{ "local_apic_address": "fee00000" }"#).unwrap_err();
    assert!(err.to_string().contains("not a number"), "{err}");
}
