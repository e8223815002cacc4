use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = hostgw_routed::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One thread: the work is I/O-bound, and it keeps RSS small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostgw-routed: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Boxed: the daemon's future (its state across every task) is tens of KiB, and each
    // move of it by value on the way into `block_on` touched another copy of the stack:
    // half a MiB of RSS that held nothing.
    match rt.block_on(Box::pin(hostgw_routed::main_with_signals(cli))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            std::process::ExitCode::FAILURE
        }
    }
}
