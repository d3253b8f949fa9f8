//! Descriptor chains as UML lays them out: the readable descriptors are one message,
//! however UML split or merged it, and the writable ones take the answer.
//!
//! Buffers are the caller's and reused, so serving a command allocates nothing once
//! they have grown to the largest message seen.

use std::ops::Deref;

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

use super::ring::RingError;

/// Largest BAR access served (read, write or memset): memcpy_toio/memcpy_fromio of a
/// whole page run. Longer ones are refused before anything is allocated for them.
pub const MAX_BAR_ACCESS: usize = 64 * 1024;

/// Largest message taken from the command queue: the largest BAR write and its header
/// (with room for stray bytes). Larger ones are refused.
pub const MAX_MESSAGE: usize = MAX_BAR_ACCESS + 64;

/// Why a chain could not be read.
#[derive(Debug, Error)]
pub enum ChainError {
    /// A descriptor's buffer not inside UML's memory.
    #[error("descriptor at {addr:#x} (+{len:#x}) is outside the guest memory UML registered")]
    OutsideMemory {
        /// UML address of the buffer.
        addr: u64,
        /// Its length in bytes.
        len: u32,
    },
    /// A command longer than [`MAX_MESSAGE`].
    #[error("readable part is over {MAX_MESSAGE} bytes")]
    TooLong,
    /// The ring itself is broken.
    #[error(transparent)]
    Ring(#[from] RingError),
}

impl From<std::convert::Infallible> for ChainError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Where a chain's writable part lies, in order.
#[derive(Debug, Default)]
pub(super) struct Writable {
    pieces: Vec<(GuestAddress, u32)>,
}

impl Writable {
    /// Bytes its list of pieces holds.
    pub(super) fn buffered_bytes(&self) -> usize {
        self.pieces.capacity() * std::mem::size_of::<(GuestAddress, u32)>()
    }

    /// Total writable bytes.
    pub(super) fn len(&self) -> usize {
        self.pieces.iter().map(|(_, len)| *len as usize).sum()
    }

    /// Write `bytes` from the start of the writable part; returns bytes written (all
    /// of them, or as many as fit).
    pub(super) fn write(&self, mem: &GuestMemoryMmap, bytes: &[u8]) -> Result<usize, ChainError> {
        let mut done = 0;
        for &(addr, len) in &self.pieces {
            if done == bytes.len() {
                break;
            }
            let n = (len as usize).min(bytes.len() - done);
            write_guest(mem, addr, &bytes[done..done + n])
                .map_err(|_| ChainError::OutsideMemory { addr: addr.0, len })?;
            done += n;
        }
        Ok(done)
    }

    /// Fill the first `len` bytes of the writable part (at most [`MAX_BAR_ACCESS`], as
    /// many as there are) with `byte`: the all-ones answer to a failed read. Returns
    /// the bytes written.
    pub(super) fn fill(
        &self,
        mem: &GuestMemoryMmap,
        byte: u8,
        len: usize,
        scratch: &mut Vec<u8>,
    ) -> usize {
        let mut left = len.min(MAX_BAR_ACCESS);
        let mut done = 0;
        for &(addr, piece) in &self.pieces {
            if left == 0 {
                break;
            }
            scratch.clear();
            scratch.resize((piece as usize).min(left), byte);
            if mem.write_slice(scratch, addr).is_err() {
                break;
            }
            done += scratch.len();
            left -= scratch.len();
        }
        done
    }
}

/// Split `chain` into its readable bytes (gathered into `readable`) and its writable
/// part (into `writable`). Returns the chain's head index for `add_used`.
pub(super) fn split<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    readable: &mut Vec<u8>,
    writable: &mut Writable,
) -> (u16, Result<(), ChainError>)
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let descriptors = chain.map(Ok::<_, std::convert::Infallible>);
    (head, gather(descriptors, mem, readable, writable))
}

/// Gather the descriptors of one chain: readable bytes into `readable`, writable
/// pieces into `writable`.
pub(super) fn gather<E>(
    descriptors: impl Iterator<Item = Result<Descriptor, E>>,
    mem: &GuestMemoryMmap,
    readable: &mut Vec<u8>,
    writable: &mut Writable,
) -> Result<(), ChainError>
where
    ChainError: From<E>,
{
    readable.clear();
    writable.pieces.clear();
    for desc in descriptors {
        let desc = desc?;
        let (addr, len) = (desc.addr(), desc.len());
        if desc.is_write_only() {
            writable.pieces.push((addr, len));
            continue;
        }
        let start = readable.len();
        let end = start
            .checked_add(len as usize)
            .filter(|e| *e <= MAX_MESSAGE)
            .ok_or(ChainError::TooLong)?;
        readable.resize(end, 0);
        read_guest(mem, addr, &mut readable[start..end])
            .map_err(|_| ChainError::OutsideMemory { addr: addr.0, len })?;
    }
    Ok(())
}

/// `buf.len()` bytes of UML's memory at `addr`: one slice of a region when they lie in
/// one (a command's buffers always do), which skips `read_slice`'s general walk.
fn read_guest(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    match mem.get_slice(addr, buf.len()) {
        Ok(slice) => {
            slice.copy_to(buf);
            Ok(())
        }
        Err(_) => mem.read_slice(buf, addr),
    }
}

/// `bytes` into UML's memory at `addr`, as [`read_guest`] reads.
fn write_guest(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    bytes: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    match mem.get_slice(addr, bytes.len()) {
        Ok(slice) => {
            slice.copy_from(bytes);
            Ok(())
        }
        Err(_) => mem.write_slice(bytes, addr),
    }
}
