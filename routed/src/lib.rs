//! hostgw-routed: leases this node's pod subnet in etcd and keeps one kernel route per peer
//! node (`<peer subnet> via <peer public IP>`, protocol 75). See README.md.
//!
//! Grouped by concern: `etcd` (everything that talks to etcd), `kernel` (routes, addresses,
//! events, nft), `reconcile` (pure validate/compute/plan plus the loop that applies), and
//! `cmd` (the three subcommands). Dependencies point one way: `cmd` → `reconcile`/`etcd`
//! → `kernel` → the leaf modules at the root.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub(crate) mod cmd;
pub mod config;
pub mod datapath;
pub mod error;
pub(crate) mod etcd;
pub(crate) mod http;
pub(crate) mod kernel;
pub mod me;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod reconcile;
pub mod signals;
pub(crate) mod tasks;
pub mod text;

pub use error::Error;
pub use signals::Signals;
pub use tokio_util::sync::CancellationToken;

/// Runs one subcommand to completion; `shutdown` ends `run`.
pub async fn main(
    cli: cli::Cli,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    match cli.cmd {
        // Boxed futures here and in `run`: see `cmd::run::run`.
        cli::Cmd::Run(args) => Box::pin(cmd::run::run(args, shutdown)).await,
        cli::Cmd::Status(args) => {
            print!("{}", cmd::status::status(&args).await?);
            Ok(())
        }
        cli::Cmd::Release(c) => {
            print!("{}", cmd::release::release(&c).await?);
            Ok(())
        }
    }
}

/// [`main`] with the process's signals as shutdown: the handlers are installed before any
/// other work, so that no signal ends the process unlogged (see `signals`).
pub async fn main_with_signals(cli: cli::Cli) -> Result<(), Error> {
    let signals = Signals::install().map_err(|e| Error::Io("install signal handlers".into(), e))?;
    main(cli, signals.wait()).await
}
