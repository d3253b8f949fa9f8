//! A user-level driver for one port of an AHCI SATA controller (QEMU's ich9-ahci).
//!
//! ABAR (BAR5) is mmap'd, so register accesses are plain loads and stores. The port
//! gets a command list, a received-FIS area and one command table in DMA memory, and
//! a data buffer the PRDT points at. A command is: an H2D register FIS with the ATA
//! command in the table, a header in slot 0, a write of PxCI; it is done when the HBA
//! clears the slot's PxCI bit. Completion is learnt from the MSI's eventfd, or by
//! polling PxCI. One command is in flight at a time (like `dd`): READ DMA EXT and
//! WRITE DMA EXT of up to the data buffer's size.
//!
//! Dropping the driver stops the port's command and FIS engines, disables its
//! interrupts and the HBA's, disables MSI and turns bus mastering off.

pub mod command;
pub mod regs;

use std::time::{Duration, Instant};

use dma::{DmaAccess, DmaMemory};
use udriver::pci::{PciAddress, PciDevice};
use udriver::vfio::{Bar, IrqIndex, IrqSet};

use crate::ata::{self, command as ata_cmd, status, Identity, SECTOR_SIZE};
use crate::block::{self, BlockDevice};
use crate::device::{Device, DeviceBuffer};
use crate::error::{DriverError, Result};
use crate::stop;
use crate::wait::{poll_until, Completion};
use command::{CommandHeader, COMMAND_LIST_SIZE, H2D_DWORDS, PRDT_OFFSET, PRD_ENTRY_SIZE};
use regs::*;

/// Where things lie in the port's control memory (one 4 KiB page).
const COMMAND_LIST_AT: usize = 0;
const RECEIVED_FIS_AT: usize = COMMAND_LIST_SIZE;
const TABLE_AT: usize = 0x800;
/// Where the HBA puts the last device-to-host register FIS (offset 0x40 of the
/// received-FIS area).
const D2H_FIS_AT: usize = RECEIVED_FIS_AT + 0x40;
/// PRDT entries that fit in the page after the table's header.
const MAX_PRDT_ENTRIES: usize = (4096 - TABLE_AT - PRDT_OFFSET) / PRD_ENTRY_SIZE;

/// How long the engines may take to start or stop (AHCI allows 500 ms).
const ENGINE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the disk may take to become ready, and one command to complete.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest transfer one command can make: 65536 sectors.
pub const MAX_TRANSFER: usize = 65536 * SECTOR_SIZE;

fn is_ahci(pci: &PciDevice) -> bool {
    pci.class.0 == 0x01_06_01
}

/// Which port, how completions are learnt, and the largest transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The port the disk is on.
    pub port: u8,
    /// MSI or polling.
    pub completion: Completion,
    /// Bytes of the data buffer: the most one command moves (a multiple of 512, up to
    /// 32 MiB).
    pub max_transfer: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            port: 0,
            completion: Completion::Interrupts,
            max_transfer: 1 << 20,
        }
    }
}

/// One port of an AHCI controller with an ATA disk, driven from user space.
#[derive(Debug)]
pub struct Ahci {
    device: Device,
    abar: Bar,
    port: u8,
    control: DeviceBuffer,
    buffer: DeviceBuffer,
    max_transfer: usize,
    msi: Option<IrqSet>,
    identity: Identity,
    interrupts: u64,
}

impl Ahci {
    /// Opens `address` (bound to vfio-pci), sets up port `config.port` and identifies
    /// its disk.
    pub fn open(address: PciAddress, config: &Config) -> Result<Ahci> {
        let device = Device::open(address, "an AHCI controller (class 010601)", is_ahci)?;
        if config.max_transfer == 0
            || !config.max_transfer.is_multiple_of(SECTOR_SIZE)
            || config.max_transfer > MAX_TRANSFER
        {
            return Err(DriverError::Request {
                device: device.name().into(),
                reason: format!(
                    "a data buffer of {} bytes: use a multiple of {SECTOR_SIZE} up to {MAX_TRANSFER}",
                    config.max_transfer
                ),
            });
        }
        let abar = device.vfio().bar(ABAR)?;
        let control = device.dma_buffer(4096, DmaAccess::ReadWrite)?;
        let buffer = device.dma_buffer(config.max_transfer, DmaAccess::ReadWrite)?;
        let mut ahci = Ahci {
            device,
            abar,
            port: config.port,
            control,
            buffer,
            max_transfer: config.max_transfer,
            msi: None,
            identity: Identity::default(),
            interrupts: 0,
        };
        // From here on, an error drops `ahci`, and Drop leaves the port quiet.
        ahci.init(config.completion)?;
        ahci.identity = ahci.identify()?;
        Ok(ahci)
    }

    fn read(&self, reg: u64) -> Result<u32> {
        Ok(self.abar.read32(reg)?)
    }

    fn write(&self, reg: u64, value: u32) -> Result<()> {
        Ok(self.abar.write32(reg, value)?)
    }

    fn port_read(&self, reg: u64) -> Result<u32> {
        self.read(port_reg(self.port, reg))
    }

    fn port_write(&self, reg: u64, value: u32) -> Result<()> {
        self.write(port_reg(self.port, reg), value)
    }

    fn init(&mut self, completion: Completion) -> Result<()> {
        self.write(GHC, self.read(GHC)? | GHC_AE)?;
        let implemented = self.read(PI)?;
        if self.port >= 32 || implemented & (1 << self.port) == 0 {
            let ports: Vec<String> = (0..32)
                .filter(|p| implemented & (1 << p) != 0)
                .map(|p| p.to_string())
                .collect();
            return Err(DriverError::Request {
                device: self.name().into(),
                reason: format!(
                    "port {} is not implemented; the ports are {}",
                    self.port,
                    ports.join(", ")
                ),
            });
        }
        let iova = self.control.iova().0;
        if self.read(CAP)? & CAP_S64A == 0 && iova + 4096 > 1 << 32 {
            return Err(DriverError::Setup {
                device: self.name().into(),
                reason: "the HBA has 32-bit addresses but the DMA memory lies above 4 GiB".into(),
            });
        }
        self.stop_engines()?;
        let clb = iova + COMMAND_LIST_AT as u64;
        let fb = iova + RECEIVED_FIS_AT as u64;
        self.port_write(PX_CLB, clb as u32)?;
        self.port_write(PX_CLBU, (clb >> 32) as u32)?;
        self.port_write(PX_FB, fb as u32)?;
        self.port_write(PX_FBU, (fb >> 32) as u32)?;
        self.port_write(PX_SERR, u32::MAX)?;
        self.port_write(PX_IE, 0)?;
        self.port_write(PX_IS, u32::MAX)?;
        let cmd = self.port_read(PX_CMD)?;
        self.port_write(PX_CMD, cmd | CMD_FRE | CMD_SUD | CMD_POD)?;

        let det = self.port_read(PX_SSTS)? & 0xf;
        if det != SSTS_DET_PRESENT {
            return Err(DriverError::Setup {
                device: self.name().into(),
                reason: format!(
                    "no disk on port {} (PxSSTS.DET is {det}, not 3: nothing attached or no link)",
                    self.port
                ),
            });
        }
        poll_until(
            self.name(),
            COMMAND_TIMEOUT,
            || format!("the disk to become ready ({})", self.task_file()),
            || {
                let tfd = self.port_read(PX_TFD)? as u8;
                Ok((tfd & (status::BSY | status::DRQ) == 0).then_some(()))
            },
        )?;
        // The disk's first D2H FIS set DHRS; clear it before interrupts are enabled.
        self.port_write(PX_SERR, u32::MAX)?;
        self.port_write(PX_IS, u32::MAX)?;
        self.write(IS, 1 << self.port)?;

        self.device.vfio().set_bus_master(true)?;
        // Without MSI (or if VFIO cannot signal it) the driver falls back to polling.
        let msi = self.device.vfio().irq_info(IrqIndex::Msi)?;
        if completion == Completion::Interrupts && msi.count > 0 && msi.eventfd {
            self.msi = Some(self.device.vfio().enable_irqs(IrqIndex::Msi, 1)?);
            self.port_write(PX_IE, INT_DHRS | INT_PSS | INT_DSS | INT_SDBS | INT_ERRORS)?;
            self.write(GHC, self.read(GHC)? | GHC_IE)?;
        } else {
            self.write(GHC, self.read(GHC)? & !GHC_IE)?;
        }
        self.start_engine()
    }

    /// Gives a command still in flight (PxCI) up to [`ENGINE_TIMEOUT`] to finish, so
    /// that stopping the engine never cancels a transfer: the spec allows cancelling,
    /// but QEMU 7.2's AHCI has crashed when a Ctrl-C stopped it mid-READ DMA. Not
    /// [`poll_until`]: that gives up at once after Ctrl-C, which is when this matters.
    fn let_commands_finish(&self) {
        let deadline = Instant::now() + ENGINE_TIMEOUT;
        while Instant::now() < deadline {
            match self.port_read(PX_CI) {
                Ok(0) | Err(_) => return,
                Ok(_) => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    }

    /// Clears ST and FRE and waits for the command-list and FIS engines to stop.
    fn stop_engines(&self) -> Result<()> {
        let cmd = self.port_read(PX_CMD)?;
        if cmd & CMD_ST != 0 {
            self.port_write(PX_CMD, cmd & !CMD_ST)?;
        }
        self.wait_cmd_clear(CMD_CR, "the command list engine to stop (PxCMD.CR)")?;
        let cmd = self.port_read(PX_CMD)?;
        if cmd & CMD_FRE != 0 {
            self.port_write(PX_CMD, cmd & !CMD_FRE)?;
        }
        self.wait_cmd_clear(CMD_FR, "the FIS receive engine to stop (PxCMD.FR)")
    }

    fn wait_cmd_clear(&self, bit: u32, what: &str) -> Result<()> {
        poll_until(
            self.name(),
            ENGINE_TIMEOUT,
            || {
                format!(
                    "{what}; PxCMD {:#010x}",
                    self.port_read(PX_CMD).unwrap_or(0)
                )
            },
            || Ok((self.port_read(PX_CMD)? & bit == 0).then_some(())),
        )
    }

    fn start_engine(&self) -> Result<()> {
        let cmd = self.port_read(PX_CMD)?;
        self.port_write(PX_CMD, cmd | CMD_FRE | CMD_ST)
    }

    fn task_file(&self) -> String {
        match self.port_read(PX_TFD) {
            Ok(tfd) => ata::describe(tfd as u8, (tfd >> 8) as u8),
            Err(_) => "task file unreadable".into(),
        }
    }

    /// The controller's name, `0000:00:06.0`.
    pub fn name(&self) -> &str {
        self.device.name()
    }

    /// The opened device (config space, interrupts), e.g. to inspect it.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// What the disk said about itself.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The port in use.
    pub fn port(&self) -> u8 {
        self.port
    }

    /// How completions are learnt: MSI, or polling (when asked for, or when the
    /// controller has no MSI).
    pub fn completion(&self) -> Completion {
        if self.msi.is_some() {
            Completion::Interrupts
        } else {
            Completion::Polling
        }
    }

    /// MSIs taken so far.
    pub fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// The most bytes one command moves.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// Reads a 32-bit register of this port (see [`regs`]).
    pub fn read_port_register(&self, reg: u64) -> Result<u32> {
        self.port_read(reg)
    }

    /// Reads a 32-bit HBA register (see [`regs`]).
    pub fn read_register(&self, reg: u64) -> Result<u32> {
        self.read(reg)
    }

    fn identify(&mut self) -> Result<Identity> {
        self.execute(ata_cmd::IDENTIFY_DEVICE, 0, 0, SECTOR_SIZE, false)?;
        let mut data = [0u8; SECTOR_SIZE];
        self.buffer.copy_to(0, &mut data)?;
        let identity = Identity::parse(&data).map_err(|reason| DriverError::Setup {
            device: self.name().into(),
            reason: format!("port {}'s IDENTIFY data: {reason}", self.port),
        })?;
        if !identity.lba48 {
            return Err(DriverError::Setup {
                device: self.name().into(),
                reason: format!(
                    "the disk on port {} lacks 48-bit LBA, which READ/WRITE DMA EXT need",
                    self.port
                ),
            });
        }
        Ok(identity)
    }

    /// Runs one ATA command in slot 0 moving `len` bytes between the disk and the
    /// start of the data buffer, and waits for it. Returns the bytes the HBA moved.
    fn execute(&mut self, cmd: u8, lba: u64, count: u32, len: usize, write: bool) -> Result<u32> {
        let what = || command_name(cmd, count, lba);
        if self.port_read(PX_CI)? & 1 != 0 {
            return Err(DriverError::Device {
                device: self.name().into(),
                what: what(),
                reason: "slot 0 is still busy with an earlier command".into(),
            });
        }
        let mem = &self.control;
        let table = mem.iova().0 + TABLE_AT as u64;
        let device_reg = if cmd == ata_cmd::IDENTIFY_DEVICE {
            0
        } else {
            command::DEVICE_LBA
        };
        mem.copy_from(TABLE_AT, &command::h2d_fis(cmd, lba, count, device_reg))?;
        let prdt = if len == 0 {
            Vec::new()
        } else {
            command::prdt(self.buffer.iova().0, len).map_err(|reason| DriverError::Request {
                device: self.name().into(),
                reason,
            })?
        };
        if prdt.len() > MAX_PRDT_ENTRIES {
            return Err(DriverError::Request {
                device: self.name().into(),
                reason: format!("{} PRD entries do not fit the command table", prdt.len()),
            });
        }
        for (i, entry) in prdt.iter().enumerate() {
            mem.copy_from(TABLE_AT + PRDT_OFFSET + i * PRD_ENTRY_SIZE, entry)?;
        }
        let header = CommandHeader {
            fis_dwords: H2D_DWORDS,
            write,
            prdt_entries: prdt.len() as u16,
            table,
        };
        mem.copy_from(COMMAND_LIST_AT, &header.to_bytes())?;
        // Forget the last command's D2H FIS, so that a new one shows the end of this.
        mem.write::<u8>(D2H_FIS_AT, 0)?;
        self.port_write(PX_IS, u32::MAX)?;
        self.write(IS, 1 << self.port)?;
        self.port_write(PX_CI, 1)?;

        let outcome = self.wait_done(&what);
        let is = self.port_read(PX_IS)?;
        self.port_write(PX_IS, is)?;
        self.write(IS, 1 << self.port)?;
        let tfd = self.port_read(PX_TFD)?;
        if let Err(e) = outcome {
            self.recover();
            return Err(e);
        }
        if is & INT_ERRORS != 0 || tfd as u8 & (status::ERR | status::DF) != 0 {
            let reason = format!(
                "{}; PxIS {is:#010x}, PxSERR {:#010x}",
                ata::describe(tfd as u8, (tfd >> 8) as u8),
                self.port_read(PX_SERR)?
            );
            self.recover();
            return Err(DriverError::Device {
                device: self.name().into(),
                what: what(),
                reason,
            });
        }
        // PRDBC: the bytes the HBA moved, in the header's second dword.
        let moved = self.control.read::<u32>(COMMAND_LIST_AT + 4)?;
        if moved as usize != len {
            return Err(DriverError::Device {
                device: self.name().into(),
                what: what(),
                reason: format!("the HBA moved {moved} of {len} bytes"),
            });
        }
        Ok(moved)
    }

    /// Waits until slot 0's PxCI bit clears or an error is flagged.
    fn wait_done(&mut self, what: &dyn Fn() -> String) -> Result<()> {
        let done = |ahci: &Ahci| -> Result<bool> {
            let ci = ahci.port_read(PX_CI)?;
            Ok(ci & 1 == 0 || ahci.port_read(PX_IS)? & INT_ERRORS != 0)
        };
        if self.msi.is_none() {
            // Poll memory, not registers: the HBA writes the disk's D2H register FIS
            // into the received-FIS area when the command ends, and reading DMA memory
            // costs nothing, where each register read is a trip to the device (a VM
            // exit under virtualisation). PxCI confirms; it is also read now and then
            // in case no FIS comes (PIO commands end with a PIO setup FIS).
            let mut spins = 0u32;
            return poll_until(
                self.name(),
                COMMAND_TIMEOUT,
                || format!("{} ({})", what(), self.task_file()),
                || {
                    spins = spins.wrapping_add(1);
                    let fis = self.control.read::<u8>(D2H_FIS_AT)?;
                    if fis != command::FIS_D2H && !spins.is_multiple_of(1024) {
                        return Ok(None);
                    }
                    Ok(done(self)?.then_some(()))
                },
            );
        }
        let started = Instant::now();
        loop {
            if done(self)? {
                // The command may have ended before this loop first looked; its MSI
                // is then already in the eventfd. Take it now, so it is counted and
                // does not wake the next command's wait early.
                let msi = self.msi.as_ref().expect("interrupt mode");
                let fd = msi.eventfd(0).expect("MSI has one vector");
                if fd
                    .read()
                    .map_err(|source| DriverError::Irq {
                        device: self.name().into(),
                        source,
                    })?
                    .is_some()
                {
                    self.interrupts += 1;
                }
                return Ok(());
            }
            if stop::requested() {
                return Err(DriverError::Interrupted {
                    device: self.name().into(),
                });
            }
            let left = COMMAND_TIMEOUT.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(DriverError::Timeout {
                    device: self.name().into(),
                    what: format!("{} ({})", what(), self.task_file()),
                    waited: started.elapsed(),
                });
            }
            let msi = self.msi.as_ref().expect("interrupt mode");
            let fd = msi.eventfd(0).expect("MSI has one vector");
            let fired = fd
                .wait(left.min(Duration::from_millis(100)))
                .map_err(|source| DriverError::Irq {
                    device: self.name().into(),
                    source,
                })?;
            if fired.is_some() {
                // MSI is edge-triggered: nothing to unmask. The status bits are
                // cleared after the command, once they have been looked at.
                self.interrupts += 1;
            }
        }
    }

    /// After a failed command: restart the command engine (AHCI 1.3.1 section
    /// 6.2.2.1), so the next command can run. Best effort: the command's error is what
    /// gets reported.
    fn recover(&self) {
        let _ = (|| -> Result<()> {
            let cmd = self.port_read(PX_CMD)?;
            self.port_write(PX_CMD, cmd & !CMD_ST)?;
            self.wait_cmd_clear(CMD_CR, "the command list engine to stop (PxCMD.CR)")?;
            self.port_write(PX_SERR, u32::MAX)?;
            self.port_write(PX_IS, u32::MAX)?;
            self.write(IS, 1 << self.port)?;
            self.start_engine()
        })();
    }

    fn check_request(&self, lba: u64, len: usize) -> Result<u64> {
        block::check_request(self.name(), self.identity.sectors, lba, len)
    }

    /// Checks an in-place read of `count` sectors: on the disk and within the buffer.
    fn check_in_place(&self, lba: u64, count: u64) -> Result<usize> {
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(SECTOR_SIZE))
            .filter(|len| *len <= self.max_transfer)
            .ok_or_else(|| DriverError::Request {
                device: self.name().into(),
                reason: format!(
                    "{count} sectors do not fit the {}-byte data buffer",
                    self.max_transfer
                ),
            })?;
        self.check_request(lba, len)?;
        Ok(len)
    }

    /// Reads `out.len() / 512` sectors at `lba` with READ DMA EXT, in commands of up to
    /// the data buffer's size.
    pub fn read_dma(&mut self, lba: u64, out: &mut [u8]) -> Result<()> {
        self.check_request(lba, out.len())?;
        let per_command = self.max_transfer;
        for (i, chunk) in out.chunks_mut(per_command).enumerate() {
            let at = lba + (i * per_command / SECTOR_SIZE) as u64;
            let count = (chunk.len() / SECTOR_SIZE) as u32;
            self.execute(ata_cmd::READ_DMA_EXT, at, count, chunk.len(), false)?;
            self.buffer.copy_to(0, chunk)?;
        }
        Ok(())
    }

    /// Writes `data.len() / 512` sectors at `lba` with WRITE DMA EXT.
    pub fn write_dma(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.check_request(lba, data.len())?;
        let per_command = self.max_transfer;
        for (i, chunk) in data.chunks(per_command).enumerate() {
            let at = lba + (i * per_command / SECTOR_SIZE) as u64;
            let count = (chunk.len() / SECTOR_SIZE) as u32;
            self.buffer.copy_from(0, chunk)?;
            self.execute(ata_cmd::WRITE_DMA_EXT, at, count, chunk.len(), true)?;
        }
        Ok(())
    }

    /// Flushes the disk's write cache.
    pub fn flush_cache(&mut self) -> Result<()> {
        self.execute(ata_cmd::FLUSH_CACHE_EXT, 0, 0, 0, false)?;
        Ok(())
    }

    /// Stops the port: command and FIS engines off, port and HBA interrupts off, MSI
    /// disabled, bus mastering off. Done on drop as well; call it to see errors.
    pub fn quiesce(&mut self) -> Result<()> {
        let port = (|| -> Result<()> {
            self.port_write(PX_IE, 0)?;
            self.write(GHC, self.read(GHC)? & !GHC_IE)?;
            self.let_commands_finish();
            self.stop_engines()?;
            self.port_write(PX_IS, u32::MAX)?;
            self.write(IS, 1 << self.port)
        })();
        self.msi = None;
        let vfio = self.device.vfio().quiesce();
        port?;
        Ok(vfio?)
    }
}

fn command_name(cmd: u8, count: u32, lba: u64) -> String {
    match cmd {
        ata_cmd::IDENTIFY_DEVICE => "IDENTIFY DEVICE".into(),
        ata_cmd::FLUSH_CACHE_EXT => "FLUSH CACHE EXT".into(),
        ata_cmd::READ_DMA_EXT => format!("READ DMA EXT of {count} sectors at LBA {lba}"),
        ata_cmd::WRITE_DMA_EXT => format!("WRITE DMA EXT of {count} sectors at LBA {lba}"),
        other => format!("command {other:#04x}"),
    }
}

impl BlockDevice for Ahci {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn sectors(&self) -> u64 {
        self.identity.sectors
    }

    fn max_sectors_per_command(&self) -> u64 {
        (self.max_transfer / SECTOR_SIZE) as u64
    }

    fn read_sectors(&mut self, lba: u64, out: &mut [u8]) -> Result<()> {
        self.read_dma(lba, out)
    }

    fn read_in_place(&mut self, lba: u64, count: u64) -> Result<&DmaMemory> {
        let len = self.check_in_place(lba, count)?;
        self.execute(ata_cmd::READ_DMA_EXT, lba, count as u32, len, false)?;
        Ok(&self.buffer)
    }

    fn write_sectors(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        self.write_dma(lba, data)
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_cache()
    }
}

impl Drop for Ahci {
    fn drop(&mut self) {
        // Errors cannot be reported from here; `quiesce` goes as far as it can.
        let _ = self.quiesce();
    }
}
