//! Consistency checks on a [`Description`]: every table field must be encodable and every
//! range must fit, without overflow, and not collide with another.

use super::{
    AcpiHardware, Description, IntxPin, IntxRouting, RootBridge, Window, ECAM_BYTES_PER_BUS, SLOTS,
};
use crate::Error;

/// Pages the interrupt controllers decode.
const APIC_MMIO_SIZE: u64 = 0x1000;
/// The legacy configuration ports a bridge with `config_ports` decodes.
const CONFIG_PORTS: Window = Window::new(0xCF8, 8);

/// The checks on the description's own fields; [`placement`] checks where the tables land.
pub(crate) fn description(d: &Description) -> Result<(), Error> {
    layout(d)?;
    cpus(d)?;
    io_apics(d)?;
    overrides(d)?;
    hardware(d)?;
    if d.root_bridges.is_empty() {
        return Err(Error::invalid(
            "root bridges",
            "none described; add at least one root bridge",
        ));
    }
    if d.root_bridges.len() > 256 {
        return Err(Error::invalid(
            "root bridges",
            format!(
                "{} described; at most 256 fit the DSDT device names",
                d.root_bridges.len()
            ),
        ));
    }
    for (index, bridge) in d.root_bridges.iter().enumerate() {
        root_bridge(d, index, bridge)?;
    }
    disjoint_resources(d)
}

fn layout(d: &Description) -> Result<(), Error> {
    if d.layout.rsdp_address & 0xF != 0 {
        return Err(Error::invalid(
            "layout rsdp_address",
            format!(
                "{:#x} is not 16-byte aligned; the RSDP must be",
                d.layout.rsdp_address
            ),
        ));
    }
    if d.layout.tables_address & 0x7 != 0 {
        return Err(Error::invalid(
            "layout tables_address",
            format!("{:#x} is not 8-byte aligned", d.layout.tables_address),
        ));
    }
    Ok(())
}

fn cpus(d: &Description) -> Result<(), Error> {
    if d.cpu_apic_ids.is_empty() {
        return Err(Error::invalid(
            "CPUs",
            "none described; add at least one APIC id",
        ));
    }
    if d.cpu_apic_ids.len() > 255 {
        return Err(Error::invalid(
            "CPUs",
            format!(
                "{} described; xAPIC MADT entries hold at most 255",
                d.cpu_apic_ids.len()
            ),
        ));
    }
    for (uid, &apic_id) in d.cpu_apic_ids.iter().enumerate() {
        if apic_id == 0xFF {
            return Err(Error::invalid(
                format!("CPU {uid}"),
                "APIC id 0xff is the broadcast id; pick another",
            ));
        }
        if d.cpu_apic_ids[..uid].contains(&apic_id) {
            return Err(Error::invalid(
                format!("CPU {uid}"),
                format!("APIC id {apic_id} is already used by another CPU"),
            ));
        }
    }
    Ok(())
}

fn io_apics(d: &Description) -> Result<(), Error> {
    if d.io_apics.is_empty() {
        return Err(Error::invalid(
            "IO APICs",
            "none described; PCI INTx needs an IO APIC to reach",
        ));
    }
    for (i, ioapic) in d.io_apics.iter().enumerate() {
        let name = format!("IO APIC {i} (id {})", ioapic.id);
        if ioapic.lines == 0 || ioapic.lines > 240 {
            return Err(Error::invalid(
                name,
                format!("{} inputs; an IO APIC has 1 to 240", ioapic.lines),
            ));
        }
        if ioapic
            .gsi_base
            .checked_add(u32::from(ioapic.lines))
            .is_none()
        {
            return Err(Error::invalid(
                name,
                format!(
                    "GSI base {} + {} inputs overflows 32 bits",
                    ioapic.gsi_base, ioapic.lines
                ),
            ));
        }
        for (j, other) in d.io_apics[..i].iter().enumerate() {
            if other.id == ioapic.id {
                return Err(Error::invalid(
                    name,
                    format!("id {} is already used by IO APIC {j}", ioapic.id),
                ));
            }
            let mine = gsi_window(ioapic.gsi_base, ioapic.lines);
            if mine.overlaps(&gsi_window(other.gsi_base, other.lines)) {
                return Err(Error::invalid(
                    name,
                    format!(
                        "GSIs {}-{} overlap those of IO APIC {j}",
                        ioapic.gsi_base,
                        mine.last().unwrap_or(mine.base)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn gsi_window(base: u32, lines: u8) -> Window {
    Window::new(u64::from(base), u64::from(lines))
}

fn gsi_reachable(d: &Description, gsi: u32) -> bool {
    d.io_apics.iter().any(|a| {
        let window = gsi_window(a.gsi_base, a.lines);
        window.base <= u64::from(gsi) && window.last().is_some_and(|l| u64::from(gsi) <= l)
    })
}

fn overrides(d: &Description) -> Result<(), Error> {
    for (i, o) in d.interrupt_overrides.iter().enumerate() {
        let name = format!("interrupt override {i} (IRQ {})", o.source_irq);
        if o.source_irq > 15 {
            return Err(Error::invalid(
                name,
                "the source is an ISA IRQ and must be 0-15",
            ));
        }
        if d.interrupt_overrides[..i]
            .iter()
            .any(|p| p.source_irq == o.source_irq)
        {
            return Err(Error::invalid(name, "IRQ is overridden twice"));
        }
        if !gsi_reachable(d, o.gsi) {
            return Err(Error::invalid(
                name,
                format!("GSI {} is not an input of any IO APIC", o.gsi),
            ));
        }
    }
    if let Some(nmi) = d.local_apic_nmi {
        if nmi.lint > 1 {
            return Err(Error::invalid(
                "local APIC NMI",
                format!("LINT{} does not exist; use 0 or 1", nmi.lint),
            ));
        }
    }
    Ok(())
}

fn hardware(d: &Description) -> Result<(), Error> {
    if let AcpiHardware::Fixed(fixed) = d.hardware {
        if fixed.gpe0_length == 0 || fixed.gpe0_length % 2 != 0 {
            return Err(Error::invalid(
                "fixed hardware GPE0 block",
                format!(
                    "length {} must be even and non-zero (status half, enable half)",
                    fixed.gpe0_length
                ),
            ));
        }
        if fixed.sci_irq > 15 {
            return Err(Error::invalid(
                "fixed hardware SCI",
                format!(
                    "IRQ {} is not an ISA IRQ (0-15); route it with an interrupt override",
                    fixed.sci_irq
                ),
            ));
        }
        if fixed.s5_sleep_type > 7 {
            return Err(Error::invalid(
                "fixed hardware S5 sleep type",
                format!("{} does not fit SLP_TYP (3 bits)", fixed.s5_sleep_type),
            ));
        }
    }
    Ok(())
}

fn bridge_name(index: usize, bridge: &RootBridge) -> String {
    format!("root bridge {index} (segment {})", bridge.segment)
}

fn window(subject: &str, w: &Window, limit: u64) -> Result<u64, Error> {
    if w.size == 0 {
        return Err(Error::invalid(
            subject,
            format!(
                "empty (size 0 at {:#x}); give it a size or leave it out",
                w.base
            ),
        ));
    }
    let last = w.last().ok_or_else(|| {
        Error::invalid(
            subject,
            format!(
                "{:#x} + {:#x} runs past the end of the 64-bit address space",
                w.base, w.size
            ),
        )
    })?;
    if last > limit {
        return Err(Error::invalid(
            subject,
            format!(
                "{:#x}-{last:#x} ends above {limit:#x}, the limit for this window",
                w.base
            ),
        ));
    }
    Ok(last)
}

fn root_bridge(d: &Description, index: usize, b: &RootBridge) -> Result<(), Error> {
    let name = bridge_name(index, b);
    if b.buses.last < b.buses.first {
        return Err(Error::invalid(
            format!("{name} buses"),
            format!(
                "range {}-{} is backwards; first must not exceed last",
                b.buses.first, b.buses.last
            ),
        ));
    }
    let ecam_name = format!("{name} ECAM");
    window(&ecam_name, &b.ecam, u64::MAX)?;
    let expected = u64::from(b.buses.count()) * ECAM_BYTES_PER_BUS;
    if b.ecam.size != expected {
        return Err(Error::invalid(
            ecam_name,
            format!(
                "size {:#x} does not match buses {}-{}: {} buses need {expected:#x} (1 MiB each)",
                b.ecam.size,
                b.buses.first,
                b.buses.last,
                b.buses.count()
            ),
        ));
    }
    if b.ecam.base & (ECAM_BYTES_PER_BUS - 1) != 0 {
        return Err(Error::invalid(
            ecam_name,
            format!("base {:#x} is not 1 MiB aligned", b.ecam.base),
        ));
    }
    if b.mcfg_base().is_none() {
        return Err(Error::invalid(
            ecam_name,
            format!(
                "base {:#x} is below bus {}'s offset {:#x}; MCFG addresses bus 0 of the segment",
                b.ecam.base,
                b.buses.first,
                u64::from(b.buses.first) * ECAM_BYTES_PER_BUS
            ),
        ));
    }
    if let Some(io) = &b.io {
        window(&format!("{name} IO window"), io, 0xFFFF)?;
        if d.root_bridges.iter().any(|r| r.config_ports) && io.overlaps(&CONFIG_PORTS) {
            return Err(Error::invalid(
                format!("{name} IO window"),
                format!(
                    "{:#x}-{:#x} contains the config ports 0xcf8-0xcff; split it around them",
                    io.base,
                    io.last().unwrap_or(io.base)
                ),
            ));
        }
    }
    if let Some(mem32) = &b.mem32 {
        window(&format!("{name} mem32 window"), mem32, u64::from(u32::MAX))?;
    }
    if let Some(mem64) = &b.mem64 {
        window(&format!("{name} mem64 window"), mem64, u64::MAX)?;
    }
    if b.mem32.is_none() && b.mem64.is_none() {
        return Err(Error::invalid(
            name,
            "no memory window; give it mem32, mem64 or both",
        ));
    }
    if b.config_ports && b.segment != 0 {
        return Err(Error::invalid(
            name,
            "config ports 0xcf8-0xcff reach segment 0 only",
        ));
    }
    if b.config_ports && d.root_bridges[..index].iter().any(|r| r.config_ports) {
        return Err(Error::invalid(
            name,
            "another root bridge already decodes the config ports",
        ));
    }
    for (j, other) in d.root_bridges[..index].iter().enumerate() {
        if other.segment == b.segment
            && other.buses.first <= b.buses.last
            && b.buses.first <= other.buses.last
        {
            return Err(Error::invalid(
                format!("{name} buses"),
                format!(
                    "{}-{} overlap buses {}-{} of root bridge {j} in the same segment",
                    b.buses.first, b.buses.last, other.buses.first, other.buses.last
                ),
            ));
        }
    }
    intx(d, &name, &b.intx)
}

fn intx(d: &Description, name: &str, routing: &IntxRouting) -> Result<(), Error> {
    let subject = format!("{name} INTx routing");
    match routing {
        IntxRouting::Swizzle { first_gsi, count } => {
            if *count == 0 {
                return Err(Error::invalid(
                    subject,
                    "swizzle over 0 GSIs; count must be 1 or more",
                ));
            }
            if first_gsi.checked_add(*count - 1).is_none() {
                return Err(Error::invalid(
                    subject,
                    format!("GSIs {first_gsi} + {count} overflow 32 bits"),
                ));
            }
        }
        IntxRouting::Explicit(routes) => {
            for (i, route) in routes.iter().enumerate() {
                if route.slot >= SLOTS {
                    return Err(Error::invalid(
                        &subject,
                        format!("route {i} names slot {}; slots are 0-31", route.slot),
                    ));
                }
                if routes[..i]
                    .iter()
                    .any(|r| r.slot == route.slot && r.pin == route.pin)
                {
                    return Err(Error::invalid(
                        &subject,
                        format!("slot {} pin {:?} is routed twice", route.slot, route.pin),
                    ));
                }
            }
        }
    }
    for slot in 0..SLOTS {
        for pin in IntxPin::ALL {
            let gsi = routing.gsi(slot, pin).ok_or_else(|| {
                Error::invalid(
                    &subject,
                    format!(
                        "slot {slot} pin {pin:?} has no route; list every slot 0-31 and pin A-D, \
                         or use a swizzle"
                    ),
                )
            })?;
            if !gsi_reachable(d, gsi) {
                return Err(Error::invalid(
                    &subject,
                    format!(
                        "slot {slot} pin {pin:?} goes to GSI {gsi}, which no IO APIC has; \
                         add an IO APIC or change the route"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The platform's MMIO ranges: the APIC pages and each root bridge's ECAM and memory windows.
fn memory_ranges(d: &Description) -> Vec<(String, Window)> {
    let mut memory = vec![(
        "local APIC".to_string(),
        Window::new(u64::from(d.local_apic_address), APIC_MMIO_SIZE),
    )];
    for (i, a) in d.io_apics.iter().enumerate() {
        memory.push((
            format!("IO APIC {i}"),
            Window::new(u64::from(a.address), APIC_MMIO_SIZE),
        ));
    }
    for (i, b) in d.root_bridges.iter().enumerate() {
        let name = bridge_name(i, b);
        memory.push((format!("{name} ECAM"), b.ecam));
        if let Some(w) = b.mem32 {
            memory.push((format!("{name} mem32 window"), w));
        }
        if let Some(w) = b.mem64 {
            memory.push((format!("{name} mem64 window"), w));
        }
    }
    memory
}

/// Memory ranges (ECAM, windows, APIC pages) must not overlap one another, nor IO windows.
fn disjoint_resources(d: &Description) -> Result<(), Error> {
    let memory = memory_ranges(d);
    let io: Vec<(String, Window)> = d
        .root_bridges
        .iter()
        .enumerate()
        .filter_map(|(i, b)| Some((format!("{} IO window", bridge_name(i, b)), b.io?)))
        .collect();
    for list in [&memory, &io] {
        for (i, (name, w)) in list.iter().enumerate() {
            if let Some((other, o)) = list[..i].iter().find(|(_, o)| o.overlaps(w)) {
                return Err(Error::invalid(
                    name,
                    format!(
                        "{:#x}-{:#x} overlaps {other} at {:#x}-{:#x}",
                        w.base,
                        w.last().unwrap_or(w.base),
                        o.base,
                        o.last().unwrap_or(o.base)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The RSDP (`rsdp_len` bytes at the layout's address) and the tables (`tables`, laid out
/// from the layout's tables address) must not overlap each other nor any MMIO range: tables
/// belong in RAM.
pub(crate) fn placement(d: &Description, rsdp_len: u64, tables: Window) -> Result<(), Error> {
    let rsdp = Window::new(d.layout.rsdp_address, rsdp_len);
    if rsdp.last().is_none() {
        return Err(Error::invalid(
            "layout rsdp_address",
            format!(
                "{:#x} leaves no room for the {rsdp_len}-byte RSDP",
                rsdp.base
            ),
        ));
    }
    if rsdp.overlaps(&tables) {
        return Err(Error::invalid(
            "layout",
            format!(
                "the RSDP at {:#x} overlaps the tables at {:#x}-{:#x}; move one",
                rsdp.base,
                tables.base,
                tables.last().unwrap_or(tables.base)
            ),
        ));
    }
    for (what, range) in memory_ranges(d) {
        for (name, placed) in [("RSDP", rsdp), ("tables", tables)] {
            if placed.overlaps(&range) {
                return Err(Error::invalid(
                    "layout",
                    format!(
                        "the {name} at {:#x} fall inside {what} {:#x}-{:#x}; tables belong \
                         in RAM",
                        placed.base,
                        range.base,
                        range.last().unwrap_or(range.base)
                    ),
                ));
            }
        }
    }
    Ok(())
}
