//! Who this node is on the node network: its public IP(s) and the MTU of that link.

use std::net::IpAddr;

use futures::TryStreamExt;
use hostgw_common::route;
use rtnetlink::{
    Handle,
    packet_route::{address::AddressScope, link::LinkAttribute},
};

use crate::{cli::Common, kernel::KernelError};

/// The node's link to its peers, as the kernel shows it; [`crate::me::Me`] is built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Its link index: the device of routes whose next hop is link-local.
    pub index: u32,
    /// Per family, at least one: an IPv6-only host has no IPv4 address.
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub mtu: u32,
}

async fn mtu(h: &Handle, index: u32) -> Result<u32, KernelError> {
    route::link_mtu(h, index)
        .await
        .map_err(|source| KernelError::Netlink {
            op: format!("get link {index}"),
            source,
        })?
        .ok_or_else(|| KernelError::Other(format!("link {index} not found")))
}

/// What the kernel says about this node's links, gathered once; [`choose_link`] decides
/// from it alone, so every rule of the choice is unit-tested without a kernel.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// (index, name), in index order.
    pub links: Vec<(u32, String)>,
    /// (link index, address, scope).
    pub addrs: Vec<(u32, IpAddr, AddressScope)>,
    /// The link of the default route (IPv4, else IPv6; a multipath route's first hop).
    pub default_link: Option<u32>,
    /// The link the kernel would use to reach `--iface-can-reach`.
    pub reach_link: Option<u32>,
}

/// Which link is the uplink, in flannel's order: `--iface` (names or addresses, the first
/// that exists wins), else `--iface-regex` (names or global addresses, links in index order),
/// else `--iface-can-reach`, else the link holding `--public-ip`, else the default route's.
pub(crate) fn choose_link(c: &Common, f: &Facts) -> Result<u32, String> {
    let by_addr = |ip: &IpAddr| f.addrs.iter().find(|(_, a, _)| a == ip).map(|(i, _, _)| *i);
    let by_name = |n: &str| f.links.iter().find(|(_, name)| name == n).map(|(i, _)| *i);
    if !c.iface.is_empty() {
        return c
            .iface
            .iter()
            .find_map(|x| match x.parse::<IpAddr>() {
                Ok(ip) => by_addr(&ip),
                Err(_) => by_name(x),
            })
            .ok_or_else(|| format!("none of --iface {} exists", c.iface.join(", ")));
    }
    if !c.iface_regex.is_empty() {
        let res = c
            .iface_regex
            .iter()
            .map(|r| regex::Regex::new(r).map_err(|e| format!("--iface-regex {r:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        // Only links with a global address can be the uplink; a matching name without
        // one (a veth's bare peer, a down Wi-Fi link) is passed over, as flannel does.
        let global = |i: u32| {
            f.addrs
                .iter()
                .filter(move |(j, _, scope)| *j == i && *scope == AddressScope::Universe)
                .map(|(_, a, _)| a.to_string())
        };
        return res
            .iter()
            .find_map(|re| {
                f.links
                    .iter()
                    .filter(|(i, _)| global(*i).next().is_some())
                    .find(|(i, name)| re.is_match(name) || global(*i).any(|a| re.is_match(&a)))
                    .map(|(i, _)| *i)
            })
            .ok_or_else(|| {
                format!(
                    "no link's name or address matches --iface-regex {}",
                    c.iface_regex.join(", ")
                )
            });
    }
    if let Some(target) = c.iface_can_reach {
        return f
            .reach_link
            .ok_or_else(|| format!("no route to --iface-can-reach {target}"));
    }
    // An IPv6-only node names its uplink by its IPv6 address.
    if let Some(ip) = c.public_ip.or(c.public_ipv6) {
        return by_addr(&ip)
            .ok_or_else(|| format!("public IP {ip} is not an address of this node"));
    }
    f.default_link.ok_or_else(|| {
        "no default route: give --public-ip, --iface, --iface-regex or --iface-can-reach".into()
    })
}

/// The public IPs, per family: `--public-ip` / `--public-ipv6` (which must be on the
/// chosen link), else the first global address of that family on the link. A link with
/// neither is no uplink; whether the cluster needs the family missing is decided once the
/// network config is read.
pub(crate) fn addresses_of(
    c: &Common,
    f: &Facts,
    index: u32,
) -> Result<(Option<IpAddr>, Option<IpAddr>), String> {
    let global = |v6: bool| {
        f.addrs
            .iter()
            .find(|(i, a, s)| *i == index && a.is_ipv6() == v6 && *s == AddressScope::Universe)
            .map(|(_, a, _)| *a)
    };
    let on_link = |ip: &IpAddr| f.addrs.iter().any(|(i, a, _)| *i == index && a == ip);
    let name = f
        .links
        .iter()
        .find(|(i, _)| *i == index)
        .map_or_else(|| format!("link {index}"), |(_, n)| n.clone());
    let public_ip = match c.public_ip {
        Some(ip) if on_link(&ip) => Some(ip),
        Some(ip) => return Err(format!("public IP {ip} is not an address of {name}")),
        None => global(false),
    };
    let public_ipv6 = c.public_ipv6.or_else(|| global(true));
    if public_ip.is_none() && public_ipv6.is_none() {
        return Err(format!("{name} has no global IPv4 or IPv6 address"));
    }
    Ok((public_ip, public_ipv6))
}

async fn gather(h: &Handle, c: &Common) -> Result<Facts, KernelError> {
    let netlink = |op: &str| {
        let op = op.to_owned();
        move |source| KernelError::Netlink { op, source }
    };
    let links = h
        .link()
        .get()
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(netlink("dump links"))?
        .iter()
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                _ => None,
            })
        })
        .collect();
    let reach_link = match c.iface_can_reach {
        Some(ip) => route::oif_towards(h, ip)
            .await
            .map_err(netlink("route get"))?,
        None => None,
    };
    Ok(Facts {
        links,
        addrs: super::dump::addresses(h).await?,
        default_link: route::default_route_oif(h)
            .await
            .map_err(netlink("dump routes"))?,
        reach_link,
    })
}

pub async fn detect(h: &Handle, c: &Common) -> Result<Uplink, KernelError> {
    let facts = gather(h, c).await?;
    let index = choose_link(c, &facts).map_err(KernelError::Other)?;
    let (public_ip, public_ipv6) = addresses_of(c, &facts, index).map_err(KernelError::Other)?;
    Ok(Uplink {
        index,
        public_ip,
        public_ipv6,
        mtu: mtu(h, index).await?,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn common(flags: &[&str]) -> Common {
        let mut argv = vec![
            "hostgw-routed",
            "release",
            "--etcd-endpoints",
            "http://e:2379",
        ];
        argv.extend(["--node-name", "n"]);
        argv.extend(flags);
        match crate::cli::Cli::try_parse_from(argv).unwrap().cmd {
            crate::cli::Cmd::Release(c) => c,
            _ => unreachable!(),
        }
    }

    fn facts() -> Facts {
        let ip = |s: &str| s.parse().unwrap();
        Facts {
            links: vec![
                (1, "lo".into()),
                (2, "eth0".into()),
                (3, "eth1".into()),
                (4, "eth2".into()),
            ],
            addrs: vec![
                (1, ip("127.0.0.1"), AddressScope::Host),
                (2, ip("198.19.0.10"), AddressScope::Universe),
                (2, ip("fd19:19::10"), AddressScope::Universe),
                (3, ip("198.19.1.10"), AddressScope::Universe),
                (3, ip("198.19.1.11"), AddressScope::Universe),
            ],
            default_link: Some(2),
            reach_link: Some(3),
        }
    }

    #[test]
    fn default_route_link_without_flags() {
        let c = common(&[]);
        assert_eq!(choose_link(&c, &facts()), Ok(2));
        let ips = addresses_of(&c, &facts(), 2).unwrap();
        assert_eq!(ips.0.unwrap().to_string(), "198.19.0.10");
        assert_eq!(ips.1.unwrap().to_string(), "fd19:19::10");
        let none = Facts {
            default_link: None,
            ..facts()
        };
        assert!(
            choose_link(&c, &none)
                .unwrap_err()
                .contains("no default route")
        );
    }

    #[test]
    fn iface_is_repeatable_and_takes_names_or_addresses_first_existing_wins() {
        let f = facts();
        assert_eq!(
            choose_link(&common(&["--iface", "eth9", "--iface", "eth1"]), &f),
            Ok(3)
        );
        assert_eq!(choose_link(&common(&["--iface", "198.19.1.11"]), &f), Ok(3));
        assert_eq!(choose_link(&common(&["--iface", "eth9,eth0"]), &f), Ok(2));
        let err = choose_link(&common(&["--iface", "eth8", "--iface", "eth9"]), &f).unwrap_err();
        assert_eq!(err, "none of --iface eth8, eth9 exists");
    }

    #[test]
    fn iface_regex_matches_names_or_addresses_in_link_order() {
        let f = facts();
        assert_eq!(choose_link(&common(&["--iface-regex", "^eth"]), &f), Ok(2));
        assert_eq!(
            choose_link(&common(&["--iface-regex", "^198\\.19\\.1\\."]), &f),
            Ok(3)
        );
        // 127.0.0.1 ends in 1 too, but host-scoped addresses are never the uplink's.
        assert_eq!(
            choose_link(
                &common(&["--iface-regex", "^wlan", "--iface-regex", "1$"]),
                &f
            ),
            Ok(3)
        );
        assert!(choose_link(&common(&["--iface-regex", "^wlan"]), &f).is_err());
        // eth2 has no address: passed over.
        assert_eq!(
            choose_link(&common(&["--iface-regex", "^eth[12]"]), &f),
            Ok(3)
        );
        assert!(choose_link(&common(&["--iface-regex", "^eth2"]), &f).is_err());
        let bad = choose_link(&common(&["--iface-regex", "("]), &f).unwrap_err();
        assert!(bad.starts_with("--iface-regex \"(\""), "{bad}");
    }

    #[test]
    fn can_reach_uses_the_kernels_route() {
        let c = common(&["--iface-can-reach", "198.19.1.1"]);
        assert_eq!(choose_link(&c, &facts()), Ok(3));
        let none = Facts {
            reach_link: None,
            ..facts()
        };
        assert_eq!(
            choose_link(&c, &none),
            Err("no route to --iface-can-reach 198.19.1.1".into())
        );
    }

    /// A host with only IPv6 addresses and only an IPv6 default route still has an uplink.
    #[test]
    fn ipv6_only_host() {
        let ip = |s: &str| s.parse().unwrap();
        let f = Facts {
            links: vec![(1, "lo".into()), (2, "eth0".into()), (3, "eth1".into())],
            addrs: vec![
                (1, ip("::1"), AddressScope::Host),
                (2, ip("fe80::10"), AddressScope::Link),
                (2, ip("fd19:19::10"), AddressScope::Universe),
                (3, ip("fe80::11"), AddressScope::Link),
            ],
            default_link: Some(2),
            reach_link: None,
        };
        let c = common(&[]);
        assert_eq!(choose_link(&c, &f), Ok(2));
        let (v4, v6) = addresses_of(&c, &f, 2).unwrap();
        assert_eq!(v4, None);
        assert_eq!(v6, Some(ip("fd19:19::10")));
        // A link-local address alone is no public address.
        assert_eq!(
            addresses_of(&c, &f, 3),
            Err("eth1 has no global IPv4 or IPv6 address".into())
        );
        let c = common(&["--public-ipv6", "fd19:19::10"]);
        assert_eq!(addresses_of(&c, &f, 2).unwrap().1, Some(ip("fd19:19::10")));
    }

    #[test]
    fn public_ip_alone_or_with_iface() {
        let f = facts();
        let c = common(&["--public-ip", "198.19.1.11"]);
        assert_eq!(choose_link(&c, &f), Ok(3));
        assert_eq!(
            addresses_of(&c, &f, 3).unwrap().0.unwrap().to_string(),
            "198.19.1.11"
        );
        let c = common(&["--iface", "eth1", "--public-ip", "198.19.1.11"]);
        assert_eq!(
            addresses_of(&c, &f, 3).unwrap().0.unwrap().to_string(),
            "198.19.1.11"
        );
        let c = common(&["--iface", "eth1", "--public-ip", "198.19.0.10"]);
        assert_eq!(
            addresses_of(&c, &f, 3),
            Err("public IP 198.19.0.10 is not an address of eth1".into())
        );
        let c = common(&["--public-ip", "198.19.9.9"]);
        assert!(
            choose_link(&c, &f)
                .unwrap_err()
                .contains("not an address of this node")
        );
    }
}
