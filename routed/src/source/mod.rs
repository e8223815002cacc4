//! Everything that talks to etcd after start: this node's lease, and the watch of all leases.

pub mod keepalive;
pub mod lease;
pub mod watch;
