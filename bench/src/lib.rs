//! Benchmarks of hostgw, as a library so that the root tests can run their smoke variants:
//! the data-plane comparison suite ([`dataplane`], binary `bench-dataplane`) with its chart
//! ([`chart`]), the plugin's ADD/DEL against the reference plugins ([`cni`], binary
//! `bench-cni`) and the route daemon ([`routed`], binary `bench-routed`).
#![forbid(unsafe_code)]

pub mod chart;
pub mod cni;
pub mod dataplane;
pub mod routed;
pub mod scale;
