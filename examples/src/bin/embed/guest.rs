//! `AhciGuest`: what a guest's AHCI driver does, cut down to port 0 and one command at
//! a time, running on the [`Vmm`]: every register access is an MMIO exit through the
//! virtual bus, every buffer is guest-physical memory mapped for the device per
//! request (`pci_dma_map_sg` / `pci_dma_unmap_sg`). The device programming is the
//! AHCI driver's (`udrv_examples::ahci`); only the addresses differ: bus addresses
//! from the VMM instead of a driver's own IOVAs.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use dma::{BusSgList, DmaAccess};
use udrv_examples::ahci::command::{
    h2d_fis, prdt, CommandHeader, DEVICE_LBA, H2D_DWORDS, PRDT_OFFSET,
};
use udrv_examples::ahci::regs::{self as ahci, port_reg};
use vpci::config::capability::walk_capabilities;
use vpci::config::regs::{cap, command, header, msi};
use vpci::{AccessWidth, MsiMessage};

use crate::vmm::{Injection, Vmm};

/// Where the guest keeps the port's structures: the command list at +0 (1 KiB),
/// received FISes at +0x400, the command table at +0x1000. Mapped once, for as long
/// as the port runs, like a driver's coherent allocations.
const STRUCTURES_GPA: u64 = 0x1_0000;
const STRUCTURES_LEN: u64 = 0x2000;
const FIS_OFFSET: u64 = 0x400;
const TABLE_OFFSET: u64 = 0x1000;
/// Most PRDT entries a command may carry here (the table's page holds 248).
const MAX_PRDT_ENTRIES: usize = 64;

/// The MSI the guest programs: vector 0x41 on CPU 0.
pub const MSI_MESSAGE: MsiMessage = MsiMessage {
    address: 0xfee0_0000,
    data: 0x0041,
};

/// The guest's driver state for one AHCI controller.
pub struct AhciGuest<'a> {
    vmm: &'a mut Vmm,
    abar: u64,
    msi_at: u16,
    structures: BusSgList,
}

fn cfg_read(vmm: &mut Vmm, register: u16, width: AccessWidth) -> Result<u32> {
    let mut b = [0u8; 4];
    let address = vmm.ecam_address(register);
    vmm.mmio_read(address, &mut b[..width.bytes()])?;
    Ok(u32::from_le_bytes(b))
}

fn cfg_write(vmm: &mut Vmm, register: u16, width: AccessWidth, value: u32) -> Result<()> {
    let address = vmm.ecam_address(register);
    vmm.mmio_write(address, &value.to_le_bytes()[..width.bytes()])?;
    Ok(())
}

impl<'a> AhciGuest<'a> {
    /// Probe as a guest kernel would: check the class, program MSI, enable decode and
    /// bus mastering, reset the HBA and start port 0 on freshly mapped structures.
    pub fn probe(vmm: &'a mut Vmm) -> Result<AhciGuest<'a>> {
        let ids = cfg_read(vmm, header::VENDOR_ID, AccessWidth::Dword)?;
        // Firmware's first look goes through the legacy config ports.
        let legacy = vmm.legacy_config_read(header::VENDOR_ID)?;
        ensure!(
            legacy == ids,
            "0xCF8/0xCFC reads {legacy:#x}, ECAM reads {ids:#x}"
        );
        let class = cfg_read(vmm, header::REVISION_ID, AccessWidth::Dword)? >> 8;
        println!(
            "guest: found {:04x}:{:04x} class {class:06x}",
            ids & 0xffff,
            ids >> 16
        );
        ensure!(
            class == 0x01_06_01,
            "class {class:06x} is not an AHCI controller"
        );
        let msi_at = {
            let mut read = |o, w| cfg_read(vmm, o, w).unwrap_or(u32::MAX);
            walk_capabilities(&mut read)?
                .iter()
                .find(|c| c.id == cap::MSI)
                .map(|c| c.offset)
                .context("the controller shows no MSI capability")?
        };
        let control = cfg_read(vmm, msi_at + msi::CONTROL, AccessWidth::Word)? as u16;
        let data_at = msi_at
            + if control & msi::CONTROL_64BIT != 0 {
                cfg_write(vmm, msi_at + msi::ADDRESS_HI, AccessWidth::Dword, 0)?;
                msi::DATA_64
            } else {
                msi::DATA_32
            };
        cfg_write(
            vmm,
            msi_at + msi::ADDRESS_LO,
            AccessWidth::Dword,
            MSI_MESSAGE.address as u32,
        )?;
        cfg_write(vmm, data_at, AccessWidth::Word, MSI_MESSAGE.data)?;
        cfg_write(
            vmm,
            msi_at + msi::CONTROL,
            AccessWidth::Word,
            msi::CONTROL_ENABLE.into(),
        )?;
        let decode = command::MEMORY_SPACE | command::IO_SPACE | command::BUS_MASTER;
        cfg_write(vmm, header::COMMAND, AccessWidth::Word, decode.into())?;
        let abar = u64::from(cfg_read(vmm, header::bar(ahci::ABAR), AccessWidth::Dword)? & !0xf);
        println!("guest: ABAR at {abar:#x}, MSI capability at {msi_at:#x}");

        let structures =
            vmm.dma_map_sg(&[(STRUCTURES_GPA, STRUCTURES_LEN)], DmaAccess::ReadWrite)?;
        ensure!(
            structures.segments().len() == 1,
            "the structures did not map to one bus range: {structures:?}"
        );
        let mut guest = AhciGuest {
            vmm,
            abar,
            msi_at,
            structures,
        };
        guest.start_port()?;
        Ok(guest)
    }

    /// The VMM this guest runs on.
    pub fn vmm(&mut self) -> &mut Vmm {
        self.vmm
    }

    fn read32(&mut self, offset: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.vmm.mmio_read(self.abar + offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write32(&mut self, offset: u64, value: u32) -> Result<()> {
        self.vmm
            .mmio_write(self.abar + offset, &value.to_le_bytes())?;
        Ok(())
    }

    fn wait(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(self)? {
            if Instant::now() >= deadline {
                bail!("guest: timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The bus address of byte `offset` of the structures.
    fn structures_bus(&self, offset: u64) -> u64 {
        self.structures.segments()[0].addr.0 + offset
    }

    fn start_port(&mut self) -> Result<()> {
        self.write32(ahci::GHC, 1)?;
        self.wait("the HBA reset", |g| Ok(g.read32(ahci::GHC)? & 1 == 0))?;
        self.write32(ahci::GHC, ahci::GHC_AE)?;
        let cmd = self.read32(port_reg(0, ahci::PX_CMD))?;
        self.write32(
            port_reg(0, ahci::PX_CMD),
            cmd & !(ahci::CMD_ST | ahci::CMD_FRE),
        )?;
        self.wait("port 0 to stop", |g| {
            Ok(g.read32(port_reg(0, ahci::PX_CMD))? & (ahci::CMD_CR | ahci::CMD_FR) == 0)
        })?;
        let list = self.structures_bus(0);
        let fis = self.structures_bus(FIS_OFFSET);
        self.write32(port_reg(0, ahci::PX_CLB), list as u32)?;
        self.write32(port_reg(0, ahci::PX_CLBU), (list >> 32) as u32)?;
        self.write32(port_reg(0, ahci::PX_FB), fis as u32)?;
        self.write32(port_reg(0, ahci::PX_FBU), (fis >> 32) as u32)?;
        self.write32(port_reg(0, ahci::PX_SERR), u32::MAX)?;
        self.write32(port_reg(0, ahci::PX_IS), u32::MAX)?;
        let causes = ahci::INT_DHRS | ahci::INT_PSS | ahci::INT_ERRORS;
        self.write32(port_reg(0, ahci::PX_IE), causes)?;
        self.write32(ahci::GHC, ahci::GHC_AE | ahci::GHC_IE)?;
        let cmd = self.read32(port_reg(0, ahci::PX_CMD))?;
        self.write32(port_reg(0, ahci::PX_CMD), cmd | ahci::CMD_FRE)?;
        self.write32(
            port_reg(0, ahci::PX_CMD),
            cmd | ahci::CMD_FRE | ahci::CMD_ST,
        )?;
        // Starting FIS receive may bring the drive's first FIS and an interrupt.
        std::thread::sleep(Duration::from_millis(50));
        self.write32(port_reg(0, ahci::PX_IS), u32::MAX)?;
        self.write32(ahci::IS, u32::MAX)?;
        let _ = self.vmm.wait_for_interrupt(Duration::from_millis(1));
        Ok(())
    }

    /// One request as a guest driver makes it: map the buffers, run the command,
    /// unmap. Returns the bus list that was used (dead once this returns).
    pub fn request(
        &mut self,
        ata_command: u8,
        lba: u64,
        sectors: u32,
        buffers: &[(u64, u64)],
        access: DmaAccess,
    ) -> Result<(BusSgList, Vec<Injection>)> {
        let bus = self.vmm.dma_map_sg(buffers, access)?;
        let result = self.run_command(ata_command, lba, sectors, &bus, access);
        self.vmm.dma_unmap_sg(&bus)?;
        Ok((bus, result?))
    }

    /// Run one command whose data goes to or comes from `bus` (whatever those
    /// addresses reach now) and wait for its interrupt.
    pub fn run_command(
        &mut self,
        ata_command: u8,
        lba: u64,
        sectors: u32,
        bus: &BusSgList,
        access: DmaAccess,
    ) -> Result<Vec<Injection>> {
        let mut entries = Vec::new();
        for segment in bus.segments() {
            let len = usize::try_from(segment.len)?;
            entries.extend(prdt(segment.addr.0, len).map_err(anyhow::Error::msg)?);
        }
        ensure!(
            entries.len() <= MAX_PRDT_ENTRIES,
            "{} PRDT entries: more than this guest's table holds",
            entries.len()
        );
        let ram = self.vmm.ram();
        let table = STRUCTURES_GPA + TABLE_OFFSET;
        let fis = h2d_fis(ata_command, lba, sectors, DEVICE_LBA);
        ram.copy_from(table as usize, &fis)?;
        for (i, entry) in entries.iter().enumerate() {
            ram.copy_from(table as usize + PRDT_OFFSET + 16 * i, entry)?;
        }
        let header = CommandHeader {
            fis_dwords: H2D_DWORDS,
            write: access == DmaAccess::DeviceReads,
            prdt_entries: entries.len() as u16,
            table: self.structures_bus(TABLE_OFFSET),
        };
        ram.copy_from(STRUCTURES_GPA as usize, &header.to_bytes())?;

        self.write32(port_reg(0, ahci::PX_IS), u32::MAX)?;
        self.write32(port_reg(0, ahci::PX_CI), 1)?;
        let injected = self.vmm.wait_for_interrupt(Duration::from_secs(10))?;
        let intx = injected.contains(&Injection::Intx);
        self.wait("the command to complete", |g| {
            Ok(g.read32(port_reg(0, ahci::PX_CI))? & 1 == 0)
        })?;
        let is = self.read32(port_reg(0, ahci::PX_IS))?;
        let tfd = self.read32(port_reg(0, ahci::PX_TFD))?;
        self.write32(port_reg(0, ahci::PX_IS), is)?;
        self.write32(ahci::IS, u32::MAX)?;
        if intx {
            self.vmm.end_of_interrupt()?;
        }
        ensure!(
            is & ahci::INT_ERRORS == 0 && tfd & 1 == 0,
            "command {ata_command:#04x} failed: PxIS {is:#x} PxTFD {tfd:#x}"
        );
        Ok(injected)
    }

    /// Stop the port, release the structures' mapping, and turn off MSI and bus
    /// mastering, as a driver does on remove.
    pub fn shutdown(mut self) -> Result<()> {
        let cmd = self.read32(port_reg(0, ahci::PX_CMD))?;
        self.write32(
            port_reg(0, ahci::PX_CMD),
            cmd & !(ahci::CMD_ST | ahci::CMD_FRE),
        )?;
        self.wait("port 0 to stop", |g| {
            Ok(g.read32(port_reg(0, ahci::PX_CMD))? & (ahci::CMD_CR | ahci::CMD_FR) == 0)
        })?;
        self.write32(ahci::GHC, ahci::GHC_AE)?;
        self.vmm.dma_unmap_sg(&self.structures)?;
        cfg_write(self.vmm, self.msi_at + msi::CONTROL, AccessWidth::Word, 0)?;
        cfg_write(self.vmm, header::COMMAND, AccessWidth::Word, 0)?;
        Ok(())
    }
}
