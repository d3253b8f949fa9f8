//! Shared by the integration tests: the topologies under test, access to ACPICA's tools, and
//! small independent decoders (acpiexec's object dumps, ACPI resource descriptors) so that a
//! test compares what ACPICA sees with the description, not with this crate's own encoder.

#![allow(dead_code)]

use acpi_tables::{
    AcpiHardware, BusRange, Description, InterruptOverride, IntxPin, IntxRoute, IntxRouting,
    IoApic, Layout, OscControl, Polarity, ResetRegister, RootBridge, Tables, Trigger, Window,
};
use std::path::Path;
use std::process::Command;

/// The default q35-like machine: one root bridge, fixed hardware.
pub fn one_root_bridge() -> Description {
    Description::default()
}

/// Two segments with different windows, two IO APICs, hardware-reduced ACPI, and a second
/// bridge whose buses start at 0x10 and whose 64-bit window ends at `u64::MAX`.
pub fn two_segments() -> Description {
    let explicit: Vec<IntxRoute> = (0..32u8)
        .flat_map(|slot| {
            IntxPin::ALL.into_iter().map(move |pin| IntxRoute {
                slot,
                pin,
                gsi: 24 + (u32::from(slot) * 3 + u32::from(pin.index())) % 8,
            })
        })
        .collect();
    Description {
        layout: Layout {
            rsdp_address: 0x000F_0000,
            tables_address: 0x0010_0000,
        },
        cpu_apic_ids: vec![0, 1, 4, 5],
        pcat_compat: false,
        io_apics: vec![
            IoApic::standard(),
            IoApic {
                id: 1,
                address: 0xFEC0_1000,
                gsi_base: 24,
                lines: 8,
            },
        ],
        interrupt_overrides: vec![InterruptOverride {
            source_irq: 0,
            gsi: 2,
            polarity: Polarity::ActiveHigh,
            trigger: Trigger::Edge,
        }],
        local_apic_nmi: None,
        hardware: AcpiHardware::HardwareReduced,
        reset_register: Some(ResetRegister {
            port: 0x0CF9,
            value: 0x06,
        }),
        root_bridges: vec![
            RootBridge {
                segment: 0,
                buses: BusRange {
                    first: 0,
                    last: 127,
                },
                ecam: Window::new(0xB000_0000, 128 << 20),
                io: Some(Window::inclusive(0x1000, 0x7FFF)),
                mem32: Some(Window::inclusive(0xC000_0000, 0xDFFF_FFFF)),
                mem64: Some(Window::new(0x40_0000_0000, 0x10_0000_0000)),
                config_ports: true,
                intx: IntxRouting::Swizzle {
                    first_gsi: 16,
                    count: 4,
                },
                osc: OscControl {
                    native_hotplug: false,
                    ..OscControl::default()
                },
            },
            RootBridge {
                segment: 1,
                buses: BusRange {
                    first: 0x10,
                    last: 0x1F,
                },
                ecam: Window::new(0xE100_0000, 16 << 20),
                io: Some(Window::inclusive(0x8000, 0xFFFF)),
                mem32: Some(Window::inclusive(0xE800_0000, 0xEFFF_FFFF)),
                mem64: Some(Window::new(0xFFFF_FFF0_0000_0000, 0x10_0000_0000)),
                config_ports: false,
                intx: IntxRouting::Explicit(explicit),
                osc: OscControl {
                    native_hotplug: false,
                    shpc_hotplug: false,
                    pme: false,
                    aer: true,
                    pcie_capability: true,
                    ltr: true,
                },
            },
        ],
        ..Description::default()
    }
}

pub fn topologies() -> Vec<(&'static str, Description)> {
    vec![
        ("one root bridge", one_root_bridge()),
        ("two segments", two_segments()),
    ]
}

/// Writes the tables of `d` into `dir`.
pub fn write(d: &Description, dir: &Path) -> Tables {
    let tables = Tables::build(d).expect("description builds");
    tables.write_files(dir).expect("tables written");
    tables
}

/// Whether `iasl` and `acpiexec` run. Without them the caller skips, saying so, unless
/// `UDRV_REQUIRE_ACPICA` is set (CI sets it, so a missing install fails there).
pub fn acpica_available(test: &str) -> bool {
    let runs = |tool: &str| {
        Command::new(tool)
            .arg("-v")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if runs("iasl") && runs("acpiexec") {
        return true;
    }
    if std::env::var_os("UDRV_REQUIRE_ACPICA").is_some() {
        panic!("{test}: ACPICA's iasl/acpiexec not found but UDRV_REQUIRE_ACPICA is set");
    }
    eprintln!(
        "SKIPPED {test}: ACPICA's iasl and acpiexec are not installed \
         (apt-get install acpica-tools); set UDRV_REQUIRE_ACPICA=1 to make this an error"
    );
    false
}

/// Runs a tool in `dir`, returning its exit success and stdout+stderr.
pub fn run(dir: &Path, tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Lines in which ACPICA reports a problem with the tables (its message prefixes).
pub fn acpica_complaints(output: &str) -> Vec<&str> {
    const PREFIXES: [&str; 6] = [
        "ACPI Error",
        "ACPI Exception",
        "ACPI Warning",
        "Firmware Error",
        "Firmware Warning",
        "ACPI BIOS",
    ];
    output
        .lines()
        .filter(|l| PREFIXES.iter().any(|p| l.contains(p)))
        .collect()
}

/// An ACPI object as acpiexec prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Integer(u64),
    Buffer(Vec<u8>),
    Package(Vec<Value>),
}

impl Value {
    pub fn integer(&self) -> u64 {
        match self {
            Value::Integer(v) => *v,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn buffer(&self) -> &[u8] {
        match self {
            Value::Buffer(b) => b,
            other => panic!("expected a buffer, got {other:?}"),
        }
    }

    pub fn package(&self) -> &[Value] {
        match self {
            Value::Package(p) => p,
            other => panic!("expected a package, got {other:?}"),
        }
    }
}

/// acpiexec refuses batch command lines longer than this.
const ACPIEXEC_COMMAND_LINE_MAX: usize = 1000;

/// Evaluates the commands with acpiexec over the table files in `dir` (several runs if the
/// commands do not fit one command line). Returns each run's output up to its first
/// evaluation (the table load) and one result per command, in order.
pub fn evaluate(dir: &Path, commands: &[String]) -> (Vec<String>, Vec<Result<Value, String>>) {
    let mut batches: Vec<Vec<&String>> = vec![Vec::new()];
    for command in commands {
        let current = batches.last_mut().unwrap();
        let len: usize = current.iter().map(|c| c.len() + 1).sum();
        if !current.is_empty() && len + command.len() > ACPIEXEC_COMMAND_LINE_MAX {
            batches.push(vec![command]);
        } else {
            current.push(command);
        }
    }
    let mut loads = Vec::new();
    let mut results = Vec::new();
    for batch in batches {
        let (load, mut batch_results) = evaluate_batch(dir, &batch);
        batch_results.resize(
            batch.len(),
            Err(format!("acpiexec did not run it:\n{load}")),
        );
        loads.push(load);
        results.extend(batch_results);
    }
    (loads, results)
}

fn evaluate_batch(dir: &Path, commands: &[&String]) -> (String, Vec<Result<Value, String>>) {
    let files = [
        "dsdt.dat", "facp.dat", "facs.dat", "apic.dat", "mcfg.dat", "xsdt.dat", "rsdp.dat",
    ];
    let line: Vec<&str> = commands.iter().map(|c| c.as_str()).collect();
    let mut args = vec!["-b".to_string(), line.join(";")];
    args.extend(
        files
            .iter()
            .filter(|f| dir.join(f).exists())
            .map(|f| f.to_string()),
    );
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, output) = run(dir, "acpiexec", &arg_refs);
    let mut sections = output.split("\nEvaluating ");
    let head = sections.next().unwrap_or_default().to_string();
    (head, sections.map(parse_section).collect())
}

fn parse_section(section: &str) -> Result<Value, String> {
    let mut lines = section.lines();
    for line in lines.by_ref() {
        if line.contains("returned object") {
            let rest: Vec<&str> = lines.collect();
            let mut pos = 0;
            return parse_value(&rest, &mut pos);
        }
        if line.contains("failed with status") || line.contains("Could not") {
            return Err(line.trim().to_string());
        }
    }
    Err(format!("no result in: {section}"))
}

fn hex_bytes(text: &str) -> Vec<u8> {
    // "0000: 10 00 ... // ascii": take the hex pairs between the offset and the comment.
    let data = text.split("//").next().unwrap_or_default();
    let data = data.split_once(':').map(|(_, d)| d).unwrap_or(data);
    data.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn parse_value(lines: &[&str], pos: &mut usize) -> Result<Value, String> {
    let line = lines
        .get(*pos)
        .ok_or_else(|| "output ended early".to_string())?
        .trim();
    *pos += 1;
    if let Some(rest) = line.strip_prefix("[Integer] = ") {
        let hex = rest.split_whitespace().next().unwrap_or_default();
        return u64::from_str_radix(hex, 16)
            .map(Value::Integer)
            .map_err(|e| format!("{line}: {e}"));
    }
    if let Some(rest) = line.strip_prefix("[Buffer] Length ") {
        let (len, tail) = rest
            .split_once('=')
            .ok_or(format!("odd buffer line {line}"))?;
        let len = usize::from_str_radix(len.trim(), 16).map_err(|e| format!("{line}: {e}"))?;
        let mut bytes = if tail.trim().is_empty() {
            Vec::new()
        } else {
            hex_bytes(tail)
        };
        while bytes.len() < len {
            let next = lines.get(*pos).ok_or("buffer dump ended early")?;
            *pos += 1;
            bytes.extend(hex_bytes(next));
        }
        return Ok(Value::Buffer(bytes));
    }
    if let Some(rest) = line.strip_prefix("[Package] Contains ") {
        let count: usize = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or(format!("odd package line {line}"))?;
        let mut elements = Vec::with_capacity(count);
        for _ in 0..count {
            elements.push(parse_value(lines, pos)?);
        }
        return Ok(Value::Package(elements));
    }
    Err(format!("unrecognised acpiexec object line: {line}"))
}

/// A resource descriptor from a `_CRS` buffer, decoded by the ACPI 6.5 section 6.4 layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Word/DWord/QWord address space: type 0 memory, 1 IO, 2 bus number.
    AddressSpace {
        resource_type: u8,
        consumer: bool,
        min_fixed: bool,
        max_fixed: bool,
        type_flags: u8,
        granularity: u64,
        min: u64,
        max: u64,
        translation: u64,
        length: u64,
    },
    /// IO port descriptor (small).
    IoPort {
        decode16: bool,
        min: u16,
        max: u16,
        alignment: u8,
        length: u8,
    },
}

/// Decodes a resource template up to its end tag; panics on anything malformed.
pub fn decode_resources(buf: &[u8]) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let tag = buf[i];
        if tag & 0x80 == 0 {
            let kind = (tag >> 3) & 0xF;
            let len = usize::from(tag & 7);
            let body = &buf[i + 1..i + 1 + len];
            match kind {
                0xF => {
                    assert_eq!(i + 2, buf.len(), "end tag must close the buffer");
                    return out;
                }
                0x8 => out.push(Resource::IoPort {
                    decode16: body[0] & 1 == 1,
                    min: u16::from_le_bytes([body[1], body[2]]),
                    max: u16::from_le_bytes([body[3], body[4]]),
                    alignment: body[5],
                    length: body[6],
                }),
                other => panic!("unexpected small descriptor {other:#x}"),
            }
            i += 1 + len;
        } else {
            let len = usize::from(u16::from_le_bytes([buf[i + 1], buf[i + 2]]));
            let body = &buf[i + 3..i + 3 + len];
            let width = match tag {
                0x88 => 2,
                0x87 => 4,
                0x8A => 8,
                other => panic!("unexpected large descriptor {other:#x}"),
            };
            assert_eq!(len, 3 + 5 * width, "descriptor length");
            let field = |n: usize| {
                let mut v = [0u8; 8];
                v[..width].copy_from_slice(&body[3 + n * width..3 + (n + 1) * width]);
                u64::from_le_bytes(v)
            };
            out.push(Resource::AddressSpace {
                resource_type: body[0],
                consumer: body[1] & 1 == 1,
                min_fixed: body[1] & 4 != 0,
                max_fixed: body[1] & 8 != 0,
                type_flags: body[2],
                granularity: field(0),
                min: field(1),
                max: field(2),
                translation: field(3),
                length: field(4),
            });
            i += 3 + len;
        }
    }
}

/// The address-space resource a window should appear as: fixed, producer unless `consumer`.
pub fn expected_space(resource_type: u8, type_flags: u8, w: Window, consumer: bool) -> Resource {
    Resource::AddressSpace {
        resource_type,
        consumer,
        min_fixed: true,
        max_fixed: true,
        type_flags,
        granularity: 0,
        min: w.base,
        max: w.base + (w.size - 1),
        translation: 0,
        length: w.size,
    }
}
