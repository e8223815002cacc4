//! One error type for the crate; the plugin maps it to a CNI code through
//! [`Error::is_transient`], [`Error::is_config`] and [`Error::is_io`]; everything else is 999.

use std::{io, net::IpAddr, path::PathBuf, time::Duration};

use ipnetwork::IpNetwork;

use crate::Attachment;

/// Messages follow host-local's wording where it has one, so operators' searches and
/// runbooks keep working (cni-notes §2.1-2.2).
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("invalid network name {0:?}: must be non-empty, not \".\" or \"..\", without '/'")]
    InvalidNetworkName(String),
    #[error(
        "Network has host bits set. For a subnet mask of length {prefix} the network address is {network}"
    )]
    HostBitsSet { prefix: u8, network: IpAddr },
    #[error("Network {0} too small to allocate from")]
    TooSmall(IpNetwork),
    #[error("gateway {gateway} is not a usable address of {subnet}")]
    InvalidGateway { gateway: IpAddr, subnet: IpNetwork },
    #[error("no IP ranges specified")]
    NoPools,
    #[error("range set {first} overlaps with {second}")]
    PoolsOverlap { first: usize, second: usize },
    /// A container id or ifname that would corrupt the `<id>\r\n<ifname>` file format.
    #[error(
        "invalid attachment {0:?}: container id must be non-empty, neither may contain CR or LF"
    )]
    InvalidAttachment(Attachment),

    #[error("timed out after {timeout:?} waiting for lock {path}")]
    LockTimeout { path: PathBuf, timeout: Duration },
    /// The io::Error text is repeated in the message because the plugin reports
    /// `to_string()` as the CNI `msg`; it stays the typed `source` for matching.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{ip} has been allocated to {container_id}, duplicate allocation is not allowed")]
    Duplicate {
        ip: IpAddr,
        container_id: String,
        pool: usize,
    },
    #[error("no IP addresses available in range set: {range}")]
    Exhausted { range: String, pool: usize },
    #[error("requested IP address {ip} is not available in range set {range}")]
    RequestedUnavailable { ip: IpAddr, range: String },
    /// Inside a pool's subnet but not handed out (network or IPv4 broadcast address).
    #[error("{ip} not in range set {range}")]
    RequestedNotInRange { ip: IpAddr, range: String },
    #[error("requested ip {ip} is subnet's gateway")]
    RequestedIsGateway { ip: IpAddr },
    /// Requested IPs in no pool's subnet, or a second request for one pool.
    #[error("failed to allocate all requested IPs: {}", join(.ips, ", "))]
    RequestedUnmatched { ips: Vec<IpAddr> },

    /// A release or GC that removed some reservations and failed on others; `released`
    /// lets the caller still clean up host-side state for what did go.
    #[error("{} reservation(s) could not be released: {}", .errors.len(), join(.errors, "; "))]
    Incomplete {
        released: Vec<(IpAddr, Attachment)>,
        errors: Vec<Error>,
    },
    /// An allocation failed and undoing its partial reservations failed too.
    #[error("{cause}; releasing this call's reservations also failed: {}", join(.errors, "; "))]
    Rollback {
        #[source]
        cause: Box<Error>,
        errors: Vec<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn join<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    parts.join(sep)
}

// === impl Error ===

impl Error {
    /// Worth retrying as is (CNI code 11, "try again later").
    pub fn is_transient(&self) -> bool {
        match self {
            Error::LockTimeout { .. } => true,
            Error::Rollback { cause, .. } => cause.is_transient(),
            _ => false,
        }
    }

    /// The pool or network configuration is wrong (CNI code 7).
    pub fn is_config(&self) -> bool {
        match self {
            Error::InvalidNetworkName(_)
            | Error::HostBitsSet { .. }
            | Error::TooSmall(_)
            | Error::InvalidGateway { .. }
            | Error::NoPools
            | Error::PoolsOverlap { .. }
            | Error::InvalidAttachment(_)
            | Error::RequestedNotInRange { .. }
            | Error::RequestedIsGateway { .. }
            | Error::RequestedUnmatched { .. } => true,
            Error::Rollback { cause, .. } => cause.is_config(),
            _ => false,
        }
    }

    /// A file or directory of the store could not be read or written (CNI code 5); the
    /// message names the path.
    pub fn is_io(&self) -> bool {
        match self {
            Error::Io { .. } => true,
            Error::Incomplete { errors, .. } => {
                !errors.is_empty() && errors.iter().all(Error::is_io)
            }
            Error::Rollback { cause, .. } => cause.is_io(),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_messages_and_classes() {
        let io = || {
            Error::io(
                "remove reservation",
                "/d/198.18.3.2",
                io::Error::from_raw_os_error(13),
            )
        };
        assert_eq!(
            io().to_string(),
            "remove reservation /d/198.18.3.2: Permission denied (os error 13)"
        );
        let incomplete = Error::Incomplete {
            released: Vec::new(),
            errors: vec![io(), io()],
        };
        assert!(
            incomplete
                .to_string()
                .starts_with("2 reservation(s) could not be released: remove")
        );
        let timeout = Error::LockTimeout {
            path: "/d/lock".into(),
            timeout: Duration::from_secs(1),
        };
        let rollback = Error::Rollback {
            cause: Box::new(timeout),
            errors: vec![io()],
        };
        assert!(rollback.is_transient() && !rollback.is_config() && !rollback.is_io());
        assert!(io().is_io());
        assert!(
            Error::Incomplete {
                released: Vec::new(),
                errors: vec![io()],
            }
            .is_io()
        );
        assert!(
            rollback
                .to_string()
                .contains("; releasing this call's reservations also failed: ")
        );
        let ips = Error::RequestedUnmatched {
            ips: vec!["198.18.9.9".parse().unwrap(), "fd18::9".parse().unwrap()],
        };
        assert_eq!(
            ips.to_string(),
            "failed to allocate all requested IPs: 198.18.9.9, fd18::9"
        );
    }
}
