//! Device names from the PCI ID database, looked up the way `lspci -nn` does (pciutils
//! lib/names.c) so that the same pci.ids gives the same names: the system's pci.ids when
//! present, else the copy embedded by the `pci-ids` crate.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use super::{PciClass, SysfsRoot};

/// Where pciutils (Debian, `/usr/share/misc`) and hwdata (Fedora, Arch) keep pci.ids,
/// in the order they are tried.
pub const SYSTEM_PCI_IDS: &[&str] = &["usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids"];

/// The numbers that names are looked up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID (0 when the device has none).
    pub subsystem_vendor: u16,
    /// Subsystem device ID.
    pub subsystem_device: u16,
    /// Class code.
    pub class: PciClass,
}

/// A device's names; `None` where `lspci -nn` prints only a number.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceNames {
    /// `Intel Corporation`.
    pub vendor: Option<String>,
    /// `82540EM Gigabit Ethernet Controller`.
    pub device: Option<String>,
    /// The subsystem vendor's name (lspci's `SVendor`).
    pub subsystem_vendor: Option<String>,
    /// The subsystem's name (lspci's `SDevice`).
    pub subsystem: Option<String>,
    /// `Ethernet controller` (the subclass name, or the base class name).
    pub class: Option<String>,
    /// The programming interface's name, e.g. `AHCI 1.0`.
    pub prog_if: Option<String>,
}

/// Which database the names came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameSource {
    /// A pci.ids file (its path).
    File(PathBuf),
    /// The `pci-ids` crate's embedded database.
    Embedded,
}

impl std::fmt::Display for NameSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameSource::File(path) => write!(f, "{}", path.display()),
            NameSource::Embedded => f.write_str("embedded pci-ids database"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Span {
    start: u32,
    end: u32,
}

/// A parsed pci.ids file. Names are kept as spans of the file's text: one allocation
/// for the whole file instead of one per name.
#[derive(Debug, Default)]
pub struct PciIds {
    text: String,
    vendors: HashMap<u16, Span>,
    devices: HashMap<(u16, u16), Span>,
    subsystems: HashMap<(u16, u16, u16, u16), Span>,
    generic_subsystems: HashMap<(u16, u16), Span>,
    classes: HashMap<u8, Span>,
    subclasses: HashMap<(u8, u8), Span>,
    prog_ifs: HashMap<(u8, u8, u8), Span>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Vendor(u16, bool),
    Device(u16, u16, bool),
    GenericSubsystem(u16, bool),
    Class(u8),
    Subclass(u8, u8),
    Unknown,
}

fn hex_prefix(text: &str, digits: usize) -> Option<u32> {
    let head = text.get(..digits)?;
    if !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u32::from_str_radix(head, 16).ok()?;
    // pciutils requires a blank after the number.
    match text.as_bytes().get(digits) {
        Some(b' ' | b'\t') | None => Some(value),
        _ => None,
    }
}

impl PciIds {
    /// Parses pci.ids text. With `vendors`, only those vendors' entries (and all
    /// classes) are indexed: `udrv list` needs a handful of vendors, not 2,500.
    /// Malformed lines are skipped (pciutils rejects the whole file; we keep the rest).
    pub fn parse(text: String, vendors: Option<&HashSet<u16>>) -> Self {
        let mut ids = PciIds::default();
        let wanted = |v: u16| vendors.is_none_or(|set| set.contains(&v));
        let mut block = Block::None;
        let mut offset = 0usize;
        for raw in text.split_inclusive('\n') {
            let line_start = offset;
            offset += raw.len();
            let mut line = raw.trim_end_matches(['\n', '\r']);
            // pciutils strips exactly one trailing blank.
            if let Some(stripped) = line.strip_suffix([' ', '\t']) {
                line = stripped;
            }
            let first = line.trim_start_matches([' ', '\t']);
            if first.is_empty() || first.starts_with('#') {
                continue;
            }
            let body = line.trim_start_matches('\t');
            let nest = line.len() - body.len();
            let bytes = body.as_bytes();
            // (entry, width of the id text before the name)
            let entry = match nest {
                0 if bytes.len() > 1 && bytes[0] == b'C' && bytes[1] == b' ' => {
                    hex_prefix(&body[2..], 2).map(|c| {
                        block = Block::Class(c as u8);
                        (Entry::Class(c as u8), 4)
                    })
                }
                0 if bytes.len() > 1 && bytes[0] == b'S' && bytes[1] == b' ' => {
                    block = match hex_prefix(&body[2..], 4) {
                        Some(v) => Block::GenericSubsystem(v as u16, wanted(v as u16)),
                        None => Block::Unknown,
                    };
                    None
                }
                0 if bytes.len() > 1 && bytes[0].is_ascii_uppercase() && bytes[1] == b' ' => {
                    block = Block::Unknown;
                    None
                }
                0 => match hex_prefix(body, 4) {
                    Some(v) => {
                        let keep = wanted(v as u16);
                        block = Block::Vendor(v as u16, keep);
                        keep.then_some((Entry::Vendor(v as u16), 4))
                    }
                    None => {
                        block = Block::Unknown;
                        None
                    }
                },
                1 => match block {
                    Block::Vendor(v, keep) | Block::Device(v, _, keep) => {
                        if !keep {
                            continue;
                        }
                        hex_prefix(body, 4).map(|d| {
                            block = Block::Device(v, d as u16, true);
                            (Entry::Device(v, d as u16), 4)
                        })
                    }
                    Block::GenericSubsystem(sv, keep) => {
                        if !keep {
                            continue;
                        }
                        hex_prefix(body, 4).map(|sd| (Entry::GenericSubsystem(sv, sd as u16), 4))
                    }
                    Block::Class(c) | Block::Subclass(c, _) => hex_prefix(body, 2).map(|s| {
                        block = Block::Subclass(c, s as u8);
                        (Entry::Subclass(c, s as u8), 2)
                    }),
                    Block::None | Block::Unknown => None,
                },
                2 => match block {
                    Block::Device(v, d, true) => {
                        match (
                            hex_prefix(body, 4),
                            body.get(5..).and_then(|r| hex_prefix(r, 4)),
                        ) {
                            (Some(sv), Some(sd)) => {
                                Some((Entry::Subsystem(v, d, sv as u16, sd as u16), 9))
                            }
                            _ => None,
                        }
                    }
                    Block::Subclass(c, s) => {
                        hex_prefix(body, 2).map(|p| (Entry::ProgIf(c, s, p as u8), 2))
                    }
                    _ => None,
                },
                _ => None,
            };
            let Some((entry, id_width)) = entry else {
                continue;
            };
            let name = body[id_width..].trim_start_matches([' ', '\t']);
            if name.is_empty() {
                continue;
            }
            let start = line_start + (name.as_ptr() as usize - raw.as_ptr() as usize);
            let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(start + name.len()))
            else {
                break;
            };
            let span = Span { start, end };
            match entry {
                Entry::Vendor(v) => ids.vendors.entry(v).or_insert(span),
                Entry::Device(v, d) => ids.devices.entry((v, d)).or_insert(span),
                Entry::Subsystem(v, d, sv, sd) => {
                    ids.subsystems.entry((v, d, sv, sd)).or_insert(span)
                }
                Entry::GenericSubsystem(sv, sd) => {
                    ids.generic_subsystems.entry((sv, sd)).or_insert(span)
                }
                Entry::Class(c) => ids.classes.entry(c).or_insert(span),
                Entry::Subclass(c, s) => ids.subclasses.entry((c, s)).or_insert(span),
                Entry::ProgIf(c, s, p) => ids.prog_ifs.entry((c, s, p)).or_insert(span),
            };
        }
        ids.text = text;
        ids
    }

    fn name(&self, span: Option<&Span>) -> Option<&str> {
        span.and_then(|s| self.text.get(s.start as usize..s.end as usize))
    }
}

enum Entry {
    Vendor(u16),
    Device(u16, u16),
    Subsystem(u16, u16, u16, u16),
    GenericSubsystem(u16, u16),
    Class(u8),
    Subclass(u8, u8),
    ProgIf(u8, u8, u8),
}

/// The single-id lookups that lspci's naming rules are built from.
trait IdLookup {
    fn vendor(&self, v: u16) -> Option<&str>;
    fn device(&self, v: u16, d: u16) -> Option<&str>;
    fn subsystem(&self, v: u16, d: u16, sv: u16, sd: u16) -> Option<&str>;
    fn generic_subsystem(&self, sv: u16, sd: u16) -> Option<&str>;
    fn class(&self, c: u8) -> Option<&str>;
    fn subclass(&self, c: u8, s: u8) -> Option<&str>;
    fn prog_if(&self, c: u8, s: u8, p: u8) -> Option<&str>;
}

impl IdLookup for PciIds {
    fn vendor(&self, v: u16) -> Option<&str> {
        self.name(self.vendors.get(&v))
    }
    fn device(&self, v: u16, d: u16) -> Option<&str> {
        self.name(self.devices.get(&(v, d)))
    }
    fn subsystem(&self, v: u16, d: u16, sv: u16, sd: u16) -> Option<&str> {
        self.name(self.subsystems.get(&(v, d, sv, sd)))
    }
    fn generic_subsystem(&self, sv: u16, sd: u16) -> Option<&str> {
        self.name(self.generic_subsystems.get(&(sv, sd)))
    }
    fn class(&self, c: u8) -> Option<&str> {
        self.name(self.classes.get(&c))
    }
    fn subclass(&self, c: u8, s: u8) -> Option<&str> {
        self.name(self.subclasses.get(&(c, s)))
    }
    fn prog_if(&self, c: u8, s: u8, p: u8) -> Option<&str> {
        self.name(self.prog_ifs.get(&(c, s, p)))
    }
}

/// The `pci-ids` crate's database (no generic `S` subsystem blocks).
struct Embedded;

impl IdLookup for Embedded {
    fn vendor(&self, v: u16) -> Option<&str> {
        use pci_ids::FromId;
        pci_ids::Vendor::from_id(v).map(|x| x.name())
    }
    fn device(&self, v: u16, d: u16) -> Option<&str> {
        pci_ids::Device::from_vid_pid(v, d).map(|x| x.name())
    }
    fn subsystem(&self, v: u16, d: u16, sv: u16, sd: u16) -> Option<&str> {
        pci_ids::Device::from_vid_pid(v, d)?
            .subsystems()
            .find(|s| s.subvendor() == sv && s.subdevice() == sd)
            .map(|s| s.name())
    }
    fn generic_subsystem(&self, _sv: u16, _sd: u16) -> Option<&str> {
        None
    }
    fn class(&self, c: u8) -> Option<&str> {
        use pci_ids::FromId;
        pci_ids::Class::from_id(c).map(|x| x.name())
    }
    fn subclass(&self, c: u8, s: u8) -> Option<&str> {
        pci_ids::Subclass::from_cid_sid(c, s).map(|x| x.name())
    }
    fn prog_if(&self, c: u8, s: u8, p: u8) -> Option<&str> {
        pci_ids::Subclass::from_cid_sid(c, s)?
            .prog_ifs()
            .find(|x| x.id() == p)
            .map(|x| x.name())
    }
}

/// The PCI ID database in use: a pci.ids file or the embedded copy.
#[derive(Debug)]
pub struct NameDatabase {
    source: NameSource,
    file: Option<PciIds>,
}

impl NameDatabase {
    /// The system's pci.ids under `root` (see [`SYSTEM_PCI_IDS`]), else the embedded
    /// database. `vendors` limits what is indexed (see [`PciIds::parse`]); pass every
    /// vendor and subsystem vendor you will ask about.
    pub fn load(root: &SysfsRoot, vendors: Option<&HashSet<u16>>) -> Self {
        for candidate in SYSTEM_PCI_IDS {
            let path = root.join(candidate);
            if let Ok(db) = Self::from_file(&path, vendors) {
                return db;
            }
        }
        Self::embedded()
    }

    /// A specific pci.ids file.
    pub fn from_file(path: &Path, vendors: Option<&HashSet<u16>>) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        // pci.ids is UTF-8 today; an older Latin-1 file still parses, with its odd
        // bytes replaced.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok(Self {
            source: NameSource::File(path.to_path_buf()),
            file: Some(PciIds::parse(text, vendors)),
        })
    }

    /// The `pci-ids` crate's embedded database.
    pub fn embedded() -> Self {
        Self {
            source: NameSource::Embedded,
            file: None,
        }
    }

    /// Where the names come from.
    pub fn source(&self) -> &NameSource {
        &self.source
    }

    fn lookup(&self) -> &dyn IdLookup {
        match &self.file {
            Some(ids) => ids,
            None => &Embedded,
        }
    }

    /// The vendor's name (`lspci -nn`'s vendor part).
    pub fn vendor(&self, vendor: u16) -> Option<String> {
        self.lookup().vendor(vendor).map(str::to_owned)
    }

    /// The device's name.
    pub fn device(&self, vendor: u16, device: u16) -> Option<String> {
        self.lookup().device(vendor, device).map(str::to_owned)
    }

    /// The class name: the subclass's name, else the base class's name (lspci then
    /// prints the full number, e.g. `Unassigned class [ffff]`), else `None`.
    pub fn class(&self, class: PciClass) -> Option<String> {
        let db = self.lookup();
        db.subclass(class.base(), class.sub())
            .or_else(|| db.class(class.base()))
            .map(str::to_owned)
    }

    /// The programming interface's name, with lspci's composed names for IDE.
    pub fn prog_if(&self, class: PciClass) -> Option<String> {
        let (c, s, p) = (class.base(), class.sub(), class.prog_if());
        if let Some(name) = self.lookup().prog_if(c, s, p) {
            return Some(name.to_owned());
        }
        if class.class_and_sub() == 0x0101 && p & 0x70 == 0 {
            let bits = [
                (0x80, "Master"),
                (0x08, "SecP"),
                (0x04, "SecO"),
                (0x02, "PriP"),
                (0x01, "PriO"),
            ];
            let parts: Vec<&str> = bits
                .iter()
                .filter(|(bit, _)| p & bit != 0)
                .map(|(_, name)| *name)
                .collect();
            return (!parts.is_empty()).then(|| parts.join(" "));
        }
        None
    }

    /// The subsystem's name: the per-device entry, else a generic `S` entry, else the
    /// device's own name when the subsystem ids equal the device ids.
    pub fn subsystem(&self, ids: &DeviceIds) -> Option<String> {
        let db = self.lookup();
        let (v, d, sv, sd) = (
            ids.vendor,
            ids.device,
            ids.subsystem_vendor,
            ids.subsystem_device,
        );
        let per_device = if v > 0 && d > 0 {
            db.subsystem(v, d, sv, sd)
        } else {
            None
        };
        per_device
            .or_else(|| db.generic_subsystem(sv, sd))
            .or_else(|| (v == sv && d == sd).then(|| db.device(v, d)).flatten())
            .map(str::to_owned)
    }

    /// All of a device's names. Subsystem names are `None` when lspci shows no
    /// subsystem (subsystem vendor 0 or ffff).
    pub fn describe(&self, ids: &DeviceIds) -> DeviceNames {
        let has_subsystem = ids.subsystem_vendor != 0 && ids.subsystem_vendor != 0xffff;
        DeviceNames {
            vendor: self.vendor(ids.vendor),
            device: self.device(ids.vendor, ids.device),
            subsystem_vendor: has_subsystem
                .then(|| self.vendor(ids.subsystem_vendor))
                .flatten(),
            subsystem: has_subsystem.then(|| self.subsystem(ids)).flatten(),
            class: self.class(ids.class),
            prog_if: self.prog_if(ids.class),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment line
8086  Intel Corporation
\t100e  82540EM Gigabit Ethernet Controller
\t\t8086 001e  PRO/1000 MT Desktop Adapter
\t2922  82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode]
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
\t1045  Virtio 1.0 memory balloon
\t1050  Virtio 1.0 GPU\t
\t\t1af4 1100  QEMU Virtual Machine
1234  Unwanted Vendor
\tabcd  Unwanted Device

C 01  Mass storage controller
\t01  IDE interface
\t\t8a  ISA Compatibility mode controller, supports both channels switched to PCI native mode, supports bus mastering
\t06  SATA controller
\t\t01  AHCI 1.0
C 02  Network controller
\t00  Ethernet controller
C ff  Unassigned class
X 99  some future block
\t00  nested entry ignored
S 1af4
\t0004  Generic Subsystem Four
";

    fn ids(v: u16, d: u16, sv: u16, sd: u16, class: u32) -> DeviceIds {
        DeviceIds {
            vendor: v,
            device: d,
            subsystem_vendor: sv,
            subsystem_device: sd,
            class: PciClass(class),
        }
    }

    fn db(vendors: Option<&HashSet<u16>>) -> NameDatabase {
        NameDatabase {
            source: NameSource::Embedded,
            file: Some(PciIds::parse(SAMPLE.to_string(), vendors)),
        }
    }

    #[test]
    fn names_follow_lspci_rules() {
        let db = db(None);
        let e1000 = db.describe(&ids(0x8086, 0x100e, 0x8086, 0x001e, 0x020000));
        assert_eq!(e1000.vendor.as_deref(), Some("Intel Corporation"));
        assert_eq!(
            e1000.device.as_deref(),
            Some("82540EM Gigabit Ethernet Controller")
        );
        assert_eq!(e1000.subsystem_vendor.as_deref(), Some("Intel Corporation"));
        assert_eq!(
            e1000.subsystem.as_deref(),
            Some("PRO/1000 MT Desktop Adapter")
        );
        assert_eq!(e1000.class.as_deref(), Some("Ethernet controller"));
        assert_eq!(e1000.prog_if, None);

        // Subsystem equal to the device: the device's name, as lspci prints.
        let balloon = db.describe(&ids(0x1af4, 0x1045, 0x1af4, 0x1045, 0xff0000));
        assert_eq!(
            balloon.subsystem.as_deref(),
            Some("Virtio 1.0 memory balloon")
        );
        // Base class only: lspci prints "Unassigned class [ff00]".
        assert_eq!(balloon.class.as_deref(), Some("Unassigned class"));

        // Generic S block.
        let generic = db.describe(&ids(0x1af4, 0x1041, 0x1af4, 0x0004, 0x020000));
        assert_eq!(generic.subsystem.as_deref(), Some("Generic Subsystem Four"));

        // One trailing tab is stripped, like pciutils.
        assert_eq!(db.device(0x1af4, 0x1050).as_deref(), Some("Virtio 1.0 GPU"));

        // Unknown everything: None where lspci prints a number.
        let unknown = db.describe(&ids(0x8086, 0x0d57, 0, 0, 0x600000));
        assert_eq!(unknown.vendor.as_deref(), Some("Intel Corporation"));
        assert_eq!(unknown.device, None);
        assert_eq!(unknown.subsystem_vendor, None);
        assert_eq!(unknown.subsystem, None);
        assert_eq!(unknown.class, None);
        let no_vendor = db.describe(&ids(0x5555, 1, 0x5555, 9, 0x020000));
        assert_eq!(
            (no_vendor.vendor, no_vendor.device, no_vendor.subsystem),
            (None, None, None)
        );
    }

    #[test]
    fn prog_if_names_including_composed_ide() {
        let db = db(None);
        assert_eq!(db.prog_if(PciClass(0x010601)).as_deref(), Some("AHCI 1.0"));
        assert_eq!(
            db.prog_if(PciClass(0x01018a)).as_deref(),
            Some("ISA Compatibility mode controller, supports both channels switched to PCI native mode, supports bus mastering")
        );
        // piix3-ide in legacy mode: 0x80, not in the file: composed like lspci.
        assert_eq!(db.prog_if(PciClass(0x010180)).as_deref(), Some("Master"));
        assert_eq!(
            db.prog_if(PciClass(0x01018f)).as_deref(),
            Some("Master SecP SecO PriP PriO")
        );
        assert_eq!(db.prog_if(PciClass(0x010100)), None);
    }

    #[test]
    fn vendor_filter_skips_other_vendors_but_keeps_classes() {
        let wanted: HashSet<u16> = [0x8086].into();
        let db = db(Some(&wanted));
        assert_eq!(db.vendor(0x8086).as_deref(), Some("Intel Corporation"));
        assert_eq!(db.vendor(0x1234), None);
        assert_eq!(db.device(0x1234, 0xabcd), None);
        assert_eq!(db.device(0x1af4, 0x1041), None);
        assert_eq!(
            db.class(PciClass(0x010601)).as_deref(),
            Some("SATA controller")
        );
    }

    #[test]
    fn embedded_database_knows_the_rig_devices() {
        let db = NameDatabase::embedded();
        assert_eq!(db.vendor(0x8086).as_deref(), Some("Intel Corporation"));
        assert_eq!(
            db.device(0x8086, 0x100e).as_deref(),
            Some("82540EM Gigabit Ethernet Controller")
        );
        assert_eq!(
            db.class(PciClass(0x020000)).as_deref(),
            Some("Ethernet controller")
        );
        assert_eq!(db.source(), &NameSource::Embedded);
    }

    #[test]
    fn load_falls_back_to_embedded_and_prefers_misc_over_hwdata() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(dir.path());
        assert_eq!(
            NameDatabase::load(&root, None).source(),
            &NameSource::Embedded
        );
        std::fs::create_dir_all(dir.path().join("usr/share/hwdata")).unwrap();
        std::fs::write(
            dir.path().join("usr/share/hwdata/pci.ids"),
            "8086  From hwdata\n",
        )
        .unwrap();
        let db = NameDatabase::load(&root, None);
        assert_eq!(db.vendor(0x8086).as_deref(), Some("From hwdata"));
        std::fs::create_dir_all(dir.path().join("usr/share/misc")).unwrap();
        std::fs::write(
            dir.path().join("usr/share/misc/pci.ids"),
            "8086  From misc\n",
        )
        .unwrap();
        let db = NameDatabase::load(&root, None);
        assert_eq!(db.vendor(0x8086).as_deref(), Some("From misc"));
        assert!(db.source().to_string().ends_with("usr/share/misc/pci.ids"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_text_never_panics(text in "[0-9a-fCSX \t\n#]{0,200}") {
            let db = NameDatabase { source: NameSource::Embedded, file: Some(PciIds::parse(text, None)) };
            let _ = db.describe(&ids(0x0001, 0x0002, 0x0001, 0x0002, 0x010101));
        }
    }
}
