//! The FADT: the ACPI hardware model, the DSDT and FACS pointers, the reset register and the
//! IA-PC boot flags.

use crate::description::{AcpiHardware, Description};
use crate::oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use rvmm_acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use rvmm_acpi_tables::gas::{AccessSize, AddressSpace, GAS};

/// Lengths of the fixed-hardware blocks (ACPI 6.5 section 4.8.3).
const PM1_EVENT_LEN: u8 = 4;
const PM1_CONTROL_LEN: u8 = 2;
const PM_TIMER_LEN: u8 = 4;
/// C2/C3 latencies above 100/1000 us say the states are not supported.
const NO_C2: u16 = 0x0FFF;
const NO_C3: u16 = 0x0FFF;
/// CMOS index of the RTC century register.
const RTC_CENTURY: u8 = 0x32;

/// The FADT is 276 bytes long (revision 6.5).
pub(crate) fn len() -> usize {
    FADT::len()
}

fn io_register(port: u16, len: u8) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        len * 8,
        0,
        AccessSize::Undefined,
        u64::from(port),
    )
}

/// The FADT bytes for `d` (already validated), pointing at the DSDT and, with fixed hardware,
/// the FACS.
pub(crate) fn build(d: &Description, dsdt: u64, facs: Option<u64>) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION).dsdt_64(dsdt);
    if let Some(facs) = facs {
        fadt = fadt.firmware_ctrl_64(facs);
    }
    match d.hardware {
        AcpiHardware::Fixed(h) => {
            fadt.sci_int = h.sci_irq.into();
            fadt.smi_cmd = h.smi_command_port.into();
            fadt.acpi_enable = h.acpi_enable;
            fadt.acpi_disable = h.acpi_disable;
            fadt.pm1a_evt_blk = u32::from(h.pm1a_event_port).into();
            fadt.pm1a_cnt_blk = u32::from(h.pm1a_control_port).into();
            fadt.pm_tmr_blk = u32::from(h.pm_timer_port).into();
            fadt.gpe0_blk = u32::from(h.gpe0_port).into();
            fadt.pm1_evt_len = PM1_EVENT_LEN;
            fadt.pm1_cnt_len = PM1_CONTROL_LEN;
            fadt.pm_tmr_len = PM_TIMER_LEN;
            fadt.gpe0_blk_len = h.gpe0_length;
            fadt.x_pm1a_evt_blk = io_register(h.pm1a_event_port, PM1_EVENT_LEN);
            fadt.x_pm1a_cnt_blk = io_register(h.pm1a_control_port, PM1_CONTROL_LEN);
            fadt.x_pm_tmr_blk = io_register(h.pm_timer_port, PM_TIMER_LEN);
            fadt.x_gpe0_blk = io_register(h.gpe0_port, h.gpe0_length);
            fadt.p_lvl2_lat = NO_C2.into();
            fadt.p_lvl3_lat = NO_C3.into();
            // As q35: no sleep button, RTC wakes from S4, the PM timer is the platform clock.
            fadt = fadt
                .flag(Flags::Wbinvd)
                .flag(Flags::ProcC1)
                .flag(Flags::SlpButton)
                .flag(Flags::RtcS4)
                .flag(Flags::UsePlatformClock);
        }
        AcpiHardware::HardwareReduced => {
            // No fixed buttons exist without fixed hardware.
            fadt = fadt
                .flag(Flags::HwReducedAcpi)
                .flag(Flags::PwrButton)
                .flag(Flags::SlpButton);
        }
    }
    if !d.boot_arch.cmos_rtc_absent {
        fadt.century = RTC_CENTURY;
    }
    if let Some(reset) = d.reset_register {
        fadt.reset_reg = GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(reset.port),
        );
        fadt.reset_value = reset.value;
        fadt = fadt.flag(Flags::ResetRegSup);
    }
    fadt.iapc_boot_arch = d.boot_arch.bits().into();
    crate::aml::encode(&fadt.finalize())
}
