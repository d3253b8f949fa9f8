//! An independent parser, the `acpi` crate, finds the tables from the RSDP the way an OS does
//! (following the physical pointers) and reads back what the description says.

mod common;

use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use acpi_tables::{
    AcpiHardware, Description, InterruptOverride, Polarity, TableKind, Tables, Trigger,
};
use std::ptr::NonNull;
use std::rc::Rc;

/// Guest physical memory holding only the tables, each at its address.
#[derive(Clone)]
struct GuestMemory(Rc<Vec<(u64, Box<[u8]>)>>);

impl GuestMemory {
    fn new(tables: &Tables) -> Self {
        GuestMemory(Rc::new(
            tables
                .iter()
                .map(|t| (t.address(), t.bytes().to_vec().into_boxed_slice()))
                .collect(),
        ))
    }
}

impl AcpiHandler for GuestMemory {
    unsafe fn map_physical_region<T>(
        &self,
        address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let address = address as u64;
        let (base, bytes) = self
            .0
            .iter()
            .find(|(base, bytes)| {
                address >= *base && address + size as u64 <= base + bytes.len() as u64
            })
            .unwrap_or_else(|| {
                panic!("the acpi crate read {address:#x}+{size:#x}, where no table lies")
            });
        let offset = (address - base) as usize;
        // SAFETY: offset..offset+size lies inside `bytes` (checked above), which the Rc keeps
        // alive as long as any mapping holds a clone of this handler. The acpi crate only
        // reads through the pointer, and its table types are packed (alignment 1).
        let virtual_start = unsafe { NonNull::new_unchecked(bytes.as_ptr().add(offset) as *mut T) };
        // SAFETY: the region is valid for `size` bytes, as the call's contract requires.
        unsafe { PhysicalMapping::new(address as usize, virtual_start, size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn inti_flags(polarity: Polarity, trigger: Trigger) -> u16 {
    let p = match polarity {
        Polarity::Conforming => 0,
        Polarity::ActiveHigh => 1,
        Polarity::ActiveLow => 3,
    };
    let t = match trigger {
        Trigger::Conforming => 0,
        Trigger::Edge => 1,
        Trigger::Level => 3,
    };
    p | t << 2
}

fn check_topology(name: &str, d: &Description) {
    let tables = Tables::build(d).unwrap();
    let address = |kind| tables.get(kind).map(|t| t.address() as usize);
    // SAFETY: the handler serves the RSDP at this address.
    let acpi =
        unsafe { AcpiTables::from_rsdp(GuestMemory::new(&tables), tables.rsdp_address() as usize) }
            .unwrap_or_else(|e| panic!("{name}: RSDP/XSDT rejected: {e:?}"));
    assert_eq!(acpi.revision(), 2, "{name}: RSDP revision");

    let mut signatures: Vec<String> = acpi
        .headers()
        .map(|h| h.signature.as_str().to_string())
        .collect();
    signatures.sort();
    assert_eq!(signatures, ["APIC", "FACP", "MCFG"], "{name}: XSDT entries");

    let fadt = acpi.find_table::<Fadt>().unwrap();
    assert_eq!(
        fadt.dsdt_address().unwrap(),
        address(TableKind::Dsdt).unwrap()
    );
    let dsdt = acpi.dsdt().unwrap();
    let dsdt_table = tables.get(TableKind::Dsdt).unwrap();
    assert_eq!(
        dsdt.address,
        dsdt_table.address() as usize + 36,
        "{name}: DSDT AML start"
    );
    assert_eq!(dsdt.length as usize, dsdt_table.bytes().len() - 36);
    let flags = { fadt.flags };
    match d.hardware {
        AcpiHardware::Fixed(h) => {
            assert!(!flags.system_is_hw_reduced_acpi(), "{name}");
            assert_eq!(
                fadt.facs_address().unwrap(),
                address(TableKind::Facs).unwrap()
            );
            assert_eq!({ fadt.sci_interrupt }, h.sci_irq);
            assert_eq!({ fadt.smi_cmd_port }, h.smi_command_port);
            assert_eq!(fadt.acpi_enable, h.acpi_enable);
            assert_eq!(fadt.acpi_disable, h.acpi_disable);
            let pm1a = fadt.pm1a_event_block().unwrap();
            assert_eq!(pm1a.address, u64::from(h.pm1a_event_port));
            assert_eq!(pm1a.bit_width, 32);
            let control = fadt.pm1a_control_block().unwrap();
            assert_eq!(control.address, u64::from(h.pm1a_control_port));
            assert_eq!(control.bit_width, 16);
            let timer = fadt.pm_timer_block().unwrap().unwrap();
            assert_eq!(timer.address, u64::from(h.pm_timer_port));
            let gpe0 = fadt.gpe0_block().unwrap().unwrap();
            assert_eq!(gpe0.address, u64::from(h.gpe0_port));
            assert_eq!(gpe0.bit_width, h.gpe0_length * 8);
            assert!(fadt.pm1b_event_block().unwrap().is_none());
        }
        AcpiHardware::HardwareReduced => {
            assert!(flags.system_is_hw_reduced_acpi(), "{name}");
            assert!(fadt.facs_address().is_err(), "{name}: no FACS");
            assert!(address(TableKind::Facs).is_none());
        }
    }
    if let Some(reset) = d.reset_register {
        assert!(flags.supports_system_reset_via_fadt());
        assert_eq!(
            fadt.reset_register().unwrap().address,
            u64::from(reset.port)
        );
        assert_eq!(fadt.reset_value, reset.value);
    }
    let boot = { fadt.iapc_boot_arch };
    assert_eq!(boot.motherboard_implements_8042(), d.boot_arch.i8042);
    assert_eq!(boot.dont_probe_vga(), d.boot_arch.vga_absent);
    assert_eq!(boot.dont_enable_msi(), d.boot_arch.msi_absent);

    let madt = acpi.find_table::<Madt>().unwrap();
    assert_eq!({ madt.get().local_apic_address }, d.local_apic_address);
    assert_eq!(madt.get().supports_8259(), d.pcat_compat);
    let (mut cpus, mut ioapics, mut overrides, mut nmis) = (vec![], vec![], vec![], vec![]);
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) => cpus.push((e.processor_id, e.apic_id, { e.flags })),
            MadtEntry::IoApic(e) => ioapics.push((e.io_apic_id, { e.io_apic_address }, {
                e.global_system_interrupt_base
            })),
            MadtEntry::InterruptSourceOverride(e) => {
                overrides.push((e.bus, e.irq, { e.global_system_interrupt }, { e.flags }))
            }
            MadtEntry::LocalApicNmi(e) => nmis.push((e.processor_id, { e.flags }, e.nmi_line)),
            other => panic!("{name}: unexpected MADT entry {other:?}"),
        }
    }
    let expected_cpus: Vec<(u8, u8, u32)> = d
        .cpu_apic_ids
        .iter()
        .enumerate()
        .map(|(uid, &id)| (uid as u8, id, 1))
        .collect();
    assert_eq!(
        cpus, expected_cpus,
        "{name}: local APICs (UID, APIC id, enabled)"
    );
    let expected_ioapics: Vec<(u8, u32, u32)> = d
        .io_apics
        .iter()
        .map(|a| (a.id, a.address, a.gsi_base))
        .collect();
    assert_eq!(ioapics, expected_ioapics, "{name}: IO APICs");
    let expected_overrides: Vec<(u8, u8, u32, u16)> = d
        .interrupt_overrides
        .iter()
        .map(|o: &InterruptOverride| (0, o.source_irq, o.gsi, inti_flags(o.polarity, o.trigger)))
        .collect();
    assert_eq!(
        overrides, expected_overrides,
        "{name}: interrupt source overrides"
    );
    let expected_nmis: Vec<(u8, u16, u8)> = d
        .local_apic_nmi
        .iter()
        .map(|n| (0xFF, inti_flags(n.polarity, n.trigger), n.lint))
        .collect();
    assert_eq!(nmis, expected_nmis, "{name}: local APIC NMIs");

    let mcfg = acpi.find_table::<Mcfg>().unwrap();
    let entries: Vec<(u64, u16, u8, u8)> = mcfg
        .entries()
        .iter()
        .map(|e| {
            (
                { e.base_address },
                { e.pci_segment_group },
                e.bus_number_start,
                e.bus_number_end,
            )
        })
        .collect();
    let expected: Vec<(u64, u16, u8, u8)> = d
        .root_bridges
        .iter()
        .map(|b| {
            // MCFG addresses bus 0: the ECAM area of bus `first` is `first` MiB above it.
            let bus0 = b.ecam.base - (u64::from(b.buses.first) << 20);
            (bus0, b.segment, b.buses.first, b.buses.last)
        })
        .collect();
    assert_eq!(
        entries, expected,
        "{name}: MCFG (base, segment, first bus, last bus)"
    );
}

#[test]
fn acpi_crate_reads_back_the_description() {
    for (name, d) in common::topologies() {
        check_topology(name, &d);
    }
}
