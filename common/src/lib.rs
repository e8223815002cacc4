//! What the `hostgw` plugin and `hostgw-routed` must agree on, defined once: the subnet
//! file (the only coupling between them, design.md), the host veth names and aliases that
//! let the daemon tell pod plumbing from everything else, and the small kernel helpers
//! (forwarding sysctls, route attributes, the default-route link's MTU) both binaries need.

#![forbid(unsafe_code)]

pub mod fs;
pub mod hash;
pub mod ip;
pub mod route;
pub mod subnet_file;
pub mod sysctl;
pub mod veth;

pub use subnet_file::SubnetFile;
