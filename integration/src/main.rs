//! `rig-tests`: the rig's test and benchmark runner. Inside the rig guest it runs the
//! selected tests, each in a child process, and reports on a serial port; on the host it
//! only makes the patterned disk images.

use udrv_integration::{disk_pattern, harness, rig, tests};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: rig-tests list [--bench] [FILTER...]
       rig-tests run [--bench] [--out PATH] [FILTER...]   (rig guest only)
       rig-tests exec NAME                                (rig guest only)
       rig-tests mkdisk PATH SECTORS

Runs udrv's tests inside the QEMU rig (see `integration/rig --help`). FILTERs select the
tests whose names contain any of them; none selects all. Results go to --out (default
stdout) as `@@rig` lines that the host side reads.";

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("rig-tests: {e:?}");
        std::process::exit(2);
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    let bench = rest.iter().any(|a| a == "--bench");
    let mut out_path = "-".to_string();
    let mut filters = Vec::new();
    let mut it = rest.iter().filter(|a| *a != "--bench");
    while let Some(a) = it.next() {
        if a == "--out" {
            out_path = it.next().context("--out needs a path")?.clone();
        } else {
            filters.push(a.clone());
        }
    }
    let all = if bench {
        tests::benches()
    } else {
        tests::all()
    };
    match cmd.as_str() {
        "list" => {
            for t in harness::select(&all, &filters) {
                println!("{}", t.name);
            }
            Ok(())
        }
        "run" => {
            rig::ensure_in_rig()?;
            let selected = harness::select(&all, &filters);
            let mut out = harness::open_report(&out_path)?;
            let failed = harness::run_all(&selected, &mut *out)?;
            std::process::exit(if failed == 0 && !selected.is_empty() {
                0
            } else {
                1
            });
        }
        "exec" => {
            rig::ensure_in_rig()?;
            let name = filters.first().context("exec needs a test name")?;
            let everything = tests::all().into_iter().chain(tests::benches());
            let test = everything
                .into_iter()
                .find(|t| t.name == name)
                .with_context(|| format!("no rig test or benchmark named {name}"))?;
            harness::exec(&test)
        }
        "mkdisk" => {
            let [path, sectors] = filters.as_slice() else {
                bail!("mkdisk needs PATH SECTORS");
            };
            let sectors: u64 = sectors.parse().context("SECTORS must be a number")?;
            disk_pattern::write_image(std::path::Path::new(path), sectors)
                .with_context(|| format!("writing {path}"))
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
