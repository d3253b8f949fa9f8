//! A user-level driver for a PCI IDE controller in legacy (compatibility) mode, such as
//! QEMU's PIIX3: the primary channel's master disk, by PIO or bus-master DMA.
//!
//! The controller's ports are IO ports, which VFIO reaches with pread/pwrite on the
//! device fd: every register access is a system call. The legacy channel's interrupt is
//! ISA IRQ 14, not a PCI interrupt, so VFIO cannot deliver it: the driver keeps the
//! device's interrupt off (nIEN) and polls the status registers.
//!
//! - PIO: program the task file, issue READ/WRITE SECTORS, move each sector through
//!   the data port 32 bits at a time when the device sets DRQ.
//! - DMA: describe the transfer in a PRD table in DMA memory, point the bus-master
//!   engine at it, issue READ/WRITE DMA, start the engine, poll until it goes inactive.
//!
//! Dropping the driver stops the bus-master engine, resets the channel (which ends any
//! command), leaves the device's interrupt off and turns bus mastering off.

pub mod prd;
pub mod regs;

use std::time::Duration;

use dma::{DmaAccess, DmaMemory};
use udriver::pci::{PciAddress, PciDevice};
use udriver::vfio::Bar;

use crate::ata::{self, command, status, Identity, SECTOR_SIZE};
use crate::block::{self, BlockDevice};
use crate::device::{Device, DeviceBuffer};
use crate::error::{DriverError, Result};
use crate::wait::poll_until;
use regs::*;

/// Most sectors in one LBA28 command (a count of 0 means 256).
pub const MAX_SECTORS: u64 = 256;
/// How long a command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

fn is_legacy_ide(pci: &PciDevice) -> bool {
    // Class 01 (storage) / 01 (IDE); prog-if bit 0 clear: the primary channel is in
    // compatibility mode, on the legacy ports; bit 7: bus mastering.
    pci.class.base() == 0x01 && pci.class.sub() == 0x01 && pci.class.prog_if() & 0x81 == 0x80
}

/// PIO or DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transfer {
    /// Programmed I/O through the data port.
    Pio,
    /// Bus-master DMA through a PRD table.
    Dma,
}

/// The primary master disk of a legacy IDE controller, driven from user space.
#[derive(Debug)]
pub struct Ide {
    device: Device,
    command_block: Bar,
    control: Bar,
    bus_master: Bar,
    prd_table: DeviceBuffer,
    buffer: DeviceBuffer,
    identity: Identity,
    transfer: Transfer,
}

impl Ide {
    /// Opens `address` (bound to vfio-pci), resets the primary channel and identifies
    /// its master disk. Transfers start in `transfer` mode.
    pub fn open(address: PciAddress, transfer: Transfer) -> Result<Ide> {
        let device = Device::open(
            address,
            "a bus-mastering IDE controller in legacy mode (class 0101, prog-if 8x)",
            is_legacy_ide,
        )?;
        let vfio = device.vfio();
        let (command_block, control, bus_master) = (
            vfio.bar(COMMAND_BAR)?,
            vfio.bar(CONTROL_BAR)?,
            vfio.bar(BUS_MASTER_BAR)?,
        );
        let prd_table = device.dma_buffer(4096, DmaAccess::DeviceReads)?;
        let buffer = device.dma_buffer(MAX_SECTORS as usize * SECTOR_SIZE, DmaAccess::ReadWrite)?;
        let mut ide = Ide {
            device,
            command_block,
            control,
            bus_master,
            prd_table,
            buffer,
            identity: Identity::default(),
            transfer,
        };
        ide.reset()?;
        ide.identity = ide.identify()?;
        ide.device.vfio().set_bus_master(true)?;
        Ok(ide)
    }

    /// The controller's name, `0000:00:05.0`.
    pub fn name(&self) -> &str {
        self.device.name()
    }

    /// The opened device (config space), e.g. to inspect it.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What the disk said about itself.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The transfer mode of [`BlockDevice`] reads and writes.
    pub fn transfer(&self) -> Transfer {
        self.transfer
    }

    /// Switches between PIO and DMA.
    pub fn set_transfer(&mut self, transfer: Transfer) {
        self.transfer = transfer;
    }

    /// Reads the bus-master status register (BMISX), e.g. to check the engine is idle.
    pub fn bus_master_status(&self) -> Result<u8> {
        Ok(self.bus_master.read8(BM_STATUS)?)
    }

    /// Reads the bus-master command register (BMICX).
    pub fn bus_master_command(&self) -> Result<u8> {
        Ok(self.bus_master.read8(BM_COMMAND)?)
    }

    fn alt_status(&self) -> Result<u8> {
        Ok(self.control.read8(ALT_STATUS)?)
    }

    /// The status register; reading it also acknowledges the device's interrupt.
    fn status(&self) -> Result<u8> {
        Ok(self.command_block.read8(STATUS)?)
    }

    fn registers(&self) -> String {
        match (self.alt_status(), self.command_block.read8(ERROR)) {
            (Ok(s), Ok(e)) => ata::describe(s, e),
            _ => "registers unreadable".into(),
        }
    }

    /// Pulses SRST: both devices on the channel end any command and return to their
    /// power-on state. The device's interrupt stays off throughout.
    fn reset(&mut self) -> Result<()> {
        self.bus_master.write8(BM_COMMAND, 0)?;
        self.control
            .write8(DEVICE_CONTROL, CONTROL_SRST | CONTROL_NIEN)?;
        // SRST must be held at least 5 us; a pread or two takes longer than that.
        self.alt_status()?;
        self.control.write8(DEVICE_CONTROL, CONTROL_NIEN)?;
        self.wait_not_busy("BSY to clear after a channel reset")?;
        Ok(())
    }

    fn wait_not_busy(&self, what: &str) -> Result<u8> {
        poll_until(
            self.name(),
            COMMAND_TIMEOUT,
            || format!("{what} ({})", self.registers()),
            || {
                let s = self.alt_status()?;
                Ok((s & status::BSY == 0).then_some(s))
            },
        )
    }

    /// Fails with the device's error registers if the status shows ERR or DF.
    fn check(&self, status: u8, what: impl Fn() -> String) -> Result<()> {
        if status & (status::ERR | status::DF) != 0 {
            let error = self.command_block.read8(ERROR)?;
            return Err(DriverError::Device {
                device: self.name().into(),
                what: what(),
                reason: ata::describe(status, error),
            });
        }
        Ok(())
    }

    /// Selects the master, programs an LBA28 task file and issues `cmd`.
    fn issue(&self, cmd: u8, lba: u64, count: u64) -> Result<()> {
        self.wait_not_busy("the channel to be idle before a command")?;
        self.command_block
            .write8(DEVICE, DEVICE_LBA_MASTER | ((lba >> 24) as u8 & 0x0f))?;
        let status = self.wait_not_busy("the master to be selected")?;
        if status & status::DRDY == 0 {
            return Err(DriverError::Device {
                device: self.name().into(),
                what: format!("selecting the master disk for command {cmd:#04x}"),
                reason: format!("not ready: {}", ata::describe(status, 0)),
            });
        }
        self.command_block.write8(FEATURES, 0)?;
        // A count of 256 is written as 0.
        self.command_block.write8(SECTOR_COUNT, count as u8)?;
        self.command_block.write8(LBA_LOW, lba as u8)?;
        self.command_block.write8(LBA_MID, (lba >> 8) as u8)?;
        self.command_block.write8(LBA_HIGH, (lba >> 16) as u8)?;
        self.command_block.write8(COMMAND, cmd)?;
        Ok(())
    }

    /// Waits for the device to ask for (or offer) the next sector's data.
    fn wait_drq(&self, what: &dyn Fn() -> String) -> Result<()> {
        self.wait_not_busy(&what())?;
        // Reading STATUS (not ALT_STATUS) acknowledges the sector's interrupt.
        let status = self.status()?;
        self.check(status, what)?;
        if status & status::DRQ == 0 {
            return Err(DriverError::Device {
                device: self.name().into(),
                what: what(),
                reason: format!("no data request: {}", ata::describe(status, 0)),
            });
        }
        Ok(())
    }

    fn identify(&mut self) -> Result<Identity> {
        let what = || "IDENTIFY DEVICE".to_string();
        self.issue(command::IDENTIFY_DEVICE, 0, 0)?;
        self.wait_drq(&what)?;
        let mut data = [0u8; SECTOR_SIZE];
        self.pio_in(&mut data)?;
        self.wait_not_busy("the end of IDENTIFY DEVICE")?;
        let status = self.status()?;
        self.check(status, what)?;
        Identity::parse(&data).map_err(|reason| DriverError::Setup {
            device: self.name().into(),
            reason: format!("the primary master's IDENTIFY data: {reason}"),
        })
    }

    /// One sector in through the data port, 32 bits per access.
    fn pio_in(&self, sector: &mut [u8]) -> Result<()> {
        for word in sector.chunks_exact_mut(4) {
            word.copy_from_slice(&self.command_block.read32(DATA)?.to_le_bytes());
        }
        Ok(())
    }

    /// One sector out through the data port, 32 bits per access.
    fn pio_out(&self, sector: &[u8]) -> Result<()> {
        for word in sector.chunks_exact(4) {
            let value = u32::from_le_bytes(word.try_into().expect("4 bytes"));
            self.command_block.write32(DATA, value)?;
        }
        Ok(())
    }

    fn command_name(cmd: u8, count: u64, lba: u64) -> String {
        let name = match cmd {
            command::READ_SECTORS => "READ SECTORS",
            command::WRITE_SECTORS => "WRITE SECTORS",
            command::READ_DMA => "READ DMA",
            command::WRITE_DMA => "WRITE DMA",
            _ => "command",
        };
        format!("{name} of {count} sectors at LBA {lba}")
    }

    /// Reads `out.len() / 512` sectors at `lba` by PIO.
    pub fn read_pio(&mut self, lba: u64, out: &mut [u8]) -> Result<()> {
        self.check_request(lba, out.len())?;
        for (i, chunk) in out
            .chunks_mut(MAX_SECTORS as usize * SECTOR_SIZE)
            .enumerate()
        {
            let lba = lba + i as u64 * MAX_SECTORS;
            let count = (chunk.len() / SECTOR_SIZE) as u64;
            let what = || Self::command_name(command::READ_SECTORS, count, lba);
            self.issue(command::READ_SECTORS, lba, count)?;
            for sector in chunk.chunks_exact_mut(SECTOR_SIZE) {
                self.wait_drq(&what)?;
                self.pio_in(sector)?;
            }
            self.wait_not_busy(&what())?;
            let status = self.status()?;
            self.check(status, what)?;
        }
        Ok(())
    }

    /// Writes `data.len() / 512` sectors at `lba` by PIO.
    pub fn write_pio(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.check_request(lba, data.len())?;
        for (i, chunk) in data.chunks(MAX_SECTORS as usize * SECTOR_SIZE).enumerate() {
            let lba = lba + i as u64 * MAX_SECTORS;
            let count = (chunk.len() / SECTOR_SIZE) as u64;
            let what = || Self::command_name(command::WRITE_SECTORS, count, lba);
            self.issue(command::WRITE_SECTORS, lba, count)?;
            for sector in chunk.chunks_exact(SECTOR_SIZE) {
                self.wait_drq(&what)?;
                self.pio_out(sector)?;
            }
            self.wait_not_busy(&what())?;
            let status = self.status()?;
            self.check(status, what)?;
        }
        Ok(())
    }

    /// Reads `out.len() / 512` sectors at `lba` by bus-master DMA.
    pub fn read_dma(&mut self, lba: u64, out: &mut [u8]) -> Result<()> {
        self.check_request(lba, out.len())?;
        for (i, chunk) in out
            .chunks_mut(MAX_SECTORS as usize * SECTOR_SIZE)
            .enumerate()
        {
            let lba = lba + i as u64 * MAX_SECTORS;
            self.dma(command::READ_DMA, lba, chunk.len())?;
            self.buffer.copy_to(0, chunk)?;
        }
        Ok(())
    }

    /// Writes `data.len() / 512` sectors at `lba` by bus-master DMA.
    pub fn write_dma(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.check_request(lba, data.len())?;
        for (i, chunk) in data.chunks(MAX_SECTORS as usize * SECTOR_SIZE).enumerate() {
            let lba = lba + i as u64 * MAX_SECTORS;
            self.buffer.copy_from(0, chunk)?;
            self.dma(command::WRITE_DMA, lba, chunk.len())?;
        }
        Ok(())
    }

    /// One DMA command of `len` bytes between the disk and the start of `buffer`.
    fn dma(&mut self, cmd: u8, lba: u64, len: usize) -> Result<()> {
        let count = (len / SECTOR_SIZE) as u64;
        let what = || Self::command_name(cmd, count, lba);
        let entries =
            prd::entries(self.buffer.iova().0, len).map_err(|reason| DriverError::Request {
                device: self.name().into(),
                reason,
            })?;
        for (i, entry) in entries.iter().enumerate() {
            self.prd_table
                .copy_from(i * prd::ENTRY_SIZE, &entry.to_bytes())?;
        }
        let direction = if cmd == command::READ_DMA {
            BM_TO_MEMORY
        } else {
            0
        };
        self.bus_master.write8(BM_COMMAND, direction)?;
        self.bus_master
            .write32(BM_PRD_TABLE, self.prd_table.iova().0 as u32)?;
        // Clear the error and interrupt bits (write 1); keep the drive-capable bits.
        let bm = self.bus_master.read8(BM_STATUS)?;
        self.bus_master
            .write8(BM_STATUS, bm | BM_ERROR | BM_INTERRUPT)?;
        self.issue(cmd, lba, count)?;
        self.bus_master.write8(BM_COMMAND, direction | BM_START)?;
        // With nIEN set the device raises no interrupt (and QEMU sets no BM_INTERRUPT):
        // the transfer is over when the engine is inactive and the device not busy.
        let done = poll_until(
            self.name(),
            COMMAND_TIMEOUT,
            || {
                format!(
                    "{} to finish ({}, BMISX {bm:#04x})",
                    what(),
                    self.registers()
                )
            },
            || {
                let bm = self.bus_master.read8(BM_STATUS)?;
                if bm & BM_ACTIVE != 0 {
                    return Ok(None);
                }
                let status = self.alt_status()?;
                Ok((status & status::BSY == 0).then_some((bm, status)))
            },
        );
        // Stop the engine whatever happened, then look at the outcome.
        self.bus_master.write8(BM_COMMAND, direction)?;
        let (bm, _) = done?;
        let status = self.status()?;
        self.bus_master
            .write8(BM_STATUS, bm | BM_ERROR | BM_INTERRUPT)?;
        self.check(status, what)?;
        if bm & BM_ERROR != 0 {
            return Err(DriverError::Device {
                device: self.name().into(),
                what: what(),
                reason: format!(
                    "the bus-master engine reported an error (BMISX {bm:#04x}): a PRD entry the IOMMU did not map?"
                ),
            });
        }
        Ok(())
    }

    /// Flushes the disk's write cache.
    pub fn flush_cache(&mut self) -> Result<()> {
        let what = || "FLUSH CACHE".to_string();
        self.issue(command::FLUSH_CACHE, 0, 0)?;
        self.wait_not_busy(&what())?;
        let status = self.status()?;
        self.check(status, what)
    }

    fn check_request(&self, lba: u64, len: usize) -> Result<u64> {
        let limit = self.identity.sectors.min(ata::LBA28_LIMIT);
        block::check_request(self.name(), limit, lba, len)
    }

    /// Stops the device: bus-master engine off, channel reset, interrupt off, bus
    /// mastering off. Done on drop as well; call it to see errors.
    pub fn quiesce(&mut self) -> Result<()> {
        let reset = self.reset();
        let vfio = self.device.vfio().quiesce();
        reset?;
        Ok(vfio?)
    }
}

impl BlockDevice for Ide {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn sectors(&self) -> u64 {
        self.identity.sectors.min(ata::LBA28_LIMIT)
    }

    fn max_sectors_per_command(&self) -> u64 {
        MAX_SECTORS
    }

    fn read_sectors(&mut self, lba: u64, out: &mut [u8]) -> Result<()> {
        match self.transfer {
            Transfer::Pio => self.read_pio(lba, out),
            Transfer::Dma => self.read_dma(lba, out),
        }
    }

    fn read_in_place(&mut self, lba: u64, count: u64) -> Result<&DmaMemory> {
        if count == 0 || count > MAX_SECTORS {
            return Err(DriverError::Request {
                device: self.name().into(),
                reason: format!("{count} sectors in place: read 1..={MAX_SECTORS}"),
            });
        }
        let len = count as usize * SECTOR_SIZE;
        match self.transfer {
            Transfer::Dma => {
                self.check_request(lba, len)?;
                self.dma(command::READ_DMA, lba, len)?;
            }
            Transfer::Pio => {
                // PIO moves data through the CPU anyway: read, then fill the buffer.
                let mut data = vec![0u8; len];
                self.read_pio(lba, &mut data)?;
                self.buffer.copy_from(0, &data)?;
            }
        }
        Ok(&self.buffer)
    }

    fn write_sectors(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        match self.transfer {
            Transfer::Pio => self.write_pio(lba, data),
            Transfer::Dma => self.write_dma(lba, data),
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_cache()
    }
}

impl Drop for Ide {
    fn drop(&mut self) {
        // Errors cannot be reported from here; `quiesce` goes as far as it can.
        let _ = self.quiesce();
    }
}
