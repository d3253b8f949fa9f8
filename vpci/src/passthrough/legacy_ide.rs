//! A legacy-mode IDE controller presented in native PCI mode.
//!
//! A PCI IDE function in compatibility ("legacy") mode decodes the fixed ISA ports
//! (0x1f0-0x1f7 and 0x3f6 for the primary channel, 0x170-0x177 and 0x376 for the
//! secondary) and raises ISA IRQ 14/15, not a PCI interrupt. VFIO exposes those ports
//! as BAR0-3 (8, 1, 8 and 1 bytes) and the bus-master block as BAR4, but offers no
//! interrupt. A guest's driver ignores the BARs of a legacy-mode function, and no
//! relocated BAR can back a fixed port, so the function is shown in native mode:
//!
//! - prog-if says both channels are native ([`NATIVE_PROG_IF`], bus mastering kept as
//!   the device has it) and the interrupt pin is INTA;
//! - the control blocks become 4-byte IO BARs with the device control / alternate
//!   status register at offset 2, where native mode puts it (0x3f6 = 0x3f4 + 2): the
//!   real 1-byte block sits at [`CONTROL_REGISTER`], the other bytes are padding;
//! - the interrupt is derived, not delivered: a channel's interrupt bit in its
//!   bus-master status register (set by the device with every interrupt it raises,
//!   PIO and DMA alike, until the driver writes it back) says the channel is asking.
//!   A consumer reads it with [`PassthroughFunction::derived_intx_state`] after the
//!   accesses [`derived_intx_event`] names and, while a command is in flight (the
//!   channel's alternate status says busy or data requested, which reading it does
//!   not acknowledge), on a timer: the device completes commands long after the
//!   access that started them, and in PIO raises one interrupt per block.
//!
//! Only a mass-storage IDE function (class 0x0101) with a channel in compatibility
//! mode and all four port blocks exposed gets this; every other device is shown as
//! it is.
//!
//! [`PassthroughFunction::derived_intx_state`]: super::PassthroughFunction::derived_intx_state

use crate::bar::BarIndex;
use crate::config::regs::header;

/// Class code bytes of an IDE controller: mass storage (0x01), IDE (0x01).
const CLASS_MASS_STORAGE: u8 = 0x01;
const SUBCLASS_IDE: u8 = 0x01;
/// prog-if bits: channel in native mode (primary bit 0, secondary bit 2); mode
/// switchable (bits 1 and 3); bus-master capable (bit 7).
const PROG_IF_PRIMARY_NATIVE: u8 = 1 << 0;
const PROG_IF_SECONDARY_NATIVE: u8 = 1 << 2;
const PROG_IF_BUS_MASTER: u8 = 1 << 7;
/// Both channels native and switchable: what the guest is shown (with bit 7 as the
/// device has it).
pub const NATIVE_PROG_IF: u8 = 0x0f;
/// Where the device control / alternate status register sits in a native control
/// block BAR.
pub const CONTROL_REGISTER: u64 = 2;
/// Command block register offsets: status (read) / command (write).
const STATUS_COMMAND: u64 = 7;
/// Bus-master block, per channel (secondary at +8): command and status registers,
/// and the status register's interrupt bit.
const BM_CHANNEL_STRIDE: u64 = 8;
const BM_COMMAND: u64 = 0;
const BM_STATUS: u64 = 2;
/// The bus-master command register's start bit.
const BM_COMMAND_START: u8 = 1 << 0;
/// The bus-master status bit the device sets with each interrupt it raises.
pub const BM_STATUS_INTERRUPT: u8 = 1 << 2;
/// The bus-master block.
pub const BUS_MASTER_BAR: u8 = 4;

/// Whether a function with this config image is a legacy-mode IDE controller whose
/// ports VFIO exposes as BAR0-3 (`has_port_blocks`).
pub fn is_legacy_ide(image: &[u8], has_port_blocks: bool) -> bool {
    let byte = |register: u16| image.get(usize::from(register)).copied();
    let (Some(prog_if), Some(subclass), Some(class)) = (
        byte(header::CLASS_PROG_IF),
        byte(header::CLASS_SUBCLASS),
        byte(header::CLASS_BASE),
    ) else {
        return false;
    };
    let native = PROG_IF_PRIMARY_NATIVE | PROG_IF_SECONDARY_NATIVE;
    class == CLASS_MASS_STORAGE
        && subclass == SUBCLASS_IDE
        && prog_if & native != native
        && has_port_blocks
}

/// The prog-if shown for a legacy-mode controller's `prog_if`.
pub fn native_prog_if(prog_if: u8) -> u8 {
    NATIVE_PROG_IF | (prog_if & PROG_IF_BUS_MASTER)
}

/// Where the real bytes of `bar` start in the BAR the guest sees: the control blocks
/// (BAR1, BAR3) at [`CONTROL_REGISTER`], everything else at 0.
pub fn real_bytes_at(bar: BarIndex) -> u64 {
    match bar.get() {
        1 | 3 => CONTROL_REGISTER,
        _ => 0,
    }
}

/// ATA status bits: busy, data request.
const STATUS_BUSY: u8 = 1 << 7;
const STATUS_DRQ: u8 = 1 << 3;

/// Whether an alternate status value says a command is still under way. All-ones is
/// what an empty channel floats to: nothing under way there.
pub fn status_busy(status: u8) -> bool {
    status != 0xff && status & (STATUS_BUSY | STATUS_DRQ) != 0
}

/// One channel as a consumer deriving INTx sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DerivedIntxChannel {
    /// The device asks for an interrupt (its bus-master status interrupt bit).
    pub interrupt: bool,
    /// A command is under way (busy, or data requested): another interrupt may come.
    pub busy: bool,
}

/// What an access does to a channel's interrupt, for a consumer deriving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DerivedIntxEvent {
    /// A command or a bus-master start was written on the channel: an interrupt
    /// will follow, possibly long after the access (poll until it does).
    CommandStarted(usize),
    /// The access can have raised or acknowledged an interrupt (a status read, a
    /// bus-master status or command write): look at the interrupt bits now.
    StatusTouched,
}

/// What an access at `offset` in `bar` means for the derived interrupt: a write of
/// `written`, or a read of `len` bytes when `written` is `None`. `None` for
/// data-port and other accesses that change nothing about it (data transfers are
/// many: they are not worth a look each).
pub fn derived_intx_event(
    bar: BarIndex,
    offset: u64,
    len: usize,
    written: Option<&[u8]>,
) -> Option<DerivedIntxEvent> {
    let write = written.is_some();
    let touches = |register: u64| offset <= register && register < offset + len as u64;
    match bar.get() {
        0 | 2 if touches(STATUS_COMMAND) => Some(if write {
            DerivedIntxEvent::CommandStarted(usize::from(bar.get() / 2))
        } else {
            DerivedIntxEvent::StatusTouched
        }),
        1 | 3 if touches(CONTROL_REGISTER) && !write => Some(DerivedIntxEvent::StatusTouched),
        BUS_MASTER_BAR => {
            for channel in 0..2u64 {
                let base = channel * BM_CHANNEL_STRIDE;
                let command = written
                    .filter(|_| touches(base + BM_COMMAND))
                    .and_then(|data| data.get((base + BM_COMMAND - offset) as usize));
                match command {
                    Some(c) if c & BM_COMMAND_START != 0 => {
                        return Some(DerivedIntxEvent::CommandStarted(channel as usize));
                    }
                    // Stopping a transfer ends one the driver saw complete.
                    Some(_) => return Some(DerivedIntxEvent::StatusTouched),
                    None => {}
                }
                if touches(base + BM_STATUS) {
                    return Some(DerivedIntxEvent::StatusTouched);
                }
            }
            None
        }
        _ => None,
    }
}

/// Offset of `channel`'s bus-master status register in the bus-master block.
pub fn bm_status_offset(channel: usize) -> u64 {
    channel as u64 * BM_CHANNEL_STRIDE + BM_STATUS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(class: [u8; 3]) -> Vec<u8> {
        let mut c = vec![0u8; 64];
        c[0x09..0x0c].copy_from_slice(&class);
        c
    }

    #[test]
    fn only_legacy_ide_with_exposed_ports_is_presented_native() {
        assert!(is_legacy_ide(&image([0x80, 0x01, 0x01]), true));
        // Primary native, secondary legacy: still legacy on one channel.
        assert!(is_legacy_ide(&image([0x81, 0x01, 0x01]), true));
        assert!(!is_legacy_ide(&image([0x8f, 0x01, 0x01]), true));
        assert!(!is_legacy_ide(&image([0x80, 0x01, 0x01]), false));
        // SATA AHCI (0x0106) and a NIC are not IDE.
        assert!(!is_legacy_ide(&image([0x01, 0x06, 0x01]), true));
        assert!(!is_legacy_ide(&image([0x00, 0x00, 0x02]), true));
        assert!(!is_legacy_ide(&[0u8; 8], true));
        assert_eq!(native_prog_if(0x80), 0x8f);
        assert_eq!(native_prog_if(0x00), 0x0f);
    }

    #[test]
    fn accesses_that_start_or_acknowledge_interrupts_are_named() {
        let bar = |i| BarIndex::new(i).unwrap();
        use DerivedIntxEvent::{CommandStarted, StatusTouched};
        let read = |b, offset, len| derived_intx_event(bar(b), offset, len, None);
        let write =
            |b, offset, data: &[u8]| derived_intx_event(bar(b), offset, data.len(), Some(data));
        // READ SECTORS on either channel; the status register read.
        assert_eq!(write(0, 7, &[0x20]), Some(CommandStarted(0)));
        assert_eq!(write(2, 7, &[0x20]), Some(CommandStarted(1)));
        assert_eq!(read(0, 7, 1), Some(StatusTouched));
        assert_eq!(read(0, 4, 4), Some(StatusTouched));
        // Data and other task-file registers: nothing.
        assert_eq!(read(0, 0, 2), None);
        assert_eq!(write(0, 6, &[0xe0]), None);
        // Alternate status read; a device control write raises nothing.
        assert_eq!(read(1, 2, 1), Some(StatusTouched));
        assert_eq!(write(3, 2, &[0x02]), None);
        // Bus-master start on the secondary; stop on the primary; status.
        assert_eq!(write(4, 8, &[0x09]), Some(CommandStarted(1)));
        assert_eq!(write(4, 0, &[0x08]), Some(StatusTouched));
        assert_eq!(write(4, 2, &[0x04]), Some(StatusTouched));
        assert_eq!(read(4, 10, 1), Some(StatusTouched));
        assert_eq!(write(4, 4, &[0, 0x10, 0, 0]), None);
        assert!(status_busy(0xd0) && status_busy(0x58));
        assert!(!status_busy(0x50) && !status_busy(0x00) && !status_busy(0xff));
        assert_eq!(real_bytes_at(bar(1)), 2);
        assert_eq!(real_bytes_at(bar(0)), 0);
        assert_eq!(bm_status_offset(1), 10);
    }
}
