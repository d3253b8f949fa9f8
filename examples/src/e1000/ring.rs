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

use dma::{DmaAccess, DmaBuffer, DmaMapper};
use udriver::vfio::VfioContainer;

use super::regs::{
    DESCRIPTOR_SIZE, RXD_STAT_DD, RXD_STAT_EOP, TXD_CMD_EOP, TXD_CMD_IFCS, TXD_CMD_RS, TXD_STAT_DD,
};
use crate::device::Device;
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
fn check_len(device: &str, what: &str, len: usize) -> Result<()> {
    if !(8..=4096).contains(&len) || !len.is_power_of_two() {
        return Err(DriverError::Request {
            device: device.into(),
            reason: format!("{what} ring of {len} descriptors: use a power of two from 8 to 4096"),
        });
    }
    Ok(())
}

/// Bytes of DMA memory a ring of `len` descriptors and their buffers take.
pub fn ring_bytes(len: usize) -> usize {
    buffers_at(len) + len * BUFFER_SIZE
}

/// Where the buffers start: after the descriptors, on a page of their own.
fn buffers_at(len: usize) -> usize {
    (len * DESCRIPTOR_SIZE).next_multiple_of(4096)
}

/// Descriptors and buffers of one ring in one DMA buffer.
#[derive(Debug)]
struct RingMemory<M: DmaMapper> {
    memory: DmaBuffer<M>,
    len: usize,
}

impl<M: DmaMapper> RingMemory<M> {
    fn new(device: &str, memory: DmaBuffer<M>, len: usize) -> Result<RingMemory<M>> {
        if memory.len() < ring_bytes(len) {
            return Err(DriverError::Request {
                device: device.into(),
                reason: format!(
                    "a ring of {len} descriptors needs {} bytes of DMA memory, not {}",
                    ring_bytes(len),
                    memory.len()
                ),
            });
        }
        Ok(RingMemory { memory, len })
    }

    fn desc(&self, i: usize) -> usize {
        i * DESCRIPTOR_SIZE
    }

    fn buffer(&self, i: usize) -> usize {
        buffers_at(self.len) + i * BUFFER_SIZE
    }

    fn buffer_iova(&self, i: usize) -> Result<u64> {
        Ok(self.memory.iova_at(self.buffer(i))?.0)
    }
}

/// The transmit ring.
#[derive(Debug)]
pub struct TxRing<M: DmaMapper = VfioContainer> {
    ring: RingMemory<M>,
    /// Next descriptor to fill; the value for TDT.
    tail: usize,
    /// Oldest descriptor not yet reclaimed.
    clean: usize,
    /// Descriptors sent with RS (the last of each batch), oldest first. DD on one of
    /// them means it and every descriptor before it are done.
    reports: VecDeque<usize>,
}

impl TxRing {
    /// A ring of `len` descriptors with their buffers in new DMA memory of `device`,
    /// all zero (owned by software).
    pub fn new(device: &Device, len: usize) -> Result<TxRing> {
        check_len(device.name(), "transmit", len)?;
        let memory = device.dma_buffer(ring_bytes(len), DmaAccess::ReadWrite)?;
        TxRing::in_memory(device.name(), memory, len)
    }
}

impl<M: DmaMapper> TxRing<M> {
    /// A ring of `len` descriptors in `memory` (zeroed, at least [`ring_bytes`] long);
    /// `device` names the NIC in errors.
    pub fn in_memory(device: &str, memory: DmaBuffer<M>, len: usize) -> Result<TxRing<M>> {
        check_len(device, "transmit", len)?;
        Ok(TxRing {
            ring: RingMemory::new(device, memory, len)?,
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
pub struct RxRing<M: DmaMapper = VfioContainer> {
    ring: RingMemory<M>,
    /// Next descriptor to look at.
    next: usize,
}

impl RxRing {
    /// A ring of `len` descriptors in new DMA memory of `device`, each pointing at its
    /// buffer, none done.
    pub fn new(device: &Device, len: usize) -> Result<RxRing> {
        check_len(device.name(), "receive", len)?;
        let memory = device.dma_buffer(ring_bytes(len), DmaAccess::ReadWrite)?;
        RxRing::in_memory(device.name(), memory, len)
    }
}

impl<M: DmaMapper> RxRing<M> {
    /// A ring of `len` descriptors in `memory` (zeroed, at least [`ring_bytes`] long),
    /// each pointing at its buffer, none done; `device` names the NIC in errors.
    pub fn in_memory(device: &str, memory: DmaBuffer<M>, len: usize) -> Result<RxRing<M>> {
        check_len(device, "receive", len)?;
        let ring = RingMemory::new(device, memory, len)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dma::{DmaMemory, Iova, IovaAllocator, IovaRange, PagePreference, RecordingMapper};

    use super::*;

    fn memory(len: usize) -> DmaBuffer<Arc<RecordingMapper>> {
        let iovas = Arc::new(
            IovaAllocator::new(&[IovaRange::new(Iova(0x10_0000), 0x100_0000).unwrap()]).unwrap(),
        );
        let memory = DmaMemory::allocate_with(ring_bytes(len), PagePreference::SmallOnly).unwrap();
        DmaBuffer::map(
            memory,
            Arc::new(RecordingMapper::new()),
            &iovas,
            DmaAccess::ReadWrite,
        )
        .unwrap()
    }

    /// What the NIC does when it has sent descriptor `i` with RS: sets DD.
    fn nic_sent<M: DmaMapper>(tx: &TxRing<M>, i: usize) {
        let at = tx.ring.desc(i) + DESC_STATUS;
        tx.ring.memory.write::<u8>(at, TXD_STAT_DD).unwrap();
    }

    #[test]
    fn transmit_descriptors_carry_buffer_length_and_flags() {
        let mut tx = TxRing::in_memory("nic", memory(8), 8).unwrap();
        for len in [60usize, 61, 1514] {
            assert!(tx.push(&vec![0xab; len]).unwrap());
        }
        tx.mark_report().unwrap();
        let m = &tx.ring.memory;
        for (i, len) in [60u16, 61, 1514].into_iter().enumerate() {
            let d = tx.ring.desc(i);
            assert_eq!(m.read::<u64>(d).unwrap(), tx.ring.buffer_iova(i).unwrap());
            assert_eq!(m.read::<u16>(d + DESC_LENGTH).unwrap(), len);
            let rs = if i == 2 { TXD_CMD_RS } else { 0 };
            assert_eq!(
                m.read::<u8>(d + DESC_CMD).unwrap(),
                TXD_CMD_EOP | TXD_CMD_IFCS | rs,
                "only the batch's last descriptor asks for a write-back"
            );
            let mut first = [0u8; 1];
            m.copy_to(tx.ring.buffer(i), &mut first).unwrap();
            assert_eq!(first, [0xab]);
        }
        assert_eq!(tx.tail(), 3);
    }

    #[test]
    fn a_write_back_reclaims_its_whole_batch_and_the_ring_wraps() {
        let mut tx = TxRing::in_memory("nic", memory(8), 8).unwrap();
        let mut pushed = 0;
        while tx.push(&[0u8; 60]).unwrap() {
            pushed += 1;
        }
        assert_eq!(pushed, 7, "one descriptor stays empty");
        assert_eq!(tx.free(), 0);
        tx.mark_report().unwrap();
        assert_eq!(tx.reclaim().unwrap(), 0, "nothing is done before DD");
        nic_sent(&tx, 6);
        assert_eq!(tx.reclaim().unwrap(), 7);
        assert_eq!((tx.in_flight(), tx.free()), (0, 7));
        // The next batch wraps past the end: descriptors 7, 0, 1, 2.
        for _ in 0..4 {
            assert!(tx.push(&[0u8; 60]).unwrap());
        }
        tx.mark_report().unwrap();
        assert_eq!(tx.tail(), 3);
        nic_sent(&tx, 2);
        assert_eq!(tx.reclaim().unwrap(), 4);
        assert_eq!(tx.in_flight(), 0);
    }

    #[test]
    fn receive_takes_finished_frames_and_gives_descriptors_back() {
        let mut rx = RxRing::in_memory("nic", memory(8), 8).unwrap();
        assert_eq!(rx.tail(), 7, "all but one descriptor belong to the NIC");
        assert!(!rx.ready().unwrap());
        // The NIC puts a 100-byte frame in buffer 0 and marks descriptor 0 done.
        let m = &rx.ring.memory;
        assert_eq!(
            m.read::<u64>(rx.ring.desc(0)).unwrap(),
            rx.ring.buffer_iova(0).unwrap()
        );
        m.copy_from(rx.ring.buffer(0), &[7u8; 100]).unwrap();
        m.write::<u16>(rx.ring.desc(0) + DESC_LENGTH, 100).unwrap();
        m.write::<u8>(rx.ring.desc(0) + DESC_STATUS, RXD_STAT_DD | RXD_STAT_EOP)
            .unwrap();
        let mut frame = Vec::new();
        let status = rx.take(&mut frame).unwrap().unwrap();
        assert_eq!(
            status,
            RxStatus {
                len: 100,
                errors: 0,
                end_of_packet: true
            }
        );
        assert_eq!(frame, vec![7u8; 100]);
        assert_eq!(rx.tail(), 0, "descriptor 0 goes back to the NIC");
        let m = &rx.ring.memory;
        assert_eq!(m.read::<u8>(rx.ring.desc(0) + DESC_STATUS).unwrap(), 0);
        assert_eq!(
            m.read::<u64>(rx.ring.desc(0)).unwrap(),
            rx.ring.buffer_iova(0).unwrap()
        );
        assert!(rx.take(&mut frame).unwrap().is_none());
    }

    #[test]
    fn ring_sizes_and_memory_are_checked() {
        assert!(TxRing::in_memory("nic", memory(8), 12).is_err());
        let e = RxRing::in_memory("nic", memory(8), 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs"), "{e}");
    }
}
