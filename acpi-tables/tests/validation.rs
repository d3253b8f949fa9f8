//! A description that cannot be encoded, or whose ranges collide, is refused with an error
//! naming the part and the problem; nothing panics, nothing overflows.

mod common;

use acpi_tables::{
    AcpiHardware, BusRange, Description, Error, FixedHardware, InterruptOverride, IntxPin,
    IntxRoute, IntxRouting, Polarity, RootBridge, TableKind, Tables, Trigger, Window,
};

/// Builds `d`, expecting a refusal; returns "subject: problem".
fn refused(d: &Description) -> String {
    match Tables::build(d) {
        Err(e @ Error::Invalid { .. }) => e.to_string(),
        Err(other) => panic!("wrong error kind: {other}"),
        Ok(_) => panic!("accepted an invalid description: {d:#?}"),
    }
}

fn with_bridge(change: impl FnOnce(&mut RootBridge)) -> Description {
    let mut d = Description::default();
    change(&mut d.root_bridges[0]);
    d
}

fn second_bridge(change: impl FnOnce(&mut RootBridge)) -> Description {
    let mut d = Description::default();
    let mut b = RootBridge {
        segment: 1,
        buses: BusRange { first: 0, last: 0 },
        ecam: Window::new(0xA000_0000, 1 << 20),
        io: None,
        mem32: None,
        mem64: Some(Window::new(0x100_0000_0000, 1 << 30)),
        config_ports: false,
        intx: IntxRouting::default(),
        osc: Default::default(),
    };
    change(&mut b);
    d.root_bridges.push(b);
    d
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
}

#[test]
fn defaults_and_test_topologies_are_valid() {
    for (name, d) in common::topologies() {
        Tables::build(&d).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn window_ending_at_u64_max_is_accepted_and_one_past_it_is_refused() {
    let last_page = second_bridge(|b| b.mem64 = Some(Window::new(u64::MAX - 0xFFF, 0x1000)));
    Tables::build(&last_page).expect("a window whose last byte is u64::MAX");

    let past = second_bridge(|b| b.mem64 = Some(Window::new(u64::MAX - 0xFFF, 0x2000)));
    assert_mentions(
        &refused(&past),
        &[
            "root bridge 1 (segment 1) mem64 window",
            "runs past the end",
        ],
    );
    let huge = second_bridge(|b| b.mem64 = Some(Window::new(1 << 40, u64::MAX)));
    assert_mentions(&refused(&huge), &["mem64 window", "runs past the end"]);
}

#[test]
fn empty_windows_are_refused() {
    let d = with_bridge(|b| b.io = Some(Window::new(0x1000, 0)));
    assert_mentions(
        &refused(&d),
        &["root bridge 0 (segment 0) IO window", "empty"],
    );
    let d = with_bridge(|b| b.mem32 = Some(Window::new(0xC000_0000, 0)));
    assert_mentions(&refused(&d), &["mem32 window", "empty"]);
}

#[test]
fn windows_must_fit_their_address_width() {
    let d = with_bridge(|b| b.mem32 = Some(Window::new(0xF000_0000, 0x2000_0000)));
    assert_mentions(&refused(&d), &["mem32 window", "ends above 0xffffffff"]);
    let d = with_bridge(|b| b.io = Some(Window::new(0xF000, 0x2000)));
    assert_mentions(&refused(&d), &["IO window", "ends above 0xffff"]);
}

#[test]
fn ecam_size_must_match_the_bus_count() {
    let d = with_bridge(|b| b.ecam = Window::new(0xB000_0000, 128 << 20));
    assert_mentions(
        &refused(&d),
        &[
            "ECAM",
            "0x8000000",
            "buses 0-255",
            "256 buses need 0x10000000",
        ],
    );
    let d = with_bridge(|b| b.buses = BusRange { first: 9, last: 3 });
    assert_mentions(&refused(&d), &["buses", "backwards"]);
}

#[test]
fn ecam_must_leave_room_below_for_bus_zero() {
    // MCFG's base is where bus 0 would be; buses 16-31 at 8 MiB would put it below zero.
    let d = second_bridge(|b| {
        b.buses = BusRange {
            first: 16,
            last: 31,
        };
        b.ecam = Window::new(0x80_0000, 16 << 20);
    });
    assert_mentions(&refused(&d), &["ECAM", "below bus 16"]);
}

#[test]
fn overlapping_resources_are_refused() {
    let d = second_bridge(|b| b.mem64 = Some(Window::new(0x2_0000_0000, 1 << 30)));
    assert_mentions(
        &refused(&d),
        &[
            "root bridge 1 (segment 1) mem64 window",
            "overlaps root bridge 0 (segment 0) mem64",
        ],
    );
    let d = with_bridge(|b| b.mem32 = Some(Window::inclusive(0xA000_0000, 0xFEBF_FFFF)));
    assert_mentions(&refused(&d), &["mem32 window", "overlaps", "ECAM"]);
    let d = with_bridge(|b| b.mem32 = Some(Window::inclusive(0xC000_0000, 0xFECF_FFFF)));
    assert_mentions(&refused(&d), &["mem32 window", "IO APIC 0"]);
    let d = second_bridge(|b| b.io = Some(Window::new(0xE000, 0x100)));
    assert_mentions(&refused(&d), &["IO window", "overlaps"]);
}

#[test]
fn bus_ranges_may_repeat_across_segments_but_not_within_one() {
    Tables::build(&second_bridge(|_| {})).expect("bus 0 in segments 0 and 1");
    let d = second_bridge(|b| b.segment = 0);
    assert_mentions(
        &refused(&d),
        &["root bridge 1 (segment 0) buses", "overlap buses 0-255"],
    );
}

#[test]
fn config_ports_belong_to_one_segment_0_bridge_and_stay_out_of_io_windows() {
    let d = second_bridge(|b| b.config_ports = true);
    assert_mentions(&refused(&d), &["root bridge 1", "segment 0 only"]);
    let d = with_bridge(|b| b.io = Some(Window::inclusive(0x0, 0xFFFF)));
    assert_mentions(&refused(&d), &["IO window", "config ports", "split"]);
}

#[test]
fn a_bridge_needs_a_memory_window() {
    let d = second_bridge(|b| b.mem64 = None);
    assert_mentions(&refused(&d), &["root bridge 1", "no memory window"]);
}

#[test]
fn every_slot_and_pin_needs_a_reachable_gsi() {
    let mut routes: Vec<IntxRoute> = (0..32)
        .flat_map(|slot| {
            IntxPin::ALL
                .into_iter()
                .map(move |pin| IntxRoute { slot, pin, gsi: 16 })
        })
        .collect();
    routes.retain(|r| !(r.slot == 5 && r.pin == IntxPin::C));
    let d = with_bridge(|b| b.intx = IntxRouting::Explicit(routes.clone()));
    assert_mentions(&refused(&d), &["INTx routing", "slot 5 pin C has no route"]);

    routes.push(IntxRoute {
        slot: 5,
        pin: IntxPin::C,
        gsi: 16,
    });
    routes.push(IntxRoute {
        slot: 5,
        pin: IntxPin::C,
        gsi: 17,
    });
    let d = with_bridge(|b| b.intx = IntxRouting::Explicit(routes.clone()));
    assert_mentions(&refused(&d), &["slot 5 pin C is routed twice"]);

    let d = with_bridge(|b| {
        b.intx = IntxRouting::Swizzle {
            first_gsi: 20,
            count: 8,
        }
    });
    assert_mentions(&refused(&d), &["goes to GSI 24", "no IO APIC"]);
    let d = with_bridge(|b| {
        b.intx = IntxRouting::Swizzle {
            first_gsi: 16,
            count: 0,
        }
    });
    assert_mentions(&refused(&d), &["count must be 1 or more"]);
    let d = with_bridge(|b| {
        b.intx = IntxRouting::Swizzle {
            first_gsi: u32::MAX,
            count: 4,
        }
    });
    assert_mentions(&refused(&d), &["overflow"]);
}

#[test]
fn cpus_and_interrupt_controllers_are_checked() {
    let mut d = Description {
        cpu_apic_ids: vec![0, 1, 1],
        ..Description::default()
    };
    assert_mentions(&refused(&d), &["CPU 2", "APIC id 1 is already used"]);
    d.cpu_apic_ids = vec![0xFF];
    assert_mentions(&refused(&d), &["broadcast"]);
    d.cpu_apic_ids = vec![];
    assert_mentions(&refused(&d), &["CPUs", "none"]);

    let mut d = Description::default();
    d.interrupt_overrides.push(InterruptOverride {
        source_irq: 16,
        gsi: 16,
        polarity: Polarity::ActiveLow,
        trigger: Trigger::Level,
    });
    assert_mentions(&refused(&d), &["interrupt override 5 (IRQ 16)", "0-15"]);

    let mut d = Description::default();
    d.interrupt_overrides[0].gsi = 99;
    assert_mentions(&refused(&d), &["GSI 99", "not an input of any IO APIC"]);

    let mut d = Description::default();
    d.io_apics.push(d.io_apics[0]);
    assert_mentions(&refused(&d), &["IO APIC 1", "id 0 is already used"]);
}

#[test]
fn fixed_hardware_values_are_checked() {
    let mut d = Description {
        hardware: AcpiHardware::Fixed(FixedHardware {
            gpe0_length: 3,
            ..FixedHardware::ich9()
        }),
        ..Description::default()
    };
    assert_mentions(&refused(&d), &["GPE0", "even"]);
    d.hardware = AcpiHardware::Fixed(FixedHardware {
        s5_sleep_type: 8,
        ..FixedHardware::ich9()
    });
    assert_mentions(&refused(&d), &["S5", "3 bits"]);
}

#[test]
fn layout_is_checked() {
    let mut d = Description::default();
    d.layout.rsdp_address = 0xE0008;
    assert_mentions(&refused(&d), &["rsdp_address", "16-byte aligned"]);

    let mut d = Description::default();
    d.layout.tables_address = 0xE0010;
    assert_mentions(&refused(&d), &["RSDP at 0xe0000 overlaps the tables"]);

    let mut d = Description::default();
    d.layout.tables_address = 0xC000_0000;
    assert_mentions(&refused(&d), &["tables", "mem32 window"]);

    let mut d = Description::default();
    d.layout.tables_address = u64::MAX - 0xFF;
    assert_mentions(&refused(&d), &["tables_address", "run past the end"]);
}

#[test]
fn tables_point_at_each_other_where_they_are_placed() {
    let tables = Tables::build(&common::two_segments()).unwrap();
    let at = |kind| tables.get(kind).unwrap().address();
    let bytes = |kind| tables.get(kind).unwrap().bytes();
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(tables.rsdp_address(), 0xF0000);
    assert_eq!(u64_at(bytes(TableKind::Rsdp), 24), at(TableKind::Xsdt));
    let xsdt = bytes(TableKind::Xsdt);
    let pointers: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(xsdt, o))
        .collect();
    assert_eq!(
        pointers,
        [
            at(TableKind::Fadt),
            at(TableKind::Madt),
            at(TableKind::Mcfg)
        ]
    );
    // X_DSDT at offset 140 of the FADT.
    assert_eq!(u64_at(bytes(TableKind::Fadt), 140), at(TableKind::Dsdt));
    for table in tables.iter() {
        assert_eq!(table.address() % 8, 0, "{:?} aligned", table.kind());
        let sum = table.bytes().iter().fold(0u8, |s, b| s.wrapping_add(*b));
        assert_eq!(sum, 0, "{:?} checksum", table.kind());
    }
}

#[test]
fn files_are_written_under_acpixtract_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("new").join("tables");
    let tables = Tables::build(&Description::default()).unwrap();
    let written = tables.write_files(&out).unwrap();
    let mut names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["apic.dat", "dsdt.dat", "facp.dat", "facs.dat", "mcfg.dat", "rsdp.dat", "xsdt.dat"]
    );
    for table in tables.iter() {
        let on_disk = std::fs::read(out.join(table.kind().file_name())).unwrap();
        assert_eq!(on_disk, table.bytes());
    }

    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"").unwrap();
    let err = tables.write_files(&blocker.join("sub")).unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err}");
    assert!(err.to_string().contains("file/sub"), "{err}");
}

/// `validate()` promises the checks `Tables::build` relies on: every layout `build` refuses
/// (it depends on the tables' lengths) must be refused by `validate()` too, with the same error.
#[test]
fn validate_refuses_every_layout_build_refuses() {
    let layouts = [
        // The RSDP inside the tables that follow tables_address.
        (0xE0040, 0xE0040),
        (0xE0100, 0xE0040),
        // The tables inside the default mem32 window, the RSDP inside the ECAM.
        (0xE0000, 0xC000_0000),
        (0xB000_0000, 0xE0040),
        // The tables run past the end of the address space.
        (0xE0000, u64::MAX - 0xFF),
    ];
    for (rsdp_address, tables_address) in layouts {
        let mut d = Description::default();
        d.layout.rsdp_address = rsdp_address;
        d.layout.tables_address = tables_address;
        let built = refused(&d);
        match d.validate() {
            Err(e) => assert_eq!(
                e.to_string(),
                built,
                "{rsdp_address:#x}/{tables_address:#x}"
            ),
            Ok(()) => panic!(
                "validate() accepted RSDP {rsdp_address:#x}, tables {tables_address:#x}; \
                 build refused: {built}"
            ),
        }
    }
}

#[test]
fn tables_stay_out_of_the_apic_pages() {
    let mut d = Description::default();
    d.layout.tables_address = 0xFEE0_0000 - 0x100;
    assert_mentions(&refused(&d), &["tables", "local APIC"]);
    let mut d = Description::default();
    d.layout.rsdp_address = 0xFEC0_0010;
    assert_mentions(&refused(&d), &["RSDP", "IO APIC 0"]);
    assert!(d.validate().is_err());
}
