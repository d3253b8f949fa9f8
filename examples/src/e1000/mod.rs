//! A user-level driver for the Intel 8254x (e1000) NIC, as QEMU emulates it.
//!
//! Setup: stop the NIC, reset it, give it a transmit and a receive ring in DMA
//! memory, enable both, wait for the link. Transmit copies frames into ring buffers
//! and writes TDT once per batch; receive takes frames whose descriptors the NIC marked
//! done and writes RDT once per batch. Completion is learnt by polling descriptors or
//! from the INTx interrupt's eventfd: read ICR (which clears the cause), then unmask
//! INTx, which VFIO masked when it fired.
//!
//! Dropping the driver stops receive and transmit, masks every interrupt cause, turns
//! bus mastering off and disables INTx: the NIC is quiet before its rings are freed.

pub mod frame;
pub mod regs;
pub mod ring;
pub mod traffic;

use std::time::{Duration, Instant};

use udriver::pci::{PciAddress, PciDevice};
use udriver::vfio::{Bar, IrqIndex, IrqSet};

use crate::device::Device;
use crate::error::{DriverError, Result};
use crate::stop;
use crate::wait::{poll_until, Completion};
use frame::MacAddress;
use regs::*;
use ring::{RxRing, RxStatus, TxRing, MAX_FRAME};

/// PCI device IDs of the 8254x models QEMU emulates: 82540EM (its default), 82544GC,
/// 82545EM.
pub const DEVICE_IDS: [u16; 3] = [0x100e, 0x100c, 0x100f];

/// How long the link may take to come up.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a register change (reset) may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(1);

fn is_e1000(pci: &PciDevice) -> bool {
    pci.vendor_id == 0x8086 && DEVICE_IDS.contains(&pci.device_id)
}

/// Ring sizes and how completions are learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Transmit descriptors (a power of two, 8..=4096).
    pub tx_descriptors: usize,
    /// Receive descriptors (a power of two, 8..=4096).
    pub rx_descriptors: usize,
    /// Polling or interrupts.
    pub completion: Completion,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tx_descriptors: 512,
            rx_descriptors: 512,
            completion: Completion::Polling,
        }
    }
}

/// Hardware statistics since the last read (the NIC clears them on read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Good frames transmitted (GPTC).
    pub tx_frames: u32,
    /// Good frames received (GPRC).
    pub rx_frames: u32,
    /// Frames dropped because the receive ring was full (MPC).
    pub rx_missed: u32,
}

/// An e1000 driven from user space.
#[derive(Debug)]
pub struct E1000 {
    device: Device,
    bar0: Bar,
    tx: TxRing,
    rx: RxRing,
    intx: Option<IrqSet>,
    mac: MacAddress,
    interrupts: u64,
    scratch: Vec<u8>,
}

impl E1000 {
    /// Opens `address` (bound to vfio-pci), resets and sets up the NIC, and waits for
    /// the link.
    pub fn open(address: PciAddress, config: &Config) -> Result<E1000> {
        let device = Device::open(address, "an Intel 8254x (e1000) NIC", is_e1000)?;
        let bar0 = device.vfio().bar(0)?;
        let tx = TxRing::new(&device, config.tx_descriptors)?;
        let rx = RxRing::new(&device, config.rx_descriptors)?;
        let mut nic = E1000 {
            device,
            bar0,
            tx,
            rx,
            intx: None,
            mac: MacAddress([0; 6]),
            interrupts: 0,
            scratch: Vec::with_capacity(ring::BUFFER_SIZE),
        };
        // From here on, an error drops `nic`, and Drop leaves the NIC quiet.
        nic.init(config.completion)?;
        Ok(nic)
    }

    fn read(&self, reg: u64) -> Result<u32> {
        Ok(self.bar0.read32(reg)?)
    }

    fn write(&self, reg: u64, value: u32) -> Result<()> {
        Ok(self.bar0.write32(reg, value)?)
    }

    fn init(&mut self, completion: Completion) -> Result<()> {
        // Stop everything, then reset. (QEMU's model ignores RST, so every register
        // this driver relies on is written below regardless.)
        self.stop_engines()?;
        let ctrl = self.read(CTRL)?;
        self.write(CTRL, ctrl | CTRL_RST)?;
        poll_until(
            self.name(),
            REGISTER_TIMEOUT,
            || "CTRL.RST to clear after reset".into(),
            || Ok((self.read(CTRL)? & CTRL_RST == 0).then_some(())),
        )?;
        self.stop_engines()?;
        let ctrl = self.read(CTRL)?;
        self.write(CTRL, (ctrl | CTRL_SLU | CTRL_ASDE) & !CTRL_PHY_RST)?;

        let (ral, rah) = (self.read(RAL0)?, self.read(RAH0)?);
        if rah & RAH_AV == 0 {
            return Err(DriverError::Setup {
                device: self.name().into(),
                reason: "no valid MAC address in RAL0/RAH0 after reset".into(),
            });
        }
        let mut mac = [0u8; 6];
        mac[..4].copy_from_slice(&ral.to_le_bytes());
        mac[4..].copy_from_slice(&rah.to_le_bytes()[..2]);
        self.mac = MacAddress(mac);
        for i in 0..128 {
            self.write(MTA + 4 * i, 0)?;
        }
        // Clear the statistics (they clear on read).
        for reg in [MPC, GPRC, GPTC] {
            self.read(reg)?;
        }

        self.device.vfio().set_bus_master(true)?;

        let (lo, hi) = split(self.rx.iova());
        self.write(RDBAL, lo)?;
        self.write(RDBAH, hi)?;
        self.write(RDLEN, self.rx.bytes())?;
        self.write(RDH, 0)?;
        self.write(RDT, self.rx.tail())?;
        self.write(RDTR, 0)?;
        // Unicast to our address only (no broadcast, no multicast): the test traffic
        // is all that reaches the ring.
        self.write(RCTL, RCTL_EN | RCTL_BSIZE_2048 | RCTL_SECRC)?;

        let (lo, hi) = split(self.tx.iova());
        self.write(TDBAL, lo)?;
        self.write(TDBAH, hi)?;
        self.write(TDLEN, self.tx.bytes())?;
        self.write(TDH, 0)?;
        self.write(TDT, 0)?;
        self.write(TIDV, 0)?;
        self.write(TIPG, TIPG_COPPER)?;
        self.write(
            TCTL,
            TCTL_EN | TCTL_PSP | TCTL_CT_15 | TCTL_COLD_FULL_DUPLEX,
        )?;

        if completion == Completion::Interrupts {
            self.intx = Some(self.device.vfio().enable_irqs(IrqIndex::Intx, 1)?);
            self.write(ITR, 0)?;
            self.write(IMS, INT_RXT0 | INT_RXO | INT_RXDMT0 | INT_TXDW | INT_LSC)?;
        }

        poll_until(
            self.name(),
            LINK_TIMEOUT,
            || {
                let status = self.read(STATUS).unwrap_or(0);
                format!("the link to come up (STATUS {status:#010x}); is the NIC connected?")
            },
            || Ok((self.read(STATUS)? & STATUS_LU != 0).then_some(())),
        )
    }

    /// Masks all interrupt causes, stops receive and transmit.
    fn stop_engines(&self) -> Result<()> {
        self.write(IMC, INT_ALL)?;
        self.write(RCTL, 0)?;
        self.write(TCTL, 0)?;
        self.read(ICR)?;
        Ok(())
    }

    /// The device's name, `0000:00:02.0`.
    pub fn name(&self) -> &str {
        self.device.name()
    }

    /// The opened device (config space, interrupts), e.g. to inspect it.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Reads the 32-bit register at `offset` in BAR0 (see [`regs`]).
    pub fn read_register(&self, offset: u64) -> Result<u32> {
        self.read(offset)
    }

    /// The NIC's MAC address.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// How completions are learnt.
    pub fn completion(&self) -> Completion {
        if self.intx.is_some() {
            Completion::Interrupts
        } else {
            Completion::Polling
        }
    }

    /// Interrupts serviced so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// Transmit descriptors that can be filled now (after reclaiming finished ones).
    pub fn tx_free(&mut self) -> Result<usize> {
        self.tx.reclaim()?;
        Ok(self.tx.free())
    }

    /// Frames handed to the NIC and not yet known to be sent.
    pub fn tx_in_flight(&self) -> usize {
        self.tx.in_flight()
    }

    /// Queues as many of `frames` as fit in the transmit ring and hands them to the
    /// NIC with one TDT write. Returns how many were queued; the rest must be offered
    /// again. A frame of a size Ethernet cannot carry is an error; the frames before
    /// it are still sent.
    pub fn send<'a>(&mut self, frames: impl IntoIterator<Item = &'a [u8]>) -> Result<usize> {
        self.service_pending_interrupt()?;
        self.tx.reclaim()?;
        let mut queued = 0;
        let mut refused = None;
        for frame in frames {
            if frame.len() > MAX_FRAME || frame.len() < frame::HEADER {
                refused = Some(frame.len());
                break;
            }
            if !self.tx.push(frame)? {
                break;
            }
            queued += 1;
        }
        if queued > 0 {
            self.tx.mark_report()?;
            // The descriptors were written with volatile stores; the fence keeps them
            // ahead of the doorbell on CPUs that would reorder stores.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            self.write(TDT, self.tx.tail())?;
        }
        match refused {
            None => Ok(queued),
            Some(len) => Err(DriverError::Request {
                device: self.name().into(),
                reason: format!(
                    "a frame of {len} bytes after {queued} sent: frames are {}..={MAX_FRAME} bytes (without CRC)",
                    frame::HEADER
                ),
            }),
        }
    }

    /// Waits until at least one transmit descriptor is free.
    pub fn wait_tx_space(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        while self.tx_free()? == 0 {
            if stop::requested() {
                return Err(DriverError::Interrupted {
                    device: self.name().into(),
                });
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(DriverError::Timeout {
                    device: self.name().into(),
                    what: format!(
                        "a free transmit descriptor (TDH {}, TDT {})",
                        self.read(TDH)?,
                        self.read(TDT)?
                    ),
                    waited: started.elapsed(),
                });
            }
            self.wait_event(left.min(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    /// Waits until every queued frame has been sent.
    pub fn wait_tx_done(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.tx.reclaim()?;
            if self.tx.in_flight() == 0 {
                return Ok(());
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(DriverError::Timeout {
                    device: self.name().into(),
                    what: format!(
                        "{} frames to be sent (TDH {}, TDT {})",
                        self.tx.in_flight(),
                        self.read(TDH)?,
                        self.read(TDT)?
                    ),
                    waited: started.elapsed(),
                });
            }
            self.wait_event(left.min(Duration::from_millis(100)))?;
        }
    }

    /// Takes up to `max` received frames, calling `each` with each frame's bytes and
    /// descriptor status, then gives their descriptors back with one RDT write.
    /// Returns how many were taken.
    pub fn receive(
        &mut self,
        max: usize,
        mut each: impl FnMut(&[u8], RxStatus) -> Result<()>,
    ) -> Result<usize> {
        let mut taken = 0;
        let mut frame = std::mem::take(&mut self.scratch);
        let result = loop {
            if taken == max {
                break Ok(());
            }
            match self.rx.take(&mut frame) {
                Ok(Some(status)) => {
                    taken += 1;
                    if let Err(e) = each(&frame, status) {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.scratch = frame;
        if taken > 0 {
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            self.write(RDT, self.rx.tail())?;
        }
        result.map(|()| taken)
    }

    /// Waits until a received frame is ready, up to `timeout`; false on timeout.
    /// With interrupts this sleeps on the INTx eventfd; when polling, it spins on the
    /// next receive descriptor.
    pub fn wait_rx(&mut self, timeout: Duration) -> Result<bool> {
        let started = Instant::now();
        loop {
            if self.rx.ready()? {
                return Ok(true);
            }
            if stop::requested() {
                return Err(DriverError::Interrupted {
                    device: self.name().into(),
                });
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(false);
            }
            self.wait_event(left.min(Duration::from_millis(100)))?;
        }
    }

    /// One wait for "something happened": an interrupt (serviced before returning), or
    /// when polling a short spin. Returns after at most `timeout`.
    fn wait_event(&mut self, timeout: Duration) -> Result<()> {
        let Some(intx) = &self.intx else {
            std::hint::spin_loop();
            return Ok(());
        };
        let fd = intx.eventfd(0).expect("INTx has one vector");
        let fired = fd.wait(timeout).map_err(|source| DriverError::Irq {
            device: self.device.name().into(),
            source,
        })?;
        if fired.is_some() {
            self.service_interrupt()?;
        }
        Ok(())
    }

    /// Services an interrupt that fired without anyone waiting for it (e.g. transmit
    /// write-backs while the loop was busy), so that INTx is unmasked again.
    fn service_pending_interrupt(&mut self) -> Result<()> {
        let Some(intx) = &self.intx else {
            return Ok(());
        };
        let fd = intx.eventfd(0).expect("INTx has one vector");
        let fired = fd.read().map_err(|source| DriverError::Irq {
            device: self.device.name().into(),
            source,
        })?;
        if fired.is_some() {
            self.service_interrupt()?;
        }
        Ok(())
    }

    /// Reading ICR clears the causes and lets the NIC drop the line; only then may
    /// INTx be unmasked, or it would fire again at once for the same causes.
    fn service_interrupt(&mut self) -> Result<()> {
        self.read(ICR)?;
        self.interrupts += 1;
        self.device.vfio().unmask_intx()?;
        Ok(())
    }

    /// Reads (and so clears) the NIC's frame counters.
    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters {
            tx_frames: self.read(GPTC)?,
            rx_frames: self.read(GPRC)?,
            rx_missed: self.read(MPC)?,
        })
    }

    /// Stops the NIC: no receive, no transmit, no interrupts, no bus mastering. Done on
    /// drop as well; call it to see errors.
    pub fn quiesce(&mut self) -> Result<()> {
        let engines = self.stop_engines();
        self.intx = None;
        let vfio = self.device.vfio().quiesce();
        engines?;
        Ok(vfio?)
    }
}

impl Drop for E1000 {
    fn drop(&mut self) {
        // Errors cannot be reported from here; `quiesce` goes as far as it can.
        let _ = self.quiesce();
    }
}

/// A 64-bit IOVA as the (low, high) register pair.
fn split(iova: u64) -> (u32, u32) {
    (iova as u32, (iova >> 32) as u32)
}
