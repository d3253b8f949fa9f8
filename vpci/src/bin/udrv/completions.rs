//! `udrv completions SHELL`: shell completion scripts generated from udrv's own clap
//! definitions, so that they always offer the commands and options this binary has.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Print the completion script for SHELL on stdout.
///
/// `udrv install-service` installs the bash, zsh and fish ones; by hand:
///   udrv completions bash > /usr/local/share/bash-completion/completions/udrv
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut command = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "udrv", &mut out);
    out
}

/// Runs `udrv completions`.
pub fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    std::io::stdout().lock().write_all(&script(args.shell))?;
    Ok(())
}
