//! The kernel seen from the plugin: one small trait at the level of our domain (a pod's
//! veth, addresses and routes), a real implementation over rtnetlink (`netlink.rs`), and a
//! fake for unit tests.

use std::{
    cell::RefCell,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;

use crate::{config::Mode, error::Error};

/// One address of the pod, with the prefix of the node's subnet, and its gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct PodAddr {
    pub addr: IpNetwork,
    pub gateway: IpAddr,
}

/// Everything the kernel needs to wire one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSpec {
    pub netns: PathBuf,
    pub ifname: String,
    pub host_veth: String,
    /// Written as the host veth's alias, so that GC can find links whose reservation is gone.
    pub alias: String,
    pub mode: Mode,
    pub mtu: u32,
    /// BIG TCP: GSO/GRO maximums of 185000 on both veth ends, set in the creating message.
    pub big_tcp: bool,
    pub mac: Option<[u8; 6]>,
    pub addrs: Vec<PodAddr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LinkInfo {
    pub name: String,
    pub mac: String,
}

/// The links ADD made, for the result.
#[derive(Clone, Debug, PartialEq)]
pub struct PodLinks {
    pub bridge: Option<LinkInfo>,
    pub host: LinkInfo,
    pub pod: LinkInfo,
}

/// What CHECK finds in the kernel for one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub host: Option<HostFacts>,
    pub pod: Option<PodFacts>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFacts {
    pub mac: String,
    /// Name of the bridge the host veth is enslaved to.
    pub master: Option<String>,
    pub addrs: Vec<IpNetwork>,
    /// Destinations of the host routes that leave through this veth.
    pub routes: Vec<IpNetwork>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    pub is_veth: bool,
    pub mac: String,
    pub addrs: Vec<IpNetwork>,
    pub routes: Vec<(IpNetwork, Option<IpAddr>)>,
}

pub trait Datapath {
    /// The pod's namespace opens and holds no interface named `ifname` yet.
    fn check_pod(&self, netns: &Path, ifname: &str) -> Result<(), Error>;
    /// Creates and configures everything; on failure undoes what it did.
    fn setup(&self, spec: &PodSpec) -> Result<PodLinks, Error>;
    /// Deletes the host veth (and with it the pod end and the host routes through it).
    /// Returns whether there was anything to delete.
    /// Only if it is ours: its alias is `alias`, or empty (an ADD killed before it set the
    /// alias). A foreign link that happens to hold the name is left alone.
    fn teardown(&self, host_veth: &str, alias: &str) -> Result<bool, Error>;
    fn observe(&self, spec: &PodSpec) -> Result<Observed, Error>;
    /// Host links whose alias starts with `alias_prefix`, as (name, alias).
    fn host_veths(&self, alias_prefix: &str) -> Result<Vec<(String, String)>, Error>;
    /// MTU of the link that holds the host's default route.
    fn default_mtu(&self) -> Result<u32, Error>;
}

pub use hostgw_common::veth::{alias, alias_prefix, host_veth_name};

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// === impl FakeDatapath ===

/// Records calls and keeps a tiny model of the host, for unit tests of the verbs.
#[derive(Default)]
pub struct FakeDatapath {
    pub pods: RefCell<Vec<PodSpec>>,
    pub calls: RefCell<Vec<String>>,
    pub fail_setup: RefCell<Option<String>>,
    pub existing_ifname: RefCell<bool>,
    pub mtu: u32,
}

const _: fn() = || {
    fn assert<T: Datapath>() {}
    assert::<FakeDatapath>();
};

impl Datapath for FakeDatapath {
    fn check_pod(&self, netns: &Path, ifname: &str) -> Result<(), Error> {
        self.calls
            .borrow_mut()
            .push(format!("check_pod {} {ifname}", netns.display()));
        if *self.existing_ifname.borrow() {
            return Err(Error::Config(format!(
                "container interface {ifname} already exists"
            )));
        }
        Ok(())
    }

    fn setup(&self, spec: &PodSpec) -> Result<PodLinks, Error> {
        self.calls
            .borrow_mut()
            .push(format!("setup {}", spec.host_veth));
        if let Some(msg) = self.fail_setup.borrow().clone() {
            return Err(Error::Internal(msg));
        }
        self.pods.borrow_mut().push(spec.clone());
        let link = |name: &str| LinkInfo {
            name: name.into(),
            mac: "02:00:00:00:00:01".into(),
        };
        Ok(PodLinks {
            bridge: match &spec.mode {
                Mode::Bridge(b) => Some(link(b)),
                Mode::Ptp => None,
            },
            host: link(&spec.host_veth),
            pod: link(&spec.ifname),
        })
    }

    fn teardown(&self, host_veth: &str, alias: &str) -> Result<bool, Error> {
        self.calls
            .borrow_mut()
            .push(format!("teardown {host_veth}"));
        let mut pods = self.pods.borrow_mut();
        let before = pods.len();
        pods.retain(|p| p.host_veth != host_veth || p.alias != alias);
        Ok(pods.len() != before)
    }

    fn observe(&self, spec: &PodSpec) -> Result<Observed, Error> {
        let pods = self.pods.borrow();
        let Some(p) = pods.iter().find(|p| p.host_veth == spec.host_veth) else {
            return Ok(Observed::default());
        };
        let addrs: Vec<IpNetwork> = p.addrs.iter().map(|a| a.addr).collect();
        let routes = p
            .addrs
            .iter()
            .map(|a| (default_route(a.addr), Some(a.gateway)))
            .collect();
        let host_routes = p
            .addrs
            .iter()
            .map(|a| IpNetwork::new(a.addr.ip(), if a.addr.is_ipv4() { 32 } else { 128 }).unwrap())
            .collect();
        Ok(Observed {
            host: Some(HostFacts {
                mac: "02:00:00:00:00:01".into(),
                master: match &p.mode {
                    Mode::Bridge(b) => Some(b.clone()),
                    Mode::Ptp => None,
                },
                addrs: p.addrs.iter().map(|a| IpNetwork::from(a.gateway)).collect(),
                routes: host_routes,
            }),
            pod: Some(PodFacts {
                is_veth: true,
                mac: "02:00:00:00:00:01".into(),
                addrs,
                routes,
            }),
        })
    }

    fn host_veths(&self, alias_prefix: &str) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .pods
            .borrow()
            .iter()
            .filter(|p| p.alias.starts_with(alias_prefix))
            .map(|p| (p.host_veth.clone(), p.alias.clone()))
            .collect())
    }

    fn default_mtu(&self) -> Result<u32, Error> {
        Ok(if self.mtu == 0 { 1500 } else { self.mtu })
    }
}

/// `0.0.0.0/0` or `::/0`, in the family of `net`.
pub fn default_route(net: IpNetwork) -> IpNetwork {
    match net {
        IpNetwork::V4(_) => "0.0.0.0/0".parse().unwrap(),
        IpNetwork::V6(_) => "::/0".parse().unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_format_as_the_kernel_prints_them() {
        assert_eq!(format_mac(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }
}
