//! The library's error type; `main` turns it into a message and exit code.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    #[error(transparent)]
    Claim(#[from] crate::etcd::claim::ClaimError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    Nft(#[from] crate::kernel::nft::NftError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Other(String),
}
