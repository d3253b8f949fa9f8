//! The MADT: local APICs, IO APICs, interrupt source overrides and the local APIC NMI.
//!
//! rust-vmm's `acpi_tables` has the local APIC and IO APIC entries but neither interrupt
//! source overrides nor local APIC NMIs; those two are encoded here.

use crate::description::{Description, Polarity, Trigger};
use crate::oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use rvmm_acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use rvmm_acpi_tables::sdt::Sdt;
use rvmm_acpi_tables::{Aml, AmlSink};

/// MADT revision 5 (ACPI 6.3+).
const REVISION: u8 = 5;
/// Header, local APIC address, flags.
const FIXED_LEN: u32 = 44;
/// Flags: a dual 8259 is present and must be masked (PCAT_COMPAT).
const PCAT_COMPAT: u32 = 1;

const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Processor UID meaning "all processors".
const ALL_PROCESSORS: u8 = 0xFF;
/// Bus of an interrupt source override: always ISA.
const ISA_BUS: u8 = 0;

/// MPS INTI flags: polarity in bits 0-1, trigger mode in bits 2-3.
fn inti_flags(polarity: Polarity, trigger: Trigger) -> u16 {
    let p = match polarity {
        Polarity::Conforming => 0b00,
        Polarity::ActiveHigh => 0b01,
        Polarity::ActiveLow => 0b11,
    };
    let t = match trigger {
        Trigger::Conforming => 0b00,
        Trigger::Edge => 0b01,
        Trigger::Level => 0b11,
    };
    p | (t << 2)
}

/// Interrupt Source Override (type 2, 10 bytes).
struct InterruptSourceOverride {
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(TYPE_INTERRUPT_SOURCE_OVERRIDE);
        sink.byte(10);
        sink.byte(ISA_BUS);
        sink.byte(self.source);
        sink.dword(self.gsi);
        sink.word(self.flags);
    }
}

/// Local APIC NMI (type 4, 6 bytes).
struct LocalApicNmi {
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(TYPE_LOCAL_APIC_NMI);
        sink.byte(6);
        sink.byte(self.processor_uid);
        sink.word(self.flags);
        sink.byte(self.lint);
    }
}

/// The MADT bytes for `d` (already validated).
pub(crate) fn build(d: &Description) -> Vec<u8> {
    let mut sdt = Sdt::new(
        *b"APIC",
        FIXED_LEN,
        REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.write_u32(36, d.local_apic_address);
    sdt.write_u32(40, if d.pcat_compat { PCAT_COMPAT } else { 0 });
    let mut entries: Vec<u8> = Vec::new();
    for (uid, &apic_id) in d.cpu_apic_ids.iter().enumerate() {
        // Validation caps the CPU count at 255, so the UID fits.
        let uid = u8::try_from(uid).unwrap_or(u8::MAX);
        ProcessorLocalApic::new(uid, apic_id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    for a in &d.io_apics {
        IoApic::new(a.id, a.address, a.gsi_base).to_aml_bytes(&mut entries);
    }
    for o in &d.interrupt_overrides {
        InterruptSourceOverride {
            source: o.source_irq,
            gsi: o.gsi,
            flags: inti_flags(o.polarity, o.trigger),
        }
        .to_aml_bytes(&mut entries);
    }
    if let Some(nmi) = d.local_apic_nmi {
        LocalApicNmi {
            processor_uid: ALL_PROCESSORS,
            flags: inti_flags(nmi.polarity, nmi.trigger),
            lint: nmi.lint,
        }
        .to_aml_bytes(&mut entries);
    }
    sdt.append_slice(&entries);
    sdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inti_flags_follow_mps_encoding() {
        assert_eq!(inti_flags(Polarity::Conforming, Trigger::Conforming), 0x0);
        assert_eq!(inti_flags(Polarity::ActiveHigh, Trigger::Level), 0xD);
        assert_eq!(inti_flags(Polarity::ActiveLow, Trigger::Level), 0xF);
        assert_eq!(inti_flags(Polarity::ActiveHigh, Trigger::Edge), 0x5);
    }
}
