use std::path::Path;

use ipnetwork::IpNetwork;

use super::{Attach, LOCK_TIMEOUT, open_store};
use crate::{
    config::{Mode, NetConf},
    datapath::{Datapath, Observed, PodAddr, PodSpec},
    error::Error,
    result::CniResult,
};

/// CHECK: everything ADD made is still there, as prevResult describes it.
pub fn check(conf: &NetConf, req: &Attach, dp: &dyn Datapath) -> Result<(), Error> {
    let netns = req
        .netns
        .as_deref()
        .ok_or_else(|| Error::MissingEnv("CNI_NETNS".into()))?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::Config("Required prevResult missing".into()))
        .and_then(CniResult::from_json)?;
    let netns_str = netns.display().to_string();
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == req.ifname && i.sandbox.as_deref() == Some(netns_str.as_str()))
        .ok_or_else(|| {
            Error::Check(format!(
                "prevResult has no interface {} in sandbox {netns_str}",
                req.ifname
            ))
        })?;
    let addrs: Vec<PodAddr> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(pod_index))
        .map(|ip| PodAddr {
            addr: ip.address,
            gateway: ip.gateway.unwrap_or(ip.address.network()),
        })
        .collect();

    let spec = PodSpec {
        netns: netns.to_path_buf(),
        ifname: req.ifname.clone(),
        host_veth: req.host_veth(conf),
        alias: req.alias(conf),
        mode: conf.mode.clone(),
        mtu: 0,
        big_tcp: false,
        mac: None,
        addrs,
    };
    // First, as it refuses a CNI_NETNS that is the host's own (code 4).
    let observed = dp.observe(&spec)?;
    check_reservation(conf, req, &spec.addrs)?;
    let want_mac = prev.interfaces[pod_index].mac.as_deref();
    compare(&spec, &prev, want_mac, &observed, netns)
}

fn check_reservation(conf: &NetConf, req: &Attach, addrs: &[PodAddr]) -> Result<(), Error> {
    let reserved = open_store(conf)?
        .lock(LOCK_TIMEOUT)?
        .find(&req.attachment())?;
    if reserved.is_empty() {
        return Err(Error::Check(format!(
            "no address is reserved for container {} interface {}",
            req.container_id, req.ifname
        )));
    }
    for a in addrs {
        if !reserved.contains(&a.addr.ip()) {
            return Err(Error::Check(format!(
                "address {} is not reserved for this container",
                a.addr.ip()
            )));
        }
    }
    Ok(())
}

/// The pure comparison of what should be against what is.
fn compare(
    spec: &PodSpec,
    prev: &CniResult,
    want_mac: Option<&str>,
    seen: &Observed,
    netns: &Path,
) -> Result<(), Error> {
    let fail = |m: String| Err(Error::Check(m));
    let Some(pod) = &seen.pod else {
        return fail(format!(
            "interface {} not found in {}",
            spec.ifname,
            netns.display()
        ));
    };
    if !pod.is_veth {
        return fail(format!("interface {} is not a veth", spec.ifname));
    }
    if let Some(m) = want_mac
        && !m.eq_ignore_ascii_case(&pod.mac)
    {
        return fail(format!(
            "interface {} has MAC {}, prevResult says {m}",
            spec.ifname, pod.mac
        ));
    }
    for a in &spec.addrs {
        if !pod.addrs.contains(&a.addr) {
            return fail(format!(
                "address {} is missing from {}",
                a.addr, spec.ifname
            ));
        }
    }
    for r in &prev.routes {
        let found = pod
            .routes
            .iter()
            .any(|(dst, gw)| *dst == r.dst && (r.gw.is_none() || *gw == r.gw));
        if !found {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return fail(format!(
                "route {}{via} is missing from the pod's routing table",
                r.dst
            ));
        }
    }
    let Some(host) = &seen.host else {
        return fail(format!("host veth {} not found", spec.host_veth));
    };
    match &spec.mode {
        Mode::Bridge(br) if host.master.as_deref() != Some(br.as_str()) => fail(format!(
            "host veth {} is not on bridge {br}",
            spec.host_veth
        )),
        Mode::Bridge(_) => Ok(()),
        Mode::Ptp => {
            for a in &spec.addrs {
                let host_route =
                    IpNetwork::new(a.addr.ip(), if a.addr.is_ipv4() { 32 } else { 128 })
                        .expect("full-length prefix");
                if !host.routes.contains(&host_route) {
                    return fail(format!(
                        "host route {host_route} dev {} is missing",
                        spec.host_veth
                    ));
                }
                if !host.addrs.iter().any(|h| h.ip() == a.gateway) {
                    return fail(format!(
                        "gateway {} is missing from host veth {}",
                        a.gateway, spec.host_veth
                    ));
                }
            }
            Ok(())
        }
    }
}
