use std::net::IpAddr;

use hostgw_ipam::{Attachment, Pool};
use ipnetwork::IpNetwork;

use super::{Attach, LOCK_TIMEOUT, open_store};
use crate::{
    config::{NetConf, NodeSubnets},
    datapath::{Datapath, PodAddr, PodLinks, PodSpec, default_route},
    error::Error,
    result::{CniResult, Interface, IpConfig, Route},
    validate::validate_mtu_for_ipv6,
};

/// The longest alias the kernel takes: IFLA_IFALIAS may be IFALIASZ - 1 = 255 bytes, and
/// rtnetlink sends the string with its NUL (255 bytes of text got ERANGE, measured).
const ALIAS_MAX: usize = 254;

/// ADD: validate everything, reserve the addresses, wire the pod; undo all of it on failure.
pub fn add(conf: &NetConf, req: &Attach, dp: &dyn Datapath) -> Result<CniResult, Error> {
    let plan = plan(conf, req, dp)?;
    // Only now is anything touched. The container lock keeps a DEL of this container
    // from running between our reservation and the end of the setup.
    let store = open_store(conf)?;
    let _container = store.lock_container(&req.container_id, LOCK_TIMEOUT)?;
    let att = req.attachment();
    let ips = store
        .lock(LOCK_TIMEOUT)?
        .allocate(&plan.pools, &att, &plan.requested)?;
    let addrs = ips
        .iter()
        .zip(&plan.pools)
        .map(|(ip, pool)| PodAddr {
            addr: IpNetwork::new(*ip, pool.subnet.prefix()).expect("prefix of a valid pool"),
            gateway: pool.gateway,
        })
        .collect();
    let spec = PodSpec { addrs, ..plan.spec };
    match dp.setup(&spec) {
        Ok(links) => Ok(build_result(conf, plan.prev, &spec, &links)),
        Err(e) => {
            release_after_failure(&store, &att);
            Err(e)
        }
    }
}

/// Everything ADD needs, validated; `spec.addrs` is filled once IPAM has answered.
struct Plan {
    prev: Option<CniResult>,
    pools: Vec<Pool>,
    requested: Vec<IpAddr>,
    spec: PodSpec,
}

/// Every refusal ADD can make without the IPAM store, made before the host is touched.
fn plan(conf: &NetConf, req: &Attach, dp: &dyn Datapath) -> Result<Plan, Error> {
    let netns = req
        .netns
        .as_deref()
        .ok_or_else(|| Error::MissingEnv("CNI_NETNS".into()))?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_json)
        .transpose()?;
    let subnets = conf.node_subnets()?;
    let pools = subnets.pools()?;
    let mtu = effective_mtu(conf, &subnets, dp)?;
    let requested = requested_ips(conf, req, &pools)?;
    let alias = req.alias(conf);
    if alias.len() > ALIAS_MAX {
        return Err(Error::InvalidEnv {
            msg: format!(
                "CNI_CONTAINERID is {} bytes: the host veth's alias {:?}… would be {} bytes, more than the kernel's {ALIAS_MAX}",
                req.container_id.len(),
                &alias[..40],
                alias.len()
            ),
            details: req.container_id.clone(),
        });
    }
    dp.check_pod(netns, &req.ifname)?;
    let spec = PodSpec {
        netns: netns.to_path_buf(),
        ifname: req.ifname.clone(),
        host_veth: req.host_veth(conf),
        alias,
        mode: conf.mode.clone(),
        mtu,
        big_tcp: conf.big_tcp,
        mac: conf.mac.or(req.args.mac),
        addrs: Vec::new(),
    };
    Ok(Plan {
        prev,
        pools,
        requested,
        spec,
    })
}

/// The config's `mtu`, else the subnet file's, else the host's default-route link; any of
/// them too small for an IPv6 pool is refused (the host's link: an environment error).
fn effective_mtu(conf: &NetConf, subnets: &NodeSubnets, dp: &dyn Datapath) -> Result<u32, Error> {
    let (mtu, source) = match (conf.mtu, subnets.mtu) {
        (Some(m), _) => (m, "mtu".to_owned()),
        (None, Some(m)) => (
            m,
            format!("mtu of subnet file {}", conf.subnet_file.display()),
        ),
        (None, None) => {
            let m = dp.default_mtu()?;
            return validate_mtu_for_ipv6(m, "MTU of the host's default-route link", subnets.v6)
                .map(|()| m)
                .map_err(|e| Error::InvalidEnv {
                    msg: e.to_string(),
                    details: "set mtu in the config".into(),
                });
        }
    };
    validate_mtu_for_ipv6(mtu, &source, subnets.v6)?;
    Ok(mtu)
}

/// `CNI_ARGS IP=` first, then `runtimeConfig.ips` and `args.cni.ips`; each must be an
/// address the allocator may hand out in one of the pools (named key and value otherwise).
fn requested_ips(conf: &NetConf, req: &Attach, pools: &[Pool]) -> Result<Vec<IpAddr>, Error> {
    let from_env = req.args.ips.iter().map(|ip| (*ip, "CNI_ARGS IP"));
    let mut out: Vec<IpAddr> = Vec::new();
    for (ip, source) in from_env.chain(conf.requested_ips.iter().copied()) {
        let why = match pools.iter().find(|p| p.subnet.contains(ip)) {
            None => Some("is in no pool of this node".to_owned()),
            Some(p) if ip == p.gateway => Some(format!("is the gateway of {}", p.subnet)),
            Some(p) if !p.contains_usable(ip) => Some(format!("is not usable in {}", p.subnet)),
            Some(_) => None,
        };
        if let Some(why) = why {
            let msg = format!("{source}: requested IP {ip} {why}");
            return Err(if source == "CNI_ARGS IP" {
                Error::InvalidEnv {
                    msg,
                    details: ip.to_string(),
                }
            } else {
                Error::Config(msg)
            });
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// A failed ADD gives its addresses back; if even that fails, the runtime's DEL will.
fn release_after_failure(store: &hostgw_ipam::Store, att: &Attachment) {
    if let Ok(mut locked) = store.lock(LOCK_TIMEOUT) {
        let _ = locked.release(att);
    }
}

/// Our interfaces, addresses and default routes, appended to an earlier plugin's result
/// (never dropping it).
fn build_result(
    conf: &NetConf,
    prev: Option<CniResult>,
    spec: &PodSpec,
    links: &PodLinks,
) -> CniResult {
    let mut r = prev.unwrap_or_default();
    let iface = |l: &crate::datapath::LinkInfo, sandbox: Option<String>, mtu: bool| Interface {
        name: l.name.clone(),
        mac: Some(l.mac.clone()),
        sandbox,
        mtu: mtu.then_some(spec.mtu),
        ..Default::default()
    };
    if let Some(b) = &links.bridge {
        r.interfaces.push(iface(b, None, false));
    }
    r.interfaces.push(iface(&links.host, None, true));
    r.interfaces.push(iface(
        &links.pod,
        Some(spec.netns.display().to_string()),
        true,
    ));
    let pod_index = r.interfaces.len() - 1;
    for a in &spec.addrs {
        r.ips.push(IpConfig {
            address: a.addr,
            gateway: Some(a.gateway),
            interface: Some(pod_index),
            extra: Default::default(),
        });
        r.routes
            .push(Route::new(default_route(a.addr), Some(a.gateway)));
    }
    if let Some(dns) = &conf.dns {
        r.dns = dns.clone();
    }
    r
}
