//! The VFIO ioctls: request numbers and thin wrappers around them.
//!
//! Every `unsafe` block that talks to the VFIO kernel interface is in this module.
//! VFIO encodes all its requests as `_IO(';', 100 + n)` (no size, no direction), so
//! the wrappers use nix's `*_bad` macros with numbers built by `request_code_none!`.
//! Structs come from `vfio-bindings`; variable-length replies (capability chains,
//! hot-reset device lists) are handled here with `argsz` and returned as bytes or
//! plain vectors for the safe parsers elsewhere.

use std::ffi::CStr;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_info, vfio_irq_info, vfio_irq_set, vfio_pci_dependent_device,
    vfio_pci_hot_reset, vfio_pci_hot_reset_info, vfio_region_info,
};

/// The ioctl type of every VFIO request, `';'`.
pub const VFIO_TYPE: u8 = b';';
/// The first VFIO request number.
pub const VFIO_BASE: u32 = 100;

const fn io(n: u32) -> u32 {
    nix::request_code_none!(VFIO_TYPE, VFIO_BASE + n) as u32
}

/// Container: the VFIO API version (always 0).
pub const VFIO_GET_API_VERSION: u32 = io(0);
/// Container: whether an extension (IOMMU model) is offered.
pub const VFIO_CHECK_EXTENSION: u32 = io(1);
/// Container: choose the IOMMU model; needs a group attached first.
pub const VFIO_SET_IOMMU: u32 = io(2);
/// Group: viable / container-set flags.
pub const VFIO_GROUP_GET_STATUS: u32 = io(3);
/// Group: put the group into a container.
pub const VFIO_GROUP_SET_CONTAINER: u32 = io(4);
/// Group: take the group out of its container.
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = io(5);
/// Group: open a device fd by its name.
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = io(6);
/// Device: flags, number of regions and IRQ indexes.
pub const VFIO_DEVICE_GET_INFO: u32 = io(7);
/// Device: one region's size, offset, flags and capabilities.
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(8);
/// Device: one IRQ index's count and flags.
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(9);
/// Device: trigger/mask/unmask interrupts.
pub const VFIO_DEVICE_SET_IRQS: u32 = io(10);
/// Device: function reset.
pub const VFIO_DEVICE_RESET: u32 = io(11);
/// Device: which devices a bus hot reset would affect.
pub const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u32 = io(12);
/// Device: bus hot reset, proving ownership with group fds.
pub const VFIO_DEVICE_PCI_HOT_RESET: u32 = io(13);
/// Device: query a vGPU plane.
pub const VFIO_DEVICE_QUERY_GFX_PLANE: u32 = io(14);
/// Device: dma-buf of a vGPU plane.
pub const VFIO_DEVICE_GET_GFX_DMABUF: u32 = io(15);
/// Device: kernel-side handler for writes of a value to a register.
pub const VFIO_DEVICE_IOEVENTFD: u32 = io(16);
/// Device: get/set device features (bus master, migration, low power).
pub const VFIO_DEVICE_FEATURE: u32 = io(17);
/// Device (cdev): bind to an iommufd.
pub const VFIO_DEVICE_BIND_IOMMUFD: u32 = io(18);
/// Device (cdev): attach to an iommufd IOAS or HWPT.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u32 = io(19);
/// Device (cdev): detach from an iommufd IOAS or HWPT.
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u32 = io(20);
/// Container (type1): page sizes and capabilities.
pub const VFIO_IOMMU_GET_INFO: u32 = io(12);
/// Container (type1): map process memory at an IOVA.
pub const VFIO_IOMMU_MAP_DMA: u32 = io(13);
/// Container (type1): unmap an IOVA range.
pub const VFIO_IOMMU_UNMAP_DMA: u32 = io(14);
/// Container (SPAPR): enable the IOMMU.
pub const VFIO_IOMMU_ENABLE: u32 = io(15);
/// Container (SPAPR): disable the IOMMU.
pub const VFIO_IOMMU_DISABLE: u32 = io(16);
/// Container (type1): dirty page tracking.
pub const VFIO_IOMMU_DIRTY_PAGES: u32 = io(17);

/// The generated raw wrappers, kept private: callers use the safe functions below.
mod raw {
    use super::*;

    nix::ioctl_none_bad!(raw_get_api_version, VFIO_GET_API_VERSION);
    nix::ioctl_write_int_bad!(raw_check_extension, VFIO_CHECK_EXTENSION);
    nix::ioctl_write_int_bad!(raw_set_iommu, VFIO_SET_IOMMU);
    nix::ioctl_readwrite_bad!(
        raw_group_get_status,
        VFIO_GROUP_GET_STATUS,
        vfio_group_status
    );
    nix::ioctl_write_ptr_bad!(
        raw_group_set_container,
        VFIO_GROUP_SET_CONTAINER,
        libc::c_int
    );
    nix::ioctl_none_bad!(raw_group_unset_container, VFIO_GROUP_UNSET_CONTAINER);
    nix::ioctl_write_ptr_bad!(
        raw_group_get_device_fd,
        VFIO_GROUP_GET_DEVICE_FD,
        libc::c_char
    );
    nix::ioctl_readwrite_bad!(raw_device_get_info, VFIO_DEVICE_GET_INFO, vfio_device_info);
    nix::ioctl_readwrite_bad!(
        raw_device_get_region_info,
        VFIO_DEVICE_GET_REGION_INFO,
        vfio_region_info
    );
    nix::ioctl_readwrite_bad!(
        raw_device_get_irq_info,
        VFIO_DEVICE_GET_IRQ_INFO,
        vfio_irq_info
    );
    nix::ioctl_write_ptr_bad!(raw_device_set_irqs, VFIO_DEVICE_SET_IRQS, vfio_irq_set);
    nix::ioctl_none_bad!(raw_device_reset, VFIO_DEVICE_RESET);
    nix::ioctl_readwrite_bad!(
        raw_device_get_pci_hot_reset_info,
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
        vfio_pci_hot_reset_info
    );
    nix::ioctl_write_ptr_bad!(
        raw_device_pci_hot_reset,
        VFIO_DEVICE_PCI_HOT_RESET,
        vfio_pci_hot_reset
    );
    nix::ioctl_readwrite_bad!(
        raw_iommu_get_info,
        VFIO_IOMMU_GET_INFO,
        vfio_iommu_type1_info
    );
}
use raw::*;

/// Largest reply buffer accepted for a variable-length query. The kernel's replies
/// are a few hundred bytes; a larger `argsz` means something is wrong.
const MAX_REPLY: usize = 64 * 1024;

/// An 8-byte aligned byte buffer for variable-length ioctl structs.
#[derive(Clone, Debug)]
pub(crate) struct InfoBuf {
    words: Vec<u64>,
    len: usize,
}

impl InfoBuf {
    fn zeroed(len: usize) -> Self {
        InfoBuf {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    /// The reply as bytes: the fixed struct first, capabilities after it.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds `len.div_ceil(8)` initialised u64s, so its first `len`
        // bytes are initialised and in bounds; u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn as_mut_ptr<T>(&mut self) -> *mut T {
        self.words.as_mut_ptr().cast()
    }

    /// Write a fixed-size header at the start of the buffer.
    fn put<T>(&mut self, header: T) {
        assert!(size_of::<T>() <= self.words.len() * 8 && std::mem::align_of::<T>() <= 8);
        // SAFETY: the assertion above keeps the write inside the buffer, and the buffer
        // is 8-byte aligned, which satisfies T's alignment.
        unsafe { self.as_mut_ptr::<T>().write(header) }
    }

    /// Read the fixed-size header back.
    fn get<T>(&self) -> T {
        assert!(size_of::<T>() <= self.words.len() * 8 && std::mem::align_of::<T>() <= 8);
        // SAFETY: in bounds and aligned as above; T is one of the plain-integer
        // vfio-bindings structs (no Drop, no references), for which any bit pattern is
        // valid and a bitwise copy is a complete copy.
        unsafe { self.words.as_ptr().cast::<T>().read() }
    }
}

/// Issue a query whose reply may be longer than its fixed struct: ask with the fixed
/// size, and if the kernel says (in `argsz`) that it has more, ask again with room.
fn query_with_caps<T: Copy>(
    header: T,
    argsz_of: fn(&T) -> u32,
    set_argsz: fn(&mut T, u32),
    call: &mut dyn FnMut(*mut T) -> nix::Result<libc::c_int>,
) -> nix::Result<InfoBuf> {
    let mut want = size_of::<T>();
    for _ in 0..4 {
        let mut buf = InfoBuf::zeroed(want);
        let mut h = header;
        set_argsz(&mut h, want as u32);
        buf.put(h);
        call(buf.as_mut_ptr())?;
        let reply = buf.get::<T>();
        let needed = argsz_of(&reply) as usize;
        if needed <= want {
            return Ok(buf);
        }
        if needed > MAX_REPLY {
            return Err(Errno::E2BIG);
        }
        want = needed;
    }
    Err(Errno::EAGAIN)
}

/// `VFIO_GET_API_VERSION`.
pub(crate) fn get_api_version(container: BorrowedFd<'_>) -> nix::Result<i32> {
    // SAFETY: the request takes no argument and only reads a constant.
    unsafe { raw_get_api_version(container.as_raw_fd()) }
}

/// `VFIO_CHECK_EXTENSION`: true when the container offers `ext`.
pub(crate) fn check_extension(container: BorrowedFd<'_>, ext: u32) -> nix::Result<bool> {
    // SAFETY: the argument is passed by value; the kernel reads no memory of ours.
    let r = unsafe { raw_check_extension(container.as_raw_fd(), ext as libc::c_int) }?;
    Ok(r > 0)
}

/// `VFIO_SET_IOMMU`.
pub(crate) fn set_iommu(container: BorrowedFd<'_>, iommu_type: u32) -> nix::Result<()> {
    // SAFETY: the argument is passed by value.
    unsafe { raw_set_iommu(container.as_raw_fd(), iommu_type as libc::c_int) }.map(drop)
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags.
pub(crate) fn group_get_status(group: BorrowedFd<'_>) -> nix::Result<u32> {
    let mut status = vfio_group_status {
        argsz: size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: `status` is a live, correctly sized vfio_group_status for the duration of
    // the call.
    unsafe { raw_group_get_status(group.as_raw_fd(), &mut status) }?;
    Ok(status.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`.
pub(crate) fn group_set_container(
    group: BorrowedFd<'_>,
    container: BorrowedFd<'_>,
) -> nix::Result<()> {
    let fd: libc::c_int = container.as_raw_fd();
    // SAFETY: the kernel reads one int through the pointer, which points at `fd`.
    unsafe { raw_group_set_container(group.as_raw_fd(), &fd) }.map(drop)
}

/// `VFIO_GROUP_UNSET_CONTAINER`.
pub(crate) fn group_unset_container(group: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: no argument.
    unsafe { raw_group_unset_container(group.as_raw_fd()) }.map(drop)
}

/// `VFIO_GROUP_GET_DEVICE_FD`: open the device called `name` in this group.
pub(crate) fn group_get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    // SAFETY: the kernel reads a NUL-terminated string, which a CStr is.
    let fd = unsafe { raw_group_get_device_fd(group.as_raw_fd(), name.as_ptr()) }?;
    // SAFETY: on success the ioctl returns a new file descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `VFIO_DEVICE_GET_INFO` (fixed part; device capabilities are not used).
pub(crate) fn device_get_info(device: BorrowedFd<'_>) -> nix::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        argsz: size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a live vfio_device_info and argsz tells the kernel its size.
    unsafe { raw_device_get_info(device.as_raw_fd(), &mut info) }?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO`, with its capability chain.
pub(crate) fn device_get_region_info(device: BorrowedFd<'_>, index: u32) -> nix::Result<InfoBuf> {
    let header = vfio_region_info {
        index,
        ..Default::default()
    };
    query_with_caps(
        header,
        |h| h.argsz,
        |h, n| h.argsz = n,
        // SAFETY: `p` points into an InfoBuf whose length equals the argsz written into
        // the header, so the kernel writes only inside it.
        &mut |p| unsafe { raw_device_get_region_info(device.as_raw_fd(), p) },
    )
}

/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub(crate) fn device_get_irq_info(
    device: BorrowedFd<'_>,
    index: u32,
) -> nix::Result<vfio_irq_info> {
    let mut info = vfio_irq_info {
        argsz: size_of::<vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: `info` is a live vfio_irq_info and argsz tells the kernel its size.
    unsafe { raw_device_get_irq_info(device.as_raw_fd(), &mut info) }?;
    Ok(info)
}

/// `VFIO_DEVICE_SET_IRQS` with `data` (eventfds as i32s, bools as u8s, or nothing).
pub(crate) fn device_set_irqs(
    device: BorrowedFd<'_>,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    data: &[u8],
) -> nix::Result<()> {
    let head = size_of::<vfio_irq_set>();
    let mut buf = InfoBuf::zeroed(head + data.len());
    buf.put(vfio_irq_set {
        argsz: (head + data.len()) as u32,
        flags,
        index,
        start,
        count,
        data: Default::default(),
    });
    // SAFETY: the buffer holds head + data.len() bytes; the copy writes data.len() bytes
    // starting at offset `head`, and the source and destination do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf.as_mut_ptr::<u8>().add(head), data.len());
    }
    // SAFETY: the kernel reads argsz bytes, which the buffer holds; any fds in `data`
    // are borrowed by the caller for the duration of the call.
    unsafe { raw_device_set_irqs(device.as_raw_fd(), buf.as_mut_ptr()) }.map(drop)
}

/// `VFIO_DEVICE_RESET`.
pub(crate) fn device_reset(device: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: no argument.
    unsafe { raw_device_reset(device.as_raw_fd()) }.map(drop)
}

/// One device a bus hot reset would affect: (group id, segment, bus, devfn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DependentDevice {
    pub(crate) group_id: u32,
    pub(crate) segment: u16,
    pub(crate) bus: u8,
    pub(crate) devfn: u8,
}

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: the devices a hot reset would affect.
pub(crate) fn device_get_pci_hot_reset_info(
    device: BorrowedFd<'_>,
) -> nix::Result<Vec<DependentDevice>> {
    let head = size_of::<vfio_pci_hot_reset_info>();
    let entry = size_of::<vfio_pci_dependent_device>();
    let mut count = 0usize;
    for _ in 0..4 {
        let len = head + count * entry;
        if len > MAX_REPLY {
            return Err(Errno::E2BIG);
        }
        let mut buf = InfoBuf::zeroed(len);
        buf.put(vfio_pci_hot_reset_info {
            argsz: len as u32,
            flags: 0,
            count: 0,
            devices: Default::default(),
        });
        // SAFETY: the buffer is `len` bytes and argsz says so; the kernel writes the
        // header and at most `count` entries that fit.
        let r = unsafe { raw_device_get_pci_hot_reset_info(device.as_raw_fd(), buf.as_mut_ptr()) };
        let reply = buf.get::<vfio_pci_hot_reset_info>();
        match r {
            // The kernel says ENOSPC and fills in `count` when the buffer is too small.
            Err(Errno::ENOSPC) => {
                if reply.count as usize <= count {
                    return Err(Errno::ENOSPC);
                }
                count = reply.count as usize;
            }
            Err(e) => return Err(e),
            Ok(_) => {
                let n = (reply.count as usize).min(count);
                let devices = (0..n)
                    .map(|i| {
                        let off = head + i * entry;
                        // The entry's layout: u32 group_id/devid, u16 segment, u8 bus, u8 devfn.
                        let b = &buf.bytes()[off..off + entry];
                        DependentDevice {
                            group_id: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                            segment: u16::from_ne_bytes([b[4], b[5]]),
                            bus: b[6],
                            devfn: b[7],
                        }
                    })
                    .collect();
                return Ok(devices);
            }
        }
    }
    Err(Errno::EAGAIN)
}

/// `VFIO_DEVICE_PCI_HOT_RESET`, proving ownership of every affected group.
pub(crate) fn device_pci_hot_reset(
    device: BorrowedFd<'_>,
    groups: &[BorrowedFd<'_>],
) -> nix::Result<()> {
    let head = size_of::<vfio_pci_hot_reset>();
    let len = head + groups.len() * size_of::<i32>();
    let mut buf = InfoBuf::zeroed(len);
    buf.put(vfio_pci_hot_reset {
        argsz: len as u32,
        flags: 0,
        count: groups.len() as u32,
        group_fds: Default::default(),
    });
    for (i, g) in groups.iter().enumerate() {
        let fd: i32 = g.as_raw_fd();
        // SAFETY: entry i lies at head + 4*i, inside the `len`-byte buffer; the
        // destination may be unaligned for i32, hence write_unaligned.
        unsafe {
            buf.as_mut_ptr::<u8>()
                .add(head + i * 4)
                .cast::<i32>()
                .write_unaligned(fd)
        };
    }
    // SAFETY: the kernel reads argsz bytes, which the buffer holds; the group fds are
    // borrowed for the duration of the call.
    unsafe { raw_device_pci_hot_reset(device.as_raw_fd(), buf.as_mut_ptr()) }.map(drop)
}

/// `VFIO_IOMMU_GET_INFO` (type1), with its capability chain.
pub(crate) fn iommu_get_info(container: BorrowedFd<'_>) -> nix::Result<InfoBuf> {
    query_with_caps(
        vfio_iommu_type1_info::default(),
        |h| h.argsz,
        |h, n| h.argsz = n,
        // SAFETY: `p` points into an InfoBuf as long as the argsz written into it.
        &mut |p| unsafe { raw_iommu_get_info(container.as_raw_fd(), p) },
    )
}

/// `VFIO_IOMMU_MAP_DMA`.
///
/// # Safety
/// After this call the device can read (and with `VFIO_DMA_MAP_FLAG_WRITE`, write)
/// `size` bytes at `vaddr` until the range is unmapped. The caller must own that memory
/// for DMA: nothing else in the process may rely on its contents staying unchanged, and
/// it must stay mapped for as long as the IOVA range is (the kernel keeps the pages
/// pinned, so unmapping them first does not free them, but leaks them to the device).
#[inline]
pub(crate) unsafe fn iommu_map_dma(
    container: BorrowedFd<'_>,
    vaddr: u64,
    iova: u64,
    size: u64,
    flags: u32,
) -> nix::Result<()> {
    let map = vfio_iommu_type1_dma_map {
        argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags,
        vaddr,
        iova,
        size,
    };
    // libc directly, not a nix wrapper: this runs on every per-request map, and under
    // emulation each call level costs (see dma_map).
    // SAFETY: `map` is a live struct of the size argsz says; the caller upholds the
    // contract about the memory it describes.
    let r = unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_IOMMU_MAP_DMA as libc::Ioctl,
            &map as *const vfio_iommu_type1_dma_map,
        )
    };
    nix::errno::Errno::result(r).map(drop)
}

/// `VFIO_IOMMU_UNMAP_DMA`: returns the number of bytes the kernel unmapped.
#[inline]
pub(crate) fn iommu_unmap_dma(
    container: BorrowedFd<'_>,
    iova: u64,
    size: u64,
    flags: u32,
) -> nix::Result<u64> {
    let mut unmap = vfio_iommu_type1_dma_unmap {
        argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
        flags,
        iova,
        size,
        data: Default::default(),
    };
    // SAFETY: `unmap` is live and as large as argsz says; without the dirty-bitmap flag
    // the kernel reads and writes only the fixed struct.
    let r = unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_IOMMU_UNMAP_DMA as libc::Ioctl,
            &mut unmap as *mut vfio_iommu_type1_dma_unmap,
        )
    };
    nix::errno::Errno::result(r)?;
    Ok(unmap.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of the kernel UAPI header (linux/vfio.h, `_IO(';', 100 + n)`) as
    /// printed by a C program compiled against it.
    #[test]
    fn request_numbers_match_the_kernel_header() {
        let expected: [(u32, u32); 24] = [
            (VFIO_GET_API_VERSION, 0x3b64),
            (VFIO_CHECK_EXTENSION, 0x3b65),
            (VFIO_SET_IOMMU, 0x3b66),
            (VFIO_GROUP_GET_STATUS, 0x3b67),
            (VFIO_GROUP_SET_CONTAINER, 0x3b68),
            (VFIO_GROUP_UNSET_CONTAINER, 0x3b69),
            (VFIO_GROUP_GET_DEVICE_FD, 0x3b6a),
            (VFIO_DEVICE_GET_INFO, 0x3b6b),
            (VFIO_DEVICE_GET_REGION_INFO, 0x3b6c),
            (VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d),
            (VFIO_DEVICE_SET_IRQS, 0x3b6e),
            (VFIO_DEVICE_RESET, 0x3b6f),
            (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70),
            (VFIO_DEVICE_PCI_HOT_RESET, 0x3b71),
            (VFIO_DEVICE_QUERY_GFX_PLANE, 0x3b72),
            (VFIO_DEVICE_GET_GFX_DMABUF, 0x3b73),
            (VFIO_DEVICE_IOEVENTFD, 0x3b74),
            (VFIO_DEVICE_FEATURE, 0x3b75),
            (VFIO_IOMMU_GET_INFO, 0x3b70),
            (VFIO_IOMMU_MAP_DMA, 0x3b71),
            (VFIO_IOMMU_UNMAP_DMA, 0x3b72),
            (VFIO_IOMMU_ENABLE, 0x3b73),
            (VFIO_IOMMU_DISABLE, 0x3b74),
            (VFIO_IOMMU_DIRTY_PAGES, 0x3b75),
        ];
        for (got, want) in expected {
            assert_eq!(got, want, "request {got:#x} should be {want:#x}");
        }
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
        assert_eq!(VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78);
    }

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(size_of::<vfio_group_status>(), 8);
        assert_eq!(size_of::<vfio_device_info>(), 24);
        assert_eq!(size_of::<vfio_region_info>(), 32);
        assert_eq!(size_of::<vfio_irq_info>(), 16);
        assert_eq!(size_of::<vfio_irq_set>(), 20);
        assert_eq!(size_of::<vfio_pci_hot_reset_info>(), 12);
        assert_eq!(size_of::<vfio_pci_dependent_device>(), 8);
        assert_eq!(size_of::<vfio_pci_hot_reset>(), 12);
        assert_eq!(size_of::<vfio_iommu_type1_info>(), 24);
        assert_eq!(size_of::<vfio_iommu_type1_dma_map>(), 32);
        assert_eq!(size_of::<vfio_iommu_type1_dma_unmap>(), 24);
    }

    #[test]
    fn info_buf_round_trips_a_header_and_exposes_exact_length() {
        let mut b = InfoBuf::zeroed(36);
        b.put(vfio_region_info {
            argsz: 36,
            flags: 7,
            index: 2,
            cap_offset: 32,
            size: 0x2_0000,
            offset: 2 << 40,
        });
        assert_eq!(b.bytes().len(), 36);
        let h: vfio_region_info = b.get();
        assert_eq!((h.index, h.size, h.offset), (2, 0x2_0000, 2 << 40));
        assert_eq!(&b.bytes()[0..4], &36u32.to_ne_bytes());
    }

    #[test]
    fn query_grows_the_buffer_to_what_the_kernel_asks_for() {
        let mut calls = Vec::new();
        let buf = query_with_caps(
            vfio_region_info::default(),
            |h| h.argsz,
            |h, n| h.argsz = n,
            &mut |p: *mut vfio_region_info| {
                // SAFETY: test stand-in for the kernel; `p` points at a buffer at least
                // as big as the header.
                let h = unsafe { &mut *p };
                calls.push(h.argsz);
                if h.argsz < 48 {
                    h.argsz = 48;
                } else {
                    h.cap_offset = 32;
                }
                Ok(0)
            },
        )
        .unwrap();
        assert_eq!(calls, vec![32, 48]);
        assert_eq!(buf.bytes().len(), 48);
        assert_eq!(buf.get::<vfio_region_info>().cap_offset, 32);
    }

    #[test]
    fn query_refuses_absurd_reply_sizes() {
        let r = query_with_caps(
            vfio_region_info::default(),
            |h| h.argsz,
            |h, n| h.argsz = n,
            &mut |p: *mut vfio_region_info| {
                // SAFETY: as above.
                unsafe { (*p).argsz = u32::MAX };
                Ok(0)
            },
        );
        assert_eq!(r.unwrap_err(), Errno::E2BIG);
    }

    #[test]
    fn ioctls_on_a_non_vfio_fd_fail_with_an_errno_not_a_crash() {
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsFd;
        assert!(get_api_version(f.as_fd()).is_err());
        assert!(device_get_region_info(f.as_fd(), 0).is_err());
        assert!(device_get_pci_hot_reset_info(f.as_fd()).is_err());
        assert!(device_set_irqs(f.as_fd(), 0, 0, 0, 0, &[]).is_err());
    }
}
