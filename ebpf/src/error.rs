use std::{io, path::PathBuf};

/// Everything the loader can fail at, with the kernel's answer kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open the BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("load the BPF programs (pins under {pin_dir}): {source}")]
    Load {
        pin_dir: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{pin_dir} is not on a bpffs mount: mount one (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { pin_dir: PathBuf },
    #[error("prepare {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} on ifindex {ifindex}: {source}")]
    Link {
        what: &'static str,
        ifindex: u32,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Map {
        what: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what} on ifindex {ifindex}: {source}")]
    Netlink {
        what: &'static str,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "ifindex {ifindex}: GSO max size {want} not applied (the kernel reports IPv4 {ipv4:?}, \
         IPv6 {ipv6:?}; BIG TCP for IPv4 needs Linux >= 6.3)"
    )]
    GsoNotApplied {
        ifindex: u32,
        want: u32,
        ipv4: Option<u32>,
        ipv6: Option<u32>,
    },
    #[error("invalid ifindex {0}: must be > 0")]
    BadIfindex(u32),
    #[error("program {0} missing from the BPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
