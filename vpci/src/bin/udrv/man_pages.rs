//! `udrv man [COMMAND]`: man pages generated from udrv's own clap definitions: udrv(1)
//! and one udrv-COMMAND(1) for each command, so that they say what `--help` says.

use std::io::Write;

use anyhow::bail;
use clap::{Args, CommandFactory};
use clap_mangen::Man;

/// Print the man page udrv(1), or udrv-COMMAND(1), in roff on stdout.
///
/// `udrv install-service` installs them all; to read one without installing:
///   udrv man serve | man -l -
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ManArgs {
    /// The command whose page to print (serve, attach, ...); none: udrv(1).
    pub command: Option<String>,
}

/// One man page: its file name (`udrv-serve.1`) and its roff text.
pub struct ManPage {
    /// The file name, section included.
    pub file_name: String,
    /// The page.
    pub roff: Vec<u8>,
}

/// udrv(1), then udrv-COMMAND(1) for every command `udrv --help` lists.
pub fn pages() -> std::io::Result<Vec<ManPage>> {
    let mut udrv = crate::Cli::command().disable_help_subcommand(true);
    // Built, each command knows its full name (udrv-serve) and usage line.
    udrv.build();
    std::iter::once(&udrv)
        .chain(udrv.get_subcommands().filter(|c| !c.is_hide_set()))
        .map(|command| {
            let man = Man::new(command.clone()).manual("udrv");
            let mut roff = Vec::new();
            man.render(&mut roff)?;
            Ok(ManPage {
                file_name: man.get_filename(),
                roff,
            })
        })
        .collect()
}

/// Runs `udrv man`.
pub fn run(args: ManArgs) -> anyhow::Result<()> {
    let pages = pages()?;
    let wanted = match &args.command {
        None => "udrv.1".to_string(),
        Some(command) => format!("udrv-{command}.1"),
    };
    let Some(page) = pages.iter().find(|p| p.file_name == wanted) else {
        let commands: Vec<&str> = pages
            .iter()
            .filter_map(|p| p.file_name.strip_prefix("udrv-")?.strip_suffix(".1"))
            .collect();
        bail!(
            "no man page for {:?}: udrv's commands are {}",
            args.command.unwrap_or_default(),
            commands.join(", ")
        );
    };
    std::io::stdout().lock().write_all(&page.roff)?;
    Ok(())
}
