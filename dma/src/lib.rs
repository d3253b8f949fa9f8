//! DMA for user-level drivers: where device-visible addresses (IOVAs) come from, how a
//! scatter-gather list becomes IOMMU mappings, and pinned memory a device can reach.
//!
//! This crate knows nothing about PCI or VFIO: a backend (udriver's VFIO container, or
//! a test recorder) implements the mapper trait.
