//! The crate's one error type.
//!
//! Every layer (ranges, allocator, mapper, policies, memory) returns `DmaError`, so a
//! caller that maps a guest's scatter-gather list sees one type whatever failed. Each
//! message names the address or size involved and, where there is one, the fix.

use std::io;

use crate::iova::IovaRange;

/// Errors from IOVA ranges, the mapper, the allocator, mapping policies and DMA memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DmaError {
    /// A range or request of zero bytes.
    #[error("empty range at {start:#x}: a DMA range must be at least one byte")]
    EmptyRange {
        /// Where the empty range starts.
        start: u64,
    },

    /// `start + len` passes the end of the 64-bit address space.
    #[error("range at {start:#x} of {len:#x} bytes wraps past the end of the address space")]
    RangeOverflow {
        /// First address.
        start: u64,
        /// Length in bytes.
        len: u64,
    },

    /// An address or size that the IOMMU requires to be page-aligned is not.
    #[error("{what} {value:#x} is not aligned to the IOMMU page size {align:#x}")]
    Misaligned {
        /// Which value: "iova", "vaddr", "size".
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The required alignment.
        align: u64,
    },

    /// A map request overlaps an existing mapping.
    #[error("cannot map {requested}: overlaps existing mapping {existing}; unmap it first")]
    MapOverlap {
        /// The IOVA range asked for.
        requested: IovaRange,
        /// The mapping already there.
        existing: IovaRange,
    },

    /// An unmap range cuts through a mapping instead of covering it whole (VFIO type1v2
    /// refuses to split a mapping).
    #[error("cannot unmap {requested}: it covers only part of mapping {mapping}")]
    PartialUnmap {
        /// The IOVA range asked for.
        requested: IovaRange,
        /// The mapping it would split.
        mapping: IovaRange,
    },

    /// The backend's limit on the number of mappings is reached.
    #[error(
        "IOMMU mapping limit of {limit} reached; coalesce mappings or raise the limit \
         (vfio_iommu_type1 dma_entry_limit)"
    )]
    TooManyMappings {
        /// The limit.
        limit: usize,
    },

    /// The backend (an ioctl) failed.
    #[error("{op} of {range} failed: {source}")]
    Backend {
        /// The operation, e.g. "VFIO_IOMMU_MAP_DMA".
        op: &'static str,
        /// The IOVA range involved.
        range: IovaRange,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// An alignment that is not a power of two.
    #[error("alignment {align:#x} is not a power of two")]
    InvalidAlignment {
        /// The alignment asked for.
        align: u64,
    },

    /// The IOMMU reported no usable IOVA window of at least one page.
    #[error("no usable IOVA range of at least {granularity:#x} bytes among {ranges} reported")]
    NoUsableIova {
        /// How many ranges were given.
        ranges: usize,
        /// The allocation granularity.
        granularity: u64,
    },

    /// No free IOVA block is large enough.
    #[error(
        "IOVA space exhausted: no free block of {size:#x} bytes aligned to {align:#x} \
         ({free:#x} bytes free, largest free block {largest:#x}); free some mappings first"
    )]
    IovaExhausted {
        /// Requested size (after rounding to the granularity).
        size: u64,
        /// Requested alignment.
        align: u64,
        /// Total free bytes.
        free: u64,
        /// The largest free block.
        largest: u64,
    },

    /// A specific IOVA range was asked for but is not (entirely) free or usable.
    #[error("IOVA range {range} is not free (allocated, or outside the usable IOVA ranges)")]
    IovaUnavailable {
        /// The range asked for.
        range: IovaRange,
    },

    /// A range freed twice.
    #[error("double free of IOVA range {range}: it is already free")]
    DoubleFree {
        /// The range.
        range: IovaRange,
    },

    /// A range freed that this allocator never handed out.
    #[error("free of IOVA range {range}: not an allocation of this allocator")]
    ForeignFree {
        /// The range.
        range: IovaRange,
    },

    /// A range freed with a different size than it was allocated with.
    #[error("free of IOVA range {range}: the allocation there is {allocated}; free it whole")]
    FreeMismatch {
        /// The range given.
        range: IovaRange,
        /// The allocation that starts there.
        allocated: IovaRange,
    },

    /// A guest asked for DMA to memory it has not registered.
    #[error(
        "guest DMA request [{gpa:#x}, +{len:#x}) is outside the guest's registered memory; \
         a guest may only DMA to memory it has registered"
    )]
    OutsideGuestMemory {
        /// Guest-physical address of the request.
        gpa: u64,
        /// Length of the request.
        len: u64,
    },

    /// A guest memory region overlaps one already registered.
    #[error("guest memory region {new} overlaps registered region {existing}")]
    RegionOverlap {
        /// The new region's guest-physical range, formatted.
        new: String,
        /// The existing region's guest-physical range, formatted.
        existing: String,
    },

    /// No guest memory region starts at this address.
    #[error("no guest memory region is registered at guest-physical {gpa:#x}")]
    RegionNotFound {
        /// Guest-physical base asked for.
        gpa: u64,
    },

    /// A region cannot be removed while DMA mappings into it are live.
    #[error(
        "guest memory region at {gpa:#x} still has {mappings} live DMA mapping(s); \
         unmap them before removing the region"
    )]
    RegionBusy {
        /// Guest-physical base of the region.
        gpa: u64,
        /// Number of live mappings into it.
        mappings: usize,
    },

    /// An unmap named bus addresses that no live mapping of this policy covers.
    #[error(
        "unmap of bus address [{addr:#x}, +{len:#x}): not covered by a live mapping \
         (already unmapped, or never mapped by this policy)"
    )]
    UnknownBusAddress {
        /// First bus address of the offending segment.
        addr: u64,
        /// Its length.
        len: u64,
    },

    /// Locking or pinning memory would exceed RLIMIT_MEMLOCK.
    #[error(
        "{what} {} needs RLIMIT_MEMLOCK >= {} ({} already locked); current limit is {}; \
         raise it with `ulimit -l` or LimitMEMLOCK= in the unit{}",
        ByteSize(*bytes),
        ByteSize(needed.div_ceil(1 << 20).saturating_mul(1 << 20)),
        ByteSize(*locked),
        ByteSize(*limit),
        hard_limit_note(*hard_limit, *needed)
    )]
    MemlockLimit {
        /// What was being done: "mapping", "allocating DMA memory".
        what: &'static str,
        /// Bytes to lock.
        bytes: u64,
        /// Locked bytes the process would need in all (shown rounded up to MiB).
        needed: u64,
        /// Bytes already locked.
        locked: u64,
        /// The soft limit.
        limit: u64,
        /// The hard limit, if finite.
        hard_limit: Option<u64>,
    },

    /// A system call failed.
    #[error("{op} failed: {source}")]
    System {
        /// The call, e.g. "getrlimit(RLIMIT_MEMLOCK)".
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Allocating DMA memory failed (other than by the locked-memory limit).
    #[error("allocating {} of DMA memory with {page_size:#x}-byte pages failed: {source}", ByteSize(*len))]
    MemoryAlloc {
        /// Bytes asked for.
        len: u64,
        /// Page size tried.
        page_size: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A file mapping asked for bytes past the end of its file: touching such a page
    /// (this process or the device) faults, and in this process that is a SIGBUS.
    #[error(
        "cannot map {len:#x} bytes at offset {offset:#x} of a {file_len:#x}-byte file: \
         it reaches past the end of its file"
    )]
    BeyondFile {
        /// Offset into the file.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The file's size.
        file_len: u64,
    },

    /// A DMA mapping asked for bytes outside the memory backing it.
    #[error(
        "cannot map {len:#x} bytes at offset {offset:#x} of {backing_len:#x} bytes of \
         backing memory: out of range"
    )]
    OutsideBacking {
        /// Offset into the backing.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The backing's length.
        backing_len: u64,
    },

    /// A mapping the device may write, of memory this process mapped read-only.
    #[error("cannot map {range} for device writes: its memory is mapped read-only")]
    ReadOnlyBacking {
        /// The IOVA range asked for.
        range: IovaRange,
    },

    /// An access outside a DMA buffer.
    #[error(
        "DMA memory access of {size} bytes at offset {offset:#x}: out of range \
         (buffer is {len:#x} bytes)"
    )]
    OutOfBounds {
        /// Offset into the buffer.
        offset: u64,
        /// Access size.
        size: u64,
        /// Buffer length.
        len: u64,
    },
}

/// A byte count in the largest binary unit that keeps it readable ("64 MiB").
pub(crate) struct ByteSize(pub u64);

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (unit, name) in UNITS {
            if self.0 >= unit {
                return if self.0.is_multiple_of(unit) {
                    write!(f, "{} {name}", self.0 / unit)
                } else {
                    write!(f, "{:.1} {name}", self.0 as f64 / unit as f64)
                };
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

fn hard_limit_note(hard: Option<u64>, needed: u64) -> String {
    match hard {
        Some(hard) if hard < needed => format!(
            " (the hard limit is {}: raise that as root, e.g. in /etc/security/limits.conf)",
            ByteSize(hard)
        ),
        _ => String::new(),
    }
}
