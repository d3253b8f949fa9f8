//! A human-readable summary of a [`Description`], one line per fact.

use super::{AcpiHardware, Description, IntxRouting, OscControl, Polarity, Trigger, Window};
use std::fmt;

fn range(w: &Window) -> String {
    match w.last() {
        Some(last) => format!("{:#x}-{last:#x} ({})", w.base, size(w.size)),
        None => format!("{:#x} + {:#x} (invalid)", w.base, w.size),
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    UNITS
        .iter()
        .find(|(_, shift)| bytes >= 1 << shift && bytes & ((1 << shift) - 1) == 0)
        .map(|(unit, shift)| format!("{} {unit}", bytes >> shift))
        .unwrap_or_else(|| format!("{bytes:#x} bytes"))
}

fn flags(polarity: Polarity, trigger: Trigger) -> String {
    let p = match polarity {
        Polarity::Conforming => "bus polarity",
        Polarity::ActiveHigh => "active high",
        Polarity::ActiveLow => "active low",
    };
    let t = match trigger {
        Trigger::Conforming => "bus trigger",
        Trigger::Edge => "edge",
        Trigger::Level => "level",
    };
    format!("{p}, {t}")
}

impl fmt::Display for OscControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.native_hotplug, "native hotplug"),
            (self.shpc_hotplug, "SHPC hotplug"),
            (self.pme, "PME"),
            (self.aer, "AER"),
            (self.pcie_capability, "PCIe capability"),
            (self.ltr, "LTR"),
        ];
        let granted: Vec<&str> = names.iter().filter(|(g, _)| *g).map(|(_, n)| *n).collect();
        if granted.is_empty() {
            write!(f, "nothing (0x0)")
        } else {
            write!(f, "{} ({:#x})", granted.join(", "), self.mask())
        }
    }
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.cpu_apic_ids.iter().map(u8::to_string).collect();
        writeln!(
            f,
            "CPUs: {} (APIC ids {}), local APIC at {:#x}{}",
            self.cpu_apic_ids.len(),
            ids.join(" "),
            self.local_apic_address,
            if self.pcat_compat {
                ", dual 8259 present"
            } else {
                ""
            }
        )?;
        for a in &self.io_apics {
            writeln!(
                f,
                "IO APIC id {} at {:#x}: GSIs {}-{}",
                a.id,
                a.address,
                a.gsi_base,
                u64::from(a.gsi_base) + u64::from(a.lines).saturating_sub(1)
            )?;
        }
        for o in &self.interrupt_overrides {
            writeln!(
                f,
                "ISA IRQ {} -> GSI {} ({})",
                o.source_irq,
                o.gsi,
                flags(o.polarity, o.trigger)
            )?;
        }
        if let Some(nmi) = self.local_apic_nmi {
            writeln!(
                f,
                "NMI on LINT{} of every CPU ({})",
                nmi.lint,
                flags(nmi.polarity, nmi.trigger)
            )?;
        }
        match self.hardware {
            AcpiHardware::HardwareReduced => writeln!(f, "ACPI hardware: reduced (no SCI, no PM registers)")?,
            AcpiHardware::Fixed(h) => writeln!(
                f,
                "ACPI hardware: fixed; SCI IRQ {}, SMI command {:#x}, PM1a event {:#x}, PM1a control {:#x}, \
                 PM timer {:#x}, GPE0 {:#x} ({} bytes), S5 SLP_TYP {}",
                h.sci_irq,
                h.smi_command_port,
                h.pm1a_event_port,
                h.pm1a_control_port,
                h.pm_timer_port,
                h.gpe0_port,
                h.gpe0_length,
                h.s5_sleep_type
            )?,
        }
        if let Some(r) = self.reset_register {
            writeln!(f, "Reset: write {:#x} to port {:#x}", r.value, r.port)?;
        }
        writeln!(f, "IA-PC boot flags: {:#x}", self.boot_arch.bits())?;
        for (i, b) in self.root_bridges.iter().enumerate() {
            let name = Description::root_bridge_name(i).unwrap_or_else(|| format!("#{i}"));
            writeln!(
                f,
                "Root bridge {name}: segment {}, buses {:#04x}-{:#04x}, ECAM {}",
                b.segment,
                b.buses.first,
                b.buses.last,
                range(&b.ecam)
            )?;
            if b.config_ports {
                writeln!(f, "    config ports 0xcf8-0xcff")?;
            }
            for (label, w) in [("IO   ", &b.io), ("MEM32", &b.mem32), ("MEM64", &b.mem64)] {
                match w {
                    Some(w) => writeln!(f, "    {label} {}", range(w))?,
                    None => writeln!(f, "    {label} none")?,
                }
            }
            match &b.intx {
                IntxRouting::Swizzle { first_gsi, count } => writeln!(
                    f,
                    "    INTx: slot s pin p -> GSI {first_gsi} + (s + p) % {count}"
                )?,
                IntxRouting::Explicit(routes) => {
                    writeln!(f, "    INTx: {} explicit routes", routes.len())?
                }
            }
            writeln!(f, "    _OSC grants {}", b.osc)?;
        }
        Ok(())
    }
}
