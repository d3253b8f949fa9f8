//! Building every table for a description and laying them out at guest physical addresses.

use crate::description::{validate, AcpiHardware, Description, Window};
use crate::{dsdt, facs, fadt, madt, mcfg, rsdp, xsdt, Error};
use std::path::{Path, PathBuf};

/// Tables are placed on 8-byte boundaries.
const TABLE_ALIGN: u64 = 8;

/// One of the tables this crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// Root System Description Pointer.
    Rsdp,
    /// Extended System Description Table.
    Xsdt,
    /// Fixed ACPI Description Table.
    Fadt,
    /// Firmware ACPI Control Structure.
    Facs,
    /// Differentiated System Description Table.
    Dsdt,
    /// Multiple APIC Description Table.
    Madt,
    /// PCI Express memory-mapped configuration space (ECAM) table.
    Mcfg,
}

impl TableKind {
    /// The signature in the table's header ("RSD PTR " for the RSDP).
    pub const fn signature(self) -> &'static str {
        match self {
            TableKind::Rsdp => "RSD PTR ",
            TableKind::Xsdt => "XSDT",
            TableKind::Fadt => "FACP",
            TableKind::Facs => "FACS",
            TableKind::Dsdt => "DSDT",
            TableKind::Madt => "APIC",
            TableKind::Mcfg => "MCFG",
        }
    }

    /// The file name ACPICA's acpixtract gives this table.
    pub const fn file_name(self) -> &'static str {
        match self {
            TableKind::Rsdp => "rsdp.dat",
            TableKind::Xsdt => "xsdt.dat",
            TableKind::Fadt => "facp.dat",
            TableKind::Facs => "facs.dat",
            TableKind::Dsdt => "dsdt.dat",
            TableKind::Madt => "apic.dat",
            TableKind::Mcfg => "mcfg.dat",
        }
    }
}

/// A table's bytes and the guest physical address they belong at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    kind: TableKind,
    address: u64,
    bytes: Vec<u8>,
}

impl Table {
    /// Which table it is.
    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// Guest physical address of the first byte.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The table's bytes, checksum included.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// All tables for one description, with consistent pointers: RSDP -> XSDT -> FADT/MADT/MCFG,
/// FADT -> DSDT (and FACS with fixed hardware).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    /// RSDP first, then in address order.
    tables: Vec<Table>,
}

/// Hands out addresses from `tables_address` upwards.
struct Cursor {
    next: u64,
}

impl Cursor {
    fn place(&mut self, len: usize, align: u64) -> Result<u64, Error> {
        let overflow = || {
            Error::invalid(
                "layout tables_address",
                "the tables run past the end of the 64-bit address space; place them lower",
            )
        };
        let start = self
            .next
            .checked_next_multiple_of(align)
            .ok_or_else(overflow)?;
        self.next = start.checked_add(len as u64).ok_or_else(overflow)?;
        Ok(start)
    }
}

impl Tables {
    /// Validates `description` and builds its tables.
    pub fn build(description: &Description) -> Result<Tables, Error> {
        let d = description;
        validate::description(d)?;
        let dsdt = dsdt::build(d)?;
        let madt = madt::build(d);
        let mcfg = mcfg::build(d);
        let fixed = matches!(d.hardware, AcpiHardware::Fixed(_));

        let mut cursor = Cursor {
            next: d.layout.tables_address,
        };
        let xsdt_at = cursor.place(xsdt::len(3), TABLE_ALIGN)?;
        let fadt_at = cursor.place(fadt::len(), TABLE_ALIGN)?;
        let facs_at = if fixed {
            Some(cursor.place(facs::len(), facs::ALIGN)?)
        } else {
            None
        };
        let dsdt_at = cursor.place(dsdt.len(), TABLE_ALIGN)?;
        let madt_at = cursor.place(madt.len(), TABLE_ALIGN)?;
        let mcfg_at = cursor.place(mcfg.len(), TABLE_ALIGN)?;
        let span = Window::new(
            d.layout.tables_address,
            cursor.next - d.layout.tables_address,
        );
        validate::placement(d, rsdp::LEN as u64, span)?;

        let mut tables = vec![
            Table {
                kind: TableKind::Rsdp,
                address: d.layout.rsdp_address,
                bytes: rsdp::build(xsdt_at),
            },
            Table {
                kind: TableKind::Xsdt,
                address: xsdt_at,
                bytes: xsdt::build(&[fadt_at, madt_at, mcfg_at]),
            },
            Table {
                kind: TableKind::Fadt,
                address: fadt_at,
                bytes: fadt::build(d, dsdt_at, facs_at),
            },
        ];
        if let Some(address) = facs_at {
            tables.push(Table {
                kind: TableKind::Facs,
                address,
                bytes: facs::build(),
            });
        }
        for (kind, address, bytes) in [
            (TableKind::Dsdt, dsdt_at, dsdt),
            (TableKind::Madt, madt_at, madt),
            (TableKind::Mcfg, mcfg_at, mcfg),
        ] {
            tables.push(Table {
                kind,
                address,
                bytes,
            });
        }
        Ok(Tables { tables })
    }

    /// The table of `kind`, if built (the FACS exists only with fixed hardware).
    pub fn get(&self, kind: TableKind) -> Option<&Table> {
        self.tables.iter().find(|t| t.kind == kind)
    }

    /// Every table, RSDP first.
    pub fn iter(&self) -> impl Iterator<Item = &Table> {
        self.tables.iter()
    }

    /// Guest physical address of the RSDP, the one address the OS must be told or find.
    pub fn rsdp_address(&self) -> u64 {
        self.tables[0].address
    }

    /// Writes each table to `dir` (created if missing) under its acpixtract name; returns the
    /// paths written.
    pub fn write_files(&self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut written = Vec::new();
        for table in &self.tables {
            let path = dir.join(table.kind.file_name());
            std::fs::write(&path, &table.bytes).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}
