//! The platform and its PCI root bridges, as plain data: what the tables describe.
//!
//! A [`Description`] knows nothing about PCI devices: only root bridges (segment, bus range,
//! ECAM, address windows, INTx routing, `_OSC` policy), CPUs, interrupt controllers and the
//! ACPI hardware model. [`Description::default`] is a q35-like machine with one root bridge.

mod display;
#[cfg(feature = "serde")]
mod hex;
pub(crate) mod validate;

#[cfg(feature = "serde")]
use serde::{Deserialize, Serialize};

/// Size of one bus's ECAM area: 32 devices x 8 functions x 4 KiB.
pub const ECAM_BYTES_PER_BUS: u64 = 1 << 20;

/// Everything the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Description {
    /// Where the tables go in guest physical memory.
    pub layout: Layout,
    /// Local APIC id of each CPU; a CPU's ACPI processor UID is its index here.
    pub cpu_apic_ids: Vec<u8>,
    /// Physical address of the local APICs (MADT header).
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub local_apic_address: u32,
    /// A dual 8259 PIC is present (MADT PCAT_COMPAT); the OS masks it when it uses the APICs.
    pub pcat_compat: bool,
    /// The IO APICs, whose inputs are the GSIs.
    pub io_apics: Vec<IoApic>,
    /// ISA IRQs that are not identity-mapped to GSIs or not edge/active-high.
    pub interrupt_overrides: Vec<InterruptOverride>,
    /// The local APIC input wired to NMI on every CPU, if any.
    pub local_apic_nmi: Option<LocalApicNmi>,
    /// Fixed-hardware (PM1 blocks, SCI, FACS) or hardware-reduced ACPI.
    pub hardware: AcpiHardware,
    /// The FADT reset register: an IO port and the value that resets the machine.
    pub reset_register: Option<ResetRegister>,
    /// Legacy devices the OS may probe (FADT IAPC_BOOT_ARCH).
    pub boot_arch: BootArch,
    /// One DSDT device and one MCFG entry each.
    pub root_bridges: Vec<RootBridge>,
}

/// Guest physical addresses of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Layout {
    /// The RSDP; 16-byte aligned. Linux finds it by scanning 0xE0000-0xFFFFF, or is told it.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub rsdp_address: u64,
    /// XSDT, FADT, FACS, DSDT, MADT and MCFG follow one another from here.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub tables_address: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            rsdp_address: 0x000E_0000,
            tables_address: 0x000E_0040,
        }
    }
}

/// An IO APIC (MADT entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct IoApic {
    /// IO APIC id.
    pub id: u8,
    /// Physical address of its registers.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub address: u32,
    /// GSI of its first input.
    pub gsi_base: u32,
    /// Number of inputs (redirection entries); not in the MADT, but GSIs are checked against it.
    #[cfg_attr(feature = "serde", serde(default = "IoApic::default_lines"))]
    pub lines: u8,
}

impl IoApic {
    /// The usual IOAPIC at 0xFEC00000 with 24 inputs from GSI 0.
    pub const fn standard() -> Self {
        IoApic {
            id: 0,
            address: 0xFEC0_0000,
            gsi_base: 0,
            lines: 24,
        }
    }

    #[cfg(feature = "serde")]
    fn default_lines() -> u8 {
        24
    }
}

/// Interrupt polarity (MPS INTI flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Polarity {
    /// As the bus specifies (ISA: active high).
    #[default]
    Conforming,
    /// Active high.
    ActiveHigh,
    /// Active low.
    ActiveLow,
}

/// Interrupt trigger mode (MPS INTI flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Trigger {
    /// As the bus specifies (ISA: edge).
    #[default]
    Conforming,
    /// Edge-triggered.
    Edge,
    /// Level-triggered.
    Level,
}

/// An ISA IRQ delivered on another GSI or with other flags (MADT interrupt source override).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct InterruptOverride {
    /// ISA IRQ 0-15.
    pub source_irq: u8,
    /// The GSI it arrives on.
    pub gsi: u32,
    /// Its polarity.
    #[cfg_attr(feature = "serde", serde(default))]
    pub polarity: Polarity,
    /// Its trigger mode.
    #[cfg_attr(feature = "serde", serde(default))]
    pub trigger: Trigger,
}

/// A local APIC LINT input wired to NMI on all processors (MADT local APIC NMI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct LocalApicNmi {
    /// LINT0 or LINT1.
    pub lint: u8,
    /// Its polarity.
    #[cfg_attr(feature = "serde", serde(default))]
    pub polarity: Polarity,
    /// Its trigger mode.
    #[cfg_attr(feature = "serde", serde(default))]
    pub trigger: Trigger,
}

/// The ACPI hardware model the FADT declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum AcpiHardware {
    /// PM1 event/control blocks, PM timer, GPE0 and an SCI, as on a PC chipset; adds a FACS
    /// and an `\_S5` object.
    Fixed(FixedHardware),
    /// No fixed hardware (FADT HW_REDUCED_ACPI): no SCI, no PM registers, no FACS.
    HardwareReduced,
}

/// IO-port fixed hardware registers, as a PC chipset's power-management function has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct FixedHardware {
    /// The SCI's ISA IRQ (an interrupt override may move it to another GSI).
    pub sci_irq: u16,
    /// SMI command port, 0 if ACPI is always enabled.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub smi_command_port: u32,
    /// Value written to the SMI command port to enable ACPI.
    pub acpi_enable: u8,
    /// Value written to the SMI command port to disable ACPI.
    pub acpi_disable: u8,
    /// PM1a event block (4 bytes: status, enable).
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub pm1a_event_port: u16,
    /// PM1a control block (2 bytes).
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub pm1a_control_port: u16,
    /// PM timer (4 bytes, 24-bit counter at 3.579545 MHz).
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub pm_timer_port: u16,
    /// GPE0 block: status half then enable half.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub gpe0_port: u16,
    /// GPE0 block length in bytes; even.
    pub gpe0_length: u8,
    /// SLP_TYP value that enters S5 (soft off); written to PM1a control with SLP_EN.
    pub s5_sleep_type: u8,
}

impl FixedHardware {
    /// The values of QEMU's q35 (ICH9 LPC power management at 0x600, SCI on IRQ 9).
    pub const fn ich9() -> Self {
        FixedHardware {
            sci_irq: 9,
            smi_command_port: 0xB2,
            acpi_enable: 0x02,
            acpi_disable: 0x03,
            pm1a_event_port: 0x600,
            pm1a_control_port: 0x604,
            pm_timer_port: 0x608,
            gpe0_port: 0x620,
            gpe0_length: 0x10,
            s5_sleep_type: 0,
        }
    }
}

/// The FADT reset register (an IO port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct ResetRegister {
    /// The IO port.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub port: u16,
    /// The value whose write resets the machine.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub value: u8,
}

/// FADT IA-PC boot architecture flags: which legacy devices exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BootArch {
    /// ISA devices not enumerated by ACPI may exist (LEGACY_DEVICES).
    pub legacy_devices: bool,
    /// An 8042 keyboard controller exists.
    pub i8042: bool,
    /// VGA must not be probed (VGA Not Present).
    pub vga_absent: bool,
    /// MSI must not be enabled (MSI Not Supported).
    pub msi_absent: bool,
    /// PCIe ASPM must not be enabled (PCIe ASPM Controls).
    pub aspm_absent: bool,
    /// No CMOS RTC (CMOS RTC Not Present).
    pub cmos_rtc_absent: bool,
}

impl BootArch {
    /// The IAPC_BOOT_ARCH field.
    pub fn bits(&self) -> u16 {
        [
            self.legacy_devices,
            self.i8042,
            self.vga_absent,
            self.msi_absent,
            self.aspm_absent,
            self.cmos_rtc_absent,
        ]
        .iter()
        .enumerate()
        .fold(0, |bits, (bit, &set)| bits | (u16::from(set) << bit))
    }
}

/// A range of addresses: `size` bytes from `base`. The last byte may be `u64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Window {
    /// First address.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub base: u64,
    /// Length in bytes.
    #[cfg_attr(feature = "serde", serde(with = "hex"))]
    pub size: u64,
}

impl Window {
    /// `size` bytes from `base`.
    pub const fn new(base: u64, size: u64) -> Self {
        Window { base, size }
    }

    /// The window from `first` to `last`, both included.
    pub const fn inclusive(first: u64, last: u64) -> Self {
        Window {
            base: first,
            size: last.wrapping_sub(first).wrapping_add(1),
        }
    }

    /// Its last address, or `None` if it is empty or runs past `u64::MAX`.
    pub fn last(&self) -> Option<u64> {
        self.size.checked_sub(1)?.checked_add(self.base)
    }

    /// Whether the two windows share an address (both must be valid).
    pub fn overlaps(&self, other: &Window) -> bool {
        match (self.last(), other.last()) {
            (Some(a), Some(b)) => self.base <= b && other.base <= a,
            _ => false,
        }
    }
}

/// Bus numbers decoded by a root bridge, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct BusRange {
    /// First bus.
    pub first: u8,
    /// Last bus.
    pub last: u8,
}

impl BusRange {
    /// Number of buses (0 if `last < first`).
    pub fn count(&self) -> u32 {
        (u32::from(self.last) + 1).saturating_sub(u32::from(self.first))
    }
}

/// A PCI interrupt pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
pub enum IntxPin {
    /// INTA.
    A,
    /// INTB.
    B,
    /// INTC.
    C,
    /// INTD.
    D,
}

impl IntxPin {
    /// All four pins, A to D.
    pub const ALL: [IntxPin; 4] = [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D];

    /// From a function's Interrupt Pin config register (1..=4); `None` for 0 (no pin)
    /// or reserved values.
    pub fn from_register(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::A),
            2 => Some(Self::B),
            3 => Some(Self::C),
            4 => Some(Self::D),
            _ => None,
        }
    }

    /// 0 for INTA .. 3 for INTD, as `_PRT` numbers them.
    pub fn index(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for IntxPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "INT{}#", (b'A' + self.index()) as char)
    }
}

/// Number of device slots on a bus.
pub const SLOTS: u8 = 32;

/// How the root bus's INTx pins reach GSIs (the `_PRT`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum IntxRouting {
    /// Slot `s` pin `p` (0-3) goes to GSI `first_gsi + (s + p) % count`.
    Swizzle {
        /// GSI of slot 0 pin A.
        first_gsi: u32,
        /// Number of GSIs the pins rotate through.
        count: u32,
    },
    /// One route for every slot 0-31 and pin A-D.
    Explicit(Vec<IntxRoute>),
}

impl Default for IntxRouting {
    fn default() -> Self {
        IntxRouting::Swizzle {
            first_gsi: 16,
            count: 8,
        }
    }
}

impl IntxRouting {
    /// The GSI of `slot`'s `pin`, if routed.
    pub fn gsi(&self, slot: u8, pin: IntxPin) -> Option<u32> {
        match self {
            IntxRouting::Swizzle { first_gsi, count } => {
                let offset = (u32::from(slot) + u32::from(pin.index())).checked_rem(*count)?;
                first_gsi.checked_add(offset)
            }
            IntxRouting::Explicit(routes) => routes
                .iter()
                .find(|r| r.slot == slot && r.pin == pin)
                .map(|r| r.gsi),
        }
    }
}

/// One `_PRT` entry: a slot's pin and its GSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct IntxRoute {
    /// Device slot, 0-31.
    pub slot: u8,
    /// The pin.
    pub pin: IntxPin,
    /// The GSI it is wired to.
    pub gsi: u32,
}

/// The PCIe features whose control `_OSC` grants to the OS (PCI Firmware spec, control field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct OscControl {
    /// PCIe native hot-plug.
    pub native_hotplug: bool,
    /// SHPC hot-plug.
    pub shpc_hotplug: bool,
    /// PCIe native power-management events.
    pub pme: bool,
    /// PCIe advanced error reporting.
    pub aer: bool,
    /// The PCIe capability structure.
    pub pcie_capability: bool,
    /// Latency tolerance reporting.
    pub ltr: bool,
}

impl Default for OscControl {
    /// Everything q35 grants when it does no ACPI hotplug: all but LTR.
    fn default() -> Self {
        OscControl {
            native_hotplug: true,
            shpc_hotplug: true,
            pme: true,
            aer: true,
            pcie_capability: true,
            ltr: false,
        }
    }
}

impl OscControl {
    /// Control-field bit numbers, in the order of the PCI Firmware spec.
    pub const NATIVE_HOTPLUG: u32 = 1 << 0;
    /// See [`OscControl::shpc_hotplug`].
    pub const SHPC_HOTPLUG: u32 = 1 << 1;
    /// See [`OscControl::pme`].
    pub const PME: u32 = 1 << 2;
    /// See [`OscControl::aer`].
    pub const AER: u32 = 1 << 3;
    /// See [`OscControl::pcie_capability`].
    pub const PCIE_CAPABILITY: u32 = 1 << 4;
    /// See [`OscControl::ltr`].
    pub const LTR: u32 = 1 << 5;

    /// The control bits granted: `_OSC` returns the OS's request ANDed with this.
    pub fn mask(&self) -> u32 {
        [
            (self.native_hotplug, Self::NATIVE_HOTPLUG),
            (self.shpc_hotplug, Self::SHPC_HOTPLUG),
            (self.pme, Self::PME),
            (self.aer, Self::AER),
            (self.pcie_capability, Self::PCIE_CAPABILITY),
            (self.ltr, Self::LTR),
        ]
        .iter()
        .filter(|(granted, _)| *granted)
        .fold(0, |mask, (_, bit)| mask | bit)
    }
}

/// A PCI host bridge: one `PNP0A08` device in the DSDT and one MCFG entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(Serialize, Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RootBridge {
    /// PCI segment group (MCFG, `_SEG`).
    pub segment: u16,
    /// Bus numbers it decodes (`_BBN` is the first).
    pub buses: BusRange,
    /// The ECAM area of `buses`: it starts at bus `buses.first` and holds 1 MiB per bus.
    pub ecam: Window,
    /// IO-port window forwarded to the bus (16-bit ports).
    #[cfg_attr(feature = "serde", serde(default))]
    pub io: Option<Window>,
    /// Memory window below 4 GiB.
    #[cfg_attr(feature = "serde", serde(default))]
    pub mem32: Option<Window>,
    /// Memory window anywhere in the 64-bit space.
    #[cfg_attr(feature = "serde", serde(default))]
    pub mem64: Option<Window>,
    /// The bridge also decodes the legacy config ports 0xCF8-0xCFF (segment 0 only).
    #[cfg_attr(feature = "serde", serde(default))]
    pub config_ports: bool,
    /// How its root bus's INTx pins reach GSIs.
    #[cfg_attr(feature = "serde", serde(default))]
    pub intx: IntxRouting,
    /// What `_OSC` grants the OS.
    #[cfg_attr(feature = "serde", serde(default))]
    pub osc: OscControl,
}

impl RootBridge {
    /// A q35-like root bridge: segment 0, buses 0-255, ECAM at 0xB0000000 (256 MiB), IO
    /// 0x0D00-0xFFFF, MEM32 0xC0000000-0xFEBFFFFF, MEM64 32 GiB from 4 GiB, config ports.
    pub fn q35() -> Self {
        RootBridge {
            segment: 0,
            buses: BusRange {
                first: 0,
                last: 255,
            },
            ecam: Window::new(0xB000_0000, 256 * ECAM_BYTES_PER_BUS),
            io: Some(Window::inclusive(0x0D00, 0xFFFF)),
            mem32: Some(Window::inclusive(0xC000_0000, 0xFEBF_FFFF)),
            mem64: Some(Window::new(0x1_0000_0000, 0x8_0000_0000)),
            config_ports: true,
            intx: IntxRouting::default(),
            osc: OscControl::default(),
        }
    }

    /// The MCFG base address: where bus 0 of this segment would start.
    pub fn mcfg_base(&self) -> Option<u64> {
        self.ecam
            .base
            .checked_sub(u64::from(self.buses.first) * ECAM_BYTES_PER_BUS)
    }
}

impl Default for Description {
    /// A q35-like PC: one CPU, one IOAPIC, q35's interrupt overrides and fixed hardware, and
    /// [`RootBridge::q35`].
    fn default() -> Self {
        let level_high = |irq| InterruptOverride {
            source_irq: irq,
            gsi: u32::from(irq),
            polarity: Polarity::ActiveHigh,
            trigger: Trigger::Level,
        };
        Description {
            layout: Layout::default(),
            cpu_apic_ids: vec![0],
            local_apic_address: 0xFEE0_0000,
            pcat_compat: true,
            io_apics: vec![IoApic::standard()],
            interrupt_overrides: vec![
                InterruptOverride {
                    source_irq: 0,
                    gsi: 2,
                    polarity: Polarity::Conforming,
                    trigger: Trigger::Conforming,
                },
                level_high(5),
                level_high(9),
                level_high(10),
                level_high(11),
            ],
            local_apic_nmi: Some(LocalApicNmi {
                lint: 1,
                polarity: Polarity::Conforming,
                trigger: Trigger::Conforming,
            }),
            hardware: AcpiHardware::Fixed(FixedHardware::ich9()),
            reset_register: Some(ResetRegister {
                port: 0xCF9,
                value: 0x0F,
            }),
            boot_arch: BootArch {
                i8042: true,
                ..BootArch::default()
            },
            root_bridges: vec![RootBridge::q35()],
        }
    }
}

impl Description {
    /// Checks everything the tables rely on: `Ok` exactly when [`crate::Tables::build`]
    /// succeeds, with the same error otherwise. Where the tables land (clear of the RSDP and
    /// of every MMIO range) depends on their lengths, so this builds them and drops them.
    pub fn validate(&self) -> Result<(), crate::Error> {
        crate::Tables::build(self).map(drop)
    }

    /// The DSDT device name of the root bridge at `index`: PCI0-PCIF, then PC10-PCFF.
    pub fn root_bridge_name(index: usize) -> Option<String> {
        match index {
            0..=0xF => Some(format!("PCI{index:X}")),
            0x10..=0xFF => Some(format!("PC{index:02X}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_decode_from_the_register() {
        assert_eq!(IntxPin::from_register(0), None);
        assert_eq!(IntxPin::from_register(2), Some(IntxPin::B));
        assert_eq!(IntxPin::from_register(5), None);
        assert_eq!(IntxPin::D.to_string(), "INTD#");
    }
}
