//! hostgw's per-node address allocator. It keeps the on-disk layout of the reference
//! host-local IPAM plugin (`<dataDir>/<network>/<ip>` holding `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.<pool>`, `lock`), so operators' tools and habits carry over, but
//! writes reservations crash-safely and holds one bounded lock per operation.
//!
//! ```no_run
//! # fn main() -> Result<(), hostgw_ipam::Error> {
//! use std::{path::Path, time::Duration};
//! use hostgw_ipam::{Attachment, Pool, Store};
//!
//! let pool = Pool::new("198.18.3.0/24".parse().unwrap(), None)?;
//! let store = Store::open(Path::new("/var/lib/cni/networks"), "podnet")?;
//! let mut locked = store.lock(Duration::from_secs(10))?;
//! let ips = locked.allocate(&[pool], &Attachment::new("abc", "eth0"), &[])?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod attachment;
mod error;
mod pool;
mod store;

pub use attachment::Attachment;
pub use error::{Error, Result};
pub use pool::Pool;
pub use store::{ContainerLock, Locked, Store, read_small_file};
