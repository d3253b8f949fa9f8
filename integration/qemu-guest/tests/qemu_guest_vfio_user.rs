//! The QEMU 11 guest harness's vfio-user path (guest RAM in a shared memfd, QEMU's
//! `vfio-user-pci` on a UNIX socket), proved against rust-vmm's `vfio_user` Server as a
//! stand-in peer: a small memory-BAR device whose ids and BAR size the guest kernel must
//! report, whose BAR keeps what the guest writes, and which must receive DMA_MAPs of
//! guest RAM with fds. udrv's own server is tested with the same harness.
//!
//! Skipped, saying why, without the kit from `integration/rig setup`; fails under
//! `CI=true` instead.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use udrv_qemu_guest::{GuestBoot, Poke, QemuKit};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};

const IDS: (u16, u16) = (0x1b36, 0x7f01);
const BAR0_SIZE: u64 = 0x1000;

/// What the stand-in saw of the client's DMA mappings: (address, size, had an fd).
type DmaLog = Arc<Mutex<Vec<(u64, u64, bool)>>>;

/// A PCI function with one 4 KiB memory BAR that keeps what is written to it.
struct StandIn {
    config: [u8; 256],
    bar0: Vec<u8>,
    dma: DmaLog,
}

impl StandIn {
    fn new(dma: DmaLog) -> Self {
        let mut config = [0u8; 256];
        config[0..2].copy_from_slice(&IDS.0.to_le_bytes());
        config[2..4].copy_from_slice(&IDS.1.to_le_bytes());
        // Class: other system peripheral; header type 0; BAR0 a 32-bit memory BAR.
        config[0x0a..0x0c].copy_from_slice(&[0x80, 0x08]);
        Self {
            config,
            bar0: vec![0; BAR0_SIZE as usize],
            dma,
        }
    }

    fn area(&mut self, region: u32, offset: u64, len: usize) -> std::io::Result<&mut [u8]> {
        let bytes: &mut [u8] = match region {
            VFIO_PCI_CONFIG_REGION_INDEX => &mut self.config,
            VFIO_PCI_BAR0_REGION_INDEX => &mut self.bar0,
            _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        };
        let start =
            usize::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        bytes
            .get_mut(start..start.saturating_add(len))
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))
    }
}

impl ServerBackend for StandIn {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let len = data.len();
        data.copy_from_slice(self.area(region, offset, len)?);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        // Config writes are QEMU's own BAR and command emulation echoing through; only
        // the BAR keeps them.
        if region == VFIO_PCI_BAR0_REGION_INDEX {
            self.area(region, offset, data.len())?.copy_from_slice(data);
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        _offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        self.dma.lock().unwrap().push((address, size, fd.is_some()));
        Ok(())
    }

    fn dma_unmap(
        &mut self,
        _flags: DmaUnmapFlags,
        _address: u64,
        _size: u64,
    ) -> std::io::Result<()> {
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.bar0.fill(0);
        Ok(())
    }

    fn set_irqs(&mut self, _: u32, _: u32, _: u32, _: u32, _: Vec<File>) -> std::io::Result<()> {
        Ok(())
    }
}

fn regions() -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let size = match index {
                VFIO_PCI_CONFIG_REGION_INDEX => 256,
                VFIO_PCI_BAR0_REGION_INDEX => BAR0_SIZE,
                _ => 0,
            };
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: std::mem::size_of::<vfio_region_info>() as u32,
                    index,
                    size,
                    flags: if size > 0 {
                        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                    } else {
                        0
                    },
                    ..Default::default()
                },
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect()
}

/// Listens on `socket` and serves one client on a thread (the Server's `run` returns
/// when the client hangs up).
fn serve(socket: &Path, dma: DmaLog) -> std::thread::JoinHandle<()> {
    // QEMU's vfio-pci wants all five PCI interrupt indices (INTx, MSI, MSI-X, ERR,
    // REQ). Only INTx has a vector, so that QEMU has an interrupt to wire; the device
    // never raises it.
    let irqs = (0..5)
        .map(|index| IrqInfo {
            index,
            flags: 1,
            count: u32::from(index == 0),
        })
        .collect();
    let server = Server::new(socket, true, irqs, regions()).expect("listening");
    std::thread::spawn(move || {
        let mut backend = StandIn::new(dma);
        let _ = server.run(&mut backend);
    })
}

#[test]
fn qemu_guest_vfio_user_stand_in_enumerates_and_keeps_bar_writes() -> anyhow::Result<()> {
    let Some(kit) = QemuKit::for_host_test()? else {
        return Ok(());
    };
    let dir = std::env::temp_dir().join(format!("udrv-vfio-user-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("stand-in.sock");
    let _ = std::fs::remove_file(&socket);
    let dma = DmaLog::default();
    let server = serve(&socket, dma.clone());
    let report = GuestBoot::new(&kit)
        .vfio_user_device(&socket)
        .poke(Poke {
            vendor: IDS.0,
            device: IDS.1,
            bar: 0,
            offset: 0x40,
            value: 0xfeed_f00d,
        })
        .run();
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    server.join().expect("the stand-in server thread");
    eprintln!(
        "guest with vfio-user-pci: QEMU ran {:.2} s",
        report.elapsed.as_secs_f64()
    );
    let function = report.function(IDS.0, IDS.1).ok_or_else(|| {
        anyhow::anyhow!("not enumerated: {:?}\n{}", report.functions, report.tail())
    })?;
    let bar0 = function.bar(0).expect("BAR0 enumerated");
    assert_eq!((bar0.size, bar0.is_io()), (BAR0_SIZE, false));
    assert_eq!(report.pokes.len(), 1, "{:?}", report.lines);
    assert_eq!(
        report.pokes[0].read, 0xfeed_f00d,
        "the BAR kept the guest's write"
    );
    let maps = dma.lock().unwrap().clone();
    let ram_with_fd: u64 = maps.iter().filter(|m| m.2).map(|m| m.1).sum();
    assert!(
        ram_with_fd >= 200 << 20,
        "DMA_MAPs with fds cover guest RAM (256 MiB); got {ram_with_fd:#x} bytes in {maps:x?}"
    );
    Ok(())
}
