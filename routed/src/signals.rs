//! Signals, installed before anything else runs (a SIGHUP during start-up used to kill
//! the daemon without a word: the handlers were only set up once start-up was done).
//!
//! - SIGTERM, SIGINT, SIGQUIT end the process gracefully: one log line naming the signal,
//!   then the normal shutdown (routes, rules, lease and subnet file stay).
//! - SIGHUP, SIGUSR1, SIGUSR2 are ignored with a log line. There is no reload: the network
//!   config is read at start; restart the daemon to apply a change (routes stay in place).
//! - SIGPIPE is already ignored by the Rust runtime. SIGKILL and SIGSTOP can't be caught.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

/// (name, whether it stops the process, its stream).
pub struct Signals(Vec<(&'static str, bool, Signal)>);

/// (name, whether it stops the process, which signal).
type Handled = (&'static str, bool, fn() -> SignalKind);

const HANDLED: [Handled; 6] = [
    ("SIGTERM", true, SignalKind::terminate),
    ("SIGINT", true, SignalKind::interrupt),
    ("SIGQUIT", true, SignalKind::quit),
    ("SIGHUP", false, SignalKind::hangup),
    ("SIGUSR1", false, SignalKind::user_defined1),
    ("SIGUSR2", false, SignalKind::user_defined2),
];

impl Signals {
    /// Installs every handler now; needs a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        HANDLED
            .iter()
            .map(|(name, stop, kind)| Ok((*name, *stop, signal(kind())?)))
            .collect::<std::io::Result<_>>()
            .map(Signals)
    }

    /// Resolves on the first stopping signal; logs and ignores the others meanwhile.
    pub async fn wait(mut self) {
        loop {
            let (name, stop) = {
                let all = self.0.iter_mut().map(|(name, stop, s)| {
                    Box::pin(async move {
                        s.recv().await;
                        (*name, *stop)
                    })
                });
                futures::future::select_all(all).await.0
            };
            if stop {
                info!(signal = name, "signal received; shutting down");
                return;
            }
            warn!(
                signal = name,
                "signal ignored (no reload: restart to apply a config change)"
            );
        }
    }
}
