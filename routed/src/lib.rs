//! hostgw-routed: leases this node's pod subnet in etcd and keeps one kernel route per peer
//! node (`<peer subnet> via <peer public IP>`, protocol 75). See README.md.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod compute;
pub mod config;
pub mod daemon;
pub mod error;
pub mod etcd;
pub mod events;
pub mod executor;
pub mod http;
pub mod identity;
pub mod kernel;
pub mod lease;
pub mod metrics;
pub mod net;
pub mod nft;
pub mod plan;
pub mod reconcile;
pub mod release;
pub mod shutdown;
pub mod source;
pub mod status;
pub mod subnet;
pub mod subnet_file;
pub mod validate;

pub use error::Error;

/// Runs one subcommand to completion; `shutdown` ends `run`.
pub async fn main(
    cli: cli::Cli,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    match cli.cmd {
        cli::Cmd::Run(args) => daemon::run(args, shutdown).await,
        cli::Cmd::Status(args) => {
            print!("{}", status::status(&args).await?);
            Ok(())
        }
        cli::Cmd::Release(c) => {
            print!("{}", release::release(&c).await?);
            Ok(())
        }
    }
}

/// SIGTERM or SIGINT.
pub async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
