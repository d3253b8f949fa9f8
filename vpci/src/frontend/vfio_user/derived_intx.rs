//! INTx for a function whose interrupt VFIO cannot deliver (a legacy-mode IDE
//! controller: see [`PassthroughFunction::derives_intx`]). The client is offered one
//! maskable, automasked INTx as for a real line; its eventfd stays here instead of
//! going to VFIO, and is signalled when the function says a channel asks for an
//! interrupt.
//!
//! The line is edge-like per channel: a channel's request is signalled once, then
//! not again until the device's interrupt bit is seen clear (the driver acknowledged
//! it). The client's EOI (UNMASK, which QEMU sends at the guest's next BAR access)
//! therefore re-arms the line without signalling the request being serviced again.
//!
//! The device's bit is looked at after the accesses that can raise or acknowledge an
//! interrupt and, while a command is in flight, every [`POLL_INTERVAL`] from the
//! session's read loop: the device completes commands long after the access that
//! started them, and a PIO transfer raises one interrupt per block. A command is in
//! flight from its start until the channel is seen with no interrupt asked and
//! nothing under way.

use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::errno::Errno;
use udriver::vfio::IrqAction;

use super::protocol::{IrqSetData, Refusal};
use crate::bar::BarIndex;
use crate::handover::{FdBag, FdSlot, HandoverError};
use crate::passthrough::{DerivedIntxEvent, PassthroughDevice, PassthroughFunction};

/// How often an in-flight command's completion is looked for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// The derived INTx line and the client's eventfd for it.
#[derive(Debug, Default)]
pub struct DerivedIntx {
    eventfd: Option<OwnedFd>,
    masked: bool,
    /// Per channel: its request was signalled and its bit not yet seen clear.
    signalled: [bool; 2],
    /// Per channel: a command was started and the channel not yet seen idle.
    in_flight: [bool; 2],
    /// Times the eventfd was signalled.
    signals: u64,
}

/// A [`DerivedIntx`] carried to a successor process.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DerivedIntxState {
    eventfd: Option<FdSlot>,
    masked: bool,
    signalled: [bool; 2],
    in_flight: [bool; 2],
    signals: u64,
}

impl DerivedIntx {
    /// The line as it is, its eventfd put into `bag`.
    pub fn hand_over(self, bag: &mut FdBag) -> DerivedIntxState {
        DerivedIntxState {
            eventfd: self.eventfd.map(|fd| bag.put(fd)),
            masked: self.masked,
            signalled: self.signalled,
            in_flight: self.in_flight,
            signals: self.signals,
        }
    }

    /// The line a predecessor handed over.
    pub fn resume(state: &DerivedIntxState, bag: &mut FdBag) -> Result<Self, HandoverError> {
        Ok(DerivedIntx {
            eventfd: state.eventfd.map(|slot| bag.take(slot)).transpose()?,
            masked: state.masked,
            signalled: state.signalled,
            in_flight: state.in_flight,
            signals: state.signals,
        })
    }

    /// Times the client's eventfd was signalled.
    pub fn signals(&self) -> u64 {
        self.signals
    }

    /// How long the session may wait for a message before [`poll`](Self::poll) is
    /// due; `None` when nothing is in flight (or nothing could be signalled).
    pub fn poll_interval(&self) -> Option<Duration> {
        (self.eventfd.is_some() && !self.masked && self.in_flight.iter().any(|f| *f))
            .then_some(POLL_INTERVAL)
    }

    /// DEVICE_SET_IRQS on the INTx index (the only vector is 0).
    pub fn set<D: PassthroughDevice + 'static>(
        &mut self,
        function: &mut PassthroughFunction<D>,
        action: IrqAction,
        start: u32,
        count: u32,
        data: IrqSetData,
    ) -> Result<(), Refusal> {
        let what = format!("SET_IRQS {action:?} on the derived INTx");
        if count == 0 {
            if action != IrqAction::Trigger || !matches!(data, IrqSetData::None) {
                return Err(Refusal::new(
                    Errno::EINVAL,
                    format!("{what}: count 0 is only the disable form (DATA_NONE, TRIGGER)"),
                ));
            }
            self.eventfd = None;
            return Ok(());
        }
        if start != 0 || count != 1 {
            return Err(Refusal::new(
                Errno::EINVAL,
                format!(
                    "{what}: vectors {start}..{} but INTx has one",
                    start.saturating_add(count)
                ),
            ));
        }
        let act = match &data {
            IrqSetData::None => true,
            IrqSetData::Bool(flags) => flags.first().copied().unwrap_or(false),
            IrqSetData::Eventfds(_) => false,
        };
        match (action, data) {
            (IrqAction::Trigger, IrqSetData::Eventfds(mut fds)) => {
                // A new eventfd starts unmasked, as VFIO enables INTx.
                self.eventfd = fds.pop().flatten();
                self.masked = false;
                self.signalled = [false; 2];
                self.evaluate(function);
            }
            (IrqAction::Trigger, _) if act => self.signal(),
            (IrqAction::Mask, IrqSetData::Eventfds(_))
            | (IrqAction::Unmask, IrqSetData::Eventfds(_)) => {
                return Err(Refusal::new(
                    Errno::ENOTSUP,
                    format!("{what}: mask/unmask eventfds (irqfd resampling) are not offered for a derived INTx"),
                ));
            }
            (IrqAction::Mask, _) if act => self.masked = true,
            (IrqAction::Unmask, _) if act => {
                self.masked = false;
                self.evaluate(function);
            }
            _ => {}
        }
        Ok(())
    }

    /// After a BAR access (a write of `written`, or a read of `len` bytes).
    pub fn after_access<D: PassthroughDevice + 'static>(
        &mut self,
        function: &mut PassthroughFunction<D>,
        bar: BarIndex,
        offset: u64,
        len: usize,
        written: Option<&[u8]>,
    ) {
        match function.derived_intx_event(bar, offset, len, written) {
            Some(DerivedIntxEvent::CommandStarted(channel)) => {
                if let Some(flag) = self.in_flight.get_mut(channel) {
                    *flag = true;
                }
                self.evaluate(function);
            }
            Some(DerivedIntxEvent::StatusTouched) => self.evaluate(function),
            None => {}
        }
    }

    /// Look at the device: a timer tick while a command is in flight.
    pub fn poll<D: PassthroughDevice + 'static>(&mut self, function: &mut PassthroughFunction<D>) {
        self.evaluate(function);
    }

    fn evaluate<D: PassthroughDevice + 'static>(&mut self, function: &mut PassthroughFunction<D>) {
        if self.eventfd.is_none() {
            return;
        }
        let channels = function.derived_intx_state();
        let mut raise = false;
        for (channel, state) in channels.into_iter().enumerate() {
            if !state.interrupt {
                self.signalled[channel] = false;
                if !state.busy {
                    self.in_flight[channel] = false;
                }
            } else if !self.signalled[channel] && !self.masked {
                self.signalled[channel] = true;
                raise = true;
            }
        }
        if raise {
            self.masked = true;
            self.signal();
        }
    }

    fn signal(&mut self) {
        if let Some(fd) = &self.eventfd {
            match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
                Ok(_) => self.signals += 1,
                Err(e) => tracing::warn!(error = %e, "signalling the client's INTx eventfd"),
            }
        }
    }
}
