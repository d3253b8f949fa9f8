//! `IrqWiring`: which VFIO interrupt index is live for a passthrough function and the
//! eventfds wired to its vectors.
//!
//! VFIO allows one index at a time (INTx, MSI or MSI-X), and its MSI/MSI-X vector
//! counts change only by disabling and enabling again. The function decides from the
//! guest's programming what should be live; [`IrqWiring::apply`] gets the device
//! there. Each vector keeps one eventfd for the function's life, however often it is
//! rewired, so a consumer that handed it to an irqfd or an event loop keeps it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use udriver::vfio::{EventFd, IrqIndex};

use super::device::PassthroughDevice;
use super::error::PassthroughError;

/// What should be live: an index and how many of its vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveIrqs {
    /// INTx, MSI or MSI-X.
    pub index: IrqIndex,
    /// Vectors wired to eventfds, from vector 0.
    pub vectors: usize,
}

/// The live index and every eventfd ever wired.
#[derive(Debug, Default)]
pub struct IrqWiring {
    live: Option<LiveIrqs>,
    intx: Vec<EventFd>,
    msi: Vec<EventFd>,
    msix: Vec<EventFd>,
}

impl IrqWiring {
    pub fn new() -> Self {
        Self::default()
    }

    /// What is live now.
    pub fn live(&self) -> Option<LiveIrqs> {
        self.live
    }

    fn pool(&self, index: IrqIndex) -> &[EventFd] {
        match index {
            IrqIndex::Intx => &self.intx,
            IrqIndex::Msi => &self.msi,
            IrqIndex::Msix => &self.msix,
            _ => &[],
        }
    }

    fn pool_mut(&mut self, index: IrqIndex) -> Option<&mut Vec<EventFd>> {
        match index {
            IrqIndex::Intx => Some(&mut self.intx),
            IrqIndex::Msi => Some(&mut self.msi),
            IrqIndex::Msix => Some(&mut self.msix),
            _ => None,
        }
    }

    /// The eventfd of `vector` of `index`, if that vector is live.
    pub fn eventfd(&self, index: IrqIndex, vector: usize) -> Option<&EventFd> {
        let live = self
            .live
            .filter(|l| l.index == index && vector < l.vectors)?;
        self.pool(live.index).get(vector)
    }

    fn grow(&mut self, index: IrqIndex, vectors: usize) -> io::Result<()> {
        let pool = self
            .pool_mut(index)
            .ok_or_else(|| io::Error::other(format!("{index} cannot be wired")))?;
        while pool.len() < vectors {
            pool.push(EventFd::new()?);
        }
        Ok(())
    }

    /// Make `want` live on `device`: disable what is live if it differs, then wire
    /// the new vectors. On error nothing is live.
    pub fn apply<D: PassthroughDevice + ?Sized>(
        &mut self,
        device: &D,
        want: Option<LiveIrqs>,
    ) -> Result<(), PassthroughError> {
        let want = want.filter(|w| w.vectors > 0);
        if want == self.live {
            return Ok(());
        }
        if let Some(old) = self.live.take() {
            device.disable_irqs(old.index).map_err(|e| {
                PassthroughError::device(device.name(), format!("disabling {}", old.index), e)
            })?;
        }
        let Some(new) = want else {
            return Ok(());
        };
        self.grow(new.index, new.vectors).map_err(|e| {
            PassthroughError::device(
                device.name(),
                format!("creating eventfds for {}", new.index),
                e.into(),
            )
        })?;
        let fds: Vec<BorrowedFd<'_>> = self.pool(new.index)[..new.vectors]
            .iter()
            .map(|e| e.as_fd())
            .collect();
        device.wire_irqs(new.index, &fds).map_err(|e| {
            PassthroughError::device(
                device.name(),
                format!("enabling {} vector(s) of {}", new.vectors, new.index),
                e,
            )
        })?;
        self.live = Some(new);
        Ok(())
    }
}
