//! `PassthroughFunction`: a real device as a function on the virtual bus.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::ops::Range;

use udriver::vfio::{EventFd, IrqAction, IrqData, IrqIndex, MmapArea};

use super::capability_filter::{hide_capabilities, HiddenCapability};
use super::config_overlay::ConfigOverlay;
use super::device::{DeviceRegion, PassthroughDevice};
use super::error::PassthroughError;
use super::express::integrate_into_root_bus;
use super::irq_wiring::{IrqWiring, LiveIrqs};
use super::legacy_ide::{self, DerivedIntxChannel, DerivedIntxEvent};
use super::vfio_device::VfioPassthroughDevice;
use crate::bar::{
    AddressSpace, BarDefinition, BarIndex, BarKind, BarLayout, MIN_IO_BAR_SIZE, MIN_MEMORY_BAR_SIZE,
};
use crate::bus::function::{check_bar_access, FunctionError, PciFunction};
use crate::config::access_width::AccessWidth;
use crate::config::regs::{
    cap, command, header, header_type, msi, msix, rom, status, CONFIG_SPACE_SIZE,
    EXTENDED_CONFIG_SPACE_SIZE,
};
use crate::config::space::{ConfigSpace, ConfigSpaceError, RegisterMask, COMMAND_WRITABLE};
use crate::interrupt::message::MessageInterrupts;
use crate::interrupt::msi::MsiCapability;
use crate::interrupt::msix::MsixCapability;
use crate::interrupt::routing::{InterruptKind, MsiMessage, MsiRouting};

/// Most errors kept for [`PassthroughFunction::take_errors`]; older ones are dropped.
const MAX_KEPT_ERRORS: usize = 64;

/// Command bits the guest changes on the real device; the rest are virtual.
const FORWARDED_COMMAND_BITS: u16 = command::BUS_MASTER | command::INTX_DISABLE;

/// Page granularity of the mappings a VMM makes for a BAR's direct areas.
const PAGE: u64 = dma::PAGE_SIZE;

/// A live MSI or MSI-X vector: the guest's programming and the eventfd VFIO signals.
#[derive(Debug)]
pub struct InterruptVector<'a> {
    /// The vector's address, data and mask state as the guest programmed them.
    pub routing: MsiRouting,
    /// Signalled by VFIO when the device raises the vector.
    pub eventfd: &'a EventFd,
}

/// A real device on the virtual bus.
///
/// Config space is the device's, read through VFIO, overlaid by the registers the
/// function keeps virtually (see [`ConfigOverlay`]): the whole type 0 header except
/// bus mastering, INTx disable and the status bits; BARs sized from the VFIO regions
/// and placed wherever the guest puts them; the ROM BAR; the MSI and MSI-X
/// capabilities; the headers of the capabilities that stay linked; and the bytes of
/// those that are hidden. The device's own decode enables stay on: the guest's
/// decode bits only decide what the virtual bus routes here.
///
/// BAR accesses arrive as (BAR, offset, data): MSI-X table and PBA accesses are
/// served by the virtual [`MsixCapability`], everything else goes to the real region
/// (mmap'd where VFIO allows it, pread/pwrite elsewhere). A BAR whose region is
/// smaller than the smallest BAR the register format can describe is padded: the
/// padding reads all-ones and ignores writes.
///
/// Interrupts: the guest's MSI/MSI-X programming decides which VFIO index is live and
/// how many vectors it has; INTx is live while neither is enabled. VFIO cannot mask MSI/MSI-X vectors, so masking is virtual: a masked vector that
/// fires becomes pending in the capability, and is delivered when the guest unmasks
/// it. A consumer either calls [`PassthroughFunction::vector_fired`] when a vector's
/// eventfd is readable, or hands the eventfd to an irqfd while the vector's
/// [`MsiRouting`] is deliverable.
#[derive(Debug)]
pub struct PassthroughFunction<D: PassthroughDevice = VfioPassthroughDevice> {
    device: D,
    space: ConfigSpace,
    overlay: ConfigOverlay,
    /// BAR0..=BAR5 and the ROM as the device implements them.
    regions: Vec<Option<DeviceRegion>>,
    interrupts: MessageInterrupts,
    intx: bool,
    irqs: IrqWiring,
    hidden: Vec<HiddenCapability>,
    errors: VecDeque<PassthroughError>,
    /// `Some` once a VMM wires the device's interrupts itself (vfio-user): bit `i` set
    /// while it has eventfds on index `i`. The guest's MSI/MSI-X programming then no
    /// longer rewires anything.
    client_irqs: Option<u8>,
    /// A legacy-mode IDE controller shown in native mode (see [`legacy_ide`]): its
    /// control blocks shifted, its INTx derived.
    legacy_ide: bool,
}

/// A served function's state, carried to a successor process (`udrv serve`'s
/// upgrade) by [`PassthroughFunction::handover_state`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionState {
    /// The virtual config space, a dword at a time.
    pub config: Vec<u32>,
    /// Bit `i` set: the client has eventfds on IRQ index `i`.
    pub client_irqs: u8,
}

fn irq_index(kind: InterruptKind) -> IrqIndex {
    match kind {
        InterruptKind::Msi => IrqIndex::Msi,
        InterruptKind::MsiX => IrqIndex::Msix,
    }
}

fn read_image<D: PassthroughDevice>(device: &D) -> Result<Vec<u8>, PassthroughError> {
    let len = device.config_len();
    let len = if len >= EXTENDED_CONFIG_SPACE_SIZE {
        EXTENDED_CONFIG_SPACE_SIZE
    } else if len >= CONFIG_SPACE_SIZE {
        CONFIG_SPACE_SIZE
    } else {
        return Err(PassthroughError::ConfigTooSmall {
            device: device.name().to_string(),
            len,
        });
    };
    let mut image = vec![0u8; len];
    for (i, dword) in image.chunks_mut(4).enumerate() {
        let offset = (i * 4) as u16;
        device.read_config(offset, dword).map_err(|e| {
            PassthroughError::device(device.name(), format!("reading config at {offset:#x}"), e)
        })?;
    }
    Ok(image)
}

/// The BAR the guest sees for a region of `size` bytes: at least the smallest BAR
/// the register can describe, and a power of two.
fn virtual_size(kind: BarKind, size: u64) -> u64 {
    let min = match kind {
        BarKind::Io => MIN_IO_BAR_SIZE,
        _ => MIN_MEMORY_BAR_SIZE,
    };
    size.max(min).checked_next_power_of_two().unwrap_or(0)
}

/// `area` minus the page-rounded `holes`, in order.
fn subtract(area: MmapArea, holes: &[Range<u64>]) -> Vec<MmapArea> {
    let whole = area.offset..area.offset + area.size;
    let mut pieces: Vec<Range<u64>> = std::iter::once(whole).collect();
    for hole in holes {
        let hole = (hole.start / PAGE * PAGE)..hole.end.div_ceil(PAGE) * PAGE;
        pieces = pieces
            .into_iter()
            .flat_map(|p| {
                [p.start..p.end.min(hole.start), p.start.max(hole.end)..p.end]
                    .into_iter()
                    .filter(|r| r.start < r.end)
            })
            .collect();
    }
    pieces
        .into_iter()
        .map(|r| MmapArea {
            offset: r.start,
            size: r.end - r.start,
        })
        .collect()
}

impl<D: PassthroughDevice> PassthroughFunction<D> {
    /// Build the function over `device`: read its config, virtualise it, hide what
    /// must not reach a guest, keep the device's decode enabled and its bus mastering
    /// off until the guest turns it on, and wire INTx if the device has it.
    pub fn new(device: D) -> Result<Self, PassthroughError> {
        let mut function = Self::model(device)?;
        function.prepare_device()?;
        let want = function.wanted_irqs().map(|(live, _)| live);
        function.irqs.apply(&function.device, want)?;
        Ok(function)
    }

    /// The function a predecessor process served over `device` (see
    /// [`handover_state`](Self::handover_state)): the virtual config as its guest left
    /// it, the interrupts its client wired. Nothing is written to the device.
    pub fn resume(device: D, state: &FunctionState) -> Result<Self, PassthroughError> {
        let mut function = Self::model(device)?;
        let refuse = |reason: String| PassthroughError::Handover {
            device: function.device.name().to_string(),
            reason,
        };
        if state.config.len() * 4 != function.space.len() {
            return Err(refuse(format!(
                "the carried config space is {} bytes, the device's {}",
                state.config.len() * 4,
                function.space.len()
            )));
        }
        for (i, value) in state.config.iter().enumerate() {
            let offset = (i * 4) as u16;
            function
                .space
                .set(offset, AccessWidth::Dword, *value)
                .map_err(|e| refuse(format!("restoring config at {offset:#x}: {e}")))?;
        }
        function.client_irqs = Some(state.client_irqs);
        Ok(function)
    }

    /// What a successor needs to carry on serving this function with
    /// [`resume`](Self::resume). Only a function whose interrupts a VMM wires itself
    /// (vfio-user) can be carried: the vectors this process would forward are not.
    pub fn handover_state(&self) -> Result<FunctionState, PassthroughError> {
        let Some(client_irqs) = self.client_irqs else {
            return Err(PassthroughError::Handover {
                device: self.device.name().to_string(),
                reason: "its interrupts are forwarded by this process, and that wiring cannot be carried".into(),
            });
        };
        let config = (0..self.space.len() / 4)
            .map(|i| self.space.read((i * 4) as u16, AccessWidth::Dword))
            .collect();
        Ok(FunctionState {
            config,
            client_irqs,
        })
    }

    /// The virtual model of `device`: its config read and virtualised, nothing
    /// written to it.
    fn model(device: D) -> Result<Self, PassthroughError> {
        let name = device.name().to_string();
        let image = read_image(&device)?;
        let kind = image[usize::from(header::HEADER_TYPE)] & header_type::LAYOUT_MASK;
        if kind != header_type::NORMAL {
            return Err(PassthroughError::NotAnEndpoint {
                device: name,
                header_type: image[usize::from(header::HEADER_TYPE)],
            });
        }
        let config = |what: &'static str| {
            let device = name.clone();
            move |source: ConfigSpaceError| PassthroughError::Config {
                device,
                what,
                source,
            }
        };
        let mut space = ConfigSpace::from_bytes(&image).map_err(config("loading config"))?;
        let mut overlay = ConfigOverlay::new(space.len());
        virtualise_header(&mut space, &mut overlay).map_err(config("virtualising the header"))?;
        let regions = define_bars(&device, &mut space, &image)?;
        let legacy_ide =
            legacy_ide::is_legacy_ide(&image, regions[..4].iter().all(Option::is_some));
        if legacy_ide {
            let prog_if = legacy_ide::native_prog_if(image[usize::from(header::CLASS_PROG_IF)]);
            space
                .set(header::CLASS_PROG_IF, AccessWidth::Byte, prog_if.into())
                .and_then(|()| space.set(header::INTERRUPT_PIN, AccessWidth::Byte, 1))
                .map_err(config("presenting the IDE controller in native mode"))?;
        }

        // A mechanism VFIO cannot deliver is not offered to the guest.
        let mut unusable = Vec::new();
        for (id, index) in [(cap::MSI, IrqIndex::Msi), (cap::MSIX, IrqIndex::Msix)] {
            if let Some(offset) = space.find_capability(id) {
                if device.irq_count(index) == 0 {
                    unusable.push(offset);
                }
            }
        }
        let hidden = hide_capabilities(&mut space, &mut overlay, &unusable)
            .map_err(config("walking the capability lists"))?;
        if let Some(offset) = space.find_capability(cap::PCI_EXPRESS) {
            integrate_into_root_bus(&mut space, &mut overlay, offset)
                .map_err(config("adapting the PCI Express capability"))?;
        }
        let msi = match space.find_capability(cap::MSI) {
            Some(offset) => {
                reset_msi(&mut space, offset).map_err(config("resetting MSI"))?;
                let m =
                    MsiCapability::attach(&mut space, offset).map_err(config("taking over MSI"))?;
                overlay.virtualise(offset, m.len());
                Some(m)
            }
            None => None,
        };
        let msix = match space.find_capability(cap::MSIX) {
            Some(offset) => {
                let control = space.u16_at(offset + msix::CONTROL)
                    & !(msix::CONTROL_ENABLE | msix::CONTROL_FUNCTION_MASK);
                space
                    .set(offset + msix::CONTROL, AccessWidth::Word, control.into())
                    .map_err(config("resetting MSI-X"))?;
                let m = MsixCapability::attach(&mut space, offset)
                    .map_err(config("taking over MSI-X"))?;
                overlay.virtualise(offset, msix::SIZE);
                Some(m)
            }
            None => None,
        };
        let intx = space.u8_at(header::INTERRUPT_PIN) != 0 && device.irq_count(IrqIndex::Intx) > 0;
        if !intx && !legacy_ide {
            space
                .set(header::INTERRUPT_PIN, AccessWidth::Byte, 0)
                .map_err(config("clearing the interrupt pin"))?;
        }
        Ok(Self {
            device,
            space,
            overlay,
            regions,
            interrupts: MessageInterrupts::new(msi, msix),
            intx,
            irqs: IrqWiring::new(),
            hidden,
            errors: VecDeque::new(),
            client_irqs: None,
            legacy_ide,
        })
    }

    /// Real decode on for every space the device has BARs in, bus mastering off.
    fn prepare_device(&mut self) -> Result<(), PassthroughError> {
        let mut decode = 0u16;
        for (_, definition) in self.space.bar_layout().iter() {
            decode |= match AddressSpace::from(definition.kind) {
                AddressSpace::Io => command::IO_SPACE,
                AddressSpace::Memory => command::MEMORY_SPACE,
            };
        }
        let name = self.device.name().to_string();
        let mut bytes = [0u8; 2];
        self.device
            .read_config(header::COMMAND, &mut bytes)
            .map_err(|e| PassthroughError::device(&name, "reading the command register", e))?;
        let old = u16::from_le_bytes(bytes);
        let new = (old | decode) & !command::BUS_MASTER;
        if new != old {
            self.device
                .write_config(header::COMMAND, &new.to_le_bytes())
                .map_err(|e| {
                    PassthroughError::device(&name, "enabling decode in the command register", e)
                })?;
        }
        Ok(())
    }

    /// The device behind the function.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Stop the device reaching memory or signalling, for a consumer whose guest went
    /// away: bus mastering off on the real device, every VFIO vector disabled. The
    /// virtual state stays as the guest left it; build a new function over
    /// [`into_device`](Self::into_device) to present a freshly reset one. Both steps
    /// are tried; the first error is returned.
    pub fn quiesce(&mut self) -> Result<(), PassthroughError> {
        let name = self.device.name().to_string();
        let mut bytes = [0u8; 2];
        let bus_master = self
            .device
            .read_config(header::COMMAND, &mut bytes)
            .map_err(|e| PassthroughError::device(&name, "reading the command register", e))
            .and_then(|()| {
                let old = u16::from_le_bytes(bytes);
                let new = old & !command::BUS_MASTER;
                if new == old {
                    return Ok(());
                }
                self.device
                    .write_config(header::COMMAND, &new.to_le_bytes())
                    .map_err(|e| PassthroughError::device(&name, "turning bus mastering off", e))
            });
        let vectors = self.irqs.apply(&self.device, None);
        let client = self.disable_client_irqs();
        bus_master.and(vectors).and(client)
    }

    /// Let a VMM wire the device's interrupts to eventfds of its own, as VFIO lets
    /// QEMU's vfio-pci do: the function's own vectors are disabled, and from now on
    /// the guest's MSI/MSI-X programming (which the VMM emulates and turns into
    /// [`set_client_irqs`](Self::set_client_irqs) calls) changes no wiring.
    pub fn hand_interrupts_to_client(&mut self) -> Result<(), PassthroughError> {
        self.irqs.apply(&self.device, None)?;
        self.client_irqs.get_or_insert(0);
        Ok(())
    }

    /// A VMM's `VFIO_DEVICE_SET_IRQS`, passed to the device as it is: its eventfds are
    /// signalled by the kernel with no hop through this process. Only after
    /// [`hand_interrupts_to_client`](Self::hand_interrupts_to_client).
    pub fn set_client_irqs(
        &mut self,
        index: IrqIndex,
        action: IrqAction,
        start: u32,
        data: IrqData<'_>,
    ) -> Result<(), PassthroughError> {
        let Some(wired) = self.client_irqs else {
            return Err(PassthroughError::device(
                self.device.name(),
                format!("wiring {index} for a VMM"),
                "the function wires its own vectors; hand them to the VMM first".into(),
            ));
        };
        self.device
            .set_irqs(index, action, start, data)
            .map_err(|e| {
                PassthroughError::device(
                    self.device.name(),
                    format!("{action:?} on {index} vectors from {start}"),
                    e,
                )
            })?;
        let bit = 1u8 << index.raw();
        let wired = match (action, data) {
            (IrqAction::Trigger, IrqData::None { count: 0 }) => wired & !bit,
            (IrqAction::Trigger, IrqData::Eventfds(fds)) if fds.iter().any(Option::is_some) => {
                wired | bit
            }
            _ => wired,
        };
        self.client_irqs = Some(wired);
        Ok(())
    }

    /// Reset the device for a VMM that wires its own interrupts (vfio-user
    /// DEVICE_RESET): its INTx/MSI/MSI-X vectors and bus mastering off, the device
    /// reset, the virtual config back to its state after [`new`](Self::new). The
    /// VMM's ERR and REQ eventfds stay wired, as a kernel VFIO reset leaves them: QEMU
    /// registers them once and resets the device afterwards.
    pub fn reset_for_client(mut self) -> Result<Self, PassthroughError> {
        let wired = self.client_irqs.unwrap_or(0);
        let kept = (1u8 << IrqIndex::Err.raw()) | (1u8 << IrqIndex::Req.raw());
        self.client_irqs = Some(wired & !kept);
        self.quiesce()?;
        self.device
            .reset()
            .map_err(|e| PassthroughError::device(self.device.name(), "resetting", e))?;
        let mut fresh = Self::new(self.device)?;
        fresh.hand_interrupts_to_client()?;
        fresh.client_irqs = Some(wired & kept);
        Ok(fresh)
    }

    /// Indexes a VMM has wired eventfds on now.
    pub fn client_irq_indexes(&self) -> Vec<IrqIndex> {
        let wired = self.client_irqs.unwrap_or(0);
        IrqIndex::ALL
            .into_iter()
            .filter(|i| wired & (1 << i.raw()) != 0)
            .collect()
    }

    /// Disable every index a VMM wired; all are tried, the first error returned.
    fn disable_client_irqs(&mut self) -> Result<(), PassthroughError> {
        let mut result = Ok(());
        for index in self.client_irq_indexes() {
            let done = self
                .device
                .set_irqs(index, IrqAction::Trigger, 0, IrqData::None { count: 0 })
                .map_err(|e| {
                    PassthroughError::device(self.device.name(), format!("disabling {index}"), e)
                });
            if done.is_ok() {
                self.client_irqs = self.client_irqs.map(|w| w & !(1 << index.raw()));
            }
            result = result.and(done);
        }
        result
    }

    /// The device, for building a fresh function over it or giving it back. Vectors
    /// wired now stay wired: [`quiesce`](Self::quiesce) first.
    pub fn into_device(self) -> D {
        self.device
    }

    /// The virtual config model (virtual bits only; [`PciFunction::config_read`] gives
    /// the guest's view).
    pub fn config_space(&self) -> &ConfigSpace {
        &self.space
    }

    /// Capabilities unlinked from the guest's view.
    pub fn hidden_capabilities(&self) -> &[HiddenCapability] {
        &self.hidden
    }

    /// The VFIO interrupt index live now and its vector count.
    pub fn live_irqs(&self) -> Option<LiveIrqs> {
        self.irqs.live()
    }

    /// Parts of `bar` a VMM may map straight into its guest at the BAR's guest address
    /// plus the area's offset (mmap the device fd at the region's
    /// [`fd_offset`](DeviceRegion::fd_offset) plus the area's offset): the mmap-able
    /// areas minus the pages holding the MSI-X table and PBA, which stay trapped.
    pub fn direct_areas(&self, bar: BarIndex) -> Vec<MmapArea> {
        let Some(region) = self.region(bar) else {
            return Vec::new();
        };
        let holes = self.interrupts.trapped_ranges(bar);
        region
            .mmap_areas
            .iter()
            .flat_map(|a| subtract(*a, &holes))
            .collect()
    }

    /// The region behind `bar`, as the device reports it.
    pub fn region(&self, bar: BarIndex) -> Option<&DeviceRegion> {
        self.regions.get(usize::from(bar.get()))?.as_ref()
    }

    /// Every live MSI/MSI-X vector with its eventfd and the guest's programming.
    pub fn vectors(&self) -> Vec<InterruptVector<'_>> {
        let Some(live) = self.irqs.live() else {
            return Vec::new();
        };
        let states = match live.index {
            IrqIndex::Msi => self.interrupts.current(&self.space, InterruptKind::Msi),
            IrqIndex::Msix => self.interrupts.current(&self.space, InterruptKind::MsiX),
            _ => Vec::new(),
        };
        states
            .into_iter()
            .take(live.vectors)
            .filter_map(|routing| {
                let eventfd = self.irqs.eventfd(live.index, routing.vector.into())?;
                Some(InterruptVector { routing, eventfd })
            })
            .collect()
    }

    /// A vector's eventfd became readable: take its count and return the message to
    /// deliver now, or `None` if nothing fired, the vector is not enabled, or it is
    /// masked (it is then pending, and comes out of [`take_messages`](Self::take_messages)
    /// when the guest unmasks it).
    pub fn vector_fired(&mut self, kind: InterruptKind, vector: u16) -> Option<MsiMessage> {
        let fd = self.irqs.eventfd(irq_index(kind), vector.into())?;
        match fd.read() {
            Ok(Some(_)) => self.signal(kind, vector),
            Ok(None) => None,
            Err(e) => {
                let op = format!("reading the eventfd of {kind} vector {vector}");
                self.record(PassthroughError::device(self.device.name(), op, e.into()));
                None
            }
        }
    }

    fn signal(&mut self, kind: InterruptKind, vector: u16) -> Option<MsiMessage> {
        self.interrupts.signal(&mut self.space, kind, vector)
    }

    /// Every message to deliver now: vectors whose eventfds fired since the last call
    /// (masked ones become pending instead) and pending vectors the guest unmasked.
    /// For consumers that poll rather than watch each eventfd.
    pub fn take_messages(&mut self) -> Vec<MsiMessage> {
        let mut messages = self.interrupts.take_unmasked();
        let live: Vec<(InterruptKind, u16)> = self
            .vectors()
            .iter()
            .map(|v| (v.routing.kind, v.routing.vector))
            .collect();
        for (kind, vector) in live {
            messages.extend(self.vector_fired(kind, vector));
        }
        messages
    }

    /// The INTx eventfd, while INTx is live (no MSI/MSI-X enabled).
    pub fn intx_eventfd(&self) -> Option<&EventFd> {
        self.irqs.eventfd(IrqIndex::Intx, 0)
    }

    /// Take the INTx eventfd's count: true if the line was asserted since the last
    /// call. The kernel keeps it masked until [`end_of_interrupt`](Self::end_of_interrupt).
    pub fn intx_fired(&mut self) -> bool {
        let Some(fd) = self.intx_eventfd() else {
            return false;
        };
        match fd.read() {
            Ok(n) => n.is_some(),
            Err(e) => {
                let op = "reading the INTx eventfd";
                self.record(PassthroughError::device(self.device.name(), op, e.into()));
                false
            }
        }
    }

    /// The guest serviced INTx (its EOI): let the line fire again.
    pub fn end_of_interrupt(&mut self) -> Result<(), PassthroughError> {
        if self.intx_eventfd().is_none() {
            return Ok(());
        }
        self.device
            .unmask_intx()
            .map_err(|e| PassthroughError::device(self.device.name(), "unmasking INTx", e))
    }

    /// Errors met while serving guest accesses (which themselves never fail: a failed
    /// device read reads all-ones, a failed write is dropped), oldest first.
    pub fn take_errors(&mut self) -> Vec<PassthroughError> {
        self.errors.drain(..).collect()
    }

    fn record(&mut self, error: PassthroughError) {
        tracing::warn!(error = %error, "passthrough function");
        if self.errors.len() == MAX_KEPT_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(error);
    }

    /// What the guest's programming asks to be live, and how many vectors it wanted
    /// (more than VFIO offers, if the second value is larger).
    fn wanted_irqs(&self) -> Option<(LiveIrqs, usize)> {
        let (index, wanted) = match self.interrupts.enabled(&self.space) {
            Some((kind, vectors)) => (irq_index(kind), usize::from(vectors)),
            None if self.intx => (IrqIndex::Intx, 1),
            None => return None,
        };
        let vectors = wanted.min(self.device.irq_count(index) as usize);
        Some((LiveIrqs { index, vectors }, wanted))
    }

    fn rewire(&mut self) {
        if self.client_irqs.is_some() {
            return;
        }
        let want = self.wanted_irqs();
        let live = want.map(|(live, _)| live);
        if live.filter(|l| l.vectors > 0) == self.irqs.live() {
            return;
        }
        if let Some((l, wanted)) = want.filter(|(l, wanted)| l.vectors < *wanted) {
            let error = PassthroughError::VectorsUnavailable {
                device: self.device.name().to_string(),
                kind: if l.index == IrqIndex::Msix {
                    "MSI-X"
                } else {
                    "MSI"
                },
                wanted: wanted as u32,
                offered: l.vectors as u32,
            };
            self.record(error);
        }
        if let Err(e) = self.irqs.apply(&self.device, live) {
            self.record(e);
        }
    }

    fn read_device_config(&self, offset: u16, width: AccessWidth) -> Result<u32, PassthroughError> {
        let mut bytes = [0u8; 4];
        self.device
            .read_config(offset, &mut bytes[..width.bytes()])
            .map_err(|e| {
                PassthroughError::device(
                    self.device.name(),
                    format!("config {width} read at {offset:#x}"),
                    e,
                )
            })?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn write_device_config(
        &self,
        offset: u16,
        width: AccessWidth,
        value: u32,
    ) -> Result<(), PassthroughError> {
        self.device
            .write_config(offset, &value.to_le_bytes()[..width.bytes()])
            .map_err(|e| {
                PassthroughError::device(
                    self.device.name(),
                    format!("config {width} write of {value:#x} at {offset:#x}"),
                    e,
                )
            })
    }

    /// The part of an access of `len` bytes at `offset` that reaches the real
    /// region: its range in the access's data and the region offset it starts at.
    /// The real bytes sit at the start of the BAR, or at the native control register
    /// for a legacy IDE controller's control blocks; the rest is padding.
    fn real_part(&self, bar: BarIndex, offset: u64, len: usize) -> Option<(Range<usize>, u64)> {
        let size = self.region(bar).map_or(0, |r| r.size);
        let at = if self.legacy_ide {
            legacy_ide::real_bytes_at(bar)
        } else {
            0
        };
        let start = offset.max(at);
        let end = offset
            .saturating_add(len as u64)
            .min(at.saturating_add(size));
        if start >= end {
            return None;
        }
        let first = (start - offset) as usize;
        Some((first..first + (end - start) as usize, start - at))
    }

    /// Whether the function's INTx is derived from the device's state rather than
    /// delivered by VFIO (a legacy-mode IDE controller shown in native mode): a
    /// consumer offers the guest one INTx and raises it while
    /// [`derived_intx_state`](Self::derived_intx_state) says so.
    pub fn derives_intx(&self) -> bool {
        self.legacy_ide
    }

    /// What a BAR access (a write of `written`, or a read of `len` bytes) means for
    /// the derived INTx; always `None` for a function whose INTx is not derived.
    pub fn derived_intx_event(
        &self,
        bar: BarIndex,
        offset: u64,
        len: usize,
        written: Option<&[u8]>,
    ) -> Option<DerivedIntxEvent> {
        self.legacy_ide
            .then(|| legacy_ide::derived_intx_event(bar, offset, len, written))
            .flatten()
    }

    /// Per channel, whether the device asks for an interrupt now (the interrupt bit of
    /// its bus-master status) and whether a command is under way (its alternate
    /// status, read without acknowledging anything). All clear for a function whose
    /// INTx is not derived; a failed read counts as clear and is kept for
    /// [`take_errors`](Self::take_errors).
    pub fn derived_intx_state(&mut self) -> [DerivedIntxChannel; 2] {
        let mut channels = [DerivedIntxChannel::default(); 2];
        if !self.legacy_ide {
            return channels;
        }
        let bus_master = BarIndex::new(legacy_ide::BUS_MASTER_BAR).expect("BAR4 is a BAR index");
        for (channel, state) in channels.iter_mut().enumerate() {
            let control = BarIndex::new(1 + 2 * channel as u8).expect("BAR1/BAR3 are BAR indices");
            let bm = self.read_device_byte(bus_master, legacy_ide::bm_status_offset(channel));
            state.interrupt = bm.is_some_and(|b| b & legacy_ide::BM_STATUS_INTERRUPT != 0);
            state.busy = self
                .read_device_byte(control, 0)
                .is_some_and(legacy_ide::status_busy);
        }
        channels
    }

    /// A byte of a real region, `None` (the error kept) if the device has no such
    /// region or the read failed.
    fn read_device_byte(&mut self, bar: BarIndex, offset: u64) -> Option<u8> {
        self.region(bar)?;
        let mut byte = [0u8];
        match self.device.read_region(bar, offset, &mut byte) {
            Ok(()) => Some(byte[0]),
            Err(e) => {
                let op = format!("reading byte {offset:#x} of {bar}");
                self.record(PassthroughError::device(self.device.name(), op, e));
                None
            }
        }
    }
}

fn io_error(
    bar: BarIndex,
    operation: &'static str,
    offset: u64,
    len: usize,
    e: super::error::DeviceError,
) -> FunctionError {
    FunctionError::Io {
        bar,
        operation,
        offset,
        len,
        source: io::Error::other(e),
    }
}

impl<D: PassthroughDevice + 'static> PciFunction for PassthroughFunction<D> {
    fn config_read(&mut self, offset: u16, width: AccessWidth) -> u32 {
        if self.space.check_access(offset, width).is_err() {
            return width.mask();
        }
        let virtual_mask = self.overlay.mask(offset, width) & width.mask();
        let virtual_value = self.space.read(offset, width);
        if virtual_mask == width.mask() {
            return virtual_value;
        }
        let device_value = match self.read_device_config(offset, width) {
            Ok(v) => v,
            Err(e) => {
                self.record(e);
                u32::MAX
            }
        };
        ConfigOverlay::merge(virtual_mask, virtual_value, device_value) & width.mask()
    }

    fn config_write(&mut self, offset: u16, width: AccessWidth, value: u32) {
        if self.space.check_access(offset, width).is_err() {
            return;
        }
        let value = value & width.mask();
        let virtual_mask = self.overlay.mask(offset, width) & width.mask();
        self.space.write(offset, width, value);
        if virtual_mask != width.mask() {
            // Virtual bits carry the device's own values, so only the guest's
            // forwarded bits change on the device.
            let outgoing = if virtual_mask == 0 {
                Ok(value)
            } else {
                self.read_device_config(offset, width)
                    .map(|device| ConfigOverlay::merge(virtual_mask, device, value))
            };
            if let Err(e) = outgoing.and_then(|v| self.write_device_config(offset, width, v)) {
                self.record(e);
            }
        }
        // An access that passed `check_access` is naturally aligned and at most a dword,
        // so it touches at most one of the two (dword-aligned) capabilities.
        if self
            .interrupts
            .config_written(&mut self.space, offset, width)
        {
            self.rewire();
        }
    }

    fn bar_layout(&self) -> &BarLayout {
        self.space.bar_layout()
    }

    fn bar_read(
        &mut self,
        bar: BarIndex,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), FunctionError> {
        check_bar_access(self.space.bar_layout(), bar, offset, data.len())?;
        if self.interrupts.bar_read(bar, offset, data) {
            return Ok(());
        }
        data.fill(0xff);
        let Some((part, real_offset)) = self.real_part(bar, offset, data.len()) else {
            return Ok(());
        };
        let len = part.len();
        self.device
            .read_region(bar, real_offset, &mut data[part])
            .map_err(|e| io_error(bar, "read", real_offset, len, e))
    }

    fn bar_write(&mut self, bar: BarIndex, offset: u64, data: &[u8]) -> Result<(), FunctionError> {
        check_bar_access(self.space.bar_layout(), bar, offset, data.len())?;
        if self.interrupts.bar_write(&self.space, bar, offset, data) {
            self.rewire();
            return Ok(());
        }
        if bar.is_rom() {
            return Ok(());
        }
        let Some((part, real_offset)) = self.real_part(bar, offset, data.len()) else {
            return Ok(());
        };
        let len = part.len();
        self.device
            .write_region(bar, real_offset, &data[part])
            .map_err(|e| io_error(bar, "write", real_offset, len, e))
    }

    fn take_msi_routing(&mut self) -> Vec<MsiRouting> {
        self.interrupts.take_routing()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Keep the type 0 header virtually, except bus mastering, INTx disable and the
/// status register (bar its capability-list bit), which are the device's.
fn virtualise_header(
    space: &mut ConfigSpace,
    overlay: &mut ConfigOverlay,
) -> Result<(), ConfigSpaceError> {
    use AccessWidth::{Byte, Dword, Word};
    overlay.virtualise(0, header::END);
    overlay.set_bits(header::COMMAND, Word, FORWARDED_COMMAND_BITS.into(), false);
    overlay.set_bits(
        header::STATUS,
        Word,
        u32::from(!status::CAPABILITY_LIST),
        false,
    );
    space.define(
        header::COMMAND,
        Word,
        0,
        RegisterMask::writable(COMMAND_WRITABLE.into()),
    )?;
    for register in [
        header::CACHE_LINE_SIZE,
        header::LATENCY_TIMER,
        header::INTERRUPT_LINE,
    ] {
        space.define(register, Byte, 0, RegisterMask::writable(0xff))?;
    }
    let layout = space.u8_at(header::HEADER_TYPE) & header_type::LAYOUT_MASK;
    space.set(header::HEADER_TYPE, Byte, layout.into())?;
    space.set(header::BIST, Byte, 0)?;
    space.set(header::CARDBUS_CIS, Dword, 0)?;
    // The BARs, the ROM BAR and the reserved bytes after the capability pointer start
    // unimplemented; `define_bars` fills in what the device has.
    space.clear_range(header::BAR0, 4 * header::BAR_COUNT as u16);
    space.clear_range(header::ROM_ADDRESS, 4);
    space.clear_range(header::CAPABILITY_POINTER + 1, 7);
    Ok(())
}

/// Define the BARs and ROM the device implements, with kinds from the config image
/// (as VFIO presents it) and sizes from the regions.
fn define_bars<D: PassthroughDevice>(
    device: &D,
    space: &mut ConfigSpace,
    image: &[u8],
) -> Result<Vec<Option<DeviceRegion>>, PassthroughError> {
    let name = device.name();
    let mut regions: Vec<Option<DeviceRegion>> = vec![None; header::BAR_COUNT + 1];
    let mut i = 0u8;
    while usize::from(i) < header::BAR_COUNT {
        let index = BarIndex::new(i).expect("BAR indices below BAR_COUNT are valid");
        let Some(region) = device.region(index).filter(|r| r.size > 0) else {
            i += 1;
            continue;
        };
        let at = usize::from(index.config_offset());
        let register = u32::from_le_bytes([image[at], image[at + 1], image[at + 2], image[at + 3]]);
        let kind = BarKind::from_register(register).ok_or(PassthroughError::UnknownBarType {
            device: name.to_string(),
            bar: index,
            register,
        })?;
        let definition = BarDefinition::new(kind, virtual_size(kind, region.size));
        space
            .set_bar(index, definition)
            .map_err(|source| PassthroughError::Config {
                device: name.to_string(),
                what: "defining a BAR",
                source,
            })?;
        regions[usize::from(i)] = Some(region);
        i += if kind.is_64bit() { 2 } else { 1 };
    }
    if let Some(region) = device.region(BarIndex::ROM).filter(|r| r.size > 0) {
        let size = region
            .size
            .max(u64::from(rom::MIN_SIZE))
            .checked_next_power_of_two()
            .unwrap_or(0);
        space
            .set_rom(size)
            .map_err(|source| PassthroughError::Config {
                device: name.to_string(),
                what: "defining the ROM BAR",
                source,
            })?;
        regions[usize::from(BarIndex::ROM.get())] = Some(region);
    }
    Ok(regions)
}

/// Put an MSI capability in its after-reset state: disabled, one vector, no address,
/// data or mask bits (VFIO shows whatever the device last held).
fn reset_msi(space: &mut ConfigSpace, offset: u16) -> Result<(), ConfigSpaceError> {
    let control = space.u16_at(offset + msi::CONTROL);
    let len = msi::size(
        control & msi::CONTROL_64BIT != 0,
        control & msi::CONTROL_PER_VECTOR_MASK != 0,
    );
    space.set(
        offset + msi::CONTROL,
        AccessWidth::Word,
        (control & !(msi::CONTROL_ENABLE | msi::CONTROL_MME_MASK)).into(),
    )?;
    space.clear_range(offset + msi::ADDRESS_LO, len - msi::ADDRESS_LO);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_sizes_are_powers_of_two_above_the_minimum() {
        assert_eq!(virtual_size(BarKind::Io, 1), 4);
        assert_eq!(virtual_size(BarKind::Io, 8), 8);
        let mem = BarKind::Memory32 {
            prefetchable: false,
        };
        assert_eq!(virtual_size(mem, 0x2_0000), 0x2_0000);
        assert_eq!(virtual_size(mem, 0x3000), 0x4000);
        assert_eq!(virtual_size(mem, 4), 16);
    }

    #[test]
    fn direct_areas_skip_trapped_pages() {
        let area = MmapArea {
            offset: 0,
            size: 0x4000,
        };
        let table = 0x0..0x50;
        let pba = 0x2000..0x2008;
        assert_eq!(
            subtract(area, &[table, pba]),
            vec![
                MmapArea {
                    offset: 0x1000,
                    size: 0x1000
                },
                MmapArea {
                    offset: 0x3000,
                    size: 0x1000
                }
            ]
        );
        assert_eq!(subtract(area, &[]), vec![area]);
        let covering = 0x800..0x3800;
        assert!(subtract(area, std::slice::from_ref(&covering)).is_empty());
    }
}
