//! `VfioContainer`: one IOMMU address space shared by the groups attached to it, and
//! the DMA mappings in it.
//!
//! Today the only backend is the container/group API with the TYPE1v2 IOMMU model
//! (`/dev/vfio/vfio`), which is what Debian kernels offer. The public types do not
//! expose it: an iommufd backend (an IOAS instead of a container fd, devices bound
//! through `/dev/vfio/devices/vfioN`) would be another [`IommuBackend`] behind the same
//! `VfioContainer`, `IommuInfo` and `DmaMapper` surface.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use dma::{Iova, IovaRange};
use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_info, VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};

use super::capability::parse_chain;
use super::error::{Result, VfioError};
use super::group::{GroupInner, VfioGroup, VFIO_DEV_DIR};
use super::ioctl;
use super::mapping_mirror::MappingMirror;

/// How the container programs the IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IommuBackend {
    /// The container/group API with the TYPE1v2 IOMMU model.
    Type1v2,
}

impl fmt::Display for IommuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IommuBackend::Type1v2 => f.write_str("VFIO TYPE1v2"),
        }
    }
}

/// What the IOMMU allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuInfo {
    /// Bitmap of supported IOMMU page sizes (bit n set: 2^n bytes).
    pub page_sizes: u64,
    /// IOVA windows a mapping may use; empty when the kernel did not say (then any
    /// IOVA may be tried).
    pub iova_ranges: Vec<IovaRange>,
    /// How many more mappings the kernel allows (`dma_entry_limit` minus those in use),
    /// when it says.
    pub dma_avail: Option<u32>,
}

impl IommuInfo {
    /// The smallest IOMMU page size: the granularity of every mapping.
    pub fn min_page_size(&self) -> u64 {
        if self.page_sizes == 0 {
            dma::PAGE_SIZE
        } else {
            1 << self.page_sizes.trailing_zeros()
        }
    }

    /// Whether `range` lies inside one usable IOVA window.
    pub fn allows(&self, range: &IovaRange) -> bool {
        self.iova_ranges.is_empty() || self.iova_ranges.iter().any(|w| w.contains_range(range))
    }

    /// Parse a `VFIO_IOMMU_GET_INFO` reply.
    pub(crate) fn parse(reply: &[u8]) -> Result<IommuInfo> {
        let fixed = std::mem::size_of::<vfio_iommu_type1_info>();
        let malformed = |reason: String| VfioError::Malformed {
            target: "VFIO container".into(),
            what: "IOMMU info",
            reason,
        };
        if reply.len() < fixed {
            return Err(malformed(format!(
                "reply is {} bytes, under {fixed}",
                reply.len()
            )));
        }
        let u32_at = |o: usize| u32::from_ne_bytes(reply[o..o + 4].try_into().expect("4 bytes"));
        let flags = u32_at(4);
        let page_sizes = if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
            u64::from_ne_bytes(reply[8..16].try_into().expect("8 bytes"))
        } else {
            0
        };
        let mut info = IommuInfo {
            page_sizes,
            iova_ranges: Vec::new(),
            dma_avail: None,
        };
        let cap_offset = u32_at(16);
        if flags & VFIO_IOMMU_INFO_CAPS == 0 || cap_offset == 0 {
            return Ok(info);
        }
        let bad = |e: super::capability::CapError| malformed(e.to_string());
        for cap in parse_chain(reply, fixed, cap_offset).map_err(bad)? {
            match u32::from(cap.id) {
                VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                    let n = cap.u32_at(8).map_err(bad)?;
                    for (start, end) in cap.u64_pairs(16, n).map_err(bad)? {
                        let range = match IovaRange::from_inclusive(Iova(start), Iova(end)) {
                            Ok(r) => r,
                            // The whole 64-bit space has a length of 2^64; drop its last byte.
                            Err(_) if start == 0 && end == u64::MAX => {
                                IovaRange::new(Iova(0), u64::MAX).expect("non-empty")
                            }
                            Err(e) => {
                                return Err(malformed(format!(
                                    "IOVA range {start:#x}..={end:#x}: {e}"
                                )))
                            }
                        };
                        info.iova_ranges.push(range);
                    }
                }
                VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                    info.dma_avail = Some(cap.u32_at(8).map_err(bad)?)
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

/// An IOMMU address space shared by one or more groups. Clones share it.
#[derive(Clone, Debug)]
pub struct VfioContainer(pub(crate) Arc<ContainerInner>);

// The fields that every map and unmap reads come first, in declaration order (repr(C)),
// and the allocation starts on a cache line, so that they fill two lines: under
// emulation each line touched after the kernel's work is a miss.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct ContainerInner {
    /// The IOMMU's smallest page size once the IOMMU is set, 0 before: read on every
    /// `map_sg`, so it is kept out of the state lock.
    pub(crate) page_size: AtomicU64,
    /// A thread mapping through this container found no locked-memory limit
    /// (RLIMIT_MEMLOCK infinite) or held CAP_IPC_LOCK: maps skip the check (see
    /// dma_map). Beside `page_size`, in a cache line every map reads anyway.
    pub(crate) memlock_exempt: AtomicBool,
    /// The container fd. An `OwnedFd` rather than a `File`: its `as_fd` inlines into
    /// the per-request ioctls.
    fd: OwnedFd,
    backend: IommuBackend,
    state: Mutex<ContainerState>,
}

#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct ContainerState {
    /// The IOMMU model is set (after the first group is attached); `info` is then set.
    pub(crate) iommu_set: bool,
    /// Mappings the kernel allowed when the IOMMU was set, if it said.
    pub(crate) max_mappings: Option<usize>,
    /// Live mappings, mirroring the kernel's, for precise errors and `mappings()`.
    pub(crate) mappings: MappingMirror,
    /// Page sizes, windows and mapping limit, read when the IOMMU was set.
    pub(crate) info: Option<IommuInfo>,
    /// Groups attached, by id. Weak: a group keeps its container alive, not the reverse.
    pub(crate) groups: Vec<(u32, Weak<GroupInner>)>,
}

impl VfioContainer {
    /// Opens `/dev/vfio/vfio` with the TYPE1v2 IOMMU model.
    pub fn open() -> Result<VfioContainer> {
        VfioContainer::open_path(&Path::new(VFIO_DEV_DIR).join("vfio"))
    }

    /// Opens the container device at `path`, checks the API version and that TYPE1v2 is
    /// offered.
    pub fn open_path(path: &Path) -> Result<VfioContainer> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| VfioError::Open {
                path: PathBuf::from(path),
                hint: match source.raw_os_error() {
                    Some(libc::ENOENT) => "VFIO is not loaded: modprobe vfio-pci (and boot with the IOMMU on, e.g. intel_iommu=on)",
                    Some(libc::EACCES) | Some(libc::EPERM) => "run as root or give this user access to /dev/vfio/vfio",
                    _ => "check that VFIO is loaded",
                },
                source,
            })?;
        let container_err = |op: &str, source| VfioError::Ioctl {
            target: "VFIO container".into(),
            op: op.into(),
            source,
        };
        let version = ioctl::get_api_version(file.as_fd())
            .map_err(|e| container_err("VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION as i32 {
            return Err(VfioError::ApiVersion {
                found: version,
                expected: VFIO_API_VERSION,
            });
        }
        let backend = IommuBackend::Type1v2;
        let offered = ioctl::check_extension(file.as_fd(), VFIO_TYPE1v2_IOMMU)
            .map_err(|e| container_err("VFIO_CHECK_EXTENSION(TYPE1v2)", e))?;
        if !offered {
            return Err(VfioError::NoIommu { backend });
        }
        Ok(VfioContainer::from_fd(file.into(), backend))
    }

    /// The container behind `fd`, with nothing known about it yet.
    pub(crate) fn from_fd(fd: OwnedFd, backend: IommuBackend) -> VfioContainer {
        VfioContainer(Arc::new(ContainerInner {
            page_size: AtomicU64::new(0),
            memlock_exempt: AtomicBool::new(false),
            fd,
            backend,
            state: Mutex::new(ContainerState::default()),
        }))
    }

    /// The IOMMU backend in use.
    pub fn backend(&self) -> IommuBackend {
        self.0.backend
    }

    /// The IOMMU's smallest page size, once a group is attached.
    #[inline]
    pub(crate) fn iommu_page_size(&self) -> Option<u64> {
        match self.0.page_size.load(Ordering::Relaxed) {
            0 => None,
            size => Some(size),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, ContainerState> {
        // Every update leaves the state consistent, so a poisoned lock is still usable.
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `group` into this container. The first group also sets the IOMMU model,
    /// after which the IOMMU info is available. Several groups share one address
    /// space: a mapping made once is seen by the devices of all of them.
    pub fn attach(&self, group: &VfioGroup) -> Result<()> {
        let mut slot = group.0.container.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            if Arc::ptr_eq(&c.0, &self.0) {
                return Ok(());
            }
            return Err(VfioError::GroupInOtherContainer { group: group.id() });
        }
        let mut state = self.lock();
        ioctl::group_set_container(group.as_fd(), self.as_fd()).map_err(|source| {
            if source == nix::errno::Errno::EBUSY {
                VfioError::GroupInOtherContainer { group: group.id() }
            } else {
                VfioError::Ioctl {
                    target: format!("VFIO group {}", group.id()),
                    op: "VFIO_GROUP_SET_CONTAINER".into(),
                    source,
                }
            }
        })?;
        if !state.iommu_set {
            if let Err(source) = ioctl::set_iommu(self.as_fd(), VFIO_TYPE1v2_IOMMU) {
                let _ = ioctl::group_unset_container(group.as_fd());
                return Err(VfioError::Ioctl {
                    target: "VFIO container".into(),
                    op: "VFIO_SET_IOMMU(TYPE1v2)".into(),
                    source,
                });
            }
            state.iommu_set = true;
            let info = self.query_iommu_info()?;
            state.max_mappings = info.dma_avail.map(|n| n as usize);
            self.0
                .page_size
                .store(info.min_page_size(), Ordering::Relaxed);
            state.info = Some(info);
        }
        state.groups.retain(|(_, g)| g.strong_count() > 0);
        state.groups.push((group.id(), Arc::downgrade(&group.0)));
        *slot = Some(self.clone());
        Ok(())
    }

    /// Takes `group` out of the container. The kernel refuses while a device of the
    /// group is open. When the last group leaves, the IOMMU context and every mapping
    /// go with it.
    pub fn detach(&self, group: &VfioGroup) -> Result<()> {
        let mut slot = group.0.container.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(c) if Arc::ptr_eq(&c.0, &self.0) => {}
            _ => {
                return Err(VfioError::Usage {
                    target: format!("VFIO group {}", group.id()),
                    reason: "not attached to this container".into(),
                })
            }
        }
        ioctl::group_unset_container(group.as_fd()).map_err(|source| VfioError::Ioctl {
            target: format!("VFIO group {}", group.id()),
            op: "VFIO_GROUP_UNSET_CONTAINER (close the group's devices first)".into(),
            source,
        })?;
        *slot = None;
        let mut state = self.lock();
        state
            .groups
            .retain(|(_, g)| g.upgrade().is_some_and(|g| !Arc::ptr_eq(&g, &group.0)));
        if state.groups.is_empty() {
            state.iommu_set = false;
            state.info = None;
            self.0.page_size.store(0, Ordering::Relaxed);
            state.mappings.clear();
            state.max_mappings = None;
        }
        Ok(())
    }

    /// The groups in this container.
    pub fn groups(&self) -> Vec<VfioGroup> {
        self.lock()
            .groups
            .iter()
            .filter_map(|(_, g)| g.upgrade().map(VfioGroup))
            .collect()
    }

    /// The attached group with IOMMU group number `id`.
    pub fn group(&self, id: u32) -> Option<VfioGroup> {
        self.groups().into_iter().find(|g| g.id() == id)
    }

    /// Page sizes, usable IOVA windows and how many more mappings the kernel allows,
    /// queried now. Needs a group attached.
    pub fn iommu_info(&self) -> Result<IommuInfo> {
        if !self.lock().iommu_set {
            return Err(self.no_group_error("query the IOMMU"));
        }
        self.query_iommu_info()
    }

    pub(crate) fn query_iommu_info(&self) -> Result<IommuInfo> {
        let reply = ioctl::iommu_get_info(self.as_fd()).map_err(|source| VfioError::Ioctl {
            target: "VFIO container".into(),
            op: "VFIO_IOMMU_GET_INFO".into(),
            source,
        })?;
        IommuInfo::parse(reply.bytes())
    }

    pub(crate) fn no_group_error(&self, what: &str) -> VfioError {
        VfioError::Usage {
            target: "VFIO container".into(),
            reason: format!("cannot {what} before a group is attached (the IOMMU model is set by the first attach)"),
        }
    }
}

#[cfg(test)]
impl VfioContainer {
    /// A container over a temporary file (not a VFIO container) in the state it is in
    /// after the first attach, for tests of the checks made before each ioctl.
    pub(crate) fn with_state_for_test(info: IommuInfo, max_mappings: usize) -> VfioContainer {
        VfioContainer(Arc::new(ContainerInner {
            page_size: AtomicU64::new(info.min_page_size()),
            memlock_exempt: AtomicBool::new(false),
            fd: tempfile::tempfile().expect("tempfile").into(),
            backend: IommuBackend::Type1v2,
            state: Mutex::new(ContainerState {
                iommu_set: true,
                info: Some(info),
                max_mappings: Some(max_mappings),
                ..Default::default()
            }),
        }))
    }

    pub(crate) fn insert_mapping_for_test(&self, m: dma::DmaMapping) {
        self.lock().mappings.insert(m);
    }
}

impl AsFd for VfioContainer {
    #[inline]
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::super::capability::build::{body, reply};
    use super::*;

    fn info_reply(flags: u32, pgsizes: u64, caps: &[(u16, u16, Vec<u8>)]) -> Vec<u8> {
        let (mut r, first) = reply(24, caps);
        let len = r.len() as u32;
        r[0..4].copy_from_slice(&len.to_ne_bytes());
        r[4..8].copy_from_slice(&flags.to_ne_bytes());
        r[8..16].copy_from_slice(&pgsizes.to_ne_bytes());
        r[16..20].copy_from_slice(&first.to_ne_bytes());
        r
    }

    #[test]
    fn parses_what_the_rig_kernel_reports() {
        // Page sizes, windows and limit as VFIO reported them in the QEMU rig.
        let ranges = body(&[2, 0], &[0, 0xfedf_ffff, 0xfef0_0000, 0x7f_ffff_ffff]);
        let r = info_reply(
            VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
            0x4020_1000,
            &[
                (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16, 1, ranges),
                (
                    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16,
                    1,
                    body(&[65535], &[]),
                ),
            ],
        );
        let info = IommuInfo::parse(&r).unwrap();
        assert_eq!(info.page_sizes, 0x4020_1000);
        assert_eq!(info.min_page_size(), 4096);
        assert_eq!(info.dma_avail, Some(65535));
        assert_eq!(info.iova_ranges.len(), 2);
        assert_eq!(info.iova_ranges[0].last(), Iova(0xfedf_ffff));
        assert_eq!(info.iova_ranges[1].start(), Iova(0xfef0_0000));
        let ok = IovaRange::new(Iova(0x10_0000), 0x1000).unwrap();
        let msi = IovaRange::new(Iova(0xfee0_0000), 0x1000).unwrap();
        let straddle = IovaRange::new(Iova(0xfedf_f000), 0x2000).unwrap();
        assert!(info.allows(&ok));
        assert!(!info.allows(&msi));
        assert!(!info.allows(&straddle));
    }

    #[test]
    fn no_caps_means_no_windows_and_any_iova_is_tried() {
        let info = IommuInfo::parse(&info_reply(VFIO_IOMMU_INFO_PGSIZES, 0x1000, &[])).unwrap();
        assert!(info.iova_ranges.is_empty());
        assert_eq!(info.dma_avail, None);
        assert!(info.allows(&IovaRange::new(Iova(0xfee0_0000), 0x1000).unwrap()));
    }

    #[test]
    fn whole_address_space_window_is_accepted() {
        let r = info_reply(
            VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
            0x1000,
            &[(
                VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
                1,
                body(&[1, 0], &[0, u64::MAX]),
            )],
        );
        let info = IommuInfo::parse(&r).unwrap();
        assert_eq!(info.iova_ranges[0].start(), Iova(0));
    }

    #[test]
    fn inverted_or_truncated_windows_are_errors() {
        let inverted = info_reply(
            VFIO_IOMMU_INFO_CAPS,
            0,
            &[(
                VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
                1,
                body(&[1, 0], &[0x2000, 0x1000]),
            )],
        );
        let e = IommuInfo::parse(&inverted).unwrap_err().to_string();
        assert!(e.starts_with("VFIO container: malformed IOMMU info"), "{e}");
        let truncated = info_reply(
            VFIO_IOMMU_INFO_CAPS,
            0,
            &[(
                VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
                1,
                body(&[9, 0], &[0, 1]),
            )],
        );
        assert!(IommuInfo::parse(&truncated).is_err());
        assert!(IommuInfo::parse(&[0u8; 8]).is_err());
    }

    #[test]
    fn missing_vfio_says_to_load_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = VfioContainer::open_path(&dir.path().join("vfio"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("modprobe vfio-pci"), "{e}");
    }

    #[test]
    fn a_plain_file_is_not_a_container() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = VfioContainer::open_path(f.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("VFIO container VFIO_GET_API_VERSION: "),
            "{e}"
        );
    }
}
