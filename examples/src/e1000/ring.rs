//! Transmit and receive descriptor rings, each in one DMA buffer: the descriptors
//! first, then one 2 KiB packet buffer per descriptor.
//!
//! ```text
//! TxRing: software fills at `tail`, the NIC sends from TDH up to TDT (= tail) and
//!         writes DD back into descriptors that asked for it (RS); `clean` follows.
//! RxRing: the NIC fills from RDH up to RDT; software takes frames at `next` and gives
//!         the descriptors back by moving RDT to just behind `next`.
//! ```
//!
//! The rings only touch DMA memory; the driver (`super`) writes the tail registers, so
//! that one register write can hand over a whole batch.

use std::collections::VecDeque;

use dma::DmaAccess;

use super::regs::{
    DESCRIPTOR_SIZE, RXD_STAT_DD, RXD_STAT_EOP, TXD_CMD_EOP, TXD_CMD_IFCS, TXD_CMD_RS, TXD_STAT_DD,
};
use crate::device::{Device, DeviceBuffer};
use crate::error::{DriverError, Result};

/// Bytes of each packet buffer (RCTL.BSIZE = 2048).
pub const BUFFER_SIZE: usize = 2048;
/// The largest frame sent or received without the CRC (no jumbo frames).
pub const MAX_FRAME: usize = 1514;

/// Offsets inside a legacy descriptor.
const DESC_LENGTH: usize = 8;
const DESC_CMD: usize = 11;
const DESC_STATUS: usize = 12;
const DESC_ERRORS: usize = 13;

/// Checks a ring size: a power of two from 8 to 4096 (the ring length in bytes must be
/// a multiple of 128).
fn check_len(device: &Device, what: &str, len: usize) -> Result<()> {
    if !(8..=4096).contains(&len) || !len.is_power_of_two() {
        return Err(DriverError::Request {
            device: device.name().into(),
            reason: format!("{what} ring of {len} descriptors: use a power of two from 8 to 4096"),
        });
    }
    Ok(())
}

/// Descriptors and buffers of one ring in one DMA buffer.
#[derive(Debug)]
struct RingMemory {
    memory: DeviceBuffer,
    len: usize,
    buffers_at: usize,
}

impl RingMemory {
    fn new(device: &Device, len: usize, access: DmaAccess) -> Result<RingMemory> {
        let buffers_at = (len * DESCRIPTOR_SIZE).next_multiple_of(4096);
        let memory = device.dma_buffer(buffers_at + len * BUFFER_SIZE, access)?;
        Ok(RingMemory {
            memory,
            len,
            buffers_at,
        })
    }

    fn desc(&self, i: usize) -> usize {
        i * DESCRIPTOR_SIZE
    }

    fn buffer(&self, i: usize) -> usize {
        self.buffers_at + i * BUFFER_SIZE
    }

    fn buffer_iova(&self, i: usize) -> Result<u64> {
        Ok(self.memory.iova_at(self.buffer(i))?.0)
    }
}

/// The transmit ring.
#[derive(Debug)]
pub struct TxRing {
    ring: RingMemory,
    /// Next descriptor to fill; the value for TDT.
    tail: usize,
    /// Oldest descriptor not yet reclaimed.
    clean: usize,
    /// Descriptors sent with RS (the last of each batch), oldest first. DD on one of
    /// them means it and every descriptor before it are done.
    reports: VecDeque<usize>,
}

impl TxRing {
    /// A ring of `len` descriptors with their buffers, all zero (owned by software).
    pub fn new(device: &Device, len: usize) -> Result<TxRing> {
        check_len(device, "transmit", len)?;
        Ok(TxRing {
            ring: RingMemory::new(device, len, DmaAccess::ReadWrite)?,
            tail: 0,
            clean: 0,
            reports: VecDeque::new(),
        })
    }

    /// IOVA of the first descriptor, for TDBAL/TDBAH.
    pub fn iova(&self) -> u64 {
        self.ring.memory.iova().0
    }

    /// Ring length in bytes, for TDLEN.
    pub fn bytes(&self) -> u32 {
        (self.ring.len * DESCRIPTOR_SIZE) as u32
    }

    /// Descriptors in the ring.
    pub fn len(&self) -> usize {
        self.ring.len
    }

    /// Always false: a ring has at least 8 descriptors.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The value for TDT: one past the last descriptor filled.
    pub fn tail(&self) -> u32 {
        self.tail as u32
    }

    /// Descriptors handed to the NIC and not yet reclaimed.
    pub fn in_flight(&self) -> usize {
        (self.tail + self.ring.len - self.clean) % self.ring.len
    }

    /// Descriptors that can be filled now. One always stays empty: TDH == TDT means
    /// "nothing to send", so a full ring must stop one short.
    pub fn free(&self) -> usize {
        self.ring.len - 1 - self.in_flight()
    }

    /// Copies `frame` into the next buffer and fills its descriptor (without RS).
    /// Returns false when the ring is full. The NIC sees it after the next TDT write.
    pub fn push(&mut self, frame: &[u8]) -> Result<bool> {
        if self.free() == 0 {
            return Ok(false);
        }
        let i = self.tail;
        let mem = &self.ring.memory;
        mem.copy_from(self.ring.buffer(i), frame)?;
        let d = self.ring.desc(i);
        mem.write::<u64>(d, self.ring.buffer_iova(i)?)?;
        let cmd = u64::from(TXD_CMD_EOP | TXD_CMD_IFCS);
        // Length (bytes 8-9), CSO 0, CMD (byte 11), status 0: one 64-bit store.
        mem.write::<u64>(d + DESC_LENGTH, frame.len() as u64 | cmd << 24)?;
        self.tail = (i + 1) % self.ring.len;
        Ok(true)
    }

    /// Asks for a status write-back on the last descriptor pushed: the end of a batch.
    /// Fewer write-backs mean fewer DMA writes for the NIC.
    pub fn mark_report(&mut self) -> Result<()> {
        let last = (self.tail + self.ring.len - 1) % self.ring.len;
        if self.in_flight() == 0 || self.reports.back() == Some(&last) {
            return Ok(());
        }
        let at = self.ring.desc(last) + DESC_CMD;
        let cmd = self.ring.memory.read::<u8>(at)?;
        self.ring.memory.write::<u8>(at, cmd | TXD_CMD_RS)?;
        self.reports.push_back(last);
        Ok(())
    }

    /// Reclaims every descriptor the NIC is done with; returns how many.
    pub fn reclaim(&mut self) -> Result<usize> {
        let mut done = 0;
        while let Some(&i) = self.reports.front() {
            let status = self
                .ring
                .memory
                .read::<u8>(self.ring.desc(i) + DESC_STATUS)?;
            if status & TXD_STAT_DD == 0 {
                break;
            }
            self.reports.pop_front();
            let next = (i + 1) % self.ring.len;
            done += (next + self.ring.len - self.clean) % self.ring.len;
            self.clean = next;
        }
        Ok(done)
    }
}

/// One received frame's descriptor fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxStatus {
    /// Bytes in the frame (without the CRC, which the NIC strips).
    pub len: usize,
    /// The descriptor's error byte (CRC, symbol, sequence errors); 0 when good.
    pub errors: u8,
    /// End of packet: the whole frame is in this one buffer.
    pub end_of_packet: bool,
}

/// The receive ring.
#[derive(Debug)]
pub struct RxRing {
    ring: RingMemory,
    /// Next descriptor to look at.
    next: usize,
}

impl RxRing {
    /// A ring of `len` descriptors, each pointing at its buffer, none done.
    pub fn new(device: &Device, len: usize) -> Result<RxRing> {
        check_len(device, "receive", len)?;
        let ring = RingMemory::new(device, len, DmaAccess::ReadWrite)?;
        for i in 0..len {
            ring.memory
                .write::<u64>(ring.desc(i), ring.buffer_iova(i)?)?;
        }
        Ok(RxRing { ring, next: 0 })
    }

    /// IOVA of the first descriptor, for RDBAL/RDBAH.
    pub fn iova(&self) -> u64 {
        self.ring.memory.iova().0
    }

    /// Ring length in bytes, for RDLEN.
    pub fn bytes(&self) -> u32 {
        (self.ring.len * DESCRIPTOR_SIZE) as u32
    }

    /// Descriptors in the ring.
    pub fn len(&self) -> usize {
        self.ring.len
    }

    /// Always false: a ring has at least 8 descriptors.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The value for RDT: every descriptor but the one just behind `next` belongs to
    /// the NIC (RDH == RDT would mean "no buffers").
    pub fn tail(&self) -> u32 {
        ((self.next + self.ring.len - 1) % self.ring.len) as u32
    }

    /// Whether the NIC has finished the next descriptor.
    pub fn ready(&self) -> Result<bool> {
        let status = self
            .ring
            .memory
            .read::<u8>(self.ring.desc(self.next) + DESC_STATUS)?;
        Ok(status & RXD_STAT_DD != 0)
    }

    /// Takes the next frame, if the NIC has finished one: copies it into `out` (resized
    /// to the frame) and makes the descriptor ready for reuse. The NIC gets it back at
    /// the next RDT write.
    pub fn take(&mut self, out: &mut Vec<u8>) -> Result<Option<RxStatus>> {
        if !self.ready()? {
            return Ok(None);
        }
        let mem = &self.ring.memory;
        let d = self.ring.desc(self.next);
        let status = mem.read::<u8>(d + DESC_STATUS)?;
        let rx = RxStatus {
            len: usize::from(mem.read::<u16>(d + DESC_LENGTH)?).min(BUFFER_SIZE),
            errors: mem.read::<u8>(d + DESC_ERRORS)?,
            end_of_packet: status & RXD_STAT_EOP != 0,
        };
        out.resize(rx.len, 0);
        // copy_to fences first, so the payload is read after the DD bit was seen.
        mem.copy_to(self.ring.buffer(self.next), out)?;
        // Clear length, status and errors; the buffer address stays.
        mem.write::<u64>(d + DESC_LENGTH, 0)?;
        self.next = (self.next + 1) % self.ring.len;
        Ok(Some(rx))
    }
}
