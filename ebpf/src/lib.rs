//! hostgw's eBPF fast path (issue 13): tc programs on tcx links beside the host-gw routes.
//!
//! The routes stay the source of truth. `hgw_from_uplink` (on the node's uplink) and
//! `hgw_from_pod` (on each pod's host veth) ask the kernel's FIB and neighbour table for every
//! packet and forward only what they fully understand; everything else, and every flow that
//! conntrack holds as NATed, goes on to the normal stack unchanged. See bpf/fastpath.c.
//!
//! For the daemon: [`probe`] at start (keep plain routes unless [`Probe::ready`]), then
//! [`FastPath::load`] + [`FastPath::adopt`], [`FastPath::attach_uplink`], one
//! [`FastPath::attach_pod`] per pod veth, [`FastPath::detach`] on DEL,
//! [`FastPath::detach_all`] on release, [`FastPath::counters`] for metrics and
//! [`FastPath::status`] for `status`.
#![deny(unsafe_code)]

mod big_tcp;
mod error;
mod fastpath;
mod maps;
mod ops;
mod probe;
mod sys;

pub use big_tcp::{BIG_TCP_SIZE, LEGACY_GSO_SIZE, set_gso_gro_max};
pub use error::{Error, Result};
pub use fastpath::{
    Adopted, Attached, Attachment, DEFAULT_PIN_DIR, FastPath, Options, PinnedLink, pinned_links,
};
pub use maps::{ClusterNetworks, Count, Counters, IfaceKind, Reason};
pub use ops::{FakeFastPath, FastPathOps};
pub use probe::{Check, Feature, Probe, probe};
