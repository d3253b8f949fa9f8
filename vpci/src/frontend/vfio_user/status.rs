//! What a vfio-user server has done: counters kept lock-free on the message path,
//! read as one [`VfioUserStatus`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The process connected to the socket, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPeer {
    /// Process ID (SO_PEERCRED), as seen from udrv's PID namespace.
    pub pid: i32,
    /// User ID (SO_PEERCRED).
    pub uid: u32,
}

/// A snapshot of a vfio-user server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfioUserStatus {
    /// The socket clients connect to.
    pub socket: PathBuf,
    /// Clients get the VFIO device fd for direct BAR access.
    pub direct_mmio: bool,
    /// The client connected now.
    pub client: Option<ClientPeer>,
    /// Clients that connected since the server started.
    pub clients_served: u64,
    /// Messages received (all clients).
    pub messages: u64,
    /// Messages answered with an error reply.
    pub error_replies: u64,
    /// Connections closed because of what a client sent.
    pub disconnects_for_errors: u64,
    /// REGION_READs served.
    pub region_reads: u64,
    /// REGION_WRITEs served (each write of a REGION_WRITE_MULTI counts).
    pub region_writes: u64,
    /// DMA_MAPs accepted.
    pub dma_maps: u64,
    /// DMA_UNMAPs answered.
    pub dma_unmaps: u64,
    /// The current client's DMA mappings now (with and without fd).
    pub dma_mappings: u64,
    /// Bytes of them the device can reach (fd-backed, in the IOMMU).
    pub dma_mapped_bytes: u64,
    /// DEVICE_SET_IRQS applied.
    pub irq_sets: u64,
    /// DEVICE_RESETs done.
    pub resets: u64,
    /// Derived INTx raised to the client (a legacy-mode IDE controller's interrupt,
    /// which VFIO cannot deliver).
    #[serde(default)]
    pub derived_intx_signals: u64,
    /// Nanoseconds spent handling DMA_MAPs (parsed to reply built: the IOMMU mapping,
    /// the fd's mmap and the table), over all of them.
    #[serde(default)]
    pub dma_map_ns: u64,
    /// Nanoseconds spent handling DMA_UNMAPs, over all of them.
    #[serde(default)]
    pub dma_unmap_ns: u64,
    /// Nanoseconds spent handling REGION_READs and REGION_WRITEs (the device access
    /// included), over all of them.
    #[serde(default)]
    pub region_access_ns: u64,
    /// The latest error (a refused message, a device error), if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) connected: AtomicBool,
    pub(super) clients_served: AtomicU64,
    pub(super) messages: AtomicU64,
    pub(super) error_replies: AtomicU64,
    pub(super) disconnects_for_errors: AtomicU64,
    pub(super) region_reads: AtomicU64,
    pub(super) region_writes: AtomicU64,
    pub(super) dma_maps: AtomicU64,
    pub(super) dma_unmaps: AtomicU64,
    pub(super) dma_mappings: AtomicU64,
    pub(super) dma_mapped_bytes: AtomicU64,
    pub(super) irq_sets: AtomicU64,
    pub(super) resets: AtomicU64,
    pub(super) derived_intx_signals: AtomicU64,
    pub(super) dma_map_ns: AtomicU64,
    pub(super) dma_unmap_ns: AtomicU64,
    pub(super) region_access_ns: AtomicU64,
    pub(super) client: Mutex<Option<ClientPeer>>,
    pub(super) last_error: Mutex<Option<String>>,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Counters {
    pub(super) fn error(&self, error: String) {
        tracing::warn!(error = %error, "vfio-user");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub(super) fn set_client(&self, client: Option<ClientPeer>) {
        self.connected.store(client.is_some(), Relaxed);
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
    }

    pub(super) fn snapshot(&self, socket: PathBuf, direct_mmio: bool) -> VfioUserStatus {
        let n = |c: &AtomicU64| c.load(Relaxed);
        VfioUserStatus {
            socket,
            direct_mmio,
            client: *self.client.lock().unwrap_or_else(|e| e.into_inner()),
            clients_served: n(&self.clients_served),
            messages: n(&self.messages),
            error_replies: n(&self.error_replies),
            disconnects_for_errors: n(&self.disconnects_for_errors),
            region_reads: n(&self.region_reads),
            region_writes: n(&self.region_writes),
            dma_maps: n(&self.dma_maps),
            dma_unmaps: n(&self.dma_unmaps),
            dma_mappings: n(&self.dma_mappings),
            dma_mapped_bytes: n(&self.dma_mapped_bytes),
            irq_sets: n(&self.irq_sets),
            resets: n(&self.resets),
            derived_intx_signals: n(&self.derived_intx_signals),
            dma_map_ns: n(&self.dma_map_ns),
            dma_unmap_ns: n(&self.dma_unmap_ns),
            region_access_ns: n(&self.region_access_ns),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_user_status_from_a_service_without_derived_intx_still_reads() {
        let status = VfioUserStatus {
            derived_intx_signals: 7,
            ..VfioUserStatus::default()
        };
        let mut json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["derived_intx_signals"], 7);
        json.as_object_mut().unwrap().remove("derived_intx_signals");
        let older: VfioUserStatus = serde_json::from_value(json).unwrap();
        assert_eq!(older.derived_intx_signals, 0);
    }
}
