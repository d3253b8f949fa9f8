//! User-level PCI drivers written on udriver (VFIO) and dma (pinned memory, IOVAs):
//! an e1000 NIC, an IDE controller and an AHCI controller, small enough to read in
//! one sitting. Each driver is a module; each has a runnable binary under `src/bin/`
//! (`e1000`, `ide`, `ahci`, each with `--help`).
//!
//! ```text
//! device   open a vfio-pci device: checks, its own container, DMA buffers < 4 GiB
//! wait     polling with deadlines; Completion (polling or interrupts)
//! stop     Ctrl-C/SIGTERM as a flag, so Drop guards leave devices quiet
//! ata      ATA commands, status bits, IDENTIFY (shared by IDE and AHCI)
//! block    a disk in sectors: pattern-checked sequential reads, write round trips
//! e1000    NIC: descriptor rings, batched tail writes, INTx or polling
//! ide      PIIX3 IDE: PIO and bus-master DMA on the legacy ports
//! ahci     AHCI: command list, FIS, PRDT; MSI or polling
//! ```

pub mod ahci;
pub mod ata;
pub mod block;
pub mod device;
pub mod disk_pattern;
pub mod e1000;
pub mod error;
pub mod ide;
pub mod stop;
pub mod wait;

pub use error::{DriverError, Result};
