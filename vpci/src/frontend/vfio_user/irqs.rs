//! The device's interrupts as the client wires them: DEVICE_GET_IRQ_INFO from what
//! VFIO offers, DEVICE_SET_IRQS passed to `VFIO_DEVICE_SET_IRQS` as it came.
//!
//! The client's eventfds go straight to the kernel: a device interrupt signals the
//! VMM's eventfd (an irqfd under KVM) with no hop through udrv. INTx is the kernel's
//! automasked line; the client unmasks it (DATA_NONE) or hands a resample eventfd
//! (UNMASK with an eventfd). The function's own vector wiring is switched off for the
//! whole session (see [`PassthroughFunction::hand_interrupts_to_client`]).
//!
//! A function whose INTx VFIO cannot deliver but udrv derives (a legacy-mode IDE
//! controller) offers one INTx here; the session keeps its eventfd
//! ([`DerivedIntx`](super::derived_intx::DerivedIntx)).

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use udriver::vfio::{IrqAction, IrqData, IrqIndex};

use super::protocol::{IrqSetData, Payload, Refusal};
use crate::passthrough::{PassthroughDevice, PassthroughFunction};

/// IRQ indexes of a PCI device (`VFIO_PCI_NUM_IRQS`).
pub const NUM_IRQS: u32 = 5;

/// `VFIO_IRQ_INFO_*`.
mod info_flags {
    pub const EVENTFD: u32 = 1 << 0;
    pub const MASKABLE: u32 = 1 << 1;
    pub const AUTOMASKED: u32 = 1 << 2;
    pub const NORESIZE: u32 = 1 << 3;
}

fn index_of(raw: u32) -> Result<IrqIndex, Refusal> {
    IrqIndex::ALL
        .into_iter()
        .find(|i| i.raw() == raw)
        .ok_or_else(|| {
            Refusal::new(
                Errno::EINVAL,
                format!("IRQ index {raw} is out of range (a PCI device has {NUM_IRQS})"),
            )
        })
}

fn count<D: PassthroughDevice + 'static>(
    function: &PassthroughFunction<D>,
    index: IrqIndex,
) -> u32 {
    if index == IrqIndex::Intx && function.derives_intx() {
        // The line udrv derives (see `derived_intx`).
        return 1;
    }
    function.device().irq_count(index)
}

/// The reply to DEVICE_GET_IRQ_INFO.
pub fn info<D: PassthroughDevice + 'static>(
    function: &PassthroughFunction<D>,
    raw: u32,
) -> Result<Vec<u8>, Refusal> {
    let index = index_of(raw)?;
    let count = count(function, index);
    let mut flags = 0;
    if count > 0 {
        flags |= info_flags::EVENTFD;
        flags |= match index {
            IrqIndex::Intx => info_flags::MASKABLE | info_flags::AUTOMASKED,
            IrqIndex::Msi | IrqIndex::Msix => info_flags::NORESIZE,
            IrqIndex::Err | IrqIndex::Req => 0,
        };
    }
    Ok(Payload::with_capacity(16)
        .u32(16)
        .u32(flags)
        .u32(raw)
        .u32(count)
        .0)
}

/// DEVICE_SET_IRQS.
pub fn set<D: PassthroughDevice + 'static>(
    function: &mut PassthroughFunction<D>,
    action: IrqAction,
    raw: u32,
    start: u32,
    count_asked: u32,
    data: &IrqSetData,
) -> Result<(), Refusal> {
    let index = index_of(raw)?;
    let offered = count(function, index);
    let what = format!("SET_IRQS {action:?} on {index}");
    if count_asked == 0 {
        if action != IrqAction::Trigger || !matches!(data, IrqSetData::None) {
            return Err(Refusal::new(
                Errno::EINVAL,
                format!("{what}: count 0 is only the disable form (DATA_NONE, TRIGGER)"),
            ));
        }
    } else if start.saturating_add(count_asked) > offered {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!(
                "{what}: vectors {start}..{} but the device offers {offered}",
                start.saturating_add(count_asked)
            ),
        ));
    }
    if action != IrqAction::Trigger && index != IrqIndex::Intx {
        return Err(Refusal::new(
            Errno::EINVAL,
            format!("{what}: only INTx can be masked and unmasked (VFIO offers no MSI masking)"),
        ));
    }
    let borrowed: Vec<Option<BorrowedFd<'_>>>;
    let data = match data {
        IrqSetData::None => IrqData::None { count: count_asked },
        IrqSetData::Bool(flags) => IrqData::Bool(flags),
        IrqSetData::Eventfds(fds) => {
            borrowed = fds.iter().map(|f| f.as_ref().map(|f| f.as_fd())).collect();
            IrqData::Eventfds(&borrowed)
        }
    };
    function
        .set_client_irqs(index, action, start, data)
        .map_err(|e| Refusal::new(Errno::EIO, format!("{what}: {e}")))
}
