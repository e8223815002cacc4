use std::net::IpAddr;

use hostgw_ipam::Attachment;
use ipnetwork::IpNetwork;

use super::{Attach, LOCK_TIMEOUT, open_store};
use crate::{
    config::{NetConf, parse_mac},
    datapath::{Datapath, PodAddr, PodLinks, PodSpec, default_route},
    error::Error,
    result::{CniResult, Interface, IpConfig, Route},
};

/// ADD: validate everything, reserve the addresses, wire the pod; undo all of it on failure.
pub fn add(conf: &NetConf, req: &Attach, dp: &dyn Datapath) -> Result<CniResult, Error> {
    let netns = req
        .netns
        .as_deref()
        .ok_or_else(|| Error::MissingEnv("CNI_NETNS".into()))?;
    // Everything that can be refused is refused before the host is touched.
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_json)
        .transpose()?;
    let subnets = conf.node_subnets()?;
    let pools = subnets.pools()?;
    let mtu = match conf.mtu.or(subnets.mtu) {
        Some(m) => m,
        None => dp.default_mtu()?,
    };
    let mac = conf
        .mac
        .as_deref()
        .or(req.args.mac.as_deref())
        .map(parse_mac)
        .transpose()?;
    let mut requested: Vec<IpAddr> = req.args.ips.clone();
    requested.extend(&conf.requested_ips);
    requested.dedup();
    let store = open_store(conf)?;
    dp.check_pod(netns, &req.ifname)?;

    let att = req.attachment();
    let ips = store
        .lock(LOCK_TIMEOUT)?
        .allocate(&pools, &att, &requested)?;
    let addrs = ips
        .iter()
        .zip(&pools)
        .map(|(ip, pool)| PodAddr {
            addr: IpNetwork::new(*ip, pool.subnet.prefix()).expect("prefix of a valid pool"),
            gateway: pool.gateway,
        })
        .collect();
    let spec = PodSpec {
        netns: netns.to_path_buf(),
        ifname: req.ifname.clone(),
        host_veth: req.host_veth(conf),
        alias: req.alias(conf),
        mode: conf.mode.clone(),
        mtu,
        mac,
        addrs,
    };
    match dp.setup(&spec) {
        Ok(links) => Ok(build_result(conf, prev, &spec, &links)),
        Err(e) => {
            release_after_failure(&store, &att);
            Err(e)
        }
    }
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
    let iface = |l: &crate::datapath::LinkInfo, sandbox: Option<String>, mtu: bool| {
        let mut extra = serde_json::Map::new();
        if mtu {
            extra.insert("mtu".into(), spec.mtu.into());
        }
        Interface {
            name: l.name.clone(),
            mac: Some(l.mac.clone()),
            sandbox,
            extra,
        }
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
        });
        r.routes.push(Route {
            dst: default_route(a.addr),
            gw: Some(a.gateway),
            extra: Default::default(),
        });
    }
    if conf.dns.is_some() {
        r.dns = conf.dns.clone();
    }
    r
}
