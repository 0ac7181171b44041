//! `strait registry ...` commands.

#[derive(clap::Subcommand, Debug)]
pub enum RegistryCommand {
    /// Serve the registry alone.
    Serve,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the registry is not implemented yet")]
    NotImplemented,
}

pub fn run(_command: RegistryCommand) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
