//! Interrupts: what each IRQ index offers, and eventfds wired to vectors.
//!
//! VFIO signals one eventfd per vector. INTx is level-triggered and automasked: after
//! each interrupt the line stays masked until the consumer has serviced the device and
//! calls [`VfioDevice::unmask_intx`]. MSI and MSI-X vectors are edge-triggered.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_BOOL, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE,
};

use super::device::VfioDevice;
use super::error::{Result, VfioError};
use super::eventfd::EventFd;
use super::ioctl;

/// A VFIO PCI interrupt index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqIndex {
    /// Legacy level-triggered INTx.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
    /// PCIe AER error notification.
    Err,
    /// The kernel asking the user to release the device.
    Req,
}

impl IrqIndex {
    /// Every index, in VFIO order.
    pub const ALL: [IrqIndex; 5] = [
        IrqIndex::Intx,
        IrqIndex::Msi,
        IrqIndex::Msix,
        IrqIndex::Err,
        IrqIndex::Req,
    ];

    /// The VFIO index number.
    pub fn raw(self) -> u32 {
        match self {
            IrqIndex::Intx => 0,
            IrqIndex::Msi => 1,
            IrqIndex::Msix => 2,
            IrqIndex::Err => 3,
            IrqIndex::Req => 4,
        }
    }
}

impl fmt::Display for IrqIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IrqIndex::Intx => "INTx",
            IrqIndex::Msi => "MSI",
            IrqIndex::Msix => "MSI-X",
            IrqIndex::Err => "ERR irq",
            IrqIndex::Req => "REQ irq",
        })
    }
}

/// What VFIO reports about one IRQ index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// Which index.
    pub index: IrqIndex,
    /// Vectors available (0: the device has none of this kind).
    pub count: u32,
    /// Can signal an eventfd.
    pub eventfd: bool,
    /// Can be masked and unmasked through VFIO.
    pub maskable: bool,
    /// Masked by the kernel each time it fires (INTx): unmask after service.
    pub automasked: bool,
    /// The vector count can only change by disabling and enabling again.
    pub noresize: bool,
}

impl IrqInfo {
    pub(crate) fn from_flags(index: IrqIndex, flags: u32, count: u32) -> IrqInfo {
        IrqInfo {
            index,
            count,
            eventfd: flags & VFIO_IRQ_INFO_EVENTFD != 0,
            maskable: flags & VFIO_IRQ_INFO_MASKABLE != 0,
            automasked: flags & VFIO_IRQ_INFO_AUTOMASKED != 0,
            noresize: flags & VFIO_IRQ_INFO_NORESIZE != 0,
        }
    }
}

/// The eventfds wired to the vectors of one IRQ index, vector `i` at position `i`.
/// Owned by the caller: register them with mio, or hand clones to another process or
/// an irqfd. Disable through the device ([`VfioDevice::disable_irqs`]); the device also
/// disables every index it enabled when it is quiesced or dropped.
#[derive(Debug)]
pub struct IrqSet {
    index: IrqIndex,
    eventfds: Vec<EventFd>,
}

impl IrqSet {
    /// The index these vectors belong to.
    pub fn index(&self) -> IrqIndex {
        self.index
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.eventfds.len()
    }

    /// True when no vector is wired.
    pub fn is_empty(&self) -> bool {
        self.eventfds.is_empty()
    }

    /// The eventfd of `vector`.
    pub fn eventfd(&self, vector: usize) -> Option<&EventFd> {
        self.eventfds.get(vector)
    }

    /// The eventfd of `vector`, mutable (mio's `register` takes `&mut`).
    pub fn eventfd_mut(&mut self, vector: usize) -> Option<&mut EventFd> {
        self.eventfds.get_mut(vector)
    }

    /// All eventfds, vector 0 first.
    pub fn eventfds(&self) -> &[EventFd] {
        &self.eventfds
    }

    /// Give up the eventfds, e.g. to move them into an event loop.
    pub fn into_eventfds(self) -> Vec<EventFd> {
        self.eventfds
    }
}

/// What a `VFIO_DEVICE_SET_IRQS` does to the vectors it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask them (or, with eventfds, signal those when they are masked).
    Mask,
    /// Unmask them (or, with eventfds, signal those when they are unmasked: INTx's
    /// resample fd).
    Unmask,
    /// Trigger them (or, with eventfds, signal those when the device interrupts).
    Trigger,
}

impl IrqAction {
    fn flag(self) -> u32 {
        match self {
            IrqAction::Mask => VFIO_IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => VFIO_IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => VFIO_IRQ_SET_ACTION_TRIGGER,
        }
    }
}

/// The vectors a `VFIO_DEVICE_SET_IRQS` acts on, and its data.
#[derive(Clone, Copy, Debug)]
pub enum IrqData<'a> {
    /// `count` vectors from the start, unconditionally. A count of 0 with
    /// [`IrqAction::Trigger`] disables the whole index.
    None { count: u32 },
    /// Vector `start + i` where `flags[i]` is true.
    Bool(&'a [bool]),
    /// Vector `start + i` signals `fds[i]`; `None` de-assigns it.
    Eventfds(&'a [Option<BorrowedFd<'a>>]),
}

/// The `VFIO_DEVICE_SET_IRQS` payload for eventfds: one i32 per vector, -1 to detach.
pub(crate) fn eventfd_payload(fds: &[Option<BorrowedFd<'_>>]) -> Vec<u8> {
    fds.iter()
        .flat_map(|fd| fd.map_or(-1, |f| f.as_raw_fd()).to_ne_bytes())
        .collect()
}

impl VfioDevice {
    fn irq_error(
        &self,
        index: IrqIndex,
        op: impl Into<String>,
        reason: impl Into<String>,
    ) -> VfioError {
        VfioError::Irq {
            device: self.name().to_string(),
            index,
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// What the device offers on `index`. An index the device does not have (ERR on a
    /// conventional PCI device) reports a count of 0.
    pub fn irq_info(&self, index: IrqIndex) -> Result<IrqInfo> {
        match ioctl::device_get_irq_info(self.as_fd(), index.raw()) {
            Ok(info) => Ok(IrqInfo::from_flags(index, info.flags, info.count)),
            Err(nix::errno::Errno::EINVAL) => Ok(IrqInfo::from_flags(index, 0, 0)),
            Err(source) => {
                Err(self.ioctl_error(format!("VFIO_DEVICE_GET_IRQ_INFO({index})"), source))
            }
        }
    }

    /// Checks that `index` can signal eventfds for `count` vectors.
    fn check_vectors(&self, index: IrqIndex, op: &str, end: u32) -> Result<IrqInfo> {
        let info = self.irq_info(index)?;
        if info.count == 0 || !info.eventfd {
            return Err(self.irq_error(index, op, "the device has no such interrupt"));
        }
        if end > info.count {
            return Err(self.irq_error(
                index,
                op,
                format!("the device has {} vector(s)", info.count),
            ));
        }
        Ok(info)
    }

    /// Wires `fds[i]` to vector `start + i` of `index` (`None` detaches that vector).
    /// For consumers that bring their own eventfds, such as a VMM's irqfds.
    pub fn set_irq_eventfds(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<BorrowedFd<'_>>],
    ) -> Result<()> {
        let count = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        let op = format!("wire vectors {start}..{}", start.saturating_add(count));
        if count == 0 {
            return Err(self.irq_error(index, op, "no vectors given"));
        }
        self.check_vectors(index, &op, start.saturating_add(count))?;
        ioctl::device_set_irqs(
            self.as_fd(),
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index.raw(),
            start,
            count,
            &eventfd_payload(fds),
        )
        .map_err(|e| self.ioctl_error(format!("VFIO_DEVICE_SET_IRQS({index} {op})"), e))?;
        self.note_irqs_enabled(index, true);
        Ok(())
    }

    /// `VFIO_DEVICE_SET_IRQS` as a client of the device asked for it: any action with
    /// any data, for consumers (a vfio-user server) that pass a VMM's requests on. The
    /// kernel checks the vector range against what the index offers.
    pub fn set_irqs(
        &self,
        index: IrqIndex,
        action: IrqAction,
        start: u32,
        data: IrqData<'_>,
    ) -> Result<()> {
        let (data_flag, count, payload) = match data {
            IrqData::None { count } => (VFIO_IRQ_SET_DATA_NONE, count, Vec::new()),
            IrqData::Bool(flags) => (
                VFIO_IRQ_SET_DATA_BOOL,
                u32::try_from(flags.len()).unwrap_or(u32::MAX),
                flags.iter().map(|b| u8::from(*b)).collect(),
            ),
            IrqData::Eventfds(fds) => (
                VFIO_IRQ_SET_DATA_EVENTFD,
                u32::try_from(fds.len()).unwrap_or(u32::MAX),
                eventfd_payload(fds),
            ),
        };
        let op = format!(
            "{action:?} vectors {start}..{}",
            start.saturating_add(count)
        );
        ioctl::device_set_irqs(
            self.as_fd(),
            data_flag | action.flag(),
            index.raw(),
            start,
            count,
            &payload,
        )
        .map_err(|e| self.ioctl_error(format!("VFIO_DEVICE_SET_IRQS({index} {op})"), e))?;
        if action == IrqAction::Trigger {
            match data {
                IrqData::None { count: 0 } => self.note_irqs_enabled(index, false),
                IrqData::Eventfds(fds) if fds.iter().any(Option::is_some) => {
                    self.note_irqs_enabled(index, true)
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Enables `count` vectors of `index`, each signalling a new eventfd.
    pub fn enable_irqs(&self, index: IrqIndex, count: u32) -> Result<IrqSet> {
        let op = format!("enable {count} vector(s)");
        if count == 0 {
            return Err(self.irq_error(index, op, "asked for no vectors"));
        }
        self.check_vectors(index, &op, count)?;
        let eventfds = (0..count)
            .map(|_| EventFd::new())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| VfioError::EventFd {
                device: self.name().to_string(),
                index,
                source,
            })?;
        let fds: Vec<_> = eventfds.iter().map(|e| Some(e.as_fd())).collect();
        self.set_irq_eventfds(index, 0, &fds)?;
        Ok(IrqSet { index, eventfds })
    }

    /// Changes the number of vectors of an enabled set, keeping the eventfds of the
    /// vectors that remain. Where the kernel cannot resize in place (NORESIZE), the
    /// index is disabled and enabled again with the new count.
    pub fn resize_irqs(&self, set: &mut IrqSet, count: u32) -> Result<()> {
        let index = set.index;
        let op = format!("resize {} -> {count} vector(s)", set.len());
        if count == 0 {
            return Err(self.irq_error(index, op, "use disable_irqs to remove every vector"));
        }
        let info = self.check_vectors(index, &op, count)?;
        let old = set.len() as u32;
        let mut grown = Vec::new();
        for _ in old..count {
            grown.push(EventFd::new().map_err(|source| VfioError::EventFd {
                device: self.name().to_string(),
                index,
                source,
            })?);
        }
        if info.noresize {
            self.disable_irqs(index)?;
            let keep = set.eventfds.iter().take(count as usize);
            let fds: Vec<_> = keep.chain(grown.iter()).map(|e| Some(e.as_fd())).collect();
            self.set_irq_eventfds(index, 0, &fds)?;
        } else if count > old {
            let fds: Vec<_> = grown.iter().map(|e| Some(e.as_fd())).collect();
            self.set_irq_eventfds(index, old, &fds)?;
        } else if count < old {
            let fds = vec![None; (old - count) as usize];
            self.set_irq_eventfds(index, count, &fds)?;
        }
        set.eventfds.truncate(count as usize);
        set.eventfds.extend(grown);
        Ok(())
    }

    /// Disables every vector of `index` (the eventfds stop being signalled).
    pub fn disable_irqs(&self, index: IrqIndex) -> Result<()> {
        ioctl::device_set_irqs(
            self.as_fd(),
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index.raw(),
            0,
            0,
            &[],
        )
        .map_err(|e| self.ioctl_error(format!("VFIO_DEVICE_SET_IRQS({index} disable)"), e))?;
        self.note_irqs_enabled(index, false);
        Ok(())
    }

    fn mask_action(&self, index: IrqIndex, vector: u32, action: u32, verb: &str) -> Result<()> {
        let op = format!("{verb} vector {vector}");
        let info = self.check_vectors(index, &op, vector.saturating_add(1))?;
        if !info.maskable {
            return Err(self.irq_error(
                index,
                op,
                "the kernel offers no masking for this index (vfio-pci masks only INTx); \
                 leave the vector enabled and ignore or defer its eventfd instead",
            ));
        }
        ioctl::device_set_irqs(
            self.as_fd(),
            VFIO_IRQ_SET_DATA_NONE | action,
            index.raw(),
            vector,
            1,
            &[],
        )
        .map_err(|e| self.ioctl_error(format!("VFIO_DEVICE_SET_IRQS({index} {op})"), e))
    }

    /// Masks one vector (only indexes the kernel reports maskable, in practice INTx).
    pub fn mask_irq(&self, index: IrqIndex, vector: u32) -> Result<()> {
        self.mask_action(index, vector, VFIO_IRQ_SET_ACTION_MASK, "mask")
    }

    /// Unmasks one vector.
    pub fn unmask_irq(&self, index: IrqIndex, vector: u32) -> Result<()> {
        self.mask_action(index, vector, VFIO_IRQ_SET_ACTION_UNMASK, "unmask")
    }

    /// Unmasks INTx after the interrupt has been serviced (the kernel masked it when it
    /// fired). Until then the line stays quiet, however often the device asserts it.
    pub fn unmask_intx(&self) -> Result<()> {
        self.unmask_irq(IrqIndex::Intx, 0)
    }

    /// Makes the kernel signal `vector`'s eventfd as if the device had interrupted: a
    /// loopback check of the wiring, independent of the device.
    pub fn trigger_irq(&self, index: IrqIndex, vector: u32) -> Result<()> {
        let op = format!("trigger vector {vector}");
        self.check_vectors(index, &op, vector.saturating_add(1))?;
        ioctl::device_set_irqs(
            self.as_fd(),
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index.raw(),
            vector,
            1,
            &[],
        )
        .map_err(|e| self.ioctl_error(format!("VFIO_DEVICE_SET_IRQS({index} {op})"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_numbers_and_names() {
        let raws: Vec<u32> = IrqIndex::ALL.iter().map(|i| i.raw()).collect();
        assert_eq!(raws, vec![0, 1, 2, 3, 4]);
        assert_eq!(IrqIndex::Msix.to_string(), "MSI-X");
    }

    #[test]
    fn flags_decode() {
        let intx = IrqInfo::from_flags(IrqIndex::Intx, 0x7, 1);
        assert!(intx.eventfd && intx.maskable && intx.automasked && !intx.noresize);
        let msix = IrqInfo::from_flags(IrqIndex::Msix, 0x9, 5);
        assert!(msix.eventfd && !msix.maskable && msix.noresize);
        assert_eq!(msix.count, 5);
    }

    #[test]
    fn payload_is_one_i32_per_vector_with_minus_one_for_none() {
        let a = EventFd::new().unwrap();
        let p = eventfd_payload(&[Some(a.as_fd()), None]);
        assert_eq!(p.len(), 8);
        assert_eq!(
            i32::from_ne_bytes(p[0..4].try_into().unwrap()),
            a.as_raw_fd()
        );
        assert_eq!(i32::from_ne_bytes(p[4..8].try_into().unwrap()), -1);
    }
}
