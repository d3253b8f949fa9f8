//! `VirtualBus`: the root bus a guest enumerates.
//!
//! It holds a host bridge at 00.0 and up to 32 devices x 8 functions, answers config
//! accesses through ECAM (MMIO) and the legacy 0xCF8/0xCFC ports, places every BAR the
//! way firmware would when a function is added, follows the guest's BAR programming,
//! and dispatches BAR MMIO/PIO accesses to the owning function, BAR and offset.
//!
//! # Decoding rules
//!
//! A BAR decodes when the command register enables its space (IO or memory; a ROM also
//! needs its enable bit), its address is not 0, its whole range lies inside the
//! matching window (IO; MEM32 or MEM64 for memory BARs and ROMs), and it overlaps no BAR
//! that already decodes. A guest write that would break these rules is kept in the
//! register (the guest reads back what it wrote, as on hardware, and BAR sizing works)
//! but the BAR does not decode until a later write makes it valid. A BAR that decodes
//! keeps decoding until its own function's registers change: a conflicting write by
//! another function never takes it away. After any BAR stops decoding, BARs held back
//! by a conflict are retried, in device/function/BAR order.
//!
//! # Events
//!
//! Changes a frontend or VMM must act on are queued as [`BusEvent`]s: a BAR starts or
//! stops decoding (map or unmap the region at that guest address), an MSI/MSI-X vector
//! changes. Drain them with [`VirtualBus::take_events`]; the queue keeps the newest
//! [`MAX_EVENTS`] and counts what it drops.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use thiserror::Error;

use crate::bar::decoder::{BarDecoder, DecodedBar};
use crate::bar::window::AddressWindow;
use crate::bar::{AddressSpace, BarDefinition, BarIndex, BarKind};
use crate::bus::config_ports::{ConfigPorts, PortAccess, CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN};
use crate::bus::description::BusDescription;
use crate::bus::devfn::{DevFn, FUNCTIONS_PER_DEVICE};
use crate::bus::ecam::{self, EcamAddress};
use crate::bus::function::{FunctionError, PciFunction};
use crate::bus::host_bridge::HostBridge;
use crate::config::access_width::AccessWidth;
use crate::config::regs::{command, header, header_type, rom};
use crate::interrupt::intx::{IntxPin, IntxSwizzle};
use crate::interrupt::routing::MsiRouting;

/// Most events kept undrained.
pub const MAX_EVENTS: usize = 1 << 16;

/// The root bridge's resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusConfig {
    /// PCI segment (domain) number firmware tables give the bus.
    pub segment: u16,
    /// The root bus number; all functions live on it.
    pub first_bus: u8,
    /// Last bus number the bridge (and ECAM) covers; buses after the first are empty.
    pub last_bus: u8,
    /// Guest physical address of the ECAM area; 1 MiB aligned.
    pub ecam_base: u64,
    /// IO-port window (within 0..=0xFFFF); `None` for guests without IO ports.
    pub io: Option<AddressWindow>,
    /// Memory window below 4 GiB, for 32-bit BARs and ROMs (and 64-bit BARs if no
    /// MEM64 window fits them).
    pub mem32: AddressWindow,
    /// Memory window for 64-bit BARs.
    pub mem64: Option<AddressWindow>,
    /// Decode the legacy config ports 0xCF8-0xCFF.
    pub config_ports: bool,
    /// GSIs the functions' INTx pins are swizzled onto.
    pub intx: IntxSwizzle,
}

impl Default for BusConfig {
    /// A q35-like single root bus: ECAM at 0xB0000000 (bus 0 only), IO 0xC000-0xFFFF,
    /// MEM32 0xC0000000-0xFEBFFFFF, MEM64 32 GiB from 32 GiB (reachable with 36-bit
    /// physical addresses, clear of guests with up to 28 GiB of RAM), config ports,
    /// INTx swizzled over GSIs 16-23.
    fn default() -> Self {
        Self {
            segment: 0,
            first_bus: 0,
            last_bus: 0,
            ecam_base: 0xb000_0000,
            io: Some(AddressWindow::new(0xc000, 0x4000)),
            mem32: AddressWindow::new(0xc000_0000, 0xfec0_0000 - 0xc000_0000),
            mem64: Some(AddressWindow::new(0x8_0000_0000, 0x8_0000_0000)),
            config_ports: true,
            intx: IntxSwizzle::default(),
        }
    }
}

impl BusConfig {
    /// The ECAM area: 1 MiB per bus from `first_bus` to `last_bus`.
    pub fn ecam_window(&self) -> AddressWindow {
        let buses = u64::from(self.last_bus.saturating_sub(self.first_bus)) + 1;
        AddressWindow::new(self.ecam_base, buses * ecam::BYTES_PER_BUS)
    }

    /// Check that the windows are well-formed and disjoint.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |what: &'static str, window: AddressWindow, reason: &str| BusError::BadConfig {
            what,
            window: window.to_string(),
            reason: reason.to_string(),
        };
        let ecam = self.ecam_window();
        if self.last_bus < self.first_bus {
            return Err(bad("bus range", ecam, "last bus is below first bus"));
        }
        if ecam.end().is_none() || !self.ecam_base.is_multiple_of(ecam::BYTES_PER_BUS) {
            return Err(bad(
                "ECAM",
                ecam,
                "base must be 1 MiB aligned and the area must not wrap",
            ));
        }
        if let Some(io) = self.io {
            if io.size == 0 || io.end().is_none_or(|e| e > 0x1_0000) {
                return Err(bad(
                    "IO window",
                    io,
                    "must be non-empty and within ports 0-0xffff",
                ));
            }
            let ports = AddressWindow::new(CONFIG_ADDRESS_PORT.into(), CONFIG_PORTS_LEN.into());
            if self.config_ports && io.overlaps(&ports) {
                return Err(bad(
                    "IO window",
                    io,
                    "contains the config ports 0xcf8-0xcff; move it",
                ));
            }
        }
        let mem32 = self.mem32;
        if mem32.size == 0 || mem32.end().is_none_or(|e| e > 1 << 32) {
            return Err(bad(
                "MEM32 window",
                mem32,
                "must be non-empty and below 4 GiB",
            ));
        }
        if let Some(mem64) = self.mem64 {
            if mem64.size == 0 || mem64.end().is_none() {
                return Err(bad("MEM64 window", mem64, "must be non-empty and not wrap"));
            }
            if mem64.overlaps(&mem32) || mem64.overlaps(&ecam) {
                return Err(bad(
                    "MEM64 window",
                    mem64,
                    "overlaps the MEM32 window or ECAM",
                ));
            }
        }
        if mem32.overlaps(&ecam) {
            return Err(bad("MEM32 window", mem32, "overlaps ECAM"));
        }
        if self.intx.count == 0
            || self
                .intx
                .first_gsi
                .checked_add(self.intx.count - 1)
                .is_none()
        {
            return Err(BusError::BadConfig {
                what: "INTx swizzle",
                window: format!("GSI {} + {}", self.intx.first_gsi, self.intx.count),
                reason: "needs 1 or more GSIs that fit 32 bits".into(),
            });
        }
        Ok(())
    }

    fn window_holds(&self, space: AddressSpace, base: u64, size: u64) -> bool {
        match space {
            AddressSpace::Io => self.io.is_some_and(|w| w.contains(base, size)),
            AddressSpace::Memory => {
                self.mem32.contains(base, size)
                    || self.mem64.is_some_and(|w| w.contains(base, size))
            }
        }
    }
}

/// Why the bus refused an operation.
#[derive(Debug, Error)]
pub enum BusError {
    /// A [`BusConfig`] that [`BusConfig::validate`] refuses.
    #[error("bus config: {what} {window}: {reason}")]
    BadConfig {
        /// The part at fault: "bus range", "ECAM", "IO window", "INTx swizzle"...
        what: &'static str,
        /// That part's range, as text.
        window: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Adding a function where one already is.
    #[error("{devfn}: already holds a function; pick a free device/function")]
    Occupied {
        /// The slot asked for.
        devfn: DevFn,
    },
    /// Adding function 1..=7 of a device without function 0, which a guest would not
    /// scan.
    #[error("{devfn}: function {function} needs function 0 of device {device:02x} first")]
    NoFunctionZero {
        /// The slot asked for.
        devfn: DevFn,
        /// Its device number.
        device: u8,
        /// Its function number.
        function: u8,
    },
    /// Removing function 0 while other functions of its device remain.
    #[error("{devfn}: function 0 still has sibling functions; remove them first")]
    HasSiblings {
        /// The function 0 asked for.
        devfn: DevFn,
    },
    /// Removing the host bridge.
    #[error("{devfn}: the host bridge stays at 00.0")]
    HostBridge {
        /// 00.0.
        devfn: DevFn,
    },
    /// No function at that slot.
    #[error("{devfn}: no function there")]
    NoFunction {
        /// The slot asked for.
        devfn: DevFn,
    },
    /// A BAR access (or one of 0 bytes) that no decoding BAR covers.
    #[error("{space:?} access of {len} bytes at {address:#x}: nothing decodes it")]
    Unclaimed {
        /// Memory or IO.
        space: AddressSpace,
        /// Guest address of the access.
        address: u64,
        /// Bytes accessed.
        len: usize,
    },
    /// An access that starts in a BAR and runs past its end.
    #[error("{space:?} access of {len} bytes at {address:#x}: runs past the end of {devfn} {bar} ({base:#x}, {size:#x} bytes)")]
    CrossesBarEnd {
        /// Memory or IO.
        space: AddressSpace,
        /// Guest address of the access.
        address: u64,
        /// Bytes accessed.
        len: usize,
        /// The function whose BAR it starts in.
        devfn: DevFn,
        /// That BAR.
        bar: BarIndex,
        /// The BAR's guest address.
        base: u64,
        /// The BAR's size in bytes.
        size: u64,
    },
    /// The function refused a BAR access.
    #[error("{devfn} {bar}: {source}")]
    Function {
        /// The function.
        devfn: DevFn,
        /// The BAR accessed.
        bar: BarIndex,
        /// The function's error.
        #[source]
        source: FunctionError,
    },
}

/// Where an MMIO or PIO access went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessTarget {
    /// A config register, through ECAM or the 0xCFC data port.
    Config {
        /// Bus number addressed (buses after the first hold no functions).
        bus: u8,
        /// Function addressed.
        devfn: DevFn,
        /// Config-space byte offset.
        register: u16,
    },
    /// The 0xCF8 CONFIG_ADDRESS latch.
    ConfigAddress,
    /// A config-mechanism access that reaches no register (bad width or alignment, or
    /// the latch disabled): reads all-ones, writes are ignored.
    ConfigRefused,
    /// Offset `offset` of BAR `bar` of function `devfn`.
    Bar {
        /// The function.
        devfn: DevFn,
        /// The BAR.
        bar: BarIndex,
        /// Byte offset within the BAR.
        offset: u64,
    },
}

/// Something a frontend or VMM must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// The BAR now decodes `[base, base + size)`.
    BarMapped(DecodedBar),
    /// The BAR stopped decoding that range.
    BarUnmapped(DecodedBar),
    /// A function's MSI/MSI-X vector changed.
    MsiRouting {
        /// The function.
        devfn: DevFn,
        /// The vector's new state.
        routing: MsiRouting,
    },
}

/// A BAR as the bus tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarStatus {
    /// Which BAR (or the ROM).
    pub bar: BarIndex,
    /// Its kind and size.
    pub definition: BarDefinition,
    /// The address in the register (`None` if 0), whether or not it decodes.
    pub programmed: Option<u64>,
    /// Whether it decodes now.
    pub decoding: bool,
}

#[derive(Clone, Copy, Debug)]
struct BarState {
    index: BarIndex,
    definition: BarDefinition,
    programmed: Option<u64>,
    /// Programmed and enabled by the command register (and ROM enable bit).
    wanted: Option<u64>,
    active: bool,
}

impl BarState {
    fn space(&self) -> AddressSpace {
        AddressSpace::from(self.definition.kind)
    }

    fn decoded(&self, devfn: DevFn, base: u64) -> DecodedBar {
        DecodedBar {
            devfn,
            bar: self.index,
            space: self.space(),
            base,
            size: self.definition.size,
        }
    }
}

struct Slot {
    function: Box<dyn PciFunction>,
    bars: Vec<BarState>,
}

/// The virtual root bus.
pub struct VirtualBus {
    config: BusConfig,
    slots: BTreeMap<DevFn, Slot>,
    decoder: BarDecoder,
    ports: ConfigPorts,
    events: VecDeque<BusEvent>,
    dropped_events: u64,
}

/// Whether an access of `width` at `register` touches `[start, start + len)`.
fn touches(register: u16, width: AccessWidth, start: u16, len: u16) -> bool {
    let end = u32::from(register) + width.bytes() as u32;
    end > u32::from(start) && u32::from(register) < u32::from(start) + u32::from(len)
}

/// Whether a config write may change what the function's BARs decode.
fn affects_decoding(register: u16, width: AccessWidth) -> bool {
    touches(register, width, header::COMMAND, 2)
        || touches(register, width, header::BAR0, 4 * header::BAR_COUNT as u16)
        || touches(register, width, header::ROM_ADDRESS, 4)
}

fn push_event(events: &mut VecDeque<BusEvent>, dropped: &mut u64, event: BusEvent) {
    if events.len() == MAX_EVENTS {
        events.pop_front();
        *dropped += 1;
    }
    events.push_back(event);
}

impl VirtualBus {
    /// A bus holding only the host bridge at 00.0.
    pub fn new(config: BusConfig) -> Result<Self, BusError> {
        config.validate()?;
        let mut bus = Self {
            config,
            slots: BTreeMap::new(),
            decoder: BarDecoder::new(),
            ports: ConfigPorts::new(),
            events: VecDeque::new(),
            dropped_events: 0,
        };
        bus.insert(DevFn::HOST_BRIDGE, Box::new(HostBridge::default()));
        Ok(bus)
    }

    /// The resources the bus was created with.
    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Add a function and place its BARs as firmware would: each BAR (largest first)
    /// at the lowest free naturally aligned address of its window (IO; MEM64 for
    /// 64-bit BARs when there is one, else MEM32; MEM32 for 32-bit BARs and the ROM),
    /// then the interrupt line set from the INTx routing and the command register's
    /// IO/memory decode enabled for the spaces it got BARs in. A BAR that fits no
    /// window is left at 0 (unassigned, not decoding); see [`bar_status`](Self::bar_status).
    pub fn add_function(
        &mut self,
        devfn: DevFn,
        function: Box<dyn PciFunction>,
    ) -> Result<(), BusError> {
        if self.slots.contains_key(&devfn) {
            return Err(BusError::Occupied { devfn });
        }
        let device = devfn.device();
        if devfn.function() != 0
            && !self
                .slots
                .contains_key(&DevFn::new(device, 0).unwrap_or(devfn))
        {
            return Err(BusError::NoFunctionZero {
                devfn,
                device,
                function: devfn.function(),
            });
        }
        self.insert(devfn, function);
        self.place_bars(devfn);
        Ok(())
    }

    /// Remove a function (function 0 only once its siblings are gone), unmapping its BARs.
    pub fn remove_function(&mut self, devfn: DevFn) -> Result<Box<dyn PciFunction>, BusError> {
        if devfn == DevFn::HOST_BRIDGE {
            return Err(BusError::HostBridge { devfn });
        }
        if !self.slots.contains_key(&devfn) {
            return Err(BusError::NoFunction { devfn });
        }
        if devfn.function() == 0 && self.has_siblings(devfn.device()) {
            return Err(BusError::HasSiblings { devfn });
        }
        let slot = self
            .slots
            .remove(&devfn)
            .ok_or(BusError::NoFunction { devfn })?;
        let mut removed = false;
        for state in slot.bars.iter().filter(|s| s.active) {
            if let Some(base) = state.wanted {
                if let Some(d) = self.decoder.remove(state.space(), base) {
                    push_event(
                        &mut self.events,
                        &mut self.dropped_events,
                        BusEvent::BarUnmapped(d),
                    );
                    removed = true;
                }
            }
        }
        if removed {
            self.activate(None);
        }
        Ok(slot.function)
    }

    fn insert(&mut self, devfn: DevFn, function: Box<dyn PciFunction>) {
        let bars = function
            .bar_layout()
            .iter()
            .map(|(index, definition)| BarState {
                index,
                definition,
                programmed: None,
                wanted: None,
                active: false,
            })
            .collect();
        self.slots.insert(devfn, Slot { function, bars });
        self.refresh(devfn);
        self.collect_routing(devfn);
    }

    fn has_siblings(&self, device: u8) -> bool {
        (1..FUNCTIONS_PER_DEVICE)
            .any(|f| DevFn::new(device, f).is_some_and(|d| self.slots.contains_key(&d)))
    }

    /// Ranges in `space` that BARs other than `devfn`'s hold, decoding or not.
    fn occupied(&self, space: AddressSpace) -> Vec<Range<u64>> {
        self.slots
            .values()
            .flat_map(|slot| slot.bars.iter())
            .filter(|s| s.space() == space)
            .filter_map(|s| {
                let base = s.programmed?;
                Some(base..base.checked_add(s.definition.size)?)
            })
            .collect()
    }

    fn place_bars(&mut self, devfn: DevFn) {
        let Some(slot) = self.slots.get(&devfn) else {
            return;
        };
        let mut bars: Vec<(BarIndex, BarDefinition)> =
            slot.bars.iter().map(|s| (s.index, s.definition)).collect();
        bars.sort_by(|a, b| b.1.size.cmp(&a.1.size).then(a.0.cmp(&b.0)));
        let mut io = self.occupied(AddressSpace::Io);
        let mut memory = self.occupied(AddressSpace::Memory);
        let mut enable = 0u16;
        let mut placed = Vec::new();
        for (index, definition) in bars {
            let size = definition.size;
            let found = match definition.kind {
                BarKind::Io => self.config.io.and_then(|w| w.find_free(size, &io)),
                BarKind::Memory64 { .. } => self
                    .config
                    .mem64
                    .and_then(|w| w.find_free(size, &memory))
                    .or_else(|| self.config.mem32.find_free(size, &memory)),
                BarKind::Memory32 { .. } => self.config.mem32.find_free(size, &memory),
            };
            let Some(base) = found else {
                tracing::warn!(%devfn, bar = %index, kind = %definition.kind, size, "no room in any window; BAR left unassigned");
                continue;
            };
            match AddressSpace::from(definition.kind) {
                AddressSpace::Io => {
                    io.push(base..base + size);
                    enable |= command::IO_SPACE;
                }
                AddressSpace::Memory => {
                    memory.push(base..base + size);
                    if !index.is_rom() {
                        enable |= command::MEMORY_SPACE;
                    }
                }
            }
            placed.push((index, definition, base));
        }
        let Some(slot) = self.slots.get_mut(&devfn) else {
            return;
        };
        let function = &mut slot.function;
        for (index, definition, base) in placed {
            let offset = index.config_offset();
            function.config_write(offset, AccessWidth::Dword, base as u32);
            if definition.kind.is_64bit() {
                function.config_write(offset + 4, AccessWidth::Dword, (base >> 32) as u32);
            }
        }
        let pin = function.config_read(header::INTERRUPT_PIN, AccessWidth::Byte) as u8;
        if let Some(gsi) =
            IntxPin::from_register(pin).and_then(|p| self.config.intx.gsi(devfn.device(), p))
        {
            let line = u8::try_from(gsi).unwrap_or(0xff);
            function.config_write(header::INTERRUPT_LINE, AccessWidth::Byte, line.into());
        }
        if enable != 0 {
            let old = function.config_read(header::COMMAND, AccessWidth::Word);
            function.config_write(header::COMMAND, AccessWidth::Word, old | u32::from(enable));
        }
        self.refresh(devfn);
        self.collect_routing(devfn);
    }

    /// Re-read `devfn`'s command and BAR registers and update decoding.
    fn refresh(&mut self, devfn: DevFn) {
        let Self {
            slots,
            decoder,
            events,
            dropped_events,
            ..
        } = self;
        let Some(slot) = slots.get_mut(&devfn) else {
            return;
        };
        let function = &mut slot.function;
        let cmd = function.config_read(header::COMMAND, AccessWidth::Word) as u16;
        let mut removed = false;
        for state in slot.bars.iter_mut() {
            let offset = state.index.config_offset();
            let low = function.config_read(offset, AccessWidth::Dword);
            let (address, enabled) = if state.index.is_rom() {
                (
                    u64::from(low & rom::ADDRESS_MASK),
                    cmd & command::MEMORY_SPACE != 0 && low & rom::ENABLE != 0,
                )
            } else {
                let high = if state.definition.kind.is_64bit() {
                    function.config_read(offset + 4, AccessWidth::Dword)
                } else {
                    0
                };
                let bit = match state.space() {
                    AddressSpace::Io => command::IO_SPACE,
                    AddressSpace::Memory => command::MEMORY_SPACE,
                };
                (
                    state.definition.address_from_registers(low, high),
                    cmd & bit != 0,
                )
            };
            state.programmed = (address != 0).then_some(address);
            let wanted = state.programmed.filter(|_| enabled);
            if wanted == state.wanted {
                continue;
            }
            if state.active {
                if let Some(d) = state
                    .wanted
                    .and_then(|base| decoder.remove(state.space(), base))
                {
                    push_event(events, dropped_events, BusEvent::BarUnmapped(d));
                }
                state.active = false;
                removed = true;
            }
            state.wanted = wanted;
        }
        self.activate(if removed { None } else { Some(devfn) });
    }

    /// Start decoding BARs that want to and now can: only `devfn`'s, or everyone's.
    fn activate(&mut self, only: Option<DevFn>) {
        let Self {
            config,
            slots,
            decoder,
            events,
            dropped_events,
            ..
        } = self;
        for (devfn, slot) in slots.iter_mut() {
            if only.is_some_and(|o| o != *devfn) {
                continue;
            }
            for state in slot.bars.iter_mut().filter(|s| !s.active) {
                let Some(base) = state.wanted else {
                    continue;
                };
                if !config.window_holds(state.space(), base, state.definition.size) {
                    continue;
                }
                let decoded = state.decoded(*devfn, base);
                if decoder.insert(decoded).is_ok() {
                    state.active = true;
                    push_event(events, dropped_events, BusEvent::BarMapped(decoded));
                }
            }
        }
    }

    fn collect_routing(&mut self, devfn: DevFn) {
        if let Some(slot) = self.slots.get_mut(&devfn) {
            for routing in slot.function.take_msi_routing() {
                push_event(
                    &mut self.events,
                    &mut self.dropped_events,
                    BusEvent::MsiRouting { devfn, routing },
                );
            }
        }
    }

    /// Config read of `width` at `register` of `devfn` on bus `bus`. Absent functions
    /// and other buses read all-ones. Function 0's multi-function header bit shows
    /// whether the bus holds other functions of that device.
    pub fn config_read(&mut self, bus: u8, devfn: DevFn, register: u16, width: AccessWidth) -> u32 {
        if bus != self.config.first_bus {
            return width.mask();
        }
        let multi_function = devfn.function() == 0 && self.has_siblings(devfn.device());
        let Some(slot) = self.slots.get_mut(&devfn) else {
            return width.mask();
        };
        let mut value = slot.function.config_read(register, width) & width.mask();
        if devfn.function() == 0
            && width.is_aligned(register.into())
            && touches(register, width, header::HEADER_TYPE, 1)
        {
            let bit =
                u32::from(header_type::MULTI_FUNCTION) << (8 * (header::HEADER_TYPE - register));
            value = if multi_function {
                value | bit
            } else {
                value & !bit
            };
        }
        value
    }

    /// Config write of `width` at `register` of `devfn` on bus `bus`; ignored for
    /// absent functions and other buses. Updates BAR decoding and collects MSI routing.
    pub fn config_write(
        &mut self,
        bus: u8,
        devfn: DevFn,
        register: u16,
        width: AccessWidth,
        value: u32,
    ) {
        if bus != self.config.first_bus {
            return;
        }
        let Some(slot) = self.slots.get_mut(&devfn) else {
            return;
        };
        slot.function
            .config_write(register, width, value & width.mask());
        if affects_decoding(register, width) {
            self.refresh(devfn);
        }
        self.collect_routing(devfn);
    }

    /// The ECAM area in guest physical memory.
    pub fn ecam_window(&self) -> AddressWindow {
        self.config.ecam_window()
    }

    fn ecam_target(&self, offset: u64) -> Option<EcamAddress> {
        let buses = u16::from(self.config.last_bus - self.config.first_bus) + 1;
        let mut address = EcamAddress::decode(offset, buses)?;
        address.bus = address.bus.checked_add(self.config.first_bus)?;
        Some(address)
    }

    /// Guest read of `data.len()` bytes at guest physical `address`: ECAM or a BAR.
    /// Unclaimed reads fill `data` with all-ones and return an error naming the address.
    pub fn mmio_read(&mut self, address: u64, data: &mut [u8]) -> Result<AccessTarget, BusError> {
        let ecam = self.ecam_window();
        if ecam.contains(address, data.len() as u64) {
            let target = self.ecam_target(address - ecam.base);
            return Ok(self.config_access_read(target, data));
        }
        self.bar_read(AddressSpace::Memory, address, data)
    }

    /// Guest write of `data` at guest physical `address`: ECAM or a BAR.
    pub fn mmio_write(&mut self, address: u64, data: &[u8]) -> Result<AccessTarget, BusError> {
        let ecam = self.ecam_window();
        if ecam.contains(address, data.len() as u64) {
            let target = self.ecam_target(address - ecam.base);
            return Ok(self.config_access_write(target, data));
        }
        self.bar_write(AddressSpace::Memory, address, data)
    }

    /// Guest read from IO port `port`: the config ports or an IO BAR.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) -> Result<AccessTarget, BusError> {
        if self.config.config_ports {
            match self.ports.classify(port, data.len()) {
                PortAccess::Address => {
                    data.copy_from_slice(&self.ports.address().to_le_bytes());
                    return Ok(AccessTarget::ConfigAddress);
                }
                PortAccess::Data(t) => {
                    let value = self.config_read(t.bus, t.devfn, t.register, t.width);
                    data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
                    return Ok(AccessTarget::Config {
                        bus: t.bus,
                        devfn: t.devfn,
                        register: t.register,
                    });
                }
                PortAccess::Refused => {
                    data.fill(0xff);
                    return Ok(AccessTarget::ConfigRefused);
                }
                PortAccess::NotClaimed => {}
            }
        }
        self.bar_read(AddressSpace::Io, port.into(), data)
    }

    /// Guest write to IO port `port`: the config ports or an IO BAR.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) -> Result<AccessTarget, BusError> {
        if self.config.config_ports {
            match self.ports.classify(port, data.len()) {
                PortAccess::Address => {
                    let mut bytes = [0u8; 4];
                    bytes.copy_from_slice(data);
                    self.ports.set_address(u32::from_le_bytes(bytes));
                    return Ok(AccessTarget::ConfigAddress);
                }
                PortAccess::Data(t) => {
                    self.config_write(t.bus, t.devfn, t.register, t.width, le_value(data));
                    return Ok(AccessTarget::Config {
                        bus: t.bus,
                        devfn: t.devfn,
                        register: t.register,
                    });
                }
                PortAccess::Refused => return Ok(AccessTarget::ConfigRefused),
                PortAccess::NotClaimed => {}
            }
        }
        self.bar_write(AddressSpace::Io, port.into(), data)
    }

    fn config_access_read(&mut self, target: Option<EcamAddress>, data: &mut [u8]) -> AccessTarget {
        let width = AccessWidth::from_len(data.len());
        match (target, width) {
            (Some(t), Some(width)) => {
                let value = self.config_read(t.bus, t.devfn, t.register, width);
                data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
                AccessTarget::Config {
                    bus: t.bus,
                    devfn: t.devfn,
                    register: t.register,
                }
            }
            _ => {
                data.fill(0xff);
                AccessTarget::ConfigRefused
            }
        }
    }

    fn config_access_write(&mut self, target: Option<EcamAddress>, data: &[u8]) -> AccessTarget {
        match (target, AccessWidth::from_len(data.len())) {
            (Some(t), Some(width)) => {
                self.config_write(t.bus, t.devfn, t.register, width, le_value(data));
                AccessTarget::Config {
                    bus: t.bus,
                    devfn: t.devfn,
                    register: t.register,
                }
            }
            _ => AccessTarget::ConfigRefused,
        }
    }

    /// The decoding BAR that holds the whole access, or why none does.
    fn resolve(
        &self,
        space: AddressSpace,
        address: u64,
        len: usize,
    ) -> Result<DecodedBar, BusError> {
        let decoded = self
            .decoder
            .lookup(space, address)
            .filter(|_| len > 0)
            .ok_or(BusError::Unclaimed {
                space,
                address,
                len,
            })?;
        if !decoded.contains(address, len as u64) {
            return Err(BusError::CrossesBarEnd {
                space,
                address,
                len,
                devfn: decoded.devfn,
                bar: decoded.bar,
                base: decoded.base,
                size: decoded.size,
            });
        }
        Ok(decoded)
    }

    /// Which function, BAR and offset a BAR access of `len` bytes at `address` reaches.
    pub fn resolve_bar(
        &self,
        space: AddressSpace,
        address: u64,
        len: usize,
    ) -> Result<AccessTarget, BusError> {
        let d = self.resolve(space, address, len)?;
        Ok(AccessTarget::Bar {
            devfn: d.devfn,
            bar: d.bar,
            offset: address - d.base,
        })
    }

    fn bar_read(
        &mut self,
        space: AddressSpace,
        address: u64,
        data: &mut [u8],
    ) -> Result<AccessTarget, BusError> {
        let decoded = match self.resolve(space, address, data.len()) {
            Ok(d) => d,
            Err(e) => {
                data.fill(0xff);
                return Err(e);
            }
        };
        let offset = address - decoded.base;
        let slot = self.slot_mut(decoded.devfn)?;
        if let Err(source) = slot.function.bar_read(decoded.bar, offset, data) {
            data.fill(0xff);
            return Err(BusError::Function {
                devfn: decoded.devfn,
                bar: decoded.bar,
                source,
            });
        }
        Ok(AccessTarget::Bar {
            devfn: decoded.devfn,
            bar: decoded.bar,
            offset,
        })
    }

    /// The slot of a function the decoder named.
    fn slot_mut(&mut self, devfn: DevFn) -> Result<&mut Slot, BusError> {
        self.slots
            .get_mut(&devfn)
            .ok_or(BusError::NoFunction { devfn })
    }

    fn bar_write(
        &mut self,
        space: AddressSpace,
        address: u64,
        data: &[u8],
    ) -> Result<AccessTarget, BusError> {
        let decoded = self.resolve(space, address, data.len())?;
        let offset = address - decoded.base;
        let slot = self.slot_mut(decoded.devfn)?;
        let result = slot.function.bar_write(decoded.bar, offset, data);
        self.collect_routing(decoded.devfn);
        result.map_err(|source| BusError::Function {
            devfn: decoded.devfn,
            bar: decoded.bar,
            source,
        })?;
        Ok(AccessTarget::Bar {
            devfn: decoded.devfn,
            bar: decoded.bar,
            offset,
        })
    }

    /// Every function's address, in scan order.
    pub fn functions(&self) -> impl Iterator<Item = DevFn> + '_ {
        self.slots.keys().copied()
    }

    /// The function at `devfn` as its concrete type (e.g. a test's `TestDevice`).
    /// Config writes made through it bypass the bus: BAR decoding follows them only at
    /// the next config write to that function through the bus.
    pub fn function_as<T: 'static>(&mut self, devfn: DevFn) -> Option<&mut T> {
        self.slots
            .get_mut(&devfn)?
            .function
            .as_any_mut()
            .downcast_mut::<T>()
    }

    /// The BARs of `devfn` as the bus tracks them.
    pub fn bar_status(&self, devfn: DevFn) -> Vec<BarStatus> {
        self.slots
            .get(&devfn)
            .map(|slot| {
                slot.bars
                    .iter()
                    .map(|s| BarStatus {
                        bar: s.index,
                        definition: s.definition,
                        programmed: s.programmed,
                        decoding: s.active,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every decoding BAR, IO first, each space in address order.
    pub fn decoded_bars(&self) -> Vec<DecodedBar> {
        self.decoder.iter().copied().collect()
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<BusEvent> {
        self.events.drain(..).collect()
    }

    /// Events dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// The bus as plain data, for firmware tables.
    pub fn describe(&self) -> BusDescription {
        BusDescription {
            segment: self.config.segment,
            first_bus: self.config.first_bus,
            last_bus: self.config.last_bus,
            ecam: self.ecam_window(),
            io: self.config.io,
            mem32: self.config.mem32,
            mem64: self.config.mem64,
            config_ports: self.config.config_ports,
            intx: self.config.intx.routes(),
        }
    }
}

/// A little-endian value of 1, 2 or 4 bytes.
fn le_value(data: &[u8]) -> u32 {
    data.iter()
        .rev()
        .fold(0, |acc, b| (acc << 8) | u32::from(*b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device::{TestDevice, TestDeviceConfig};

    fn devfn(d: u8, f: u8) -> DevFn {
        DevFn::new(d, f).unwrap()
    }

    fn bus_with_full_device() -> VirtualBus {
        let mut bus = VirtualBus::new(BusConfig::default()).unwrap();
        let device = TestDevice::new(&TestDeviceConfig::full(0x1af4, 0x10f0)).unwrap();
        bus.add_function(devfn(3, 0), Box::new(device)).unwrap();
        bus
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            BusConfig {
                ecam_base: 0xb000_1000,
                ..BusConfig::default()
            },
            BusConfig {
                io: Some(AddressWindow::new(0xc00, 0x1000)),
                ..BusConfig::default()
            },
            BusConfig {
                mem32: AddressWindow::new(0xf000_0000, 0x2000_0000),
                ..BusConfig::default()
            },
            BusConfig {
                mem32: AddressWindow::new(0xa000_0000, 0x2000_0000),
                ..BusConfig::default()
            },
            BusConfig {
                first_bus: 2,
                last_bus: 1,
                ..BusConfig::default()
            },
        ];
        for config in bad {
            assert!(VirtualBus::new(config.clone()).is_err(), "{config:?}");
        }
        let err = VirtualBus::new(BusConfig {
            io: Some(AddressWindow::new(0xc00, 0x1000)),
            ..BusConfig::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("0xcf8"), "{err}");
    }

    #[test]
    fn firmware_placement_is_aligned_disjoint_and_decoding() {
        let mut bus = bus_with_full_device();
        let bars = bus.bar_status(devfn(3, 0));
        assert_eq!(bars.len(), 5);
        for s in &bars {
            let base = s.programmed.expect("every BAR fits the default windows");
            assert_eq!(base % s.definition.size, 0, "{s:?} naturally aligned");
            assert_eq!(s.decoding, !s.bar.is_rom(), "ROM stays disabled: {s:?}");
        }
        let decoded = bus.decoded_bars();
        assert_eq!(decoded.len(), 4);
        let mem64 = bus.config().mem64.unwrap();
        let big = decoded.iter().find(|d| d.size == 8 << 30).unwrap();
        assert!(mem64.contains(big.base, big.size));
        let mapped = bus
            .take_events()
            .into_iter()
            .filter(|e| matches!(e, BusEvent::BarMapped(_)))
            .count();
        assert_eq!(mapped, 4);
        // Interrupt line follows the swizzle: slot 3 pin A -> GSI 19.
        assert_eq!(
            bus.config_read(0, devfn(3, 0), header::INTERRUPT_LINE, AccessWidth::Byte),
            19
        );
    }

    #[test]
    fn functions_need_function_zero_and_free_slots() {
        let mut bus = VirtualBus::new(BusConfig::default()).unwrap();
        let make = || Box::new(TestDevice::new(&TestDeviceConfig::minimal(1, 2)).unwrap());
        assert!(matches!(
            bus.add_function(devfn(4, 1), make()),
            Err(BusError::NoFunctionZero { .. })
        ));
        assert!(matches!(
            bus.add_function(DevFn::HOST_BRIDGE, make()),
            Err(BusError::Occupied { .. })
        ));
        bus.add_function(devfn(4, 0), make()).unwrap();
        bus.add_function(devfn(4, 2), make()).unwrap();
        assert!(matches!(
            bus.remove_function(devfn(4, 0)),
            Err(BusError::HasSiblings { .. })
        ));
        assert!(bus.remove_function(devfn(4, 2)).is_ok());
        assert!(bus.remove_function(devfn(4, 0)).is_ok());
        assert!(matches!(
            bus.remove_function(DevFn::HOST_BRIDGE),
            Err(BusError::HostBridge { .. })
        ));
        assert_eq!(
            bus.functions().collect::<Vec<_>>(),
            vec![DevFn::HOST_BRIDGE]
        );
    }

    #[test]
    fn multi_function_bit_reflects_siblings() {
        let mut bus = VirtualBus::new(BusConfig::default()).unwrap();
        let mut config = TestDeviceConfig::minimal(1, 2);
        config.header.multi_function = true;
        bus.add_function(devfn(5, 0), Box::new(TestDevice::new(&config).unwrap()))
            .unwrap();
        let header_type = |bus: &mut VirtualBus| {
            bus.config_read(0, devfn(5, 0), header::HEADER_TYPE, AccessWidth::Byte)
        };
        assert_eq!(header_type(&mut bus), 0, "no siblings: not multi-function");
        bus.add_function(
            devfn(5, 7),
            Box::new(TestDevice::new(&TestDeviceConfig::minimal(1, 3)).unwrap()),
        )
        .unwrap();
        assert_eq!(header_type(&mut bus), 0x80);
        let dword = bus.config_read(0, devfn(5, 0), header::CACHE_LINE_SIZE, AccessWidth::Dword);
        assert_eq!(dword >> 16 & 0xff, 0x80);
    }

    #[test]
    fn conflicting_bar_keeps_its_value_but_does_not_decode() {
        let mut bus = bus_with_full_device();
        let second = TestDevice::new(&TestDeviceConfig::full(0x1af4, 0x10f1)).unwrap();
        bus.add_function(devfn(4, 0), Box::new(second)).unwrap();
        bus.take_events();
        let first_bar1 = bus.bar_status(devfn(3, 0))[1];
        let target = first_bar1.programmed.unwrap();
        // Move 04.0 BAR1 onto 03.0 BAR1.
        bus.config_write(
            0,
            devfn(4, 0),
            header::bar(1),
            AccessWidth::Dword,
            target as u32,
        );
        let moved = bus.bar_status(devfn(4, 0))[1];
        assert_eq!(moved.programmed, Some(target));
        assert!(!moved.decoding);
        assert_eq!(
            bus.config_read(0, devfn(4, 0), header::bar(1), AccessWidth::Dword),
            target as u32,
            "the guest reads back what it wrote"
        );
        assert!(
            bus.bar_status(devfn(3, 0))[1].decoding,
            "the first owner keeps decoding"
        );
        let mut data = [0u8; 4];
        assert_eq!(
            bus.mmio_read(target, &mut data).unwrap(),
            AccessTarget::Bar {
                devfn: devfn(3, 0),
                bar: BarIndex::new(1).unwrap(),
                offset: 0
            }
        );
        // 03.0 moves away: 04.0 BAR1 decodes at the address it holds.
        bus.config_write(
            0,
            devfn(3, 0),
            header::bar(1),
            AccessWidth::Dword,
            0xd000_0000,
        );
        assert!(bus.bar_status(devfn(4, 0))[1].decoding);
        assert_eq!(
            bus.mmio_read(target, &mut data).unwrap(),
            AccessTarget::Bar {
                devfn: devfn(4, 0),
                bar: BarIndex::new(1).unwrap(),
                offset: 0
            }
        );
    }

    #[test]
    fn bars_outside_windows_do_not_decode() {
        let mut bus = bus_with_full_device();
        let f = devfn(3, 0);
        bus.config_write(0, f, header::bar(1), AccessWidth::Dword, 0xfec0_0000);
        assert!(!bus.bar_status(f)[1].decoding, "past MEM32");
        bus.config_write(0, f, header::bar(1), AccessWidth::Dword, 0xbfff_f000);
        assert!(!bus.bar_status(f)[1].decoding, "below MEM32");
        bus.config_write(0, f, header::bar(1), AccessWidth::Dword, 0xfebf_f000);
        assert!(bus.bar_status(f)[1].decoding, "last page of MEM32");
        bus.config_write(0, f, header::bar(0), AccessWidth::Dword, 0x1000);
        assert!(!bus.bar_status(f)[0].decoding, "below the IO window");
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_errors_with_all_ones() {
        let mut bus = bus_with_full_device();
        let mut data = [0u8; 4];
        let err = bus.mmio_read(0x1000, &mut data).unwrap_err();
        assert_eq!(data, [0xff; 4]);
        assert!(err.to_string().contains("0x1000"), "{err}");
        let bar1 = bus.bar_status(devfn(3, 0))[1].programmed.unwrap();
        let err = bus.mmio_read(bar1 + 0xffe, &mut data).unwrap_err();
        assert!(matches!(err, BusError::CrossesBarEnd { .. }), "{err}");
        assert!(bus.mmio_write(0x1000, &data).is_err());
    }

    #[test]
    fn description_matches_the_config() {
        let bus = VirtualBus::new(BusConfig::default()).unwrap();
        let d = bus.describe();
        assert_eq!(d.ecam, AddressWindow::new(0xb000_0000, 1 << 20));
        assert_eq!((d.first_bus, d.last_bus), (0, 0));
        assert_eq!(d.intx.len(), 128);
        assert!(d.config_ports);
    }
}
