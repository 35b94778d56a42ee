//! `fragnet config show`.

use anyhow::Result;

use crate::cli::ConfigCommand;
use crate::config::{self, Overrides, Sources};

/// Runs a `config` subcommand.
pub async fn run(sources: &Sources, c: ConfigCommand) -> Result<()> {
    match c {
        ConfigCommand::Show => {
            print!("{}", config::show(sources, &Overrides::default())?);
            Ok(())
        }
    }
}
