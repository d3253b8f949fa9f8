//! `FakeDevice`: a [`PassthroughDevice`] over a config image and plain memory, for
//! host tests. It behaves as VFIO does where the function relies on it: BAR accesses
//! fail while the device's own decode for that space is off, only one IRQ index is
//! live at a time, and the status error bits are write-1-to-clear.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use std::collections::BTreeMap;

use udriver::vfio::{IrqAction, IrqData, IrqIndex, MmapArea};

use super::device::{DeviceRegion, PassthroughDevice};
use super::error::DeviceError;
use crate::bar::BarIndex;
use crate::config_regs::{command, header, status};

/// What the fake saw on its interrupt interface, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqOp {
    Wire(IrqIndex, usize),
    Disable(IrqIndex),
    UnmaskIntx,
    /// A client's SET_IRQS: index, action, start, count (fds, bools or none).
    Set(IrqIndex, IrqAction, u32, u32),
}

#[derive(Debug)]
pub struct FakeRegion {
    pub size: u64,
    pub io: bool,
    pub mmap_areas: Vec<MmapArea>,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
pub struct FakeDevice {
    pub name: String,
    pub config: Mutex<Vec<u8>>,
    pub regions: Vec<Option<Mutex<FakeRegion>>>,
    pub irq_counts: [u32; 3],
    pub wired: Mutex<Option<(IrqIndex, Vec<OwnedFd>)>>,
    pub irq_log: Mutex<Vec<IrqOp>>,
    /// Config reads and BAR accesses fail while set.
    pub broken: Mutex<bool>,
    /// Eventfds a client wired through `set_irqs` (TRIGGER), by index and vector.
    pub client_fds: Mutex<BTreeMap<(u32, u32), OwnedFd>>,
    /// Resets done.
    pub resets: Mutex<u32>,
    /// What `mmap_fd` hands out (the VFIO device fd's stand-in).
    pub mmap_file: Option<OwnedFd>,
}

fn irq_slot(index: IrqIndex) -> usize {
    match index {
        IrqIndex::Intx => 0,
        IrqIndex::Msi => 1,
        IrqIndex::Msix => 2,
        _ => 3,
    }
}

impl FakeDevice {
    pub fn new(name: &str, config: Vec<u8>) -> Self {
        Self {
            name: name.to_string(),
            config: Mutex::new(config),
            regions: (0..7).map(|_| None).collect(),
            irq_counts: [0; 3],
            wired: Mutex::new(None),
            irq_log: Mutex::new(Vec::new()),
            broken: Mutex::new(false),
            client_fds: Mutex::new(BTreeMap::new()),
            resets: Mutex::new(0),
            mmap_file: None,
        }
    }

    /// Add region `index` with content `byte(offset)`; mmap-able in full unless `io`.
    pub fn with_region(mut self, index: u8, size: u64, io: bool, byte: fn(u64) -> u8) -> Self {
        let mmap_areas = if io {
            Vec::new()
        } else {
            vec![MmapArea { offset: 0, size }]
        };
        self.regions[usize::from(index)] = Some(Mutex::new(FakeRegion {
            size,
            io,
            mmap_areas,
            bytes: (0..size).map(byte).collect(),
        }));
        self
    }

    pub fn config_u16(&self, offset: usize) -> u16 {
        let c = self.config.lock().unwrap();
        u16::from_le_bytes([c[offset], c[offset + 1]])
    }

    pub fn set_config(&self, offset: usize, bytes: &[u8]) {
        self.config.lock().unwrap()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    pub fn region_bytes(&self, index: u8, offset: usize, len: usize) -> Vec<u8> {
        let r = self.regions[usize::from(index)]
            .as_ref()
            .unwrap()
            .lock()
            .unwrap();
        r.bytes[offset..offset + len].to_vec()
    }

    /// The device raises `vector` of the live index (as VFIO signals its eventfd).
    pub fn fire(&self, index: IrqIndex, vector: usize) -> bool {
        if let Some(fd) = self
            .client_fds
            .lock()
            .unwrap()
            .get(&(index.raw(), vector as u32))
        {
            nix::unistd::write(fd, &1u64.to_ne_bytes()).unwrap();
            return true;
        }
        let wired = self.wired.lock().unwrap();
        match wired.as_ref() {
            Some((live, fds)) if *live == index && vector < fds.len() => {
                nix::unistd::write(&fds[vector], &1u64.to_ne_bytes()).unwrap();
                true
            }
            _ => false,
        }
    }

    pub fn irq_ops(&self) -> Vec<IrqOp> {
        std::mem::take(&mut *self.irq_log.lock().unwrap())
    }

    fn check(&self, what: &str) -> Result<(), DeviceError> {
        if *self.broken.lock().unwrap() {
            return Err(format!("{}: {what}: device gone", self.name).into());
        }
        Ok(())
    }

    fn region_mut(
        &self,
        index: BarIndex,
    ) -> Result<std::sync::MutexGuard<'_, FakeRegion>, DeviceError> {
        let region = self
            .regions
            .get(usize::from(index.get()))
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("{index} not implemented"))?
            .lock()
            .unwrap();
        let cmd = self.config_u16(usize::from(header::COMMAND));
        let decode = if region.io {
            command::IO_SPACE
        } else {
            command::MEMORY_SPACE
        };
        if !index.is_rom() && cmd & decode == 0 {
            return Err(format!("{}: {index}: decode disabled (EIO)", self.name).into());
        }
        Ok(region)
    }
}

impl PassthroughDevice for FakeDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn config_len(&self) -> usize {
        self.config.lock().unwrap().len()
    }

    fn read_config(&self, offset: u16, data: &mut [u8]) -> Result<(), DeviceError> {
        self.check("config read")?;
        let c = self.config.lock().unwrap();
        let at = usize::from(offset);
        data.copy_from_slice(&c[at..at + data.len()]);
        Ok(())
    }

    fn write_config(&self, offset: u16, data: &[u8]) -> Result<(), DeviceError> {
        self.check("config write")?;
        let mut c = self.config.lock().unwrap();
        let w1c = status::ERROR_BITS.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            let status_byte = at
                .checked_sub(usize::from(header::STATUS))
                .filter(|s| *s < 2);
            c[at] = match status_byte {
                Some(s) => c[at] & !(b & w1c[s]),
                None => *b,
            };
        }
        Ok(())
    }

    fn region(&self, index: BarIndex) -> Option<DeviceRegion> {
        let r = self
            .regions
            .get(usize::from(index.get()))?
            .as_ref()?
            .lock()
            .unwrap();
        Some(DeviceRegion {
            size: r.size,
            fd_offset: u64::from(index.get()) << 40,
            mmap_areas: r.mmap_areas.clone(),
        })
    }

    fn read_region(
        &self,
        index: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        self.check("region read")?;
        let r = self.region_mut(index)?;
        let at = offset as usize;
        data.copy_from_slice(&r.bytes[at..at + data.len()]);
        Ok(())
    }

    fn write_region(&self, index: BarIndex, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check("region write")?;
        let mut r = self.region_mut(index)?;
        let at = offset as usize;
        r.bytes[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn irq_count(&self, index: IrqIndex) -> u32 {
        match index {
            // As vfio-pci: one ERR and one REQ notifier.
            IrqIndex::Err | IrqIndex::Req => 1,
            _ => self.irq_counts.get(irq_slot(index)).copied().unwrap_or(0),
        }
    }

    fn wire_irqs(&self, index: IrqIndex, eventfds: &[BorrowedFd<'_>]) -> Result<(), DeviceError> {
        let mut wired = self.wired.lock().unwrap();
        if wired.as_ref().is_some_and(|(live, _)| *live != index) {
            return Err(format!("{}: another index is live (EINVAL)", self.name).into());
        }
        if eventfds.len() > self.irq_count(index) as usize {
            return Err(format!("{}: {index}: too many vectors (EINVAL)", self.name).into());
        }
        let fds = eventfds
            .iter()
            .map(|fd| fd.as_fd().try_clone_to_owned())
            .collect::<std::io::Result<Vec<_>>>()?;
        *wired = Some((index, fds));
        self.irq_log
            .lock()
            .unwrap()
            .push(IrqOp::Wire(index, eventfds.len()));
        Ok(())
    }

    fn disable_irqs(&self, index: IrqIndex) -> Result<(), DeviceError> {
        let mut wired = self.wired.lock().unwrap();
        if wired.as_ref().is_some_and(|(live, _)| *live == index) {
            *wired = None;
        }
        self.irq_log.lock().unwrap().push(IrqOp::Disable(index));
        Ok(())
    }

    fn unmask_intx(&self) -> Result<(), DeviceError> {
        self.irq_log.lock().unwrap().push(IrqOp::UnmaskIntx);
        Ok(())
    }

    fn set_irqs(
        &self,
        index: IrqIndex,
        action: IrqAction,
        start: u32,
        data: IrqData<'_>,
    ) -> Result<(), DeviceError> {
        let offered = self.irq_count(index);
        let count = match data {
            IrqData::None { count } => count,
            IrqData::Bool(b) => b.len() as u32,
            IrqData::Eventfds(f) => f.len() as u32,
        };
        // As the kernel: a range past the vectors offered is EINVAL.
        if start.checked_add(count).is_none_or(|end| end > offered) {
            return Err(format!(
                "{}: {index}: vectors {start}+{count} of {offered} (EINVAL)",
                self.name
            )
            .into());
        }
        let mut client = self.client_fds.lock().unwrap();
        match (action, data) {
            (IrqAction::Trigger, IrqData::None { count: 0 }) => {
                client.retain(|(i, _), _| *i != index.raw());
            }
            (IrqAction::Trigger, IrqData::Eventfds(fds)) => {
                for (i, fd) in fds.iter().enumerate() {
                    let key = (index.raw(), start + i as u32);
                    match fd {
                        Some(fd) => {
                            client.insert(key, fd.try_clone_to_owned()?);
                        }
                        None => {
                            client.remove(&key);
                        }
                    }
                }
            }
            _ => {}
        }
        self.irq_log
            .lock()
            .unwrap()
            .push(IrqOp::Set(index, action, start, count));
        Ok(())
    }

    fn can_reset(&self) -> bool {
        true
    }

    fn reset(&self) -> Result<(), DeviceError> {
        self.check("reset")?;
        *self.resets.lock().unwrap() += 1;
        Ok(())
    }

    fn mmap_fd(&self) -> Option<BorrowedFd<'_>> {
        self.mmap_file.as_ref().map(AsFd::as_fd)
    }
}
